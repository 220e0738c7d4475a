"""Generate images by seed: image i comes from seed i alone.

Each image's latent z_i is drawn from its own torch.Generator seeded with i, so a run can be
killed and resumed (complete files are skipped), split across ranks (rank r makes the images
i = r, r + W, r + 2W, ...) and repeated with identical results. Files are named `00000.png`,
`00001.png`, ... in the order the package step zips them.

The forward pass runs in batches on the device; PNG encoding runs in a pool of worker processes
at the same time, with a bounded number of batches in flight so memory stays flat. Each PNG is
written under a temporary name and renamed into place, so a file with a final name is complete.
"""

from __future__ import annotations

import contextlib
import errno
import os
import time
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from multiprocessing.pool import AsyncResult, Pool
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from PIL import Image
from tqdm import tqdm

from pipeline.core.device import resolve_device
from pipeline.core.distributed import all_gather_objects, broadcast_object, init_from_env, shutdown
from pipeline.core.errors import UserError
from pipeline.core.files import atomic_save, process_pool_context, resolve_workers
from pipeline.gan.models import fold_batchnorm, get_model, load_generator
from pipeline.gan.plots import pixel_levels

# zlib level for the PNGs, measured on 200 128x128 RGB images (one core): DCGAN output 1.0 ms
# and 13.1 KiB each at level 1 vs 4.5 ms and 10.2 KiB at PIL's default 6; photo crops 1.4 vs
# 2.6 ms, 37 vs 36 KiB. Level 0 is faster still but makes 48 KiB files. The zip stores them as is.
PNG_LEVEL = 1
NAME_DIGITS = 5  # 10,000 images -> 00000.png .. 09999.png
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
PNG_IEND = b"\x00\x00\x00\x00IEND\xaeB`\x82"  # the fixed last 12 bytes of every complete PNG
PNG_COLOUR_TYPE = {1: 0, 3: 2}  # channels -> IHDR colour type (0 grey, 2 RGB)
TMP_SUFFIX = ".part"  # in-progress files are `.NAME.png.<hex>.part`: hidden, and not `*.png`


@dataclass(frozen=True)
class GenerateReport:
    count: int  # images this rank is responsible for (written + skipped_existing)
    written: int  # PNGs encoded by this run
    skipped_existing: int  # complete PNGs found from an earlier run and kept
    seconds: float  # wall time of the whole call, model loading included


# ----------------------------------------------------------------------------------------------
# Seeds, names and shards


def image_name(index: int, count: int) -> str:
    """File name of image `index`; zero-padded so sorting by name is sorting by seed."""
    # Wider names only past 100,000 images, so every name of one run has the same width.
    digits = max(NAME_DIGITS, len(str(count - 1)))
    return f"{index:0{digits}d}.png"


def shard(count: int, rank: int, world_size: int) -> range:
    """The image indices rank `rank` of `world_size` produces: every world_size-th one."""
    if world_size < 1 or not 0 <= rank < world_size:  # a caller's bug, not a user's error
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    return range(rank, count, world_size)


def seed_latents(indices: Sequence[int], nz: int) -> torch.Tensor:
    """Latents (N, nz) float32 on the CPU: row k drawn from a generator seeded with indices[k].

    Drawn on the CPU so the numbers are the same whatever device runs the forward pass.
    """
    # One tiny generator per image (~10 us each): image i never depends on its batch mates.
    rows = [torch.randn(nz, generator=torch.Generator().manual_seed(i)) for i in indices]
    return torch.stack(rows) if rows else torch.empty(0, nz)


def to_uint8(images: torch.Tensor) -> np.ndarray:
    """(N, C, H, W) float in [-1, 1] -> (N, H, W, C) uint8 numpy, or (N, H, W) for C = 1."""
    # On the device: only uint8 crosses to the host (a quarter of the float bytes).
    pixels = pixel_levels(images).cpu().numpy()  # (N, H, W, C)
    return pixels[..., 0] if pixels.shape[-1] == 1 else pixels  # PIL wants (H, W) for mode L


# ----------------------------------------------------------------------------------------------
# PNG files


def png_is_complete(path: Path, size: int, channels: int) -> bool:
    """True when `path` is a whole 8-bit PNG of size x size with the given channel count.

    Reads only the header and the last 12 bytes (no decoding), so checking 10,000 files for a
    resume is quick. Files are renamed into place only once written, so this catches files cut
    short by other means (a full disk, a copy that was interrupted) and leftovers of another size.
    """
    try:
        with open(path, "rb") as handle:
            head = handle.read(26)  # signature (8) + IHDR length, type, width, height, depth, type
            handle.seek(-len(PNG_IEND), os.SEEK_END)
            tail = handle.read()
    except OSError:
        return False  # missing, unreadable or shorter than the tail
    colour = PNG_COLOUR_TYPE.get(channels)
    # IHDR holds width and height as big-endian uint32 at bytes 16-23, then depth and type.
    return (
        head[:8] == PNG_SIGNATURE
        and head[12:16] == b"IHDR"
        and int.from_bytes(head[16:20], "big") == size
        and int.from_bytes(head[20:24], "big") == size
        and colour is not None
        and head[24:26] == bytes((8, colour))  # bit depth 8, colour type
        and tail == PNG_IEND
    )


def write_png(path: Path, pixels: np.ndarray, level: int = PNG_LEVEL) -> None:
    """Write (H, W, 3) as RGB or (H, W) as L, atomically: a temporary name, then os.replace.

    Not fsynced (durable=False): an fsync per image would cost milliseconds each, and a resume
    re-checks every file (png_is_complete) and rewrites a damaged one from its seed.
    """
    def encode(tmp: Path) -> None:
        Image.fromarray(pixels).save(tmp, format="PNG", compress_level=level)

    atomic_save(path, encode, durable=False, suffix=TMP_SUFFIX)


def _encode_chunk(out_dir: Path, names: list[str], pixels: np.ndarray, level: int) -> int:
    """Worker task: write one PNG per row of `pixels`; returns how many it wrote."""
    for name, image in zip(names, pixels):
        write_png(out_dir / name, image, level)
    return len(names)


def _remove_stale_parts(out_dir: Path, mine: range) -> None:
    """Delete temporary files a killed run of this rank left (other ranks may be writing theirs)."""
    for part in out_dir.glob(f".*.png*{TMP_SUFFIX}"):  # also the older `.NAME.png.part`
        stem = part.name[1:].split(".")[0]  # ".00042.png.1f2e3d4c.part" -> "00042"
        if stem.isdigit() and int(stem) in mine:
            part.unlink(missing_ok=True)


# ----------------------------------------------------------------------------------------------
# The generation loop


def _batches(indices: list[int], batch_size: int) -> list[list[int]]:
    return [indices[k:k + batch_size] for k in range(0, len(indices), batch_size)]


def _repeatable_cudnn() -> contextlib.AbstractContextManager:
    """cuDNN settings under which a run repeats bit for bit: no autotuning, deterministic
    algorithms, full fp32. Restored on exit, so training code keeps its own (TF32, benchmark)."""
    return torch.backends.cudnn.flags(enabled=torch.backends.cudnn.enabled, benchmark=False,
                                      deterministic=True, allow_tf32=False)


def _wait_oldest(pending: deque[AsyncResult], bar: tqdm) -> int:
    """Wait for the oldest encoding task; turn a full disk into a UserError."""
    try:
        done = pending.popleft().get()
    except OSError as error:
        if error.errno == errno.ENOSPC:
            raise UserError(f"no space left on the disk while writing PNGs ({error})") from None
        raise
    bar.update(done)
    return done


def generate_images(
    generator_dir: Path,
    out_dir: Path,
    count: int,
    batch_size: int,
    truncation: float,
    workers: int,
    device: str,
    quiet: bool = False,
    rank: int = 0,
    world_size: int = 1,
    local_rank: int = 0,
) -> GenerateReport:
    """Write images 0..count-1 (this rank's share) as PNGs into `out_dir`, skipping complete ones.

    `workers` PNG encoding processes (0 = one per CPU core) run while the device (this rank's
    GPU: `local_rank`) computes the next batch. Checking that the generator's size suits the
    competition is the caller's job.
    """
    start = time.perf_counter()
    out_dir.mkdir(parents=True, exist_ok=True)
    mine = shard(count, rank, world_size)
    workers = resolve_workers(workers)
    # Start the encoding processes before the model is loaded, so forked workers stay small.
    with process_pool_context().Pool(workers) as pool:
        torch_device = resolve_device(device, "generate.device", local_rank)
        generator, spec = load_generator(generator_dir, torch_device)  # in eval mode
        if truncation != 1 and not get_model(spec.name).has_mapping:
            raise UserError(f"generate.truncation is {truncation} but model {spec.name} has no "
                            "mapping network to truncate (stylegan2 has); set it to 1")
        # Channels-last halves the DCGAN-128 forward pass on CPU (measured 2.1 -> 1.0 s per 250
        # images) and is the fast layout for cuDNN too; folding BN into the convolutions saves
        # another 1.4x. Results stay repeatable and per-seed.
        generator = fold_batchnorm(generator).to(memory_format=torch.channels_last)
        # Resume: only images without a complete file of the right size and mode are made.
        _remove_stale_parts(out_dir, mine)
        todo = [i for i in mine if not png_is_complete(out_dir / image_name(i, count),
                                                         spec.delivered_size, spec.channels)]
        written = _run_batches(generator, spec.nz, torch_device, todo, count, out_dir,
                               batch_size, truncation, pool, workers, quiet)
    return GenerateReport(len(mine), written, len(mine) - len(todo),
                          time.perf_counter() - start)


def generate_on_all_ranks(
    generator_dir: Path,
    out_dir: Path,
    count: int,
    batch_size: int,
    truncation: float,
    workers: int,
    device: str,
    quiet: bool = False,
) -> GenerateReport:
    """generate_images on every torchrun rank (or in this one process), into rank 0's `out_dir`.

    Under torchrun (RANK and WORLD_SIZE set) each rank writes its shard into the folder rank 0
    was given (the runner hands other ranks a scratch folder) and the call returns on no rank
    before all have finished, so rank 0 may publish the folder. Returns the sums over ranks.
    """
    owns_group = not torch_dist.is_initialized()
    dist = init_from_env(resolve_device(device, "generate.device").type)
    try:
        shared = broadcast_object(out_dir, dist)
        mine = generate_images(generator_dir, shared, count, batch_size, truncation, workers,
                               device, quiet or not dist.is_main, dist.rank, dist.world_size,
                               dist.local_rank)
        # A collective, so also the barrier: every rank's PNGs are in place once it returns.
        reports = all_gather_objects(mine, dist)
    finally:
        if owns_group:
            shutdown(dist)
    return GenerateReport(sum(r.count for r in reports), sum(r.written for r in reports),
                          sum(r.skipped_existing for r in reports),
                          max(r.seconds for r in reports))


def _run_batches(generator: torch.nn.Module, nz: int, device: torch.device, todo: list[int],
                 count: int, out_dir: Path, batch_size: int, truncation: float, pool: Pool,
                 workers: int, quiet: bool) -> int:
    """Forward each batch, hand its pixels to the pool in `workers` chunks, keep ~2 queued."""
    pending: deque[AsyncResult] = deque()
    written = 0
    with tqdm(total=len(todo), desc="generate", unit="img", disable=quiet) as bar:
        for batch in _batches(todo, batch_size):
            z = seed_latents(batch, nz).to(device)  # (B, nz)
            with torch.inference_mode(), _repeatable_cudnn():
                pixels = to_uint8(generator(z, truncation=truncation))  # (B, H, W[, C]) uint8
            names = [image_name(i, count) for i in batch]
            # One task per worker and batch: few, large messages between processes.
            for part in np.array_split(np.arange(len(batch)), min(workers, len(batch))):
                chunk = (out_dir, [names[k] for k in part], pixels[part], PNG_LEVEL)
                pending.append(pool.apply_async(_encode_chunk, chunk))
            # Bound memory: at most about two batches of pixels wait for the encoders.
            while len(pending) > 2 * workers:
                written += _wait_oldest(pending, bar)
        while pending:
            written += _wait_oldest(pending, bar)
    return written
