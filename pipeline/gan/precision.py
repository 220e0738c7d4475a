"""Where and in which precision the networks run: device, autocast dtype, memory layout."""

from __future__ import annotations

import contextlib
import functools
import os
import time
from collections.abc import Callable
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
Key = tuple[torch.dtype | None, bool]  # (autocast dtype, channels_last): one probe candidate
DTYPES = {"torch.bfloat16": torch.bfloat16, "torch.float16": torch.float16, "None": None}


def cpu_has_native_bf16(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """True when the CPU lists AVX-512-BF16 or AMX-BF16 (Linux; elsewhere False)."""
    try:
        flags = set(cpuinfo.read_text(encoding="utf-8", errors="replace").split())
    except OSError:
        return False
    return any(flag in flags for flag in BF16_CPU_FLAGS)


def eval_dtype(choice: str, device: torch.device) -> torch.dtype | None:
    """Inception's autocast dtype for train.eval_precision (None = float32).

    auto takes bf16 only where it is native, with no probe: Inception is one big stack of
    convolutions, 2.0x faster in bf16 on two Zen 4 cores (0.040 vs 0.079 s an image), and
    emulated bf16 (AVX2 only) is slower than float32.
    """
    if choice == "fp32":
        return None
    if choice == "bf16":
        return torch.bfloat16
    native = (torch.cuda.is_bf16_supported() if device.type == "cuda"
              else cpu_has_native_bf16())
    return torch.bfloat16 if native else None


def interleaved_best(steps: dict[Key, Callable[[], None]], repeats: int,
                     clock: Callable[[], float] = time.perf_counter) -> dict[Key, float]:
    """The best of `repeats` timings of each step after one warm-up round, taken in rounds
    (A, B, C, A, B, C, ...), never one candidate's repeats in a row.

    On a shared host a burst of someone else's load lasts seconds: timed back to back, one
    candidate can see only the burst and lose to a slower one (a Fashion-MNIST run's probe
    picked fp32 NHWC, which a probe minutes later timed the slowest of four, and trained at
    half the speed of bf16). In rounds every candidate sees each burst, and the best of its
    rounds is a quiet one.
    """
    best = {key: float("inf") for key in steps}
    for round_ in range(repeats + 1):
        for key, step in steps.items():
            start = clock()
            step()
            if round_ > 0:  # round 0 warms up (allocations, oneDNN kernel choice)
                best[key] = min(best[key], clock() - start)
    return best


@functools.lru_cache(maxsize=8)
def cpu_step_seconds(spec: ModelSpec, batch: int, dtypes: tuple[torch.dtype | None, ...],
                     repeats: int = 5) -> dict[Key, float]:
    """Seconds of one training-like step of this very spec and batch (G forward, D forward
    with its auxiliary loss when the family has one, backward) for each autocast dtype in
    `dtypes` and each memory layout (channels_last True / False; False only for a family
    without convolutions), the best of `repeats` taken in interleaved rounds.

    The networks' own mix of layers decides, and no rule of thumb does: on two quiet Zen 4
    cores (AVX-512-BF16) bf16 gains 1.2x (FastGAN, width 1/8, batch 16, 64 px), 1.6x (DCGAN)
    and 2.4x (R3GAN) per step; NHWC is 1.45x faster than NCHW for DCGAN and 1.6x for R3GAN in
    fp32, yet 1.24x slower for FastGAN in bf16. Fresh networks on a forked RNG leave the global
    random state as it was.
    """
    family = get_model(spec.name)
    layouts = (True, False) if family.channels_last else (False,)
    steps: dict[Key, Callable[[], None]] = {}
    with torch.random.fork_rng(devices=[]):
        for channels_last in layouts:
            torch.manual_seed(0)
            layout = torch.channels_last if channels_last else torch.contiguous_format
            G = build_generator(spec).to(memory_format=layout)
            D = build_discriminator(spec).to(memory_format=layout)
            z = torch.randn(batch, spec.nz)
            for dtype in dtypes:
                steps[(dtype, channels_last)] = functools.partial(
                    _probe_step, G, D, z, dtype, family.d_aux_loss)
        return interleaved_best(steps, repeats)


def _probe_step(G: torch.nn.Module, D: torch.nn.Module, z: torch.Tensor,
                dtype: torch.dtype | None, aux: bool) -> None:
    """G forward, D forward (with its auxiliary loss when it has one), backward."""
    with torch.autocast("cpu", dtype=dtype, enabled=dtype is not None):
        out = D(G(z), aux=True) if aux else D(G(z))
        logits, extra = out if aux else (out, 0.0)
        loss = logits.float().mean() + extra
    loss.backward()


def fastest_on_cpu(seconds: dict[Key, float], auto: bool) -> Key:
    """(dtype, channels_last) from a probe's timings. With `auto`, bf16 only when its faster
    layout beats fp32's faster layout by BF16_MIN_SPEEDUP (timings on a busy machine are noise;
    a run also keeps its first choice); otherwise the probe's one dtype. Then the faster layout
    for that dtype."""
    def best(dtype: torch.dtype | None) -> float:
        return min(t for (d, _), t in seconds.items() if d is dtype)

    dtypes = {d for d, _ in seconds}
    dtype = next(iter(dtypes))
    if auto:
        bf16_wins = (torch.bfloat16 in dtypes
                     and best(None) >= BF16_MIN_SPEEDUP * best(torch.bfloat16))
        dtype = torch.bfloat16 if bf16_wins else None
    layout = min((key for key in seconds if key[0] is dtype), key=seconds.__getitem__)[1]
    return dtype, layout


def resolve_precision(cfg: TrainConfig, device: torch.device, spec: ModelSpec, batch: int,
                      recorded: dict | None = None) -> Precision:
    """cfg.amp -> autocast dtype, and the memory layout.

    amp auto: on CUDA bf16 when supported (fp16 otherwise) and NHWC for convolutional families
    (tensor cores). On a CPU, a probe of the run's own networks picks both: bf16 where the CPU
    has it natively (cpu_has_native_bf16) and it is measured faster, else fp32; then the faster
    layout for that dtype. An explicit amp (off, bf16, fp16) is obeyed, with the family's
    default layout: no timing decides anything, so two runs of the same settings are the same
    computation, bit for bit.

    `recorded` holds what a run folder says it started with ({"amp": "torch.bfloat16",
    "channels_last": false}): a resumed auto run keeps it, so a noisy probe cannot switch
    precision or layout halfway through a run.
    """
    recorded = recorded or {}
    family = get_model(cfg.model)
    explicit = {"off": None, "bf16": torch.bfloat16, "fp16": torch.float16}
    if cfg.amp != "auto":
        return Precision(device=device, dtype=explicit[cfg.amp],
                         channels_last=family.channels_last)
    if device.type == "cuda":
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return Precision(device=device, dtype=dtype, channels_last=family.channels_last)
    if recorded.get("amp") in DTYPES and (isinstance(recorded.get("channels_last"), bool)
                                          or not family.channels_last):
        return Precision(device=device, dtype=DTYPES[recorded["amp"]],
                         channels_last=bool(recorded.get("channels_last", False)))
    candidates = (None, torch.bfloat16) if cpu_has_native_bf16() else (None,)
    if recorded.get("amp") in DTYPES:  # a run from before layouts were recorded: keep its dtype
        candidates = (DTYPES[recorded["amp"]],)
    dtype, channels_last = fastest_on_cpu(cpu_step_seconds(spec, batch, candidates),
                                          auto=len(candidates) > 1)
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
