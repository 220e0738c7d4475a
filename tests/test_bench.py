"""The benchmarks still run and still check themselves.

`make bench`'s runner (bench/run_all.py) runs every ours-vs-theirs benchmark at a toy size; each
one appends its result only after its own sanity checks passed (same pixels, same FID to 1e-3,
same image count; bench/common.py), so the test reads those records. Their timings are not
checked here: bench/RESULTS.md records real runs. The other scripts (the model tournament, the
layout probe, the families' throughput, the DCGAN's layers, the Frechet distance) run at a toy
size too. Catches a library change that breaks a benchmark or its baseline.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.slow


def test_make_bench_runner_at_toy_size_every_benchmark_checked(tmp_path):
    command = [sys.executable, str(REPO / "bench" / "run_all.py"), "--size", "toy",
               "--jobs", "2", "--out", str(tmp_path / "out")]  # two lanes: checks, not timings
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = [json.loads(line) for line in
            (tmp_path / "out" / "results.jsonl").read_text().splitlines()]
    assert {row["benchmark"] for row in rows} == {"train", "generate", "pad", "fid_features",
                                                  "fid_repeat"}
    for row in rows:  # a row exists only if its checks held; they are recorded all the same
        assert row["checks"] and all(row["checks"].values()), row
        assert row["ours_s"] > 0 and row["theirs_s"] > 0 and row["cpu"]
    fids = [row["notes"] for row in rows if row["benchmark"].startswith("fid")]
    assert all(abs(n["ours_fid"] - n["theirs_fid"]) <= 1e-3 for n in fids if "ours_fid" in n)
    assert "| benchmark | case |" in result.stdout  # the one table


@pytest.mark.parametrize("script, args", [
    ("bench_families.py", ["--size", "32", "--steps", "3", "--warmup", "1", "--group", "1",
                           "--only", "dcgan", "fastgan"]),
    ("bench_layout.py", ["--size", "32", "--repeats", "1", "--only", "fastgan"]),
    ("bench_dcgan_layers.py", ["--steps", "3", "--warmup", "1", "--group", "1", "--rounds", "1"]),
    ("bench_frechet.py", ["--sizes", "20x30", "300x40", "--dim", "64", "--repeats", "1"]),
    ("bench_models.py", ["--minutes", "0.02", "--n", "16", "--eval-n", "10", "--limit", "24",
                         "--size", "64", "--train-size", "32", "--set", "train.seed=1",
                         "--only", "fastgan"]),
])
def test_benchmark_runs_at_toy_size(script, args, tmp_path):
    extra = ["--out", str(tmp_path / "out")] if script == "bench_models.py" else []
    result = subprocess.run([sys.executable, str(REPO / "bench" / script), *args, *extra],
                            cwd=REPO, capture_output=True, text=True, timeout=600,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 0, result.stdout + result.stderr
    assert "x" in result.stdout  # every benchmark prints a ratio such as "2.03x"
    if script == "bench_families.py":  # every side also says how near the machine's roof it ran
        sides = [json.loads(line) for line in result.stdout.splitlines() if line.startswith("{")]
        assert len(sides) == 4  # two families, fp32 and bf16
        assert all(side["step_gflop"] > 0 and 0 < side["peak_fraction"] for side in sides)
        assert len({side["step_gflop"] for side in sides}) == 2  # same FLOPs in both precisions


def test_tournament_fastgan_default_entry_is_params_yaml_recipe():
    """The tournament's `fastgan-default` entry trains what `make all` trains (params.yaml's
    train: section), so its row speaks for the default; only the evaluation cadence differs."""
    import yaml
    sys.path.insert(0, str(REPO / "bench"))
    from bench_models import RECIPES

    default = yaml.safe_load((REPO / "params.yaml").read_text())["train"]
    recipe = dict(setting.split("=", 1) for setting in RECIPES["fastgan-default"])
    for key, value in recipe.items():
        name = key.removeprefix("train.")
        if name != "eval_kimg":  # the tournament's budget is minutes, not params.yaml's 17
            assert yaml.safe_load(value) == default[name], (key, value, default[name])
    kept = {"model", "loss", "width", "recon_size", "batch_size", "lr_g", "lr_d", "beta1",
            "beta2", "diffaugment", "ema_kimg"}
    assert kept <= {key.removeprefix("train.") for key in recipe}
