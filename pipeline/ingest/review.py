"""Manual filtering for the crop stage: a reject list the user edits and a contact sheet to read.

Seed 004 filtered its YOLO crops by hand (odd bikes, busy backgrounds). The contact sheet shows
every picture the stage saw, grouped by what happened to it and why, each with the file name
to copy; names pasted into the reject list (one a line) drop those pictures on the next run.
The runner hashes the list's content into the crop fingerprint, so editing it reruns crop.
"""

from __future__ import annotations

import html
import unicodedata
from collections.abc import Sequence
from pathlib import Path, PurePosixPath

import numpy as np
from tqdm import tqdm

from pipeline.core.errors import UserError
from pipeline.ingest.crop import flat_names
from pipeline.ingest.decisions import KEPT, Decision, rejected
from pipeline.ingest.images import composite, load_image
from pipeline.ingest.opencv import cv2

STAGE = "crop"
REJECT_REASON = "in reject list"
THUMB_BACKGROUND = (255, 255, 255)  # transparent pixels in thumbnails
BOX_COLOUR = (230, 30, 30)  # RGB outline of the detection on rejected pictures
SHEET_MAX_PIXELS = 50_000_000  # skip thumbnails of decompression bombs


# ----------------------------------------------------------------------------------------------
# Reject list


def _normalise(name: str) -> str:
    """One spelling per name: NFC (macOS writes NFD), forward slashes, no leading './'."""
    name = unicodedata.normalize("NFC", name.strip()).replace("\\", "/")
    while name.startswith("./"):
        name = name[2:]
    return name


def read_reject_list(path: Path | None) -> set[str]:
    """File names to drop, one a line; '#' starts a comment (whole line, or after a space).

    None means no list. A configured list that does not exist is a UserError: a typo in the
    path would otherwise silently keep every picture the user meant to drop.
    """
    if path is None:
        return set()
    if not path.is_file():
        raise UserError(f"reject list {path} does not exist; create it (one file name a line) "
                        "or set crop.reject_list to ''")
    names = set()
    for line in path.read_text(encoding="utf-8-sig").splitlines():
        if line.lstrip().startswith("#"):
            continue
        line = line.split(" #", 1)[0].split("\t#", 1)[0]  # trailing comment
        if line.strip():
            names.add(_normalise(line))
    return names


def matches(rel: str, names: set[str]) -> bool:
    """Whether a relative posix path is listed, by its whole path or by its base name."""
    rel = _normalise(rel)
    return rel in names or PurePosixPath(rel).name in names


def apply_reject_list(files: Sequence[Path], root: Path,
                      names: set[str]) -> tuple[list[Path], list[Decision]]:
    """Split `files` into those to process and rejected rows ("in reject list") for the rest."""
    remaining: list[Path] = []
    dropped: list[Decision] = []
    for path in files:
        rel = Path(path).relative_to(root).as_posix()
        if names and matches(rel, names):
            dropped.append(rejected(rel, STAGE, REJECT_REASON))
        else:
            remaining.append(Path(path))
    return remaining, dropped


def unmatched(names: set[str], files: Sequence[Path], root: Path) -> list[str]:
    """Listed names that match no file: likely typos worth a warning."""
    rels = [_normalise(Path(f).relative_to(root).as_posix()) for f in files]
    seen = set(rels) | {PurePosixPath(rel).name for rel in rels}
    return sorted(names - seen)


# ----------------------------------------------------------------------------------------------
# Contact sheet


def _thumbnail(image: np.ndarray, size: int, box: str) -> np.ndarray:
    """RGB thumbnail whose longer side is `size`, with the detection box drawn when given."""
    image = np.ascontiguousarray(composite(image, THUMB_BACKGROUND))
    height, width = image.shape[:2]
    scale = size / max(height, width)
    if box:
        # Outline in source pixels, thick enough to survive the shrink
        x0, y0, x1, y1 = (int(v) for v in box.split())
        thickness = max(1, round(2 / scale))
        image = cv2.rectangle(image.copy(), (x0, y0), (x1 - 1, y1 - 1), BOX_COLOUR, thickness)
    new_size = (max(1, round(width * scale)), max(1, round(height * scale)))
    shrinking = scale < 1
    return cv2.resize(image, new_size,
                      interpolation=cv2.INTER_AREA if shrinking else cv2.INTER_NEAREST)


def _write_jpeg(image: np.ndarray, path: Path) -> None:
    """JPEG through Python bytes, so any file name works (Vietnamese, spaces)."""
    ok, data = cv2.imencode(".jpg", cv2.cvtColor(image, cv2.COLOR_RGB2BGR),
                            [cv2.IMWRITE_JPEG_QUALITY, 85])
    if not ok:
        raise OSError(f"JPEG encoding failed for {path}")
    path.write_bytes(data.tobytes())


def _kept_image(row: Decision, image_dir: Path) -> Path | None:
    """The crop the stage wrote for a kept row (Decision.output), None when it names none."""
    return image_dir / row.output if row.output else None


def _group(row: Decision) -> str:
    """Section heading: 'kept', or the reason without its details ('object too small')."""
    return KEPT if row.decision == KEPT else row.reason.split(":")[0].strip() or "rejected"


def _tile(row: Decision, thumb_name: str | None, size: tuple[int, int]) -> str:
    """One figure: thumbnail (or a note), the file name to copy, reason and score."""
    name = html.escape(row.file)
    if thumb_name:
        src = html.escape("thumbs/" + thumb_name, quote=True)
        picture = f'<img src="{src}" width="{size[0]}" height="{size[1]}" loading="lazy" alt="">'
    else:
        picture = '<div class="missing">no preview</div>'
    details = [html.escape(row.reason)] if row.reason else []
    if row.score is not None:
        details.append(f"score {row.score:.2f}")
    return (f'<figure data-file="{html.escape(row.file, quote=True)}">{picture}'
            f'<figcaption><code>{name}</code><br>{" · ".join(details)}</figcaption></figure>')


_PAGE = """<!doctype html>
<html lang="en"><head><meta charset="utf-8"><title>{title}</title>
<style>
body {{ font: 13px sans-serif; margin: 1em; }}
section {{ display: flex; flex-wrap: wrap; gap: 8px; }}
figure {{ margin: 0; width: {width}px; cursor: pointer; border: 2px solid transparent; }}
figure.picked {{ border-color: #d22; background: #fee; }}
figure img, .missing {{ display: block; margin: auto; }}
.missing {{ height: {thumb}px; line-height: {thumb}px; text-align: center; color: #888; }}
figcaption {{ word-break: break-all; color: #444; }}
code {{ user-select: all; color: #000; }}
textarea {{ width: 100%; height: 6em; }}
</style></head><body>
<h1>{title}</h1>
<p>{summary}. Click pictures to collect their names below, then paste them into the reject
list (one name a line) and rerun the stage.</p>
<textarea id="picked" readonly placeholder="clicked file names appear here"></textarea>
{sections}
<script>
for (const f of document.querySelectorAll("figure")) {{
  f.addEventListener("click", () => {{
    f.classList.toggle("picked");
    const names = [...document.querySelectorAll("figure.picked")].map(e => e.dataset.file);
    document.getElementById("picked").value = names.join("\\n");
  }});
}}
</script>
</body></html>
"""


def contact_sheet(decisions: list[Decision], image_dir_for_kept: Path, source_root: Path,
                  out_html: Path, thumb: int = 96, quiet: bool = True) -> None:
    """Write an HTML page of every decision, grouped kept first, then by rejection reason.

    Thumbnails (JPEG, longer side `thumb` px) go to a thumbs/ folder beside the page: the crop
    a kept row names in its `output` (in `image_dir_for_kept`), the source picture with its
    detection box for rejected ones. Unreadable
    pictures get a "no preview" tile, never an error.
    """
    thumbs = out_html.parent / "thumbs"
    thumbs.mkdir(parents=True, exist_ok=True)
    files = sorted({row.file for row in decisions})
    thumb_names = {rel: name[:-len(".png")] + ".jpg" for rel, name in flat_names(files).items()}
    groups: dict[str, list[str]] = {}
    for row in tqdm(sorted(decisions, key=lambda r: r.file), desc="contact sheet", unit="img",
                    disable=quiet):
        source = (_kept_image(row, image_dir_for_kept) if row.decision == KEPT
                  else source_root / row.file)
        box = "" if row.decision == KEPT else row.box
        # A reduced JPEG decode is much faster, but only full size matches a box's pixels
        draft = 0 if box else 2 * thumb
        image, _ = load_image(source, SHEET_MAX_PIXELS, draft) if source else (None, "")
        name, size = None, (thumb, thumb)
        if image is not None:
            small = _thumbnail(image, thumb, box)
            name, size = thumb_names[row.file], (small.shape[1], small.shape[0])
            _write_jpeg(small, thumbs / name)
        groups.setdefault(_group(row), []).append(_tile(row, name, size))
    # Kept first, then the largest rejection groups
    order = sorted(groups, key=lambda g: (g != KEPT, -len(groups[g]), g))
    sections = "\n".join(f"<h2>{html.escape(g)} ({len(groups[g])})</h2>\n<section>"
                         + "\n".join(groups[g]) + "</section>" for g in order)
    kept_count = sum(r.decision == KEPT for r in decisions)
    summary = f"{kept_count} kept, {len(decisions) - kept_count} rejected"
    out_html.write_text(_PAGE.format(title="crop: contact sheet", summary=summary,
                                     sections=sections, width=thumb + 4, thumb=thumb),
                        encoding="utf-8")
