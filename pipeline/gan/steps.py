"""The pieces of one training step: D's and G's losses and backward passes, the tricks, EMA."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
from torch import nn
from torch.nn.utils import parametrize

from pipeline.core.config import TrainConfig
from pipeline.gan.diffaug import diff_augment
from pipeline.gan.losses import GANLoss, gradient_penalty, r1_penalty, r2_penalty
from pipeline.gan.precision import Precision


class DiscriminatorPair(nn.Module):
    """D on reals and on fakes in one forward call, as two passes (per-kind BN statistics).

    One call per D step lets DistributedDataParallel see one forward per backward. With `aux`
    (a family whose D regularises itself, such as FastGAN's reconstruction decoders), the real
    pass also returns D's auxiliary loss; otherwise that loss is a zero. Parametrised weights
    (spectral norm) are computed once for both passes, not once a pass: one power iteration
    and one normalisation a D step, and the two passes see the same weights.
    """

    def __init__(self, discriminator: nn.Module, aux: bool = False) -> None:
        super().__init__()
        self.d = discriminator
        self.aux = aux

    def forward(self, real: torch.Tensor, fake: torch.Tensor, with_aux: bool = True
                ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        with parametrize.cached():
            if self.aux and with_aux:
                real_logits, aux_loss = self.d(real, aux=True)
            else:
                real_logits, aux_loss = self.d(real), real.new_zeros(())
            return real_logits, self.d(fake), aux_loss  # (N,), (N,) logits; scalar


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


def reconstruction_weight(weight: float, interval: int, step: int) -> float:
    """Weight of FastGAN's reconstruction loss at D step `step`: weight * interval on every
    interval-th step, else 0.0 (the decoders are skipped), so its average stays `weight`.
    The lazy rule of R1 without R1's halving; weight 0 turns the loss off."""
    return weight * interval if step % interval == 0 else 0.0


def reconstruction_skipped_sometimes(weight: float, interval: int) -> bool:
    """Whether reconstruction_weight is 0 on some steps: the decoders then get no gradient
    there (DDP must be told to expect unused parameters)."""
    return weight == 0 or interval > 1


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
    r2_weight: float = 0.0,
    aux_weight: float = 1.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """D's loss and its one backward (gradients accumulate into D; no optimizer step here).

    `pair` is the DiscriminatorPair (DDP-wrapped when distributed), `d_plain` the bare D used
    for the gradient penalty. `real` and `fake` are what D sees (augmented, noised); fakes are
    detached here. R1 and R2 (weights already lazy-scaled; 0 = off) penalise the gradient of
    D's logits with respect to the reals and the fakes. `aux_weight` weighs D's own auxiliary
    loss (FastGAN's reconstruction; lazy-scaled too; 0 = not computed this step). Returns
    detached (D loss, real logits (N,), fake logits (N,)).
    """
    fake = fake.detach()
    if r1_weight > 0:
        real = real.detach().requires_grad_(True)  # R1 differentiates D(real) w.r.t. real
    if r2_weight > 0:
        fake = fake.requires_grad_(True)  # R2 differentiates D(fake) w.r.t. fake
    with precision.autocast():
        real_logits, fake_logits, aux_loss = pair(real, fake, aux_weight > 0)
    real_logits, fake_logits = real_logits.float(), fake_logits.float()  # losses in fp32
    loss_d = loss.d_loss(real_logits, fake_logits, real_label)
    total = loss_d  # plus the family's own D regulariser (a zero for most families)
    if aux_weight > 0:
        total = total + aux_weight * aux_loss.float()
    if loss.gradient_penalty_weight > 0:
        with precision.autocast():
            penalty = gradient_penalty(d_plain, real.detach(), fake.detach())
        total = total + loss.gradient_penalty_weight * penalty.float()
    if r1_weight > 0:
        total = total + r1_weight * r1_penalty(real_logits, real)
    if r2_weight > 0:
        total = total + r2_weight * r2_penalty(fake_logits, fake)
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
