"""Networks by name: the registry of model families, plus saving and loading a generator.

Every family builds a generator, forward(z (N, nz), truncation=1.0) -> images (N, C, size, size)
in [-1, 1], and a discriminator, forward(images) -> raw logits (N,) (or (N, P), one per patch, for
a PatchGAN head). A family is chosen by its registry name (`train.model`), never by a dotted class
path, so a typo fails at once with the list of valid names. A saved generator is a state_dict
(`generator.pt`) beside the spec that rebuilds its architecture (`generator.json`); modules are
never pickled.

Adding a family: write `<name>.py` here with its networks and a registered `ModelFamily`
subclass, import it in the family list below, and add a test (see the README's "Extending").
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import asdict
from pathlib import Path

import torch
from torch import nn

from pipeline.core.errors import UserError
from pipeline.core.files import atomic_write_bytes, atomic_write_text

# The families: importing a module registers it.
from pipeline.gan.models import dcgan, fastgan, mlp, r3gan, stylegan2  # noqa: F401
from pipeline.gan.models.registry import (  # noqa: F401  (the package's public names)
    D_HEADS,
    MODELS,
    REGULARISERS,
    ModelFamily,
    ModelSpec,
    build_discriminator,
    build_generator,
    check_families,
    count_parameters,
    get_model,
    register_model,
    spec_from_config,
)
from pipeline.gan.resample import lanczos_matrix, resample

WEIGHTS_FILE = "generator.pt"  # state_dict of the generator (tensors only)
SPEC_FILE = "generator.json"  # asdict(ModelSpec): what rebuilds the architecture


# ----------------------------------------------------------------------------------------------
# Saving and loading


def unwrap(module: nn.Module) -> nn.Module:
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(module, "_orig_mod"):  # torch.compile
            module = module._orig_mod
        elif isinstance(module, nn.parallel.DistributedDataParallel):
            module = module.module
        else:
            return module


def fold_batchnorm(module: nn.Module) -> nn.Module:
    """For inference: merge each eval-mode BatchNorm2d into the conv before it, in place.

    BN after a (transposed) convolution is an affine map per output channel, so it folds into
    that convolution's weights and bias: one pass over each feature map instead of two. Measured
    1.4x on the DCGAN-128 forward pass on CPU; outputs move by float rounding only.
    """
    for parent in module.modules():
        if not isinstance(parent, nn.Sequential):
            continue
        layers = list(parent)
        for i, (conv, bn) in enumerate(zip(layers, layers[1:])):
            if not (isinstance(conv, (nn.Conv2d, nn.ConvTranspose2d)) and conv.groups == 1
                    and isinstance(bn, nn.BatchNorm2d) and bn.track_running_stats):
                continue
            with torch.no_grad():
                scale = bn.weight / torch.sqrt(bn.running_var + bn.eps)  # (C_out,)
                # Output channels are dim 0 of a Conv2d weight and dim 1 of a ConvTranspose2d's.
                shape = (-1, 1, 1, 1) if isinstance(conv, nn.Conv2d) else (1, -1, 1, 1)
                conv.weight.mul_(scale.view(shape))
                bias = bn.bias - bn.running_mean * scale
                if conv.bias is not None:
                    bias = bias + conv.bias * scale
                conv.bias = nn.Parameter(bias)
            parent[i + 1] = nn.Identity()
    return module


class Upsampled(nn.Module):
    """A generator trained below the delivery size, then a Lanczos-3 upsample to that size.

    Training at half the side costs about a quarter of the compute; on smooth subjects the
    upsampled images lose little (bench/RESULTS.md, "Training below the delivery size"), and
    Lanczos loses less than bicubic (FID 6 to 9 better on the same samples, the section after
    it). Lanczos rings a little at hard edges, so the result is clamped back to [-1, 1].
    """

    def __init__(self, generator: nn.Module, source: int, size: int) -> None:
        super().__init__()
        self.generator, self.size = generator, size
        # One (size, source) matrix serves rows and columns, made on G's device (training scores
        # a CUDA G wrapped in this); a buffer follows .to(device) and is a constant to tracing
        # and export, and not persistent: generator.pt stays G's own.
        device = next(generator.parameters()).device
        self.register_buffer("weights", lanczos_matrix(source, size).to(device),
                             persistent=False)

    def forward(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        images = self.generator(z, truncation=truncation)  # (N, C, source, source)
        return resample(images, self.weights, self.weights).clamp(-1.0, 1.0)  # (N, C, size, size)


class Cropped(nn.Module):
    """A generator trained on images padded up to its side, then the centre crop of the
    delivery size: the exact inverse of augment's border, no resampling.

    For a family whose smallest side is above the data's (FastGAN from 32 px, Fashion-MNIST
    at 28): the training images sit on a band of pad.background, which G learns to draw and
    this crop removes.
    """

    def __init__(self, generator: nn.Module, size: int) -> None:
        super().__init__()
        self.generator, self.size = generator, size

    def forward(self, z: torch.Tensor, truncation: float = 1.0) -> torch.Tensor:
        images = self.generator(z, truncation=truncation)  # (N, C, s, s)
        top = (images.shape[-1] - self.size) // 2
        return images[..., top:top + self.size, top:top + self.size]  # (N, C, size, size)


def delivered(generator: nn.Module, spec: ModelSpec) -> nn.Module:
    """`generator` as it delivers images of spec.output_size: upsampled when that is larger,
    centre-cropped when it is smaller (see augment's `read_clean_image`)."""
    if spec.delivered_size > spec.size:
        return Upsampled(generator, spec.size, spec.delivered_size)
    if spec.delivered_size < spec.size:
        return Cropped(generator, spec.delivered_size)
    return generator


def save_generator(generator: nn.Module, spec: ModelSpec, folder: Path) -> None:
    """Write generator.pt (CPU state_dict) and generator.json (the spec) into `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    # CPU tensors load on any machine; unwrapping drops DDP's "module." / compile's prefixes.
    state = {k: v.detach().cpu() for k, v in unwrap(generator).state_dict().items()}
    atomic_write_bytes(folder / WEIGHTS_FILE, lambda handle: torch.save(state, handle))
    atomic_write_text(folder / SPEC_FILE, json.dumps(asdict(spec), indent=2))


def _read_spec(path: Path) -> ModelSpec:
    """Parse generator.json; keys missing from older files take their defaults."""
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as error:
        raise UserError(f"cannot read {path} ({error}); rerun the train stage.") from None
    known = {f.name for f in dataclasses.fields(ModelSpec)}
    unknown = sorted(set(raw) - known)
    if unknown:
        raise UserError(f"{path} has unknown keys {unknown}; it was written by another version.")
    return ModelSpec(**raw)


def load_generator(folder: Path, device: str | torch.device = "cpu") -> tuple[nn.Module, ModelSpec]:
    """Rebuild the generator saved in `folder`, load its weights, and return it in eval mode,
    drawing images of spec.delivered_size (see `delivered`)."""
    weights, spec_path = folder / WEIGHTS_FILE, folder / SPEC_FILE
    if not weights.is_file() or not spec_path.is_file():
        raise UserError(f"no saved generator in {folder}; run the train stage first.")
    spec = _read_spec(spec_path)
    generator = build_generator(spec)
    # weights_only: the file holds tensors alone, so loading it can never run code.
    state = torch.load(weights, map_location="cpu", weights_only=True)
    try:
        generator.load_state_dict(state)
    except RuntimeError as error:
        first = str(error).splitlines()[0]
        raise UserError(f"{weights} does not match {spec_path} ({first}); retrain.") from None
    return delivered(generator, spec).to(device).eval(), spec
