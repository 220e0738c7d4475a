"""generate: generate.count PNGs from the trained generator; image i comes from seed i alone.

    make generate SET="generate.count=10000 generate.truncation=0.7"

Writes data/generated/00000.png ... A killed run resumes where it stopped.
"""

from pathlib import Path

from pipeline.core.runner import Stage, StageContext, StageResult
from pipeline.deliver.generate import generate_images


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.params.generate
    report = generate_images(ctx.inputs["train"] / "generator", ctx.out_dir, cfg.count,
                             cfg.batch_size, cfg.truncation, cfg.workers,
                             cfg.device, ctx.quiet)
    resumed = f" ({report.skipped_existing:,} kept from a killed run)" if (
        report.skipped_existing) else ""
    return StageResult(f"{report.count:,} PNGs{resumed}", {"images": report.count})


STAGE = Stage(name="generate", upstream=("train",), section="generate",
              output="data/generated", script=Path(__file__), run=run, resumable=True)
