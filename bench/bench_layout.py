"""What `train.amp: auto` measures on a CPU: one training-like step per dtype and memory layout.

Usage (from the repository root, on a quiet machine):
    .venv/bin/python bench/bench_layout.py                 # the four families at 64 px
    .venv/bin/python bench/bench_layout.py --size 32 --repeats 2 --only fastgan   # smoke

Each row times pipeline.gan.precision.cpu_step_seconds, the probe the training loop itself runs
(G forward, D forward with FastGAN's reconstruction loss, backward; best of --repeats after a
warm-up), for fp32 and bf16 autocast in NHWC and NCHW, on the CPU at hand: the layout ratio and
the bf16 gain are what auto picks from. FastGAN is also timed with its reconstruction decoders
at the paper's sides and at train.recon_size 16. Both sides of every ratio run in the same
process, on the same networks and inputs, and each row first asserts that both layouts give
the same loss (fp32, to 1e-4): the same work, only the memory order differs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipeline.gan.models import (  # noqa: E402
    ModelSpec,
    build_discriminator,
    build_generator,
    get_model,
)
from pipeline.gan.precision import cpu_has_native_bf16, cpu_step_seconds  # noqa: E402

# (row name, family, width, batch, nz, recon_size): the CPU recipes of bench_models.py.
CASES = (
    ("fastgan", "fastgan", 0.125, 16, 256, 0),
    ("fastgan recon 16", "fastgan", 0.125, 16, 256, 16),
    ("dcgan", "dcgan", 0.25, 64, 128, 0),
    ("r3gan", "r3gan", 0.125, 32, 128, 0),
    ("stylegan2", "stylegan2", 1.0, 32, 128, 0),
)


def layout_losses(spec: ModelSpec, batch: int) -> tuple[float, float]:
    """The probe's loss (fp32) in NHWC and in NCHW from the same weights and latents: both
    layouts must do the same work, or their times would compare different things."""
    family = get_model(spec.name)
    losses = []
    for layout in (torch.channels_last, torch.contiguous_format):
        torch.manual_seed(0)
        G = build_generator(spec).to(memory_format=layout)
        D = build_discriminator(spec).to(memory_format=layout)
        z = torch.randn(batch, spec.nz)
        with torch.no_grad():
            out = D(G(z), aux=True) if family.d_aux_loss else D(G(z))
            logits, extra = out if family.d_aux_loss else (out, 0.0)
            losses.append(float(logits.float().mean() + extra))
    return losses[0], losses[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64, help="image side (px)")
    parser.add_argument("--repeats", type=int, default=4, help="timed steps (best is kept)")
    parser.add_argument("--only", nargs="*", default=None, help="family names to time")
    args = parser.parse_args()
    dtypes = (None, torch.bfloat16) if cpu_has_native_bf16() else (None,)
    print(f"one step at {args.size} px, ms (best of {args.repeats}); torch threads "
          f"{torch.get_num_threads()}; native bf16: {cpu_has_native_bf16()}")
    print(f"{'network':<18} {'fp32 NHWC':>10} {'fp32 NCHW':>10} {'bf16 NHWC':>10} "
          f"{'bf16 NCHW':>10}  NCHW/NHWC speed-up, fp32 | bf16")
    for row, family, width, batch, nz, recon in CASES:
        if args.only and family not in args.only:
            continue
        spec = ModelSpec(name=family, size=args.size, channels=3, nz=nz, width=width,
                         recon_size=min(recon, args.size))
        nhwc, nchw = layout_losses(spec, batch)
        assert abs(nhwc - nchw) <= 1e-4 * max(1.0, abs(nchw)), (row, nhwc, nchw)
        seconds = cpu_step_seconds.__wrapped__(spec, batch, dtypes, args.repeats)
        cells = [f"{1000 * seconds[(d, cl)]:10.1f}" if (d, cl) in seconds else f"{'-':>10}"
                 for d in (None, torch.bfloat16) for cl in (True, False)]
        ratios = [f"{seconds[(d, True)] / seconds[(d, False)]:.2f}x" for d in dtypes]
        print(f"{row:<18} {' '.join(cells)}  {' | '.join(ratios)}")


if __name__ == "__main__":
    main()
