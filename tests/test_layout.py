"""One stage list and one table of file names: the Makefile, the README, the CLI and the library
agree with stages.STAGES and pipeline.core.layout."""

from __future__ import annotations

import re
from pathlib import Path

from pipeline.core import layout

REPO = Path(__file__).resolve().parents[1]


def _stage_names() -> list[str]:
    from stages import STAGES

    return [stage.name for stage in STAGES]


def _makefile_variables(text: str) -> dict[str, list[str]]:
    """`NAME := words` and `NAME = words` assignments (the last one wins)."""
    found = {}
    for name, value in re.findall(r"^([A-Z_]+)\s*:?=\s*(.*)$", text, flags=re.MULTILINE):
        found[name] = value.split()
    return found


def _makefile_targets(text: str) -> set[str]:
    """Names before a rule's `:` (not `:=`), with `$(VAR)` expanded from the assignments."""
    variables = _makefile_variables(text)
    targets: set[str] = set()
    for head in re.findall(r"^([^\s#:=][^:=]*?)\s*:(?!=)", text, flags=re.MULTILINE):
        for word in head.split():
            var = re.fullmatch(r"\$\((\w+)\)", word)
            targets.update(variables.get(var.group(1), []) if var else [word])
    return targets


def _readme_stage_table() -> list[str]:
    """First column of the README's table whose header starts `| stage |`."""
    lines = (REPO / "README.md").read_text(encoding="utf-8").splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("| stage |"))
    names = []
    for line in lines[start + 2:]:  # skip the header and its |---| line
        if not line.startswith("|"):
            break
        names.append(line.split("|")[1].strip())
    return names


def test_makefile_parser_on_a_hand_written_file() -> None:
    text = ("STAGES := a b\n.PHONY: $(STAGES) c\nX = 1\n\n$(STAGES): dep ## run\n"
            "c: ## other\n\t$(RUN) $@\nifeq ($(A),1)\nendif\n")
    assert _makefile_variables(text)["STAGES"] == ["a", "b"]
    assert _makefile_targets(text) == {".PHONY", "a", "b", "c"}


def test_every_stage_has_a_make_target() -> None:
    targets = _makefile_targets((REPO / "Makefile").read_text(encoding="utf-8"))
    missing = [name for name in _stage_names() if name not in targets]
    assert not missing, f"Makefile has no target for {missing}"


def test_makefile_stage_list_plus_train_is_the_stages() -> None:
    listed = _makefile_variables((REPO / "Makefile").read_text(encoding="utf-8"))["STAGES"]
    assert len(set(listed)) == len(listed)  # no stage twice
    assert set(listed) | {"train"} == set(_stage_names()) and "train" not in listed


def test_readme_stage_table_lists_the_stages_in_run_order() -> None:
    assert _readme_stage_table() == _stage_names()


def test_cli_stage_names_are_the_stages() -> None:
    from pipeline.cli import STAGE_NAMES

    assert list(STAGE_NAMES) == _stage_names()


def test_library_names_agree_with_the_layout_table() -> None:
    from pipeline.core.runner import MANIFEST
    from pipeline.ingest.pack import META

    assert MANIFEST == layout.MANIFEST_JSON
    assert META == layout.PACK_JSON


def test_layout_names_are_distinct_plain_names() -> None:
    names = {key: value for key, value in vars(layout).items() if key.isupper()}
    assert len(names) >= 15 and len(set(names.values())) == len(names)
    assert all(isinstance(v, str) and v and "/" not in v for v in names.values())
