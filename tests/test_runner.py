"""The stage graph: content fingerprints, caching, rerun sets and atomic outputs.

These tests use toy stages written as real script files (their source is part of the
fingerprint) so they exercise the runner alone; tests/test_end_to_end.py runs the real stages.
"""

from __future__ import annotations

import importlib.util
import json
import shutil
from pathlib import Path

import pytest

from pipeline.core.config import BOOKKEEPING_KEYS, load_params
from pipeline.core.runner import (
    MANIFEST,
    Graph,
    Project,
    Stage,
    StageContext,
    StageResult,
    code_files,
    code_hash,
)

PACKAGE_DIR = Path(__file__).resolve().parents[1] / "pipeline"

SCRIPT = '''
from pipeline.ingest.pack import PackInfo  # a pipeline import: part of the code fingerprint

def run(ctx):
    (ctx.out_dir / "value.txt").write_text(str(ctx.params.{section}.{key}))
    log = ctx.project.root / "log.txt"
    log.write_text(log.read_text() + "{name}\\n" if log.exists() else "{name}\\n")
    if (ctx.project.root / "fail-{name}").exists():
        (ctx.out_dir / "half.txt").write_text("half")
        raise RuntimeError("killed half-way")
    return {result}("done {name}", {{"value": 1}})
'''


def make_stage(tmp_path: Path, name: str, upstream: tuple[str, ...], section: str,
               key: str) -> Stage:
    script = tmp_path / "stages" / f"{name}.py"
    script.parent.mkdir(exist_ok=True)
    if not script.exists():  # a test may have edited it: keep the edit
        script.write_text(SCRIPT.format(section=section, key=key, name=name, result="StageResult"))
    spec = importlib.util.spec_from_file_location(f"toy_{name}", script)
    module = importlib.util.module_from_spec(spec)
    module.StageResult = StageResult
    spec.loader.exec_module(module)
    return Stage(name=name, upstream=upstream, section=section, output=f"data/{name}",
                 script=script, run=module.run)


def toy_graph(tmp_path: Path, overrides: list[str] = ()) -> Graph:
    stages = [
        make_stage(tmp_path, "a", (), "pad", "size"),
        make_stage(tmp_path, "b", ("a",), "train", "seed"),
        make_stage(tmp_path, "c", ("b",), "generate", "count"),
        make_stage(tmp_path, "d", ("c", "a"), "score", "batch_size"),
    ]
    params = load_params(tmp_path / "params.yaml", list(overrides))
    return Graph(stages, Project(tmp_path), params, PACKAGE_DIR)


def ran(tmp_path: Path) -> list[str]:
    log = tmp_path / "log.txt"
    names = log.read_text().split() if log.exists() else []
    log.unlink(missing_ok=True)
    return names


def test_first_run_runs_all_then_everything_is_cached(tmp_path, capsys):
    toy_graph(tmp_path).run(["d"])
    assert ran(tmp_path) == ["a", "b", "c", "d"]
    toy_graph(tmp_path).run(["d"])
    assert ran(tmp_path) == []
    out = capsys.readouterr().out.splitlines()
    assert out[-4:] == ["a: cached", "b: cached", "c: cached", "d: cached"]
    assert out[0].startswith("a: done a, ")


@pytest.mark.parametrize(
    "override, expected",
    [("train.seed=3", ["b", "c", "d"]), ("score.batch_size=7", ["d"]),
     ("pad.size=64", ["a", "b", "c", "d"]), ("generate.count=5", ["c", "d"])],
)
def test_changing_a_section_reruns_it_and_downstream_only(tmp_path, override, expected):
    toy_graph(tmp_path).run(["d"])
    ran(tmp_path)
    graph = toy_graph(tmp_path, [override])
    graph.run(["d"])
    assert ran(tmp_path) == expected
    key = override.split("=")[0]
    assert (tmp_path / f"data/{expected[0]}/value.txt").read_text() == override.split("=")[1]
    assert key.split(".")[1] in json.dumps(graph.manifest(expected[0])["params"])


def test_editing_a_stage_script_reruns_it(tmp_path):
    toy_graph(tmp_path).run(["d"])
    ran(tmp_path)
    script = tmp_path / "stages" / "c.py"
    script.write_text(script.read_text().replace('"done {name}"'.format(name="c"),
                                                 '"done c!"'))
    graph = toy_graph(tmp_path)
    assert graph.state("c") == ("stale", "code changed")
    assert graph.state("d")[0] == "stale" and "c changed" in graph.state("d")[1]
    graph.run(["d"])
    assert ran(tmp_path) == ["c", "d"]


def test_comment_docstring_and_layout_edits_do_not_rerun(tmp_path):
    toy_graph(tmp_path).run(["d"])
    ran(tmp_path)
    script = tmp_path / "stages" / "c.py"
    text = script.read_text().replace("def run(ctx):", 'def run(ctx):\n    """Says why."""')
    text = text.replace("return ", "# a new comment\n    return ").replace(
        ', {"value": 1}', ',  # rewrapped\n        {"value": 1}')
    script.write_text("# header comment\n" + text + "\n\n# trailing note\n")
    assert "rewrapped" in script.read_text() and "Says why" in script.read_text()
    graph = toy_graph(tmp_path)
    assert graph.state("c") == ("cached", "")
    graph.run(["d"])
    assert ran(tmp_path) == []


def _package_copy(tmp_path: Path) -> Path:
    copy = tmp_path / "copy" / "pipeline"
    shutil.copytree(PACKAGE_DIR, copy, ignore=shutil.ignore_patterns("__pycache__"))
    return copy


def test_code_hash_sees_code_in_a_deep_module_but_not_its_comments(tmp_path):
    package = _package_copy(tmp_path)
    script = Path(__file__).resolve().parents[1] / "stages" / "train.py"
    before = code_hash(script, package)
    losses = package / "gan" / "losses.py"
    text = losses.read_text()
    losses.write_text('"""A new module docstring."""\n# a comment\n' + text.split('"""', 2)[2])
    assert code_hash(script, package) == before
    losses.write_text(text.replace("    return ", "    return 0 + ", 1))
    assert code_hash(script, package) != before


def test_code_fingerprint_follows_relative_imports(tmp_path):
    package = tmp_path / "pipeline"
    (package / "sub").mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "sub" / "__init__.py").write_text("from .helper import VALUE\n")
    (package / "sub" / "helper.py").write_text("from ..deep import X\nVALUE = 1\n")
    (package / "deep.py").write_text("X = 2\n")
    script = tmp_path / "stage.py"
    script.write_text("from pipeline.sub import VALUE\n")
    names = {p.relative_to(tmp_path).as_posix() for p in code_files(script, package)}
    assert names == {"stage.py", "pipeline/sub/__init__.py", "pipeline/sub/helper.py",
                     "pipeline/deep.py"}
    before = code_hash(script, package)
    (package / "deep.py").write_text("X = 3\n")
    assert code_hash(script, package) != before


def test_code_fingerprint_follows_pipeline_imports(tmp_path):
    stage = make_stage(tmp_path, "a", (), "pad", "size")
    names = {p.name for p in code_files(stage.script, PACKAGE_DIR)}
    assert {"a.py", "pack.py"} <= names
    assert "config.py" not in names  # params enter the fingerprint as values instead


def test_status_reports_which_param_changed(tmp_path):
    toy_graph(tmp_path).run(["d"])
    graph = toy_graph(tmp_path, ["train.seed=9"])
    state, why = graph.state("b")
    assert state == "stale" and "train.seed 0 -> 9" in why
    assert graph.state("a") == ("cached", "")
    assert toy_graph(tmp_path).state("d") == ("cached", "")
    assert Graph([], Project(tmp_path / "empty"), graph.params, PACKAGE_DIR).order == []


def test_failed_stage_keeps_previous_output_and_is_not_done(tmp_path):
    toy_graph(tmp_path).run(["d"])
    ran(tmp_path)
    (tmp_path / "fail-b").touch()
    graph = toy_graph(tmp_path, ["train.seed=4"])
    with pytest.raises(RuntimeError):
        graph.run(["d"])
    # The previous good output is intact, still labelled with its old fingerprint.
    assert (tmp_path / "data/b/value.txt").read_text() == "0"
    assert not (tmp_path / "data/b/half.txt").exists()
    assert graph.state("b")[0] == "stale"
    (tmp_path / "fail-b").unlink()
    ran(tmp_path)
    toy_graph(tmp_path, ["train.seed=4"]).run(["d"])
    assert ran(tmp_path) == ["b", "c", "d"]
    assert not list((tmp_path / "data").glob(".b.partial-*"))


def test_first_failed_run_leaves_no_output(tmp_path):
    (tmp_path / "fail-a").touch()
    graph = toy_graph(tmp_path)
    with pytest.raises(RuntimeError):
        graph.run(["a"])
    assert not (tmp_path / "data/a" / MANIFEST).exists()
    assert graph.state("a") == ("missing", "never ran")


def test_force_reruns_only_the_named_stage(tmp_path):
    toy_graph(tmp_path).run(["d"])
    ran(tmp_path)
    toy_graph(tmp_path).run(["c"], force=["c"])
    assert ran(tmp_path) == ["c"]


def test_stage_context_run_key_ignores_excluded_keys(tmp_path):
    params_a = load_params(tmp_path / "p.yaml", ["train.kimg=10"])
    params_b = load_params(tmp_path / "p.yaml", ["train.kimg=20"])
    params_c = load_params(tmp_path / "p.yaml", ["train.seed=2"])

    def key(params):
        ctx = StageContext(Project(tmp_path), params, tmp_path, {}, "fp", {"augment": "x"}, "code")
        return ctx.run_key(params.train, exclude=("kimg",))

    assert key(params_a) == key(params_b) != key(params_c)


def test_keys_read_from_other_sections_enter_the_fingerprint(tmp_path):
    def graph(overrides):
        stage = make_stage(tmp_path, "a", (), "crop", "method")
        stage = Stage(stage.name, stage.upstream, stage.section, stage.output, stage.script,
                      stage.run, reads=("pad.max_pixels",))
        return Graph([stage], Project(tmp_path), load_params(tmp_path / "p.yaml", overrides),
                     PACKAGE_DIR)

    base = graph([]).fingerprint("a")
    assert graph(["pad.size=64"]).fingerprint("a") == base  # a key it does not read
    assert graph(["pad.max_pixels=100"]).fingerprint("a") != base


@pytest.mark.parametrize("override", ["train.kimg=50", "train.minutes=3", "train.tick_kimg=2",
                                      "train.checkpoint_kimg=8", "train.snapshot_kimg=8",
                                      "train.keep_checkpoints=5", "train.threads=1",
                                      "train.collapse_ratio=0.2", "train.eval_kimg=10"])
def test_bookkeeping_knobs_continue_the_same_training_run(tmp_path, override):
    """The run folder is keyed by what changes the trajectory: a bookkeeping knob (as the train
    stage excludes them) keeps the key, so training continues; a learning rate does not."""
    def key(*overrides):
        params = load_params(tmp_path / "p.yaml", list(overrides))
        ctx = StageContext(Project(tmp_path), params, tmp_path, {}, "fp", {"augment": "x"}, "code")
        return ctx.run_key(params.train, exclude=BOOKKEEPING_KEYS)

    assert key(override) == key() != key("train.lr_g=0.001")
