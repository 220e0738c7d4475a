"""The generator, exported for use without this project: TorchScript, and ONNX when installed.

A notebook that has torch (and nothing of ours) loads `generator.torchscript.pt` with
`torch.jit.load` and draws the very images `generate` writes:

    z = torch.stack([torch.randn(nz, generator=torch.Generator().manual_seed(i)) for i in seeds])
    pixels = torch.jit.load("generator.torchscript.pt")(z)   # (N, H, W, C) uint8

The module takes latents (N, nz) float32 and returns uint8 pixels (N, H, W, C) (C = 1 for grey),
rounded exactly as the PNGs are. `export.json` says nz, the image shape and that recipe.
"""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import warnings
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from pipeline.core.errors import UserError
from pipeline.core.files import atomic_write_bytes, atomic_write_text
from pipeline.gan.models import ModelSpec, fold_batchnorm, load_generator
from pipeline.gan.plots import pixel_levels

TORCHSCRIPT_FILE = "generator.torchscript.pt"
ONNX_FILE = "generator.onnx"
EXPORT_JSON = "export.json"
TRACE_BATCH = 2  # latents in the example batch the trace records (any N works afterwards)


class PixelGenerator(nn.Module):
    """z (N, nz) -> uint8 pixels (N, H, W, C): the generator and the PNGs' rounding, in one."""

    def __init__(self, generator: nn.Module) -> None:
        super().__init__()
        self.generator = generator

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        return pixel_levels(self.generator(z)).contiguous()  # (N, H, W, C) uint8


@dataclass(frozen=True)
class ExportReport:
    folder: Path
    files: tuple[str, ...]  # written, in the folder
    onnx_skipped: str  # why no ONNX file was written ("" when it was)


def export_generator(generator_dir: Path, out_dir: Path) -> ExportReport:
    """Write TorchScript (always), ONNX (when the `onnx` package is installed) and export.json.

    The exported modules are traced on the CPU in float32 from the network `generate` runs
    (BatchNorm folded, channels-last); each file is written under a temporary name and renamed
    into place.
    """
    generator, spec = load_generator(generator_dir)  # eval mode, delivered size
    # Exactly the network generate runs (BN folded, channels-last), so the pixels match its PNGs.
    module = PixelGenerator(fold_batchnorm(generator).to(memory_format=torch.channels_last))
    example = torch.randn(TRACE_BATCH, spec.nz, generator=torch.Generator().manual_seed(0))
    out_dir.mkdir(parents=True, exist_ok=True)
    # torch >= 2.9 flags torch.jit as deprecated; TorchScript is still what loads with torch
    # alone, and the warning would only alarm a user who did nothing wrong.
    with warnings.catch_warnings(), torch.inference_mode(False), torch.no_grad():
        warnings.filterwarnings("ignore", message=r".*torch\.jit\.\w+. is deprecated",
                                category=FutureWarning)
        try:
            traced = torch.jit.trace(module, example)
        except Exception as error:  # noqa: BLE001 - a family the tracer cannot follow
            raise UserError(f"cannot trace the {spec.name} generator for TorchScript ({error})"
                            ) from None
        atomic_write_bytes(out_dir / TORCHSCRIPT_FILE,
                           lambda handle: torch.jit.save(traced, handle))
    files = [TORCHSCRIPT_FILE]
    onnx_skipped = _export_onnx(module, example, out_dir / ONNX_FILE)
    if not onnx_skipped:
        files.append(ONNX_FILE)
    atomic_write_text(out_dir / EXPORT_JSON, json.dumps(_description(spec, generator_dir),
                                                       indent=2))
    files.append(EXPORT_JSON)
    return ExportReport(out_dir, tuple(files), onnx_skipped)


def _export_onnx(module: nn.Module, example: torch.Tensor, path: Path) -> str:
    """ONNX through torch.onnx (the TorchScript-based exporter); "" or why it was skipped."""
    if importlib.util.find_spec("onnx") is None:
        return "the onnx package is not installed (pip install onnx)"
    try:
        with _silenced():  # the exporter prints its whole graph (from C++) when it fails
            atomic_write_bytes(path, lambda handle: torch.onnx.export(
                module, (example,), handle, input_names=["z"], output_names=["pixels"],
                dynamic_axes={"z": {0: "n"}, "pixels": {0: "n"}}, dynamo=False))
    except Exception as error:  # noqa: BLE001 - an operator ONNX lacks: say so, keep TorchScript
        return f"torch.onnx.export failed: {str(error).splitlines()[0][:300]}"
    return ""


@contextlib.contextmanager
def _silenced() -> Iterator[None]:
    """Standard output and error, Python's and the C++ side's (file descriptors 1 and 2),
    sent to /dev/null while the block runs."""
    sys.stdout.flush()
    sys.stderr.flush()
    saved = [os.dup(1), os.dup(2)]
    try:
        with open(os.devnull, "w") as null, contextlib.redirect_stdout(null), \
                contextlib.redirect_stderr(null):
            os.dup2(null.fileno(), 1)
            os.dup2(null.fileno(), 2)
            yield
    finally:
        os.dup2(saved[0], 1)
        os.dup2(saved[1], 2)
        for fd in saved:
            os.close(fd)


def _description(spec: ModelSpec, generator_dir: Path) -> dict:
    """export.json: what goes in, what comes out, how generate's seeds map to latents."""
    side = spec.delivered_size
    return {
        "input": {"name": "z", "shape": ["N", spec.nz], "dtype": "float32"},
        "output": {"name": "pixels", "shape": ["N", side, side, spec.channels],
                   "dtype": "uint8"},
        "seed_to_latent": "z_i = torch.randn(nz, generator=torch.Generator().manual_seed(i)); "
                          "image i of generate (i.png) is the output for z_i",
        "nz": spec.nz,
        "from": str(generator_dir),
        "spec": asdict(spec),
    }
