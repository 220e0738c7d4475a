"""Differentiable augmentation (DiffAugment) with an ADA-style adaptive probability.

With few training images D memorises them and G's feedback collapses. Augmenting what D sees,
reals and fakes alike, in both the D and the G step, keeps D honest without the augmentations
leaking into G's output, because G is judged through the same transforms it cannot undo
(Zhao et al. 2020, "Differentiable Augmentation"; Karras et al. 2020, "ADA").

Every op works on (N, C, H, W) images in [-1, 1], is differentiable with respect to the images,
and is applied to each sample independently with probability `p`. p may be fixed, or steered by
`AdaptiveP`: raised when D is overconfident on reals (E[sign D(real)] above a target), lowered
otherwise. All randomness comes from torch's global generator, which checkpoints restore.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from pipeline.core.errors import UserError

TRANSLATE_RATIO = 1 / 8  # largest shift, as a fraction of the image side
CUTOUT_RATIO = 1 / 2  # side of the erased square, as a fraction of the image side


def _chosen(x: torch.Tensor, p: float) -> torch.Tensor:
    """(N, 1, 1, 1) float mask: 1 for the samples this op applies to (each with probability p)."""
    return (torch.rand(x.shape[0], 1, 1, 1, device=x.device) < p).to(x.dtype)


def brightness(x: torch.Tensor, p: float) -> torch.Tensor:
    """Add a per-sample offset in [-0.5, 0.5) (image units, [-1, 1] range)."""
    offset = torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) - 0.5
    return x + offset * _chosen(x, p)


def saturation(x: torch.Tensor, p: float) -> torch.Tensor:
    """Scale each pixel's distance from its channel mean by a factor in [0, 2)."""
    mean = x.mean(dim=1, keepdim=True)
    factor = torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) * 2
    factor = 1 + (factor - 1) * _chosen(x, p)  # factor 1 = unchanged for unchosen samples
    return (x - mean) * factor + mean


def contrast(x: torch.Tensor, p: float) -> torch.Tensor:
    """Scale each image's distance from its global mean by a factor in [0.5, 1.5)."""
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    factor = torch.rand(x.shape[0], 1, 1, 1, device=x.device, dtype=x.dtype) + 0.5
    factor = 1 + (factor - 1) * _chosen(x, p)
    return (x - mean) * factor + mean


def color(x: torch.Tensor, p: float) -> torch.Tensor:
    """Brightness, saturation and contrast, each drawn independently."""
    return contrast(saturation(brightness(x, p), p), p)


def translation(x: torch.Tensor, p: float) -> torch.Tensor:
    """Shift each image by up to 1/8 of its side in x and y, filling with zeros (mid-grey).

    Done as one gather from a zero-padded copy: output pixel (i, j) of sample n reads padded
    pixel (i + dy[n], j + dx[n]), so gradients flow back to the source pixels.
    """
    n, _, h, w = x.shape
    sy, sx = max(1, int(h * TRANSLATE_RATIO + 0.5)), max(1, int(w * TRANSLATE_RATIO + 0.5))
    chosen = _chosen(x, p).view(n, 1).long()
    # Offsets into the padded image: s means "no shift"; unchosen samples stay at s.
    dy = sy + (torch.randint(-sy, sy + 1, (n, 1), device=x.device) * chosen)
    dx = sx + (torch.randint(-sx, sx + 1, (n, 1), device=x.device) * chosen)
    padded = F.pad(x, [sx, sx, sy, sy])  # (N, C, H + 2sy, W + 2sx)
    rows = dy + torch.arange(h, device=x.device).view(1, h)  # (N, H)
    cols = dx + torch.arange(w, device=x.device).view(1, w)  # (N, W)
    batch = torch.arange(n, device=x.device).view(n, 1, 1)
    out = padded[batch, :, rows.view(n, h, 1), cols.view(n, 1, w)]  # (N, H, W, C)
    return out.permute(0, 3, 1, 2)  # (N, C, H, W), channels-last in memory


def cutout(x: torch.Tensor, p: float) -> torch.Tensor:
    """Zero (mid-grey) a square of half the image side at a random place in each image."""
    n, _, h, w = x.shape
    ch, cw = max(1, int(h * CUTOUT_RATIO + 0.5)), max(1, int(w * CUTOUT_RATIO + 0.5))
    # Top-left corner such that the square's centre lies anywhere in the image (it may be
    # clipped by the border, as in DiffAugment).
    y0 = torch.randint(0, h, (n, 1, 1), device=x.device) - ch // 2
    x0 = torch.randint(0, w, (n, 1, 1), device=x.device) - cw // 2
    ys = torch.arange(h, device=x.device).view(1, h, 1)
    xs = torch.arange(w, device=x.device).view(1, 1, w)
    inside = (ys >= y0) & (ys < y0 + ch) & (xs >= x0) & (xs < x0 + cw)  # (N, H, W)
    inside = inside & (_chosen(x, p).view(n, 1, 1) > 0)
    return x * (~inside).unsqueeze(1).to(x.dtype)


OPS: dict[str, Callable[[torch.Tensor, float], torch.Tensor]] = {
    "color": color,
    "translation": translation,
    "cutout": cutout,
}


def parse_policy(policy: str) -> tuple[str, ...]:
    """'color,translation,cutout' -> ('color', 'translation', 'cutout'); '' -> () (off)."""
    names = tuple(name.strip() for name in policy.split(",") if name.strip())
    unknown = [name for name in names if name not in OPS]
    if unknown:
        raise UserError(
            f"unknown DiffAugment op(s) {', '.join(unknown)} in {policy!r}; "
            f"allowed: {', '.join(OPS)} (comma-separated, '' = off)"
        )
    return names


def diff_augment(x: torch.Tensor, ops: tuple[str, ...], p: float) -> torch.Tensor:
    """Apply the ops in order, each to every sample with probability p. Identity if p <= 0."""
    if not ops or p <= 0:
        return x
    for name in ops:
        x = OPS[name](x, p)
    return x


class AdaptiveP:
    """ADA's controller: steer p so that E[sign(D(real))] stays near `target`.

    Every `interval` steps p moves by `images / (speed_kimg * 1000)` up or down, so it can go
    from 0 to 1 in `speed_kimg` kimg. The accumulator stays on the device (no sync per step);
    only the update reads it back.
    """

    def __init__(self, target: float, speed_kimg: float, interval: int, p: float = 0.0):
        self.target = target  # 0 = p stays fixed
        self.speed_kimg = speed_kimg  # kimg for p to travel from 0 to 1
        self.interval = interval  # steps between updates
        self.p = p  # current probability in [0, 1]
        self._sign_sum: torch.Tensor | None = None  # sum of sign(D(real)) since last update
        self._count = 0  # logits in _sign_sum
        self._steps = 0  # steps since last update

    @property
    def enabled(self) -> bool:
        return self.target > 0

    def accumulate(self, real_logits: torch.Tensor) -> None:
        """Record one step's D(real) logits (any shape)."""
        if not self.enabled:
            return
        signs = real_logits.detach().float().sign().sum()
        self._sign_sum = signs if self._sign_sum is None else self._sign_sum + signs
        self._count += real_logits.numel()
        self._steps += 1

    def maybe_update(
        self, batch_images: int, reduce: Callable[[torch.Tensor], torch.Tensor] | None = None
    ) -> None:
        """After `interval` steps, move p by one notch. `reduce` averages over ranks (DDP)."""
        if not self.enabled or self._steps < self.interval or self._sign_sum is None:
            return
        stats = torch.stack([self._sign_sum, self._sign_sum.new_tensor(float(self._count))])
        if reduce is not None:
            stats = reduce(stats)  # the mean over ranks keeps the ratio sum/count exact
        rt = float(stats[0] / stats[1])
        step = batch_images * self.interval / (self.speed_kimg * 1000)
        self.p = min(max(self.p + (step if rt > self.target else -step), 0.0), 1.0)
        self._sign_sum, self._count, self._steps = None, 0, 0

    def state_dict(self) -> dict[str, float | int]:
        """Plain values for the checkpoint (p and the pending accumulator)."""
        pending = 0.0 if self._sign_sum is None else float(self._sign_sum)
        return {"p": self.p, "sign_sum": pending, "count": self._count, "steps": self._steps}

    def load_state_dict(self, state: dict[str, float | int], device: torch.device) -> None:
        self.p = float(state["p"])
        self._count, self._steps = int(state["count"]), int(state["steps"])
        self._sign_sum = (
            torch.tensor(float(state["sign_sum"]), device=device) if self._steps else None
        )
