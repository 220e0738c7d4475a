"""The house in floors: each part of pipeline/ imports only what lies below it (README), in
functions short enough to read."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "pipeline"

# What each part may import (besides itself). The README's floor drawing, as data.
ALLOWED = {
    "core": set(),
    "ingest": {"core"},
    "scoring": {"core"},
    "gan": {"core", "ingest", "scoring"},
    "deliver": {"core", "gan", "ingest", "scoring"},
    "report": {"core", "ingest", "gan", "deliver", "scoring"},
    "cli": {"core", "ingest", "gan", "deliver", "scoring", "report", "stages"},
    "__main__": {"cli"},
    "__init__": set(),
}


def _part(path: Path) -> str:
    relative = path.relative_to(PACKAGE)
    return relative.parts[0] if len(relative.parts) > 1 else relative.stem


def _imports(path: Path) -> set[str]:
    """Top-level modules or parts of pipeline/ that `path` imports; 'stages' counts too."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        for name in names:
            parts = name.split(".")
            if parts[0] == "stages":
                found.add("stages")
            elif parts[0] == "pipeline" and len(parts) > 1:
                found.add(parts[1])
    return found


def test_every_module_imports_only_lower_floors() -> None:
    problems = []
    for path in sorted(PACKAGE.rglob("*.py")):
        part = _part(path)
        assert part in ALLOWED, f"{path}: a new part of pipeline/; give it a floor here"
        extra = _imports(path) - ALLOWED[part] - {part}
        if extra:
            problems.append(f"{path.relative_to(PACKAGE)} imports {sorted(extra)}")
    assert not problems, "\n".join(problems)


def test_only_the_cli_knows_the_stages() -> None:
    knowing = [path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")
               if "stages" in _imports(path)]
    assert knowing == ["cli.py"]


def test_no_function_is_longer_than_two_screens() -> None:
    """Functions in pipeline/ stay under 60 lines (a comment `# long: why` may excuse one)."""
    long = []
    for path in sorted(PACKAGE.rglob("*.py")):
        source = path.read_text(encoding="utf-8")
        lines = source.splitlines()
        for node in ast.walk(ast.parse(source)):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                excused = "# long:" in lines[node.lineno - 2] if node.lineno > 1 else False
                if length > 60 and not excused:
                    long.append(f"{path.relative_to(PACKAGE)}:{node.lineno} {node.name} "
                                f"({length} lines)")
    assert not long, "\n".join(long)
