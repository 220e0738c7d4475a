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
    seconds = precision.cpu_step_seconds(SPEC, 4, (None, torch.bfloat16))
    assert set(seconds) == {(d, cl) for d in (None, torch.bfloat16) for cl in (True, False)}
    assert min(seconds.values()) > 0 and torch.equal(torch.rand(3), expected)  # RNG untouched
    fastgan = ModelSpec(name="fastgan", size=32, channels=3, nz=16, width=1 / 16)
    assert min(precision.cpu_step_seconds(fastgan, 2, (None,)).values()) > 0  # aux loss path
    # The MLP has no convolutions: one layout only.
    mlp = ModelSpec(name="mlp", size=8, channels=1, nz=4)
    assert set(precision.cpu_step_seconds(mlp, 2, (None,))) == {(None, False)}


def test_the_probe_times_candidates_in_rounds_so_a_burst_of_load_hits_both() -> None:
    """A neighbour's burst triples the cost of timed calls 3 to 5 (a hand-made clock: fp32
    costs 1.0, bf16 0.8). In rounds, fp32 is timed 3.0, 3.0, 1.0 and bf16 2.4, 0.8, 0.8: each
    keeps a quiet round, and bf16 stays the faster, as it is."""
    fp32, bf16 = (None, True), (torch.bfloat16, True)
    now, order = [0.0], []

    def step(key: tuple, cost: float):
        def run() -> None:
            order.append(key)
            now[0] += cost * (3.0 if 3 <= len(order) <= 5 else 1.0)  # calls 1-2: warm-up
        return run

    best = precision.interleaved_best({fp32: step(fp32, 1.0), bf16: step(bf16, 0.8)},
                                      repeats=3, clock=lambda: now[0])
    assert order == [fp32, bf16] * 4  # one warm-up round, then three timed rounds
    assert best == pytest.approx({fp32: 1.0, bf16: 0.8})


def test_the_choice_from_a_probe() -> None:
    """bf16 needs BF16_MIN_SPEEDUP over fp32, each in its faster layout; then the faster layout.
    Timings written by hand: what a Zen 4 (bf16 wins, NCHW for it) and an AVX2 CPU would give."""
    fp32, bf16 = None, torch.bfloat16
    zen4 = {(fp32, True): 1.0, (fp32, False): 1.4, (bf16, True): 0.9, (bf16, False): 0.8}
    assert precision.fastest_on_cpu(zen4, auto=True) == (bf16, False)  # 1.0 / 0.8 = 1.25
    close = {**zen4, (bf16, False): 0.95}  # 1.0 / 0.9 = 1.11 >= 1.1: bf16, NHWC
    assert precision.fastest_on_cpu(close, auto=True) == (bf16, True)
    noise = {**zen4, (bf16, True): 0.95, (bf16, False): 0.93}  # 1.0 / 0.93 = 1.08: fp32
    assert precision.fastest_on_cpu(noise, auto=True) == (fp32, True)
    avx2 = {(fp32, True): 1.0, (fp32, False): 0.7}
    assert precision.fastest_on_cpu(avx2, auto=True) == (fp32, False)
    assert precision.fastest_on_cpu({(bf16, True): 1.0, (bf16, False): 2.0}, auto=False) == (
        bf16, True)


def test_auto_on_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    """auto: fp32 without native bf16 (bf16 not even timed), bf16 only when the probe says
    faster; the layout the probe found faster. The CPU flags and the timings are mocked: this
    machine has one CPU."""
    probed: list[tuple] = []

    def timings(spec: ModelSpec, batch: int, dtypes: tuple) -> dict:
        probed.append(dtypes)
        table = {(None, True): 1.0, (None, False): 2.0, (torch.bfloat16, True): 0.6,
                 (torch.bfloat16, False): 0.5}
        return {key: t for key, t in table.items() if key[0] in dtypes}

    monkeypatch.setattr(precision, "cpu_step_seconds", timings)
    auto = TrainConfig(amp="auto")
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: False)
    assert precision.resolve_precision(auto, CPU, SPEC, 4) == precision.Precision(CPU, None, True)
    assert probed[-1] == (None,)
    monkeypatch.setattr(precision, "cpu_has_native_bf16", lambda: True)
    assert precision.resolve_precision(auto, CPU, SPEC, 4) == precision.Precision(
        CPU, torch.bfloat16, False)
    assert probed[-1] == (None, torch.bfloat16)
    # An older run folder recorded its dtype only: kept, and the layout probed for it.
    assert precision.resolve_precision(auto, CPU, SPEC, 4, {"amp": "None"}) == (
        precision.Precision(CPU, None, True))
    assert probed[-1] == (None,)


def test_explicit_settings_are_obeyed_without_a_probe(monkeypatch: pytest.MonkeyPatch) -> None:
    """amp off / bf16: no timing decides anything, so the same settings are the same
    computation on every run (the family's default layout)."""
    monkeypatch.setattr(precision, "cpu_step_seconds", lambda *a: pytest.fail("probed"))
    assert precision.resolve_precision(TrainConfig(amp="off"), CPU, SPEC, 4) == (
        precision.Precision(CPU, None, True))
    assert precision.resolve_precision(TrainConfig(amp="bf16"), CPU, SPEC, 4) == (
        precision.Precision(CPU, torch.bfloat16, True))
    mlp = ModelSpec(name="mlp", size=8, channels=1, nz=4)
    assert not precision.resolve_precision(TrainConfig(model="mlp", amp="off"), CPU, mlp, 2
                                           ).channels_last


def test_a_resumed_auto_run_keeps_the_precision_it_started_with(
        monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(precision, "cpu_step_seconds", lambda *a: pytest.fail("probed"))
    auto = TrainConfig(amp="auto")
    kept = precision.resolve_precision(
        auto, CPU, SPEC, 4, {"amp": "torch.bfloat16", "channels_last": False})
    assert kept.dtype is torch.bfloat16 and not kept.channels_last
    kept = precision.resolve_precision(auto, CPU, SPEC, 4, {"amp": "None", "channels_last": True})
    assert kept.dtype is None and kept.channels_last
