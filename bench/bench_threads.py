"""Benchmark: on two CPU cores, `make train` (one process, two threads) or `make train GPUS=2`
(torchrun: two Gloo ranks of one thread each)?

For networks this small, one thread per process could dodge the cost of splitting each small
operation over two threads, and DDP would pay that back in all-reduces. Both sides run the
pipeline's own `train()` on the default recipe (params.yaml's train section: FastGAN width
0.125, global batch 8, 64 px, hinge, DiffAugment translation, reconstructions at 16 px), bf16
set explicitly so both compute in the same precision and layout, on the same random pack, for
the same number of steps; the DDP side is started by torchrun exactly as the Makefile starts it.
Rate: the median img/s of each run's ticks after the warm-up (stats.jsonl counts the images of
all ranks). Checks: both sides trained on the same number of images and their losses stayed
finite. Their weights are not compared: FastGAN's noise inputs are drawn per rank
(tests/test_distributed.py). The sides alternate, so drift on the host hits both.

Usage, from the repository root, on a quiet machine:
    .venv/bin/python bench/bench_threads.py [--steps 60 --warmup 10 --rounds 2]
"""

from __future__ import annotations

import argparse
import dataclasses
import subprocess
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_families import make_pack, run_rate  # noqa: E402

from pipeline.core.config import load_params  # noqa: E402
from pipeline.gan.loop import train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]


def recipe(steps: int, group: int, threads: int):
    """params.yaml's train section, bf16, `steps` steps of `group` steps a tick, no evaluations,
    no checkpoints, `threads` torch threads per process."""
    cfg = load_params(REPO / "params.yaml").train
    batch = cfg.batch_size
    return dataclasses.replace(cfg, amp="bf16", threads=threads, kimg=steps * batch / 1000,
                               minutes=0.0, eval_kimg=0.0, tick_kimg=group * batch / 1000,
                               checkpoint_kimg=1e6, snapshot_kimg=1e6)


def side(run_dir: Path, pack_dir: Path, args: argparse.Namespace, processes: int) -> dict:
    """One run of `processes` ranks (1: a plain process) with 2 // processes threads each."""
    worker = [str(Path(__file__).resolve()), "--worker", str(run_dir), str(pack_dir),
              "--steps", str(args.steps), "--group", str(args.group),
              "--threads", str(2 // processes)]
    launch = ([sys.executable] if processes == 1 else
              [sys.executable, "-m", "torch.distributed.run", "--nnodes=1",
               f"--nproc_per_node={processes}"])
    subprocess.run([*launch, *worker], check=True, capture_output=True, text=True)
    return run_rate(run_dir, args.warmup)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=60, help="steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=10, help="steps left out of the rate")
    parser.add_argument("--group", type=int, default=5, help="steps per tick (one rate each)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=2, help=argparse.SUPPRESS)
    parser.add_argument("--worker", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:  # one side's training, in its own process (or ranks, under torchrun)
        run_dir, pack_dir = args.worker
        train(recipe(args.steps, args.group, args.threads), pack_dir, run_dir, quiet=True)
        return

    size = load_params(REPO / "params.yaml").augment.size
    print("| round | `make train`: 1 process, 2 threads | `GPUS=2`: 2 ranks, 1 thread each "
          "| ratio |")
    print("|---:|---:|---:|---:|")
    with tempfile.TemporaryDirectory() as tmp:
        make_pack(Path(tmp) / "pack", 256, size)
        for k in range(args.rounds):
            one = side(Path(tmp) / f"one-{k}", Path(tmp) / "pack", args, 1)
            two = side(Path(tmp) / f"two-{k}", Path(tmp) / "pack", args, 2)
            assert one["images"] == two["images"], (one, two)  # the same work on both sides
            assert one["finite"] and two["finite"], (one, two)
            print(f"| {k + 1} | {one['img_per_s']:.1f} img/s | {two['img_per_s']:.1f} img/s | "
                  f"{two['img_per_s'] / one['img_per_s']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
