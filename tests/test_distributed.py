"""Distributed training on CPU: two Gloo processes must agree with one process.

The processes are started with torch.multiprocessing (spawn) and the environment torchrun
would set (RANK, WORLD_SIZE, ...), so `init_from_env` takes its real path.
"""

from __future__ import annotations

import contextlib
import faulthandler
import json
import os
import socket
from collections.abc import Iterator
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
from pipeline.gan.batchnorm import synchronise_batchnorm
from pipeline.gan.losses import get_loss
from pipeline.gan.models import ModelSpec, build_discriminator, build_generator, get_model
from pipeline.gan.precision import Precision
from pipeline.gan.steps import DiscriminatorPair, d_backward, g_backward
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


# The equivalence cases: each family's recommended loss, networks in training mode (BatchNorm
# over the global batch), one D step and one G step. What cannot match is left out and said:
# per-sample noise (StyleGAN2, FastGAN's generator) is drawn per rank, so its strengths'
# gradients differ; StyleGAN2's style mixing is off for the same reason (a random crossover).
CASES: dict[str, tuple[ModelSpec, str, float]] = {  # spec, loss, R1 weight
    "mlp-lsgan": (SPEC, "lsgan", 0.0),
    "dcgan-ralsgan": (ModelSpec(name="dcgan", size=32, channels=3, nz=16, width=0.0625),
                      "ralsgan", 0.0),
    "fastgan-hinge": (ModelSpec(name="fastgan", size=32, channels=3, nz=16, width=0.0625),
                      "hinge", 0.0),
    "r3gan-rpgan": (ModelSpec(name="r3gan", size=32, channels=3, nz=16, width=0.0625),
                    "rpgan", 0.0),
    "stylegan2-r1": (ModelSpec(name="stylegan2", size=32, channels=3, nz=16, w_dim=16,
                               channel_base=256, channel_max=16, style_mixing=0.0),
                     "nonsaturating", 5.0),
}
PER_RANK_RANDOM = ("noise_strength", "strength")  # parameter names drawn per rank (see above)


def _case_batches(spec: ModelSpec) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The same reals, fakes and latents in every process."""
    gen = torch.Generator().manual_seed(1)
    shape = (BATCH, spec.channels, spec.size, spec.size)
    return (torch.rand(shape, generator=gen) * 2 - 1, torch.randn(shape, generator=gen).tanh(),
            torch.randn(BATCH, spec.nz, generator=gen))


@contextlib.contextmanager
def float64() -> Iterator[None]:
    """Networks and batches in float64 inside.

    The equivalence is one of maths, so it is checked where rounding cannot hide or fake it.
    In float32 two ranks sum BatchNorm statistics in another order than one process (a
    difference of 1e-7), and an activation that close to a LeakyReLU's kink can take the other
    branch: FastGAN's D at this seed does so for one sample of rank 1, whose fake gradients
    then differ by 12% though every formula agrees (the same run in float64: 4e-15).
    """
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def _step_gradients(dist: Dist, case: str) -> dict[str, torch.Tensor]:
    """One D step and one G step of the training loop's functions on this rank's share of the
    batch, DDP-wrapped and BatchNorm-synchronised as `train` does; the gradients of D and G
    (networks and batches in float64)."""
    with float64():
        spec, loss_name, r1_weight = CASES[case]
        torch.manual_seed(0)
        # The MLP's dropout draws its masks per rank: it is compared in eval mode, as before.
        training = spec.name != "mlp"
        G, D = build_generator(spec).train(training), build_discriminator(spec).train(training)
        if dist.enabled:
            synchronise_batchnorm(G, torch.device("cpu"))
            synchronise_batchnorm(D, torch.device("cpu"))
        family = get_model(spec.name)
        pair: torch.nn.Module = DiscriminatorPair(D, aux=family.d_aux_loss)
        G_step: torch.nn.Module = G
        if dist.enabled:
            pair = torch.nn.parallel.DistributedDataParallel(pair)
            G_step = torch.nn.parallel.DistributedDataParallel(G)
        real, fake, z = (shard(t, dist) for t in _case_batches(spec))
        loss = get_loss(loss_name)
        cpu = Precision(torch.device("cpu"), None, False)
        torch.manual_seed(2)  # FastGAN's quarter crop: the same on every rank and in one process
        _, real_logits, _ = d_backward(pair, D, loss, real, fake, real_label=0.8, precision=cpu,
                                       r1_weight=r1_weight)
        grads = {f"D.{n}": p.grad.clone() for n, p in D.named_parameters() if p.grad is not None}
        g_backward(D, loss, G_step(z), real_logits, real_label=0.8, precision=cpu)
        grads |= {f"G.{n}": p.grad.clone() for n, p in G.named_parameters()
                  if p.grad is not None and not n.endswith(PER_RANK_RANDOM)}
        return grads


def _d_gradients(dist: Dist) -> dict[str, torch.Tensor]:
    """The original equivalence: the MLP's D step with LSGAN in eval mode."""
    torch.manual_seed(0)
    discriminator = build_discriminator(SPEC).eval()  # no dropout masks, no batch statistics
    pair: torch.nn.Module = DiscriminatorPair(discriminator)
    if dist.enabled:
        pair = torch.nn.parallel.DistributedDataParallel(pair)
    real, fake = _batches()
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
        steps = {case: _step_gradients(dist, case) for case in CASES}
        if rank == 0:
            torch.save(grads, Path(root) / "grads.pt")
            torch.save(steps, Path(root) / "steps.pt")
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


def test_two_ranks_hold_the_same_weights_at_every_checkpoint(two_ranks: Path) -> None:
    """Each checkpoint gathers a digest of every rank's G and D parameters (state.save): after
    every step of the 2-rank run (trained, stopped, resumed) the ranks' weights are bit-equal."""
    from pipeline.gan import checkpoint as ckpt

    metas = [ckpt.read_meta(p) for p in ckpt.list_checkpoints(two_ranks / "run/checkpoints")]
    assert metas and all(m["world_size"] == 2 and m["ranks_agree"] is True for m in metas)
    assert max(m["kimg"] for m in metas) == 0.064


def test_ddp_d_step_matches_one_process(two_ranks: Path) -> None:
    ddp_grads = torch.load(two_ranks / "grads.pt", weights_only=True)
    single = _d_gradients(Dist())
    assert single.keys() == ddp_grads.keys()
    for name, grad in single.items():
        torch.testing.assert_close(ddp_grads[name], grad, rtol=1e-5, atol=1e-6, msg=name)
    assert any(g.abs().sum() > 0 for g in single.values())  # the comparison is not vacuous


@pytest.mark.parametrize("case", CASES)
def test_ddp_steps_match_one_process_on_the_whole_batch(two_ranks: Path, case: str) -> None:
    """Two ranks with half the batch each = one process with all of it: D's and G's gradients
    after one D step and one G step, BatchNorm and relativistic means over the global batch."""
    ddp = torch.load(two_ranks / "steps.pt", weights_only=True)[case]
    single = _step_gradients(Dist(), case)
    assert single.keys() == ddp.keys() and any(k.startswith("G.") for k in single)
    for name, grad in single.items():
        # float64 networks; the losses are summed in float32 (steps.py), so 1e-6 of each
        # tensor's largest gradient (measured: 8e-8 for RaLSGAN's, 1e-13 or less elsewhere).
        assert grad.dtype == torch.float64
        error = float((ddp[name] - grad).abs().max())
        assert error <= 1e-6 * float(grad.abs().max()), f"{case}: {name} off by {error:.3g}"
    assert all(any(g.abs().sum() > 0 for k, g in single.items() if k.startswith(side))
               for side in ("D.", "G."))  # not vacuous


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
