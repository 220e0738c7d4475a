"""Crop stage work for `method: alpha | none`: one flat, checked file per usable source file.

Fetched datasets come in any layout, format and file name. This module decodes each file safely
and gives every kept image a flat, unique name, so pad and later stages see one folder. `alpha`
crops transparent cut-outs (emoji renders, product shots) to their opaque extent and writes the
crop as a PNG; `none` links the checked file itself (no re-encoding: a photo's JPEG stays a
JPEG, which pad then decodes once, at a reduced scale). The YOLO method lives in
pipeline/ingest/detect.py and reuses `flat_names` and `parallel_map` from here.
"""

from __future__ import annotations

import hashlib
import os
import unicodedata
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

from tqdm import tqdm

from pipeline.core.config import CropConfig
from pipeline.core.files import link_or_copy, process_pool_context, resolve_workers
from pipeline.ingest.decisions import Decision, kept, rejected
from pipeline.ingest.images import alpha_bbox, load_image, save_png, upright_size

STAGE = "crop"
MAX_NAME_BYTES = 200  # file systems allow 255 bytes a name; leave room for suffixes
_UNSAFE = set('\\:*?"<>|') | {chr(c) for c in range(32)}  # risky on some file systems
# method none checks that a file decodes at the smallest scale the JPEG decoder offers (1/8):
# every byte of the stream is still read, so truncation and damage show as in a full decode.
CHECK_DRAFT = 1


# ----------------------------------------------------------------------------------------------
# Names and parallelism shared by the image stages


def _short_hash(text: str) -> str:
    return hashlib.sha1(text.encode("utf-8")).hexdigest()[:8]


def _flatten(rel: str) -> str:
    """'Xe/xe máy đỏ 01.jpg' -> 'Xe__xe máy đỏ 01' (NFC, unsafe characters replaced)."""
    # NFC: macOS writes decomposed accents; one spelling per name keeps names comparable.
    parts = unicodedata.normalize("NFC", rel).split("/")
    parts[-1] = os.path.splitext(parts[-1])[0] or parts[-1]
    name = "__".join(parts)
    name = "".join("_" if ch in _UNSAFE else ch for ch in name).strip()
    if name.startswith("."):
        name = "_" + name[1:]  # no hidden files
    if len(name.encode("utf-8")) > MAX_NAME_BYTES:
        # Cut on a character boundary ("ignore" drops a split UTF-8 sequence), keep it unique.
        name = name.encode("utf-8")[:MAX_NAME_BYTES - 10].decode("utf-8", "ignore")
        name += "~" + _short_hash(rel)
    return name or _short_hash(rel)


def flat_names(rels: Sequence[str]) -> dict[str, str]:
    """Map relative posix paths to unique flat PNG names, readable and deterministic.

    Names that would collide (same stem with other extensions, case or Unicode forms, or a
    folder joined the same way) all get '~' and 8 hex digits of their own path's hash.
    """
    flat = {rel: _flatten(rel) for rel in rels}
    # Count case-folded names: 'A.png' and 'a.png' are one file on macOS and Windows.
    counts: dict[str, int] = {}
    for name in flat.values():
        counts[name.casefold()] = counts.get(name.casefold(), 0) + 1
    return {rel: (name if counts[name.casefold()] == 1 else f"{name}~{_short_hash(rel)}") + ".png"
            for rel, name in flat.items()}


def parallel_map(func: Callable[[Any], Any], tasks: Sequence[Any], workers: int, quiet: bool,
                 desc: str) -> Iterator[Any]:
    """Yield func(task) in task order, over `workers` processes (0 = one per usable CPU).

    Chunked imap keeps memory flat: only a few chunks of small results are in flight. One
    worker (or one task) runs in this process, which keeps tracebacks and profiles simple.
    """
    workers = resolve_workers(workers)
    bar = tqdm(total=len(tasks), desc=desc, unit="img", disable=quiet)
    if workers == 1 or len(tasks) <= 1:
        for task in tasks:
            yield func(task)
            bar.update()
    else:
        # Chunks amortise inter-process messages; >= 8 chunks per worker balance the load.
        chunk = max(1, min(16, len(tasks) // (workers * 8)))
        with process_pool_context().Pool(workers) as pool:
            for result in pool.imap(func, tasks, chunksize=chunk):
                yield result
                bar.update()
    bar.close()


# ----------------------------------------------------------------------------------------------
# The crop itself


def _crop_one(task: tuple[str, str, str, int, float, int]) -> tuple[str, str]:
    """Worker: decode, crop, write. Returns (reason, box); reason '' means kept."""
    src, dst, method, threshold, margin, max_pixels = task
    if method == "none":
        return _pass_through(Path(src), Path(dst), max_pixels)
    image, reason = load_image(Path(src), max_pixels)
    if image is None:
        return reason, ""
    box = alpha_bbox(image, threshold, margin)
    if box is None:
        return "empty: fully transparent", ""
    x0, y0, x1, y1 = box
    image = image[y0:y1, x0:x1]
    if image.shape[2] == 4 and image[:, :, 3].min() == 255:
        image = image[:, :, :3]  # the crop is opaque throughout: alpha no longer matters
    save_png(image, Path(dst), compress_level=1)  # scratch file for pad: favour speed
    return "", " ".join(map(str, box))


def _pass_through(src: Path, dst: Path, max_pixels: int) -> tuple[str, str]:
    """method none: the whole picture, unchanged. Checked as any other (a bomb, a damaged or
    disguised file is rejected here with its reason), then linked rather than re-encoded: a
    photo's full-size PNG cost more to write and to read back than everything pad does."""
    image, reason = load_image(src, max_pixels, draft=CHECK_DRAFT)
    if image is None:
        return reason, ""
    width, height = upright_size(src)
    link_or_copy(src, dst)
    return "", f"0 0 {width} {height}"


def crop_images(files: list[Path], root: Path, out_dir: Path, cfg: CropConfig, max_pixels: int,
                quiet: bool, workers: int = 0) -> list[Decision]:
    """Write one PNG per usable file under `root` into `out_dir`; one Decision per file.

    Rows come sorted by relative path; Decision.file is that path (posix), box "x0 y0 x1 y1"
    in source pixels, output the PNG's name in `out_dir` for kept rows. `workers` processes
    (0 = one per CPU core).
    """
    if cfg.method not in ("alpha", "none"):
        raise ValueError(f"crop method {cfg.method!r} is not handled here (yolo: ingest.detect)")
    out_dir.mkdir(parents=True, exist_ok=True)
    # Sorted relative paths fix both the row order and the name given to each output.
    rels = sorted(Path(f).relative_to(root).as_posix() for f in files)
    names = flat_names(rels)
    if cfg.method == "none":  # the file itself: its own format's suffix (unique stems stay so)
        names = {rel: name[:-len(".png")] + Path(rel).suffix.lower()
                 for rel, name in names.items()}
    # Tasks are plain tuples: cheap to pickle to the workers.
    tasks = [(str(root / rel), str(out_dir / names[rel]), cfg.method, cfg.alpha_threshold,
              cfg.margin, max_pixels) for rel in rels]
    rows = []  # results arrive in task order, so zip pairs each with its file
    for rel, (reason, box) in zip(rels, parallel_map(_crop_one, tasks, workers, quiet, STAGE)):
        rows.append(rejected(rel, STAGE, reason) if reason
                    else kept(rel, STAGE, box=box, output=names[rel]))
    return rows
