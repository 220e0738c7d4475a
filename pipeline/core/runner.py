"""Stage graph, content fingerprints and atomic outputs.

A stage is a name, its upstream stages, its params.yaml section and one output folder. Its
fingerprint hashes the section (canonical JSON, defaults filled in), the source of the code it
runs (the stage script plus every `pipeline` module it imports, transitively) and the
fingerprints of its upstream stages. A stage whose output manifest carries the current
fingerprint is skipped (`<stage>: cached`); otherwise it runs into a temporary sibling folder
that is renamed into place only once complete, manifest included. A killed stage therefore
leaves the previous good output or nothing, never a half that counts as done.
"""

from __future__ import annotations

import ast
import dataclasses
import hashlib
import io
import json
import os
import platform
import shutil
import sys
import time
import tokenize
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.core.config import Params, canonical
from pipeline.core.faults import kill_point

MANIFEST = "manifest.json"
# Modules (relative to pipeline/) whose edits do not change any stage's results: config semantics
# enter the fingerprint through the canonical params (defaults included), the rest is plumbing.
INFRASTRUCTURE = {"__init__.py", "__main__.py", "cli.py", "core/__init__.py", "core/config.py",
                  "core/errors.py", "core/runner.py"}


@dataclass(frozen=True)
class Project:
    """Every path the pipeline reads or writes, built from one root folder."""

    root: Path

    @property
    def params_file(self) -> Path:
        return self.root / "params.yaml"

    @property
    def data(self) -> Path:
        return self.root / "data"

    def path(self, relative: str) -> Path:
        return self.root / relative


@dataclass
class StageResult:
    """What a stage reports: a one-line summary and counts for the manifest."""

    summary: str  # e.g. "3,391 kept, 0 rejected (see data/clean/report.csv)"
    counts: dict[str, Any] = field(default_factory=dict)


@dataclass
class StageContext:
    """Everything a stage needs, passed in explicitly (no globals)."""

    project: Project
    params: Params
    out_dir: Path  # temporary folder to write into; becomes the stage output when done
    inputs: dict[str, Path]  # upstream stage name -> its output folder
    fingerprint: str
    upstream_fingerprints: dict[str, str]
    code_hash: str
    quiet: bool = False
    owned: tuple[Path, ...] = ()  # every folder the pipeline replaces or prunes (stage outputs)

    def run_key(self, section: Any, exclude: Sequence[str]) -> str:
        """A fingerprint that ignores some keys, so e.g. raising train.kimg continues a run."""
        values = {k: v for k, v in dataclasses.asdict(section).items() if k not in exclude}
        return _hash([json.dumps(values, sort_keys=True), self.code_hash,
                      json.dumps(self.upstream_fingerprints, sort_keys=True)])


@dataclass(frozen=True)
class Stage:
    name: str
    upstream: tuple[str, ...]
    section: str  # params.yaml section
    output: str  # output folder relative to the project root
    script: Path  # the stage's source file (its imports make the code fingerprint)
    run: Callable[[StageContext], StageResult]
    resumable: bool = False  # keep the partial folder of a killed run and hand it back
    # Inputs that params cannot see (e.g. the content of a reject-list file): a string hashed
    # into the fingerprint, so editing such a file reruns the stage and what follows.
    extra_fingerprint: Callable[[Params, Project], str] | None = None
    # Keys of other sections the stage reads ("pad.max_pixels"): part of its fingerprint too.
    reads: tuple[str, ...] = ()
    # Copies results out of the stage's own folder into a user folder (package -> submissions/),
    # called after the output is in place and again on a cached run; must be idempotent, and
    # must never delete what it did not write.
    publish: Callable[[Path, Params, Project], str] | None = None


def _hash(parts: Sequence[str]) -> str:
    digest = hashlib.sha256()
    for part in parts:
        digest.update(part.encode("utf-8"))
        digest.update(b"\0")
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# Code fingerprint: the stage script and the pipeline modules it imports, transitively


def _module_files(name: str, package_dir: Path) -> set[Path]:
    """The file(s) of dotted module `name` ("pipeline.gan.loop"), if it is one of ours."""
    parts = name.split(".")
    if parts[0] != package_dir.name or len(parts) == 1:
        return set()
    relative = Path(*parts[1:])
    return {c for c in (package_dir / relative.with_suffix(".py"),
                        package_dir / relative / "__init__.py") if c.is_file()}


def _dotted_name(path: Path, package_dir: Path) -> list[str]:
    """pipeline/gan/loop.py -> ["pipeline", "gan", "loop"] (package __init__ -> the package)."""
    parts = [package_dir.name, *path.relative_to(package_dir).with_suffix("").parts]
    return parts[:-1] if parts[-1] == "__init__" else parts


def _imported_pipeline_files(source_file: Path, package_dir: Path) -> set[Path]:
    """Files of `pipeline` modules that `source_file` imports directly, relative imports too."""
    tree = ast.parse(source_file.read_text(encoding="utf-8"))
    inside = source_file.resolve().is_relative_to(package_dir.resolve())
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            module = node.module or ""
            if node.level:  # `from . import x`, `from ..core import y`: resolve against the file
                if not inside:
                    continue
                base = _dotted_name(source_file.resolve(), package_dir.resolve())
                is_package = source_file.name == "__init__.py"
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)] if node.level > 1 else base
                module = ".".join([*base, module] if module else base)
            names.add(module)
            names.update(f"{module}.{alias.name}" for alias in node.names)
    files: set[Path] = set()
    for name in names:
        files |= _module_files(name, package_dir)
    return files


def code_files(script: Path, package_dir: Path) -> list[Path]:
    """The stage script plus the transitive closure of its `pipeline` imports."""
    seen: set[Path] = set()
    todo = [script]
    while todo:
        current = todo.pop()
        if current in seen:
            continue
        seen.add(current)
        todo.extend(_imported_pipeline_files(current, package_dir) - seen)
    return sorted(p for p in seen if p == script
                  or p.relative_to(package_dir).as_posix() not in INFRASTRUCTURE)


def normalized_source(path: Path) -> str:
    """The code of a Python file without comments, docstrings or layout: what it does.

    Editing a comment, a docstring or the wrapping of a line leaves this unchanged, so it does
    not rerun (and retrain) a stage; any change to a name, a literal or an operator does.
    """
    source = path.read_text(encoding="utf-8")
    docstrings: set[tuple[int, int]] = set()
    for node in ast.walk(ast.parse(source)):
        body = getattr(node, "body", None)
        first = body[0] if isinstance(body, list) and body else None
        if (isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
                and isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant)
                and isinstance(first.value.value, str)):
            docstrings.add((body[0].lineno, body[0].col_offset))
    skip = {tokenize.COMMENT, tokenize.NL, tokenize.NEWLINE, tokenize.INDENT, tokenize.DEDENT,
            tokenize.ENCODING, tokenize.ENDMARKER}
    kept = []
    tokens = tokenize.generate_tokens(io.StringIO(source).readline)
    for token in tokens:
        if token.type in skip or (token.type == tokenize.STRING and token.start in docstrings):
            continue
        kept.append(token.string)
    # Statements are separated by their tokens' structure; a space keeps tokens apart.
    return " ".join(kept)


def code_hash(script: Path, package_dir: Path) -> str:
    parts = []
    for path in code_files(script, package_dir):
        parts.append(path.name if path == script else str(path.relative_to(package_dir.parent)))
        parts.append(hashlib.sha256(normalized_source(path).encode("utf-8")).hexdigest())
    return _hash(parts)


# ----------------------------------------------------------------------------------------------
# The graph


class Graph:
    """Stages in dependency order, with fingerprints computed from params and code."""

    def __init__(self, stages: Sequence[Stage], project: Project, params: Params,
                 package_dir: Path):
        self.stages = {s.name: s for s in stages}
        self.order = [s.name for s in stages]  # given in topological order
        self.project = project
        self.params = params
        self.package_dir = package_dir
        self._fingerprints: dict[str, str] = {}
        self._code: dict[str, str] = {}
        for s in stages:
            for up in s.upstream:
                if self.order.index(up) >= self.order.index(s.name):
                    raise ValueError(f"stage {s.name} listed before its upstream {up}")

    def code(self, name: str) -> str:
        if name not in self._code:
            self._code[name] = code_hash(self.stages[name].script, self.package_dir)
        return self._code[name]

    def fingerprint(self, name: str) -> str:
        if name not in self._fingerprints:
            stage = self.stages[name]
            section = canonical(getattr(self.params, stage.section))
            upstream = [self.fingerprint(u) for u in stage.upstream]
            extra = stage.extra_fingerprint(self.params, self.project) if (
                stage.extra_fingerprint) else ""
            borrowed = json.dumps({key: _jsonable(getattr(getattr(self.params, key.split(".")[0]),
                                                          key.split(".")[1]))
                                   for key in stage.reads}, sort_keys=True)
            self._fingerprints[name] = _hash([name, section, self.code(name), extra, borrowed,
                                              *upstream])
        return self._fingerprints[name]

    def needed(self, targets: Sequence[str]) -> list[str]:
        """Targets and everything upstream of them, in run order."""
        wanted: set[str] = set()

        def visit(name: str) -> None:
            if name not in wanted:
                wanted.add(name)
                for up in self.stages[name].upstream:
                    visit(up)

        for t in targets:
            visit(t)
        return [n for n in self.order if n in wanted]

    def output_dir(self, name: str) -> Path:
        return self.project.path(self.stages[name].output)

    def manifest(self, name: str) -> dict[str, Any] | None:
        path = self.output_dir(name) / MANIFEST
        try:
            return json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def state(self, name: str) -> tuple[str, str]:
        """('cached' | 'stale' | 'missing', why) for one stage."""
        manifest = self.manifest(name)
        if manifest is None:
            return "missing", "never ran"
        if manifest.get("fingerprint") == self.fingerprint(name):
            return "cached", ""
        stage = self.stages[name]
        reasons = []
        old_params = manifest.get("params", {})
        new_params = dataclasses.asdict(getattr(self.params, stage.section))
        for key in sorted(set(old_params) | set(new_params)):
            old, new = old_params.get(key), _jsonable(new_params.get(key))
            if old != new:
                reasons.append(f"{stage.section}.{key} {old!r} -> {new!r}")
        if manifest.get("code") != self.code(name):
            reasons.append("code changed")
        for up in stage.upstream:
            if manifest.get("upstream", {}).get(up) != self.fingerprint(up):
                reasons.append(f"{up} changed")
        return "stale", "; ".join(reasons) or "input files changed (source folder or reject list)"

    # ------------------------------------------------------------------------------------------

    def run(self, targets: Sequence[str], force: Sequence[str] = (), quiet: bool = False) -> None:
        """Run the targets and whatever upstream of them is not cached."""
        for name in self.needed(targets):
            if name not in force and self.state(name)[0] == "cached":
                print(f"{name}: cached", flush=True)
            else:
                self._run_one(name, quiet)
            self._publish(name)

    def _publish(self, name: str) -> None:
        """The stage's publish step (rank 0), on a fresh or a cached output alike."""
        stage = self.stages[name]
        if stage.publish is None or int(os.environ.get("RANK", "0")) != 0:
            return
        note = stage.publish(self.output_dir(name), self.params, self.project)
        if note:
            print(f"{name}: {note}", flush=True)

    def _run_one(self, name: str, quiet: bool) -> None:
        if int(os.environ.get("RANK", "0")) != 0:
            return self._run_secondary_rank(name, quiet)
        stage = self.stages[name]
        fingerprint = self.fingerprint(name)
        final = self.output_dir(name)
        final.parent.mkdir(parents=True, exist_ok=True)
        partial = final.parent / f".{final.name}.partial-{fingerprint[:12]}"
        # Partial folders of other fingerprints are leftovers of killed runs: drop them.
        for old in final.parent.glob(f".{final.name}.partial-*"):
            if old != partial or not stage.resumable:
                shutil.rmtree(old, ignore_errors=True)
        partial.mkdir(parents=True, exist_ok=True)

        context = self._context(name, partial, quiet)
        start = time.perf_counter()
        result = stage.run(context)
        seconds = time.perf_counter() - start

        manifest = {
            "stage": name,
            "fingerprint": fingerprint,
            "params": _jsonable(dataclasses.asdict(getattr(self.params, stage.section))),
            "upstream": context.upstream_fingerprints,
            "code": context.code_hash,
            "summary": result.summary,
            "counts": result.counts,
            "seconds": round(seconds, 3),
            "finished": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "versions": _versions(),
        }
        (partial / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        (partial / ".gitkeep").touch()  # the folder itself is kept in git
        swap_into_place(partial, final)
        print(f"{name}: {result.summary}, {_format_seconds(seconds)}", flush=True)

    def _context(self, name: str, out_dir: Path, quiet: bool) -> StageContext:
        stage = self.stages[name]
        return StageContext(
            project=self.project, params=self.params, out_dir=out_dir,
            inputs={u: self.output_dir(u) for u in stage.upstream},
            fingerprint=self.fingerprint(name),
            upstream_fingerprints={u: self.fingerprint(u) for u in stage.upstream},
            code_hash=self.code(name), quiet=quiet,
            owned=tuple(self.output_dir(n) for n in self.order) + (self.project.data / "runs",),
        )

    def _run_secondary_rank(self, name: str, quiet: bool) -> None:
        """Under torchrun, ranks > 0 take part in the work (e.g. DDP training) but write no
        output: rank 0 alone owns the stage folder, its manifest and the summary line."""
        stage = self.stages[name]
        scratch = self.output_dir(name).parent / f".{name}.rank{os.environ['RANK']}"
        shutil.rmtree(scratch, ignore_errors=True)
        scratch.mkdir(parents=True)
        try:
            stage.run(self._context(name, scratch, quiet=True))
        finally:
            shutil.rmtree(scratch, ignore_errors=True)


def swap_into_place(partial: Path, final: Path) -> None:
    """Replace folder `final` by `partial`. A kill in between leaves no output, never a mix."""
    trash = final.parent / f".{final.name}.old"
    shutil.rmtree(trash, ignore_errors=True)
    if final.exists():
        final.rename(trash)
        kill_point("swap:between-renames")
    partial.rename(final)
    shutil.rmtree(trash, ignore_errors=True)


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _format_seconds(seconds: float) -> str:
    if seconds < 10:
        return f"{seconds:.1f} s"
    if seconds < 600:
        return f"{seconds:.0f} s"
    return f"{seconds / 60:.1f} min"


def _versions() -> dict[str, str]:
    versions = {"python": platform.python_version()}
    for module in ("torch", "numpy", "PIL", "cv2"):
        if module in sys.modules:
            versions[module] = getattr(sys.modules[module], "__version__", "?")
    return versions
