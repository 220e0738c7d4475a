"""The seeds' DCGAN-128 (seed 004, the Zalo motorbike RaLSGAN), generalised to 32..256 pixels.

At size 128 and width 1.0 the layers are exactly seed 004's tables:
  G: ConvT(nz->1024, 4,1,0) then 1024->512->256->128->64->32 (ConvT 4,2,1), each + BN + ReLU,
     then ConvT(32->C, 3,1,1) with bias + tanh          13,275,939 parameters (nz=128, C=3)
  D: Conv(C->32) LReLU, 32->64 LReLU, 64->128, 128->256, 256->512 each + BN + LReLU(0.2)
     (all 4,2,1, bias-free), then Conv(512->1, 4,1,0)     2,796,800 parameters
Other sizes add or drop a stride-2 block. Channels depend on the feature map's resolution, not on
the image size (G: 4096/r, D: 2048/r at an r x r map), so a 64-pixel model is the 128-pixel one
without its last block. `width` multiplies every channel count, and counts of 8 or more are
rounded to a multiple of 8: a CPU's bf16 kernels run such layers about twice as fast (146 -> 73
channels at 28 px, width 0.25, took twice as long as 144 -> 72; bench/RESULTS.md). The 28-pixel
teaching size starts from a 7x7 map (7 -> 14 -> 28), as the classic MNIST DCGAN does.

G's first layer (a transposed conv on a 1x1 latent) is computed as the matrix product it is:
the same weights and outputs, without the transposed-conv kernel that a CPU runs ten times
slower in bf16 for this shape.

Weights start from the DCGAN paper's N(0, 0.02) (BN scale N(1, 0.02)); the seed's notebook used
PyTorch's defaults, which train too but less reliably with lr 8e-4.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from pipeline.gan.models.registry import D_HEADS, ModelFamily, ModelSpec, register_model

SIZES = (28, 32, 64, 128, 256)  # image sides (pixels) the conv stacks support
G_BASE = 4096  # generator channels at an r x r map = G_BASE / r (1024 at 4x4)
D_BASE = 2048  # discriminator channels at an r x r map = D_BASE / r (512 at 4x4)
PATCH_HALVINGS = 3  # PatchGAN head: stride-2 blocks before the logit map (128 px -> 16x16)
BN_BELOW = 32  # D blocks whose output map is smaller than this get BatchNorm (seed: 16, 8, 4)
CHANNEL_MULTIPLE = 8  # channel counts from this up are rounded to a multiple of it


def channels_at(base: int, resolution: int, width: float) -> int:
    """Channel count of a feature map of side `resolution` pixels (a multiple of 8 from 8 up)."""
    channels = base / resolution * width
    if channels < CHANNEL_MULTIPLE:
        return max(1, round(channels))
    return CHANNEL_MULTIPLE * round(channels / CHANNEL_MULTIPLE)


def check_size(size: int) -> None:
    """Raise ValueError unless `size` is one of SIZES (the registry turns it into a UserError)."""
    if size not in SIZES:
        raise ValueError(f"dcgan needs an image side of {', '.join(map(str, SIZES))}, not {size}")


def base_resolution(size: int) -> int:
    """Side of the smallest feature map: halve `size` while it stays even and above 7 (4 or 7)."""
    resolution = size
    while resolution % 2 == 0 and resolution > 7:
        resolution //= 2
    return resolution


def init_dcgan_weights(module: nn.Module) -> None:
    """DCGAN initialisation: conv weights N(0, 0.02), BN scale N(1, 0.02) and shift 0."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d)):
            nn.init.normal_(m.weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.normal_(m.weight, 1.0, 0.02)
            nn.init.zeros_(m.bias)


class LatentProjection(nn.ConvTranspose2d):
    """ConvTranspose2d(nz, c, k, 1, 0) on a 1x1 latent, computed as z @ W: the same parameters
    and state-dict keys (old checkpoints load), the same outputs, a fast matmul kernel."""

    def __init__(self, nz: int, channels: int, side: int) -> None:
        super().__init__(nz, channels, side, 1, 0, bias=False)

    def forward(self, z: torch.Tensor) -> torch.Tensor:  # (N, nz, 1, 1) -> (N, c, side, side)
        weight = self.weight  # (nz, c, side, side)
        out = z.reshape(z.shape[0], -1) @ weight.reshape(weight.shape[0], -1)
        out = out.reshape(z.shape[0], *weight.shape[1:])
        # fold_batchnorm gives it a bias for generation
        return out if self.bias is None else out + self.bias.view(1, -1, 1, 1)


def _up_block(c_in: int, c_out: int, kernel: int, stride: int, padding: int) -> list[nn.Module]:
    """ConvTranspose (bias-free, BN follows) + BN + ReLU, as in the seed's `convlayer`."""
    return [
        nn.ConvTranspose2d(c_in, c_out, kernel, stride, padding, bias=False),
        nn.BatchNorm2d(c_out),
        nn.ReLU(inplace=True),
    ]


def _down_block(c_in: int, c_out: int, batchnorm: bool) -> list[nn.Module]:
    """Conv 4x4 stride 2 (bias-free) [+ BN] + LeakyReLU(0.2): halves the map."""
    block: list[nn.Module] = [nn.Conv2d(c_in, c_out, 4, 2, 1, bias=False)]
    if batchnorm:
        block.append(nn.BatchNorm2d(c_out))
    block.append(nn.LeakyReLU(0.2, inplace=True))
    return block


class Generator(nn.Module):
    """z (N, nz) -> images (N, C, size, size) in [-1, 1]."""

    def __init__(self, size: int, channels: int, nz: int, width: float = 1.0) -> None:
        super().__init__()
        check_size(size)
        self.nz = nz
        base = base_resolution(size)
        doublings = int(math.log2(size // base))
        resolutions = [base * 2**i for i in range(doublings + 1)]  # 4, 8, ..., size
        widths = [channels_at(G_BASE, r, width) for r in resolutions]
        # "Fully connected" first layer: a 1x1 latent becomes a base x base map.
        layers: list[nn.Module] = [LatentProjection(nz, widths[0], base),
                                   nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True)]
        # One stride-2 block per doubling: base -> 2 base -> ... -> size.
        for c_in, c_out in zip(widths[:-1], widths[1:]):
            layers += _up_block(c_in, c_out, 4, 2, 1)
        # To pixels at full resolution (the seed keeps this layer's bias).
        layers += [nn.ConvTranspose2d(widths[-1], channels, 3, 1, 1), nn.Tanh()]
        self.model = nn.Sequential(*layers)
        init_dcgan_weights(self)

    def forward(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        # truncation is ignored: DCGAN has no average latent to pull towards.
        return self.model(z.reshape(-1, self.nz, 1, 1))  # (N, C, size, size)


class Discriminator(nn.Module):
    """images (N, C, size, size) in [-1, 1] -> raw logits (N,), or (N, P) with `patch`.

    The PatchGAN head (pix2pix; one of the seeds' tricks) stops after PATCH_HALVINGS stride-2
    blocks and ends with a 3x3 conv: a map of logits, each judging a 38x38-pixel patch (at 32 px
    and up), so D
    looks at texture everywhere instead of at one global verdict.
    """

    def __init__(self, size: int, channels: int, width: float = 1.0, patch: bool = False) -> None:
        super().__init__()
        check_size(size)
        layers: list[nn.Module] = []
        c_in, resolution, base = channels, size, base_resolution(size)
        last = max(base, size >> PATCH_HALVINGS) if patch else base
        # Halve the map down to `last`; the first block never has BN (DCGAN rule).
        while resolution > last:
            resolution //= 2
            c_out = channels_at(D_BASE, resolution, width)
            batchnorm = bool(layers) and resolution < BN_BELOW
            layers += _down_block(c_in, c_out, batchnorm)
            c_in = c_out
        if patch:  # one logit per position of the last map
            layers.append(nn.Conv2d(c_in, 1, 3, 1, 1, bias=False))
        else:  # "fully connected" last layer: a base x base map becomes one logit
            layers.append(nn.Conv2d(c_in, 1, base, 1, 0, bias=False))
        self.model = nn.Sequential(*layers)
        self.patch = patch
        init_dcgan_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        logits = self.model(x)  # (N, 1, r, r); r = 1 for the global head
        return logits.flatten(1) if self.patch else logits.reshape(-1)  # (N, r*r) or (N,)


@register_model("dcgan")
class DCGANFamily(ModelFamily):
    """The seeds' DCGAN-128 (BatchNorm in G and D); global or PatchGAN discriminator head."""

    sizes = SIZES
    d_heads = D_HEADS
    batchnorm = True

    def generator(self, spec: ModelSpec) -> nn.Module:
        return Generator(spec.size, spec.channels, spec.nz, spec.width)

    def discriminator(self, spec: ModelSpec) -> nn.Module:
        return Discriminator(spec.size, spec.channels, spec.disc_width,
                             patch=spec.d_head == "patch")
