"""Benchmark: what training below the delivery size costs at best (augment.size < pad.size).

The real images themselves go through the shortcut: each clean image is area-downscaled to
--low pixels (as the augment stage stores it) and upsampled back bicubically (as generate does),
then scored against the untouched clean images with the pipeline's FID: the floor a perfect
--low px generator would reach. Beside it, the same n clean images scored unchanged, so the
small-sample bias of FID at this n is measured in the same run, with the same Inception and
the same reference statistics.

Usage (from the repository root, after `make all`, which caches data/clean's statistics):
    .venv/bin/python bench/bench_upsample.py --low 64 --n 2048
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from pipeline.core.config import ScoreConfig  # noqa: E402
from pipeline.scoring.fid import score_folders  # noqa: E402


def round_trip(path: Path, low: int) -> Image.Image:
    """Area-downscale to `low` (PIL box, as augment), bicubic back up (torch, as generate)."""
    with Image.open(path) as im:
        image = im.convert("RGB")
        side = image.size[0]
        small = image.resize((low, low), Image.Resampling.BOX)
    x = torch.from_numpy(np.array(small)).permute(2, 0, 1)[None].float()  # (1, 3, low, low)
    x = x / 127.5 - 1
    up = F.interpolate(x, size=(side, side), mode="bicubic", align_corners=False).clamp(-1, 1)
    pixels = up[0].permute(1, 2, 0).mul(127.5).add(127.5).round().byte().numpy()
    return Image.fromarray(pixels)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clean", type=Path, default=Path("data/clean"))
    parser.add_argument("--cache", type=Path, default=Path("data/cache"))
    parser.add_argument("--low", type=int, default=64)
    parser.add_argument("--n", type=int, default=2048)
    args = parser.parse_args()

    files = sorted(args.clean.glob("*.png"))[: args.n]
    cfg = ScoreConfig(n=len(files), batch_size=50, device="cpu")
    with tempfile.TemporaryDirectory() as tmp:
        same, shortcut = Path(tmp) / "same", Path(tmp) / "shortcut"
        same.mkdir()
        shortcut.mkdir()
        for i, path in enumerate(files):
            Image.open(path).convert("RGB").save(same / f"{i:05d}.png")
            round_trip(path, args.low).save(shortcut / f"{i:05d}.png")
        base = score_folders(same, args.clean, cfg, cache_dir=args.cache, quiet=True)
        low = score_folders(shortcut, args.clean, cfg, cache_dir=args.cache, quiet=True)
    assert base.n_generated == low.n_generated == len(files)  # same n on both sides
    print(f"{len(files)} clean images vs data/clean ({base.n_reference} images):")
    print(f"  unchanged                      FID {base.fid:7.2f}  KID {base.kid_mean:.4f}")
    print(f"  {args.low} px and back (bicubic)      FID {low.fid:7.2f}  KID {low.kid_mean:.4f}")
    print(f"  cost of the shortcut: FID +{low.fid - base.fid:.2f} "
          f"({low.fid / max(base.fid, 1e-9):.1f}x the unchanged sample's)")


if __name__ == "__main__":
    main()
