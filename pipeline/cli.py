"""Command line: `python -m pipeline`. The only module that knows the stages.

\b
Examples:
    python -m pipeline run package                  # everything up to submissions/images.zip
    python -m pipeline run score                    # the local FID (make fid)
    python -m pipeline run train --set train.seed=3 --set train.kimg=80
    python -m pipeline run pad --force              # rerun a stage even if cached
    python -m pipeline status                       # cached / stale (why) / missing
    python -m pipeline params                       # every parameter with its default
    python -m pipeline report                       # data/report/index.html, a page to look at
    python -m pipeline runs                         # every training run and how it scored
    python -m pipeline submissions --kaggle         # kept zips, local and Kaggle scores
    python -m pipeline export                       # data/export/: TorchScript generator
    python -m pipeline interpolate                  # data/export/interpolation.gif
"""

from __future__ import annotations

import contextlib
import errno
import io
import os
import re
import shlex
import shutil
import sys
import time
import warnings
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from typing import Annotated, TextIO

import typer

from pipeline.core import layout
from pipeline.core.config import SECTIONS, Params, load_params, section_doc
from pipeline.core.errors import UserError
from pipeline.core.files import atomic_write_text
from pipeline.core.lock import project_lock
from pipeline.core.runner import Graph, Project

app = typer.Typer(
    help="GAN competition pipeline: fetch, crop, pad, augment, train, generate, package, score.",
    no_args_is_help=True, add_completion=False, pretty_exceptions_enable=False,
)

STAGE_NAMES = ("fetch", "crop", "pad", "augment", "train", "generate", "package", "score")
StageName = Enum("StageName", {name: name for name in STAGE_NAMES}, type=str)  # for --help

RootOption = Annotated[Path, typer.Option("--root", help="project folder (holds data/)",
                                          show_default=False)]
ParamsOption = Annotated[Path | None, typer.Option(
    "--params", "-p", help="params file (default: ROOT/params.yaml)")]
SetOption = Annotated[list[str] | None, typer.Option(
    "--set", "-s", help="override one parameter, e.g. --set train.seed=3 (repeatable)")]


def _graph(root: Path, params_file: Path | None, overrides: list[str]) -> Graph:
    """Load params, then build the stage graph (stages are imported here, and only here).

    Params first: a wrong key or value is reported before the stages import torch (seconds).
    """
    project = Project(root.resolve())
    params = load_params(params_file or project.params_file, overrides,
                         must_exist=params_file is not None)
    from stages import STAGES

    package_dir = Path(__file__).resolve().parent
    return Graph(STAGES, project, params, package_dir)


def _split_overrides(values: list[str]) -> list[str]:
    """`make STAGE SET="a=1 b=2"` passes one string; split it on spaces outside brackets."""
    parts: list[str] = []
    for value in values:
        depth, current = 0, ""
        for char in value:
            depth += char in "[{"
            depth -= char in "]}"
            if char == " " and depth == 0:
                if current:
                    parts.append(current)
                current = ""
            else:
                current += char
        if current:
            parts.append(current)
    return parts


@app.command()
def run(
    stages: Annotated[list[StageName], typer.Argument(help="stage(s) to bring up to date")],
    set_: SetOption = None,
    force: Annotated[bool, typer.Option(
        "--force", help="rerun the named stages even if cached")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
    root: RootOption = Path("."),
    params: ParamsOption = None,
) -> None:
    """Run the named stages and whatever upstream of them is not cached."""
    graph = _graph(root, params, _split_overrides(set_ or []))
    names = [s.value for s in stages]
    from pipeline.core.distributed import command_group  # torch: only once params are valid

    with project_lock(graph.project.data), log_to_file(graph.project.data / "logs", names), \
            command_group(_group_device(graph.params)):
        graph.run(names, force=names if force else (), quiet=quiet)


def _group_device(params: Params) -> str:
    """The device type a torchrun command's process group serves (NCCL for CUDA, else Gloo):
    the training device's, which generation and scoring follow by default."""
    import torch

    return "cuda" if params.train.device != "cpu" and torch.cuda.is_available() else "cpu"


@contextlib.contextmanager
def log_to_file(folder: Path, names: list[str]) -> Iterator[None]:
    """Copy what the run prints to data/logs/<time>-<stages>.log.

    stdout (summary lines, tables) goes to the log as printed. Python warnings (ours and
    libraries') are printed to stdout as "warning: ..." lines while the run lasts, so the log
    keeps them too. stderr is copied line by line with progress bars reduced to their final
    frame: the terminal sees every carriage-return redraw, the log one line per bar.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{time.strftime('%Y%m%d-%H%M%S')}-{'-'.join(names)}.log"
    with path.open("a", encoding="utf-8") as log, warnings.catch_warnings():
        warnings.showwarning = _print_warning  # catch_warnings restores the original on exit
        original_out, original_err = sys.stdout, sys.stderr
        sys.stdout = _Tee(original_out, log)
        sys.stderr = _FinalFrames(original_err, log)
        try:
            yield
        except Exception as error:  # noqa: BLE001 - recorded, then re-raised unchanged
            log.write(f"error: {error}\n")
            raise
        finally:
            sys.stderr.close_frames()
            sys.stdout, sys.stderr = original_out, original_err


def _print_warning(message: Warning | str, category: type[Warning], filename: str,
                   lineno: int, file: TextIO | None = None, line: str | None = None) -> None:
    """warnings.showwarning replacement: one 'warning: ...' line on stdout (the tee)."""
    print(f"warning: {message} ({category.__name__}, {Path(filename).name}:{lineno})",
          flush=True)


class _Tee(io.TextIOBase):
    """A text stream that writes to the terminal and to a log file."""

    def __init__(self, terminal: TextIO, log: TextIO) -> None:
        self.terminal, self.log = terminal, log

    def write(self, text: str) -> int:
        self.log.write(text)
        return self.terminal.write(text)

    def flush(self) -> None:
        self.log.flush()
        self.terminal.flush()


ANSI_CODES = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")  # colours and cursor moves of a bar


class _FinalFrames(_Tee):
    """stderr for a run: everything to the terminal; to the log, each line as it ends, where
    a line redrawn with carriage returns (a tqdm bar) counts only by its last frame."""

    def __init__(self, terminal: TextIO, log: TextIO) -> None:
        super().__init__(terminal, log)
        self.pending = ""  # the current line's latest frame, not yet ended by a newline

    def write(self, text: str) -> int:
        lines = (self.pending + text).split("\n")
        for line in lines[:-1]:
            self._log_line(line)
        self.pending = lines[-1].rsplit("\r", 1)[-1] if "\r" in lines[-1] else lines[-1]
        return self.terminal.write(text)

    def _log_line(self, line: str) -> None:
        frames = [f for f in ANSI_CODES.sub("", line).split("\r") if f.strip()]
        if frames:
            self.log.write(frames[-1].rstrip() + "\n")

    def close_frames(self) -> None:
        """At the end of a run: a bar left without its newline still leaves its last frame."""
        if self.pending:
            self._log_line(self.pending)
            self.pending = ""


@app.command()
def status(root: RootOption = Path("."), params: ParamsOption = None,
           set_: SetOption = None) -> None:
    """Each stage in order: cached, stale (and why) or missing; its output folder and size."""
    graph = _graph(root, params, _split_overrides(set_ or []))
    for name in graph.order:
        state, why = graph.state(name)
        folder = graph.output_dir(name)
        size = _folder_size(folder) if folder.exists() else 0
        where = f"{folder.relative_to(graph.project.root)}/ ({_human(size)})"
        print(f"{name:<9} {state:<8} {where:<28} {why}".rstrip())
    _print_ingest_counts(graph)


@app.command()
def report(
    root: RootOption = Path("."),
    params: ParamsOption = None,
    set_: SetOption = None,
    open_: Annotated[bool, typer.Option("--open", help="open it in a web browser")] = False,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="print only the path")] = False,
) -> None:
    """Write data/report/index.html (stages, dataset, training, samples, scores); print its path."""
    from pipeline.report import write_report  # matplotlib and friends: only for this command

    graph = _graph(root, params, _split_overrides(set_ or []))
    with project_lock(graph.project.data):
        page = write_report(graph, graph.project.data / "report", quiet=quiet)
    print(page)
    if open_:
        import webbrowser

        webbrowser.open(page.resolve().as_uri())


def _trained_generator(graph: Graph, quiet: bool) -> Path:
    """The generator generate.snapshot names (best by default), training first if needed."""
    from stages.generate import chosen_generator

    graph.run(["train"], quiet=quiet)
    return chosen_generator(graph.output_dir("train"), graph.project.root,
                            graph.params.generate.snapshot)


@app.command()
def export(
    root: RootOption = Path("."),
    params: ParamsOption = None,
    set_: SetOption = None,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Write data/export/: the generator as TorchScript (ONNX too when onnx is installed),
    loadable without this project; export.json says how seeds become latents."""
    from pipeline.deliver.export import export_generator

    graph = _graph(root, params, _split_overrides(set_ or []))
    with project_lock(graph.project.data):
        source = _trained_generator(graph, quiet)
        report = export_generator(source, graph.project.data / "export")
    where = report.folder.relative_to(graph.project.root)
    print(f"export: {', '.join(report.files)} in {where}/ from "
          f"{source.relative_to(graph.project.root)}")
    if report.onnx_skipped:
        print(f"export: no ONNX file: {report.onnx_skipped}")


@app.command()
def interpolate(
    root: RootOption = Path("."),
    params: ParamsOption = None,
    set_: SetOption = None,
    cells: Annotated[int, typer.Option(min=1, help="walks side by side in each frame")] = 16,
    keyframes: Annotated[int, typer.Option(min=2, help="latents each walk visits")] = 4,
    steps: Annotated[int, typer.Option(min=1, help="frames between two keyframes")] = 12,
    fps: Annotated[float, typer.Option(min=1, help="frames a second")] = 12.0,
    quiet: Annotated[bool, typer.Option("--quiet", "-q", help="no progress bars")] = False,
) -> None:
    """Write data/export/interpolation.gif: a looping latent walk of the trained generator."""
    from pipeline.deliver.interpolate import INTERPOLATION_GIF, write_interpolation

    graph = _graph(root, params, _split_overrides(set_ or []))
    with project_lock(graph.project.data):
        source = _trained_generator(graph, quiet)
        path = graph.project.data / "export" / INTERPOLATION_GIF
        frames = write_interpolation(source, path, cells, keyframes, steps, fps, quiet)
    print(f"interpolate: {frames} frames, {cells} walks, in "
          f"{path.relative_to(graph.project.root)} (from "
          f"{source.relative_to(graph.project.root)})")


@app.command()
def runs(root: RootOption = Path("."), params: ParamsOption = None,
         set_: SetOption = None) -> None:
    """Every training run in data/runs/: settings changed from params.yaml, kimg, minutes,
    best evaluation, newest grid. Read-only: never waits for a running command."""
    from pipeline.gan.runs import list_runs, run_folder, runs_table

    graph = _graph(root, params, _split_overrides(set_ or []))
    current = run_folder(graph.output_dir("train"), graph.project.root)
    print(runs_table(list_runs(graph.project.data / "runs"), graph.params.train,
                     graph.project.root, current))


@app.command()
def submissions(
    root: RootOption = Path("."),
    params: ParamsOption = None,
    set_: SetOption = None,
    kaggle: Annotated[bool, typer.Option(
        "--kaggle", help="also read each competition's public scores from Kaggle (online)")
    ] = False,
) -> None:
    """Every zip kept in submissions/history/: its local score, where it was sent and (with
    --kaggle) the public score Kaggle gave it. Read-only."""
    from pipeline.deliver.ledger import kept_submissions, ledger_table, match_kaggle
    from pipeline.deliver.submission import SUBMISSION_LOG, kaggle_submissions

    graph = _graph(root, params, _split_overrides(set_ or []))
    data = graph.project.data
    kept = kept_submissions(graph.project.path("submissions"),
                            graph.output_dir("score") / layout.HISTORY_CSV, data / SUBMISSION_LOG)
    note = ""
    if kaggle:
        competitions = sorted({line["competition"] for item in kept for line in item.sent})
        listed = {}
        for competition in competitions:
            try:
                listed[competition] = kaggle_submissions(competition)
            except UserError as error:  # offline: the local part is still worth printing
                note += f"kaggle: {error}\n"
        match_kaggle(kept, listed)
        if not competitions:
            note = "kaggle: nothing was sent yet (package.submit=true sends a zip)"
    print(ledger_table(kept, graph.project.root, note.rstrip()))


README_START, README_END = "<!-- params:start -->", "<!-- params:end -->"


@app.command("params")
def params_doc(
    markdown: Annotated[bool, typer.Option(help="a Markdown table (README)")] = False,
    update_readme: Annotated[Path | None, typer.Option(
        help="rewrite the table between the params markers of this README")] = None,
) -> None:
    """Every parameter of params.yaml with its type, default and meaning."""
    if update_readme:
        atomic_write_text(update_readme,
                          readme_with_params(update_readme.read_text(encoding="utf-8")))
        return
    print(params_markdown() if markdown else params_text())


def readme_with_params(readme: str) -> str:
    """The README text with its parameter table regenerated."""
    head, _, rest = readme.partition(README_START)
    _, _, tail = rest.partition(README_END)
    return f"{head}{README_START}\n{params_markdown()}{README_END}{tail}"


def params_markdown() -> str:
    """The README's parameter reference, generated from the config dataclasses."""
    lines = []
    for section in SECTIONS:
        lines += [f"#### `{section}`", "", "| key | type | default | meaning |",
                  "|---|---|---|---|"]
        for key, kind, default, help_text in section_doc(section):
            lines.append(f"| `{section}.{key}` | {kind} | `{default}` | {help_text} |")
        lines.append("")
    return "\n".join(lines).rstrip() + "\n"


def params_text() -> str:
    lines = []
    for section in SECTIONS:
        lines.append(f"{section}:")
        for key, _kind, default, help_text in section_doc(section):
            lines.append(f"  {key}: {default}  # {help_text}")
    return "\n".join(lines)


def _print_ingest_counts(graph: Graph) -> None:
    """Counts by reason from the ingest decision record (data/clean/ingest.csv)."""
    record = graph.output_dir("pad") / layout.INGEST_CSV
    if not record.exists():
        return
    from pipeline.ingest.decisions import read_decisions

    table = read_decisions(record)
    kept = int((table["decision"] == "kept").sum())
    print(f"\ningest: {len(table):,} images, {kept:,} kept, {len(table) - kept:,} rejected")
    rejected = table[table["decision"] == "rejected"]
    families = rejected["reason"].str.split(":").str[0].str.split(" of ").str[0].str.strip()
    for reason, count in families.value_counts().items():
        print(f"  {count:>7,}  {reason}")


def _folder_size(folder: Path) -> int:
    return sum(p.stat().st_size for p in folder.rglob("*") if p.is_file())


def _human(size: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{size:.1f} GiB"


def arguments_from_make(argv: list[str], environ: dict[str, str]) -> list[str]:
    """argv plus what the Makefile passed in the environment, never through a shell.

    `make all SET="..." ARGS="..."` exports PIPELINE_SET and PIPELINE_ARGS with make's raw
    `$(value ...)`: a `"`, a backtick, `$(...)` or `$5` in a value reaches us as typed. SET is
    split on spaces outside brackets (as --set values are); ARGS with shell-like quoting.
    """
    extra = shlex.split(environ.get("PIPELINE_ARGS", ""))
    overrides = _split_overrides([environ.get("PIPELINE_SET", "")])
    return argv + extra + [part for value in overrides for part in ("--set", value)]


def _free_bytes(path: Path) -> int:
    """Free bytes on the disk holding `path` (or its nearest existing parent)."""
    for folder in (path, *path.parents):
        if folder.exists():
            return shutil.disk_usage(folder).free
    return shutil.disk_usage(".").free


def main() -> None:
    """Entry point: expected errors become one sentence and a non-zero exit, no traceback."""
    try:
        # Read once: the pipeline's own subprocesses (npm, kaggle) must not see them.
        sys.argv = arguments_from_make(sys.argv, {key: os.environ.pop(key) for key in
                                                  ("PIPELINE_SET", "PIPELINE_ARGS")
                                                  if key in os.environ})
        app()
    except UserError as error:
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted: rerun the same command to continue", file=sys.stderr)
        sys.exit(130)
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
            free = _free_bytes(Path(str(error.filename)) if error.filename else Path("."))
            what = {errno.ENOSPC: "no disk space left", errno.EDQUOT: "disk quota exceeded",
                    errno.EFBIG: "a file grew past the file system's limit"}[error.errno]
            print(f"error: {what} ({_human(free)} free, writing {error.filename or '?'}); free "
                  "some space or move data/ to a larger disk, then rerun", file=sys.stderr)
            sys.exit(28)
        raise
