"""Distributed training on CPU: two Gloo processes must agree with one process.

The processes are started with torch.multiprocessing (spawn) and the environment torchrun
would set (RANK, WORLD_SIZE, ...), so `init_from_env` takes its real path.
"""

from __future__ import annotations

import faulthandler
import json
import os
import socket
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.multiprocessing as mp

from pipeline.core.config import TrainConfig
from pipeline.core.distributed import (
    Dist,
    env_dist,
    init_from_env,
    local_batch_size,
    shard,
    shutdown,
)
from pipeline.core.errors import UserError
from pipeline.gan.losses import get_loss
from pipeline.gan.models import ModelSpec, build_discriminator
from pipeline.gan.precision import Precision
from pipeline.gan.steps import DiscriminatorPair, d_backward
from pipeline.ingest import pack

WORLD = 2
BATCH = 8  # global batch of the D step
SPEC = ModelSpec(name="mlp", size=8, channels=1, nz=8, width=0.125)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _torchrun_env(rank: int, port: int) -> None:
    """What torchrun exports for each worker."""
    os.environ.update({"MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "RANK": str(rank),
                       "LOCAL_RANK": str(rank), "WORLD_SIZE": str(WORLD), "OMP_NUM_THREADS": "1"})
    torch.set_num_threads(1)


def _batches() -> tuple[torch.Tensor, torch.Tensor]:
    """The same reals and fakes (BATCH, 1, 8, 8) in every process."""
    gen = torch.Generator().manual_seed(1)
    return torch.rand(BATCH, 1, 8, 8, generator=gen) * 2 - 1, torch.randn(BATCH, 1, 8, 8,
                                                                        generator=gen).tanh()


def _d_gradients(dist: Dist) -> dict[str, torch.Tensor]:
    """One D step of the training loop on this rank's share of the batch; D's gradients."""
    torch.manual_seed(0)
    # eval(): the MLP's dropout would draw different masks per rank, and BatchNorm (in DCGAN)
    # would normalise each half-batch by its own statistics; either breaks the equality.
    discriminator = build_discriminator(SPEC).eval()
    pair: torch.nn.Module = DiscriminatorPair(discriminator)
    if dist.enabled:
        pair = torch.nn.parallel.DistributedDataParallel(pair)
    real, fake = _batches()
    # lsgan: a mean of per-sample terms, so DDP's mean of per-rank gradients is the full-batch
    # gradient. Relativistic losses (ralsgan) compare with the *local* batch mean and differ.
    d_backward(pair, discriminator, get_loss("lsgan"), shard(real, dist), shard(fake, dist),
               real_label=0.8, precision=Precision(torch.device("cpu"), None, False))
    return {name: p.grad.clone() for name, p in discriminator.named_parameters()}


def _worker(rank: int, port: int, root: str, kimg: float, with_grads: bool) -> None:
    """One torchrun-like rank: optionally the D-step gradients, then `train` up to `kimg`."""
    # A hung collective must fail the test, not stall it: dump stacks and exit after 3 min.
    faulthandler.dump_traceback_later(180, exit=True)
    _torchrun_env(rank, port)
    # One process group for the whole worker (`train` reuses it): tearing a group down and
    # rendezvousing again on the same port can race between the ranks.
    dist = init_from_env("cpu")
    if with_grads:
        grads = _d_gradients(dist)
        if rank == 0:
            torch.save(grads, Path(root) / "grads.pt")
    from pipeline.gan.loop import train

    cfg = TrainConfig(model="dcgan", loss="ralsgan", kimg=kimg, batch_size=8, width=0.125,
                      nz=16, tick_kimg=0.016, checkpoint_kimg=0.032, snapshot_kimg=0.032,
                      ema_kimg=0.01, threads=1, diffaugment="translation", device="cpu")
    report = train(cfg, Path(root) / "pack", Path(root) / "run", quiet=True)
    (Path(root) / f"report{rank}.json").write_text(json.dumps(
        {"kimg": report.kimg_done, "steps": report.steps, "resumed": report.resumed_from_kimg}))
    shutdown(dist)
    faulthandler.cancel_dump_traceback_later()


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two spawns of 2 ranks: gradients + training to 0.032 kimg, then resumed to 0.064."""
    root = tmp_path_factory.mktemp("ddp")
    rng = np.random.default_rng(0)
    images = pack.create(root / "pack", 40, 32, 3)
    images[:] = rng.integers(0, 256, images.shape, dtype=np.uint8)
    images.flush()
    pack.write_info(root / "pack", pack.PackInfo(40, 32, 3, 40, ("identity",)))
    mp.spawn(_worker, args=(_free_port(), str(root), 0.032, True), nprocs=WORLD, join=True)
    mp.spawn(_worker, args=(_free_port(), str(root), 0.064, False), nprocs=WORLD, join=True)
    return root


def test_ddp_d_step_matches_one_process(two_ranks: Path) -> None:
    ddp_grads = torch.load(two_ranks / "grads.pt", weights_only=True)
    single = _d_gradients(Dist())
    assert single.keys() == ddp_grads.keys()
    for name, grad in single.items():
        torch.testing.assert_close(ddp_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    assert any(g.abs().sum() > 0 for g in single.values())  # the comparison is not vacuous


def test_two_rank_training_runs_and_resumes(two_ranks: Path) -> None:
    reports = [json.loads((two_ranks / f"report{r}.json").read_text()) for r in range(WORLD)]
    assert reports[0] == reports[1] == {"kimg": 0.064, "steps": 8, "resumed": 0.032}
    run = two_ranks / "run"
    assert (run / "final" / "generator.pt").is_file()
    # Rank 0 alone writes: one stats line per tick, no duplicates from rank 1.
    rows = [json.loads(line) for line in (run / "stats.jsonl").read_text().splitlines()]
    assert [row["kimg"] for row in rows] == [0.016, 0.032, 0.048, 0.064]
    options = json.loads((run / "training_options.json").read_text())
    assert options["world_size"] == 2 and options["per_rank_batch"] == 4


def test_env_and_sharding_helpers(monkeypatch: pytest.MonkeyPatch) -> None:
    for key in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(key, raising=False)
    assert env_dist() == Dist() and not Dist().enabled and Dist().is_main
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "3")
    assert env_dist() == Dist(rank=1, world_size=3, local_rank=1)
    # Strided shards partition the batch, whatever its length.
    items = np.arange(10)
    parts = [shard(items, Dist(rank=r, world_size=3)) for r in range(3)]
    assert sorted(np.concatenate(parts).tolist()) == items.tolist()
    assert local_batch_size(64, Dist(rank=0, world_size=4)) == 16
    with pytest.raises(UserError, match="not divisible"):
        local_batch_size(10, Dist(rank=0, world_size=4))
