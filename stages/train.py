"""train: fit the GAN on the training pack; resumable, on CUDA when present.

    make train SET="train.kimg=200 train.width=1.0"
    make train GPUS=2            # torchrun, DDP

Checkpoints, grids, stats.jsonl and TensorBoard logs live in data/runs/<run>/, a folder chosen by
everything but train.kimg and train.minutes: raising only the length (or the time budget)
continues the same run, and a killed run resumes from its last checkpoint. data/train/ receives
the exported generator and the plots.
"""

import shutil
from pathlib import Path

from pipeline.core.runner import Stage, StageContext, StageResult
from pipeline.gan.loop import train


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.params.train
    run_dir = ctx.project.data / "runs" / ctx.run_key(cfg, exclude=("kimg", "minutes"))[:12]
    report = train(cfg, ctx.inputs["augment"], run_dir, ctx.quiet)

    # Export: the generator and what a person looks at; the run folder keeps the rest.
    shutil.copytree(report.generator_dir, ctx.out_dir / "generator")
    for pattern in ("*.png", "stats.jsonl", "training_options.json"):
        for path in run_dir.glob(pattern):
            shutil.copy2(path, ctx.out_dir / path.name)
    (ctx.out_dir / "run_dir.txt").write_text(str(run_dir.relative_to(ctx.project.root)))
    notes = f", resumed at {report.resumed_from_kimg:g} kimg" if report.resumed_from_kimg else ""
    if report.out_of_time:
        notes += f", stopped by train.minutes={cfg.minutes:g} before {cfg.kimg:g} kimg"
    return StageResult(
        f"{report.kimg_done:g} kimg, {report.images_per_second:.0f} img/s{notes} "
        f"(see {run_dir.relative_to(ctx.project.root)})",
        {"kimg": report.kimg_done, "steps": report.steps, "img_per_s": report.images_per_second,
         **report.final_losses},  # the last tick: loss_d, loss_g, d_real, acc_real, ...
    )


STAGE = Stage(name="train", upstream=("augment",), section="train", output="data/train",
              script=Path(__file__), run=run)
