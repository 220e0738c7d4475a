"""Pad stage work: every kept crop becomes a `size` x `size` RGB PNG in data/clean/.

Seed 004 found letterboxing (scale the long side, pad the rest) gave a better FID than plain
resizing on the Zalo motorbikes, so it is the default. Files are decoded safely, checked for
usable geometry, fitted in worker processes and written as they go; only small per-image hashes
come back, which then drive the exact and near-duplicate removal.
"""

from __future__ import annotations

from pathlib import Path

from pipeline.core.config import PadConfig
from pipeline.core.faults import kill_point
from pipeline.ingest.crop import flat_names, parallel_map
from pipeline.ingest.decisions import Decision, kept, rejected
from pipeline.ingest.dedupe import content_hash, find_duplicates, mean_colour, perceptual_hash
from pipeline.ingest.images import (
    check_geometry,
    composite,
    fit,
    letterbox_box,
    load_image,
    save_png,
)

STAGE = "pad"
# zlib level of data/clean: on 128x128 photo crops level 1 costs 1.4 ms and 37 KiB an image,
# PIL's default 6 2.6 ms and 36 KiB; the pixels are the same (lossless either way).
CLEAN_PNG_LEVEL = 1


Signature = tuple[str, int, tuple[int, int, int]]  # content hash, pHash, mean colour


def _pad_one(task: tuple[str, str, PadConfig]) -> tuple[str, Signature | None]:
    """Worker: decode, check, fit, write. Returns (reason, duplicate signature or None)."""
    src, dst, cfg = task
    # JPEGs may decode at 1/2..1/8 scale (libjpeg's DCT scaling: ~2x faster than a full decode
    # and about 1 level of 255 from it after fitting), keeping >= `size` pixels where the fit
    # needs them: both sides, or only the long one for a letterbox (the short one >= min_side).
    short = cfg.min_side if cfg.mode == "letterbox" else None
    image, reason = load_image(Path(src), cfg.max_pixels, draft=max(cfg.size, cfg.min_side),
                               draft_short=short)
    if image is None:
        return reason, None
    # Geometry on the decoded picture: a draft keeps the aspect, and min_side wherever the
    # original had it.
    reason = check_geometry(image, cfg.min_side, cfg.max_aspect)
    if reason:
        return reason, None
    # Alpha goes onto the same colour as the letterbox bands, so cut-outs blend into them.
    square = fit(composite(image, cfg.background), cfg.size, cfg.mode, cfg.background)
    save_png(square, Path(dst), compress_level=CLEAN_PNG_LEVEL)
    # Exact copies: identical output pixels. Near copies: pHash of the picture without its
    # letterbox bands, which all pictures of one aspect share and would pull hashes together.
    picture = square
    if cfg.mode == "letterbox":
        x0, y0, x1, y1 = letterbox_box(image.shape[0], image.shape[1], cfg.size)
        picture = square[y0:y1, x0:x1]
    return "", (content_hash(square), perceptual_hash(picture), mean_colour(square))


def pad_images(files: list[Path], root: Path, out_dir: Path, cfg: PadConfig,
               quiet: bool) -> list[Decision]:
    """Write `{stem}.png` (cfg.size square RGB) for every usable file; one Decision per file.

    Rows come sorted by path relative to `root`; kept rows name their PNG (Decision.output).
    With cfg.dedupe, later copies (by name) of an
    exact or near-identical output are rejected as 'duplicate of <kept file>' and deleted.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    # Same naming as crop: '{stem}.png' for the flat folders crop writes, unique if nested.
    rels = sorted(Path(f).relative_to(root).as_posix() for f in files)
    names = flat_names(rels)
    tasks = [(str(root / rel), str(out_dir / names[rel]), cfg) for rel in rels]
    reasons: dict[str, str] = {}
    signatures: dict[str, Signature] = {}  # kept files only: a few dozen bytes each
    for rel, (reason, signature) in zip(rels, parallel_map(_pad_one, tasks, cfg.workers, quiet,
                                                           STAGE)):
        reasons[rel] = reason
        kill_point("pad:first-image")
        if signature is not None:
            signatures[rel] = signature
    # Dedupe over the kept outputs only; the first by name of each group stays.
    if cfg.dedupe:
        good = list(signatures)
        exact, phash, colours = zip(*(signatures[r] for r in good)) if good else ((), (), ())
        duplicates = find_duplicates(good, list(exact), list(phash), cfg.near_duplicate_bits,
                                     colours=list(colours))
        for rel, original in duplicates.items():  # reject and remove the later copies
            reasons[rel] = f"duplicate of {original}"
            (out_dir / names[rel]).unlink(missing_ok=True)
    return [rejected(rel, STAGE, reasons[rel]) if reasons[rel]
            else kept(rel, STAGE, output=names[rel]) for rel in rels]
