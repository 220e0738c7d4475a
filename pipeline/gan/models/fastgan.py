"""FastGAN (Liu et al., ICLR 2021, "Towards faster and stabilized GAN training"), plain PyTorch.

Built for few-shot data (100..1000 images) and small batches: a light generator with skip-layer
excitation and a discriminator kept honest by a self-supervised reconstruction task.

Generator: z -> ConvTranspose 4x4 + BN + GLU (a 4x4 map), then one up block per doubling
(nearest upsample, 3x3 conv, BN, GLU; the "comp" blocks at 8, 32 and 128 px add a second conv
and learned-strength noise, as the paper alternates them), skip-layer excitation (SLE: a low
resolution map is pooled to 4x4, conv 4x4 -> LeakyReLU(0.1) -> conv 1x1 -> sigmoid, and the
result gates the channels of a map 8 times wider), then 3x3 conv + tanh to pixels.
Discriminator: 3x3 stem at full resolution, residual down blocks (conv 4x4 stride 2 beside an
avg-pool + 1x1 conv path, averaged) to 8x8, SLE from the map 8 times wider (256->32, 128->16,
64->8 when present), then conv 1x1 + BN + LeakyReLU + conv 4x4: a 5x5 map of logits. Spectral
norm on every D convolution. `D(x, aux=True)` also returns the reconstruction loss: one small
decoder rebuilds the whole image from D's 8x8 features, another a random quarter of it from the
matching quarter of D's 16x16 features.

Differences from the reference, all deliberate:
- SLE pairs in G are 8->64, 16->128, 32->256 (ratio 8; the paper's 1024 px model uses ratio 16,
  4->64 .. 32->512), so each size from 64 px has at least one; a 32 px G has none.
- Noise is added after BN (the paper adds it before). With a learned scalar strength this is
  the same family of functions, and it keeps conv + BN adjacent, so `fold_batchnorm` folds them
  at generation time. Noise is random in training and a fixed stored map in eval mode, so a
  saved generator gives the same images every time.
- G has no spectral norm (the reference code puts it on G too): BN folding needs plain weights.
- D sees one resolution (the reference also feeds a 128 px copy to a second branch with its own
  decoder) and its logit map is averaged to one logit per image (the "global" head).
- The reconstruction loss is MSE (the paper: LPIPS, whose weights cannot be downloaded here)
  against the image area-downsampled to the decoder's side: min(size, 128) for the whole image,
  min(size / 2, 128) for the quarter, or both at most `recon_size` (reconstruction_sides).

Channels at an r x r map are the paper's table times 64 (ngf = ndf = 64) times `width`, at least
MIN_CHANNELS; every conv before a GLU outputs twice that (GLU halves channels).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.nn.utils.parametrizations import spectral_norm

from pipeline.gan.models.registry import ModelFamily, ModelSpec, register_model

SIZES = (32, 64, 128, 256)  # image sides (pixels) this implementation supports
BASE = 64  # the paper's ngf and ndf: channels = BASE * table[r] * width
G_TABLE = {4: 16, 8: 8, 16: 4, 32: 2, 64: 2, 128: 1, 256: 0.5}  # paper's nfc_multi for G
D_TABLE = {4: 16, 8: 16, 16: 8, 32: 4, 64: 2, 128: 1, 256: 0.5}  # paper's nfc_multi for D
MIN_CHANNELS = 4  # floor on any feature map's channels (small widths on CPU)
COMP_RESOLUTIONS = (8, 32, 128)  # G maps built by the two-conv "UpBlockComp" with noise
SLE_RATIO = 8  # SLE gates a map this many times wider (G) or narrower (D) than its source
G_SLE_TARGETS = (64, 128, 256)  # G maps gated by SLE (sources 8, 16, 32)
D_SLE_TARGETS = (8, 16, 32)  # D maps gated by SLE (sources 64, 128, 256)
DECODER_MAX = 128  # largest side (pixels) a reconstruction decoder outputs (paper: 128)
INIT_STD = 0.02  # conv weights N(0, 0.02), BN scale N(1, 0.02) (paper's weights_init)


def check_size(size: int) -> None:
    """Raise ValueError unless `size` is one of SIZES (the registry turns it into a UserError)."""
    if size not in SIZES:
        raise ValueError(f"fastgan needs an image side of {', '.join(map(str, SIZES))}, not {size}")


def reconstruction_sides(size: int, recon_size: int = 0) -> tuple[int, int]:
    """Sides (px) of D's rebuilt whole image and rebuilt quarter.

    The paper decodes both at 128 px whatever the image side (1/8 and 1/4 of a 1024 image,
    1/2 and 1/1 of a 256 one); 0 keeps that rule, min(size, 128) and min(size / 2, 128).
    `recon_size` r sets both to at most r: the decoders' largest maps are most of their cost.
    """
    if recon_size == 0:
        return min(size, DECODER_MAX), min(size // 2, DECODER_MAX)
    return min(size, recon_size), min(size // 2, recon_size)


def check_recon_size(size: int, recon_size: int) -> None:
    """Raise ValueError unless recon_size is 0 or a power of two from 16 to size."""
    allowed = resolutions(16, size) if size >= 16 else []
    if recon_size and recon_size not in allowed:
        raise ValueError(f"fastgan's recon_size must be 0 or one of "
                         f"{', '.join(map(str, allowed))} at size {size}, not {recon_size}")


def channels_at(table: dict[int, float], resolution: int, width: float) -> int:
    """Channel count of an r x r feature map (after GLU)."""
    return max(MIN_CHANNELS, round(BASE * table[resolution] * width))


def resolutions(low: int, high: int) -> list[int]:
    """Map sides low, 2 low, ..., high (pixels)."""
    sides = [low]
    while sides[-1] < high:
        sides.append(sides[-1] * 2)
    return sides


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0, *,
          sn: bool = False, bias: bool = False) -> nn.Module:
    """Conv2d initialised N(0, 0.02), then spectrally normalised when `sn` (D only).

    Initialising before wrapping matters: spectral_norm estimates the top singular vector from
    the weight it is given, and the parametrised `.weight` cannot be re-initialised in place.
    """
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=bias)
    nn.init.normal_(conv.weight, 0.0, INIT_STD)
    if conv.bias is not None:
        nn.init.zeros_(conv.bias)
    return spectral_norm(conv) if sn else conv


def _bn(channels: int) -> nn.BatchNorm2d:
    """BatchNorm2d with scale N(1, 0.02) and shift 0."""
    bn = nn.BatchNorm2d(channels)
    nn.init.normal_(bn.weight, 1.0, INIT_STD)
    nn.init.zeros_(bn.bias)
    return bn


class NoiseInjection(nn.Module):
    """x + strength * noise, one noise map (N, 1, H, W) shared by all channels.

    Random noise in training; in eval mode a fixed map stored with the weights (reproducible
    generation). The strength is learned and starts at 0, as in the paper.
    """

    def __init__(self, resolution: int) -> None:
        super().__init__()
        self.strength = nn.Parameter(torch.zeros(()))
        self.register_buffer("noise_const", torch.randn(resolution, resolution))

    def forward(self, x: Tensor) -> Tensor:
        if self.training:
            noise = torch.randn_like(x[:, :1])  # (N, 1, H, W)
        else:
            noise = self.noise_const.to(x.dtype)  # (H, W), broadcast over N and C
        return x + noise * self.strength


def up_block(c_in: int, c_out: int, *, sn: bool = False) -> nn.Sequential:
    """Nearest 2x upsample, 3x3 conv to 2 c_out, BN, GLU: (N, c_in, H, W) -> (N, c_out, 2H, 2W)."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        _conv(c_in, 2 * c_out, 3, 1, 1, sn=sn),
        _bn(2 * c_out),
        nn.GLU(dim=1),
    )


def up_block_comp(c_in: int, c_out: int, resolution: int) -> nn.Sequential:
    """The paper's UpBlockComp: an up block plus a second 3x3 conv, each followed by noise."""
    return nn.Sequential(
        nn.Upsample(scale_factor=2, mode="nearest"),
        _conv(c_in, 2 * c_out, 3, 1, 1),
        _bn(2 * c_out),
        NoiseInjection(resolution),
        nn.GLU(dim=1),
        _conv(c_out, 2 * c_out, 3, 1, 1),
        _bn(2 * c_out),
        NoiseInjection(resolution),
        nn.GLU(dim=1),
    )


class SkipExcitation(nn.Module):
    """SLE: channel gates in (0, 1) from a map `low`, multiplied into a map `high`.

    `low` (N, c_low, low_side, low_side) is average-pooled to 4x4 (a fixed window: the same as
    the paper's adaptive pool for these power-of-two sides, and exportable to ONNX with any
    batch size) and squeezed to (N, c_high, 1, 1); only the channels of the two maps are tied.
    """

    def __init__(self, c_low: int, c_high: int, low_side: int, *, sn: bool = False) -> None:
        super().__init__()
        self.gate = nn.Sequential(
            nn.AvgPool2d(low_side // 4) if low_side > 4 else nn.Identity(),
            _conv(c_low, c_high, 4, sn=sn),  # (N, c_high, 1, 1)
            nn.LeakyReLU(0.1),
            _conv(c_high, c_high, 1, sn=sn),
            nn.Sigmoid(),
        )

    def forward(self, low: Tensor, high: Tensor) -> Tensor:
        return high * self.gate(low)  # (N, c_high, H, W)


class Generator(nn.Module):
    """z (N, nz) -> images (N, C, size, size) in [-1, 1]."""

    def __init__(self, size: int, channels: int, nz: int, width: float = 1.0) -> None:
        super().__init__()
        check_size(size)
        self.nz = nz
        self.sides = resolutions(8, size)  # maps built by up blocks
        c = {r: channels_at(G_TABLE, r, width) for r in resolutions(4, size)}
        self.init = nn.Sequential(  # 1x1 latent -> 4x4 map
            nn.ConvTranspose2d(nz, 2 * c[4], 4, 1, 0, bias=False),
            _bn(2 * c[4]),
            nn.GLU(dim=1),
        )
        nn.init.normal_(self.init[0].weight, 0.0, INIT_STD)
        self.ups = nn.ModuleDict({
            str(r): up_block_comp(c[r // 2], c[r], r) if r in COMP_RESOLUTIONS
            else up_block(c[r // 2], c[r])
            for r in self.sides
        })
        targets = [r for r in G_SLE_TARGETS if r <= size]
        self.sles = nn.ModuleDict(
            {str(r): SkipExcitation(c[r // SLE_RATIO], c[r], r // SLE_RATIO) for r in targets}
        )
        self.sources = {r // SLE_RATIO for r in targets}  # maps kept for the SLE gates
        self.to_rgb = nn.Sequential(_conv(c[size], channels, 3, 1, 1, bias=True), nn.Tanh())

    def forward(self, z: Tensor, truncation: float = 1.0) -> Tensor:
        # truncation is ignored: FastGAN has no average latent to pull towards.
        x = self.init(z.reshape(-1, self.nz, 1, 1))  # (N, c4, 4, 4)
        kept: dict[int, Tensor] = {}
        for r in self.sides:
            x = self.ups[str(r)](x)  # (N, c_r, r, r)
            if str(r) in self.sles:
                x = self.sles[str(r)](kept[r // SLE_RATIO], x)
            if r in self.sources:
                kept[r] = x
        return self.to_rgb(x)  # (N, C, size, size)


class DownBlockComp(nn.Module):
    """The paper's residual down block: (N, c_in, H, W) -> (N, c_out, H/2, W/2).

    Main path conv 4x4 stride 2 + conv 3x3, shortcut avg-pool + conv 1x1; the mean of the two.
    """

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        self.main = nn.Sequential(
            _conv(c_in, c_out, 4, 2, 1, sn=True), _bn(c_out), nn.LeakyReLU(0.2),
            _conv(c_out, c_out, 3, 1, 1, sn=True), _bn(c_out), nn.LeakyReLU(0.2),
        )
        self.direct = nn.Sequential(
            nn.AvgPool2d(2), _conv(c_in, c_out, 1, sn=True), _bn(c_out), nn.LeakyReLU(0.2),
        )

    def forward(self, x: Tensor) -> Tensor:
        return (self.main(x) + self.direct(x)) / 2


def decoder(c_in: int, c: dict[int, int], side: int, channels: int) -> nn.Sequential:
    """D's reconstruction decoder: (N, c_in, 8, 8) -> images (N, C, side, side) in [-1, 1]."""
    layers: list[nn.Module] = []
    for r in resolutions(16, side):
        layers.append(up_block(c_in, c[r], sn=True))
        c_in = c[r]
    layers += [_conv(c_in, channels, 3, 1, 1, sn=True), nn.Tanh()]
    return nn.Sequential(*layers)


class Discriminator(nn.Module):
    """images (N, C, size, size) in [-1, 1] -> raw logits (N,); with aux, also the
    reconstruction loss (a scalar to add to D's loss on reals)."""

    def __init__(self, size: int, channels: int, width: float = 1.0, recon_size: int = 0
                 ) -> None:
        super().__init__()
        check_size(size)
        check_recon_size(size, recon_size)
        self.size = size
        c = {r: channels_at(D_TABLE, r, width) for r in resolutions(4, size)}
        self.stem = nn.Sequential(_conv(channels, c[size], 3, 1, 1, sn=True), nn.LeakyReLU(0.2))
        self.sides = resolutions(8, size // 2)[::-1]  # maps built by down blocks, widest first
        self.downs = nn.ModuleDict({str(r): DownBlockComp(c[2 * r], c[r]) for r in self.sides})
        targets = [r for r in D_SLE_TARGETS if r * SLE_RATIO <= size]
        self.sles = nn.ModuleDict(
            {str(r): SkipExcitation(c[r * SLE_RATIO], c[r], r * SLE_RATIO, sn=True)
             for r in targets}
        )
        self.sources = {r * SLE_RATIO for r in targets} | {16}  # kept maps (16: the quarter)
        self.head = nn.Sequential(
            _conv(c[8], c[4], 1, sn=True), _bn(c[4]), nn.LeakyReLU(0.2),
            _conv(c[4], 1, 4, sn=True),  # (N, 1, 5, 5) from the 8x8 map
        )
        whole, part = reconstruction_sides(size, recon_size)
        self.decode_whole = decoder(c[8], c, whole, channels)
        self.decode_part = decoder(c[16], c, part, channels)

    def features(self, x: Tensor) -> dict[int, Tensor]:
        """D's maps by side: 8 (the last), 16, and the SLE sources."""
        h = self.stem(x)  # (N, c_size, size, size)
        kept = {self.size: h}
        for r in self.sides:
            h = self.downs[str(r)](h)  # (N, c_r, r, r)
            if str(r) in self.sles:
                h = self.sles[str(r)](kept[r * SLE_RATIO], h)
            if r in self.sources:
                kept[r] = h
        kept[8] = h
        return kept

    def reconstruction_loss(self, x: Tensor, feat16: Tensor, feat8: Tensor) -> Tensor:
        """MSE of the decoders' images against x (whole) and one random quarter of x.

        The quarter (same for the whole batch, as in the paper) is picked with torch's global
        generator: seed it to repeat a loss.
        """
        row, col = divmod(int(torch.randint(4, ())), 2)
        part = feat16[:, :, row * 8:(row + 1) * 8, col * 8:(col + 1) * 8]  # (N, c16, 8, 8)
        half = x.shape[-1] // 2
        crop = x[:, :, row * half:(row + 1) * half, col * half:(col + 1) * half]
        whole = self.decode_whole(feat8)  # (N, C, s, s)
        quarter = self.decode_part(part)  # (N, C, s/2, s/2) up to 128
        target_whole = F.adaptive_avg_pool2d(x, whole.shape[-1]).to(whole.dtype)
        target_part = F.adaptive_avg_pool2d(crop, quarter.shape[-1]).to(quarter.dtype)
        return F.mse_loss(whole, target_whole) + F.mse_loss(quarter, target_part)

    def forward(self, x: Tensor, aux: bool = False) -> Tensor | tuple[Tensor, Tensor]:
        maps = self.features(x)
        logits = self.head(maps[8]).mean(dim=(1, 2, 3))  # (N,): mean of the 5x5 logit map
        if not aux:
            return logits
        return logits, self.reconstruction_loss(x, maps[16], maps[8])


@register_model("fastgan")
class FastGANFamily(ModelFamily):
    """FastGAN: SLE generator, self-supervised discriminator (BN in both; D spectral-normed)."""

    sizes = SIZES
    d_heads = ("global",)
    regularisers = ()
    has_mapping = False
    d_aux_loss = True
    batchnorm = True
    channels_last = True
    # The paper's training settings. batch_size 8 is the paper's (its GPU runs); EMA: G's
    # average decays 0.999 a step, a half-life of ln 0.5 / ln 0.999 = 693 steps = 5.5 kimg at
    # batch 8. nz 256 is the paper's latent size.
    recipe: dict[str, object] = {
        "loss": "hinge",
        "diffaugment": "color,translation",
        "lr_g": 0.0002,
        "lr_d": 0.0002,
        "beta1": 0.5,
        "beta2": 0.999,
        "batch_size": 8,
        "ema_kimg": 5.5,
        "nz": 256,
    }

    def check(self, spec: ModelSpec) -> None:
        check_size(spec.size)
        check_recon_size(spec.size, spec.recon_size)

    def generator(self, spec: ModelSpec) -> nn.Module:
        return Generator(spec.size, spec.channels, spec.nz, spec.width)

    def discriminator(self, spec: ModelSpec) -> nn.Module:
        return Discriminator(spec.size, spec.channels, spec.disc_width, spec.recon_size)
