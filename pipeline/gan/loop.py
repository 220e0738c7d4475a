"""The GAN training loop: pack in, checkpoints, sample grids, stats and an exported generator out.

`train(cfg, pack_dir, run_dir)` is what the train stage calls. Progress is counted in images
shown to D (kimg, thousands of images), as in StyleGAN2-ADA; maintenance (stats, the NaN guard,
sample grids, checkpoints) happens once per tick of `cfg.tick_kimg`.

One step, batch B (global; B / world_size per rank):
  1. reals: a slice of a seeded per-epoch permutation of the memory-mapped pack, uint8 NHWC
     -> float NCHW in [-1, 1] on the device (no PNG decoding; loaded one batch ahead).
  2. G forward once: z (B, nz) -> fakes. Their detached copy trains D; the same tensor, through
     the updated D, trains G. (Seed 004 does this too; it just keeps more graphs alive.)
  3. D step: one D pass on reals and one on detached fakes (separate passes keep BatchNorm
     statistics per kind, as in the seed), one backward, no retain_graph.
  4. G step: fakes through the freshly updated D with D's parameters frozen (no weight
     gradients are computed for D). Relativistic losses need D(reals) too: we REUSE the
     detached real logits of the D step instead of a third D pass, as seed 004 does. They are
     one D update old; recomputing them would cost a full D forward per step.
  5. EMA of G (half-life cfg.ema_kimg with ramp-up), then counters and the ADA controller.
Tricks (all off by default): soft labels (real_label), label flipping, annealed instance noise,
DiffAugment on everything D sees with a fixed or adaptive probability, R1 for StyleGAN2.

A run folder is persistent: rerunning resumes from its newest checkpoint, exactly (weights,
optimizers, RNG states, data order), and raising cfg.kimg continues the same run.
"""

from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import random
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from tqdm import tqdm

from pipeline.core.config import TrainConfig
from pipeline.core.device import resolve_device
from pipeline.core.distributed import (
    Dist,
    all_gather_objects,
    all_reduce_mean,
    broadcast_object,
    init_from_env,
    local_batch_size,
    print0,
    shard,
    shutdown,
)
from pipeline.core.errors import UserError
from pipeline.gan import checkpoint as ckpt
from pipeline.gan.diffaug import AdaptiveP, diff_augment, parse_policy
from pipeline.gan.losses import (
    GANLoss,
    get_loss,
    gradient_penalty,
    path_length_penalty,
    r1_penalty,
)
from pipeline.gan.models import (
    ModelSpec,
    build_discriminator,
    build_generator,
    save_generator,
    spec_from_config,
    unwrap,
)
from pipeline.gan.plots import plot_losses, read_stats, save_grid
from pipeline.ingest.pack import open_pack

GRID_IMAGES = 64  # images in reals.png / fakes*.png (8 x 8), also the diversity probe
R1_INTERVAL = 16  # lazy R1: penalise every 16 D steps, weighted x16 (StyleGAN2's default)
PL_INTERVAL = 4  # lazy path-length regularisation: every 4 G steps, weighted x4 (StyleGAN2)
STAT_KEYS = ("loss_d", "loss_g", "d_real", "d_fake", "acc_real", "acc_fake")  # tick averages


@dataclass(frozen=True)
class TrainReport:
    """What one call of `train` did (the stage prints it and puts it in its manifest)."""

    kimg_done: float  # thousands of images seen by D in total (including before a resume)
    steps: int  # optimizer steps in total
    seconds: float  # wall time of this call, setup and export included
    images_per_second: float  # training throughput of this call (steps only, global batch)
    resumed_from_kimg: float  # where this call started (0 for a fresh run)
    final_losses: dict[str, float]  # the last tick's averages (loss_d, loss_g, ...)
    generator_dir: Path  # the exported generator (save_generator format)
    train_seconds: float = 0.0  # time spent in training steps in this call
    out_of_time: bool = False  # stopped by cfg.minutes before reaching cfg.kimg


# ----------------------------------------------------------------------------------------------
# Device, precision and backends


@dataclass(frozen=True)
class Precision:
    """Where and in which dtype the networks run; `dtype` None means plain float32."""

    device: torch.device
    dtype: torch.dtype | None  # autocast dtype: bfloat16, float16 or None
    channels_last: bool  # NHWC memory layout (faster convolutions on tensor cores)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def scaler(self) -> torch.amp.GradScaler | None:
        """fp16 needs loss scaling (its range is too small for small gradients); bf16 does not."""
        if self.dtype is not torch.float16:
            return None
        return torch.amp.GradScaler(self.device.type)


def resolve_precision(cfg: TrainConfig, device: torch.device) -> Precision:
    """cfg.amp -> autocast dtype. auto: bf16 on CUDA when supported, fp16 otherwise; CPU off."""
    cuda = device.type == "cuda"
    if cfg.amp == "auto":
        dtype = None
        if cuda:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    else:
        dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
    # NHWC convolutions are faster on CPUs too (DCGAN-128 loop 1.9x, StyleGAN2 1.35x here);
    # the MLP has no convolutions to gain from it.
    return Precision(device=device, dtype=dtype, channels_last=cfg.model != "mlp")


def configure_backends(cfg: TrainConfig, device: torch.device) -> None:
    """Process-wide torch switches for speed (TF32, cuDNN autotune) or reproducibility."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32: ~fp32 quality, tensor-core speed
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = not cfg.deterministic  # autotune conv algorithms
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS reproducibility
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)


# ----------------------------------------------------------------------------------------------
# Data: an endless seeded stream of batches from the memory-mapped pack


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
    x = x.permute(0, 3, 1, 2).float().div_(127.5).sub_(1.0)  # (N, C, H, W) in [-1, 1]
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


# ----------------------------------------------------------------------------------------------
# Small pieces of the step


class DiscriminatorPair(nn.Module):
    """D on reals and on fakes in one forward call, as two passes (per-kind BN statistics).

    One call per D step lets DistributedDataParallel see one forward per backward.
    """

    def __init__(self, discriminator: nn.Module) -> None:
        super().__init__()
        self.d = discriminator

    def forward(self, real: torch.Tensor, fake: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.d(real), self.d(fake)  # (N,), (N,) logits


@contextlib.contextmanager
def frozen(module: nn.Module) -> Iterator[None]:
    """Parameters need no gradient inside: autograd skips their weight gradients."""
    flags = [p.requires_grad for p in module.parameters()]
    module.requires_grad_(False)
    try:
        yield
    finally:
        for p, flag in zip(module.parameters(), flags):
            p.requires_grad_(flag)


def flip_labels(real: torch.Tensor, fake: torch.Tensor, p: float) -> tuple[torch.Tensor, ...]:
    """Seed 000's label flipping: swap each (real, fake) pair with probability p.

    Swapping the images (not the targets) works for every loss, relativistic ones included.
    """
    if p <= 0:
        return real, fake
    n = min(real.shape[0], fake.shape[0])
    swap = (torch.rand(n, device=real.device) < p).view(n, 1, 1, 1)  # (n, 1, 1, 1)
    new_real = torch.where(swap, fake[:n], real[:n])
    new_fake = torch.where(swap, real[:n], fake[:n])
    return torch.cat([new_real, real[n:]]), torch.cat([new_fake, fake[n:]])


def instance_noise_std(cfg: TrainConfig, images_seen: int) -> float:
    """Instance noise std: cfg.instance_noise at the start, linearly to 0 at instance_noise_kimg."""
    if cfg.instance_noise <= 0:
        return 0.0
    return cfg.instance_noise * max(0.0, 1.0 - images_seen / (cfg.instance_noise_kimg * 1000))


def d_input(x: torch.Tensor, ops: tuple[str, ...], p: float, noise_std: float) -> torch.Tensor:
    """What D sees: DiffAugment (probability p per image and op), then instance noise."""
    x = diff_augment(x, ops, p)
    if noise_std > 0:
        x = x + noise_std * torch.randn_like(x)
    return x


def ema_beta(cfg: TrainConfig, batch: int, images_seen: int) -> float:
    """Per-step EMA decay for a half-life of cfg.ema_kimg, ramped up (StyleGAN2-ADA).

    With ramp-up the half-life is at most ema_rampup * images_seen, so early, fast-moving
    weights are not averaged with their random initialisation for long.
    """
    half_life = cfg.ema_kimg * 1000
    if cfg.ema_rampup > 0:
        half_life = min(half_life, images_seen * cfg.ema_rampup)
    return 0.5 ** (batch / max(half_life, 1e-8))


@torch.no_grad()
def update_ema(ema: nn.Module, model: nn.Module, beta: float) -> None:
    """ema <- beta * ema + (1 - beta) * model for parameters; buffers (BN stats) copied."""
    ema_params = list(ema.parameters())
    torch._foreach_lerp_(ema_params, [p.detach() for p in model.parameters()], 1.0 - beta)
    for b_ema, b in zip(ema.buffers(), model.buffers()):
        b_ema.copy_(b)


@torch.no_grad()
def diversity(images: torch.Tensor) -> float:
    """Mean pairwise RMS pixel distance of a batch (N, C, H, W) in [-1, 1]; 0 = all identical."""
    flat = images.float().flatten(1)  # (N, C*H*W)
    distances = torch.cdist(flat, flat) / math.sqrt(flat.shape[1])  # (N, N)
    n = flat.shape[0]
    return float(distances.sum() / max(n * (n - 1), 1))


@torch.no_grad()
def sample(generator: nn.Module, z: torch.Tensor, precision: Precision) -> torch.Tensor:
    """Generator output for fixed noise in eval mode (BN running statistics), float32."""
    was_training = generator.training
    generator.eval()
    with precision.autocast():
        images = generator(z)
    generator.train(was_training)
    return images.float()


def d_backward(
    pair: nn.Module,
    d_plain: nn.Module,
    loss: GANLoss,
    real: torch.Tensor,
    fake: torch.Tensor,
    real_label: float,
    precision: Precision,
    scaler: torch.amp.GradScaler | None = None,
    r1_weight: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """D's loss and its one backward (gradients accumulate into D; no optimizer step here).

    `pair` is the DiscriminatorPair (DDP-wrapped when distributed), `d_plain` the bare D used
    for the gradient penalty. `real` and `fake` are what D sees (augmented, noised); fakes are
    detached here. Returns detached (D loss, real logits (N,), fake logits (N,)).
    """
    if r1_weight > 0:
        real = real.detach().requires_grad_(True)  # R1 differentiates D(real) w.r.t. real
    with precision.autocast():
        real_logits, fake_logits = pair(real, fake.detach())
    real_logits, fake_logits = real_logits.float(), fake_logits.float()  # losses in fp32
    loss_d = loss.d_loss(real_logits, fake_logits, real_label)
    total = loss_d
    if loss.gradient_penalty_weight > 0:
        with precision.autocast():
            penalty = gradient_penalty(d_plain, real.detach(), fake.detach())
        total = total + loss.gradient_penalty_weight * penalty.float()
    if r1_weight > 0:
        total = total + r1_weight * r1_penalty(real_logits, real)
    (scaler.scale(total) if scaler is not None else total).backward()
    return loss_d.detach(), real_logits.detach(), fake_logits.detach()


def g_backward(
    d_plain: nn.Module,
    loss: GANLoss,
    fake: torch.Tensor,
    real_logits: torch.Tensor,
    real_label: float,
    precision: Precision,
    scaler: torch.amp.GradScaler | None = None,
    regulariser: torch.Tensor | None = None,
) -> torch.Tensor:
    """G's loss through the (already updated) D, D frozen, and its backward into G.

    `regulariser` (e.g. the path-length penalty, already weighted) joins the same backward.
    """
    with frozen(d_plain), precision.autocast():
        fake_logits = d_plain(fake)
    reals = real_logits if loss.uses_real_logits_in_g else None  # detached, from the D step
    loss_g = loss.g_loss(reals, fake_logits.float(), real_label)
    total = loss_g if regulariser is None else loss_g + regulariser
    (scaler.scale(total) if scaler is not None else total).backward()
    return loss_g.detach()


def optimizer_step(
    optimizer: torch.optim.Optimizer, scaler: torch.amp.GradScaler | None
) -> None:
    """Adam step (through the loss scaler for fp16), then drop the gradients."""
    if scaler is not None:
        scaler.step(optimizer)
        scaler.update()
    else:
        optimizer.step()
    optimizer.zero_grad(set_to_none=True)


# ----------------------------------------------------------------------------------------------
# Run folder bookkeeping


def _kimg(images: int) -> float:
    return images / 1000


def _crossed(before: int, after: int, every_kimg: float) -> bool:
    """True when images seen went past a multiple of `every_kimg` between before and after."""
    every = max(int(round(every_kimg * 1000)), 1)
    return after // every > before // every


def _truncate_stats(path: Path, images_seen: int) -> None:
    """Drop stats lines written after the checkpoint we resume from (they will be redone)."""
    rows = [row for row in read_stats(path) if row["kimg"] <= _kimg(images_seen) + 1e-9]
    ckpt.atomic_write_text(path, "".join(json.dumps(row) + "\n" for row in rows))


def _spec_mismatch(meta: dict[str, Any], spec: ModelSpec) -> str:
    """'' when the checkpoint's networks are `spec`, else what differs."""
    saved = meta.get("spec", {})
    diffs = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in asdict(spec).items()
             if saved.get(k) != v]
    return ", ".join(diffs)


def _divergence_message(kimg: float, stats: dict[str, float], last: Path | None) -> str:
    where = f"last good checkpoint: {last}" if last else "no checkpoint was written yet"
    return (
        f"training diverged at kimg {kimg:.1f} (loss_d={stats['loss_d']:.4g}, "
        f"loss_g={stats['loss_g']:.4g}); lower lr_d/lr_g (e.g. halve them), use real_label < 1, "
        f"or try another loss; {where} (rerunning with other settings resumes from it)"
    )


# ----------------------------------------------------------------------------------------------
# The loop


def train(cfg: TrainConfig, pack_dir: Path, run_dir: Path, quiet: bool = False) -> TrainReport:
    """Train (or resume, or just re-export) the run in `run_dir` up to cfg.kimg.

    Launched by torchrun, every rank calls this; rank 0 alone writes files.
    """
    device_type = "cpu" if cfg.device == "cpu" or not torch.cuda.is_available() else "cuda"
    owns_group = not torch_dist.is_initialized()
    dist = init_from_env(device_type)
    try:
        return _train(cfg, Path(pack_dir), Path(run_dir), quiet, dist)
    finally:
        if owns_group:
            shutdown(dist)


def _train(cfg: TrainConfig, pack_dir: Path, run_dir: Path, quiet: bool, dist: Dist) -> TrainReport:
    start_time = time.perf_counter()

    # ------------------------------------------------------------------ setup: device, data
    device = resolve_device(cfg.device, "train.device", dist.local_rank)
    precision = resolve_precision(cfg, device)
    configure_backends(cfg, device)
    images, info = open_pack(pack_dir)  # (N, H, W, C) uint8, memory-mapped
    if info.count < 1:
        raise UserError(f"the training pack {pack_dir} is empty; check the augment stage")
    batch = local_batch_size(cfg.batch_size, dist)  # per rank
    resident = fits_on_device(images, device)  # a copy of the pack in GPU memory?
    target_images = int(round(cfg.kimg * 1000))
    # Wall-clock budget of this call (Kaggle kernels stop at 9 hours): checked every step.
    deadline = start_time + 60 * cfg.minutes if cfg.minutes > 0 else math.inf
    out_of_time = False
    ops = parse_policy(cfg.diffaugment)
    loss = get_loss(cfg.loss)
    spec = spec_from_config(cfg, info.size, info.channels)
    ckpt_dir = run_dir / "checkpoints"

    # ------------------------------------------------------------------ setup: networks
    # Same seed on every rank: identical initial weights (DDP also broadcasts rank 0's).
    torch.manual_seed(cfg.seed)
    np.random.seed(cfg.seed)
    random.seed(cfg.seed)
    G = build_generator(spec).to(device).train()
    D = build_discriminator(spec).to(device).train()
    if precision.channels_last:
        G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
    G_ema = copy.deepcopy(G).eval().requires_grad_(False) if cfg.ema_kimg > 0 else None
    betas = (cfg.beta1, cfg.beta2)
    opt_g = torch.optim.Adam(G.parameters(), lr=cfg.lr_g, betas=betas)
    opt_d = torch.optim.Adam(D.parameters(), lr=cfg.lr_d, betas=betas)
    scaler_g, scaler_d = precision.scaler(), precision.scaler()
    sampler = BatchSampler(info.count, cfg.batch_size, cfg.seed)
    ada = AdaptiveP(cfg.ada_target, cfg.ada_kimg, interval=4,
                    p=0.0 if cfg.ada_target > 0 else cfg.augment_p)
    # R1 and path-length regularisation are StyleGAN2's (their knobs say so).
    r1_on = cfg.model == "stylegan2" and cfg.r1_gamma > 0
    pl_on = cfg.model == "stylegan2" and cfg.pl_weight > 0
    pl_mean = torch.zeros((), device=device)  # running mean of path lengths
    # Different noise per rank, from a stream independent of the weight initialisation.
    torch.manual_seed(int(np.random.SeedSequence([cfg.seed, dist.rank, 1]).generate_state(1)[0]))
    images_seen, steps, diversity_best = 0, 0, 0.0
    last_stats: dict[str, float] = {}

    # ------------------------------------------------------------------ setup: resume
    # Rank 0 picks the checkpoint, so all ranks load the same one.
    resume_path = broadcast_object(ckpt.latest_checkpoint(ckpt_dir), dist)
    if resume_path is not None:
        meta = ckpt.read_meta(resume_path)
        mismatch = _spec_mismatch(meta, spec)
        if mismatch:
            raise UserError(
                f"{resume_path} holds different networks ({mismatch}); change them back or "
                f"delete {run_dir} to start over"
            )
        # Weights, optimizer moments and loss scales: the networks continue where they were.
        state = ckpt.load_checkpoint(resume_path, device)
        G.load_state_dict(state["G"])
        D.load_state_dict(state["D"])
        if G_ema is not None:
            # A run that had no EMA before starts its EMA from the current G.
            G_ema.load_state_dict(state.get("G_ema", state["G"]))
        pl_mean = state.get("pl_mean", pl_mean).to(device)
        opt_g.load_state_dict(state["opt_g"])
        opt_d.load_state_dict(state["opt_d"])
        for opt, lr in ((opt_g, cfg.lr_g), (opt_d, cfg.lr_d)):  # the config wins over the saved
            for group in opt.param_groups:
                group["lr"], group["betas"] = lr, betas
        for scaler, key in ((scaler_g, "scaler_g"), (scaler_d, "scaler_d")):
            if scaler is not None and key in state:
                scaler.load_state_dict(state[key])
        # Loop state: data order, augmentation strength, counters, stats for the report.
        sampler.load_state_dict(meta["sampler"])
        ada.load_state_dict(meta["ada"], device)
        images_seen, steps = int(meta["images_seen"]), int(meta["steps"])
        diversity_best, last_stats = float(meta["diversity_best"]), dict(meta["last_stats"])
        # One RNG state per rank was saved; the same ranks continue the same streams.
        rng_states = state["rng"]
        if len(rng_states) == dist.world_size:
            ckpt.restore_rng(rng_states[dist.rank])  # exact resume
        else:  # another number of processes: fresh, still seeded, streams
            torch.manual_seed(cfg.seed + images_seen + dist.rank)
        del state
    resumed_from = images_seen

    # ------------------------------------------------------------------ setup: run folder
    grid_z = torch.randn(GRID_IMAGES, cfg.nz, generator=torch.Generator().manual_seed(cfg.seed))
    grid_z = grid_z.to(device)  # fixed noise for every fakes*.png and the diversity probe
    stats_path = run_dir / "stats.jsonl"
    writer = None  # TensorBoard, rank 0 only
    if dist.is_main:
        # Resolved settings first, so a crashed run still says how it was started.
        run_dir.mkdir(parents=True, exist_ok=True)
        options = {"config": asdict(cfg), "spec": asdict(spec), "pack": str(pack_dir),
                   "pack_info": asdict(info), "device": str(device),
                   "amp": str(precision.dtype), "world_size": dist.world_size,
                   "per_rank_batch": batch, "pack_on_device": resident,
                   "resumed_from_kimg": _kimg(resumed_from)}
        ckpt.atomic_write_text(run_dir / "training_options.json", json.dumps(options, indent=2))
        if not (run_dir / "reals.png").exists():
            save_grid(np.asarray(images[: min(GRID_IMAGES, info.count)]), run_dir / "reals.png")
        if resume_path is not None:  # ticks after the checkpoint will be rerun: drop them
            _truncate_stats(stats_path, images_seen)
        if images_seen < target_images:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when training

            # purge_step: TensorBoard hides events past the resume point from the killed run.
            writer = SummaryWriter(str(run_dir / "tensorboard"), purge_step=images_seen)

    # ------------------------------------------------------------------ setup: DDP wrappers
    G_plain, D_plain = G, D  # bare modules: EMA, sampling, G step's D pass, checkpoints
    D_pair: nn.Module = DiscriminatorPair(D)
    if dist.enabled:
        # Gradients are averaged over ranks in G's and the D pair's backward. The G step's
        # D pass uses the bare D: D's weights get no gradient there, so nothing to sync.
        ids = [device.index] if device.type == "cuda" else None
        G = nn.parallel.DistributedDataParallel(G, device_ids=ids)
        D_pair = nn.parallel.DistributedDataParallel(D_pair, device_ids=ids)
    export_net = G_ema if G_ema is not None else G_plain  # what fakes*.png and final/ show
    reader = BatchReader(images, sampler, dist, device, resident and images_seen < target_images)

    def save_state(last_tick: dict[str, float]) -> Path | None:
        """Checkpoint (every rank gathers RNG states; rank 0 writes) and prune old ones."""
        rng = all_gather_objects(ckpt.capture_rng(), dist)  # a collective: all ranks call it
        if not dist.is_main:
            return None
        # Tensors go to the .pt; counters and the resolved config to the readable sidecar.
        state = {"G": G_plain.state_dict(), "D": D_plain.state_dict(),
                 "opt_g": opt_g.state_dict(), "opt_d": opt_d.state_dict(), "rng": rng,
                 "pl_mean": pl_mean}
        if G_ema is not None:
            state["G_ema"] = G_ema.state_dict()
        for scaler, key in ((scaler_g, "scaler_g"), (scaler_d, "scaler_d")):
            if scaler is not None:
                state[key] = scaler.state_dict()
        meta = {"images_seen": images_seen, "steps": steps, "kimg": _kimg(images_seen),
                "sampler": reader.state_dict(), "ada": ada.state_dict(),
                "diversity_best": diversity_best, "last_stats": last_tick,
                "config": asdict(cfg), "spec": asdict(spec), "world_size": dist.world_size,
                "written": time.time()}
        path = ckpt.save_checkpoint(ckpt_dir, state, meta)
        ckpt.prune_checkpoints(ckpt_dir, cfg.keep_checkpoints)
        return path

    # ------------------------------------------------------------------ the loop
    # Counted in images (integers: no float drift), shown in kimg.
    bar = tqdm(total=target_images, initial=min(images_seen, target_images), unit="kimg",
               unit_scale=1 / 1000, disable=quiet or not dist.is_main, dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} kimg [{elapsed}<{remaining}{postfix}]")
    last_good = ckpt.latest_checkpoint(ckpt_dir) if dist.is_main else None  # for NaN errors
    tick_sums = torch.zeros(len(STAT_KEYS) + 1, device=device)  # per-step sums + step count
    if images_seen == 0 and dist.is_main:  # what the untrained G draws, for comparison
        save_grid(sample(export_net, grid_z, precision), run_dir / "fakes000000.png")
    # Timers: a tick's img/s and the report's rate count training steps, not upkeep.
    tick_start_images, tick_start_time = images_seen, time.perf_counter()
    loop_start, upkeep_seconds, data_seconds = time.perf_counter(), 0.0, 0.0
    try:
        while images_seen < target_images:
            step_start = time.perf_counter()

            # -- 1. reals: this rank's share of the next global batch, in [-1, 1]
            real = to_device_batch(reader.next(), precision)  # (b, C, H, W)
            data_seconds += time.perf_counter() - step_start
            kimg_before = images_seen
            # This step's trick strengths (both change slowly; reals and fakes share them).
            p = ada.p
            noise_std = instance_noise_std(cfg, images_seen)

            # -- 2. fakes: one G forward; its graph is kept for the G step
            z = torch.randn(batch, cfg.nz, device=device)
            with precision.autocast():
                fake = G(z)  # (b, C, H, W) in [-1, 1]

            # -- 3. D step: reals up, fakes down; one backward through D only
            d_real_in, d_fake_in = flip_labels(real, fake.detach(), cfg.label_flip)
            # Augment both sides alike, so D cannot tell them apart by the augmentation.
            d_real_in = d_input(d_real_in, ops, p, noise_std)
            d_fake_in = d_input(d_fake_in, ops, p, noise_std)
            # Lazy R1: every R1_INTERVAL steps, weighted as if it ran every step.
            r1_due = r1_on and steps % R1_INTERVAL == 0
            r1_weight = cfg.r1_gamma / 2 * R1_INTERVAL if r1_due else 0.0
            loss_d, real_logits, fake_logits = d_backward(
                D_pair, D_plain, loss, d_real_in, d_fake_in, cfg.real_label, precision,
                scaler_d, r1_weight)
            optimizer_step(opt_d, scaler_d)
            ada.accumulate(real_logits)  # how sure D is about reals drives p

            # -- 4. G step: the same fakes through the updated, frozen D
            g_fake_in = d_input(fake, ops, p, noise_std)
            regulariser = None
            if pl_on and steps % PL_INTERVAL == 0:  # lazy path-length reg. on half a batch
                pl_z = torch.randn(max(batch // 2, 1), cfg.nz, device=device)
                pl_images, pl_ws = G_plain(pl_z, return_ws=True)  # float32: double backward
                penalty, pl_mean = path_length_penalty(pl_images, pl_ws, pl_mean)
                regulariser = penalty * cfg.pl_weight * PL_INTERVAL
            loss_g = g_backward(D_plain, loss, g_fake_in, real_logits, cfg.real_label,
                                precision, scaler_g, regulariser)
            optimizer_step(opt_g, scaler_g)

            # -- 5. EMA, counters, augmentation strength
            if G_ema is not None:
                update_ema(G_ema, G_plain, ema_beta(cfg, cfg.batch_size, images_seen))
            images_seen += cfg.batch_size
            steps += 1
            ada.maybe_update(cfg.batch_size, lambda t: all_reduce_mean(t, dist))
            tick_sums += torch.stack([  # stays on the device: no sync per step
                loss_d, loss_g, real_logits.mean(), fake_logits.mean(),
                (real_logits > 0).float().mean(), (fake_logits < 0).float().mean(),
                torch.ones((), device=device)])
            bar.update(min(cfg.batch_size, target_images - bar.n))  # tqdm breaks past total

            # -- 6. tick: stats, NaN guard, diversity, snapshot, checkpoint
            done = images_seen >= target_images
            if deadline < math.inf and not done:  # the time budget ends the run at this step
                late = time.perf_counter() >= deadline
                if dist.enabled:  # every rank stops at the same step: a sync per step
                    flag = torch.tensor([float(late)], device=device)
                    late = all_reduce_mean(flag, dist).item() > 0
                done = out_of_time = late
            if not (done or _crossed(kimg_before, images_seen, cfg.tick_kimg)):
                continue
            # Nothing below changes the training state or draws from the global RNG, so tick
            # boundaries (which differ between a resumed and a straight run) leave no trace.
            sums = all_reduce_mean(tick_sums.clone(), dist).tolist()  # one sync per tick
            upkeep_start = time.perf_counter()  # from here on, time is not training time
            tick_stats = {key: sums[i] / sums[-1] for i, key in enumerate(STAT_KEYS)}
            if not all(math.isfinite(v) for v in tick_stats.values()):
                raise UserError(_divergence_message(_kimg(images_seen), tick_stats, last_good))
            tick_time = time.perf_counter() - tick_start_time
            # Diversity of the fixed-noise batch against its best so far: a collapse of G
            # onto a few outputs shows as a fall, long before FID is computed.
            fakes = sample(export_net, grid_z, precision)  # (64, C, H, W)
            spread = diversity(fakes)
            diversity_best = max(diversity_best, spread)
            collapsed = cfg.collapse_ratio > 0 and spread < cfg.collapse_ratio * diversity_best
            row = {"kimg": _kimg(images_seen), "step": steps, **tick_stats,
                   "img_per_s": (images_seen - tick_start_images) / max(tick_time, 1e-9),
                   "data_ms": 1000 * data_seconds / max(sums[-1], 1),  # per step
                   "augment_p": p, "instance_noise": noise_std, "diversity": spread,
                   "collapse_warning": collapsed, "seconds": time.perf_counter() - start_time}
            last_stats = {k: float(row[k]) for k in STAT_KEYS}
            tick_sums.zero_()
            data_seconds = 0.0
            if dist.is_main:  # rank 0 logs: stats.jsonl, TensorBoard, the bar, grids
                with stats_path.open("a", encoding="utf-8") as handle:
                    handle.write(json.dumps(row) + "\n")
                for key, value in row.items():
                    if key not in ("kimg", "step"):
                        writer.add_scalar(f"train/{key}", float(value), images_seen)
                bar.set_postfix_str(f"{row['img_per_s']:.0f} img/s, D {row['loss_d']:.3f}, "
                                    f"G {row['loss_g']:.3f}, acc {row['acc_real']:.2f}")
                if collapsed:  # loud even when quiet: the run may be wasting its time
                    message = (f"warning: samples lost diversity at kimg {row['kimg']:.1f} "
                               f"({spread:.3f} vs best {diversity_best:.3f}): mode collapse?")
                    if quiet:
                        print0(dist, message)
                    else:
                        tqdm.write(message)
                if done or _crossed(kimg_before, images_seen, cfg.snapshot_kimg):
                    save_grid(fakes, run_dir / f"fakes{images_seen // 1000:06d}.png")
            if done or _crossed(kimg_before, images_seen, cfg.checkpoint_kimg):
                last_good = save_state(last_stats) or last_good
            upkeep_seconds += time.perf_counter() - upkeep_start
            tick_start_images, tick_start_time = images_seen, time.perf_counter()
            if out_of_time:
                break
        loop_seconds = time.perf_counter() - loop_start
    finally:
        bar.close()
        reader.close()
        if writer is not None:
            writer.close()

    # ------------------------------------------------------------------ export (rank 0)
    final_dir = run_dir / "final"
    if dist.is_main:
        # Also on a run that was already done: the export is cheap and always current.
        save_generator(unwrap(export_net), spec, final_dir)
        rows = read_stats(stats_path)
        if rows:
            plot_losses(rows, run_dir / "losses.png")
    seconds = time.perf_counter() - start_time
    trained_images = images_seen - resumed_from
    train_seconds = loop_seconds - upkeep_seconds if trained_images else 0.0
    return TrainReport(
        kimg_done=_kimg(images_seen),
        steps=steps,
        seconds=seconds,
        images_per_second=trained_images / train_seconds if train_seconds > 0 else 0.0,
        resumed_from_kimg=_kimg(resumed_from),
        final_losses=last_stats,
        generator_dir=final_dir,
        train_seconds=train_seconds,
        out_of_time=out_of_time,
    )
