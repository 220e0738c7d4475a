"""The seeds' MNIST GAN (seed 001): fully connected generator and discriminator.

G maps z (N, nz) through 256-512-1024 LeakyReLU(0.2) layers to C*size*size pixels; D mirrors it
with 1024-512-256 LeakyReLU(0.2) layers, each followed by Dropout(0.3). Images are flattened, so
any side and channel count works (28x28 grey is the seed's case).

One deliberate difference from the seed: the seed's G ends in a sigmoid because its data lies in
[0, 1]; here every generator speaks [-1, 1], so G ends in tanh. D returns raw logits (the seed's
sigmoid lives in the loss as BCE-with-logits, which is numerically safer).
"""

from __future__ import annotations

import torch
from torch import nn

from pipeline.gan.models.registry import ModelFamily, ModelSpec, register_model

G_HIDDEN = (256, 512, 1024)  # seed 001 generator hidden units
D_HIDDEN = (1024, 512, 256)  # seed 001 discriminator hidden units
DROPOUT = 0.3  # seed 001 discriminator dropout


def _scaled(units: tuple[int, ...], width: float) -> list[int]:
    """Hidden sizes times the width multiplier, never below 1 unit."""
    return [max(1, round(u * width)) for u in units]


class Generator(nn.Module):
    """z (N, nz) -> images (N, C, size, size) in [-1, 1]."""

    def __init__(self, size: int, channels: int, nz: int, width: float = 1.0) -> None:
        super().__init__()
        self.size, self.channels, self.nz = size, channels, nz
        layers: list[nn.Module] = []
        fan_in = nz
        for units in _scaled(G_HIDDEN, width):
            layers += [nn.Linear(fan_in, units), nn.LeakyReLU(0.2)]
            fan_in = units
        layers += [nn.Linear(fan_in, channels * size * size), nn.Tanh()]
        self.net = nn.Sequential(*layers)

    def forward(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        # truncation is a StyleGAN idea; an MLP has no average latent to pull towards.
        flat = self.net(z.reshape(z.shape[0], self.nz))  # (N, C*size*size)
        return flat.reshape(-1, self.channels, self.size, self.size)


class Discriminator(nn.Module):
    """images (N, C, size, size) in [-1, 1] -> raw logits (N,)."""

    def __init__(self, size: int, channels: int, width: float = 1.0) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        fan_in = channels * size * size
        for units in _scaled(D_HIDDEN, width):
            layers += [nn.Linear(fan_in, units), nn.LeakyReLU(0.2), nn.Dropout(DROPOUT)]
            fan_in = units
        layers.append(nn.Linear(fan_in, 1))
        self.net = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # flatten copes with channels-last tensors (a .view would fail on them)
        return self.net(torch.flatten(x, 1)).reshape(-1)  # (N,)


@register_model("mlp")
class MLPFamily(ModelFamily):
    """The seeds' teaching GAN: fully connected, any pad size."""

    sizes = ()  # fully connected: any side
    channels_last = False  # no convolutions to gain from NHWC

    def generator(self, spec: ModelSpec) -> nn.Module:
        return Generator(spec.size, spec.channels, spec.nz, spec.width)

    def discriminator(self, spec: ModelSpec) -> nn.Module:
        return Discriminator(spec.size, spec.channels, spec.disc_width)
