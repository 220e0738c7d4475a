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
DiffAugment on everything D sees with a fixed or adaptive probability; R1 and path length where
the model family accepts them (its capabilities say so).

The state lives in `TrainState` (gan/state.py), the step's pieces in gan/steps.py; this file
wires them: setup (`_setup`), one step (`train_step`), the tick upkeep (`tick_upkeep`), export.

A run folder is persistent: rerunning resumes from its newest checkpoint, exactly (weights,
optimizers, RNG states, data order), and raising cfg.kimg continues the same run.
"""


from __future__ import annotations

import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.distributed as torch_dist
from torch import nn
from tqdm import tqdm

from pipeline.core.config import TrainConfig
from pipeline.core.device import resolve_device
from pipeline.core.distributed import (
    Dist,
    all_reduce_mean,
    broadcast_object,
    init_from_env,
    local_batch_size,
    print0,
    shutdown,
)
from pipeline.core.errors import UserError
from pipeline.core.pixels import unit_floats
from pipeline.core.schedules import Schedule, parse_schedule
from pipeline.gan import checkpoint as ckpt
from pipeline.gan.batchnorm import synchronise_batchnorm
from pipeline.gan.budget import delivery_seconds
from pipeline.gan.data import BatchReader, fits_on_device, to_device_batch
from pipeline.gan.diffaug import parse_policy
from pipeline.gan.losses import GANLoss, get_loss, lazy_weight, path_length_penalty
from pipeline.gan.models import (
    ModelFamily,
    ModelSpec,
    delivered,
    get_model,
    save_generator,
    spec_from_config,
)
from pipeline.gan.plots import make_grid, plot_losses, read_stats, save_grid, to_uint8_nhwc
from pipeline.gan.precision import Precision, configure_backends, eval_dtype, resolve_precision
from pipeline.gan.state import TrainState
from pipeline.gan.steps import (
    DiscriminatorPair,
    d_backward,
    d_input,
    diversity,
    ema_beta,
    flip_labels,
    g_backward,
    instance_noise_std,
    optimizer_step,
    reconstruction_skipped_sometimes,
    reconstruction_weight,
    sample,
    update_ema,
)
from pipeline.ingest.pack import open_pack
from pipeline.scoring.snapshots import SnapshotScorer

GRID_IMAGES = 64  # images in reals.png / fakes*.png (8 x 8), also the diversity probe
PL_INTERVAL = 4  # lazy path-length regularisation: every 4 G steps, weighted x4 (StyleGAN2)
COLLAPSE_WARMUP = 0.1  # fraction of cfg.kimg before the mode-collapse warning may fire
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
    out_of_time: bool = False  # stopped by the time budget before reaching cfg.kimg
    stopped_by: str = ""  # the budget that stopped it: "train.minutes=17" or a budget note
    best: dict[str, float] = field(default_factory=dict)  # best evaluation: kimg, kid, fid
    best_dir: Path | None = None  # the best snapshot's generator (None: no evaluation ran)


@dataclass
class Run:
    """What stays fixed during a call of `train`: settings, device, data, networks' spec."""

    cfg: TrainConfig
    dist: Dist
    precision: Precision
    images: np.ndarray  # the pack, (N, H, W, C) uint8, memory-mapped
    spec: ModelSpec
    family: ModelFamily  # what the networks can do (regularisers, aux D loss, ...)
    loss: GANLoss
    ops: tuple[str, ...]  # DiffAugment ops
    batch: int  # images per step on this rank
    target_images: int  # cfg.kimg in images
    deadline: float  # perf_counter() time at which the time budget is up (inf: no budget)
    deadline_reason: str  # which knob set it, for the summary line
    resume_source: Path | None  # checkpoints folder of train.resume_from (None: not set)
    run_dir: Path
    quiet: bool
    start_time: float  # perf_counter() at the start of this call
    schedules: dict[str, Schedule]  # multipliers over training: "lr", "gamma", "augment_p"
    real_diversity: float  # diversity of 64 real images: what a healthy G's samples approach
    scorer: SnapshotScorer | None = None  # rank 0, when train.eval_kimg > 0
    grid_z: torch.Tensor = field(init=False)  # fixed noise of every fakes*.png

    def __post_init__(self) -> None:
        generator = torch.Generator().manual_seed(self.cfg.seed)
        self.grid_z = torch.randn(GRID_IMAGES, self.cfg.nz, generator=generator).to(self.device)

    @property
    def device(self) -> torch.device:
        return self.precision.device

    @property
    def ckpt_dir(self) -> Path:
        return self.run_dir / "checkpoints"

    @property
    def stats_path(self) -> Path:
        return self.run_dir / "stats.jsonl"

    def scheduled(self, name: str, images_seen: int) -> float:
        """The multiplier of schedule `name` ("lr", "gamma", "augment_p") at this point."""
        return self.schedules[name].value(images_seen / 1000)

    def uses(self, regulariser: str, weight: float) -> bool:
        """A regulariser runs when the family accepts it and its weight is not 0."""
        return regulariser in self.family.regularisers and weight > 0


@dataclass
class TickLog:
    """Per-tick accumulators and the run's outputs for people: bar, TensorBoard, stats."""

    sums: torch.Tensor  # per-step sums of STAT_KEYS plus a step count, on the device
    bar: tqdm
    writer: object | None  # TensorBoard SummaryWriter on rank 0 while training, else None
    last_good: Path | None  # newest checkpoint, named by the NaN guard's message
    out_of_time: bool = False
    tick_start_images: int = 0
    tick_start_time: float = field(default_factory=time.perf_counter)
    data_seconds: float = 0.0  # time waiting for batches in this tick
    upkeep_seconds: float = 0.0  # time spent in tick upkeep in this call
    last_eval_images: int = -(10**12)  # images_seen at this call's last evaluation

    def close(self) -> None:
        self.bar.close()
        if self.writer is not None:
            self.writer.close()


# ----------------------------------------------------------------------------------------------
# The loop


def train(cfg: TrainConfig, pack_dir: Path, run_dir: Path, quiet: bool = False,
          reference: Path | None = None, cache_dir: Path | None = None,
          deliver_count: int = 0) -> TrainReport:
    """Train (or resume, or just re-export) the run in `run_dir` up to cfg.kimg.

    Launched by torchrun, every rank calls this; rank 0 alone writes files. With
    cfg.eval_kimg > 0, snapshots are scored against `reference` (a folder of images, e.g.
    data/clean; its Inception statistics are cached in `cache_dir`). `deliver_count` is how
    many images generate will draw afterwards (cfg.budget_minutes keeps time for them).
    """
    device_type = "cpu" if cfg.device == "cpu" or not torch.cuda.is_available() else "cuda"
    owns_group = not torch_dist.is_initialized()
    dist = init_from_env(device_type)
    try:
        run = _setup(cfg, Path(pack_dir), Path(run_dir), quiet, dist, deliver_count)
        if cfg.eval_kimg > 0 and dist.is_main:
            if reference is None or cache_dir is None:
                raise UserError("train.eval_kimg needs a reference folder (data/clean)")
            run.scorer = SnapshotScorer(Path(reference), Path(cache_dir), cfg.eval_n, cfg.nz,
                                        run.device, reference_n=cfg.eval_reference_n,
                                        dtype=eval_dtype(cfg.eval_precision, run.device))
        return _train(run)
    finally:
        if owns_group:
            shutdown(dist)


def _train(run: Run) -> TrainReport:
    cfg, dist = run.cfg, run.dist
    state = TrainState.build(cfg, run.spec, len(run.images), run.precision, dist.rank)
    resume_path = state.restore_latest(run.ckpt_dir, cfg, run.spec, dist)
    if resume_path is None and run.resume_source is not None:  # from elsewhere, read only
        resume_path = state.restore_latest(run.resume_source, cfg, run.spec, dist)
        if resume_path is None:
            raise UserError(f"train.resume_from is {cfg.resume_from!r} but {run.resume_source} "
                            "holds no readable checkpoint (ckpt-*.pt with its .json)")
        # Its best snapshot stayed behind in the other folder: evaluations here start afresh.
        state.best = {}
    resumed_from = state.images_seen
    log = _open_run_folder(run, state, resume_path is not None)
    G, D_pair = _wrap_for_ddp(run, state)
    resident = fits_on_device(run.images, run.device) and state.images_seen < run.target_images
    reader = BatchReader(run.images, state.sampler, dist, run.device, resident)
    loop_start = time.perf_counter()
    try:
        while state.images_seen < run.target_images:
            kimg_before = state.images_seen
            train_step(run, state, G, D_pair, reader, log)
            done = state.images_seen >= run.target_images or _out_of_time(run, log)
            # Upkeep at every tick, and exactly where a checkpoint, grid or evaluation is due.
            intervals = (cfg.tick_kimg, cfg.checkpoint_kimg, cfg.snapshot_kimg, cfg.eval_kimg)
            if done or any(_crossed(kimg_before, state.images_seen, every)
                           for every in intervals if every > 0):
                tick_upkeep(run, state, reader, log, kimg_before, done)
            if log.out_of_time:
                break
        loop_seconds = time.perf_counter() - loop_start
    finally:
        log.close()
        reader.close()
    final_dir = _export(run, state)
    trained = state.images_seen - resumed_from
    train_seconds = loop_seconds - log.upkeep_seconds if trained else 0.0
    return TrainReport(
        kimg_done=_kimg(state.images_seen), steps=state.steps,
        seconds=time.perf_counter() - run.start_time,
        images_per_second=trained / train_seconds if train_seconds > 0 else 0.0,
        resumed_from_kimg=_kimg(resumed_from), final_losses=state.last_stats,
        generator_dir=final_dir, train_seconds=train_seconds, out_of_time=log.out_of_time,
        stopped_by=run.deadline_reason if log.out_of_time else "",
        best=dict(state.best), best_dir=_best_dir(run, state))


def _best_dir(run: Run, state: TrainState) -> Path | None:
    """best/ when evaluations ran (rank 0 holds the record) and it exists."""
    best_dir = run.run_dir / "best"
    return best_dir if state.best and best_dir.is_dir() else None


def _setup(cfg: TrainConfig, pack_dir: Path, run_dir: Path, quiet: bool, dist: Dist,
           deliver_count: int = 0) -> Run:
    """Device, precision, the pack and the networks' spec; errors the user can fix come here."""
    start_time = time.perf_counter()
    device = resolve_device(cfg.device, "train.device", dist.local_rank)
    configure_backends(cfg, device)
    images, info = open_pack(pack_dir)  # (N, H, W, C) uint8, memory-mapped
    if info.count < 1:
        raise UserError(f"the training pack {pack_dir} is empty; check the augment stage")
    spec = spec_from_config(cfg, info.size, info.channels, info.output_size)
    # The precision and layout this run folder started with, if any. Rank 0 alone chooses (and
    # probes, on a CPU); the other ranks take its choice.
    batch = local_batch_size(cfg.batch_size, dist)
    resume_source = _resume_source(Path(cfg.resume_from)) if cfg.resume_from else None
    chosen = None
    if dist.is_main:
        recorded = _recorded_precision(run_dir)
        if recorded is None and resume_source is not None:  # continue as the source computed
            recorded = _recorded_precision(resume_source.parent)
        precision = resolve_precision(cfg, device, spec, batch, recorded)
        chosen = {"amp": str(precision.dtype), "channels_last": precision.channels_last}
    chosen = broadcast_object(chosen, dist)
    if not dist.is_main:
        precision = resolve_precision(cfg, device, spec, batch, chosen)
    # Wall-clock budget of this call (Kaggle kernels stop at 9 hours): checked every step.
    deadline, reason = math.inf, ""
    if cfg.minutes > 0:
        deadline, reason = start_time + 60 * cfg.minutes, f"train.minutes={cfg.minutes:g}"
    if cfg.budget_minutes > 0:  # timed once, on rank 0: every rank keeps the same reserve
        reserve = broadcast_object(
            delivery_seconds(spec, deliver_count, device) if dist.is_main else None, dist)
        if start_time + 60 * cfg.budget_minutes - reserve < deadline:
            deadline = start_time + 60 * cfg.budget_minutes - reserve
            reason = (f"train.budget_minutes={cfg.budget_minutes:g}, {reserve / 60:.1f} of "
                      f"them kept for generating {deliver_count:,} images")
    schedules = {name: parse_schedule(getattr(cfg, key), f"train.{key}") for name, key in
                 (("lr", "lr_decay"), ("gamma", "gamma_decay"), ("augment_p", "augment_p_decay"))}
    return Run(cfg=cfg, dist=dist, precision=precision, images=images, spec=spec,
               family=get_model(cfg.model), loss=get_loss(cfg.loss),
               ops=parse_policy(cfg.diffaugment), batch=batch,
               target_images=int(round(cfg.kimg * 1000)), deadline=deadline,
               deadline_reason=reason, resume_source=resume_source, run_dir=run_dir,
               quiet=quiet, start_time=start_time, schedules=schedules,
               real_diversity=_real_diversity(images, cfg.seed))


def _resume_source(path: Path) -> Path:
    """train.resume_from: a run folder (its checkpoints/ inside) or a checkpoints folder."""
    if not path.is_dir():
        raise UserError(f"train.resume_from is {str(path)!r}, which is not a folder; give a run "
                        "folder (data/runs/<run>) or its checkpoints/ folder")
    return path / "checkpoints" if (path / "checkpoints").is_dir() else path


def _recorded_precision(run_dir: Path) -> dict | None:
    """The autocast dtype and layout an earlier start of this run folder used
    (training_options.json: {"amp": ..., "channels_last": ...}), or None."""
    try:
        options = json.loads((run_dir / "training_options.json").read_text())
        return {key: options[key] for key in ("amp", "channels_last") if key in options}
    except (OSError, ValueError, TypeError):
        return None


def _real_diversity(images: np.ndarray, seed: int) -> float:
    """Diversity of GRID_IMAGES random reals: the level the collapse warning compares with."""
    pick = np.sort(np.random.default_rng([seed, 7]).permutation(len(images))[:GRID_IMAGES])
    return diversity(unit_floats(torch.from_numpy(np.asarray(images[pick]))))


def _wrap_for_ddp(run: Run, state: TrainState) -> tuple[nn.Module, nn.Module]:
    """G and the D pair as the step calls them: DDP-wrapped when distributed.

    Gradients are averaged over ranks in G's and the D pair's backward. The G step's D pass
    uses the bare D: D's weights get no gradient there, so there is nothing to sync.
    """
    if run.dist.enabled and run.family.batchnorm and run.cfg.sync_batchnorm:
        synchronise_batchnorm(state.G, run.device)  # in place: the optimisers' tensors stay
        synchronise_batchnorm(state.D, run.device)
    G: nn.Module = state.G
    D_pair: nn.Module = DiscriminatorPair(state.D, aux=run.family.d_aux_loss)
    if run.dist.enabled:
        ids = [run.device.index] if run.device.type == "cuda" else None
        G = nn.parallel.DistributedDataParallel(G, device_ids=ids)
        # Lazy (or no) reconstruction leaves D's decoders without gradients on some steps.
        lazy_aux = run.family.d_aux_loss and reconstruction_skipped_sometimes(
            run.cfg.recon_weight, run.cfg.recon_interval)
        D_pair = nn.parallel.DistributedDataParallel(D_pair, device_ids=ids,
                                                     find_unused_parameters=lazy_aux)
    return G, D_pair


def _open_run_folder(run: Run, state: TrainState, resumed: bool) -> TickLog:
    """Rank 0: settings, reals.png, stats trimmed to the checkpoint, TensorBoard, first grid."""
    cfg, dist = run.cfg, run.dist
    writer = None
    if dist.is_main:
        # Resolved settings first, so a crashed run still says how it was started.
        run.run_dir.mkdir(parents=True, exist_ok=True)
        options = {"config": asdict(cfg), "spec": asdict(run.spec), "device": str(run.device),
                   "amp": str(run.precision.dtype),
                   "channels_last": run.precision.channels_last, "world_size": dist.world_size,
                   "per_rank_batch": run.batch, "images": len(run.images),
                   "resumed_from_kimg": _kimg(state.images_seen)}
        ckpt.atomic_write_text(run.run_dir / "training_options.json",
                               json.dumps(options, indent=2))
        if not (run.run_dir / "reals.png").exists():
            save_grid(np.asarray(run.images[:GRID_IMAGES]), run.run_dir / "reals.png")
        if resumed:  # ticks and evaluations after the checkpoint will be rerun: drop them
            _truncate_stats(run.stats_path, state.images_seen)
            _truncate_stats(run.run_dir / "eval.jsonl", state.images_seen)
        if state.images_seen < run.target_images:
            from torch.utils.tensorboard import SummaryWriter  # slow import: only when training

            # purge_step: TensorBoard hides events past the resume point from the killed run.
            writer = SummaryWriter(str(run.run_dir / "tensorboard"), purge_step=state.images_seen)
        if state.images_seen == 0:  # what the untrained G draws, for comparison
            save_grid(sample(state.export_net, run.grid_z, run.precision),
                      run.run_dir / "fakes000000.png")
    # Counted in images (integers: no float drift), shown in kimg.
    bar = tqdm(total=run.target_images, initial=min(state.images_seen, run.target_images),
               unit="kimg", unit_scale=1 / 1000, disable=run.quiet or not dist.is_main,
               dynamic_ncols=True,
               bar_format="{l_bar}{bar}| {n:.2f}/{total:.2f} kimg [{elapsed}<{remaining}{postfix}]")
    return TickLog(sums=torch.zeros(len(STAT_KEYS) + 1, device=run.device), bar=bar,
                   writer=writer, tick_start_images=state.images_seen,
                   last_good=ckpt.latest_checkpoint(run.ckpt_dir) if dist.is_main else None)


# ----------------------------------------------------------------------------------------------
# One step


def train_step(run: Run, state: TrainState, G: nn.Module, D_pair: nn.Module,
               reader: BatchReader, log: TickLog) -> None:
    """One D step and one G step on this rank's share of the next global batch."""
    cfg, precision, device = run.cfg, run.precision, run.device
    step_start = time.perf_counter()
    # -- 1. reals: this rank's share of the next global batch, in [-1, 1]
    real = to_device_batch(reader.next(), precision)  # (b, C, H, W)
    log.data_seconds += time.perf_counter() - step_start
    # This step's trick strengths (both change slowly; reals and fakes share them).
    p, noise_std = state.ada.p, instance_noise_std(cfg, state.images_seen)
    if cfg.ada_target == 0:  # a fixed p may follow a schedule; ADA steers its own
        p = cfg.augment_p * run.scheduled("augment_p", state.images_seen)
    _set_learning_rates(run, state)

    # -- 2. fakes: one G forward; its graph is kept for the G step
    z = torch.randn(run.batch, cfg.nz, device=device)
    with precision.autocast():
        fake = G(z)  # (b, C, H, W) in [-1, 1]

    # -- 3. D step: reals up, fakes down; one backward through D only
    d_real_in, d_fake_in = flip_labels(real, fake.detach(), cfg.label_flip)
    # Augment both sides alike, so D cannot tell them apart by the augmentation.
    d_real_in = d_input(d_real_in, run.ops, p, noise_std)
    d_fake_in = d_input(d_fake_in, run.ops, p, noise_std)
    # Lazy R1 / R2: every reg_interval steps, weighted as if they ran every step.
    gamma = run.scheduled("gamma", state.images_seen)
    r1_weight, r2_weight = (
        lazy_weight(weight * gamma, cfg.reg_interval, state.steps) if run.uses(name, weight)
        else 0.0 for name, weight in (("r1", cfg.r1_gamma), ("r2", cfg.r2_gamma)))
    # Lazy reconstruction (FastGAN's D): every recon_interval steps, weighted xN likewise.
    aux_weight = reconstruction_weight(cfg.recon_weight, cfg.recon_interval, state.steps)
    loss_d, real_logits, fake_logits = d_backward(
        D_pair, state.D, run.loss, d_real_in, d_fake_in, cfg.real_label, precision,
        state.scaler_d, r1_weight, r2_weight, aux_weight)
    optimizer_step(state.opt_d, state.scaler_d)
    state.ada.accumulate(real_logits)  # how sure D is about reals drives p

    # -- 4. G step: the same fakes through the updated, frozen D
    g_fake_in = d_input(fake, run.ops, p, noise_std)
    loss_g = g_backward(state.D, run.loss, g_fake_in, real_logits, cfg.real_label, precision,
                        state.scaler_g, _path_length_term(run, state))
    optimizer_step(state.opt_g, state.scaler_g)

    # -- 5. EMA, counters, augmentation strength
    if state.G_ema is not None:
        update_ema(state.G_ema, state.G, ema_beta(cfg, cfg.batch_size, state.images_seen))
    state.images_seen += cfg.batch_size
    state.steps += 1
    state.ada.maybe_update(cfg.batch_size, lambda t: all_reduce_mean(t, run.dist))
    log.sums += torch.stack([  # stays on the device: no sync per step
        loss_d, loss_g, real_logits.mean(), fake_logits.mean(),
        (real_logits > 0).float().mean(), (fake_logits < 0).float().mean(),
        torch.ones((), device=device)])
    log.bar.update(min(cfg.batch_size, run.target_images - log.bar.n))  # tqdm breaks past total


def _set_learning_rates(run: Run, state: TrainState) -> None:
    """lr_g and lr_d times the lr schedule's multiplier at this point of training."""
    scale = run.scheduled("lr", state.images_seen)
    for optimizer, base in ((state.opt_g, run.cfg.lr_g), (state.opt_d, run.cfg.lr_d)):
        for group in optimizer.param_groups:
            group["lr"] = base * scale


def _path_length_term(run: Run, state: TrainState) -> torch.Tensor | None:
    """Lazy path-length regularisation on half a batch (already weighted), or None."""
    cfg = run.cfg
    if not (run.uses("path_length", cfg.pl_weight) and state.steps % PL_INTERVAL == 0):
        return None
    pl_z = torch.randn(max(run.batch // 2, 1), cfg.nz, device=run.device)
    pl_images, pl_ws = state.G(pl_z, return_ws=True)  # float32: double backward
    penalty, state.pl_mean = path_length_penalty(pl_images, pl_ws, state.pl_mean)
    return penalty * cfg.pl_weight * PL_INTERVAL


def _out_of_time(run: Run, log: TickLog) -> bool:
    """True when cfg.minutes is up; under DDP all ranks agree on the step (a sync per step)."""
    if run.deadline == math.inf:
        return False
    late = time.perf_counter() >= run.deadline
    if run.dist.enabled:
        flag = torch.tensor([float(late)], device=run.device)
        late = all_reduce_mean(flag, run.dist).item() > 0
    log.out_of_time = late
    return late


# ----------------------------------------------------------------------------------------------
# Tick upkeep: stats, NaN guard, diversity, snapshot, checkpoint


def tick_upkeep(run: Run, state: TrainState, reader: BatchReader, log: TickLog,
                kimg_before: int, done: bool) -> None:
    """Once per tick. Nothing here changes the training state or draws from the global RNG,
    so tick boundaries (which differ between a resumed and a straight run) leave no trace."""
    cfg = run.cfg
    sums = all_reduce_mean(log.sums.clone(), run.dist).tolist()  # one sync per tick
    upkeep_start = time.perf_counter()  # from here on, time is not training time
    row = _tick_row(run, state, log, sums)
    log.sums.zero_()
    log.data_seconds = 0.0
    if run.dist.is_main:
        _log_tick(run, state, log, row)
        if done or _crossed(kimg_before, state.images_seen, cfg.snapshot_kimg):
            fakes = row.pop("_fakes")
            save_grid(fakes, run.run_dir / f"fakes{state.images_seen // 1000:06d}.png")
            if log.writer is not None:  # the same grid where people look: TensorBoard's images
                log.writer.add_image("samples/fixed_noise", make_grid(to_uint8_nhwc(fakes)),
                                     state.images_seen, dataformats="HWC")
    # The last step is always scored (unless it just was): early in a run a few kimg move FID
    # by several points, so the final generator must not lose to an older snapshot unheard
    # (the default run once stopped 2.9 kimg after an evaluation and submitted that one).
    scored = state.images_seen == log.last_eval_images
    if run.scorer is not None and (_crossed(kimg_before, state.images_seen, cfg.eval_kimg)
                                   or (done and not scored)):
        _evaluate(run, state, log)  # rank 0; before the checkpoint, which records the best
    if done or _crossed(kimg_before, state.images_seen, cfg.checkpoint_kimg):
        saved = state.save(run.ckpt_dir, cfg, run.spec, reader.state_dict(), run.dist)
        log.last_good = saved or log.last_good
    log.upkeep_seconds += time.perf_counter() - upkeep_start
    log.tick_start_images, log.tick_start_time = state.images_seen, time.perf_counter()


def _tick_row(run: Run, state: TrainState, log: TickLog, sums: list[float]) -> dict:
    """The tick's stats.jsonl row; raises the NaN guard's UserError on a diverged run."""
    tick_stats = {key: sums[i] / sums[-1] for i, key in enumerate(STAT_KEYS)}
    if not all(math.isfinite(v) for v in tick_stats.values()):
        raise UserError(_divergence_message(_kimg(state.images_seen), tick_stats, log.last_good))
    tick_time = time.perf_counter() - log.tick_start_time
    # Diversity of the fixed-noise batch against that of real images: a G collapsed onto a few
    # outputs shows it long before FID is computed, even one that starts collapsed.
    fakes = sample(state.export_net, run.grid_z, run.precision)  # (64, C, H, W)
    spread = diversity(fakes)
    state.diversity_best = max(state.diversity_best, spread)
    # An untrained G draws near-blank images: no warning in the first tenth of the run.
    warmed_up = state.images_seen >= COLLAPSE_WARMUP * run.target_images
    ratio = run.cfg.collapse_ratio
    collapsed = ratio > 0 and warmed_up and spread < ratio * run.real_diversity
    state.last_stats = dict(tick_stats)
    return {"kimg": _kimg(state.images_seen), "step": state.steps, **tick_stats,
            "img_per_s": (state.images_seen - log.tick_start_images) / max(tick_time, 1e-9),
            "data_ms": 1000 * log.data_seconds / max(sums[-1], 1),  # per step
            "augment_p": state.ada.p, "instance_noise": instance_noise_std(run.cfg,
                                                                             state.images_seen),
            "diversity": spread, "collapse_warning": collapsed,
            "seconds": time.perf_counter() - run.start_time, "_fakes": fakes}


def _log_tick(run: Run, state: TrainState, log: TickLog, row: dict) -> None:
    """Rank 0: a stats.jsonl line, TensorBoard scalars, the bar's postfix, a collapse warning."""
    saved = {k: v for k, v in row.items() if not k.startswith("_")}
    with run.stats_path.open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(saved) + "\n")
    for key, value in saved.items():
        if key not in ("kimg", "step") and log.writer is not None:
            log.writer.add_scalar(f"train/{key}", float(value), state.images_seen)
    log.bar.set_postfix_str(f"{row['img_per_s']:.0f} img/s, D {row['loss_d']:.3f}, "
                            f"G {row['loss_g']:.3f}, acc {row['acc_real']:.2f}")
    if row["collapse_warning"]:  # loud even when quiet: the run may be wasting its time
        message = (f"warning: samples are less diverse than the real images at kimg "
                   f"{row['kimg']:.1f} ({row['diversity']:.3f} vs {run.real_diversity:.3f} for "
                   f"reals): mode collapse?")
        if run.quiet:
            print0(run.dist, message)
        else:
            tqdm.write(message)


def _evaluate(run: Run, state: TrainState, log: TickLog) -> None:
    """Score the exported generator; keep it in snapshots/ and, when it is the best, in best/.

    Rank 0 only. Scoring uses its own fixed latents and no global RNG, so it leaves the
    training trajectory unchanged (a resumed run equals a straight one).
    """
    assert run.scorer is not None
    log.last_eval_images = state.images_seen
    score = run.scorer.score(delivered(state.export_net, run.spec))  # as generate draws
    kimg = _kimg(state.images_seen)
    save_generator(state.export_net, run.spec, ckpt.snapshot_dir(run.run_dir, kimg))
    is_best = not state.best or score.kid < state.best["kid"]
    if is_best:
        state.best = {"kimg": kimg, "kid": score.kid, "fid": score.fid}
        save_generator(state.export_net, run.spec, run.run_dir / "best")
    row = {"kimg": kimg, "kid": score.kid, "fid": score.fid, "n": score.n, "best": is_best}
    with (run.run_dir / "eval.jsonl").open("a", encoding="utf-8") as handle:
        handle.write(json.dumps(row) + "\n")
    if log.writer is not None:
        log.writer.add_scalar("eval/kid", score.kid, state.images_seen)
        log.writer.add_scalar("eval/fid", score.fid, state.images_seen)
    message = (f"eval at {kimg:g} kimg: KID {score.kid:.4f}, FID {score.fid:.1f} "
               f"(n={score.n}){' best' if is_best else ''}")
    if run.quiet:
        print0(run.dist, message)
    else:
        tqdm.write(message)


def _export(run: Run, state: TrainState) -> Path:
    """Rank 0 writes final/ (also on a run that was already done: cheap, always current)."""
    final_dir = run.run_dir / "final"
    if run.dist.is_main:
        save_generator(state.export_net, run.spec, final_dir)
        rows = read_stats(run.stats_path)
        if rows:
            plot_losses(rows, run.run_dir / "losses.png")
    return final_dir


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


def _divergence_message(kimg: float, stats: dict[str, float], last: Path | None) -> str:
    where = f"last good checkpoint: {last}" if last else "no checkpoint was written yet"
    return (
        f"training diverged at kimg {kimg:.1f} (loss_d={stats['loss_d']:.4g}, "
        f"loss_g={stats['loss_g']:.4g}); lower lr_d/lr_g (e.g. halve them), use real_label < 1, "
        f"or try another loss; {where}. Changing lr, loss or another training setting starts "
        f"a new run folder from scratch; only bookkeeping knobs (kimg, minutes, intervals) "
        f"continue this one"
    )
