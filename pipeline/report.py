"""The project report: one HTML page a person would rather look at than read.

`write_report(graph, out_dir)` gathers what the stages left behind (manifests, decision CSVs,
stats.jsonl, sample grids, generated PNGs, scores) into data/report/index.html. The page is
self-contained: every picture is a file written beside it, no script or style is fetched, so
it opens offline, from a copied folder or from a CI artifact. A stage that never ran shows
"not run yet: make X" instead of failing, so the report is useful from the first stage on.
"""

from __future__ import annotations

import html
import json
import random
import shutil
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from PIL import Image

from pipeline.core import layout
from pipeline.core.runner import Graph, swap_into_place
from pipeline.gan.plots import make_grid, read_stats
from pipeline.ingest.decisions import count_by_reason, read_decisions, rejected
from pipeline.ingest.images import composite, load_image
from pipeline.scoring.history import (
    inception_score_text,
    precision_recall_reading,
    settings_change,
)
from pipeline.scoring.metrics import MIFID_EPSILON

MAKE_TARGETS = {"score": "fid"}  # stage -> make target, where they differ
THUMB = 72  # thumbnail side in pixels (longer side)
THUMBS_PER_GROUP = 24  # kept and rejected thumbnails shown, each
SAMPLE_COUNT = 64  # generated images in the sample grid (8 x 8)
SEED = 0  # fixed: the same project gives the same thumbnails and samples
HISTORY_ROWS = 20  # most recent score rows in the history table
WHITE = (255, 255, 255)  # background for transparent thumbnails


@dataclass
class Page:
    """What the section builders share: the graph and the folder the pictures go to."""

    graph: Graph
    folder: Path  # the report folder being written (temporary until complete)
    quiet: bool = True
    pictures: list[str] = field(default_factory=list)  # names written, for the summary line

    def picture(self, name: str) -> Path:
        """A path for a picture beside the page; the name is recorded for the summary."""
        self.pictures.append(name)
        path = self.folder / name
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def log(self, message: str) -> None:
        if not self.quiet:
            print(f"report: {message}", flush=True)


# ----------------------------------------------------------------------------------------------
# HTML helpers


def _esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def _img(src: str, alt: str, css: str = "") -> str:
    """An <img> that loads eagerly: a lazy one would not load in a screenshot or a print."""
    klass = f' class="{css}"' if css else ""
    return f'<img src="{_esc(src)}" alt="{_esc(alt)}"{klass}>'


def _figure(src: str, caption: str, css: str = "") -> str:
    return f"<figure>{_img(src, caption, css)}<figcaption>{_esc(caption)}</figcaption></figure>"


@dataclass(frozen=True)
class _Raw:
    """Markup a table cell passes through unescaped (a badge, a code span)."""

    markup: str


def _table(header: Sequence[str], rows: Sequence[Sequence[Any]], css: str = "") -> str:
    """A plain table; cells are escaped unless they are already markup (`_Raw`)."""
    def cell(value: Any) -> str:
        return value.markup if isinstance(value, _Raw) else _esc(value)

    head = "".join(f"<th>{_esc(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{cell(v)}</td>" for v in row) + "</tr>" for row in rows)
    klass = f' class="{css}"' if css else ""
    return f"<table{klass}><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _section(anchor: str, title: str, body: str) -> str:
    return f'<section id="{anchor}"><h2>{_esc(title)}</h2>\n{body}\n</section>'


def _note(text: str, css: str = "note") -> str:
    return f'<p class="{css}">{text}</p>'


def _make(stage: str) -> str:
    return f"make {MAKE_TARGETS.get(stage, stage)}"


def _not_run(stage: str) -> str:
    """The placeholder of a section whose stage has no output yet."""
    return _note(f"not run yet: <code>{_esc(_make(stage))}</code>")


def _stale_note(graph: Graph, stage: str) -> str:
    """A warning above outputs made with other params or code than the current ones."""
    state, why = graph.state(stage)
    if state != "stale":
        return ""
    return _note(f"stale: these outputs predate a change ({_esc(why)}); "
                 f"<code>{_esc(_make(stage))}</code> refreshes them", "note stale")


def _ran(graph: Graph, stage: str) -> bool:
    """Whether a stage has a finished output (its manifest is written last, atomically)."""
    return graph.manifest(stage) is not None


def _fmt(value: Any, digits: int = 2) -> str:
    """Numbers for people: 1,234 and 12.35; missing values as '-'."""
    if value is None or (isinstance(value, float) and value != value):
        return "-"
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return str(value)
    return f"{value:,}" if isinstance(value, int) else f"{value:,.{digits}f}"


# ----------------------------------------------------------------------------------------------
# Pictures


def _new_figure(width: float, height: float, rows: int = 1, cols: int = 1,
                sharex: bool = False) -> tuple[Any, Any]:
    """A matplotlib figure on the Agg canvas: no pyplot, so no display and no global state."""
    # Imported here: matplotlib is slow to import and only the plots need it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(width, height), dpi=100)
    FigureCanvasAgg(figure)
    return figure, figure.subplots(rows, cols, squeeze=False, sharex=sharex)


def _save_figure(figure: Any, path: Path) -> None:
    # Counts of images are whole numbers: no 0.5 ticks on a bar chart of 2 rejections.
    from matplotlib.ticker import MaxNLocator

    for axis in figure.axes:
        if axis.patches:  # bar charts only; curves keep their natural ticks
            axis.xaxis.set_major_locator(MaxNLocator(integer=True, steps=[1, 2, 5, 10]))
    figure.tight_layout()
    figure.savefig(path)


def _thumbnail(source: Path, max_pixels: int) -> Image.Image | None:
    """A small RGB picture of any image file the pipeline reads; None when it cannot be read."""
    array, _ = load_image(source, max_pixels, draft=2 * THUMB)
    if array is None:
        return None
    picture = Image.fromarray(np.ascontiguousarray(composite(array, WHITE)))
    picture.thumbnail((THUMB, THUMB), Image.Resampling.LANCZOS)
    return picture


def _grid(images: Sequence[Image.Image], path: Path) -> None:
    """Tile equally sized RGB images (resized to the first's size if not) into one PNG."""
    size = images[0].size
    arrays = [np.asarray(im.convert("RGB").resize(size) if im.size != size else im.convert("RGB"))
              for im in images]
    cols = int(np.ceil(np.sqrt(len(arrays))))
    Image.fromarray(make_grid(np.stack(arrays), cols=cols)).save(path)


# ----------------------------------------------------------------------------------------------
# Sections


def stages_section(page: Page) -> str:
    """Each stage in run order: state, when it finished, how long it took, what it said."""
    graph, rows = page.graph, []
    for name in graph.order:
        state, why = graph.state(name)
        manifest = graph.manifest(name) or {}
        badge = _Raw(f'<span class="badge {state}" title="{_esc(why)}">{state}</span>')
        summary = manifest.get("summary", "") or f"not run yet: {_make(name)}"
        if why and state == "stale":
            summary = f"{summary} [stale: {why}]"
        seconds = manifest.get("seconds")
        rows.append([name, badge, manifest.get("finished", "-").replace("T", " ")[:19],
                     "-" if seconds is None else f"{seconds:,.1f} s",
                     _Raw(f"<code>{_esc(manifest.get('fingerprint', '-')[:12])}</code>"),
                     summary])
    header = ["stage", "state", "finished", "time", "fingerprint", "summary"]
    return _section("stages", "Stages", _table(header, rows, "stages"))


def _funnel(graph: Graph) -> list[tuple[str, int]]:
    """Image counts from the fetched files to the training pack, from the stage manifests."""
    steps = [("fetch", "images", "fetched images"), ("crop", "kept", "kept by crop"),
             ("pad", "kept", "kept by pad (clean)"), ("augment", "images", "training pack")]
    funnel = []
    for stage, key, label in steps:
        counts = (graph.manifest(stage) or {}).get("counts", {})
        if key in counts:
            funnel.append((label, int(counts[key])))
    return funnel


def _decision_rows(graph: Graph) -> pd.DataFrame:
    """One row per image that entered ingest: pad's consolidated record, else crop's."""
    for stage, name in (("pad", layout.INGEST_CSV), ("crop", layout.DECISIONS_CSV)):
        path = graph.output_dir(stage) / name
        if _ran(graph, stage) and path.exists():
            return read_decisions(path)
    return pd.DataFrame(columns=["file", "stage", "decision", "reason"])


def _reason_counts(rows: pd.DataFrame) -> dict[str, int]:
    """Rejections per 'stage: reason family', most common first (decisions.count_by_reason)."""
    counts: dict[str, int] = {}
    for stage, group in rows[rows["decision"] == "rejected"].groupby("stage", sort=False):
        decisions = [rejected(f, stage, r) for f, r in zip(group["file"], group["reason"])]
        for family, n in count_by_reason(decisions).items():
            counts[f"{stage}: {family}"] = n
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def _plot_dataset(funnel: list[tuple[str, int]], reasons: dict[str, int], path: Path) -> None:
    """Left: the image count after each stage. Right: why images were rejected."""
    figure, axes = _new_figure(11, 3.2, 1, 2)
    left, right = axes[0]
    labels, values = [f[0] for f in funnel][::-1], [f[1] for f in funnel][::-1]
    left.barh(labels, values, color="#4c78a8")
    for y, value in enumerate(values):
        left.text(value, y, f" {value:,}", va="center", fontsize=9)
    left.set_title("images after each stage")
    left.set_xlim(0, max(values + [1]) * 1.2)
    right.set_title("rejections by reason")
    if reasons:
        names, counts = list(reasons)[:12][::-1], list(reasons.values())[:12][::-1]
        right.barh(names, counts, color="#e45756")
        for y, count in enumerate(counts):
            right.text(count, y, f" {count:,}", va="center", fontsize=9)
        right.set_xlim(0, max(counts) * 1.2)
    else:
        right.text(0.5, 0.5, "no image rejected", ha="center", va="center", fontsize=12)
        right.set_axis_off()
    _save_figure(figure, path)


def _family(reason: str) -> str:
    """'duplicate of x.png' -> 'duplicate', 'aspect: 5.3 > 5' -> 'aspect' (as count_by_reason)."""
    return reason.split(":")[0].split(" of ")[0].strip()


def _pick_rejected(rows: pd.DataFrame, count: int) -> list[tuple[str, str, str]]:
    """(file, stage, reason) of up to `count` rejections, taking reasons in turn so that
    every reason family shows at least one picture (seeded, so the same each time)."""
    rejects = rows[rows["decision"] == "rejected"]
    by_family: dict[str, list[tuple[str, str, str]]] = {}
    for file, stage, reason in zip(rejects["file"], rejects["stage"], rejects["reason"]):
        family = f"{stage}: {_family(reason)}"
        by_family.setdefault(family, []).append((file, stage, reason))
    rng = random.Random(SEED)
    for items in by_family.values():
        rng.shuffle(items)
    picked: list[tuple[str, str, str]] = []
    while len(picked) < count and any(by_family.values()):
        for items in by_family.values():
            if items and len(picked) < count:
                picked.append(items.pop())
    return picked


def _short_reason(stage: str, reason: str) -> str:
    """A caption that fits under a thumbnail: the whole reason when short, else its family
    ("pad: duplicate" rather than "duplicate of <a long file name>"); tooltips keep it all."""
    text = f"{stage}: {reason}"
    return text if len(text) <= 28 else f"{stage}: {_family(reason)}"


def _rejected_source(graph: Graph, file: str, stage: str) -> Path | None:
    """Where a rejected picture can still be seen: crop's output for pad's rejections, the
    fetched file for crop's (pad names its input by crop's output name)."""
    candidates: list[Path] = []
    if stage == "pad":
        candidates.append(graph.output_dir("crop") / layout.CROP_IMAGES_DIR / file)
    candidates.append(graph.output_dir("fetch") / layout.RAW_FILES_DIR / file)
    return next((path for path in candidates if path.is_file()), None)


def _thumb_strip(page: Page, items: Sequence[tuple[Path | None, str, str]], prefix: str) -> str:
    """Thumbnails (source, caption, tooltip) as a wrapping row of figures."""
    max_pixels = page.graph.params.pad.max_pixels
    figures = []
    for i, (source, caption, tooltip) in enumerate(items):
        picture = _thumbnail(source, max_pixels) if source else None
        if picture is None:
            figures.append(f'<figure class="thumb" title="{_esc(tooltip)}"><div class="nopreview">'
                           f'no preview</div><figcaption>{_esc(caption)}</figcaption></figure>')
            continue
        name = f"thumbs/{prefix}{i:03d}.png"
        picture.save(page.picture(name))
        figures.append(f'<figure class="thumb" title="{_esc(tooltip)}">{_img(name, caption)}'
                       f"<figcaption>{_esc(caption)}</figcaption></figure>")
    return '<div class="strip">' + "".join(figures) + "</div>"


def dataset_section(page: Page) -> str:
    """Counts from fetch to the training pack, rejection reasons, kept and rejected pictures."""
    graph = page.graph
    if not _ran(graph, "fetch"):
        return _section("dataset", "Dataset", _not_run("fetch"))
    parts = [_stale_note(graph, s) for s in ("fetch", "crop", "pad", "augment")]
    funnel, rows = _funnel(graph), _decision_rows(graph)
    reasons = _reason_counts(rows)
    _plot_dataset(funnel, reasons, page.picture("dataset.png"))
    parts.append(_img("dataset.png", "image counts per stage and rejection reasons", "plot"))

    # The counts as text too, with the fetch stage's non-image files and the pack's transforms.
    ignored = (graph.manifest("fetch") or {}).get("counts", {}).get("ignored", 0)
    lines = [f"{label}: <b>{count:,}</b>" for label, count in funnel]
    if ignored:
        lines.append(f"other files ignored by fetch: {ignored:,}")
    pack = graph.output_dir("augment") / layout.PACK_JSON
    if _ran(graph, "augment") and pack.exists():
        info = json.loads(pack.read_text(encoding="utf-8"))
        lines.append(f"pack: {info.get('size')} px, {info.get('channels')} channel(s), "
                     f"transforms {_esc(', '.join(info.get('transforms', [])))}")
    else:
        lines.append(f"training pack: not run yet: <code>{_make('augment')}</code>")
    parts.append("<p>" + " &middot; ".join(lines) + "</p>")

    # Kept pictures: a seeded sample of data/clean (what training sees, before augment).
    if _ran(graph, "pad"):
        clean = sorted(graph.output_dir("pad").glob("*.png"))
        kept = random.Random(SEED).sample(clean, min(THUMBS_PER_GROUP, len(clean)))
        parts.append(f"<h3>kept ({len(clean):,}), a sample</h3>")
        # Caption: the file's own name, without the folders flattened into it ("a__b__name")
        items = [(p, p.stem.split("__")[-1][:16], p.name) for p in sorted(kept)]
        parts.append(_thumb_strip(page, items, "kept"))
    else:
        parts.append(_note(f"kept pictures: not run yet: <code>{_make('pad')}</code>"))
    # Rejected pictures: every reason family represented.
    picked = _pick_rejected(rows, THUMBS_PER_GROUP)
    n_rejected = int((rows["decision"] == "rejected").sum())
    parts.append(f"<h3>rejected ({n_rejected:,})</h3>")
    if picked:
        items = [(_rejected_source(graph, f, s), _short_reason(s, r), f"{f}: {r}")
                 for f, s, r in picked]
        parts.append(_thumb_strip(page, items, "rejected"))
    else:
        parts.append(_note("no image rejected"))
    page.log(f"dataset ({len(funnel)} counts, {len(reasons)} rejection reasons)")
    return _section("dataset", "Dataset", "\n".join(p for p in parts if p))


def _plot_training(rows: list[dict[str, Any]], path: Path) -> None:
    """Losses, D's raw outputs on reals and fakes, and D's accuracies, against kimg."""
    figure, axes = _new_figure(11, 7.5, 3, 1, sharex=True)
    kimg = [row["kimg"] for row in rows]
    marker = "o" if len(rows) < 30 else None  # single ticks would be invisible as lines
    panels = [
        ("loss", [("loss_d", "D loss"), ("loss_g", "G loss")]),
        ("D output", [("d_real", "D(real)"), ("d_fake", "D(fake)")]),
        ("accuracy", [("acc_real", "D accuracy on reals"), ("acc_fake", "D accuracy on fakes"),
                      ("augment_p", "augment p")]),
    ]
    for (ylabel, keys), axis in zip(panels, axes[:, 0]):
        for key, label in keys:
            if any(key in row for row in rows):
                axis.plot(kimg, [row.get(key, np.nan) for row in rows], label=label,
                          marker=marker)
        axis.set_ylabel(ylabel)
        axis.grid(alpha=0.3)
        axis.legend(loc="best", fontsize=8)
    axes[-1, 0].set_xlabel("kimg (thousands of real images shown to D)")
    if len(rows) == 1:  # one tick: show it against the run's start, not a 0.05-kimg window
        axes[-1, 0].set_xlim(0, kimg[0] * 1.1)
    _save_figure(figure, path)


def _evaluation_part(page: Page, train_dir: Path) -> str:
    """KID and FID of each evaluated snapshot (train.eval_kimg), the best one marked."""
    evals = read_stats(train_dir / layout.EVAL_JSONL)
    if not evals:
        return _note("no snapshot evaluations (train.eval_kimg is 0): generate uses the last "
                     "generator")
    best = min(evals, key=lambda row: row["kid"])
    figure, axes = _new_figure(11, 3.2, 1, 2)
    kimg = [row["kimg"] for row in evals]
    for axis, key in zip(axes[0], ("kid", "fid")):
        axis.plot(kimg, [row[key] for row in evals], marker="o", label=key.upper())
        axis.plot([best["kimg"]], [best[key]], marker="*", markersize=14, linestyle="none",
                  label="best (generate uses it)")
        axis.set_xlabel("kimg")
        axis.set_ylabel(f"{key.upper()} on {evals[0]['n']} samples")
        axis.grid(alpha=0.3)
        axis.legend(loc="best", fontsize=8)
    _save_figure(figure, page.picture("evaluation.png"))
    caption = (f"<p>Best snapshot: <b>{best['kimg']:g} kimg</b>, KID {best['kid']:.4f}, FID "
               f"{best['fid']:.1f} ({len(evals)} evaluations on {evals[0]['n']} samples; "
               f"generate.snapshot picks which one is used).</p>")
    return caption + _img("evaluation.png", "snapshot scores during training", "plot")


def _snapshots(train_dir: Path) -> list[Path]:
    """First, middle and last fakes grids of the run (fewer when the run wrote fewer)."""
    grids = sorted(train_dir.glob("fakes*.png"))
    picks = [grids[0], grids[len(grids) // 2], grids[-1]] if grids else []
    return list(dict.fromkeys(picks))  # drop repeats, keep order


def _options_line(train_dir: Path) -> str:
    """The few training options that explain the curves (model, loss, length, batch, lr)."""
    path = train_dir / layout.TRAINING_OPTIONS_JSON
    if not path.exists():
        return ""
    config = json.loads(path.read_text(encoding="utf-8")).get("config", {})
    keys = ("model", "loss", "kimg", "batch_size", "width", "lr_g", "lr_d", "ema_kimg",
            "diffaugment")
    pairs = [f"{key} <b>{_esc(config[key])}</b>" for key in keys if config.get(key) not in
             (None, "")]
    return "<p>" + " &middot; ".join(pairs) + "</p>" if pairs else ""


def training_section(page: Page) -> str:
    """Loss curves and D(real)/D(fake) from stats.jsonl; sample grids over the run."""
    graph = page.graph
    if not _ran(graph, "train"):
        return _section("training", "Training", _not_run("train"))
    train_dir = graph.output_dir("train")
    parts = [_stale_note(graph, "train"), _options_line(train_dir)]
    rows = read_stats(train_dir / layout.STATS_JSONL)
    if rows:
        _plot_training(rows, page.picture("training.png"))
        parts.append(_img("training.png", "losses and discriminator outputs", "plot"))
    else:
        parts.append(_note(f"no {layout.STATS_JSONL} in data/train/ (the run logged no tick)"))
    parts.append(_evaluation_part(page, train_dir))
    figures = []
    if (train_dir / "reals.png").exists():
        shutil.copy2(train_dir / "reals.png", page.picture("train_reals.png"))
        figures.append(_figure("train_reals.png", "real images", "grid"))
    for grid in _snapshots(train_dir):
        name = f"train_{grid.name}"
        shutil.copy2(grid, page.picture(name))
        # fakesNNNNNN.png: NNNNNN is the kimg at which the grid was drawn (training's naming)
        kimg = grid.stem.removeprefix("fakes").lstrip("0") or "0"
        figures.append(_figure(name, f"fakes at {kimg} kimg", "grid"))
    if figures:
        parts.append('<div class="strip">' + "".join(figures) + "</div>")
    page.log(f"training ({len(rows)} ticks, {len(figures)} grids)")
    return _section("training", "Training", "\n".join(p for p in parts if p))


def _submission_images(graph: Graph) -> tuple[list[str], Callable[[str], Image.Image], str]:
    """Names of the submitted images, a loader and where they come from.

    The generated folder is read when present; otherwise the zip, which is what was submitted
    (the folder may have been cleaned away)."""
    generated = graph.output_dir("generate")
    if _ran(graph, "generate"):
        names = sorted(p.name for p in generated.glob("*.png"))
        return names, lambda n: Image.open(generated / n).convert("RGB"), "data/generated/"
    zips = sorted(graph.output_dir("package").glob("*.zip")) if _ran(graph, "package") else []
    if not zips:
        return [], lambda n: Image.new("RGB", (1, 1)), ""
    archive = zips[0]
    with zipfile.ZipFile(archive) as handle:
        names = sorted(n for n in handle.namelist() if n.lower().endswith(".png"))

    def load(name: str) -> Image.Image:
        with zipfile.ZipFile(archive) as handle, handle.open(name) as member:
            return Image.open(member).convert("RGB")

    return names, load, f"submissions/{archive.name}"


def samples_section(page: Page) -> str:
    """A seeded random sample of the submission as one grid (what a judge would see)."""
    graph = page.graph
    names, load, origin = _submission_images(graph)
    if not names:
        return _section("samples", "Samples", _not_run("generate"))
    picked = sorted(random.Random(SEED).sample(names, min(SAMPLE_COUNT, len(names))))
    _grid([load(n) for n in picked], page.picture("samples.png"))
    body = [_stale_note(graph, "generate"),
            f"<p>{len(picked)} of {len(names):,} images from <code>{_esc(origin)}</code>, "
            f"picked at random (seed {SEED}).</p>",
            _img("samples.png", "random sample of the generated images", "grid samples")]
    page.log(f"samples ({len(picked)} of {len(names):,})")
    return _section("samples", "Samples", "\n".join(b for b in body if b))


def _score_rows(score: dict[str, Any]) -> list[list[str]]:
    """(metric, value) rows for people, in the order a contestant reads them."""
    kid = _fmt(score.get("kid_mean"), 4)
    if score.get("kid_std") is not None and kid != "-":
        kid += f" ± {_fmt(score.get('kid_std'), 4)}"
    scored = _fmt(score.get("n_generated"))
    if score.get("n_generated_total") not in (None, score.get("n_generated")):
        scored += f" of {_fmt(score.get('n_generated_total'))}"
    weights = f"{score.get('weights_source', '?')} ({str(score.get('weights_sha256'))[:12]})"
    return [["FID", _fmt(score.get("fid"))], ["KID", kid],
            ["precision", _fmt(score.get("precision"), 3)],
            ["recall", _fmt(score.get("recall"), 3)],
            ["precision and recall read", precision_recall_reading(score)],
            ["MiFID", _fmt(score.get("mifid"))],
            ["Inception Score", inception_score_text(score)],
            ["images scored", scored], ["reference images", _fmt(score.get("n_reference"))],
            ["Inception weights", weights], ["device", _fmt(score.get("device"))]]


def score_section(page: Page) -> str:
    """The latest score table with the scorer's warnings."""
    graph = page.graph
    path = graph.output_dir("score") / layout.SCORE_JSON
    if not (_ran(graph, "score") and path.exists()):
        return _section("score", "Score", _not_run("score"))
    score = json.loads(path.read_text(encoding="utf-8"))
    parts = [_stale_note(graph, "score"), _table(["metric", "value"], _score_rows(score), "score")]
    parts += [_note(f"warning: {_esc(w)}", "note stale") for w in score.get("warnings", [])]
    parts.append(_nearest_sheet(page, score.get("nearest", [])))
    return _section("score", "Score", "\n".join(p for p in parts if p))


def _nearest_sheet(page: Page, pairs: Sequence[dict[str, Any]]) -> str:
    """Generated images beside their closest reference image in Inception space, closest
    first: the pairs MiFID penalises. Near copies show as look-alike pairs at distance ~0."""
    if not pairs:
        return ""
    items: list[tuple[Path | None, str, str]] = []
    for pair in pairs:
        generated, reference = Path(pair["generated"]), Path(pair["reference"])
        items.append((generated if generated.is_file() else None, generated.name,
                      f"generated {generated.name}"))
        items.append((reference if reference.is_file() else None,
                      f"d={pair['distance']:.3f}",
                      f"nearest reference {reference.name}, cosine distance "
                      f"{pair['distance']:.4f}"))
    intro = _note(f"Nearest neighbours: the {len(pairs)} generated images closest to a "
                  "training image in Inception space, each beside that image (cosine distance "
                  f"d = 1 - |cos|; MiFID counts distances below {MIFID_EPSILON} as copying).")
    return intro + '<div class="pairs">' + _thumb_strip(page, items, "nearest") + "</div>"


def _plot_history(history: pd.DataFrame, path: Path) -> None:
    """FID (and KID when recorded) per scored run, oldest first."""
    figure, axes = _new_figure(11, 3.2)
    axis = axes[0, 0]
    runs = np.arange(1, len(history) + 1)
    axis.plot(runs, history["fid"], marker="o", color="#4c78a8", label="FID")
    axis.set_xlabel("scored run")
    axis.set_ylabel("FID (lower is better)")
    axis.set_xticks(runs)
    axis.grid(alpha=0.3)
    if "kid_mean" in history and history["kid_mean"].notna().any():
        twin = axis.twinx()
        twin.plot(runs, history["kid_mean"], marker="s", color="#f58518", label="KID")
        twin.set_ylabel("KID")
        twin.legend(loc="upper right", fontsize=8)
    axis.legend(loc="upper left", fontsize=8)
    _save_figure(figure, path)


def history_section(page: Page) -> str:
    """Scores across runs, so a contestant sees which change helped (table, plot from 2 runs)."""
    graph = page.graph
    path = graph.output_dir("score") / layout.HISTORY_CSV
    if not (_ran(graph, "score") and path.exists()):
        return _section("history", "Score history", _not_run("score"))
    history = pd.read_csv(path)
    # Which change moved the score: each row's settings against the row before it.
    if "settings" in history:
        previous = history["settings"].shift(1)
        history["changed"] = [settings_change(before, after) if i else ""
                              for i, (before, after) in enumerate(zip(previous,
                                                                      history["settings"]))]
    columns = [c for c in ("time", "run", "fid", "kid_mean", "precision", "recall", "mifid",
                           "n_generated", "changed") if c in history]
    recent = history.tail(HISTORY_ROWS)
    rows = [[_fmt(v.item() if hasattr(v, "item") else v, 4 if c == "kid_mean" else 2)
             for c, v in zip(columns, row)] for row in recent[columns].itertuples(index=False)]
    parts = []
    if len(history) >= 2:
        _plot_history(history, page.picture("history.png"))
        parts.append(_img("history.png", "FID across scored runs", "plot"))
    parts.append(_table(columns, rows, "history"))
    if len(history) > HISTORY_ROWS:
        parts.append(_note(f"the last {HISTORY_ROWS} of {len(history)} runs; all in "
                           f"data/score/{layout.HISTORY_CSV}"))
    return _section("history", "Score history", "\n".join(parts))


# ----------------------------------------------------------------------------------------------
# The page


_STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 0 auto; max-width: 1150px; padding: 1em;
       color: #222; }
nav a { margin-right: 1em; }
h2 { border-bottom: 2px solid #ddd; padding-bottom: .2em; margin-top: 1.6em; }
table { border-collapse: collapse; margin: .5em 0; }
th, td { border-bottom: 1px solid #e4e4e4; padding: .25em .7em; text-align: left;
         vertical-align: top; }
table.stages td:last-child { font-size: 12px; color: #444; }
table.score td:last-child, table.history td { font-variant-numeric: tabular-nums; }
.badge { border-radius: 3px; padding: 0 .4em; color: #fff; font-size: 12px; }
.badge.cached { background: #2e8540; } .badge.stale { background: #d98200; }
.badge.missing { background: #999; }
.note { color: #555; background: #f4f4f4; padding: .4em .7em; border-left: 3px solid #bbb; }
.note.stale { background: #fff6e5; border-color: #d98200; }
.strip { display: flex; flex-wrap: wrap; gap: 8px; }
.pairs .strip figure:nth-child(even) { margin-right: 18px; }  /* generated | nearest real */
figure { margin: 0; }
figure.thumb { width: 80px; font-size: 10px; color: #555; word-break: break-all; }
figure.thumb img, .nopreview { display: block; max-width: 72px; max-height: 72px; margin: auto; }
.nopreview { width: 72px; height: 72px; line-height: 72px; text-align: center; background: #eee; }
img.plot { max-width: 100%; }
img.grid { width: 340px; image-rendering: pixelated; }
img.samples { width: 560px; }
figcaption { text-align: center; }
code { background: #f2f2f2; padding: 0 .2em; }
"""

# Marks every picture loaded or not once the page has loaded, and records the page height: a
# headless browser's DOM dump then tells a test what a person would have seen.
_SCRIPT = """
window.addEventListener("load", () => {
  let loaded = 0;
  for (const image of document.images) {
    const ok = image.complete && image.naturalWidth > 0;
    image.dataset.loaded = ok ? "yes" : "no";
    loaded += ok;
  }
  document.body.dataset.imagesLoaded = loaded + "/" + document.images.length;
  document.body.dataset.height = document.documentElement.scrollHeight;
});
"""

SECTIONS: tuple[tuple[str, str, Callable[[Page], str]], ...] = (
    ("stages", "Stages", stages_section),
    ("dataset", "Dataset", dataset_section),
    ("training", "Training", training_section),
    ("samples", "Samples", samples_section),
    ("score", "Score", score_section),
    ("history", "History", history_section),
)


def render_page(page: Page) -> str:
    """The whole HTML document: header, navigation, then every section in order."""
    nav = "".join(f'<a href="#{anchor}">{_esc(title)}</a>' for anchor, title, _ in SECTIONS)
    body = "\n".join(build(page) for _, _, build in SECTIONS)
    root = _esc(page.graph.project.root)
    stamp = time.strftime("%Y-%m-%d %H:%M")
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
            f'<meta name="viewport" content="width=device-width, initial-scale=1">'
            f"<title>GAN pipeline report</title><style>{_STYLE}</style></head><body>"
            f"<h1>GAN pipeline report</h1><p>{root} &middot; written {stamp} by "
            f"<code>make report</code></p><nav>{nav}</nav>\n{body}\n"
            f"<script>{_SCRIPT}</script></body></html>\n")


def write_report(graph: Graph, out_dir: Path, quiet: bool = False) -> Path:
    """Write `out_dir`/index.html and its pictures; returns the page's path.

    Built in a temporary sibling folder and swapped into place, so an interrupted report
    leaves the previous one whole and pictures of an older report never linger beside it.
    """
    out_dir = Path(out_dir)
    partial = out_dir.parent / f".{out_dir.name}.partial"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    page = Page(graph=graph, folder=partial, quiet=quiet)
    (partial / layout.REPORT_HTML).write_text(render_page(page), encoding="utf-8")
    swap_into_place(partial, out_dir)
    page.log(f"{len(page.pictures)} pictures beside the page")
    return out_dir / layout.REPORT_HTML
