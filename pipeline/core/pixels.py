"""Pixels <-> the [-1, 1] floats the networks see: one rule each way, for every PNG and batch."""

from __future__ import annotations

import torch


def png_levels(images: torch.Tensor) -> torch.Tensor:
    """Floats in [-1, 1] -> the levels 0..255 a PNG stores, as float32, same shape and device.

    x * 127.5 + 127.5, clamped (G overshoots) and rounded to the nearest level, in float32 even
    when G ran in bf16: generate's PNGs, the export and the snapshot scores all see these levels.
    """
    return images.float().mul(127.5).add(127.5).clamp(0, 255).round()


def unit_floats(images: torch.Tensor) -> torch.Tensor:
    """uint8 (N, H, W, C) levels -> float32 (N, C, H, W) in [-1, 1]: png_levels' inverse.

    The input is left as it is (.float() copies it; the scaling runs in place on the copy). The
    copy keeps NHWC memory order (channels-last strides): call .contiguous() for plain NCHW.
    """
    return images.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)
