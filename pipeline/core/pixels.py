"""How generator output becomes pixels: one rounding rule for every PNG, export and score."""

from __future__ import annotations

import torch


def png_levels(images: torch.Tensor) -> torch.Tensor:
    """Floats in [-1, 1] -> the levels 0..255 a PNG stores, as float32, same shape and device.

    x * 127.5 + 127.5, clamped (G overshoots) and rounded to the nearest level, in float32 even
    when G ran in bf16: generate's PNGs, the export and the snapshot scores all see these levels.
    """
    return images.float().mul(127.5).add(127.5).clamp(0, 255).round()
