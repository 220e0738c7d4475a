"""pad: decode safely, letterbox to pad.size on the background colour, drop duplicates.

    make pad SET="pad.mode=resize pad.size=64"

Writes data/clean/: one size x size RGB PNG per kept image, report.csv (this stage's
decisions) and ingest.csv (one row per image that entered ingest with its final decision).
"""

from pathlib import Path

from pipeline.decisions import (KEPT, consolidate_decisions, count_by_reason, read_decisions,
                                 write_decisions)
from pipeline.padding import pad_images
from pipeline.runner import Stage, StageContext, StageResult


def run(ctx: StageContext) -> StageResult:
    cfg, crops = ctx.params.pad, ctx.inputs["crop"] / "images"
    files = sorted(crops.glob("*.png"))
    decisions = pad_images(files, crops, ctx.out_dir, cfg, ctx.quiet)
    write_decisions(decisions, ctx.out_dir / "report.csv")
    crop_rows = read_decisions(ctx.inputs["crop"] / "decisions.csv")
    consolidate_decisions(crop_rows, decisions).to_csv(ctx.out_dir / "ingest.csv", index=False)

    n_kept = sum(d.decision == KEPT for d in decisions)
    reasons = ", ".join(f"{n:,} {why}" for why, n in count_by_reason(decisions).items())
    return StageResult(
        f"{n_kept:,} kept, {len(decisions) - n_kept:,} rejected"
        + (f" ({reasons})" if reasons else "") + " (see data/clean/report.csv)",
        {"kept": n_kept, "rejected": len(decisions) - n_kept},
    )


STAGE = Stage(name="pad", upstream=("crop",), section="pad", output="data/clean",
              script=Path(__file__), run=run)
