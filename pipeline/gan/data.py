"""Training data: an endless seeded stream of batches from the memory-mapped pack."""

from __future__ import annotations

from concurrent.futures import Future, ThreadPoolExecutor

import numpy as np
import torch

from pipeline.core.distributed import Dist, shard
from pipeline.core.pixels import unit_floats
from pipeline.gan.precision import Precision


class BatchSampler:
    """Global batches of indices: epoch e is permutation(seed, e); state = (epoch, position).

    The stream runs across epoch ends (a batch may take the last images of one epoch and the
    first of the next), so every image is shown once per epoch and any pack size works.
    """

    def __init__(self, count: int, batch: int, seed: int) -> None:
        self.count, self.batch, self.seed = count, batch, seed
        self.epoch, self.position = 0, 0  # next index is permutation(epoch)[position]
        self._perm = self._permutation(0)

    def _permutation(self, epoch: int) -> np.ndarray:
        return np.random.default_rng([self.seed, epoch]).permutation(self.count)

    def next_indices(self) -> np.ndarray:
        """The next global batch (B,) of pack indices."""
        parts, need = [], self.batch
        while need > 0:
            take = self._perm[self.position : self.position + need]
            parts.append(take)
            need -= len(take)
            self.position += len(take)
            if self.position >= self.count:  # epoch done: next permutation
                self.epoch, self.position = self.epoch + 1, 0
                self._perm = self._permutation(self.epoch)
        return np.concatenate(parts)

    def state_dict(self) -> dict[str, int]:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.epoch, self.position = int(state["epoch"]), int(state["position"])
        self._perm = self._permutation(self.epoch)


def to_device_batch(batch: torch.Tensor, precision: Precision) -> torch.Tensor:
    """uint8 (N, H, W, C), on the CPU or already on the device -> float (N, C, H, W) in [-1, 1].

    The uint8 bytes travel (4x less than float), the conversion runs on the device. A permuted
    NHWC tensor already has channels-last strides; CPU gets plain contiguous NCHW.
    """
    x = batch
    if x.device != precision.device:
        x = x.pin_memory().to(precision.device, non_blocking=True)
    x = unit_floats(x)
    return x if precision.channels_last else x.contiguous()


def fits_on_device(images: np.ndarray, device: torch.device, share: float = 0.25) -> bool:
    """True on CUDA when the whole uint8 pack takes at most `share` of the free GPU memory.

    A 10,000-image 128 px pack is 0.5 GB: on a GPU, reading batches from a device-resident copy
    costs one gather kernel, where reading them from the memory map costs milliseconds of host
    work per step, a real share of a fast GPU step. Larger packs stay memory-mapped.
    """
    if device.type != "cuda":
        return False
    free, _ = torch.cuda.mem_get_info(device)
    return images.nbytes <= share * free


class BatchReader:
    """This rank's batches of uint8 (b, H, W, C) images, in the sampler's order.

    Two ways, same batches: from a copy of the pack in GPU memory (`resident`, one gather per
    step), or from the memory map by a background thread one batch ahead. The sampler state
    reported for checkpoints is the one *before* any prefetched batch, so a resume re-reads
    exactly the batch that had been read but not trained on.
    """

    def __init__(self, images: np.ndarray, sampler: BatchSampler, dist: Dist,
                 device: torch.device, resident: bool) -> None:
        self.images, self.sampler, self.dist, self.device = images, sampler, dist, device
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="pack-reader")
        self._pending: Future[torch.Tensor] | None = None
        self._state_before = sampler.state_dict()
        self._resident: torch.Tensor | None = None
        if resident:  # upload in slices: host memory never holds more than one slice
            self._resident = torch.empty(images.shape, dtype=torch.uint8, device=device)
            for start in range(0, len(images), 1024):
                chunk = torch.from_numpy(np.array(images[start : start + 1024]))  # a copy
                self._resident[start : start + len(chunk)].copy_(chunk)

    @property
    def resident(self) -> bool:
        return self._resident is not None

    def _read(self, indices: np.ndarray) -> torch.Tensor:
        # Sorted reads walk the memory map forwards; the order within a batch does not matter
        # to the loss, and the sort is deterministic, so resumes still match.
        return torch.from_numpy(np.ascontiguousarray(self.images[np.sort(indices)]))

    def _submit(self) -> None:
        self._state_before = self.sampler.state_dict()
        indices = shard(self.sampler.next_indices(), self.dist)  # this rank's share
        self._pending = self._pool.submit(self._read, indices)

    def next(self) -> torch.Tensor:
        """This rank's next batch, uint8 (B / world, H, W, C)."""
        if self._resident is not None:
            self._state_before = self.sampler.state_dict()
            indices = np.sort(shard(self.sampler.next_indices(), self.dist))
            return self._resident[torch.from_numpy(indices).to(self.device, non_blocking=True)]
        if self._pending is None:
            self._submit()
        assert self._pending is not None
        batch = self._pending.result()
        self._submit()  # start reading the batch after this one
        return batch

    def state_dict(self) -> dict[str, int]:
        """Sampler state to save: where the stream stands before any batch not yet trained on."""
        if self._resident is not None:
            return self.sampler.state_dict()
        return dict(self._state_before)

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._resident = None
