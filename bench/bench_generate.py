"""Benchmark: generate N PNGs and zip them, the pipeline vs a notebook-style baseline.

The baseline is what competition notebooks do: the same batched forward pass, then
`torchvision.utils.save_image` once per image (PNG level 6, one process), then a ZIP_DEFLATED zip
of the folder. The pipeline is `generate_images` (PNG level 1, a pool of encoder processes
overlapped with the forward pass) plus `write_zip` (stored entries, validated). Both time from
loading the saved generator to the finished zip, on the same machine in the same run.

The generator matters: a trained one draws detailed images whose PNGs are 2-3x larger than a
random network's smooth noise, and encoding is most of the work. The recorded run uses the
default run's trained generator (`--generator data/train/best`, FastGAN trained at 64 px and
delivered at 128 as generate does); without it a random DCGAN-128 stands in (smoke runs only).
Checks: both zips hold N images, and the pictures agree to one level of 255 (rounding).

Usage (from the repository root):
    .venv/bin/python bench/bench_generate.py --n 200                     # a quick check
    .venv/bin/python bench/bench_generate.py --generator data/train/best  # 10,000, trained G
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
from pipeline.gan.models import (  # noqa: E402
    ModelSpec,
    build_generator,
    delivered,
    load_generator,
    save_generator,
)

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Result, finish  # noqa: E402

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
    generate_images(gen_dir, work / "png", n, batch, 1.0, workers, device, quiet=True)
    spec = load_generator(gen_dir)[1]
    mode = "RGB" if spec.channels == 3 else "L"
    # write_zip includes the full validation (every PNG decoded), which the baseline skips.
    write_zip(work / "png", work / "images.zip", n, spec.delivered_size, mode, workers=workers)
    return time.perf_counter() - start


def run_baseline(gen_dir: Path, work: Path, n: int, batch: int, device: str) -> float:
    """Seconds for batched forward + save_image per image + a deflated zip."""
    start = time.perf_counter()
    torch_device = resolve_device(device, "--device")
    generator, spec = load_generator(gen_dir, torch_device)
    generator = delivered(generator, spec)  # upsampled to the competition size, as generate
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
    parser.add_argument("--generator", type=Path, default=None,
                        help="a saved generator folder (e.g. data/train/best); default: a "
                        "random DCGAN-128 of --width")
    parser.add_argument("--out", type=Path, default=Path("bench/out/generate"),
                        help="scratch folder (emptied first)")
    args = parser.parse_args()

    shutil.rmtree(args.out, ignore_errors=True)  # start cold: nothing to resume
    if args.generator is None:
        make_generator(args.out / "generator", args.width, args.nz)
    else:
        shutil.copytree(args.generator, args.out / "generator")
    spec = load_generator(args.out / "generator")[1]
    model = (f"{spec.name}-{spec.size} width {spec.width:g}"
             + (f" delivered at {spec.delivered_size}" if spec.delivered_size > spec.size else "")
             + ("" if args.generator else " (random weights)"))
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
          f"{args.n} images, {model}, batch {args.batch_size}")
    print(f"baseline (save_image + deflated zip): {base:8.2f} s  {args.n / base:8.1f} img/s  "
          f"zip {sizes['baseline']:.1f} MiB")
    print(f"pipeline (pool PNG + stored zip):     {ours:8.2f} s  {args.n / ours:8.1f} img/s  "
          f"zip {sizes['pipeline']:.1f} MiB")
    counts = {k: len(zipfile.ZipFile(args.out / k / "images.zip").namelist())
              for k in ("baseline", "pipeline")}
    finish(Result(
        "generate", f"{args.n} PNGs, {model}", ours_s=ours, theirs_s=base,
        checks={"same pictures (<= 1 level)": diff <= 1,
                "same image count": counts["baseline"] == counts["pipeline"] == args.n},
        notes={"ours_zip_mib": sizes["pipeline"], "theirs_zip_mib": sizes["baseline"],
               "max_level_difference": diff}))


if __name__ == "__main__":
    main()
