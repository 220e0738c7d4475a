"""StyleGAN2 (Karras et al. 2020) in plain PyTorch, sized for small data and small machines.

Generator: a mapping network turns z into w (z normalised by its second moment, fully connected
layers at 1/100 learning rate); a learned constant 4x4 map is refined by modulated 3x3
convolutions whose weights are scaled per sample by a style from w and then demodulated (each
output channel's weights renormalised to unit norm), with per-pixel noise of learned strength
after every convolution. The output is a "skip" sum: every resolution has its own toRGB layer,
and the running RGB image is upsampled and added to. A running average of w (w_avg) makes the
truncation trick possible: w = w_avg + psi * (w - w_avg).
Discriminator: residual blocks (two 3x3 convolutions beside a 1x1 shortcut, summed and scaled by
1/sqrt(2)) down to 4x4, then minibatch standard deviation, a convolution and two dense layers.

Every weight uses the equalised learning rate (stored N(0, 1), scaled by 1/sqrt(fan_in) at run
time). Resampling uses the [1, 3, 3, 1] FIR filter as depthwise convolutions. Differences from
the reference, all for simplicity: the discriminator blur-downsamples before its second 3x3
convolution (instead of a strided one; same cost), there is no fp16 clamping or custom CUDA
kernel, and the generator's output is clamped to [-1, 1] in eval mode only (in training it is
unbounded, as in the reference, so gradients never vanish at the clamp).

Channels at an r x r feature map: min(channel_base / r, channel_max). The official 256-pixel
configuration is 16384 and 512; our defaults (4096, 128) cut the compute per layer 16-fold, to
about the seeds' DCGAN-128 (1.4M + 1.5M parameters at 128 pixels), so a CPU run stays feasible.
On a GPU, 16384 and 512 are the paper's setting.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from pipeline.gan.models.registry import ModelFamily, ModelSpec, register_model

SIZES = (32, 64, 128, 256)  # image sides (pixels) this implementation supports
MAPPING_LR = 0.01  # learning-rate multiplier of the mapping network (reference value)
W_AVG_BETA = 0.995  # decay of the running average of w, per training forward pass
MBSTD_GROUP = 4  # samples per group in the minibatch standard deviation layer
SQRT2 = math.sqrt(2)
NOISE_MODES = ("random", "const", "none")


def check_arch(
    size: int, w_dim: int, mapping_layers: int, channel_base: int, channel_max: int,
    style_mixing: float,
) -> None:
    """Raise ValueError with the reason when these settings cannot build a network."""
    if size not in SIZES:
        raise ValueError(f"stylegan2 needs an image side of {', '.join(map(str, SIZES))}")
    if w_dim < 1 or mapping_layers < 1:
        raise ValueError("w_dim and mapping_layers must be at least 1")
    if channel_max < 1 or channel_base // size < 1:
        raise ValueError(f"channel_base must be >= the image side ({size}), channel_max >= 1")
    if not 0 <= style_mixing <= 1:
        raise ValueError("style_mixing is a probability in [0, 1]")


def channels_at(resolution: int, channel_base: int, channel_max: int) -> int:
    """Feature channels at an r x r map."""
    return min(channel_base // resolution, channel_max)


def lrelu(x: Tensor) -> Tensor:
    """LeakyReLU(0.2) times sqrt(2), which keeps activations' variance about 1 (reference)."""
    return F.leaky_relu(x, 0.2) * SQRT2


# ----------------------------------------------------------------------------------------------
# Building blocks: equalised layers, FIR resampling


class EqualLinear(nn.Module):
    """Dense layer with equalised learning rate and an optional learning-rate multiplier."""

    def __init__(self, fan_in: int, fan_out: int, bias_init: float = 0.0,
                 lr_mult: float = 1.0, activate: bool = False) -> None:
        super().__init__()
        # Stored weights are N(0, 1/lr_mult^2); the run-time gain brings them back, so Adam's
        # step (about lr in stored units) moves the effective weight by lr * lr_mult.
        self.weight = nn.Parameter(torch.randn(fan_out, fan_in) / lr_mult)
        self.bias = nn.Parameter(torch.full((fan_out,), bias_init / lr_mult))
        self.weight_gain = lr_mult / math.sqrt(fan_in)
        self.lr_mult, self.activate = lr_mult, activate

    def forward(self, x: Tensor) -> Tensor:
        x = F.linear(x, self.weight * self.weight_gain, self.bias * self.lr_mult)
        return lrelu(x) if self.activate else x


class EqualConv2d(nn.Module):
    """Convolution (stride 1, 'same' padding) with equalised learning rate."""

    def __init__(self, c_in: int, c_out: int, kernel: int, bias: bool = True,
                 activate: bool = False) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.bias = nn.Parameter(torch.zeros(c_out)) if bias else None
        self.weight_gain = 1 / math.sqrt(c_in * kernel * kernel)
        self.activate = activate

    def forward(self, x: Tensor) -> Tensor:
        pad = self.weight.shape[-1] // 2
        x = F.conv2d(x, self.weight * self.weight_gain, self.bias, padding=pad)
        return lrelu(x) if self.activate else x


def fir_kernel() -> Tensor:
    """The [1, 3, 3, 1] low-pass filter as a 4x4 kernel summing to 1."""
    taps = torch.tensor([1.0, 3.0, 3.0, 1.0])
    kernel = torch.outer(taps, taps)
    return kernel / kernel.sum()


def depthwise_fir(x: Tensor, kernel: Tensor, stride: int = 1, padding: int = 1,
                  transpose: bool = False) -> Tensor:
    """Apply a 4x4 FIR kernel to every channel on its own (a grouped convolution)."""
    channels = x.shape[1]
    weight = kernel.to(x.dtype).expand(channels, 1, 4, 4).contiguous()  # (C, 1, 4, 4)
    conv = F.conv_transpose2d if transpose else F.conv2d
    return conv(x, weight, stride=stride, padding=padding, groups=channels)


class Resample(nn.Module):
    """Filtered 2x up- or downsampling, depthwise (each channel on its own)."""

    def __init__(self, up: bool) -> None:
        super().__init__()
        self.up = up
        # Upsampling inserts zeros, so the filter needs gain 4 to keep the mean brightness.
        self.register_buffer("kernel", fir_kernel() * (4 if up else 1), persistent=False)

    def forward(self, x: Tensor) -> Tensor:
        # up: (N, C, H, W) -> (N, C, 2H, 2W); down: -> (N, C, H/2, W/2)
        return depthwise_fir(x, self.kernel, stride=2, padding=1, transpose=self.up)


# ----------------------------------------------------------------------------------------------
# Generator


class MappingNetwork(nn.Module):
    """z (N, z_dim) -> w (N, w_dim): normalise z, then fully connected layers at lr x 0.01."""

    def __init__(self, z_dim: int, w_dim: int, layers: int) -> None:
        super().__init__()
        dims = [z_dim] + [w_dim] * layers
        self.net = nn.Sequential(*[
            EqualLinear(a, b, lr_mult=MAPPING_LR, activate=True) for a, b in zip(dims, dims[1:])
        ])

    def forward(self, z: Tensor) -> Tensor:
        z = z * torch.rsqrt(z.square().mean(dim=1, keepdim=True) + 1e-8)  # unit second moment
        return self.net(z)


class ModulatedConv2d(nn.Module):
    """Convolution whose weights are scaled per sample by a style and (optionally) demodulated.

    fused=True runs one grouped convolution with a weight per sample (the paper's formulation);
    fused=False scales activations before and after a shared convolution instead, which is
    mathematically identical and usually faster for training batches. With up=True the
    convolution is transposed with stride 2 (output 2H+1) and a [1, 3, 3, 1] blur brings it to
    2H, a quarter of the work of upsampling first and convolving at the higher resolution.
    """

    def __init__(self, c_in: int, c_out: int, kernel: int, w_dim: int, demodulate: bool = True,
                 up: bool = False, fused: bool = False) -> None:
        super().__init__()
        self.affine = EqualLinear(w_dim, c_in, bias_init=1.0)  # w -> style (N, c_in), starts at 1
        self.weight = nn.Parameter(torch.randn(c_out, c_in, kernel, kernel))
        self.weight_gain = 1 / math.sqrt(c_in * kernel * kernel)
        if up and kernel != 3:
            raise ValueError("upsampling modulated convolutions are 3x3")
        self.demodulate, self.up, self.fused = demodulate, up, fused
        # Zero insertion by the stride-2 transpose needs gain 4 to keep the mean brightness.
        self.register_buffer("blur", fir_kernel() * 4, persistent=False)

    def modulated_weight(self, w: Tensor) -> Tensor:
        """Per-sample weights (N, c_out, c_in, k, k); with demodulation each (n, out) slice has
        unit L2 norm, which keeps output activations at unit variance without normalising them."""
        styles = self.affine(w)  # (N, c_in)
        weight = self.weight[None] * self.weight_gain * styles[:, None, :, None, None]
        if self.demodulate:
            norms = weight.square().sum(dim=(2, 3, 4), keepdim=True)  # (N, c_out, 1, 1, 1)
            weight = weight * torch.rsqrt(norms + 1e-8)
        return weight

    def _conv(self, x: Tensor, weight: Tensor, groups: int) -> Tensor:
        """Plain conv ('same' padding) or, when upsampling, stride-2 transpose + blur."""
        if not self.up:
            return F.conv2d(x, weight, padding=weight.shape[-1] // 2, groups=groups)
        # conv_transpose2d wants (in, out/groups, k, k): swap the out and in axes per group.
        c_out, c_in, k = weight.shape[0] // groups, weight.shape[1], weight.shape[-1]
        weight = weight.reshape(groups, c_out, c_in, k, k).transpose(1, 2)
        x = F.conv_transpose2d(x, weight.reshape(groups * c_in, c_out, k, k), stride=2,
                               groups=groups)  # (.., 2H+1, 2W+1) for k = 3
        return depthwise_fir(x, self.blur, padding=1)  # (.., 2H, 2W)

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        n, c_in, h, wd = x.shape
        if self.fused:
            weight = self.modulated_weight(w)  # (N, c_out, c_in, k, k)
            c_out = weight.shape[1]
            out = self._conv(x.reshape(1, n * c_in, h, wd),
                             weight.reshape(n * c_out, c_in, *weight.shape[3:]), groups=n)
            return out.reshape(n, c_out, *out.shape[2:])  # (N, c_out, H', W')
        # Unfused: scale inputs by the style, convolve, scale outputs by the demod coefficients.
        styles = self.affine(w)  # (N, c_in)
        weight = self.weight * self.weight_gain  # (c_out, c_in, k, k)
        out = self._conv(x * styles[:, :, None, None], weight, groups=1)  # (N, c_out, H', W')
        if self.demodulate:
            # sum over (in, k, k) of (weight * style)^2 = (style^2) @ sum_k(weight^2)
            norms = styles.square() @ weight.square().sum(dim=(2, 3)).t()  # (N, c_out)
            out = out * torch.rsqrt(norms + 1e-8)[:, :, None, None]
        return out


class SynthesisLayer(nn.Module):
    """Modulated 3x3 conv (optionally upsampling) + scaled noise + bias + LeakyReLU."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, resolution: int, up: bool) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(c_in, c_out, 3, w_dim, up=up)
        self.noise_strength = nn.Parameter(torch.zeros(()))  # learned, starts silent
        # Fixed noise for reproducible generation (noise_mode "const"); saved with the weights.
        self.register_buffer("noise_const", torch.randn(resolution, resolution))
        self.bias = nn.Parameter(torch.zeros(c_out))

    def forward(self, x: Tensor, w: Tensor, noise_mode: str) -> Tensor:
        x = self.conv(x, w)  # (N, c_out, H, W)
        if noise_mode == "random":
            x = x + torch.randn_like(x[:, :1]) * self.noise_strength  # one noise map per sample
        elif noise_mode == "const":
            x = x + self.noise_const.to(x.dtype) * self.noise_strength
        return lrelu(x + self.bias[None, :, None, None])


class ToRGB(nn.Module):
    """Modulated 1x1 conv to pixels, not demodulated (colour scale must stay free) + bias."""

    def __init__(self, c_in: int, channels: int, w_dim: int) -> None:
        super().__init__()
        self.conv = ModulatedConv2d(c_in, channels, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(channels))

    def forward(self, x: Tensor, w: Tensor) -> Tensor:
        return self.conv(x, w) + self.bias[None, :, None, None]


class SynthesisBlock(nn.Module):
    """One resolution: [upsampling conv,] conv, toRGB; adds its RGB to the upsampled image."""

    def __init__(self, c_in: int, c_out: int, w_dim: int, resolution: int, channels: int) -> None:
        super().__init__()
        self.first = resolution == 4
        if self.first:
            self.const = nn.Parameter(torch.randn(c_out, 4, 4))  # the learned 4x4 input
        else:
            self.conv0 = SynthesisLayer(c_in, c_out, w_dim, resolution, up=True)
        self.conv1 = SynthesisLayer(c_out, c_out, w_dim, resolution, up=False)
        self.torgb = ToRGB(c_out, channels, w_dim)
        self.upsample_rgb = Resample(up=True)
        self.num_ws = 2 if self.first else 3  # w vectors read (the toRGB one is shared on)

    def forward(self, x: Tensor | None, img: Tensor | None, ws: Tensor,
                noise_mode: str) -> tuple[Tensor, Tensor]:
        # ws: (N, num_ws, w_dim) for this block, in the order conv0, conv1, torgb.
        if self.first:
            x = self.const[None].expand(ws.shape[0], -1, -1, -1)  # (N, C, 4, 4)
            x = self.conv1(x, ws[:, 0], noise_mode)
        else:
            x = self.conv0(x, ws[:, 0], noise_mode)  # (N, C, 2H, 2W)
            x = self.conv1(x, ws[:, 1], noise_mode)
        rgb = self.torgb(x, ws[:, -1])  # (N, channels, H, W)
        img = rgb if img is None else self.upsample_rgb(img) + rgb
        return x, img


class Generator(nn.Module):
    """z (N, z_dim) -> images (N, channels, size, size); in [-1, 1] (clamped) in eval mode."""

    def __init__(self, size: int, channels: int, z_dim: int, w_dim: int = 128,
                 mapping_layers: int = 2, channel_base: int = 4096, channel_max: int = 128,
                 style_mixing: float = 0.9) -> None:
        super().__init__()
        check_arch(size, w_dim, mapping_layers, channel_base, channel_max, style_mixing)
        self.z_dim, self.w_dim, self.style_mixing = z_dim, w_dim, style_mixing
        self.mapping = MappingNetwork(z_dim, w_dim, mapping_layers)
        self.register_buffer("w_avg", torch.zeros(w_dim))  # running mean of w, for truncation
        resolutions = [2**i for i in range(2, int(math.log2(size)) + 1)]  # 4, 8, ..., size
        widths = [channels_at(r, channel_base, channel_max) for r in resolutions]
        self.blocks = nn.ModuleList(
            SynthesisBlock(widths[max(i - 1, 0)], widths[i], w_dim, r, channels)
            for i, r in enumerate(resolutions)
        )
        # Each block after the first starts from the w its predecessor's toRGB used.
        self.num_ws = 2 * len(resolutions)

    # -- mapping -------------------------------------------------------------------------------

    def map(self, z: Tensor, truncation: float = 1.0) -> Tensor:
        """z (N, z_dim) -> ws (N, num_ws, w_dim); in training, tracks w_avg and mixes styles."""
        w = self.mapping(z)  # (N, w_dim)
        if self.training:
            with torch.no_grad():  # w_avg keeps its dtype (float32) even under autocast
                mean = w.detach().to(self.w_avg.dtype).mean(0)
                self.w_avg.copy_(mean.lerp(self.w_avg, W_AVG_BETA))
        if truncation != 1:
            w = self.w_avg.to(w.dtype).lerp(w, truncation)  # w_avg + psi * (w - w_avg)
        ws = w[:, None].expand(-1, self.num_ws, -1)  # (N, num_ws, w_dim)
        if self.training and self.style_mixing > 0 and torch.rand(()) < self.style_mixing:
            # From a random layer on, the styles come from a second latent (regularises G).
            cutoff = int(torch.randint(1, self.num_ws, ()))
            w2 = self.mapping(torch.randn_like(z))
            if truncation != 1:
                w2 = self.w_avg.to(w2.dtype).lerp(w2, truncation)
            tail = w2[:, None].expand(-1, self.num_ws - cutoff, -1)
            ws = torch.cat([ws[:, :cutoff], tail], dim=1)
        return ws

    # -- synthesis -----------------------------------------------------------------------------

    def synthesize(self, ws: Tensor, noise_mode: str | None = None) -> Tensor:
        """ws (N, num_ws, w_dim) -> raw images (N, channels, size, size), unclamped.

        noise_mode None means "random" while training and "const" in eval mode, so a generated
        image depends on its z alone (reproducible by seed).
        """
        if noise_mode is None:
            noise_mode = "random" if self.training else "const"
        if noise_mode not in NOISE_MODES:
            raise ValueError(f"noise_mode must be one of {NOISE_MODES}, not {noise_mode!r}")
        x = img = None
        start = 0  # index of the block's first w
        for block in self.blocks:
            x, img = block(x, img, ws[:, start:start + block.num_ws], noise_mode)
            start += block.num_ws - 1  # the next block reuses this toRGB's w
        return img

    def forward(self, z: Tensor, truncation: float = 1.0, *, noise_mode: str | None = None,
                return_ws: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        """Images (N, C, size, size); with return_ws also the ws used (for path-length reg)."""
        ws = self.map(z.reshape(z.shape[0], self.z_dim), truncation)
        img = self.synthesize(ws, noise_mode)
        if not self.training:
            img = img.clamp(-1, 1)
        return (img, ws) if return_ws else img


# ----------------------------------------------------------------------------------------------
# Discriminator


class DiscriminatorBlock(nn.Module):
    """Residual block: (3x3 conv, blur-downsample, 3x3 conv) + (blur-downsample, 1x1 conv)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.conv0 = EqualConv2d(c_in, c_in, 3, activate=True)
        self.down = Resample(up=False)
        self.conv1 = EqualConv2d(c_in, c_out, 3, activate=True)
        self.skip = EqualConv2d(c_in, c_out, 1, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        main = self.conv1(self.down(self.conv0(x)))  # (N, c_out, H/2, W/2)
        shortcut = self.skip(self.down(x))  # (N, c_out, H/2, W/2)
        return (main + shortcut) / SQRT2  # keep unit variance


def minibatch_stddev(x: Tensor, group: int = MBSTD_GROUP) -> Tensor:
    """Append one channel: the feature std within groups of samples (exposes low diversity)."""
    n, c, h, w = x.shape
    g = max(d for d in range(1, min(group, n) + 1) if n % d == 0)  # group size dividing N
    y = x.reshape(g, n // g, c, h, w)  # sample i is in group i % (N/g)
    y = (y - y.mean(dim=0)).square().mean(dim=0).add(1e-8).sqrt()  # (N/g, C, H, W)
    y = y.mean(dim=(1, 2, 3)).reshape(-1, 1, 1, 1)  # (N/g, 1, 1, 1) one number per group
    y = y.repeat(g, 1, h, w)  # (N, 1, H, W)
    return torch.cat([x, y], dim=1)


class Discriminator(nn.Module):
    """images (N, channels, size, size) in [-1, 1] -> raw logits (N,)."""

    def __init__(self, size: int, channels: int, channel_base: int = 4096,
                 channel_max: int = 128) -> None:
        super().__init__()
        check_arch(size, 1, 1, channel_base, channel_max, 0.0)
        resolutions = [2**i for i in range(int(math.log2(size)), 1, -1)]  # size, ..., 8, 4
        widths = [channels_at(r, channel_base, channel_max) for r in resolutions]
        self.from_rgb = EqualConv2d(channels, widths[0], 1, activate=True)
        self.blocks = nn.Sequential(*[
            DiscriminatorBlock(a, b) for a, b in zip(widths[:-1], widths[1:])
        ])
        c4 = widths[-1]  # channels at 4x4
        self.conv = EqualConv2d(c4 + 1, c4, 3, activate=True)
        self.fc = EqualLinear(c4 * 16, c4, activate=True)
        self.out = EqualLinear(c4, 1)

    def forward(self, x: Tensor) -> Tensor:
        x = self.blocks(self.from_rgb(x))  # (N, c4, 4, 4)
        x = self.conv(minibatch_stddev(x))  # (N, c4, 4, 4)
        return self.out(self.fc(x.flatten(1))).reshape(-1)  # (N,)


@register_model("stylegan2")
class StyleGAN2Family(ModelFamily):
    """StyleGAN2: mapping network (truncation), R1 and path-length regularisation."""

    sizes = SIZES
    regularisers = ("r1", "path_length")
    has_mapping = True

    def check(self, spec: ModelSpec) -> None:
        check_arch(spec.size, spec.w_dim, spec.mapping_layers, spec.channel_base,
                   spec.channel_max, spec.style_mixing)

    def generator(self, spec: ModelSpec) -> nn.Module:
        return Generator(
            size=spec.size, channels=spec.channels, z_dim=spec.nz, w_dim=spec.w_dim,
            mapping_layers=spec.mapping_layers, channel_base=spec.channel_base,
            channel_max=spec.channel_max, style_mixing=spec.style_mixing,
        )

    def discriminator(self, spec: ModelSpec) -> nn.Module:
        return Discriminator(size=spec.size, channels=spec.channels,
                             channel_base=spec.channel_base, channel_max=spec.channel_max)
