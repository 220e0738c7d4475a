"""Benchmark: Inception feature extraction, `python -m pytorch_fid` vs our scoring, same PNGs.

Usage:
    .venv/bin/python bench/bench_fid.py --n 2000            # data/clean when it holds 2,000 PNGs
    .venv/bin/python bench/bench_fid.py --n 100 --images some/folder

The N images are split into two halves A and B (copied into bench/out/fid/). pytorch-fid runs as
its own command line: `--save-stats` on A and on B times its extraction (its interpreter start,
timed separately, is subtracted), then `A.npz B.npz` gives its FID (its time there includes
its start-up and model build). Ours runs in this process:
model load plus extract_features on A and B, then our FID. Both use the same weights (pytorch-fid's
own file when present, else the converted fid-helper file, placed where pytorch-fid looks).
Prints images per second for both, their ratio, and both FIDs (they must agree to ~1e-3).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image, ImageDraw

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere

from pipeline.core.device import resolve_device  # noqa: E402
from pipeline.scoring import fid, inception  # noqa: E402

sys.path.insert(0, str(ROOT / "bench"))
from common import Result, finish, peak_flops, step_flops  # noqa: E402

OUT = ROOT / "bench" / "out" / "fid"


def synthetic_images(folder: Path, count: int, size: int = 128, seed: int = 0) -> list[Path]:
    """Write `count` PNGs of random coloured shapes (when no real data set is at hand)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    colour = lambda: tuple(int(c) for c in rng.integers(0, 256, 3))  # noqa: E731
    for i in range(count):
        image = Image.new("RGB", (size, size), colour())
        draw = ImageDraw.Draw(image)
        for _ in range(8):
            x0, y0 = (int(v) for v in rng.integers(0, size, 2))
            w, h = (int(v) for v in rng.integers(8, size // 2, 2))
            shape = draw.ellipse if rng.random() < 0.5 else draw.rectangle
            shape([x0, y0, x0 + w, y0 + h], fill=colour())
        image.save(folder / f"{i:06d}.png")
    return fid.list_images(folder)


def source_images(images: Path | None, n: int) -> list[Path]:
    """N PNGs: from --images, else data/clean when it has enough, else synthetic ones."""
    for folder in ([images] if images else [ROOT / "data" / "clean"]):
        if folder.is_dir():
            files = fid.list_images(folder, n)
            if len(files) == n:
                return files
            if images:
                raise SystemExit(f"{folder} holds {len(files)} images, fewer than --n {n}")
    return synthetic_images(OUT / "synthetic", n)


def split_halves(files: list[Path]) -> tuple[Path, Path]:
    """Copy the first and second half of `files` into OUT/a and OUT/b (fresh folders)."""
    half = len(files) // 2
    folders = (OUT / "a", OUT / "b")
    for folder, part in zip(folders, (files[:half], files[half : 2 * half])):
        shutil.rmtree(folder, ignore_errors=True)
        folder.mkdir(parents=True)
        for path in part:
            shutil.copy2(path, folder / path.name)
    return folders


def timed(command: list[str], env: dict[str, str]) -> tuple[float, str]:
    """Run a command, return (wall seconds, stdout); a failure stops the benchmark."""
    start = time.perf_counter()
    done = subprocess.run(command, env=env, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stderr[-2000:]}")
    return seconds, done.stdout


def pytorch_fid_command(
    weights: inception.InceptionWeights, device: str, batch_size: int,
    torch_home: Path = OUT / "torch_home",
) -> tuple[list[str], dict[str, str]]:
    """pytorch-fid's command line and an environment in which it finds `weights`."""
    # pytorch-fid reads its weights from $TORCH_HOME/hub/checkpoints/<its file name>.
    hub_file = torch_home / "hub" / "checkpoints" / inception.PYTORCH_FID_FILE
    hub_file.parent.mkdir(parents=True, exist_ok=True)
    hub_file.unlink(missing_ok=True)
    hub_file.symlink_to(weights.path.resolve())
    env = dict(os.environ, TORCH_HOME=str(torch_home))
    base = [sys.executable, "-m", "pytorch_fid", "--device", device, "--batch-size",
            str(batch_size)]
    return base, env


def pytorch_fid_extract(
    folders: tuple[Path, Path], weights: inception.InceptionWeights, device: str, batch_size: int
) -> tuple[float, list[Path]]:
    """Seconds pytorch-fid's `--save-stats` spends on the folders (start-up excluded), stats."""
    base, env = pytorch_fid_command(weights, device, batch_size)
    # Interpreter and import time, paid by each command, subtracted from extraction times.
    startup, _ = timed([sys.executable, "-c", "import pytorch_fid.fid_score"], env)
    seconds, stats = 0.0, []
    for folder in folders:
        stats.append(OUT / f"{folder.name}.npz")
        stats[-1].unlink(missing_ok=True)
        elapsed, _ = timed(base + ["--save-stats", str(folder), str(stats[-1])], env)
        seconds += elapsed - startup
    return seconds, stats


def run_pytorch_fid(
    a: Path, b: Path, weights: inception.InceptionWeights, device: str, batch_size: int
) -> dict[str, float]:
    """pytorch-fid's own command line: extraction time and its FID from the saved stats."""
    extract, stats = pytorch_fid_extract((a, b), weights, device, batch_size)
    base, env = pytorch_fid_command(weights, device, batch_size)
    start = time.perf_counter()
    _, output = timed(base + [str(stats[0]), str(stats[1])], env)  # includes its start-up
    value = float(re.search(r"FID:\s+([-\d.eE+]+)", output).group(1))
    return {"extract_s": extract, "fid_s": time.perf_counter() - start, "fid": value}


def run_ours(
    a: Path, b: Path, weights: inception.InceptionWeights, device: str, batch_size: int,
    workers: int,
) -> dict[str, float]:
    """pipeline.scoring.fid in this process: model load + extraction time, and our FID (B's
    statistics count towards the FID's time, as a reference folder's first scoring)."""
    torch_device = resolve_device(device, "--device")
    start = time.perf_counter()
    model = inception.load_inception(weights, torch_device)
    features = [fid.extract_features(fid.list_images(folder), model, batch_size, torch_device,
                                     workers) for folder in (a, b)]
    extract = time.perf_counter() - start
    start = time.perf_counter()  # B as a reference folder: its statistics and its features
    reference = fid.ReferenceStats(*fid.statistics(features[1]), len(features[1]), b,
                                   features[1].astype(np.float32))
    value = fid.fid_against(features[0], reference)  # what `make fid` computes
    return {"extract_s": extract, "fid_s": time.perf_counter() - start, "fid": value}


def main(argv: list[str] | None = None) -> dict[str, float]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2000, help="images in all (two halves)")
    parser.add_argument("--images", type=Path, default=None, help="folder of PNGs to use")
    parser.add_argument("--batch-size", type=int, default=50)
    parser.add_argument("--workers", type=int, default=0, help="ours; 0 = auto")
    parser.add_argument("--device", default="auto", help="auto | cpu | cuda")
    args = parser.parse_args(argv)

    files = source_images(args.images, args.n)
    a, b = split_halves(files)
    n = 2 * (len(files) // 2)
    weights = inception.resolve_weights(OUT / "cache")
    device = str(resolve_device(args.device, "--device"))

    for path in files:  # warm page cache for both sides: whoever runs first reads from disk
        path.read_bytes()
    theirs = run_pytorch_fid(a, b, weights, device, args.batch_size)
    ours = run_ours(a, b, weights, device, args.batch_size, args.workers)
    # The roof: FLOPs of one image through the FID Inception, against this machine's fp32
    # matmul peak measured now (scoring stays float32).
    model = inception.load_inception(weights, device)
    with torch.no_grad():
        per_image = step_flops(lambda: model(torch.rand(1, 3, 128, 128, device=device)))
    peak = peak_flops(torch.float32, device=torch.device(device).type)
    result = {
        "n": n,
        "device": device,
        "weights": weights.source,
        "pytorch_fid_img_s": n / theirs["extract_s"],
        "ours_img_s": n / ours["extract_s"],
        "speedup": theirs["extract_s"] / ours["extract_s"],
        "pytorch_fid_fid": theirs["fid"],
        "ours_fid": ours["fid"],
        "fid_abs_diff": abs(theirs["fid"] - ours["fid"]),
        "pytorch_fid_distance_s": theirs["fid_s"],
        "ours_distance_s": ours["fid_s"],
    }
    print(
        f"{n} images on {device}: pytorch-fid {result['pytorch_fid_img_s']:.1f} img/s, "
        f"ours {result['ours_img_s']:.1f} img/s ({result['speedup']:.2f}x); "
        f"FID {theirs['fid']:.4f} vs {ours['fid']:.4f}; Frechet distance "
        f"{theirs['fid_s']:.1f} s vs {ours['fid_s']:.1f} s"
    )
    print(json.dumps(result, indent=2))
    finish(Result(
        "fid_features", f"{n} PNGs", ours_s=ours["extract_s"], theirs_s=theirs["extract_s"],
        checks={"same FID to 1e-3": result["fid_abs_diff"] <= 1e-3},
        notes={"ours_fid": result["ours_fid"], "theirs_fid": result["pytorch_fid_fid"],
               "ours_img_per_s": result["ours_img_s"],
               "theirs_img_per_s": result["pytorch_fid_img_s"],
               "peak_tflops": peak / 1e12, "gflop_per_image": per_image / 1e9,
               "ours_peak_fraction": per_image * result["ours_img_s"] / peak,
               "theirs_peak_fraction": per_image * result["pytorch_fid_img_s"] / peak}))
    return result


if __name__ == "__main__":
    main()
