"""generate: generate.count PNGs from the trained generator; image i comes from seed i alone.

    make generate SET="generate.count=10000 generate.truncation=0.7"
    make generate SET="generate.snapshot=last"      # or best (default), or a kimg: 40

Writes data/generated/00000.png ... A killed run resumes where it stopped. Under torchrun
(`torchrun --nproc_per_node=4 -m pipeline run generate`) the ranks share the seeds: each writes
its images into the one folder, which is published once all ranks are done.
"""

from pathlib import Path

from pipeline.core import layout
from pipeline.core.errors import UserError
from pipeline.core.runner import Stage, StageContext, StageResult
from pipeline.deliver.generate import generate_on_all_ranks
from pipeline.gan.checkpoint import snapshot_dir
from pipeline.gan.runs import run_folder


def chosen_generator(train_dir: Path, root: Path, snapshot: str | float) -> Path:
    """The generator folder generate.snapshot names: best (else last), last, or a kimg."""
    best = train_dir / layout.BEST_DIR
    if snapshot == "best":
        return best if best.is_dir() else train_dir / layout.GENERATOR_DIR
    if snapshot == "last":
        return train_dir / layout.GENERATOR_DIR
    run_dir = run_folder(train_dir, root)
    if run_dir is None:
        raise UserError(f"generate.snapshot is {snapshot!r} but {train_dir} does not say which "
                        "training run it came from; rerun the train stage")
    folder = snapshot_dir(run_dir, float(snapshot))
    if not folder.is_dir():
        kept = sorted(p.name.removeprefix("kimg") for p in (run_dir / "snapshots").glob("kimg*"))
        raise UserError(f"generate.snapshot is {snapshot!r} but no evaluation ran at that kimg; "
                        f"evaluated: {', '.join(kept) or 'none (set train.eval_kimg)'}")
    return folder


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.params.generate
    generator = chosen_generator(ctx.inputs["train"], ctx.project.root, cfg.snapshot)
    report = generate_on_all_ranks(generator, ctx.out_dir, cfg.count, cfg.batch_size,
                                   cfg.truncation, cfg.workers, cfg.device, ctx.quiet)
    resumed = f" ({report.skipped_existing:,} kept from a killed run)" if (
        report.skipped_existing) else ""
    source = generator.relative_to(ctx.project.root)
    return StageResult(f"{report.count:,} PNGs from {source}{resumed}",
                       {"images": report.count, "generator": str(source)})


STAGE = Stage(name="generate", upstream=("train",), section="generate",
              output="data/generated", script=Path(__file__), run=run, resumable=True)
