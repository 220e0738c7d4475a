"""A latent walk as an animated GIF: what the generator learned, shown as smooth change.

Each cell of a grid travels a closed loop through `keyframes` latents (generate's seeds: cell j
visits seeds j*K .. j*K + K - 1, so its keyframes are images generate also wrote), along great
circles (slerp: Gaussian latents live near a sphere, where straight lines pass through the
unlikely low-norm middle). The loop closes, so the GIF repeats without a jump. A generator that
memorised its training set jumps between a few pictures; one that generalises morphs.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from PIL import Image
from tqdm import tqdm

from pipeline.core.files import atomic_write_bytes
from pipeline.deliver.generate import seed_latents, to_uint8
from pipeline.gan.models import fold_batchnorm, load_generator
from pipeline.gan.plots import make_grid

INTERPOLATION_GIF = "interpolation.gif"


def slerp(a: torch.Tensor, b: torch.Tensor, t: float) -> torch.Tensor:
    """Spherical interpolation between rows of a and b (N, nz) at fraction t in [0, 1].

    Norms are interpolated linearly and directions along the great circle; nearly parallel
    rows fall back to a straight line (the circle's formula divides by sin of their angle).
    """
    a_norm, b_norm = a.norm(dim=1, keepdim=True), b.norm(dim=1, keepdim=True)  # (N, 1)
    a_dir, b_dir = a / a_norm, b / b_norm
    cos = (a_dir * b_dir).sum(dim=1, keepdim=True).clamp(-1.0, 1.0)  # (N, 1)
    angle = torch.acos(cos)
    sin = torch.sin(angle)
    safe = sin.abs() > 1e-6
    circle = (torch.sin((1 - t) * angle) * a_dir + torch.sin(t * angle) * b_dir) / torch.where(
        safe, sin, torch.ones_like(sin))
    direction = torch.where(safe, circle, (1 - t) * a_dir + t * b_dir)
    return direction * ((1 - t) * a_norm + t * b_norm)


def walk_latents(cells: int, keyframes: int, steps: int, nz: int) -> torch.Tensor:
    """Latents of every frame: (keyframes * steps, cells, nz); frame 0 is the keyframe seeds."""
    keys = seed_latents(range(cells * keyframes), nz).view(cells, keyframes, nz)
    frames = []
    for k in range(keyframes):
        start, end = keys[:, k], keys[:, (k + 1) % keyframes]  # the last leg closes the loop
        frames += [slerp(start, end, step / steps) for step in range(steps)]
    return torch.stack(frames)


def write_interpolation(generator_dir: Path, path: Path, cells: int = 16, keyframes: int = 4,
                        steps: int = 12, fps: float = 12.0, quiet: bool = False) -> int:
    """Render the walk of `generator_dir`'s generator into a looping GIF; returns the frames."""
    generator, spec = load_generator(generator_dir)
    generator = fold_batchnorm(generator)
    latents = walk_latents(cells, keyframes, steps, spec.nz)  # (F, cells, nz)
    cols = math.ceil(math.sqrt(cells))
    frames: list[Image.Image] = []
    with torch.inference_mode():
        for z in tqdm(latents, desc="interpolate", unit="frame", disable=quiet):
            pixels = to_uint8(generator(z))  # (cells, H, W[, C])
            if pixels.ndim == 3:  # grey
                pixels = pixels[..., None]
            grid = make_grid(pixels, cols)
            frames.append(Image.fromarray(grid[..., 0] if grid.shape[2] == 1 else grid))
    duration = max(20, round(1000 / fps))  # ms a frame; GIF viewers floor very short delays

    def save(handle) -> None:  # noqa: ANN001 - a binary file
        frames[0].save(handle, format="GIF", save_all=True, append_images=frames[1:],
                       duration=duration, loop=0, optimize=False)

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(path, save)
    return len(frames)

