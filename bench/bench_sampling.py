"""Benchmark: can a trained generator draw better images without more training?

Three post-hoc changes to how a saved generator samples, each scored with the pipeline's FID
against the same data/clean statistics as the unchanged generator (same Inception, same
reference, same n, same latents: seeds 0..n-1 as generate draws them):

- recal: BatchNorm statistics recomputed for the saved (EMA) weights. Training copies G's
  running statistics into the EMA generator, measured with G's weights, not the EMA's (BigGAN's
  "standing statistics" fix this): 100 batches of 64 fresh latents in train mode, cumulative mean.
- noise: FastGAN's noise inputs random per image (eval mode adds one fixed stored map to every
  image, the same pattern everywhere).
- psiX: the latent scaled by X (truncation towards the mean latent 0, for families without a
  mapping network).

Variants combine with '+': recal+noise. Usage, from the repository root:
    .venv/bin/python bench/bench_sampling.py --project <folder after make all> \
        --variants asis,recal,recal+noise,psi0.9,psi0.8
"""

from __future__ import annotations

import argparse
import copy
import sys
import tempfile
from pathlib import Path

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run as a script from anywhere
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_upsample import seeded_samples, write_pngs  # noqa: E402

from pipeline.core.config import ScoreConfig  # noqa: E402
from pipeline.gan.models import Cropped, Upsampled, load_generator  # noqa: E402
from pipeline.gan.models.fastgan import NoiseInjection  # noqa: E402
from pipeline.scoring.fid import score_folders  # noqa: E402


def inner(generator: nn.Module) -> nn.Module:
    """G itself, without the delivery-size wrapper (upsampling or cropping)."""
    return generator.generator if isinstance(generator, (Upsampled, Cropped)) else generator


@torch.no_grad()
def recalibrate(generator: nn.Module, nz: int, batches: int = 100, batch: int = 64) -> None:
    """Recompute every BatchNorm's running statistics for these weights (cumulative mean)."""
    net = inner(generator)
    for bn in (m for m in net.modules() if isinstance(m, nn.BatchNorm2d)):
        bn.reset_running_stats()
        bn.momentum = None  # None = cumulative moving average over all batches
    net.train()
    torch.manual_seed(123)  # FastGAN's noise inputs draw from the global generator in train mode
    latents = torch.Generator().manual_seed(10_000)  # not the scored seeds 0..n-1
    for _ in range(batches):
        net(torch.randn(batch, nz, generator=latents))
    generator.eval()


def draw(generator: nn.Module, nz: int, n: int, *, random_noise: bool, psi: float,
         batch: int = 256) -> torch.Tensor:
    """Samples 0..n-1 at the delivery size, float32 in [-1, 1]."""
    for module in inner(generator).modules():
        if isinstance(module, NoiseInjection):
            module.train(random_noise)  # train mode draws fresh noise per image
    torch.manual_seed(7)  # the random noise, when on, is the same for every variant
    return seeded_samples(lambda z: generator(psi * z), nz, n, batch)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--project", type=Path, required=True,
                        help="a project after make all: data/train/best, data/clean, data/cache")
    parser.add_argument("--variants", default="asis,recal,recal+noise,psi0.9,psi0.8")
    parser.add_argument("--n", type=int, default=2048)
    args = parser.parse_args()

    clean, cache = args.project / "data/clean", args.project / "data/cache"
    files = sorted(clean.glob("*.png"))[: args.n]
    cfg = ScoreConfig(n=len(files), batch_size=50, device="cpu")
    saved, spec = load_generator(args.project / "data/train/best")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for k, variant in enumerate(args.variants.split(",")):
            parts = variant.split("+")
            generator = copy.deepcopy(saved)
            if "recal" in parts:
                recalibrate(generator, spec.nz)
            psi = next((float(p[3:]) for p in parts if p.startswith("psi")), 1.0)
            images = draw(generator, spec.nz, len(files), random_noise="noise" in parts, psi=psi)
            result = score_folders(write_pngs(Path(tmp) / f"{k:02d}", images), clean, cfg,
                                   cache_dir=cache, quiet=True)
            assert result.n_generated == len(files)  # same n on every side
            rows.append((variant, result))
            print(f"  {variant:16s} FID {result.fid:7.2f}  KID {result.kid_mean:.4f}", flush=True)
    print(f"| variant | FID ({len(files)}) | KID |\n|---|---:|---:|")
    for variant, result in rows:
        print(f"| {variant} | {result.fid:.2f} | {result.kid_mean:.4f} |")


if __name__ == "__main__":
    main()
