"""train: fit the GAN on the training pack; resumable, on CUDA when present.

    make train SET="train.kimg=200 train.width=1.0"
    make train GPUS=2            # torchrun, DDP

Checkpoints, grids, stats.jsonl and TensorBoard logs live in data/runs/<run>/, a folder chosen by
everything but the bookkeeping knobs (config.BOOKKEEPING_KEYS: length, time budget, tick,
checkpoint, snapshot and evaluation intervals, threads): changing those continues the same run,
and a killed run resumes from its last checkpoint.
data/train/ receives the exported generator (last step), the best evaluated snapshot (best/,
with train.eval_kimg) and the plots.
"""

import shutil
from dataclasses import replace
from pathlib import Path

from pipeline.core import layout
from pipeline.core.config import BOOKKEEPING_KEYS
from pipeline.core.distributed import env_dist
from pipeline.core.runner import Stage, StageContext, StageResult
from pipeline.gan.loop import train


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.params.train
    # Length, time budget, logging, checkpoints and evaluation do not change the trajectory:
    # changing them continues the same run folder.
    key = ctx.run_key(cfg, exclude=BOOKKEEPING_KEYS)
    run_dir = ctx.project.data / "runs" / key[:12]
    if cfg.resume_from and not Path(cfg.resume_from).is_absolute():
        cfg = replace(cfg, resume_from=str(ctx.project.root / cfg.resume_from))
    report = train(cfg, ctx.inputs["augment"], run_dir, ctx.quiet,
                   reference=ctx.inputs["pad"], cache_dir=ctx.project.data / "cache",
                   deliver_count=ctx.params.generate.count)
    if not env_dist().is_main:  # under torchrun, rank 0 alone wrote the run folder's exports
        return StageResult(f"rank {env_dist().rank} done", {})

    # Export: the generator and what a person looks at; the run folder keeps the rest.
    shutil.copytree(report.generator_dir, ctx.out_dir / layout.GENERATOR_DIR)
    if report.best_dir is not None:  # the best evaluated snapshot: what generate uses
        shutil.copytree(report.best_dir, ctx.out_dir / layout.BEST_DIR)
    for pattern in ("*.png", layout.STATS_JSONL, layout.EVAL_JSONL, layout.TRAINING_OPTIONS_JSON):
        for path in run_dir.glob(pattern):
            shutil.copy2(path, ctx.out_dir / path.name)
    (ctx.out_dir / layout.RUN_DIR_TXT).write_text(str(run_dir.relative_to(ctx.project.root)))
    notes = f", resumed at {report.resumed_from_kimg:g} kimg" if report.resumed_from_kimg else ""
    if report.best:
        notes += (f", best at {report.best['kimg']:g} kimg (KID {report.best['kid']:.4f}, "
                  f"FID {report.best['fid']:.1f} on {cfg.eval_n} samples)")
    if report.out_of_time:
        notes += f", stopped by {report.stopped_by} before {cfg.kimg:g} kimg"
    return StageResult(
        f"{report.kimg_done:g} kimg, {report.images_per_second:.0f} img/s{notes} "
        f"(see {run_dir.relative_to(ctx.project.root)})",
        {"kimg": report.kimg_done, "steps": report.steps, "img_per_s": report.images_per_second,
         **report.final_losses},  # the last tick: loss_d, loss_g, d_real, acc_real, ...
    )


# pad: data/clean, the reference that snapshots are scored against (train.eval_kimg).
STAGE = Stage(name="train", upstream=("augment", "pad"), section="train", output="data/train",
              script=Path(__file__), run=run)
