"""Benchmark: what training below the delivery size costs, and which upsampler costs least.

Two measurements, every side scored with the pipeline's FID against the same data/clean
statistics (same Inception, same reference, same n):

1. The floor. The real images go through the shortcut: each clean image is area-downscaled to
   --low pixels (as the augment stage stores it) and enlarged back with each upsampler: the
   FID a perfect --low px generator would reach. Beside them, the same n clean images
   unchanged, so FID's small-sample bias at this n is measured in the same run.
2. Trained generators (--generator, any number): the very same --low px samples (seeds 0..n-1,
   as generate draws them) enlarged with each upsampler, so the upsampler is the only
   difference between the sides.

Upsamplers: bicubic (torch's F.interpolate, a = -0.75, clamped: generate's former choice) and
lanczos (Lanczos-3, pipeline/gan/resample.py: generate's choice now).

Usage (from the repository root, after `make all`, which caches data/clean's statistics):
    .venv/bin/python bench/bench_upsample.py --low 64 --n 2048 --generator data/train/best
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from pipeline.core.config import ScoreConfig  # noqa: E402
from pipeline.deliver.generate import seed_latents, to_uint8  # noqa: E402
from pipeline.gan.models import Upsampled, load_generator  # noqa: E402
from pipeline.gan.resample import resize_lanczos  # noqa: E402
from pipeline.scoring.fid import ScoreResult, score_folders  # noqa: E402


def bicubic(images: torch.Tensor, size: int) -> torch.Tensor:
    return F.interpolate(images, size=(size, size), mode="bicubic", align_corners=False)


UPSAMPLERS: dict[str, Callable[[torch.Tensor, int], torch.Tensor]] = {
    "bicubic": bicubic, "lanczos": resize_lanczos}


def to_unit(pixels: np.ndarray) -> torch.Tensor:
    """(N, H, W, 3) uint8 -> (N, 3, H, W) float in [-1, 1]."""
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).float() / 127.5 - 1


def write_pngs(folder: Path, images: torch.Tensor) -> Path:
    """(N, 3, H, W) in [-1, 1] (clamped here, as generate does) -> folder/00000.png ..."""
    folder.mkdir(parents=True)
    for i, pixels in enumerate(to_uint8(images.clamp(-1, 1))):
        Image.fromarray(pixels).save(folder / f"{i:05d}.png")
    return folder


def load_reals(files: list[Path], low: int) -> tuple[np.ndarray, np.ndarray]:
    """The clean images as they are, and area-downscaled to `low` (PIL box, as augment)."""
    originals, small = [], []
    for path in files:
        with Image.open(path) as im:
            image = im.convert("RGB")
        originals.append(np.array(image))
        small.append(np.array(image.resize((low, low), Image.Resampling.BOX)))
    return np.stack(originals), np.stack(small)


@torch.inference_mode()
def seeded_samples(generator: Callable[[torch.Tensor], torch.Tensor], nz: int, n: int,
                   batch: int = 250) -> torch.Tensor:
    """generator(z) for the latents of images 0..n-1 as generate draws them, float32."""
    parts = [generator(seed_latents(list(range(i, min(i + batch, n))), nz))
             for i in range(0, n, batch)]
    return torch.cat(parts).float()


def generator_samples(folder: Path, n: int) -> tuple[torch.Tensor, int]:
    """Samples 0..n-1 of the saved generator at its training size, and its delivery size."""
    generator, spec = load_generator(folder)
    if not isinstance(generator, Upsampled):
        raise SystemExit(f"{folder}: trained at its delivery size ({spec.delivered_size} px); "
                         "nothing to upsample")
    return seeded_samples(generator.generator, spec.nz, n), spec.delivered_size


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clean", type=Path, default=Path("data/clean"))
    parser.add_argument("--cache", type=Path, default=Path("data/cache"))
    parser.add_argument("--low", type=int, default=64)
    parser.add_argument("--n", type=int, default=2048)
    parser.add_argument("--generator", type=Path, action="append", default=[],
                        help="a saved generator folder (data/train/best); repeatable")
    parser.add_argument("--skip-floor", action="store_true", help="generators only")
    args = parser.parse_args()

    files = sorted(args.clean.glob("*.png"))[: args.n]
    cfg = ScoreConfig(n=len(files), batch_size=50, device="cpu")
    rows: list[tuple[str, str, ScoreResult]] = []

    def score(name: str, case: str, images: torch.Tensor, tmp: Path) -> None:
        folder = write_pngs(tmp / f"{len(rows):02d}", images)
        result = score_folders(folder, args.clean, cfg, cache_dir=args.cache, quiet=True)
        assert result.n_generated == len(files)  # same n on every side
        rows.append((name, case, result))
        print(f"  {name:40s} {case:10s} FID {result.fid:7.2f}  KID {result.kid_mean:.4f}",
              flush=True)

    with tempfile.TemporaryDirectory() as tmp:
        if not args.skip_floor:
            originals, small = load_reals(files, args.low)  # each file read once
            score("clean images", "unchanged", to_unit(originals), Path(tmp))
            for name, upsample in UPSAMPLERS.items():
                score(f"clean, {args.low} px and back", name,
                      upsample(to_unit(small), originals.shape[1]), Path(tmp))
        for folder in args.generator:
            samples, size = generator_samples(folder, len(files))
            for name, upsample in UPSAMPLERS.items():
                score(str(folder), name, upsample(samples, size), Path(tmp))
    print(f"{len(files)} images each against {args.clean} "
          f"({rows[0][2].n_reference if rows else 0} images)")
    print("| sample | upsampler | FID | KID |\n|---|---|---:|---:|")
    for name, case, result in rows:
        print(f"| {name} | {case} | {result.fid:.2f} | {result.kid_mean:.4f} |")


if __name__ == "__main__":
    main()
