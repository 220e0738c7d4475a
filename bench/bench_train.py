"""Benchmark: training throughput of `pipeline.gan.loop.train` vs seed 004's loop, same run.

Both train DCGAN-128 (seed 004's exact layers at width 1.0) with RaLSGAN, batch 64, lr 8e-4,
real label 0.8, Adam(0.5, 0.999), on the same random pack.

The baseline is seed 004's loop written inline: D(real), G(z), D(fake.detach()),
errD.backward(retain_graph=True), D step, then D(fake) and errG.backward() through the retained
graph of D(real), all in float32 with PyTorch's default backend flags. That loop only ran on
PyTorch < 1.5, which did not notice that optimizerD.step() changes weights the retained graph
saved; today it needs `allow_mutation_on_saved_tensors` (which copies those weights when they
change) to run as written. A second baseline, "seed, minimal fix", detaches D(real) in errG
instead: cheaper, so the ratio against it is the conservative one. Baselines read batches from
a float tensor already on the device (no decoding at all), again in their favour.

The pipeline side is the real `train()` on a training pack, with a tick every `group` steps.
Both sides skip `warmup` steps (cuDNN autotuning, allocations) and report the median rate over
groups of `group` steps, which a busy shared machine disturbs less than a mean.

Usage (from the repository root):
    .venv/bin/python bench/bench_train.py --steps 3 --warmup 1     # a quick CPU check
    .venv/bin/python bench/bench_train.py                           # 40 timed steps (GPU)
"""

from __future__ import annotations

import argparse
import contextlib
import json
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
from pipeline.ingest import pack  # noqa: E402

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


def mutation_allowed() -> contextlib.AbstractContextManager:
    """Lets errG backpropagate through D(real)'s graph after optimizerD.step() changed D."""
    return torch.autograd.graph.allow_mutation_on_saved_tensors()


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def seed_loop(device: torch.device, width: float, batch: int, warmup: int, steps: int,
              as_written: bool, group: int) -> float:
    """Images per second of seed 004's loop: median over groups of `group` timed steps."""
    torch.backends.cudnn.benchmark = False  # PyTorch's defaults, as the seed ran
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.manual_seed(0)
    spec = ModelSpec("dcgan", size=SIZE, channels=3, nz=NZ, width=width)
    netG, netD = build_generator(spec).to(device), build_discriminator(spec).to(device)
    optimizerG = torch.optim.Adam(netG.parameters(), lr=LR, betas=(0.5, 0.999))
    optimizerD = torch.optim.Adam(netD.parameters(), lr=LR, betas=(0.5, 0.999))
    data = torch.rand(4 * batch, 3, SIZE, SIZE, device=device) * 2 - 1  # already decoded
    labels = torch.full((batch,), REAL_LABEL, device=device)
    rates, start = [], 0.0
    for i in range(warmup + steps):
        if i >= warmup and (i - warmup) % group == 0:  # a group starts
            sync(device)
            start = time.perf_counter()
        with mutation_allowed() if as_written else contextlib.nullcontext():
            seed_step(netG, netD, optimizerG, optimizerD, data, labels, i, batch, as_written)
        if i >= warmup and (i - warmup) % group == group - 1:  # a group ends
            sync(device)
            rates.append(group * batch / (time.perf_counter() - start))
    return float(np.median(rates))


def seed_step(netG: torch.nn.Module, netD: torch.nn.Module, optimizerG: torch.optim.Optimizer,
              optimizerD: torch.optim.Optimizer, data: torch.Tensor, labels: torch.Tensor,
              i: int, batch: int, as_written: bool) -> None:
    """One iteration of seed 004's loop, its code kept as it was (names included)."""
    device = data.device
    real_images = data[(i % 4) * batch : (i % 4 + 1) * batch]
    # (1) Update D network
    netD.zero_grad()
    outputR = netD(real_images)
    noise = torch.randn(batch, NZ, 1, 1, device=device)
    fake = netG(noise)
    outputF = netD(fake.detach())
    errD = (torch.mean((outputR - torch.mean(outputF) - labels) ** 2)
            + torch.mean((outputF - torch.mean(outputR) + labels) ** 2)) / 2
    errD.backward(retain_graph=True)
    optimizerD.step()
    # (2) Update G network
    netG.zero_grad()
    outputF = netD(fake)
    if not as_written:
        outputR = outputR.detach()  # the minimal fix for PyTorch >= 1.5
    errG = (torch.mean((outputR - torch.mean(outputF) + labels) ** 2)
            + torch.mean((outputF - torch.mean(outputR) - labels) ** 2)) / 2
    errG.backward()
    optimizerG.step()


def pipeline_loop(pack_dir: Path, work: Path, width: float, batch: int, warmup: int,
                  steps: int, device: str, group: int) -> tuple[float, float, str]:
    """(images per second, data loading share of step time, autocast dtype) of `train()`.

    One tick per `group` steps; the rate is the median of the ticks' img/s after the warmup
    (a tick's img/s counts training steps only, not its own sample grid and stats).
    """
    cfg = TrainConfig(model="dcgan", loss="ralsgan", kimg=(warmup + steps) * batch / 1000,
                      batch_size=batch, width=width, nz=NZ, lr_g=LR, lr_d=LR,
                      real_label=REAL_LABEL, tick_kimg=group * batch / 1000,
                      checkpoint_kimg=1000.0, snapshot_kimg=1000.0,
                      device=device)  # type: ignore[arg-type]
    train(cfg, pack_dir, work / "run", quiet=True)
    rows = [json.loads(line) for line in (work / "run/stats.jsonl").read_text().splitlines()]
    timed = [row for row in rows if row["step"] > warmup + group - 1] or rows[-1:]
    rate = float(np.median([row["img_per_s"] for row in timed]))
    data_share = float(np.median([row["data_ms"] * row["img_per_s"] / batch / 1000
                                  for row in timed]))
    amp = json.loads((work / "run/training_options.json").read_text())["amp"]
    return rate, data_share, amp


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

    work = Path(tempfile.mkdtemp(prefix="bench_train_"))
    try:
        make_pack(work / "pack", max(4 * args.batch, 256))
        timing = (args.width, args.batch, args.warmup, args.steps)
        as_written = seed_loop(device, *timing, as_written=True, group=args.group)
        print(f"seed 004 loop, as written      : {as_written:8.1f} img/s")
        fixed = seed_loop(device, *timing, as_written=False, group=args.group)
        print(f"seed 004 loop, minimal fix     : {fixed:8.1f} img/s")
        ours, data_share, amp = pipeline_loop(work / "pack", work, *timing, args.device,
                                              args.group)
        print(f"pipeline train() (amp {amp:>14}): {ours:8.1f} img/s, "
              f"data loading {100 * data_share:.1f}% of step time")
        print(f"speed-up: {ours / as_written:.2f}x vs as written, "
              f"{ours / fixed:.2f}x vs minimal fix (target >= 1.8x)")
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
