"""Pictures of a training run: image grids (reals.png, fakes*.png) and loss curves (losses.png).

Grids are assembled with numpy and written by Pillow; curves use matplotlib's Agg canvas
directly (no pyplot, so no global figure state and no display needed).
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from pipeline.core.pixels import png_levels


def pixel_levels(images: torch.Tensor) -> torch.Tensor:
    """(N, C, H, W) float in [-1, 1] -> (N, H, W, C) uint8 in [0, 255], on the same device.

    The rounding of every generated PNG (deliver.generate), the export and the budget probe;
    the snapshot scores use the same levels (core.pixels).
    """
    return png_levels(images).to(torch.uint8).permute(0, 2, 3, 1)  # (N, H, W, C)


def to_uint8_nhwc(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) float in [-1, 1] -> (N, H, W, C) uint8 numpy, the PNGs' levels (grids, logs)."""
    return pixel_levels(images.detach()).cpu().contiguous().numpy()


def grid_shape(count: int) -> tuple[int, int]:
    """(rows, cols) of the squarest grid with room for `count` images."""
    cols = max(1, math.ceil(math.sqrt(count)))
    return math.ceil(count / cols), cols


def make_grid(images: np.ndarray, cols: int | None = None, pad: int = 2) -> np.ndarray:
    """Tile (N, H, W, C) uint8 images into one (rows*H', cols*W', C) array, black gutters."""
    n, h, w, c = images.shape
    rows, auto_cols = grid_shape(n)
    cols = cols or auto_cols
    rows = math.ceil(n / cols)
    # A `pad`-pixel gutter around and between the tiles.
    canvas = np.zeros((rows * (h + pad) + pad, cols * (w + pad) + pad, c), dtype=np.uint8)
    for i in range(n):
        r, k = divmod(i, cols)
        top, left = pad + r * (h + pad), pad + k * (w + pad)
        canvas[top : top + h, left : left + w] = images[i]
    return canvas


def save_grid(images: np.ndarray | torch.Tensor, path: Path, cols: int | None = None) -> Path:
    """Write a PNG grid of uint8 NHWC images or float NCHW images in [-1, 1]."""
    array = to_uint8_nhwc(images) if isinstance(images, torch.Tensor) else np.asarray(images)
    canvas = make_grid(array, cols)
    if canvas.shape[2] == 1:
        canvas = canvas[:, :, 0]  # grey images: Pillow wants (H, W)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(canvas).save(path)
    return path


def read_stats(path: Path) -> list[dict[str, Any]]:
    """The rows of a stats.jsonl file (one JSON object per line; blank lines skipped).

    A torn line (the run was killed while appending it) is dropped with a warning, so it can
    never block a resume; the resume then rewrites the file without it.
    """
    if not path.exists():
        return []
    rows = []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:  # a line torn by a power loss or a full disk
            print(f"warning: {path}:{number} is not a whole JSON line; dropped", flush=True)
    return rows


def plot_losses(rows: Sequence[dict[str, Any]], path: Path) -> Path:
    """losses.png: D and G losses (top) and D's accuracy on reals and fakes (bottom) vs kimg."""
    # Imported here: matplotlib is slow to import and only this function needs it.
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    figure = Figure(figsize=(8, 6), dpi=100)  # 800 x 600 pixels
    FigureCanvasAgg(figure)  # attaches itself to the figure: savefig then renders with Agg
    top, bottom = figure.subplots(2, 1, sharex=True)
    kimg = [row["kimg"] for row in rows]
    for key, label in (("loss_d", "D loss"), ("loss_g", "G loss")):
        top.plot(kimg, [row.get(key, math.nan) for row in rows], label=label)
    top.set_ylabel("loss")
    top.legend(loc="upper right")
    top.grid(alpha=0.3)
    for key, label in (("acc_real", "D accuracy on reals"), ("acc_fake", "D accuracy on fakes")):
        bottom.plot(kimg, [row.get(key, math.nan) for row in rows], label=label)
    # The augmentation probability shares the [0, 1] axis (ADA raises it as D overfits).
    if any("augment_p" in row for row in rows):
        bottom.plot(kimg, [row.get("augment_p", math.nan) for row in rows], label="augment p")
    bottom.set_ylim(-0.05, 1.05)
    bottom.set_xlabel("kimg (thousands of real images shown to D)")
    bottom.legend(loc="lower right")
    bottom.grid(alpha=0.3)
    figure.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    figure.savefig(path)
    return path
