"""pad: decode safely, letterbox to pad.size on the background colour, drop duplicates.

    make pad SET="pad.mode=resize pad.size=64"

Writes data/clean/: one size x size RGB PNG per kept image, report.csv (this stage's
decisions) and ingest.csv (one row per image that entered ingest with its final decision).
"""

from pathlib import Path

from pipeline.core.runner import Stage, StageContext, StageResult
from pipeline.ingest.decisions import (
    consolidate_decisions,
    read_decisions,
    summarize,
    write_decisions,
)
from pipeline.ingest.pad import pad_images


def run(ctx: StageContext) -> StageResult:
    cfg, crops = ctx.params.pad, ctx.inputs["crop"] / "images"
    files = sorted(crops.glob("*.png"))
    decisions = pad_images(files, crops, ctx.out_dir, cfg, ctx.quiet)
    write_decisions(decisions, ctx.out_dir / "report.csv")
    crop_rows = read_decisions(ctx.inputs["crop"] / "decisions.csv")
    consolidate_decisions(crop_rows, decisions).to_csv(ctx.out_dir / "ingest.csv", index=False)
    return StageResult(*summarize(decisions, "data/clean/report.csv"))


STAGE = Stage(name="pad", upstream=("crop",), section="pad", output="data/clean",
              script=Path(__file__), run=run)
