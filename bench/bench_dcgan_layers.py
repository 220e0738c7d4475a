"""Benchmark: the DCGAN's aligned channels and matmul latent projection against its former layers.

The path a user runs: `make all PARAMS=profiles/fashion-mnist-dcgan.yaml`'s training, the real
`train()` with that profile's recipe (DCGAN at 28 px, width 0.25, batch 64) on a pack of 28-px
grey images. The other side is the same loop with the layers this project had before (commit
500891f): channel counts not rounded to a multiple of 8 (146, 73, 37 in G; 37, 73 in D) and G's
first layer run as a ConvTranspose2d on the 1x1 latent. Sides alternate over `--rounds`; each
reports the median img/s of its ticks after `--warmup` steps, and the result is the ratio of the
per-side medians over rounds.

Checks: both sides trained on the same number of images with finite losses, the former side
really had the former channels, and on the same weights the projection gives what the
transposed convolution gives (float32, to 1e-5): the first layer's change is free of any
change in the model, only the channel rounding changes the network.

Usage (from the repository root, on a quiet machine):
    .venv/bin/python bench/bench_dcgan_layers.py                      # bf16 where native, fp32
    .venv/bin/python bench/bench_dcgan_layers.py --steps 4 --warmup 1 --rounds 1   # smoke
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import statistics
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import torch
import yaml

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pipeline.core.config import TrainConfig  # noqa: E402
from pipeline.gan.models import (  # noqa: E402
    ModelSpec,
    build_discriminator,
    build_generator,
    dcgan,
)
from pipeline.gan.precision import cpu_has_native_bf16  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_families import make_pack, measure  # noqa: E402
from common import Result, finish  # noqa: E402

PROFILE = ROOT / "profiles" / "fashion-mnist-dcgan.yaml"
SIZE = 28


def former_channels_at(base: int, resolution: int, width: float) -> int:
    """The channel rule before 2026-12-02: no rounding to a multiple of 8."""
    return max(1, round(base / resolution * width))


def former_projection(nz: int, channels: int, side: int) -> torch.nn.Module:
    """G's first layer before 2026-12-02: a transposed convolution on the 1x1 latent."""
    return torch.nn.ConvTranspose2d(nz, channels, side, 1, 0, bias=False)


@contextlib.contextmanager
def former_layers() -> Iterator[None]:
    """Build DCGANs with the former layers while inside (the loop builds its networks then)."""
    saved = dcgan.channels_at, dcgan.LatentProjection
    dcgan.channels_at, dcgan.LatentProjection = former_channels_at, former_projection
    try:
        yield
    finally:
        dcgan.channels_at, dcgan.LatentProjection = saved


def channel_counts(cfg: TrainConfig) -> list[int]:
    """Output channels of every G and D convolution, as train() would build them."""
    spec = ModelSpec("dcgan", size=SIZE, channels=1, nz=cfg.nz, width=cfg.width)
    convs = (torch.nn.Conv2d, torch.nn.ConvTranspose2d)
    return [m.out_channels for net in (build_generator(spec), build_discriminator(spec))
            for m in net.modules() if isinstance(m, convs)]


def projection_matches() -> bool:
    """Same weights, same latent: the projection equals the transposed convolution."""
    torch.manual_seed(0)
    plain = former_projection(100, 144, 7)
    projection = dcgan.LatentProjection(100, 144, 7)
    projection.load_state_dict(plain.state_dict())
    z = torch.randn(8, 100, 1, 1)
    with torch.no_grad():
        return torch.allclose(projection(z), plain(z), atol=1e-5)


def profile_config(amp: str, steps: int, group: int) -> TrainConfig:
    """The Fashion-MNIST DCGAN profile's training section, `steps` steps long, amp as given."""
    recipe = yaml.safe_load(PROFILE.read_text())["train"]
    cfg = TrainConfig(**recipe)
    batch = cfg.batch_size
    return dataclasses.replace(cfg, amp=amp, device="cpu", minutes=0.0, kimg=steps * batch / 1000,
                               tick_kimg=group * batch / 1000, checkpoint_kimg=1e6,
                               snapshot_kimg=1e6, collapse_ratio=0.0)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--steps", type=int, default=160, help="steps per run, warm-up included")
    parser.add_argument("--warmup", type=int, default=20, help="untimed steps first")
    parser.add_argument("--group", type=int, default=20, help="steps per tick (one rate each)")
    parser.add_argument("--rounds", type=int, default=3, help="alternating runs per side")
    args = parser.parse_args()
    amps = ["bf16", "off"] if cpu_has_native_bf16() else ["off"]
    with tempfile.TemporaryDirectory() as tmp:
        pack_dir = Path(tmp) / "pack"
        make_pack(pack_dir, 2048, SIZE, channels=1)  # 28-px grey, as Fashion-MNIST
        for amp in amps:
            cfg = profile_config(amp, args.steps, args.group)
            with former_layers():
                former = channel_counts(cfg)
            ours_runs, former_runs = [], []
            for _ in range(args.rounds):  # alternate, so drift on the host hits both sides
                with former_layers():
                    former_runs.append(measure(cfg, pack_dir, args.warmup, args.group))
                ours_runs.append(measure(cfg, pack_dir, args.warmup, args.group))
            ours = statistics.median(run["img_per_s"] for run in ours_runs)
            theirs = statistics.median(run["img_per_s"] for run in former_runs)
            runs = ours_runs + former_runs
            finish(Result(
                benchmark="dcgan_layers", case=f"fashion-mnist dcgan, amp {amp}",
                ours_s=1 / ours, theirs_s=1 / theirs,  # seconds an image
                checks={"same_images": len({run["images"] for run in runs}) == 1,
                        "finite_losses": all(run["finite"] for run in runs),
                        "former_channels": former == [146, 73, 37, 1, 37, 73, 1],
                        "projection_equals_transposed_conv": projection_matches()},
                notes={"ours_img_per_s": round(ours, 1), "former_img_per_s": round(theirs, 1),
                       "ours_channels": str(channel_counts(cfg)), "former_channels": str(former),
                       "rounds": args.rounds}))


if __name__ == "__main__":
    main()
