"""score: the local FID (pytorch-fid's number) of the generated PNGs, with KID, P/R and MiFID.

    make fid
    make score SET="score.n=10000"
    make fid GPUS=4                       # torchrun: each rank extracts a share of the features

Scores what is submitted (the saved PNGs) against data/clean/ (or score.reference). Reference
statistics are cached by content in data/cache/fid/. Writes data/score/score.json and appends
to data/score/history.csv with the run's fingerprint, so you see which change helped.
"""

import json
from pathlib import Path

from pipeline.core import layout
from pipeline.core.config import TrainConfig
from pipeline.core.runner import Stage, StageContext, StageResult
from pipeline.gan.runs import changed_settings, run_folder
from pipeline.scoring.fid import score_folders
from pipeline.scoring.history import append_history, format_table, settings_text


def _training_run(train_dir: Path, root: Path) -> tuple[str, str]:
    """The run folder behind the generated images and its settings changed from the defaults
    (empty strings when train's output says nothing, e.g. an older project)."""
    run = run_folder(train_dir, root)
    try:
        options = json.loads((train_dir / layout.TRAINING_OPTIONS_JSON).read_text("utf-8"))
    except (OSError, ValueError):
        options = None
    if run is None or options is None:
        return "", ""
    return run.name, settings_text(changed_settings(options.get("config", {}), TrainConfig()))


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.params.score
    reference = ctx.project.root / cfg.reference if cfg.reference else ctx.inputs["pad"]
    result = score_folders(ctx.inputs["generate"], reference, cfg,
                           cache_dir=ctx.project.data / "cache", quiet=ctx.quiet)
    if result is None:  # a torchrun rank other than 0: its share of the features went to rank 0
        return StageResult("features of this rank's share of the images", {})
    score = result.as_dict()
    (ctx.out_dir / layout.SCORE_JSON).write_text(json.dumps(score, indent=2))
    run, settings = _training_run(ctx.project.data / "train", ctx.project.root)
    append_history(ctx.project.path(f"data/score/{layout.HISTORY_CSV}"),
                   ctx.out_dir / layout.HISTORY_CSV,
                   score, ctx.upstream_fingerprints["generate"], run, settings)
    print(format_table(score), flush=True)
    for warning in result.warnings:
        print(f"warning: {warning}", flush=True)
    return StageResult(f"FID {result.fid:.2f} on {result.n_generated:,} images "
                       f"(see data/score/{layout.SCORE_JSON})", {"fid": result.fid})


STAGE = Stage(name="score", upstream=("generate", "pad"), section="score", output="data/score",
              script=Path(__file__), run=run)
