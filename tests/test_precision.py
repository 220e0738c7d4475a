"""Which precision training runs in: amp=auto's CPU rule, the probe, and a resumed run's choice."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from pipeline.core.config import TrainConfig
from pipeline.gan import precision
from pipeline.gan.models import ModelSpec

CPU = torch.device("cpu")
SPEC = ModelSpec(name="dcgan", size=32, channels=3, nz=16, width=1 / 16)


def test_native_bf16_is_read_from_the_cpu_flags(tmp_path: Path) -> None:
    """The flags a Xeon with AMX or a Zen 4 lists say yes; an AVX2-only EPYC's say no."""
    xeon, epyc = tmp_path / "xeon", tmp_path / "epyc"
    xeon.write_text("flags\t\t: fpu sse avx2 avx512f avx512_bf16 amx_bf16 amx_tile\n")
    epyc.write_text("flags\t\t: fpu sse avx2 fma\n")
    assert precision.cpu_has_native_bf16(xeon) and not precision.cpu_has_native_bf16(epyc)
    assert not precision.cpu_has_native_bf16(tmp_path / "missing")


def test_the_probe_times_the_real_networks_and_leaves_the_rng_alone() -> None:
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    speedup = precision.cpu_bf16_speedup(SPEC, 4)
    assert speedup > 0 and torch.equal(torch.rand(3), expected)  # training's RNG untouched
    fastgan = ModelSpec(name="fastgan", size=32, channels=3, nz=16, width=1 / 16)
    assert precision.cpu_bf16_speedup(fastgan, 2) > 0  # the auxiliary-loss path runs too


def test_auto_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: fp32 without native bf16 (no probe at all), bf16 only when the probe says faster.
    The CPU flags and the probe's verdict are mocked: this machine has one CPU, not both."""
    auto = TrainConfig(amp="auto")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda *a: pytest.fail("probed"))
    assert precision.resolve_precision(auto, CPU, SPEC, 4).dtype is None
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    for speedup, dtype in ((1.3, torch.bfloat16), (1.05, None), (0.8, None)):
        monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda *a, s=speedup: s)
        assert precision.resolve_precision(auto, CPU, SPEC, 4).dtype is dtype
    # Explicit settings are obeyed as written.
    assert precision.resolve_precision(TrainConfig(amp="off"), CPU, SPEC, 4).dtype is None
    assert precision.resolve_precision(TrainConfig(amp="bf16"), CPU, SPEC, 4).dtype is (
        torch.bfloat16)


def test_a_resumed_auto_run_keeps_the_precision_it_started_with(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_bf16_speedup", lambda *a: pytest.fail("probed"))
    auto = TrainConfig(amp="auto")
    assert precision.resolve_precision(auto, CPU, SPEC, 4, "torch.bfloat16").dtype is (
        torch.bfloat16)
    assert precision.resolve_precision(auto, CPU, SPEC, 4, "None").dtype is None
