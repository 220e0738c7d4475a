"""torch.distributed helpers: one process per GPU when launched by torchrun, else one process.

torchrun sets RANK, LOCAL_RANK and WORLD_SIZE in the environment; `init_from_env` reads them and
joins the process group (NCCL on CUDA, Gloo on CPU). Everything else takes the returned `Dist`
value instead of asking torch.distributed globals, so single-process code needs no branches:
`shard`, `all_gather_objects` and `broadcast_object` are identities when world_size is 1.
Rank 0 is the one that prints, logs, checkpoints and exports (`print0`, `Dist.is_main`).
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import torch
import torch.distributed as torch_dist

from pipeline.core.errors import UserError

T = TypeVar("T")


@dataclass(frozen=True)
class Dist:
    """Where this process stands in the job (rank 0 of 1 when not distributed)."""

    rank: int = 0  # global rank, 0 .. world_size - 1
    world_size: int = 1  # processes in the job
    local_rank: int = 0  # rank on this node: picks the CUDA device

    @property
    def enabled(self) -> bool:
        """True when more than one process takes part (collectives are needed)."""
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        """Rank 0 writes files and prints; the others only compute."""
        return self.rank == 0


def group_running() -> bool:
    """True inside a joined process group of more than one rank.

    For the few places that are called deep inside a network's forward pass (a loss, a
    BatchNorm layer) and cannot be handed a `Dist`.
    """
    return torch_dist.is_available() and torch_dist.is_initialized() and (
        torch_dist.get_world_size() > 1)


def env_dist() -> Dist:
    """Read torchrun's variables without joining anything (rank 0 of 1 when they are absent)."""
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        return Dist()
    rank = int(os.environ["RANK"])
    world = int(os.environ["WORLD_SIZE"])
    # LOCAL_RANK is absent when a launcher other than torchrun sets only RANK (one node).
    local = int(os.environ.get("LOCAL_RANK", rank))
    if not 0 <= rank < world:
        raise UserError(f"RANK={rank} is outside WORLD_SIZE={world}; launch with torchrun")
    return Dist(rank=rank, world_size=world, local_rank=local)


def init_from_env(device_type: str) -> Dist:
    """Join the torchrun process group if there is one; NCCL for 'cuda', Gloo for 'cpu'.

    Idempotent: a group that is already initialised (e.g. by a test harness) is reused.
    """
    dist = env_dist()
    if not dist.enabled:
        return dist
    if device_type == "cuda":
        # Each rank drives the GPU of its local rank; NCCL needs it selected before init.
        torch.cuda.set_device(dist.local_rank)
    if not torch_dist.is_initialized():
        # env:// rendezvous: MASTER_ADDR and MASTER_PORT come from torchrun too.
        backend = "nccl" if device_type == "cuda" else "gloo"
        torch_dist.init_process_group(backend=backend, rank=dist.rank, world_size=dist.world_size)
    return dist


@contextlib.contextmanager
def command_group(device_type: str) -> Iterator[None]:
    """Under torchrun, one process group for a whole command: joined here, left at the end.

    Stages that need one (train, generate, score) then find it joined and keep it. Leaving a
    group and joining a new one within one torchrun job can fail: torchrun's store keeps the
    old group's addresses, and a rank that moves on first may connect to a stale one.
    """
    joined = env_dist().enabled and not torch_dist.is_initialized()
    dist = init_from_env(device_type) if joined else Dist()
    try:
        yield
    finally:
        if joined:
            shutdown(dist)


def shutdown(dist: Dist) -> None:
    """Leave the process group (no-op when single-process)."""
    if dist.enabled and torch_dist.is_initialized():
        torch_dist.destroy_process_group()


def print0(dist: Dist, *args: Any, **kwargs: Any) -> None:
    """print() on rank 0 only, flushed; to stdout, which the CLI copies into the run log."""
    if dist.is_main:
        kwargs.setdefault("flush", True)
        print(*args, **kwargs)


def local_batch_size(global_batch: int, dist: Dist) -> int:
    """Per-rank batch: the global batch split evenly, or a clear error when it cannot be."""
    if global_batch % dist.world_size != 0:
        raise UserError(
            f"train.batch_size={global_batch} is not divisible by the {dist.world_size} "
            f"processes; use a multiple of {dist.world_size}"
        )
    return global_batch // dist.world_size


def shard(items: np.ndarray, dist: Dist) -> np.ndarray:
    """This rank's share of a global batch of indices: every world_size-th, from `rank`.

    Strided (not blocked) so that the shards differ by at most one item for any length.
    """
    return items[dist.rank :: dist.world_size]


def all_gather_objects(obj: T, dist: Dist) -> list[T]:
    """Every rank's `obj` (picklable) as a list indexed by rank; [obj] when single-process."""
    if not dist.enabled:
        return [obj]
    gathered: list[Any] = [None] * dist.world_size  # filled in rank order
    torch_dist.all_gather_object(gathered, obj)
    return gathered


def broadcast_object(obj: T, dist: Dist) -> T:
    """Rank 0's `obj` on every rank (so all ranks agree, e.g. on which checkpoint to load)."""
    if not dist.enabled:
        return obj
    box = [obj]  # the list is overwritten in place on ranks other than 0
    torch_dist.broadcast_object_list(box, src=0)
    return box[0]


def all_reduce_mean(tensor: torch.Tensor, dist: Dist) -> torch.Tensor:
    """Mean of `tensor` over ranks, in place and returned (identity when single-process)."""
    if dist.enabled:
        # SUM then divide: ReduceOp.AVG exists for NCCL only, Gloo lacks it.
        torch_dist.all_reduce(tensor, op=torch_dist.ReduceOp.SUM)
        tensor /= dist.world_size
    return tensor
