"""Crop stage work for `method: yolo`: keep the one main object of each picture, drop the rest.

Seed 004 cut motorbikes out of scraped photos with YOLOv3 and then filtered by hand; seed 000
wanted wrist watches (COCO "clock"). Here an ultralytics YOLO finds confident boxes of the
wanted classes. A picture is kept only when it shows one clear object: not none, not a crowd,
not a speck. The kept crop is the largest box, grown by a margin and squared, so pad's
letterbox has little to fill. Box choice and expansion are pure functions, testable without a
model.

ultralytics is imported inside functions only: importing it creates its settings file, and
this module must do no I/O at import time (see `configure_ultralytics`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm import tqdm

from pipeline.core.config import CropConfig
from pipeline.core.errors import UserError
from pipeline.core.files import sha256_file
from pipeline.ingest.crop import flat_names
from pipeline.ingest.decisions import Decision, kept, rejected
from pipeline.ingest.images import composite, load_image, save_png

STAGE = "crop"
DETECT_BACKGROUND = (255, 255, 255)  # transparent pixels are shown to YOLO as white

Box = tuple[float, float, float, float]  # x0 y0 x1 y1 in source pixels, ends exclusive


@dataclass(frozen=True)
class Detection:
    """One confident box of a wanted class, in the source image's pixels."""

    box: Box
    score: float  # detector confidence in [0, 1]
    label: str  # class name, e.g. "clock"

    @property
    def area(self) -> float:
        return max(0.0, self.box[2] - self.box[0]) * max(0.0, self.box[3] - self.box[1])


# ----------------------------------------------------------------------------------------------
# Pure box logic


def box_side(box: Box) -> float:
    """A box's size: its longer side, in pixels (the side a square crop will have)."""
    return max(box[2] - box[0], box[3] - box[1])


def format_box(box: Sequence[float]) -> str:
    """'x0 y0 x1 y1' as whole pixels, the Decision.box format."""
    return " ".join(str(int(round(v))) for v in box)


def choose_detection(detections: Sequence[Detection], width: int, height: int,
                     cfg: CropConfig) -> tuple[Detection | None, str]:
    """The detection to crop and '' or, when the picture is rejected, the largest one and why.

    Rules in order: no detection -> "no clock found"; more than cfg.max_objects -> "too many
    objects: 3 > 1"; the largest box's longer side below cfg.min_box x the image's shorter side
    -> "object too small". The largest is by area.
    """
    if not detections:
        return None, f"no {' or '.join(cfg.classes)} found"
    largest = max(detections, key=lambda d: d.area)
    if len(detections) > cfg.max_objects:
        return largest, f"too many objects: {len(detections)} > {cfg.max_objects}"
    side, short = box_side(largest.box), min(width, height)
    if side < cfg.min_box * short:
        return largest, (f"object too small: {side:.0f} px < {cfg.min_box:g} x {short} px "
                         "(shorter image side)")
    return largest, ""


def _fit_span(lo: int, hi: int, limit: int) -> tuple[int, int]:
    """Slide [lo, hi) inside [0, limit) keeping its length; clip it when it is longer."""
    if hi - lo >= limit:
        return 0, limit
    if lo < 0:
        return 0, hi - lo
    if hi > limit:
        return limit - (hi - lo), limit
    return lo, hi


def expand_box(box: Box, width: int, height: int, margin: float,
               square: bool) -> tuple[int, int, int, int]:
    """Integer crop box: `box` grown by `margin` x its width/height on each side, in the image.

    With `square`, the crop is a square of the grown box's longer side around its centre, slid
    (not shrunk) to stay inside the image; only a square larger than the image is clipped.
    """
    x0, y0, x1, y1 = box
    grow_x, grow_y = margin * (x1 - x0), margin * (y1 - y0)
    x0, x1, y0, y1 = x0 - grow_x, x1 + grow_x, y0 - grow_y, y1 + grow_y
    if square:
        side = max(1, math.ceil(max(x1 - x0, y1 - y0)))
        left = int(round((x0 + x1) / 2 - side / 2))
        top = int(round((y0 + y1) / 2 - side / 2))
        (ix0, ix1), (iy0, iy1) = _fit_span(left, left + side, width), _fit_span(top, top + side,
                                                                                  height)
    else:
        # Plain clipping: sliding a non-square box would only shift it off the object
        ix0, ix1 = max(0, math.floor(x0)), min(width, math.ceil(x1))
        iy0, iy1 = max(0, math.floor(y0)), min(height, math.ceil(y1))
    # Never an empty crop, even for a degenerate box on the border
    ix1, iy1 = max(ix1, min(width, ix0 + 1)), max(iy1, min(height, iy0 + 1))
    return ix0, iy0, ix1, iy1


# ----------------------------------------------------------------------------------------------
# ultralytics: settings, weights, model


def configure_ultralytics(config_dir: Path) -> None:
    """Keep ultralytics' settings file in `config_dir`, its telemetry and auto-installs off.

    Call before ultralytics is first imported (its env vars are read at import time); the
    user's own YOLO_CONFIG_DIR / YOLO_AUTOINSTALL win. Nothing here needs the network.
    """
    config_dir.mkdir(parents=True, exist_ok=True)
    os.environ.setdefault("YOLO_CONFIG_DIR", str(config_dir))
    # No `pip install` behind the user's back when ultralytics misses an optional package
    os.environ.setdefault("YOLO_AUTOINSTALL", "false")
    _import_ultralytics()


def _import_ultralytics() -> None:
    """Import ultralytics, then undo its side effects that reach beyond it.

    Its import replaces PIL.Image.open with a version that, on a file PIL cannot identify,
    tries to install and import pi-heif, raising ModuleNotFoundError offline: that would break
    load_image's promise of a reason, never an exception. We decode with load_image, so
    ultralytics never needs the patch. Its anonymous usage events are switched off too.
    """
    from PIL import Image
    from ultralytics.utils import SETTINGS, patches

    if getattr(Image.open, "__module__", "") == patches.__name__:
        Image.open = getattr(patches, "_image_open", Image.open)  # PIL's own function
    if SETTINGS.get("sync", True):
        SETTINGS.update(sync=False)  # writes the settings file once, then it stays off


# sha256 and size of ultralytics' COCO release assets that a download is checked against. Not
# verifiable on the offline machine this was written on: the same digest and size are recorded
# by ten unrelated public projects that pinned these files (one names release v8.4.0), and no
# other digest for these names was found. A mismatch is refused, never loaded.
KNOWN_DOWNLOADS = {
    "yolo11n.pt": ("0ebbc80d4a7680d14987a577cd21342b65ecfd94632bd9a8da63ae6417644ee1", 5_613_764),
    "yolo11s.pt": ("85a76fe86dd8afe384648546b56a7a78580c7cb7b404fc595f97969322d502d5", 19_313_732),
    "yolo11m.pt": ("d5ffc1a674953a08e11a8d21e022781b1b23a19b730afc309290bd9fb5305b95", 40_684_120),
}


def check_download(path: Path) -> None:
    """A freshly downloaded known asset must have its recorded sha256: else it is moved aside
    to <name>.rejected (kept for inspection, never loaded) and the download is refused."""
    known = KNOWN_DOWNLOADS.get(path.name)
    if known is None:
        return
    expected, size = known
    actual = sha256_file(path)
    if actual != expected:
        aside = path.with_name(path.name + ".rejected")
        path.replace(aside)
        raise UserError(f"the downloaded {path.name} has sha256 {actual} ({aside.stat().st_size:,} "
                        f"bytes), not the recorded {expected} ({size:,} bytes); refused and moved "
                        f"to {aside}. Download it again, or if you trust another file, put it at "
                        f"{path} and set crop.weights_sha256 to its digest")


def resolve_weights(weights: str, base_dir: Path | None) -> Path:
    """A local weights file for `weights`, downloading a known ultralytics model when online.

    A relative path is taken from `base_dir` (the project root; None = the current folder).
    Offline, a missing file raises UserError naming where to put it.
    """
    from ultralytics.utils import is_online
    from ultralytics.utils.downloads import GITHUB_ASSETS_NAMES, attempt_download_asset

    path = Path(weights).expanduser()
    if not path.is_absolute():
        path = (base_dir or Path.cwd()) / path
    if path.is_file():
        return path
    fix = f"put the file at {path} or set crop.weights to a local .pt"
    if path.name not in GITHUB_ASSETS_NAMES:
        raise UserError(f"YOLO weights '{weights}' not found at {path}; {fix}")
    if not is_online():
        raise UserError(f"YOLO weights '{weights}' are not on this machine and cannot be "
                        f"downloaded offline; {fix}")
    try:
        # Downloads ultralytics' release asset to exactly this path
        found = Path(attempt_download_asset(path))
    except Exception as error:  # requests/curl failures come in many types
        raise UserError(f"YOLO weights '{weights}' could not be downloaded "
                        f"({type(error).__name__}: {error}); {fix}") from None
    if not found.is_file():
        raise UserError(f"YOLO weights '{weights}' could not be downloaded; {fix}")
    check_download(found)
    return found


def check_weights_digest(path: Path, expected: str) -> None:
    """Refuse weights whose sha256 is not `expected` ('' = no pin), before they are unpickled.

    A .pt file runs code when it loads; a pinned digest is how a user says which file they
    trust, and a swapped or truncated download is caught here instead of inside torch.
    """
    if not expected:
        return
    actual = sha256_file(path)
    if actual != expected:
        raise UserError(f"YOLO weights {path} have sha256 {actual}, but crop.weights_sha256 is "
                        f"{expected}; refusing to load them (replace the file with the trusted "
                        "one, or update the pin if you trust this file)")


def load_model(path: Path) -> Any:
    """An ultralytics YOLO detector from a local .pt; a wrong file is a UserError, not a trace."""
    from ultralytics import YOLO

    try:
        model = YOLO(str(path))
    except Exception as error:  # unpickling, version or format errors from torch/ultralytics
        raise UserError(f"cannot load YOLO weights {path} ({type(error).__name__}: {error}); "
                        "set crop.weights to an ultralytics detection .pt") from None
    if model.task not in ("detect", "segment"):
        raise UserError(f"YOLO weights {path} are a '{model.task}' model; crop needs boxes, "
                        "so set crop.weights to a detection model such as yolo11n.pt")
    return model


def class_ids(names: dict[int, str], wanted: Sequence[str], weights: str) -> list[int]:
    """Model class ids of the wanted class names (case-insensitive), in `wanted` order."""
    by_name = {name.casefold(): i for i, name in names.items()}
    unknown = [w for w in wanted if w.strip().casefold() not in by_name]
    if unknown:
        raise UserError(f"crop.classes {unknown} are not classes of {weights}; available: "
                        + ", ".join(names[i] for i in sorted(names)))
    return [by_name[w.strip().casefold()] for w in wanted]


def detect_batch(model: Any, images: list[np.ndarray], ids: list[int],
                 cfg: CropConfig) -> list[list[Detection]]:
    """Confident detections of classes `ids` for each RGB(A) image, in its own pixels."""
    # ultralytics reads numpy input as OpenCV does: BGR, three channels
    bgr = [np.ascontiguousarray(composite(im, DETECT_BACKGROUND)[:, :, ::-1]) for im in images]
    # One NMS across the wanted classes: a watch seen as both "clock" and another wanted
    # class is one object, not two
    results = model.predict(bgr, conf=cfg.conf, classes=ids, agnostic_nms=True,
                            batch=len(bgr), verbose=False, save=False)
    found = []
    for result in results:
        boxes = result.boxes
        xyxy = boxes.xyxy.cpu().numpy().astype(float)  # (N, 4)
        scores = boxes.conf.cpu().numpy().astype(float)  # (N,)
        labels = boxes.cls.cpu().numpy().astype(int)  # (N,)
        found.append([Detection((float(b[0]), float(b[1]), float(b[2]), float(b[3])),
                                round(float(s), 4), result.names[int(c)])
                      for b, s, c in zip(xyxy, scores, labels)])
    return found


# ----------------------------------------------------------------------------------------------
# The stage's work


def _batches(items: list[str], size: int) -> Iterator[list[str]]:
    for start in range(0, len(items), size):
        yield items[start:start + size]


def _decide(rel: str, image: np.ndarray, detections: list[Detection], out_path: Path,
            cfg: CropConfig) -> Decision:
    """Keep (and write the crop of) one image, or say why not."""
    height, width = image.shape[:2]
    choice, reason = choose_detection(detections, width, height, cfg)
    if reason:
        # The largest box, when there is one, lets the contact sheet show what was seen
        return rejected(rel, STAGE, reason, box=format_box(choice.box) if choice else "",
                        score=choice.score if choice else None)
    assert choice is not None
    x0, y0, x1, y1 = expand_box(choice.box, width, height, cfg.margin, cfg.square)
    save_png(image[y0:y1, x0:x1], out_path, compress_level=1)  # scratch file for pad
    return kept(rel, STAGE, box=format_box((x0, y0, x1, y1)), score=choice.score,
                output=out_path.name)


def crop_with_yolo(files: list[Path], root: Path, out_dir: Path, cfg: CropConfig,
                   max_pixels: int, quiet: bool, base_dir: Path | None = None) -> list[Decision]:
    """Write the main object of each file under `root` as a PNG into `out_dir`.

    One Decision per file, sorted by relative path (posix), as crop_images does; kept rows
    carry the crop box "x0 y0 x1 y1", the detector score and the PNG's name in `out_dir`
    (Decision.output). Images are decoded and detected
    `cfg.batch_size` at a time, so memory stays flat. `base_dir` resolves a relative
    crop.weights (the project root; None = the current folder).
    """
    _import_ultralytics()
    weights = resolve_weights(cfg.weights, base_dir)
    check_weights_digest(weights, cfg.weights_sha256)
    model = load_model(weights)
    ids = class_ids(model.names, cfg.classes, cfg.weights)
    out_dir.mkdir(parents=True, exist_ok=True)
    rels = sorted(Path(f).relative_to(root).as_posix() for f in files)
    names = flat_names(rels)
    rows: list[Decision] = []
    with tqdm(total=len(rels), desc=STAGE, unit="img", disable=quiet) as bar:
        for batch in _batches(rels, cfg.batch_size):
            # Decode; unreadable files are rejected with load_image's reason
            loaded = [(rel, *load_image(root / rel, max_pixels)) for rel in batch]
            good = [(rel, image) for rel, image, _ in loaded if image is not None]
            detections = detect_batch(model, [im for _, im in good], ids, cfg) if good else []
            decided = {rel: _decide(rel, image, found, out_dir / names[rel], cfg)
                       for (rel, image), found in zip(good, detections)}
            for rel, image, reason in loaded:
                rows.append(decided[rel] if image is not None else rejected(rel, STAGE, reason))
            bar.update(len(batch))
    return rows
