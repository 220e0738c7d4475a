"""GAN losses by name, and the gradient penalties that go with them.

Every loss works on raw discriminator logits (no sigmoid anywhere in the networks), shaped (N,)
or (N, P) for a PatchGAN head, and averages over all of them. Each is a small class with
`d_loss(real_logits, fake_logits, real_label)` and `g_loss(...)`. Conventions:

- D losses add their real and fake terms (Goodfellow's minimax, StyleGAN2's logistic loss, the
  hinge loss), except where the source halves them: LSGAN's 1/2 factors and seed 004's RaLSGAN.
  Keeping StyleGAN2's scale matters because R1's gamma is tuned against it.
- `real_label` is the target for reals (soft labels: seed 004 uses 0.8). It moves D's real
  target in the BCE and least-squares losses, and G's target where the formula has one
  (LSGAN with c = b, RaLSGAN as in seed 004). Hinge, WGAN and RpGAN have no targets and
  ignore it.
- Relativistic losses compare reals with fakes (RaLSGAN: each side with the other's mean,
  the global batch's under DDP (`batch_mean`);
  RpGAN: real i with fake i), so their G step needs the real logits too
  (`uses_real_logits_in_g`); the others accept None there.
- WGAN-GP's penalty is computed by `gradient_penalty` and weighted by the training loop with
  `gradient_penalty_weight`, since it needs D itself rather than logits.
- R1 (reals) and R2 (fakes) return the unweighted mean squared gradient norm; the caller
  multiplies by gamma / 2, or by `lazy_weight(gamma, interval, step)` when applied lazily.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TypeVar

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.core.distributed import group_running
from pipeline.core.errors import UserError


class GANLoss:
    """Base class: the flags the training loop reads, and the two losses to override."""

    name: str = ""  # set by register_loss
    uses_real_logits_in_g: bool = False  # G step needs real logits (the D step's, detached)
    gradient_penalty_weight: float = 0.0  # weight of `gradient_penalty` in D's loss (WGAN-GP)

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor, real_label: float = 1.0) -> Tensor:
        """Scalar loss D minimises; fake_logits come from detached fakes."""
        raise NotImplementedError

    def g_loss(
        self, real_logits: Tensor | None, fake_logits: Tensor, real_label: float = 1.0
    ) -> Tensor:
        """Scalar loss G minimises; real_logits may be detached (or None when not used)."""
        raise NotImplementedError


LOSSES: dict[str, GANLoss] = {}
LossClass = TypeVar("LossClass", bound=type)


def register_loss(name: str) -> Callable[[LossClass], LossClass]:
    """Class decorator: put one instance of a GANLoss subclass into LOSSES under `name`."""

    def add(cls: LossClass) -> LossClass:
        if name in LOSSES:
            raise ValueError(f"loss {name!r} registered twice")
        loss = cls()
        loss.name = name
        LOSSES[name] = loss
        return cls

    return add


def get_loss(name: str) -> GANLoss:
    """The loss registered as `name`; a bad name raises UserError listing the valid ones."""
    if name not in LOSSES:
        raise UserError(f"unknown loss {name!r}; set train.loss to one of: {', '.join(LOSSES)}.")
    return LOSSES[name]


def batch_mean(logits: Tensor) -> Tensor:
    """Mean over the global batch. Under DDP each rank holds a share of it: the shares are
    gathered with the autograd-aware all_gather of torch.distributed.nn, so a relativistic loss
    compares with the mean one process on the whole batch would (gradients flow back to every
    rank's own logits). Plain mean in one process."""
    if group_running():
        from torch.distributed.nn.functional import all_gather

        return torch.cat(all_gather(logits.contiguous())).mean()
    return logits.mean()


def _bce(logits: Tensor, target: float) -> Tensor:
    """Mean binary cross-entropy of sigmoid(logits) against a constant target in [0, 1]."""
    return F.binary_cross_entropy_with_logits(logits, torch.full_like(logits, target))


def _need_real(real_logits: Tensor | None, name: str) -> Tensor:
    if real_logits is None:
        raise ValueError(f"the {name} G loss needs the real logits (uses_real_logits_in_g)")
    return real_logits


# ----------------------------------------------------------------------------------------------
# The losses


@register_loss("minimax")
class Minimax(GANLoss):
    """Goodfellow et al. (seed 001/002): D: -log D(x) - log(1 - D(G(z))); G: log(1 - D(G(z))).

    G's loss saturates when D wins (its gradient vanishes); kept because the seeds teach it.
    """

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor, real_label: float = 1.0) -> Tensor:
        return _bce(real_logits, real_label) + _bce(fake_logits, 0.0)

    def g_loss(
        self, real_logits: Tensor | None, fake_logits: Tensor, real_label: float = 1.0
    ) -> Tensor:
        # log(1 - sigmoid(f)) = -softplus(f)
        return -F.softplus(fake_logits).mean()


@register_loss("nonsaturating")
class NonSaturating(Minimax):
    """The "modified minimax" (seed 002) and StyleGAN2's logistic loss: G: -log D(G(z)).

    D's loss is minimax's. G's target stays 1: one-sided label smoothing softens only D.
    """

    def g_loss(
        self, real_logits: Tensor | None, fake_logits: Tensor, real_label: float = 1.0
    ) -> Tensor:
        # -log sigmoid(f) = softplus(-f)
        return F.softplus(-fake_logits).mean()


@register_loss("lsgan")
class LSGAN(GANLoss):
    """Mao et al.: D: 1/2 E[(D(x) - b)^2] + 1/2 E[D(G(z))^2]; G: 1/2 E[(D(G(z)) - b)^2], b = y."""

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor, real_label: float = 1.0) -> Tensor:
        return 0.5 * (real_logits - real_label).square().mean() + 0.5 * fake_logits.square().mean()

    def g_loss(
        self, real_logits: Tensor | None, fake_logits: Tensor, real_label: float = 1.0
    ) -> Tensor:
        return 0.5 * (fake_logits - real_label).square().mean()


@register_loss("ralsgan")
class RaLSGAN(GANLoss):
    """Relativistic average LSGAN exactly as seed 004 writes it (y = real_label):

    errD = (mean((R - mean(F) - y)^2) + mean((F - mean(R) + y)^2)) / 2
    errG = (mean((R - mean(F) + y)^2) + mean((F - mean(R) - y)^2)) / 2
    """

    uses_real_logits_in_g = True

    @staticmethod
    def _pair(real: Tensor, fake: Tensor, y: float) -> Tensor:
        """Half the sum of squared distances of each side from the other's mean +- y."""
        real_vs_fake = (real - batch_mean(fake) - y).square().mean()  # reals y above fakes
        fake_vs_real = (fake - batch_mean(real) + y).square().mean()  # fakes y below reals
        return (real_vs_fake + fake_vs_real) / 2

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor, real_label: float = 1.0) -> Tensor:
        return self._pair(real_logits, fake_logits, real_label)

    def g_loss(
        self, real_logits: Tensor | None, fake_logits: Tensor, real_label: float = 1.0
    ) -> Tensor:
        # G wants the mirror image: fakes y above reals' mean, reals y below fakes' mean.
        return self._pair(_need_real(real_logits, self.name), fake_logits, -real_label)


@register_loss("hinge")
class Hinge(GANLoss):
    """Geometric GAN / SAGAN: D: E[relu(1 - D(x))] + E[relu(1 + D(G(z)))]; G: -E[D(G(z))]."""

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor, real_label: float = 1.0) -> Tensor:
        return F.relu(1 - real_logits).mean() + F.relu(1 + fake_logits).mean()

    def g_loss(
        self, real_logits: Tensor | None, fake_logits: Tensor, real_label: float = 1.0
    ) -> Tensor:
        return -fake_logits.mean()


@register_loss("wgan-gp")
class WGANGP(GANLoss):
    """Gulrajani et al.: critic D: E[D(G(z))] - E[D(x)] + 10 * gradient penalty; G: -E[D(G(z))].

    The penalty assumes per-sample gradients, which BatchNorm in D mixes across the batch;
    it still trains, but a BN-free critic is the textbook setting.
    """

    gradient_penalty_weight = 10.0

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor, real_label: float = 1.0) -> Tensor:
        return fake_logits.mean() - real_logits.mean()

    def g_loss(
        self, real_logits: Tensor | None, fake_logits: Tensor, real_label: float = 1.0
    ) -> Tensor:
        return -fake_logits.mean()


@register_loss("rpgan")
class RpGAN(GANLoss):
    """Relativistic pairing GAN (Jolicoeur-Martineau; R3GAN's loss), real i paired with fake i:

    D: mean softplus(-(D(x_i) - D(G(z_i))));  G: mean softplus(-(D(G(z_i)) - D(x_i))).

    Pairing is per sample (per patch for (N, P) logits), not against the other side's mean
    (that is RaGAN), so both sides must have the same shape. There is no target: soft labels do
    not apply and `real_label` is ignored. R3GAN pairs it with R1 + R2 (`r2_penalty`).
    """

    uses_real_logits_in_g = True

    @staticmethod
    def _paired(winner: Tensor, loser: Tensor) -> Tensor:
        """Mean softplus(-(winner - loser)): small when each winner logit beats its partner."""
        if winner.shape != loser.shape:
            raise ValueError(
                f"rpgan pairs real i with fake i: logits {tuple(winner.shape)} and "
                f"{tuple(loser.shape)} differ in shape"
            )
        return F.softplus(loser - winner).mean()

    def d_loss(self, real_logits: Tensor, fake_logits: Tensor, real_label: float = 1.0) -> Tensor:
        return self._paired(real_logits, fake_logits)

    def g_loss(
        self, real_logits: Tensor | None, fake_logits: Tensor, real_label: float = 1.0
    ) -> Tensor:
        return self._paired(fake_logits, _need_real(real_logits, self.name))


# ----------------------------------------------------------------------------------------------
# Penalties


def gradient_penalty(discriminator: nn.Module, real: Tensor, fake: Tensor) -> Tensor:
    """WGAN-GP: E[(||grad_x D(x_hat)||_2 - 1)^2] at random points between reals and fakes.

    `real` and `fake` are (N, C, H, W) in [-1, 1]; fakes are detached here. The result keeps its
    graph (create_graph) so D's optimiser step sees the penalty's own gradient.
    """
    # One mixing weight per image, uniform in [0, 1): points on the segments real -> fake.
    mix = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)  # (N,1,1,1)
    points = (mix * real.detach() + (1 - mix) * fake.detach()).requires_grad_(True)
    (grad,) = torch.autograd.grad(discriminator(points).sum(), points, create_graph=True)
    norms = grad.flatten(1).norm(2, dim=1)  # (N,) per-image gradient norm
    return (norms - 1).square().mean()


def r1_penalty(real_logits: Tensor, real_images: Tensor) -> Tensor:
    """R1 (Mescheder et al., StyleGAN2): E[||grad_x D(x)||^2] on reals, graph kept.

    `real_images` must have had requires_grad_(True) before D saw them. The caller weights it by
    gamma / 2 (times the lazy-regularisation interval when applied every k steps).
    """
    return _squared_gradient_norm(real_logits, real_images)


def r2_penalty(fake_logits: Tensor, fake_images: Tensor) -> Tensor:
    """R2 (Mescheder et al., R3GAN): E[||grad_x D(x)||^2] on fakes, graph kept; R1's mirror.

    `fake_images` must be detached from G and have had requires_grad_(True) before D saw them,
    so the penalty trains D only. Same convention as r1_penalty: unweighted, mean over images of
    the squared gradient norm of the summed logits; the caller weights it by gamma / 2 (or
    `lazy_weight`). R3GAN uses one gamma for R1 and R2.
    """
    return _squared_gradient_norm(fake_logits, fake_images)


def _squared_gradient_norm(logits: Tensor, images: Tensor) -> Tensor:
    """Mean over images of ||d sum(logits) / d image||^2; logits (N,) or (N, P)."""
    # Summing the logits gives each image its own gradient (images do not interact in D,
    # minibatch-std aside), and create_graph lets the penalty train D (it also retains the
    # graph, so R1 and R2 can both be taken from one D step).
    (grad,) = torch.autograd.grad(logits.sum(), images, create_graph=True)
    return grad.square().flatten(1).sum(1).mean()  # mean over images of ||grad||^2


def lazy_weight(gamma: float, interval: int, step: int) -> float:
    """Weight of an R1 / R2 penalty at D step `step` under StyleGAN2's lazy regularisation.

    The penalty runs every `interval` steps, scaled up by `interval` so its average weight stays
    gamma / 2: gamma / 2 * interval when step % interval == 0, else 0.0 (skip computing it).
    interval = 1 is the plain every-step form R3GAN uses. Replaces the loop's inline
    `cfg.r1_gamma / 2 * R1_INTERVAL if steps % R1_INTERVAL == 0 else 0.0`.
    """
    if interval < 1:
        raise ValueError(f"lazy regularisation interval must be >= 1 step, got {interval}")
    return gamma / 2 * interval if step % interval == 0 else 0.0


def path_length_penalty(
    images: Tensor, ws: Tensor, mean_length: Tensor, decay: float = 0.01
) -> tuple[Tensor, Tensor]:
    """StyleGAN2 path-length regulariser: (penalty, updated running mean of the lengths).

    `images` (N, C, H, W) must come from `ws` (N, num_ws, w_dim) through the generator with the
    graph kept. The Jacobian-vector product with pixel noise scaled by 1/sqrt(H*W) gives each
    sample's path length; the penalty pulls it towards its running mean (a 0-dim tensor, start
    at 0). The caller weights it by pl_weight (times the lazy interval).
    """
    # Random image-space direction y, scaled so the length does not depend on resolution.
    noise = torch.randn_like(images) / (images.shape[2] * images.shape[3]) ** 0.5
    (grad,) = torch.autograd.grad((images * noise).sum(), ws, create_graph=True)
    # ||J^T y|| per sample, averaged over the num_ws copies of w: grad is (N, num_ws, w_dim).
    lengths = grad.square().sum(2).mean(1).sqrt()  # (N,) one length per sample
    new_mean = mean_length.detach().lerp(lengths.mean().detach(), decay)
    return (lengths - new_mean).square().mean(), new_mean
