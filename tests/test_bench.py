"""The benchmarks still run: each one end to end at a toy size (their numbers are not checked
here; bench/RESULTS.md records real runs). Catches a library change that breaks a benchmark."""

import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("script, args", [
    ("bench_train.py", ["--width", "0.125", "--batch", "8", "--steps", "2", "--warmup", "1",
                        "--group", "1"]),
    ("bench_generate.py", ["--n", "24", "--width", "0.125", "--batch-size", "8"]),
    ("bench_pad.py", ["--n", "8"]),
    ("bench_families.py", ["--size", "32", "--steps", "3", "--warmup", "1", "--group", "1",
                           "--only", "dcgan", "fastgan"]),
    ("bench_layout.py", ["--size", "32", "--repeats", "1", "--only", "fastgan"]),
    ("bench_models.py", ["--minutes", "0.02", "--n", "16", "--eval-n", "10", "--limit", "24",
                         "--size", "64", "--train-size", "32", "--set", "train.seed=1",
                         "--only", "fastgan"]),
])
def test_benchmark_runs_at_toy_size(script, args, tmp_path):
    extra = ["--out", str(tmp_path / "out")] if script in ("bench_generate.py",
                                                           "bench_models.py") else []
    result = subprocess.run([sys.executable, str(REPO / "bench" / script), *args, *extra],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "x" in result.stdout  # every benchmark prints a ratio such as "2.03x"
