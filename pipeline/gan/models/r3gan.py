"""R3GAN (Huang et al., NeurIPS 2024, "The GAN is dead; long live the GAN!"): a modern ConvNet.

The paper's baseline config E, in plain PyTorch, without normalisation layers of any kind:
- Residual blocks x + f(x), f = 1x1 conv (expand channels x EXPANSION) -> LeakyReLU(0.2) ->
  grouped 3x3 conv (GROUP_SIZE channels a group) -> LeakyReLU(0.2) -> 1x1 conv (project back).
- Fix-up initialisation: the projecting conv of every branch starts at zero, so each block is
  the identity at initialisation; the other two convs get He init scaled by L^(-1/(2m-2)) with
  L the network's number of residual blocks and m = 3 the branch depth (the paper's variance
  scaling), which keeps the output variance bounded once the branches start to learn.
- Resampling with the [1, 2, 1] binomial filter (outer product, normalised). Upsampling is
  nearest-neighbour followed by the blur, which is exactly bilinear interpolation with
  half-pixel centres (align_corners=False, edges reflected), so it runs as one F.interpolate.
  Downsampling blurs and keeps every second pixel (a strided depthwise conv); reflection
  padding keeps a constant image constant and a checkerboard flat right up to the border.
- A transition between stages changes resolution and channels: G applies the 1x1 conv (when the
  widths differ) before upsampling, D after downsampling; both linear maps commute, so this is
  the cheap order of the same function.
- G: z (N, nz) -> linear "basis" to a 4x4 map -> stages up to `size` -> 1x1 conv to pixels.
  D: 1x1 conv from pixels -> stages down to 4x4 -> flatten + linear "basis" to one logit.
G's output is unbounded in training (as in the reference, so gradients never vanish at a clamp)
and clamped to [-1, 1] in eval mode, like stylegan2.py.

Channels at an r x r map: min(CHANNEL_BASE / r, CHANNEL_MAX) x spec.width, rounded to a multiple
of GROUP_SIZE and at least GROUP_SIZE. Width 1.0 gives 512 channels at 4..32 px (the paper's
FFHQ-64 uses 768 with two blocks a stage); widths of 0.125-0.25 suit a CPU. Blocks per stage: 2
(the paper's) from width 0.5 up, 1 below. Differences from the reference: the G basis is a plain
linear layer (the reference multiplies a learned 4x4 constant by a linear projection of z), no
conditioning, no fp16 stages, no custom CUDA kernels.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.gan.models.registry import ModelFamily, ModelSpec, register_model

SIZES = (32, 64, 128, 256)  # image sides (pixels) this implementation supports
CHANNEL_BASE = 16384  # channels at an r x r map = min(CHANNEL_BASE / r, CHANNEL_MAX) x width
CHANNEL_MAX = 512  # cap on channels per stage at width 1.0
GROUP_SIZE = 16  # channels per group of the 3x3 conv (the paper's group size)
EXPANSION = 2  # inverted bottleneck: hidden channels of a residual branch = EXPANSION x width
BRANCH_DEPTH = 3  # convs per residual branch (m in the fix-up scaling L^(-1/(2m-2)))
WIDE = 0.5  # from this width up, stages hold two residual blocks (the paper's); below, one
SLOPE = 0.2  # LeakyReLU negative slope
LRELU_GAIN = math.sqrt(2 / (1 + SLOPE**2))  # He gain that keeps unit variance through LReLU


def check_size(size: int) -> None:
    """Raise ValueError unless `size` is one of SIZES (the registry turns it into a UserError)."""
    if size not in SIZES:
        raise ValueError(f"r3gan needs an image side of {', '.join(map(str, SIZES))}, not {size}")


def channels_at(resolution: int, width: float) -> int:
    """Feature channels at an r x r map: a multiple of GROUP_SIZE, at least GROUP_SIZE."""
    channels = min(CHANNEL_BASE / resolution, CHANNEL_MAX) * width
    return max(GROUP_SIZE, round(channels / GROUP_SIZE) * GROUP_SIZE)


def blocks_per_stage(width: float) -> int:
    """Residual blocks at each resolution: the paper's two on wide (GPU) nets, one on narrow."""
    return 2 if width >= WIDE else 1


def he_init(layer: nn.Conv2d | nn.Linear, gain: float) -> None:
    """Weights N(0, gain^2 / fan_in), bias zero: unit variance in, `gain`^2 variance out."""
    fan_in = layer.weight[0].numel()  # in_channels / groups x kernel area (or in_features)
    nn.init.normal_(layer.weight, 0.0, gain / math.sqrt(fan_in))
    if layer.bias is not None:
        nn.init.zeros_(layer.bias)


def binomial_kernel() -> Tensor:
    """The [1, 2, 1] low-pass filter as a 3x3 kernel summing to 1."""
    taps = torch.tensor([1.0, 2.0, 1.0])
    kernel = torch.outer(taps, taps)
    return kernel / kernel.sum()


def blur(x: Tensor, kernel: Tensor, stride: int = 1) -> Tensor:
    """Depthwise [1, 2, 1] filtering with reflected edges; stride 2 keeps pixels 0, 2, 4, ...

    (N, C, H, W) -> (N, C, H, W), or (N, C, H/2, W/2) with stride 2. Output pixel i at stride 2
    is x[2i-1]/4 + x[2i]/2 + x[2i+1]/4 per axis, so only the top and left edges need padding.
    """
    channels = x.shape[1]
    weight = kernel.to(x.dtype).expand(channels, 1, 3, 3)  # (C, 1, 3, 3)
    pad = (1, 1, 1, 1) if stride == 1 else (1, 0, 1, 0)  # (left, right, top, bottom)
    return F.conv2d(F.pad(x, pad, mode="reflect"), weight, stride=stride, groups=channels)


class Downsample(nn.Module):
    """[1, 2, 1] blur and stride 2: (N, C, H, W) -> (N, C, H/2, W/2)."""

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("kernel", binomial_kernel(), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        return blur(x, self.kernel, stride=2)


class Upsample(nn.Module):
    """Nearest x2 then [1, 2, 1] blur: (N, C, H, W) -> (N, C, 2H, 2W).

    Per axis that gives out[2i] = x[i-1]/4 + 3x[i]/4 and out[2i+1] = 3x[i]/4 + x[i+1]/4, with the
    edge sample repeated: bilinear interpolation at half-pixel centres, which F.interpolate does
    in one pass (a test checks the two agree).
    """

    def forward(self, x: Tensor) -> Tensor:
        return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


class ResidualBlock(nn.Module):
    """x + (1x1 expand -> LReLU -> grouped 3x3 -> LReLU -> 1x1 project); identity at init."""

    def __init__(self, channels: int, total_blocks: int) -> None:
        super().__init__()
        hidden = channels * EXPANSION
        group = min(GROUP_SIZE, hidden)
        if hidden % group:
            raise ValueError(f"hidden channels {hidden} are not a multiple of {group}")
        self.expand = nn.Conv2d(channels, hidden, 1)
        self.conv = nn.Conv2d(hidden, hidden, 3, padding=1, groups=hidden // group)
        self.project = nn.Conv2d(hidden, channels, 1, bias=False)
        # Fix-up: variance scaling by L^(-1/(2m-2)) on the first m - 1 layers, zero on the last.
        scale = total_blocks ** (-1 / (2 * BRANCH_DEPTH - 2))
        he_init(self.expand, LRELU_GAIN * scale)
        he_init(self.conv, LRELU_GAIN * scale)
        nn.init.zeros_(self.project.weight)

    def branch(self, x: Tensor) -> Tensor:
        """The residual f(x): (N, C, H, W) -> (N, C, H, W); all zeros at initialisation."""
        y = F.leaky_relu(self.expand(x), SLOPE)  # (N, hidden, H, W)
        y = F.leaky_relu(self.conv(y), SLOPE)  # (N, hidden, H, W)
        return self.project(y)

    def forward(self, x: Tensor) -> Tensor:
        return x + self.branch(x)


def channel_map(c_in: int, c_out: int) -> nn.Module:
    """Bias-free 1x1 conv between stage widths (unit gain), or nothing when they are equal."""
    if c_in == c_out:
        return nn.Identity()
    conv = nn.Conv2d(c_in, c_out, 1, bias=False)
    he_init(conv, 1.0)
    return conv


def stage_widths(size: int, width: float, descending: bool) -> tuple[list[int], list[int]]:
    """Resolutions 4..size (or size..4) and the channels at each."""
    resolutions = [2**i for i in range(2, int(math.log2(size)) + 1)]
    if descending:
        resolutions.reverse()
    return resolutions, [channels_at(r, width) for r in resolutions]


# ----------------------------------------------------------------------------------------------
# Networks


class Generator(nn.Module):
    """z (N, nz) -> images (N, channels, size, size); in [-1, 1] (clamped) in eval mode only."""

    def __init__(self, size: int, channels: int, nz: int, width: float = 1.0) -> None:
        super().__init__()
        check_size(size)
        resolutions, widths = stage_widths(size, width, descending=False)
        blocks = blocks_per_stage(width)
        total = blocks * len(resolutions)
        self.nz, self.c4 = nz, widths[0]
        self.basis = nn.Linear(nz, widths[0] * 16)  # z -> a 4x4 map
        he_init(self.basis, 1.0)
        stages = []
        for i, c in enumerate(widths):
            layers = [] if i == 0 else [channel_map(widths[i - 1], c), Upsample()]
            stages.append(nn.Sequential(*layers, *[ResidualBlock(c, total) for _ in range(blocks)]))
        self.stages = nn.Sequential(*stages)
        self.to_image = nn.Conv2d(widths[-1], channels, 1)
        he_init(self.to_image, 1.0)

    def forward(self, z: Tensor, truncation: float = 1.0) -> Tensor:
        """Images (N, C, size, size); `truncation` is accepted and ignored (no mapping net)."""
        n = z.shape[0]
        x = self.basis(z.reshape(n, self.nz)).reshape(n, self.c4, 4, 4)  # (N, c4, 4, 4)
        img = self.to_image(self.stages(x))  # (N, C, size, size), unbounded
        return img if self.training else img.clamp(-1, 1)


class Discriminator(nn.Module):
    """images (N, channels, size, size) in [-1, 1] -> raw logits (N,)."""

    def __init__(self, size: int, channels: int, width: float = 1.0) -> None:
        super().__init__()
        check_size(size)
        resolutions, widths = stage_widths(size, width, descending=True)
        blocks = blocks_per_stage(width)
        total = blocks * len(resolutions)
        self.from_image = nn.Conv2d(channels, widths[0], 1)
        he_init(self.from_image, 1.0)
        stages = []
        for i, c in enumerate(widths):
            layers: list[nn.Module] = [ResidualBlock(c, total) for _ in range(blocks)]
            if i + 1 < len(widths):
                layers += [Downsample(), channel_map(c, widths[i + 1])]
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.basis = nn.Linear(widths[-1] * 16, 1)  # the 4x4 map -> one logit
        he_init(self.basis, 1.0)

    def forward(self, x: Tensor) -> Tensor:
        x = self.stages(self.from_image(x))  # (N, c4, 4, 4)
        return self.basis(x.flatten(1)).reshape(-1)  # (N,)


@register_model("r3gan")
class R3GANFamily(ModelFamily):
    """R3GAN: normalisation-free residual ConvNet for the RpGAN loss with R1 + R2."""

    sizes = SIZES
    regularisers = ("r1", "r2")
    has_mapping = False
    batchnorm = False
    channels_last = True
    # The paper's FFHQ-64 preset at its start values (it anneals gamma 2 -> 0.2, lr 2e-4 -> 5e-5
    # and beta2 0.9 -> 0.99 over 20M images, and ramps the EMA half-life up to 500 kimg).
    recipe = {
        "loss": "rpgan",
        "r1_gamma": 2.0,
        "r2_gamma": 2.0,
        "lr_g": 2e-4,
        "lr_d": 2e-4,
        "beta1": 0.0,
        "beta2": 0.99,
        "ema_kimg": 500.0,
        "batch_size": 256,
    }

    def check(self, spec: ModelSpec) -> None:
        check_size(spec.size)

    def generator(self, spec: ModelSpec) -> nn.Module:
        return Generator(size=spec.size, channels=spec.channels, nz=spec.nz, width=spec.width)

    def discriminator(self, spec: ModelSpec) -> nn.Module:
        return Discriminator(size=spec.size, channels=spec.channels, width=spec.disc_width)
