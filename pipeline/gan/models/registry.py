"""The model registry: what a family is, what it can do, and how a spec names one.

A family is one file in this folder that subclasses `ModelFamily`, states its capabilities (the
image sizes it builds, its discriminator heads, the regularisers that apply to it, whether it has
a mapping network for truncation, whether its D adds an auxiliary loss on reals) and registers
itself with `@register_model("name")`. The training loop and the config ask the family what it
can do; nothing compares a model name to a string.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, TypeVar

from torch import nn

from pipeline.core.errors import UserError

if TYPE_CHECKING:
    from pipeline.core.config import TrainConfig

D_HEADS = ("global", "patch")  # discriminator outputs: one logit an image, or one a patch


@dataclass(frozen=True)
class ModelSpec:
    """Everything needed to rebuild a network; saved as JSON beside its weights."""

    name: str  # registry key: "mlp" | "dcgan" | "stylegan2"
    size: int  # image side in pixels (what G draws and D sees)
    channels: int  # 3 (RGB) or 1 (grey)
    nz: int  # latent size (StyleGAN2's z_dim)
    width: float = 1.0  # channel multiplier (mlp, dcgan, fastgan, r3gan); 1.0 = the seeds' sizes
    d_width: float = 0.0  # D's channel multiplier when it differs from G's (0 = width)
    d_head: str = "global"  # dcgan D: "global" (one logit an image) or "patch" (PatchGAN)
    # StyleGAN2 only (other families ignore these):
    w_dim: int = 128  # intermediate latent (w) size
    mapping_layers: int = 2  # fully connected layers z -> w (2 suits small data, as in ADA)
    channel_base: int = 4096  # channels at an r x r map = min(channel_base / r, channel_max)
    channel_max: int = 128  # cap on channels per layer
    style_mixing: float = 0.9  # probability (per training batch) of mixing two latents
    # FastGAN only: side of D's reconstructions (0 = min(size, 128), the paper's).
    recon_size: int = 0
    # Side of the delivered images (0 = size), pad.size when augment.size differs from it: G
    # trains at `size`, and its images are upsampled (a smaller pack) or centre-cropped (a
    # pack padded up to a family's smallest side) to this.
    output_size: int = 0

    @property
    def disc_width(self) -> float:
        """D's channel multiplier: d_width, or width when d_width is 0."""
        return self.d_width or self.width

    @property
    def delivered_size(self) -> int:
        """Side of the images generate writes."""
        return self.output_size or self.size

    def __post_init__(self) -> None:
        # Catch impossible specs here; family-specific limits are checked by the family.
        problems = []
        if self.channels not in (1, 3):
            problems.append(f"channels must be 1 or 3, not {self.channels}")
        crop = 0 < self.output_size < self.size
        if self.output_size < 0 or crop and (2 * self.output_size <= self.size
                                             or (self.size - self.output_size) % 2):
            problems.append(f"output_size {self.output_size} must be 0, above size {self.size}, "
                            "or a centred crop of it (above half of it, smaller by an even "
                            "number of pixels)")
        if self.size < 1 or self.nz < 1:
            problems.append(f"size and nz must be positive (size={self.size}, nz={self.nz})")
        if self.width <= 0:
            problems.append(f"width must be > 0, not {self.width}")
        if self.d_width < 0:
            problems.append(f"d_width must be >= 0 (0 = width), not {self.d_width}")
        if self.d_head not in D_HEADS:
            problems.append(f"d_head must be one of {', '.join(D_HEADS)}, not {self.d_head!r}")
        if problems:
            raise UserError(f"bad model spec: {'; '.join(problems)}.")


REGULARISERS = ("r1", "r2", "path_length")  # penalties a family may accept (see gan/losses.py)


class ModelFamily:
    """One network family: builds its generator and discriminator from a ModelSpec.

    The class attributes are its capabilities; the loop and the config read them.
    """

    name: str = ""  # set by register_model
    sizes: tuple[int, ...] = (32, 64, 128, 256)  # image sides (pixels) it builds; () = any
    d_heads: tuple[str, ...] = ("global",)  # discriminator heads the family can build
    regularisers: tuple[str, ...] = ()  # which of REGULARISERS apply to its networks
    has_mapping: bool = False  # G has a mapping network and w_avg: truncation works
    d_aux_loss: bool = False  # D(x, aux=True) -> (logits, loss): an extra D loss on reals
    channels_last: bool = True  # convolutional: NHWC memory layout is faster
    batchnorm: bool = False  # G or D hold BatchNorm layers (SyncBatchNorm under DDP)
    recipe: dict[str, object] = {}  # recommended train.* settings (README, tournament)

    def check(self, spec: ModelSpec) -> None:
        """Raise ValueError (with a short reason) if the family cannot build `spec`."""

    def generator(self, spec: ModelSpec) -> nn.Module:
        raise NotImplementedError

    def discriminator(self, spec: ModelSpec) -> nn.Module:
        raise NotImplementedError


MODELS: dict[str, ModelFamily] = {}
Family = TypeVar("Family", bound=type)


def register_model(name: str) -> Callable[[Family], Family]:
    """Class decorator: put one instance of a ModelFamily subclass into MODELS under `name`."""

    def add(cls: Family) -> Family:
        if name in MODELS:
            raise ValueError(f"model family {name!r} registered twice")
        family = cls()
        family.name = name
        MODELS[name] = family
        return cls

    return add


def get_model(name: str) -> ModelFamily:
    """The family registered as `name`; a bad name raises UserError listing the valid ones."""
    if name not in MODELS:
        raise UserError(
            f"unknown model {name!r}; set train.model to one of: {', '.join(sorted(MODELS))}."
        )
    return MODELS[name]


def _checked_family(spec: ModelSpec) -> ModelFamily:
    family = get_model(spec.name)
    # Families raise ValueError with a bare reason; the user sees which section to change.
    try:
        if spec.d_head not in family.d_heads:
            able = [name for name, other in MODELS.items() if spec.d_head in other.d_heads]
            raise ValueError(f"d_head {spec.d_head!r} needs model {' or '.join(able)}")
        if family.sizes and spec.size not in family.sizes:
            raise ValueError(f"it builds image sides {', '.join(map(str, family.sizes))}, "
                             f"not {spec.size}")
        family.check(spec)
    except ValueError as error:
        raise UserError(f"model {spec.name}: {error}; change the train or pad section.") from None
    return family


def build_generator(spec: ModelSpec) -> nn.Module:
    """A freshly initialised generator: z (N, nz) -> (N, C, size, size) in [-1, 1]."""
    return _checked_family(spec).generator(spec)


def build_discriminator(spec: ModelSpec) -> nn.Module:
    """A freshly initialised discriminator: images in [-1, 1] -> raw logits (N,), or (N, P)
    with one logit per patch for d_head "patch" (every loss averages over all logits)."""
    return _checked_family(spec).discriminator(spec)


def spec_from_config(config: TrainConfig, size: int, channels: int,
                     output_size: int = 0) -> ModelSpec:
    """The ModelSpec a training run uses: image shape from the pack, the rest from `train`."""
    return ModelSpec(
        name=config.model,
        size=size,
        output_size=output_size if output_size != size else 0,
        channels=channels,
        nz=config.nz,
        width=config.width,
        d_width=config.d_width,
        d_head=config.d_head,
        w_dim=config.w_dim,
        mapping_layers=config.mapping_layers,
        channel_base=config.channel_base,
        channel_max=config.channel_max,
        style_mixing=config.style_mixing,
        recon_size=config.recon_size,
    )


def count_parameters(module: nn.Module) -> int:
    """Number of learnable scalars (buffers such as BN statistics or w_avg excluded)."""
    return sum(p.numel() for p in module.parameters())


def check_families() -> None:
    """Every registered family states capabilities the loop understands (a test calls this)."""
    for name, family in MODELS.items():
        unknown = set(family.regularisers) - set(REGULARISERS)
        if unknown:
            raise ValueError(f"model family {name!r} declares unknown regularisers {unknown}")
        if not set(family.d_heads) <= set(D_HEADS):
            raise ValueError(f"model family {name!r} declares unknown heads {family.d_heads}")
