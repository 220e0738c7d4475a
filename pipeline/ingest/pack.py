"""The training pack: every training image in one uint8 array on disk, memory-mapped.

Training reads batches straight from the map, so it never decodes a PNG and its memory does not
grow with the dataset. Layout: `images.npy` of shape (N, H, W, C), uint8 in [0, 255], C = 3 (RGB)
or 1 (grey), plus `pack.json` describing it.
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

IMAGES = "images.npy"
META = "pack.json"


@dataclass(frozen=True)
class PackInfo:
    count: int  # images in the pack
    size: int  # side in pixels (images are square)
    channels: int  # 3 for RGB, 1 for grey
    sources: int  # distinct source images before augmentation
    transforms: tuple[str, ...]  # e.g. ("identity", "hflip", "rotate+5")
    output_size: int = 0  # side of the clean images (pad.size) when `size` differs, else 0


def create(folder: Path, count: int, size: int, channels: int) -> np.memmap:
    """Open a new pack array for writing, (count, size, size, channels) uint8.

    The file's blocks are reserved up front: a memory map over a sparse file on a full disk
    dies with SIGBUS at the first page it cannot back; reserving turns that into an OSError
    (ENOSPC, exit code 28 through the CLI) before anything is written.
    """
    folder.mkdir(parents=True, exist_ok=True)
    images = np.lib.format.open_memmap(
        folder / IMAGES, mode="w+", dtype=np.uint8, shape=(count, size, size, channels)
    )
    _reserve(folder / IMAGES)
    return images


def _reserve(path: Path) -> None:
    """Allocate every block of `path` (posix_fallocate where the OS has it)."""
    if not hasattr(os, "posix_fallocate"):  # macOS: no sparse-map risk to guard against here
        return
    with path.open("r+b") as handle:
        os.posix_fallocate(handle.fileno(), 0, path.stat().st_size)


def write_info(folder: Path, info: PackInfo) -> None:
    (folder / META).write_text(json.dumps(asdict(info), indent=2), encoding="utf-8")


def open_pack(folder: Path) -> tuple[np.ndarray, PackInfo]:
    """Memory-map a pack read-only: (images (N, H, W, C) uint8, info)."""
    meta = json.loads((folder / META).read_text(encoding="utf-8"))
    meta["transforms"] = tuple(meta["transforms"])
    images = np.load(folder / IMAGES, mmap_mode="r")
    return images, PackInfo(**meta)
