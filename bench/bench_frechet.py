"""Benchmark: the Frechet distance of `make fid` and of the training evaluations, against
pytorch-fid's `calculate_frechet_distance`, on the same features.

Usage:
    .venv/bin/python bench/bench_frechet.py                       # 500x1000, 1024x2611, 2048x2611
    .venv/bin/python bench/bench_frechet.py --sizes 20x30 --dim 64   # the smoke test's size

Each case is N generated against M reference features of DIM (2,048, Inception's pool3), made
non-negative and correlated as pool3 features are (a ReLU of a low-rank signal plus noise).
Ours is `fid.fid_against`, what `make fid` and every `train.eval_kimg` evaluation call: the
reference arrives with its cached mean, covariance and features, as data/cache holds them, and
the generated statistics are computed inside. Theirs is what a user of pytorch-fid runs on the
same features: `np.mean`/`np.cov` of the generated set, then `calculate_frechet_distance`
(scipy's sqrtm) against the same cached reference statistics. Check: the same FID to 1e-3.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
sys.path.insert(0, str(ROOT / "bench"))

from common import Result, finish  # noqa: E402
from pytorch_fid.fid_score import calculate_frechet_distance  # noqa: E402

from pipeline.scoring import fid  # noqa: E402


def pool3_like(n: int, dim: int, seed: int, scale: float = 1.0) -> np.ndarray:
    """(n, dim) float32 features: ReLU of a rank-64 signal plus noise, as Inception's are."""
    rng = np.random.default_rng(seed)
    mixing = np.random.default_rng(0).standard_normal((64, dim))  # shared by both sets
    signal = rng.standard_normal((n, 64)) @ mixing * scale / 8
    return np.maximum(signal + 0.3 * rng.standard_normal((n, dim)), 0).astype(np.float32)


def best_of(repeats: int, call) -> tuple[float, float]:
    """(fastest seconds, value) of `repeats` calls."""
    best, value = float("inf"), float("nan")
    for _ in range(repeats):
        start = time.perf_counter()
        value = call()
        best = min(best, time.perf_counter() - start)
    return best, value


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", nargs="+", default=["500x1000", "1024x2611", "2048x2611"],
                        help="NxM: generated x reference images")
    parser.add_argument("--dim", type=int, default=2048, help="feature size (pool3: 2048)")
    parser.add_argument("--repeats", type=int, default=2, help="timed calls a side, best kept")
    args = parser.parse_args()
    for size in args.sizes:
        n, m = (int(v) for v in size.split("x"))
        generated = pool3_like(n, args.dim, seed=1, scale=1.1)
        kept = pool3_like(m, args.dim, seed=2)
        mu, sigma = fid.statistics(kept.astype(np.float64))  # what the cache holds
        reference = fid.ReferenceStats(mu, sigma, m, Path("reference.npz"), kept)
        features = generated.astype(np.float64)  # as extract_features returns them

        def theirs() -> float:
            return float(calculate_frechet_distance(*fid.statistics(features), mu, sigma))

        ours_s, ours = best_of(args.repeats, lambda: fid.fid_against(features, reference))
        theirs_s, value = best_of(args.repeats, theirs)
        path = ("features (low rank)" if fid.low_rank_is_cheaper(n, m, args.dim)
                else "statistics")
        finish(Result("frechet", f"{n} vs {m}, dim {args.dim}", ours_s=ours_s,
                      theirs_s=theirs_s, checks={"same FID to 1e-3": abs(ours - value) <= 1e-3},
                      notes={"ours_fid": ours, "theirs_fid": value, "ours_path": path}))


if __name__ == "__main__":
    main()
