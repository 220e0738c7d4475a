"""crop: keep the object of interest, drop pictures with none or too many, and say why.

    make crop SET="crop.method=yolo crop.classes=[motorcycle]"

method alpha crops transparent cut-outs to their opaque extent, none passes images through,
yolo keeps the largest confident detection. Names in crop.reject_list are dropped first (the
manual filtering of seed 004). Writes data/crop/images/, data/crop/decisions.csv and a contact
sheet data/crop/contact_sheet.html to review by eye.
"""

from pathlib import Path

from pipeline.core import layout
from pipeline.core.files import sha256_file
from pipeline.core.runner import Project, Stage, StageContext, StageResult
from pipeline.ingest.crop import crop_images
from pipeline.ingest.decisions import summarize, write_decisions
from pipeline.ingest.detect import configure_ultralytics, crop_with_yolo
from pipeline.ingest.raw import list_fetched_images
from pipeline.ingest.review import (
    apply_reject_list,
    contact_sheet,
    read_reject_list,
    unmatched,
)


def run(ctx: StageContext) -> StageResult:
    cfg, raw = ctx.params.crop, ctx.inputs["fetch"] / layout.RAW_FILES_DIR
    files = list_fetched_images(ctx.inputs["fetch"])
    reject_path = ctx.project.root / cfg.reject_list if cfg.reject_list else None
    names = read_reject_list(reject_path)
    missing = unmatched(names, files, raw)
    if missing:  # a typo would silently keep the picture the user meant to drop
        shown = ", ".join(missing[:5]) + (f" and {len(missing) - 5} more" if len(missing) > 5
                                          else "")
        print(f"warning: {len(missing)} name(s) in {cfg.reject_list} match no fetched image: "
              f"{shown}", flush=True)
    files, manual = apply_reject_list(files, raw, names)

    images_dir = ctx.out_dir / layout.CROP_IMAGES_DIR
    images_dir.mkdir()
    max_pixels = ctx.params.pad.max_pixels
    if cfg.method == "yolo":
        configure_ultralytics(ctx.project.data / "cache" / "ultralytics")
        decisions = crop_with_yolo(files, raw, images_dir, cfg, max_pixels, ctx.quiet,
                                   base_dir=ctx.project.root)
    else:
        decisions = crop_images(files, raw, images_dir, cfg, max_pixels, ctx.quiet)
    decisions = manual + decisions

    write_decisions(decisions, ctx.out_dir / layout.DECISIONS_CSV)
    contact_sheet(decisions, images_dir, raw, ctx.out_dir / layout.CONTACT_SHEET_HTML)
    return StageResult(*summarize(decisions, f"data/crop/{layout.DECISIONS_CSV}"))


def extra_fingerprint(params, project: Project) -> str:
    """Editing the reject list reruns crop and what follows."""
    if not params.crop.reject_list:
        return ""
    path = project.root / params.crop.reject_list
    return sha256_file(path) if path.exists() else "missing"


STAGE = Stage(name="crop", upstream=("fetch",), section="crop", output="data/crop",
              script=Path(__file__), run=run, extra_fingerprint=extra_fingerprint,
              reads=("pad.max_pixels",))
