"""Metric functions on synthetic feature arrays whose answers are known by construction."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from pytorch_fid.fid_score import calculate_frechet_distance

from pipeline.core.errors import UserError
from pipeline.scoring import metrics
from pipeline.scoring.fid import (
    ReferenceStats,
    fid_against,
    frechet_distance,
    frechet_distance_low_rank,
    low_rank_is_cheaper,
    statistics,
)


def gaussian(n: int, dim: int, seed: int, shift: float = 0.0) -> np.ndarray:
    """(n, dim) standard normal features, shifted by `shift` along every axis."""
    return np.random.default_rng(seed).standard_normal((n, dim)) + shift


# ----------------------------------------------------------------------------------------------
# FID


def test_fid_of_identical_sets_is_zero() -> None:
    features = gaussian(300, 32, seed=0)
    mu, sigma = statistics(features)
    assert abs(frechet_distance(mu, sigma, mu, sigma)) < 1e-8


def test_fid_of_diagonal_gaussians_has_closed_form() -> None:
    # N(m1, diag(a)) vs N(m2, diag(b)): |m1 - m2|^2 + sum (sqrt(a) - sqrt(b))^2
    rng = np.random.default_rng(1)
    m1, m2 = rng.standard_normal(16), rng.standard_normal(16)
    a, b = rng.uniform(0.1, 4, 16), rng.uniform(0.1, 4, 16)
    expected = np.sum((m1 - m2) ** 2) + np.sum((np.sqrt(a) - np.sqrt(b)) ** 2)
    assert frechet_distance(m1, np.diag(a), m2, np.diag(b)) == pytest.approx(expected, rel=1e-10)


@pytest.mark.parametrize("n", [20, 400])  # rank-deficient (n < dim) and full-rank covariances
def test_fid_equals_pytorch_fid_sqrtm(n: int) -> None:
    x, y = gaussian(n, 64, seed=2), gaussian(n, 64, seed=3, shift=0.3) ** 2
    mu1, s1 = statistics(x)
    mu2, s2 = statistics(y)
    reference = calculate_frechet_distance(mu1, s1, mu2, s2)
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(reference, abs=1e-6, rel=1e-8)


@pytest.mark.parametrize("n1, n2", [(20, 20), (12, 30), (400, 300)])  # rank-deficient, full
def test_fid_from_features_equals_pytorch_fid_sqrtm(n1: int, n2: int) -> None:
    x, y = gaussian(n1, 64, seed=2), gaussian(n2, 64, seed=3, shift=0.3) ** 2
    reference = calculate_frechet_distance(*statistics(x), *statistics(y))
    # Rank-deficient covariances cost scipy's sqrtm a few 1e-6 (at 20 vs 20 here: 4e-6 from the
    # value that a 40-digit mpmath SVD gives, which the low-rank form matches to 1e-12).
    tolerance = 1e-6 if min(n1, n2) > 64 else 1e-5
    assert frechet_distance_low_rank(x, y) == pytest.approx(reference, abs=tolerance, rel=1e-8)
    assert frechet_distance_low_rank(y, x) == pytest.approx(frechet_distance_low_rank(x, y),
                                                            rel=1e-12)


def test_the_feature_path_is_taken_where_it_is_cheaper() -> None:
    """The cases timed on one core (bench/RESULTS.md) and a big reference with few images."""
    assert low_rank_is_cheaper(500, 1000, 2048)  # a training evaluation: 0.14 s against 3.7
    assert low_rank_is_cheaper(1024, 2611, 2048)  # 1.4 s against 4.7
    assert not low_rank_is_cheaper(2048, 2611, 2048)  # the default make fid: 4.8 against 5.1
    assert not low_rank_is_cheaper(500, 60000, 2048)  # (500 x 60,000) product and its SVD
    assert not low_rank_is_cheaper(10000, 10000, 2048)  # Fashion-MNIST's make fid


def test_fid_against_a_reference_with_or_without_its_features() -> None:
    """From the features when the reference kept them (a folder), from mu and sigma when it did
    not (a bare .npz): the same number either way; NaN features are a UserError."""
    generated, kept = gaussian(30, 64, seed=9), gaussian(50, 64, seed=10, shift=0.2)
    mu, sigma = statistics(kept)
    with_features = ReferenceStats(mu, sigma, 50, Path("ref.npz"), kept.astype(np.float32))
    bare = ReferenceStats(mu, sigma, 0, Path("ref.npz"), None)
    assert low_rank_is_cheaper(30, 50, 64)  # so with_features takes the feature path
    expected = calculate_frechet_distance(*statistics(generated), mu, sigma)
    # float32 features: the cache keeps them so, and the network computes in float32
    assert fid_against(generated, with_features) == pytest.approx(expected, rel=1e-6)
    assert fid_against(generated, bare) == pytest.approx(expected, abs=1e-6, rel=1e-8)
    generated[3, 5] = np.nan
    with pytest.raises(UserError, match="NaN"):
        fid_against(generated, with_features)


# ----------------------------------------------------------------------------------------------
# KID


def test_kid_of_same_distribution_is_near_zero() -> None:
    x, y = gaussian(400, 64, seed=4), gaussian(400, 64, seed=5)
    same = metrics.kid(x, y, subsets=20, subset_size=200)
    shifted = metrics.kid(x, gaussian(400, 64, seed=6, shift=0.5), subsets=20, subset_size=200)
    assert abs(same.mean) < 0.02 * shifted.mean
    assert shifted.mean > 10 * shifted.std > 0


def test_kid_caps_subset_size_and_is_seeded() -> None:
    x, y = gaussian(12, 8, seed=7), gaussian(30, 8, seed=8)
    first = metrics.kid(x, y, subsets=5, subset_size=1000, seed=3)
    assert first.subset_size == 12 and first.subsets == 5
    assert metrics.kid(x, y, subsets=5, subset_size=1000, seed=3) == first
    with pytest.raises(ValueError):
        metrics.kid(x[:1], y, subsets=2)


def test_kid_matches_direct_unbiased_formula() -> None:
    # One subset covering both whole sets: compare with a plain double loop over pairs.
    x, y = gaussian(6, 5, seed=9), gaussian(6, 5, seed=10, shift=0.2)
    k = lambda a, b: (a @ b / 5 + 1) ** 3  # noqa: E731
    m = 6
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    assert metrics.kid(x, y, subsets=3).mean == pytest.approx(xx + yy - 2 * xy, rel=1e-5)


# ----------------------------------------------------------------------------------------------
# Precision and recall


def test_precision_recall_of_identical_sets_is_one() -> None:
    x = gaussian(200, 32, seed=11)
    assert metrics.precision_recall(x, x.copy(), k=3) == (1.0, 1.0)


def test_precision_recall_of_far_disjoint_sets_is_zero() -> None:
    x, y = gaussian(200, 32, seed=12), gaussian(200, 32, seed=13, shift=100.0)
    assert metrics.precision_recall(x, y, k=3) == (0.0, 0.0)


def test_precision_recall_on_a_line() -> None:
    # Reference: points 0..9 on one axis, so every k=1 ball has radius 1 (ends included).
    dim = 4
    ref = np.zeros((10, dim))
    ref[:, 0] = np.arange(10)
    gen = np.zeros((4, dim))
    gen[:, 0] = [0.5, 4.2, 9.9, 50.0]  # three inside the reference manifold, one far away
    precision, _ = metrics.precision_recall(gen, ref, k=1)
    assert precision == pytest.approx(0.75)
    assert np.allclose(metrics.knn_radii(ref, k=1), 1.0, atol=1e-5)  # squared radius 1


# ----------------------------------------------------------------------------------------------
# MiFID


def test_memorization_distance_known_values() -> None:
    ref = np.eye(8)[:4]  # four orthonormal rows
    assert metrics.memorization_distance(ref * 3.0, ref) == pytest.approx(0.0, abs=1e-6)
    assert metrics.memorization_distance(-ref, ref) == pytest.approx(0.0, abs=1e-6)  # |cos|
    assert metrics.memorization_distance(np.eye(8)[4:], ref) == pytest.approx(1.0, abs=1e-6)


def test_mifid_penalises_copies_only() -> None:
    ref = gaussian(50, 16, seed=14)
    fresh = gaussian(50, 16, seed=15)
    # distance above epsilon: MiFID = FID (up to the 1e-15 guard)
    assert metrics.mifid(12.5, fresh, ref) == pytest.approx(12.5, rel=1e-12)
    copies = ref + 1e-4 * gaussian(50, 16, seed=16)  # near-exact copies: distance ~0
    distance = metrics.memorization_distance(copies, ref)
    assert distance < metrics.MIFID_EPSILON
    assert metrics.mifid(12.5, copies, ref) == pytest.approx(12.5 / distance, rel=1e-6)


# ----------------------------------------------------------------------------------------------
# Cross-check with torchmetrics (a dev dependency; skipped where it is missing)


def test_kid_agrees_with_torchmetrics() -> None:
    torchmetrics_kid = pytest.importorskip("torchmetrics.image.kid")
    import torch

    x, y = gaussian(60, 2048, seed=17), gaussian(60, 2048, seed=18, shift=0.1)
    ours = metrics.kid(x, y, subsets=1, subset_size=60)
    # torchmetrics' polynomial kernel defaults to degree 3, gamma 1/D, coef 1: the same kernel.
    theirs = torchmetrics_kid.poly_mmd(torch.from_numpy(x), torch.from_numpy(y))
    assert ours.mean == pytest.approx(float(theirs), rel=1e-4)


def test_kid_precomputed_kernel_equals_per_subset_kernels() -> None:
    x, y = gaussian(80, 32, seed=19), gaussian(90, 32, seed=20, shift=0.3)
    whole = metrics.kid(x, y, subsets=10, subset_size=50, seed=1)
    per_subset = metrics.kid(x, y, subsets=10, subset_size=50, seed=1, max_kernel_entries=0)
    assert whole.mean == pytest.approx(per_subset.mean, rel=1e-5)
    assert whole.std == pytest.approx(per_subset.std, rel=1e-4)


class _FeaturesAsImages(torch.nn.Module):
    """Lets torchmetrics' MiFID take our feature arrays as its 'images': its probe image (a 4-D
    uint8 batch) gets a zero feature row of the right width, real inputs pass through."""

    def __init__(self, width: int) -> None:
        super().__init__()
        self.width = width

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.zeros(x.shape[0], self.width) if x.ndim == 4 else x


@pytest.mark.parametrize("copies", [False, True])
def test_mifid_agrees_with_torchmetrics(copies: bool) -> None:
    """Kaggle's MiFID averages, over the GENERATED images, the distance to the nearest training
    image; torchmetrics averages over its 'real' set. FID is symmetric, so giving torchmetrics
    our generated features as its reals computes Kaggle's definition: that must match exactly."""
    mifid_module = pytest.importorskip("torchmetrics.image.mifid")
    ref = gaussian(300, 32, seed=21)
    gen = gaussian(200, 32, seed=22) + 0.3
    if copies:  # every generated image a near copy: memorisation distance below epsilon
        gen = ref[:200] + 1e-3 * gaussian(200, 32, seed=23)

    def torchmetrics_mifid(averaged_over: np.ndarray, other: np.ndarray) -> float:
        metric = mifid_module.MemorizationInformedFrechetInceptionDistance(
            feature=_FeaturesAsImages(32), normalize=False)
        metric.update(torch.from_numpy(averaged_over).float(), real=True)
        metric.update(torch.from_numpy(other).float(), real=False)
        return float(metric.compute())

    mu_g, sigma_g = statistics(gen)
    mu_r, sigma_r = statistics(ref)
    ours = metrics.mifid(frechet_distance(mu_g, sigma_g, mu_r, sigma_r), gen, ref)
    # With copies the distance is ~5e-7, which torchmetrics' float32 cosines resolve only to a
    # few percent; elsewhere the two agree to float32 precision.
    assert ours == pytest.approx(torchmetrics_mifid(gen, ref), rel=0.05 if copies else 1e-4)
    if copies:  # torchmetrics' own orientation misses copies of only 2/3 of the training set
        assert torchmetrics_mifid(ref, gen) < ours / 100


def test_precision_and_recall_read_in_words_as_the_notes_do() -> None:
    """Seed 000's table: high precision with low recall is mode collapse; low precision with
    high recall is noisy images. The real features of a collapsed set read that way too."""
    from pipeline.scoring.metrics import precision_recall, read_precision_recall

    assert "mode collapse" in read_precision_recall(0.9, 0.1)
    assert "noisy" in read_precision_recall(0.2, 0.8)
    assert "realistic and varied" in read_precision_recall(0.7, 0.7)
    assert "neither" in read_precision_recall(0.1, 0.0)
    # A verdict needs one side high and the other low; between the bands the words say "fairly"
    # (the Fashion-MNIST profile's 0.528 / 0.474 is not mode collapse).
    assert read_precision_recall(0.528, 0.474).startswith("realistic and fairly varied")
    assert "mode collapse" not in read_precision_recall(0.528, 0.474)
    assert read_precision_recall(0.35, 0.6).startswith("fairly realistic and varied")
    assert read_precision_recall(0.1, 0.4).startswith("not realistic yet and fairly varied")
    assert "mode collapse" in read_precision_recall(0.5, 0.29)
    assert "noisy" in read_precision_recall(0.29, 0.5)
    rng = np.random.default_rng(0)
    reference = rng.normal(size=(400, 16))
    collapsed = reference[:5].repeat(40, axis=0) + rng.normal(scale=0.01, size=(200, 16))
    assert "mode collapse" in read_precision_recall(*precision_recall(collapsed, reference))


# ----------------------------------------------------------------------------------------------
# Inception Score and the nearest pairs


def test_inception_score_by_hand() -> None:
    """Uniform predictions: p(y|x) = p(y), KL 0, IS 1. Confident, evenly spread: IS = classes."""
    assert metrics.inception_score(np.zeros((20, 5)), splits=2).mean == pytest.approx(1.0)
    confident = np.tile(np.eye(4) * 50.0, (5, 1))  # 20 images, 5 per class, near one-hot
    score = metrics.inception_score(confident, splits=1)
    assert score.mean == pytest.approx(4.0, rel=1e-6) and score.std == 0.0
    with pytest.raises(ValueError, match="N >= splits"):
        metrics.inception_score(np.zeros((3, 5)), splits=10)


@pytest.mark.parametrize("splits", [1, 10])
def test_inception_score_agrees_with_torchmetrics(monkeypatch: pytest.MonkeyPatch,
                                                  splits: int) -> None:
    """The same logits through torchmetrics' InceptionScore: the same mean. It shuffles the rows
    before splitting (we split in order, as the original code does): its shuffle is made the
    identity here, so both see the same splits. It reports the sample std (ddof 1), we the
    original's population std (ddof 0)."""
    inception_module = pytest.importorskip("torchmetrics.image.inception")
    logits = np.random.default_rng(23).standard_normal((200, 1008)) * 3
    ours = metrics.inception_score(logits, splits=splits)
    theirs = inception_module.InceptionScore(feature=_FeaturesAsImages(1008), splits=splits)
    monkeypatch.setattr(torch, "randperm", lambda n, **_: torch.arange(n))
    theirs.update(torch.from_numpy(logits))
    mean, std = theirs.compute()
    assert ours.mean == pytest.approx(float(mean), rel=1e-6)
    if splits > 1:
        assert ours.std == pytest.approx(float(std) * np.sqrt((splits - 1) / splits), rel=1e-5)


def test_nearest_pairs_finds_the_copies_first() -> None:
    """Generated row 3 is reference row 7 scaled (cosine distance 0), row 1 is close to row 2."""
    reference = gaussian(10, 16, seed=24)
    generated = gaussian(5, 16, seed=25)
    generated[3] = 2.5 * reference[7]
    generated[1] = reference[2] + 0.05 * gaussian(1, 16, seed=26)[0]
    pairs = metrics.nearest_pairs(generated, reference, count=2)
    assert [(g, r) for g, r, _ in pairs] == [(3, 7), (1, 2)]
    assert pairs[0][2] == pytest.approx(0.0, abs=1e-6) and 0 < pairs[1][2] < 0.01
    distance = metrics.memorization_distance(generated, reference)
    every = metrics.nearest_pairs(generated, reference, count=5)
    assert np.mean([d for _, _, d in every]) == pytest.approx(distance, rel=1e-6)  # MiFID's d
