"""Benchmark: on two CPU cores, one process of two threads, or two processes of one thread each?

DDP on a CPU (`make train GPUS=2`, Gloo) would split the default batch of 8 into two ranks of 4,
each with one thread. Before paying for its all-reduces, this times the part it could win: the
default FastGAN's training step (bf16 autocast, the default spec, both Adam steps) at batch 8
with two threads, against two processes at batch 4 with one thread each, running at the same
time. No communication is timed, so the two-process figure is a best case for DDP.

Usage, from the repository root (run it alone; `--step` is one process's own timing):
    .venv/bin/python bench/bench_threads.py
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from pipeline.core.config import TrainConfig  # noqa: E402
from pipeline.gan.models import ModelSpec, build_discriminator, build_generator  # noqa: E402


def step_milliseconds(threads: int, batch: int, steps: int) -> float:
    """Mean of the faster half of `steps` training-like steps (after 3 warm-ups), in ms."""
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    cfg = TrainConfig()
    spec = ModelSpec(name="fastgan", size=64, channels=3, nz=cfg.nz, width=0.125, recon_size=16)
    G, D = build_generator(spec), build_discriminator(spec)
    opt_g = torch.optim.Adam(G.parameters(), 2e-4, betas=(0.5, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 2e-4, betas=(0.5, 0.999))
    real = torch.rand(batch, 3, 64, 64) * 2 - 1
    times = []
    for _ in range(steps + 3):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            fake = G(torch.randn(batch, spec.nz))
            real_logits, recon = D(real, aux=True)
            fake_logits = D(fake.detach())
            loss_d = (torch.relu(1 - real_logits.float()).mean()
                      + torch.relu(1 + fake_logits.float()).mean() + recon.float())
        loss_d.backward()
        opt_d.step()
        opt_d.zero_grad()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss_g = -D(fake).float().mean()
        loss_g.backward()
        opt_g.step()
        opt_g.zero_grad()
        D.zero_grad()
        times.append(time.perf_counter() - start)
    fastest = sorted(times[3:])[: max(1, steps // 2)]
    return 1000 * sum(fastest) / len(fastest)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--step", nargs=2, type=int, metavar=("THREADS", "BATCH"),
                        help="time one process and print its ms a step (used by the rounds)")
    args = parser.parse_args()
    if args.step:
        print(f"{step_milliseconds(*args.step, args.steps):.1f}", flush=True)
        return

    def run(threads: int, batch: int, processes: int) -> list[float]:
        cmd = [sys.executable, __file__, "--steps", str(args.steps), "--step", str(threads),
               str(batch)]
        jobs = [subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True) for _ in range(processes)]
        return [float(job.communicate()[0]) for job in jobs]

    print("| round | 1 process, 2 threads, batch 8 | 2 processes, 1 thread, batch 4 each |")
    print("|---:|---:|---:|")
    for k in range(args.rounds):  # interleaved, so drift on the host hits both sides
        one = run(2, 8, 1)[0]
        two = run(1, 4, 2)
        print(f"| {k + 1} | {one:.1f} ms | {max(two):.1f} ms (slower of {two[0]:.1f}, "
              f"{two[1]:.1f}) |", flush=True)


if __name__ == "__main__":
    main()
