"""augment: flips (and optional small rotations) into a memory-mapped training pack.

    make augment SET="augment.rotations=[-5,5]"
    make all SET="augment.size=64"        # train at 64 px; generate upsamples to pad.size
    make all SET="augment.size=32"        # 28-px data on a 32-px band (fastgan's smallest);
                                          # generate crops the centre 28 back

Writes data/pack/images.npy (N, size, size, C) uint8 and pack.json, which records the
transforms used so an FID change can be traced to them.
"""

from pathlib import Path

from pipeline.core.runner import Stage, StageContext, StageResult
from pipeline.ingest.augment import build_pack


def run(ctx: StageContext) -> StageResult:
    cfg, pad = ctx.params.augment, ctx.params.pad
    if cfg.rotations:
        # On stdout, like the stages' other warnings, so the run log (data/logs) keeps it
        print("warning: augment.rotations fill image corners with pad.background, which the "
              "generator can learn (a 'leaking' augmentation); keep angles small", flush=True)
    files = sorted(ctx.inputs["pad"].glob("*.png"))
    info = build_pack(files, ctx.out_dir, pad.size, cfg.hflip, cfg.rotations, cfg.grey,
                      pad.background, ctx.quiet, cfg.size)
    side = f" at {info.size} px" if info.output_size else ""
    return StageResult(
        f"{info.count:,} training images{side} from {info.sources:,} "
        f"({', '.join(info.transforms)})",
        {"images": info.count, "sources": info.sources},
    )


STAGE = Stage(name="augment", upstream=("pad",), section="augment", output="data/pack",
              script=Path(__file__), run=run, reads=("pad.size", "pad.background"))
