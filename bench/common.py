"""What every benchmark shares: its sanity checks, one result line, the machine's own peak.

A benchmark compares the path a user runs ("ours") with what a user would otherwise run
("theirs") on the same work. `finish` first checks that both sides produced the same result
(same pixels, same FID, same image count: each benchmark names its checks) and stops loudly when
one fails, since a ratio between two different results means nothing; then it prints the ratio
and, when $BENCH_RESULTS names a file, appends the result to it as one JSON line. That file is
what `bench/run_all.py` (`make bench`) turns into one table, and what tests/test_bench.py reads.
"""

from __future__ import annotations

import json
import os
import platform
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from torch.utils import flop_counter
from torch.utils._python_dispatch import TorchDispatchMode

RESULTS_ENV = "BENCH_RESULTS"  # file the result lines are appended to (unset: print only)


@dataclass
class Result:
    """One comparison: `ratio` is how many times faster ours is (theirs_s / ours_s)."""

    benchmark: str  # e.g. "fid_repeat"
    case: str  # which line of that benchmark, e.g. "fp32" or "1 worker"
    ours_s: float  # seconds (or seconds per unit) of the pipeline's path
    theirs_s: float  # the same for the baseline, same unit
    checks: dict[str, bool]  # sanity: both sides did the same work and got the same result
    notes: dict[str, float | str] = field(default_factory=dict)  # e.g. FIDs, peak fraction

    @property
    def ratio(self) -> float:
        return self.theirs_s / self.ours_s


class SanityError(SystemExit):
    """A benchmark whose two sides disagree: its ratio is not reported."""


def finish(result: Result) -> Result:
    """Check, print and record one result (see the module docstring)."""
    failed = [name for name, ok in result.checks.items() if not ok]
    if failed:
        raise SanityError(f"{result.benchmark} [{result.case}]: sanity check failed: "
                          f"{', '.join(failed)}; notes {result.notes}")
    print(f"{result.benchmark} [{result.case}]: ours {result.ours_s:.4g} s, theirs "
          f"{result.theirs_s:.4g} s: {result.ratio:.2f}x; checks passed: "
          f"{', '.join(result.checks)}")
    target = os.environ.get(RESULTS_ENV)
    if target:
        row = {**asdict(result), "ratio": result.ratio, "cpu": cpu_name()}
        with Path(target).open("a", encoding="utf-8") as handle:
            handle.write(json.dumps(row) + "\n")
    return result


def cpu_name() -> str:
    """The CPU's model name (what `lscpu` prints), for every recorded figure."""
    try:
        for line in Path("/proc/cpuinfo").read_text(encoding="utf-8").splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def peak_flops(dtype: torch.dtype = torch.float32, side: int = 2048, repeats: int = 5,
               device: str = "cpu") -> float:
    """This machine's matmul rate (FLOP/s) in `dtype`, best of `repeats`: the roof that a
    compute benchmark's achieved FLOP/s is a fraction of, measured in the same run."""
    a = torch.randn(side, side, device=device).to(dtype)
    b = torch.randn(side, side, device=device).to(dtype)
    best = float("inf")
    for _ in range(repeats + 1):  # the first is a warm-up
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        a @ b
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return 2 * side**3 / best


class FlopTally(TorchDispatchMode):
    """Counts FLOPs with torch's own formulas (those of FlopCounterMode), without its module
    tracker: the tracker's hooks fail on the training loop's views made under no_grad."""

    def __init__(self) -> None:
        super().__init__()
        self.total = 0

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_counter.flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.total += formula(*args, **kwargs, out_val=out)
        return out


def step_flops(step) -> float:
    """FLOPs of one call of `step()` as torch counts them (matmuls and convolutions, forward
    and backward): the numerator of a peak fraction."""
    with FlopTally() as tally:
        step()
    return float(tally.total)
