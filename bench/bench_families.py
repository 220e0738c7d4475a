"""Benchmark: training throughput of every model family through the real `train()`, fp32 vs bf16.

Each family trains with its own recipe (the registry's `recipe`: loss, batch, optimiser,
DiffAugment) on the same random pack, for `--warmup` untimed steps and `--steps` timed ones,
first with autocast off, then with bf16 autocast, in the same run. The rate is the median of
the ticks' img/s after the warm-up (a tick counts training steps only). Both sides run the same
steps on the same data from the same seed; each side's losses must be finite, and the table
gives the bf16 / fp32 ratio per family.

Each rate is also a fraction of this machine's own roof, measured in the same run: FLOPs per
step (torch's FlopCounterMode over the real loop: a run of 3 steps minus a run of 2, i.e. one
step as the timed ones run, without the lazy R1 of step 0) times steps per second, over the rate
of a large matmul in the same dtype. A fraction near 1 means the step is as fast as this
hardware computes its FLOPs: a faster step then needs fewer FLOPs, not better plumbing.

`--paper` uses the paper-scale networks a GPU trains (width 1.0; StyleGAN2 at the reference
128 px configuration: channel_base 16384, channel_max 512, z and w 512, 2 mapping layers,
batch 8 per the issue, lazy R1), where s/kimg compares with NVIDIA's 6.79 s/kimg on an A100.
Without it, the CPU-sized widths of params.yaml and the tournament.

Usage (from the repository root):
    .venv/bin/python bench/bench_families.py --size 64 --steps 6 --warmup 2     # CPU
    .venv/bin/python bench/bench_families.py --size 128 --paper --device cuda   # GPU
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere

from pipeline.core.config import TrainConfig  # noqa: E402
from pipeline.gan.loop import STAT_KEYS, train  # noqa: E402
from pipeline.gan.models import get_model  # noqa: E402
from pipeline.ingest import pack  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import peak_flops, step_flops  # noqa: E402

FAMILIES = ("dcgan", "fastgan", "r3gan", "stylegan2")
CPU_WIDTH = {"dcgan": 0.25, "fastgan": 0.125, "r3gan": 0.125, "stylegan2": 1.0}
# StyleGAN2 at the reference 128 px configuration (Karras et al. 2020, config F scaled to 128).
STYLEGAN2_PAPER = dict(channel_base=16384, channel_max=512, nz=512, w_dim=512, mapping_layers=2,
                       batch_size=8, r1_gamma=0.1, loss="nonsaturating")


def make_pack(folder: Path, count: int, size: int, channels: int = 3) -> None:
    """Random uint8 images: throughput does not depend on content."""
    images = pack.create(folder, count, size, channels)
    rng = np.random.default_rng(0)
    images[:] = rng.integers(0, 256, images.shape, dtype=np.uint8)
    images.flush()
    pack.write_info(folder, pack.PackInfo(count, size, channels, count, ("identity",)))


def config(family: str, paper: bool, amp: str, device: str, steps: int, group: int) -> TrainConfig:
    """The family's recipe at the chosen scale, long enough for `steps` steps."""
    recipe = {k: v for k, v in get_model(family).recipe.items() if k in
              {f.name for f in dataclasses.fields(TrainConfig)}}
    if family == "stylegan2" and paper:
        recipe.update(STYLEGAN2_PAPER)
    width = 1.0 if paper else CPU_WIDTH[family]
    batch = int(recipe.get("batch_size", 64))
    return TrainConfig(model=family, width=width, amp=amp, device=device,  # type: ignore[arg-type]
                       **{**recipe, "batch_size": batch}, kimg=steps * batch / 1000,
                       tick_kimg=group * batch / 1000, checkpoint_kimg=1e6, snapshot_kimg=1e6,
                       ema_rampup=0.0)


def loop_flops(cfg: TrainConfig, pack_dir: Path, steps: int) -> float:
    """FLOPs torch counts (convolutions, matmuls; forward and backward) in a `steps`-step run."""
    short = dataclasses.replace(cfg, kimg=steps * cfg.batch_size / 1000,
                                tick_kimg=steps * cfg.batch_size / 1000)
    with tempfile.TemporaryDirectory() as work:
        return step_flops(lambda: train(short, pack_dir, Path(work) / "run", quiet=True))


def plain_step_flops(cfg: TrainConfig, pack_dir: Path) -> float:
    """FLOPs of one plain training step: step 0 carries the lazy regularisers, so 3 - 2 steps."""
    return loop_flops(cfg, pack_dir, 3) - loop_flops(cfg, pack_dir, 2)


def measure(cfg: TrainConfig, pack_dir: Path, warmup: int, group: int) -> dict:
    """img/s (median of ticks after warm-up), s/kimg, and whether every loss stayed finite."""
    with tempfile.TemporaryDirectory() as work:
        train(cfg, pack_dir, Path(work) / "run", quiet=True)
        return run_rate(Path(work) / "run", warmup)


def run_rate(run_dir: Path, warmup: int) -> dict:
    """A finished run folder's img/s (median of its ticks after `warmup` steps; images over all
    ranks), s/kimg, images trained on, the precision it chose, and whether its losses stayed
    finite (the last tick's averages, as the loop reports them)."""
    rows = [json.loads(line) for line in (run_dir / "stats.jsonl").read_text().splitlines()]
    amp = json.loads((run_dir / "training_options.json").read_text())["amp"]
    timed = [row for row in rows if row["step"] > warmup] or rows[-1:]
    rate = float(np.median([row["img_per_s"] for row in timed]))
    finite = all(math.isfinite(rows[-1][key]) for key in STAT_KEYS)
    return {"img_per_s": rate, "s_per_kimg": 1000 / rate, "amp": amp, "finite": finite,
            "images": round(rows[-1]["kimg"] * 1000)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--steps", type=int, default=12, help="steps per side, warm-up included")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps first")
    parser.add_argument("--group", type=int, default=2, help="steps per tick (one rate each)")
    parser.add_argument("--paper", action="store_true", help="paper-scale networks (GPU)")
    parser.add_argument("--device", default="auto", choices=("auto", "cpu", "cuda"))
    parser.add_argument("--only", nargs="*", default=list(FAMILIES), choices=FAMILIES)
    args = parser.parse_args()
    device = "cuda" if args.device != "cpu" and torch.cuda.is_available() else "cpu"
    roof = {amp: peak_flops(dtype, device=device)
            for amp, dtype in (("off", torch.float32), ("bf16", torch.bfloat16))}

    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        make_pack(Path(tmp) / "pack", 256, args.size)
        for family in args.only:
            sides = {}
            for amp in ("off", "bf16"):
                start = time.perf_counter()
                cfg = config(family, args.paper, amp, args.device, args.steps, args.group)
                sides[amp] = measure(cfg, Path(tmp) / "pack", args.warmup, args.group)
                assert sides[amp]["finite"], f"{family} {amp}: a loss is not finite"
                if amp == "off":  # the same FLOPs in either precision
                    flops = plain_step_flops(cfg, Path(tmp) / "pack")
                steps_per_s = sides[amp]["img_per_s"] / cfg.batch_size
                sides[amp].update(step_gflop=flops / 1e9, roof_gflop_s=roof[amp] / 1e9,
                                  peak_fraction=flops * steps_per_s / roof[amp])
                print(json.dumps({"family": family, **sides[amp],
                                  "wall_s": round(time.perf_counter() - start, 1)}), flush=True)
            rows.append((family, cfg.batch_size, cfg.width, sides))
    print(f"\n{args.size} px, {'paper' if args.paper else 'CPU'} scale, {device}:")
    print(f"  {'family':<10} {'batch':>5} {'width':>6} {'fp32 img/s':>11} {'bf16 img/s':>11} "
          f"{'bf16 s/kimg':>12} {'bf16/fp32':>10} {'GFLOP/step':>11} {'fp32 peak':>10} "
          f"{'bf16 peak':>10}")
    for family, batch, width, sides in rows:
        ratio = sides["bf16"]["img_per_s"] / sides["off"]["img_per_s"]
        print(f"  {family:<10} {batch:>5} {width:>6g} {sides['off']['img_per_s']:>11.1f} "
              f"{sides['bf16']['img_per_s']:>11.1f} {sides['bf16']['s_per_kimg']:>12.2f} "
              f"{ratio:>9.2f}x {sides['off']['step_gflop']:>11.1f} "
              f"{sides['off']['peak_fraction']:>10.1%} {sides['bf16']['peak_fraction']:>10.1%}")
    print(f"  roof (matmul, same run): fp32 {roof['off'] / 1e9:.0f} GFLOP/s, "
          f"bf16 {roof['bf16'] / 1e9:.0f} GFLOP/s")


if __name__ == "__main__":
    main()
