"""Where and in which precision the networks run: device, autocast dtype, memory layout."""

from __future__ import annotations

import contextlib
import functools
import os
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from pipeline.core.config import TrainConfig
from pipeline.gan.models import ModelSpec, build_discriminator, build_generator, get_model


@dataclass(frozen=True)
class Precision:
    """Where and in which dtype the networks run; `dtype` None means plain float32."""

    device: torch.device
    dtype: torch.dtype | None  # autocast dtype: bfloat16, float16 or None
    channels_last: bool  # NHWC memory layout (faster convolutions on tensor cores)

    def autocast(self) -> contextlib.AbstractContextManager:
        return torch.autocast(self.device.type, dtype=self.dtype, enabled=self.dtype is not None)

    def scaler(self) -> torch.amp.GradScaler | None:
        """fp16 needs loss scaling (its range is too small for small gradients); bf16 does not."""
        if self.dtype is not torch.float16:
            return None
        return torch.amp.GradScaler(self.device.type)


# A CPU gets bf16 autocast under amp=auto only when it has bf16 instructions and a short probe
# shows them at least this much faster than fp32 (a margin against a noisy probe).
BF16_CPU_FLAGS = ("avx512_bf16", "amx_bf16")
BF16_MIN_SPEEDUP = 1.1
DTYPES = {"torch.bfloat16": torch.bfloat16, "torch.float16": torch.float16, "None": None}


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU lists AVX-512-BF16 or AMX-BF16 (Linux; elsewhere False)."""
    try:
        flags = set(cpuinfo.read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


@functools.lru_cache(maxsize=8)
def cpu_bf16_speedup(spec: ModelSpec, batch: int, repeats: int = 4) -> float:
    """fp32 time / bf16-autocast time of one training-like step of this very spec and batch:
    G forward, D forward (with its auxiliary loss when the family has one), backward.

    The networks' own mix of layers decides it: on two quiet Zen 4 cores (AVX-512-BF16) a lone
    3x3 convolution gains 1.15-1.8x with its shape, while whole steps at 64 px gain 1.2x
    (FastGAN, width 1/8, batch 16), 1.6x (DCGAN, 1/4, 64) and 2.4x (R3GAN, 1/8, 32). Timings on
    a busy machine are noise: hence the margin BF16_MIN_SPEEDUP, and a run keeps its first
    choice. Fresh networks on a forked RNG leave the global random state as it was.
    """
    family = get_model(spec.name)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        layout = torch.channels_last if family.channels_last else torch.contiguous_format
        G = build_generator(spec).to(memory_format=layout)
        D = build_discriminator(spec).to(memory_format=layout)
        z = torch.randn(batch, spec.nz)

        def step_seconds(dtype: torch.dtype | None) -> float:
            times = []
            for _ in range(repeats + 1):  # the first is a warm-up
                start = time.perf_counter()
                with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
                    out = D(G(z), aux=True) if family.d_aux_loss else D(G(z))
                    logits, extra = out if family.d_aux_loss else (out, 0.0)
                    loss = logits.float().mean() + extra
                loss.backward()
                times.append(time.perf_counter() - start)
            return min(times[1:])

        return step_seconds(None) / step_seconds(torch.bfloat16)


def auto_cpu_dtype(spec: ModelSpec, batch: int) -> torch.dtype | None:
    """bf16 on a CPU that has it natively and runs this spec faster with it, else fp32 (None)."""
    if cpu_has_native_bf16() and cpu_bf16_speedup(spec, batch) >= BF16_MIN_SPEEDUP:
        return torch.bfloat16
    return None


def resolve_precision(cfg: TrainConfig, device: torch.device, spec: ModelSpec, batch: int,
                      recorded: str | None = None) -> Precision:
    """cfg.amp -> autocast dtype. auto: bf16 on CUDA when supported, fp16 otherwise; on a CPU,
    bf16 where it is native and measured faster (auto_cpu_dtype), else fp32.

    `recorded` is the dtype a run folder says it started with ("torch.bfloat16", "None"): a
    resumed auto run keeps it, so a noisy probe cannot switch precision halfway through a run.
    """
    cuda = device.type == "cuda"
    if cfg.amp == "auto":
        if cuda:
            dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        elif recorded in DTYPES:
            dtype = DTYPES[recorded]
        else:
            dtype = auto_cpu_dtype(spec, batch)
    else:
        dtype = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}[cfg.amp]
    # NHWC convolutions are faster on CPUs too (DCGAN-128 loop 1.9x, StyleGAN2 1.35x here);
    # a family without convolutions (the MLP) says so and gains nothing from it.
    channels_last = get_model(cfg.model).channels_last
    return Precision(device=device, dtype=dtype, channels_last=channels_last)


def configure_backends(cfg: TrainConfig, device: torch.device) -> None:
    """Process-wide torch switches for speed (TF32, cuDNN autotune) or reproducibility."""
    if cfg.threads > 0:
        torch.set_num_threads(cfg.threads)
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32: ~fp32 quality, tensor-core speed
        torch.backends.cudnn.allow_tf32 = True
        torch.backends.cudnn.benchmark = not cfg.deterministic  # autotune conv algorithms
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # cuBLAS reproducibility
        torch.backends.cudnn.deterministic = True
        torch.use_deterministic_algorithms(True, warn_only=True)
