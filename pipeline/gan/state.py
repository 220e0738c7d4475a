"""TrainState: everything a training run carries from one step to the next, in one place.

The networks, the EMA generator, both optimizers and loss scalers, the data sampler, the ADA
controller and the counters. It builds itself from the config, writes itself to a checkpoint and
restores itself from one: the keys of a checkpoint are named here once (`_stateful` for tensors,
`_COUNTERS` for the readable sidecar), so saving and resuming cannot drift apart.
"""

from __future__ import annotations

import copy
import hashlib
import random
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from pipeline.core.config import TrainConfig
from pipeline.core.distributed import Dist, all_gather_objects, broadcast_object
from pipeline.core.errors import UserError
from pipeline.gan import checkpoint as ckpt
from pipeline.gan.data import BatchSampler
from pipeline.gan.diffaug import AdaptiveP
from pipeline.gan.models import ModelSpec, build_discriminator, build_generator
from pipeline.gan.precision import Precision

# Loop counters saved in the JSON sidecar (attribute names of TrainState).
_COUNTERS = ("images_seen", "steps", "diversity_best", "last_stats", "best")


def weights_digest(*modules: nn.Module) -> str:
    """sha256 of the modules' parameters, bit for bit, in order."""
    digest = hashlib.sha256()
    for module in modules:
        for tensor in module.parameters():
            digest.update(tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8)
                          .numpy().tobytes())
    return digest.hexdigest()


FUSED_ADAM_DEVICES = ("cpu", "cuda")  # where torch has a fused (one kernel) Adam


def adam(module: nn.Module, lr: float, betas: tuple[float, float], device: torch.device
         ) -> torch.optim.Adam:
    """Adam over the module's parameters, fused where torch has a fused kernel.

    The same update rule as the default per-parameter loop, in one kernel for all tensors:
    small networks have dozens of small tensors, and on two CPU cores the loop's per-tensor
    operations were a tenth of a FastGAN step (bench/RESULTS.md).
    """
    fused = device.type in FUSED_ADAM_DEVICES
    return torch.optim.Adam(module.parameters(), lr=lr, betas=betas, fused=fused)


@dataclass
class TrainState:
    """The mutable state of a run. Tensors go to the checkpoint's .pt, counters to its .json."""

    G: nn.Module  # the generator being trained (bare module, never the DDP wrapper)
    D: nn.Module  # the discriminator (bare)
    G_ema: nn.Module | None  # exponential moving average of G (None when ema_kimg is 0)
    opt_g: torch.optim.Optimizer
    opt_d: torch.optim.Optimizer
    scaler_g: torch.amp.GradScaler | None  # fp16 loss scaling only
    scaler_d: torch.amp.GradScaler | None
    sampler: BatchSampler  # data order: epoch permutation and position
    ada: AdaptiveP  # augmentation probability and its controller's sums
    pl_mean: torch.Tensor  # running mean of path lengths (StyleGAN2's path-length penalty)
    images_seen: int = 0  # images shown to D so far, all ranks together
    steps: int = 0  # optimizer steps so far
    diversity_best: float = 0.0  # highest fixed-noise diversity seen (kept for old sidecars)
    last_stats: dict[str, float] = field(default_factory=dict)  # last tick's averages
    best: dict[str, float] = field(default_factory=dict)  # best snapshot evaluation so far

    @property
    def export_net(self) -> nn.Module:
        """What grids, evaluation and the exported generator show: the EMA when there is one."""
        return self.G_ema if self.G_ema is not None else self.G

    # ------------------------------------------------------------------------------ build

    @classmethod
    def build(cls, cfg: TrainConfig, spec: ModelSpec, count: int, precision: Precision,
              rank: int) -> TrainState:
        """Fresh networks and optimizers, seeded; every rank builds the same initial weights."""
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        random.seed(cfg.seed)
        device = precision.device
        G = build_generator(spec).to(device).train()
        D = build_discriminator(spec).to(device).train()
        if precision.channels_last:
            G, D = G.to(memory_format=torch.channels_last), D.to(memory_format=torch.channels_last)
        G_ema = copy.deepcopy(G).eval().requires_grad_(False) if cfg.ema_kimg > 0 else None
        betas = (cfg.beta1, cfg.beta2)
        state = cls(
            G=G, D=D, G_ema=G_ema,
            opt_g=adam(G, cfg.lr_g, betas, device),
            opt_d=adam(D, cfg.lr_d, betas, device),
            scaler_g=precision.scaler(), scaler_d=precision.scaler(),
            sampler=BatchSampler(count, cfg.batch_size, cfg.seed),
            ada=AdaptiveP(cfg.ada_target, cfg.ada_kimg, interval=4,
                          p=0.0 if cfg.ada_target > 0 else cfg.augment_p),
            pl_mean=torch.zeros((), device=device),
        )
        # Different noise per rank, from a stream independent of the weight initialisation.
        torch.manual_seed(int(np.random.SeedSequence([cfg.seed, rank, 1]).generate_state(1)[0]))
        return state

    def _stateful(self) -> dict[str, Any]:
        """Checkpoint key -> object with state_dict()/load_state_dict(): the tensor part."""
        parts: dict[str, Any] = {"G": self.G, "D": self.D, "opt_g": self.opt_g,
                                 "opt_d": self.opt_d}
        optional = {"G_ema": self.G_ema, "scaler_g": self.scaler_g, "scaler_d": self.scaler_d}
        parts.update({key: value for key, value in optional.items() if value is not None})
        return parts

    # ------------------------------------------------------------------------------ save

    def save(self, ckpt_dir: Path, cfg: TrainConfig, spec: ModelSpec, sampler_state: dict,
             dist: Dist) -> Path | None:
        """Checkpoint (every rank gathers its RNG state; rank 0 writes) and prune old ones.

        `sampler_state` is the reader's view of the data stream (before any prefetched batch).
        """
        # A collective (all ranks call it): every rank's RNG state, and a digest of its weights,
        # which DDP keeps equal on every rank; a difference means the ranks drifted apart.
        gathered = all_gather_objects((ckpt.capture_rng(), weights_digest(self.G, self.D)), dist)
        if not dist.is_main:
            return None
        rng = [state for state, _ in gathered]
        ranks_agree = len({digest for _, digest in gathered}) == 1
        if not ranks_agree:
            print(f"warning: at {self.images_seen / 1000:g} kimg the {dist.world_size} ranks "
                  "hold different weights: DDP should keep them equal (report this)", flush=True)
        tensors = {key: part.state_dict() for key, part in self._stateful().items()}
        tensors.update(rng=rng, pl_mean=self.pl_mean)
        meta = {key: getattr(self, key) for key in _COUNTERS}
        meta.update(kimg=self.images_seen / 1000, sampler=sampler_state,
                    ada=self.ada.state_dict(), config=asdict(cfg), spec=asdict(spec),
                    world_size=dist.world_size, ranks_agree=ranks_agree, written=time.time())
        path = ckpt.save_checkpoint(ckpt_dir, tensors, meta)
        ckpt.prune_checkpoints(ckpt_dir, cfg.keep_checkpoints)
        return path

    # ------------------------------------------------------------------------------ restore

    def restore_latest(self, ckpt_dir: Path, cfg: TrainConfig, spec: ModelSpec,
                       dist: Dist) -> Path | None:
        """Continue from the newest checkpoint in `ckpt_dir`, if any; return its path.

        Rank 0 picks the checkpoint so that every rank loads the same one.
        """
        path, tensors = _newest_readable(ckpt_dir) if dist.is_main else (None, None)
        path = broadcast_object(path, dist)
        if path is None:
            return None
        meta = ckpt.read_meta(path)
        mismatch = _spec_mismatch(meta, spec)
        if mismatch:
            raise UserError(f"{path} holds different networks ({mismatch}); change them back "
                            f"or delete {ckpt_dir.parent} to start over")
        device = self.pl_mean.device
        if tensors is None:  # rank > 0: rank 0 checked it; read it here
            tensors = ckpt.load_checkpoint(path, device)
        else:  # rank 0 read it once, on the CPU, while looking for a readable one
            tensors = _to_device(tensors, device)
        try:
            self._load_tensors(tensors, cfg)
        except RuntimeError as error:  # same settings, other layer shapes: another version
            detail = str(error).strip().splitlines()[-1].strip()  # the first mismatch
            raise UserError(f"{path} holds networks of other shapes than these settings build "
                            f"({detail}); another version of the code wrote it: move "
                            f"{ckpt_dir.parent} away (or give train.resume_from another run) to "
                            "start over") from None
        # Loop state: data order, augmentation strength, counters, stats for the report.
        self.sampler.load_state_dict(meta["sampler"])
        self.ada.load_state_dict(meta["ada"], device)
        self.images_seen, self.steps = int(meta["images_seen"]), int(meta["steps"])
        self.diversity_best = float(meta.get("diversity_best", 0.0))
        self.last_stats = dict(meta.get("last_stats", {}))
        self.best = dict(meta.get("best", {}))
        # One RNG state per rank was saved; the same ranks continue the same streams.
        if len(tensors["rng"]) == dist.world_size:
            ckpt.restore_rng(tensors["rng"][dist.rank])  # exact resume
        else:  # another number of processes: fresh, still seeded, streams
            torch.manual_seed(cfg.seed + self.images_seen + dist.rank)
        return path

    def _load_tensors(self, tensors: dict[str, Any], cfg: TrainConfig) -> None:
        """Weights, optimizer moments and loss scales; the config's lr and betas win."""
        if self.G_ema is not None and "G_ema" not in tensors:
            tensors["G_ema"] = tensors["G"]  # a run that had no EMA starts it from G
        for key, part in self._stateful().items():
            if key in tensors:
                part.load_state_dict(tensors[key])
        self.pl_mean = tensors.get("pl_mean", self.pl_mean).to(self.pl_mean.device)
        for opt, lr in ((self.opt_g, cfg.lr_g), (self.opt_d, cfg.lr_d)):
            for group in opt.param_groups:
                group["lr"], group["betas"] = lr, (cfg.beta1, cfg.beta2)


def _newest_readable(ckpt_dir: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """The newest checkpoint whose tensors load, with them (on the CPU); a damaged one is
    skipped with a warning.

    A checkpoint is written .pt first and sidecar last, so a kill cannot list a half one; a
    disk error or a bad sector still can. Falling back loses a few kimg, never the run.
    """
    for path in reversed(ckpt.list_checkpoints(ckpt_dir)):
        try:
            return path, ckpt.load_checkpoint(path, "cpu")
        except Exception as error:  # torch raises several types for a damaged file
            print(f"warning: checkpoint {path.name} cannot be read ({type(error).__name__}); "
                  "resuming from the one before it", flush=True)
    return None, None


def _to_device(value: Any, device: torch.device) -> Any:
    """Tensors of a nested checkpoint structure moved to `device` (what map_location does)."""
    if isinstance(value, torch.Tensor):
        return value.to(device)
    if isinstance(value, dict):
        return {key: _to_device(item, device) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return type(value)(_to_device(item, device) for item in value)
    return value


def _spec_mismatch(meta: dict[str, Any], spec: ModelSpec) -> str:
    """'' when the checkpoint's networks are `spec`, else what differs."""
    saved = meta.get("spec", {})
    diffs = [f"{k}: {saved.get(k)!r} -> {v!r}" for k, v in asdict(spec).items()
             if saved.get(k) != v]
    return ", ".join(diffs)
