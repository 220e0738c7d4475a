"""fetch: get the dataset's files into data/raw/ (Kaggle, a folder, a zip, or a built-in set).

    make fetch SET="fetch.source=zip:~/Downloads/motorbikes.zip"
    python -m pipeline run fetch --set fetch.source=kaggle:OWNER/SLUG

Writes data/raw/files/ (the images, layout preserved) and data/raw/files.csv (every file with
its size, sha256 and whether it was ignored and why). Downloads are cached in data/downloads/.
"""

from pathlib import Path

from pipeline.core.errors import UserError
from pipeline.core.runner import Project, Stage, StageContext, StageResult
from pipeline.ingest.raw import source_fingerprint
from pipeline.ingest.sources import fetch


def refuse_owned_source(source: str, root: Path, owned: tuple[Path, ...]) -> None:
    """A dir:/zip: source inside a folder the pipeline replaces would be deleted by it: refuse."""
    kind, _, location = source.partition(":")
    if kind not in ("dir", "zip"):
        return
    path = Path(location).expanduser()
    path = (path if path.is_absolute() else root / path).resolve()
    for folder in owned:
        if path.is_relative_to(folder.resolve()):
            raise UserError(f"fetch.source {source!r} lies inside {folder.relative_to(root)}/, "
                            "which the pipeline replaces on every run (it would be deleted); "
                            "move it elsewhere, e.g. to a folder beside data/")


def run(ctx: StageContext) -> StageResult:
    cfg = ctx.params.fetch
    refuse_owned_source(cfg.source, ctx.project.root, ctx.owned)
    report = fetch(cfg.source, ctx.out_dir, downloads_dir=ctx.project.data / "downloads",
                   limit=cfg.limit, project_root=ctx.project.root, quiet=ctx.quiet)
    ignored = f", {report.n_ignored:,} other files ignored" if report.n_ignored else ""
    return StageResult(f"{report.n_images:,} images from {cfg.source}{ignored}",
                       {"images": report.n_images, "ignored": report.n_ignored})


def extra_fingerprint(params, project: Project) -> str:
    """Local sources (dir:, zip:) are fingerprinted by their listing, so new files refetch."""
    return source_fingerprint(params.fetch.source, project.root)


STAGE = Stage(name="fetch", upstream=(), section="fetch", output="data/raw",
              script=Path(__file__), run=run, extra_fingerprint=extra_fingerprint)
