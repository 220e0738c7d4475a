"""pad: decode safely, letterbox to pad.size on the background colour, drop duplicates.

    make pad SET="pad.mode=resize pad.size=64"

Writes data/clean/: one size x size RGB PNG per kept image, report.csv (this stage's
decisions) and ingest.csv (one row per image that entered ingest with its final decision).
"""

from pathlib import Path

from pipeline.core import layout
from pipeline.core.files import csv_safe_frame
from pipeline.core.runner import Stage, StageContext, StageResult
from pipeline.ingest.decisions import (
    NAME_COLUMNS,
    consolidate_decisions,
    read_decisions,
    summarize,
    write_decisions,
)
from pipeline.ingest.pad import pad_images


def run(ctx: StageContext) -> StageResult:
    cfg, crops = ctx.params.pad, ctx.inputs["crop"] / layout.CROP_IMAGES_DIR
    # PNGs from alpha and yolo crops; with crop.method none, the checked source files themselves
    files = sorted(path for path in crops.iterdir() if path.is_file())
    decisions = pad_images(files, crops, ctx.out_dir, cfg, ctx.quiet)
    write_decisions(decisions, ctx.out_dir / layout.PAD_REPORT_CSV)
    crop_rows = read_decisions(ctx.inputs["crop"] / layout.DECISIONS_CSV)
    ingest = consolidate_decisions(crop_rows, decisions)
    csv_safe_frame(ingest, NAME_COLUMNS).to_csv(ctx.out_dir / layout.INGEST_CSV, index=False)
    return StageResult(*summarize(decisions, f"data/clean/{layout.PAD_REPORT_CSV}"))


STAGE = Stage(name="pad", upstream=("crop",), section="pad", output="data/clean",
              script=Path(__file__), run=run)
