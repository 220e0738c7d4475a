"""A tiny YOLO detector trained on drawn "clocks", so the crop tests run real detections.

Why: the COCO weights cannot be downloaded here, and a mocked model would test nothing about
how we feed ultralytics or read its boxes. A small network trained for about a minute on
synthetic scenes (clock faces on textured backgrounds, with rectangles and triangles as
distractors) finds clocks confidently. The weights are cached under
`.pytest_cache/yolo-tiny/<hash>/`, so the whole suite trains once; editing this file or
upgrading ultralytics changes the hash and retrains. Use `tiny_yolo_weights()` from a
session-scoped fixture.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from importlib.metadata import version
from pathlib import Path

import cv2
import numpy as np

REPO = Path(__file__).resolve().parents[1]
CACHE = REPO / ".pytest_cache" / "yolo-tiny"
CLASS_NAME = "clock"
IMGSZ = 96  # training and inference side in pixels: small keeps CPU training near a minute
EPOCHS = 24
TRAIN_SCENES = 320
VAL_SCENES = 24

# A detector small enough to train on two CPU cores: a stride-16 backbone, one top-down
# merge, and a Detect head on strides 8 and 16 (objects here span 10 to 60 pixels).
MODEL_YAML = """\
nc: 1
depth_multiple: 1.0
width_multiple: 1.0
backbone:
  - [-1, 1, Conv, [16, 3, 2]]   # 0: stride 2
  - [-1, 1, Conv, [32, 3, 2]]   # 1: stride 4
  - [-1, 1, C2f, [32, True]]    # 2
  - [-1, 1, Conv, [48, 3, 2]]   # 3: stride 8
  - [-1, 1, C2f, [48, True]]    # 4
  - [-1, 1, Conv, [64, 3, 2]]   # 5: stride 16
  - [-1, 1, C2f, [64, True]]    # 6
  - [-1, 1, SPPF, [64, 5]]      # 7
head:
  - [-1, 1, nn.Upsample, [None, 2, nearest]]  # 8: back to stride 8
  - [[-1, 4], 1, Concat, [1]]                 # 9
  - [-1, 1, C2f, [48]]                        # 10
  - [[10, 7], 1, Detect, [nc]]                # 11: strides 8 and 16
"""

Box = tuple[float, float, float, float]  # x0 y0 x1 y1 in pixels


# ----------------------------------------------------------------------------------------------
# Synthetic scenes


def background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A smooth random colour field plus grain: texture that is neither flat nor a clock."""
    coarse = rng.integers(0, 256, size=(4, 4, 3), dtype=np.uint8)
    field = cv2.resize(coarse, (width, height), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 12, size=(height, width, 3))
    return np.clip(field.astype(np.float64) + grain, 0, 255).astype(np.uint8)


def draw_distractor(image: np.ndarray, rng: np.random.Generator) -> None:
    """A filled rectangle or triangle: something object-like the model must learn to ignore."""
    height, width = image.shape[:2]
    colour = tuple(int(c) for c in rng.integers(0, 256, 3))
    size = int(rng.uniform(0.1, 0.3) * min(height, width))
    x, y = int(rng.integers(0, width - size)), int(rng.integers(0, height - size))
    if rng.random() < 0.5:
        cv2.rectangle(image, (x, y), (x + size, y + size // 2 + 2), colour, -1)
    else:
        points = np.array([[x, y + size], [x + size, y + size], [x + size // 2, y]], np.int32)
        cv2.fillPoly(image, [points], colour)


def draw_clock(image: np.ndarray, cx: int, cy: int, radius: int,
               rng: np.random.Generator) -> Box:
    """A light face with a dark rim, ticks and two hands; returns its box."""
    face = tuple(int(c) for c in rng.integers(200, 256, 3))
    rim = max(1, radius // 6)
    cv2.circle(image, (cx, cy), radius, face, -1, lineType=cv2.LINE_AA)
    cv2.circle(image, (cx, cy), radius - rim // 2, (20, 20, 20), rim, lineType=cv2.LINE_AA)
    # Four ticks at 12, 3, 6 and 9 o'clock
    for angle in np.arange(4) * np.pi / 2:
        inner, outer = 0.65 * radius, 0.85 * radius
        p0 = (int(cx + inner * np.cos(angle)), int(cy + inner * np.sin(angle)))
        p1 = (int(cx + outer * np.cos(angle)), int(cy + outer * np.sin(angle)))
        cv2.line(image, p0, p1, (20, 20, 20), max(1, rim // 2))
    # Hour and minute hands at random angles
    for length in (0.45, 0.7):
        angle = rng.uniform(0, 2 * np.pi)
        tip = (int(cx + length * radius * np.cos(angle)), int(cy + length * radius * np.sin(angle)))
        cv2.line(image, (cx, cy), tip, (20, 20, 20), max(1, rim // 2), lineType=cv2.LINE_AA)
    return (cx - radius, cy - radius, cx + radius + 1, cy + radius + 1)


def make_scene(rng: np.random.Generator, height: int, width: int, clocks: int,
               radius: tuple[float, float] = (0.08, 0.3), distractors: int = 1,
               ) -> tuple[np.ndarray, list[Box]]:
    """An RGB scene with `clocks` non-overlapping clocks; radius is a fraction of the short side.

    Returns the image (H, W, 3) uint8 and the true boxes.
    """
    image = background(rng, height, width)
    for _ in range(distractors):
        draw_distractor(image, rng)
    boxes: list[Box] = []
    short = min(height, width)
    placed: list[tuple[int, int, int]] = []
    for _ in range(1000):  # rejection sampling: retry until every clock has a free spot
        if len(placed) == clocks:
            break
        r = max(4, int(rng.uniform(*radius) * short))
        if 2 * r + 2 >= short:
            continue
        cx, cy = int(rng.integers(r + 1, width - r - 1)), int(rng.integers(r + 1, height - r - 1))
        if all((cx - x) ** 2 + (cy - y) ** 2 > (r + q + 3) ** 2 for x, y, q in placed):
            placed.append((cx, cy, r))
    if len(placed) < clocks:
        raise ValueError(f"cannot place {clocks} clocks in {width}x{height}")
    for cx, cy, r in placed:
        boxes.append(draw_clock(image, cx, cy, r, rng))
    return image, boxes


# ----------------------------------------------------------------------------------------------
# Dataset and training


def _write_split(folder: Path, split: str, count: int, rng: np.random.Generator) -> None:
    """Scenes with 0 to 3 clocks in YOLO layout: images/<split>/*.png, labels/<split>/*.txt."""
    (folder / "images" / split).mkdir(parents=True)
    (folder / "labels" / split).mkdir(parents=True)
    for i in range(count):
        height, width = (int(v) for v in rng.integers(IMGSZ, 2 * IMGSZ, size=2))
        clocks = int(rng.choice([0, 1, 1, 1, 2, 3]))
        image, boxes = make_scene(rng, height, width, clocks, distractors=int(rng.integers(0, 4)))
        cv2.imwrite(str(folder / "images" / split / f"{i:04d}.png"), image[:, :, ::-1])
        # One label line per box: class, centre x, centre y, width, height (all normalised)
        lines = [f"0 {(x0 + x1) / 2 / width:.5f} {(y0 + y1) / 2 / height:.5f} "
                 f"{(x1 - x0) / width:.5f} {(y1 - y0) / height:.5f}" for x0, y0, x1, y1 in boxes]
        (folder / "labels" / split / f"{i:04d}.txt").write_text("\n".join(lines))


def _fingerprint() -> str:
    """This file's content and the ultralytics version: either change means retrain."""
    digest = hashlib.sha256(Path(__file__).read_bytes())
    digest.update(version("ultralytics").encode())
    return digest.hexdigest()[:12]


def train_tiny_yolo(work: Path) -> Path:
    """Draw a dataset under `work`, train the tiny model there, return its best weights."""
    from ultralytics import YOLO

    rng = np.random.default_rng(0)
    data = work / "data"
    _write_split(data, "train", TRAIN_SCENES, rng)
    _write_split(data, "val", VAL_SCENES, rng)
    (work / "data.yaml").write_text(
        f"path: {data}\ntrain: images/train\nval: images/val\nnames:\n  0: {CLASS_NAME}\n"
    )
    (work / "tiny.yaml").write_text(MODEL_YAML)
    model = YOLO(str(work / "tiny.yaml"), task="detect")
    model.train(
        data=str(work / "data.yaml"), epochs=EPOCHS, imgsz=IMGSZ, batch=16, workers=0,
        device="cpu", plots=False, amp=False, val=False, pretrained=False, seed=0,
        project=str(work / "runs"), name="tiny", exist_ok=True, verbose=False,
        warmup_epochs=1, close_mosaic=5, cache="ram", optimizer="AdamW", lr0=0.003,
    )
    return work / "runs" / "tiny" / "weights" / "best.pt"


def ultralytics_sandbox() -> Path:
    """Keep ultralytics' settings inside the cache, offline and with telemetry off."""
    from pipeline.ingest.detect import configure_ultralytics

    config = CACHE / "config"
    os.environ.setdefault("YOLO_OFFLINE", "1")  # no online checks, even where there is network
    configure_ultralytics(config)
    return config


def tiny_yolo_weights() -> Path:
    """Path to the cached tiny clock detector, training it on the first use (about a minute).

    Call it from a session-scoped fixture; it sets up `ultralytics_sandbox` first.
    """
    ultralytics_sandbox()
    target = CACHE / _fingerprint() / "tiny-clock.pt"
    if not target.exists():
        work = CACHE / f"work-{os.getpid()}"
        shutil.rmtree(work, ignore_errors=True)
        best = train_tiny_yolo(work)
        target.parent.mkdir(parents=True, exist_ok=True)
        partial = target.with_suffix(f".{os.getpid()}.tmp")
        shutil.copyfile(best, partial)
        os.replace(partial, target)  # atomic: a parallel or killed run never sees half a file
        shutil.rmtree(work, ignore_errors=True)
        for stale in CACHE.iterdir():  # weights of earlier versions of this file
            if stale.is_dir() and stale.name not in (target.parent.name, "config"):
                shutil.rmtree(stale, ignore_errors=True)
    return target
