"""package: zip the generated PNGs into submissions/images.zip and validate it.

    make package SET="package.submit=true package.competition=generative-dog-images"

The zip is stored, not deflated (PNG is already compressed), written atomically and checked:
exact count, size, RGB, real PNGs, unique names, nothing else inside.
"""

import json
from pathlib import Path

from pipeline.core import layout
from pipeline.core.runner import Stage, StageContext, StageResult
from pipeline.deliver.submission import submit_to_kaggle, write_zip


def run(ctx: StageContext) -> StageResult:
    cfg, params = ctx.params.package, ctx.params
    size = cfg.size or params.pad.size
    mode = cfg.mode
    report = write_zip(ctx.inputs["generate"], ctx.out_dir / cfg.name, params.generate.count,
                       size, mode, ctx.quiet)
    (ctx.out_dir / layout.VALIDATION_JSON).write_text(json.dumps(
        {"zip": cfg.name, "count": report.count, "size": size, "mode": mode,
         "bytes": report.bytes, "sha256": report.sha256, "problems": list(report.problems)},
        indent=2))
    submitted = ""
    if cfg.submit:
        submit_to_kaggle(ctx.out_dir / cfg.name, cfg.competition, cfg.message)
        submitted = f", submitted to {cfg.competition}"
    return StageResult(
        f"submissions/{cfg.name}: {report.count:,} PNGs {size}x{size} {mode}, "
        f"{report.bytes / 2**20:.1f} MiB, valid{submitted}",
        {"images": report.count, "bytes": report.bytes, "sha256": report.sha256},
    )


STAGE = Stage(name="package", upstream=("generate",), section="package", output="submissions",
              script=Path(__file__), run=run, reads=("pad.size", "generate.count"))
