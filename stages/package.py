"""package: zip the generated PNGs, validate the zip, publish it to submissions/images.zip.

    make package SET="package.submit=true package.competition=generative-dog-images"

The zip is stored, not deflated (PNG is already compressed), written atomically and checked:
exact count, size, RGB, real PNGs, unique names, nothing else inside. It is built in the stage's
own folder (data/package/) and then published: submissions/images.zip is replaced atomically and
every published zip is kept in submissions/history/ (package.keep_history); nothing else in
submissions/ is touched.
"""

import json
from pathlib import Path

from pipeline.core import layout
from pipeline.core.config import Params
from pipeline.core.runner import Project, Stage, StageContext, StageResult
from pipeline.deliver.publish import publish_zip
from pipeline.deliver.submission import (
    SUBMITTED_JSON,
    already_submitted,
    remember_submission,
    submit_to_kaggle,
    write_zip,
)


def run(ctx: StageContext) -> StageResult:
    cfg, params = ctx.params.package, ctx.params
    size = cfg.size or params.pad.size
    mode = cfg.mode
    report = write_zip(ctx.inputs["generate"], ctx.out_dir / cfg.name, params.generate.count,
                       size, mode, ctx.quiet)
    (ctx.out_dir / layout.VALIDATION_JSON).write_text(json.dumps(
        {"zip": cfg.name, "count": report.count, "size": size, "mode": mode,
         "bytes": report.bytes, "sha256": report.sha256, "problems": list(report.problems),
         # which generated images these are: score's history.csv rows carry the same key
         "generate_fingerprint": ctx.upstream_fingerprints["generate"][:12]},
        indent=2))
    submitted = ""
    if cfg.submit:
        record = ctx.project.data / SUBMITTED_JSON
        if already_submitted(record, cfg.competition, report.sha256):
            submitted = f", already submitted to {cfg.competition} (not sent again)"
        else:
            submit_to_kaggle(ctx.out_dir / cfg.name, cfg.competition, cfg.message)
            remember_submission(record, cfg.competition, report.sha256, cfg.name, cfg.message)
            submitted = f", submitted to {cfg.competition}"
    return StageResult(
        f"{cfg.name}: {report.count:,} PNGs {size}x{size} {mode}, "
        f"{report.bytes / 2**20:.1f} MiB, valid{submitted}",
        {"images": report.count, "bytes": report.bytes, "sha256": report.sha256},
    )


def publish(package_dir: Path, params: Params, project: Project) -> str:
    """Into submissions/: the zip (atomically) and its history entry; '' if already there."""
    cfg = params.package
    return publish_zip(package_dir, project.path("submissions"), cfg.name,
                       layout.VALIDATION_JSON, cfg.keep_history)


STAGE = Stage(name="package", upstream=("generate",), section="package",
              output="data/package", script=Path(__file__), run=run,
              reads=("pad.size", "generate.count"), publish=publish)
