"""Benchmark: training throughput of `pipeline.gan.loop.train` vs seed 004's loop, same run.

Both train DCGAN-128 (seed 004's exact layers at width 1.0) with RaLSGAN, batch 64, lr 8e-4,
real label 0.8, Adam(0.5, 0.999), on the same random images, at the same precision: one line in
float32 and, where the machine computes bf16 natively (AVX-512-BF16 / AMX, or a GPU), one line
with both sides under bf16 autocast.

The baseline is the loop a user can run today: seed 004's code (D(real), G(z), D(fake.detach()),
errD.backward(retain_graph=True), D step, D(fake), errG, G step) with its one needed fix,
D(real) detached in errG (as written it only ran on PyTorch < 1.5, which did not notice that
optimizerD.step() changes weights the retained graph saved). It reads batches from a float
tensor already on the device (no decoding at all), in its favour.
The pipeline side is the real `train()` on a training pack (amp set explicitly, so no probe),
with a tick every `group` steps. Both sides skip `warmup` steps and report the median rate over
groups of `group` steps. Checks: both sides trained on the same number of images and ended with
finite losses. Each line also reports the fraction of this machine's matmul peak (measured in
the same run, same dtype) that the step's FLOPs (torch's count, forward and backward) reach.

Usage (from the repository root):
    .venv/bin/python bench/bench_train.py --steps 3 --warmup 1     # a quick CPU check
    .venv/bin/python bench/bench_train.py                           # 40 timed steps
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from pipeline.core.config import TrainConfig  # noqa: E402
from pipeline.gan.loop import train  # noqa: E402
from pipeline.gan.models import ModelSpec, build_discriminator, build_generator  # noqa: E402
from pipeline.gan.precision import cpu_has_native_bf16  # noqa: E402
from pipeline.ingest import pack  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import Result, SanityError, finish, peak_flops, step_flops  # noqa: E402

SIZE, NZ, LR, REAL_LABEL = 128, 128, 8e-4, 0.8  # seed 004


def make_pack(folder: Path, count: int) -> None:
    """Random uint8 images: throughput does not depend on content."""
    images = pack.create(folder, count, SIZE, 3)
    rng = np.random.default_rng(0)
    for start in range(0, count, 256):
        stop = min(start + 256, count)
        images[start:stop] = rng.integers(0, 256, (stop - start, SIZE, SIZE, 3), dtype=np.uint8)
    images.flush()
    pack.write_info(folder, pack.PackInfo(count, SIZE, 3, count, ("identity",)))


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_loop(device: torch.device, dtype: torch.dtype | None, width: float, batch: int,
              warmup: int, steps: int, group: int) -> tuple[float, float, int]:
    """(images per second: median over groups of `group` timed steps, FLOPs of one step,
    images trained on) of seed 004's loop, under autocast in `dtype` when not None."""
    torch.backends.cudnn.benchmark = False  # PyTorch's defaults, as the seed ran
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    spec = ModelSpec("dcgan", size=SIZE, channels=3, nz=NZ, width=width)
    netG, netD = build_generator(spec).to(device), build_discriminator(spec).to(device)
    optimizerG = torch.optim.Adam(netG.parameters(), lr=LR, betas=(0.5, 0.999))
    optimizerD = torch.optim.Adam(netD.parameters(), lr=LR, betas=(0.5, 0.999))
    data = torch.rand(4 * batch, 3, SIZE, SIZE, device=device) * 2 - 1  # already decoded
    labels = torch.full((batch,), REAL_LABEL, device=device)

    def step(i: int) -> float:
        with torch.autocast(device.type, dtype=dtype, enabled=dtype is not None):
            return seed_step(netG, netD, optimizerG, optimizerD, data, labels, i, batch)

    flops = step_flops(lambda: step(0))
    rates, start, images, loss = [], 0.0, 0, 0.0
    for i in range(warmup + steps):
        if i >= warmup and (i - warmup) % group == 0:  # a group starts
            sync(device)
            start = time.perf_counter()
        loss = step(i)
        images += batch
        if i >= warmup and (i - warmup) % group == group - 1:  # a group ends
            sync(device)
            rates.append(group * batch / (time.perf_counter() - start))
    if not math.isfinite(loss):
        raise SanityError(f"seed loop diverged: errG {loss}")
    return float(np.median(rates)), flops, images


def seed_step(netG: torch.nn.Module, netD: torch.nn.Module, optimizerG: torch.optim.Optimizer,
              optimizerD: torch.optim.Optimizer, data: torch.Tensor, labels: torch.Tensor,
              i: int, batch: int) -> float:
    """One iteration of seed 004's loop, its code kept as it was (names included), plus the
    minimal fix; returns errG."""
    device = data.device
    real_images = data[(i % 4) * batch : (i % 4 + 1) * batch]
    # (1) Update D network
    netD.zero_grad()
    outputR = netD(real_images).float()
    noise = torch.randn(batch, NZ, 1, 1, device=device)
    fake = netG(noise)
    outputF = netD(fake.detach()).float()
    errD = (torch.mean((outputR - torch.mean(outputF) - labels) ** 2)
            + torch.mean((outputF - torch.mean(outputR) + labels) ** 2)) / 2
    errD.backward(retain_graph=True)
    optimizerD.step()
    # (2) Update G network
    netG.zero_grad()
    outputF = netD(fake).float()
    outputR = outputR.detach()  # the minimal fix for PyTorch >= 1.5
    errG = (torch.mean((outputR - torch.mean(outputF) + labels) ** 2)
            + torch.mean((outputF - torch.mean(outputR) - labels) ** 2)) / 2
    errG.backward()
    optimizerG.step()
    return float(errG.detach())


def pipeline_loop(pack_dir: Path, work: Path, amp: str, width: float, batch: int, warmup: int,
                  steps: int, device: str, group: int) -> tuple[float, float, int, bool]:
    """(images per second, data loading share of step time, images trained on, finite losses)
    of `train()` with train.amp `amp`.

    One tick per `group` steps; the rate is the median of the ticks' img/s after the warmup
    (a tick's img/s counts training steps only, not its own sample grid and stats).
    """
    run = work / f"run-{amp}"
    cfg = TrainConfig(model="dcgan", loss="ralsgan", kimg=(warmup + steps) * batch / 1000,
                      batch_size=batch, width=width, nz=NZ, lr_g=LR, lr_d=LR,
                      real_label=REAL_LABEL, tick_kimg=group * batch / 1000,
                      checkpoint_kimg=1000.0, snapshot_kimg=1000.0, amp=amp,  # type: ignore
                      device=device)  # type: ignore[arg-type]
    train(cfg, pack_dir, run, quiet=True)
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    timed = [row for row in rows if row["step"] > warmup + group - 1] or rows[-1:]
    rate = float(np.median([row["img_per_s"] for row in timed]))
    data_share = float(np.median([row["data_ms"] * row["img_per_s"] / batch / 1000
                                  for row in timed]))
    finite = all(math.isfinite(rows[-1][key]) for key in ("loss_d", "loss_g"))
    return rate, data_share, round(rows[-1]["kimg"] * 1000), finite


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--width", type=float, default=1.0, help="1.0 = seed 004's DCGAN-128")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--steps", type=int, default=40, help="timed steps")
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps first")
    parser.add_argument("--group", type=int, default=5, help="steps per timing (median of them)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = default)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    use_cuda = args.device != "cpu" and torch.cuda.is_available()
    device = torch.device("cuda" if use_cuda else "cpu")
    name = torch.cuda.get_device_name(device) if use_cuda else f"CPU x{torch.get_num_threads()}"
    print(f"DCGAN-128 width {args.width}, RaLSGAN, batch {args.batch}, {args.steps} timed steps "
          f"after {args.warmup}, {name}, torch {torch.__version__}")

    dtypes: list[torch.dtype | None] = [None]
    if (torch.cuda.is_bf16_supported() if use_cuda else cpu_has_native_bf16()):
        dtypes.append(torch.bfloat16)
    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        make_pack(work / "pack", max(4 * args.batch, 256))
        timing = (args.width, args.batch, args.warmup, args.steps)
        for dtype in dtypes:
            amp = "bf16" if dtype is torch.bfloat16 else "off"
            theirs, flops, their_images = seed_loop(device, dtype, *timing, group=args.group)
            ours, data_share, our_images, finite = pipeline_loop(
                work / "pack", work, amp, *timing, args.device, args.group)
            peak = peak_flops(dtype or torch.float32, device=device.type)
            per_image = flops / args.batch
            finish(Result(
                "train", f"DCGAN-128 w{args.width:g} {'bf16' if dtype else 'fp32'}",
                ours_s=1 / ours, theirs_s=1 / theirs,  # seconds per image
                checks={"same images trained on": our_images == their_images,
                        "finite losses": finite},
                notes={"ours_img_per_s": ours, "theirs_img_per_s": theirs,
                       "data_share": data_share, "peak_tflops": peak / 1e12,
                       "ours_peak_fraction": per_image * ours / peak,
                       "theirs_peak_fraction": per_image * theirs / peak}))
            print(f"  seed loop {theirs:.1f} img/s, train() {ours:.1f} img/s (data loading "
                  f"{100 * data_share:.1f}% of step time); {per_image / 1e9:.2f} GFLOP an image, "
                  f"peak {peak / 1e9:.0f} GFLOP/s: ours at {100 * per_image * ours / peak:.1f}%"
                  f" of it, the seed loop at {100 * per_image * theirs / peak:.1f}%")
    finally:
        shutil.rmtree(work, ignore_errors=True)

if __name__ == "__main__":
    main()
