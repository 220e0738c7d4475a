"""Benchmark: generate N PNGs and zip them, the pipeline vs a notebook-style baseline.

The baseline is what competition notebooks do: the same batched forward pass, then
`torchvision.utils.save_image` once per image (PNG level 6, one process), then a ZIP_DEFLATED zip
of the folder. The pipeline is `generate_images` (PNG level 1, a pool of encoder processes
overlapped with the forward pass) plus `write_zip` (stored entries, validated). Both time from
loading the saved generator to the finished zip, on the same machine in the same run.

Usage (from the repository root):
    .venv/bin/python bench/bench_generate.py --n 200            # a quick check
    .venv/bin/python bench/bench_generate.py                    # 10,000 images, DCGAN-128 x0.25
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import zipfile
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torchvision.utils import save_image
from tqdm import tqdm

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from pipeline.core.device import resolve_device  # noqa: E402
from pipeline.deliver.generate import generate_images, seed_latents  # noqa: E402
from pipeline.deliver.submission import write_zip  # noqa: E402
from pipeline.gan.models import ModelSpec, build_generator, load_generator, save_generator  # noqa: E402

SIZE = 128  # DCGAN-128, the seeds' competition model


def make_generator(folder: Path, width: float, nz: int) -> None:
    """Save a randomly initialised DCGAN-128 (speed does not depend on training)."""
    torch.manual_seed(0)
    spec = ModelSpec("dcgan", size=SIZE, channels=3, nz=nz, width=width)
    save_generator(build_generator(spec), spec, folder)


def run_pipeline(gen_dir: Path, work: Path, n: int, batch: int, workers: int,
                 device: str) -> float:
    """Seconds for generate_images + write_zip."""
    start = time.perf_counter()
    generate_images(gen_dir, work / "png", n, batch, 1.0, workers, device)
    # write_zip includes the full validation (every PNG decoded), which the baseline skips.
    write_zip(work / "png", work / "images.zip", n, SIZE, "RGB", workers=workers)
    return time.perf_counter() - start


def run_baseline(gen_dir: Path, work: Path, n: int, batch: int, device: str) -> float:
    """Seconds for batched forward + save_image per image + a deflated zip."""
    start = time.perf_counter()
    torch_device = resolve_device(device, "--device")
    generator, spec = load_generator(gen_dir, torch_device)
    (work / "png").mkdir(parents=True)
    # Same latents and batch size as the pipeline, so only the writing differs.
    for first in tqdm(range(0, n, batch), desc="baseline"):
        indices = range(first, min(first + batch, n))
        with torch.inference_mode():
            images = generator(seed_latents(indices, spec.nz).to(torch_device)).cpu()
        for i, image in zip(indices, images):
            save_image(image * 0.5 + 0.5, work / "png" / f"{i:05d}.png")  # [-1, 1] -> [0, 1]
    # shutil.make_archive's default, as notebooks use it: deflate the already-deflated PNGs.
    with zipfile.ZipFile(work / "images.zip", "w", zipfile.ZIP_DEFLATED) as archive:
        for png in sorted((work / "png").iterdir()):
            archive.write(png, png.name)
    return time.perf_counter() - start


def max_level_difference(a: Path, b: Path, names: list[str]) -> int:
    """Largest pixel difference (levels of 255) between the two runs' images."""
    worst = 0
    for name in names:
        pa, pb = (np.asarray(Image.open(d / "png" / name), dtype=int) for d in (a, b))
        worst = max(worst, int(np.abs(pa - pb).max()))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=10_000, help="images to generate")
    parser.add_argument("--width", type=float, default=0.25, help="DCGAN width multiplier")
    parser.add_argument("--nz", type=int, default=128, help="latent size")
    parser.add_argument("--batch-size", type=int, default=250, help="images per forward pass")
    parser.add_argument("--workers", type=int, default=0, help="encoder processes (0 = cores)")
    parser.add_argument("--device", default="auto", choices=["auto", "cpu", "cuda"])
    parser.add_argument("--out", type=Path, default=Path("bench/out/generate"),
                        help="scratch folder (emptied first)")
    args = parser.parse_args()

    shutil.rmtree(args.out, ignore_errors=True)  # start cold: nothing to resume
    make_generator(args.out / "generator", args.width, args.nz)
    device = resolve_device(args.device, "--device")
    # Warm up (CUDA context, cuDNN, kernels) before timing, so neither side pays for it.
    warm, spec = load_generator(args.out / "generator", device)
    with torch.inference_mode():
        warm(seed_latents(range(args.batch_size), spec.nz).to(device))
    del warm
    base = run_baseline(args.out / "generator", args.out / "baseline", args.n, args.batch_size,
                        args.device)
    ours = run_pipeline(args.out / "generator", args.out / "pipeline", args.n, args.batch_size,
                        args.workers, args.device)

    # Sanity: both sides must have made the same pictures (rounding may differ by one level).
    names = [f"{i:05d}.png" for i in range(0, args.n, max(1, args.n // 50))]
    diff = max_level_difference(args.out / "baseline", args.out / "pipeline", names)
    sizes = {k: (args.out / k / "images.zip").stat().st_size / 2**20 for k in ("baseline",
                                                                              "pipeline")}
    print(f"device {device}, {os.cpu_count()} CPUs, torch threads {torch.get_num_threads()}, "
          f"{args.n} images, DCGAN-{SIZE} width {args.width}, batch {args.batch_size}")
    print(f"baseline (save_image + deflated zip): {base:8.2f} s  {args.n / base:8.1f} img/s  "
          f"zip {sizes['baseline']:.1f} MiB")
    print(f"pipeline (pool PNG + stored zip):     {ours:8.2f} s  {args.n / ours:8.1f} img/s  "
          f"zip {sizes['pipeline']:.1f} MiB")
    print(f"speed-up {base / ours:.2f}x; max pixel difference between the two {diff} level(s)")


if __name__ == "__main__":
    main()
