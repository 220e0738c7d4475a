"""`make bench`: every ours-vs-theirs benchmark at a small size, then one table of ratios.

Usage (from the repository root, on a quiet machine):
    .venv/bin/python bench/run_all.py                 # small sizes: about 10 minutes on 2 cores
    .venv/bin/python bench/run_all.py --size toy      # seconds each: the smoke test's run

Each benchmark runs as its own command with $BENCH_RESULTS pointing at <out>/results.jsonl; it
checks that both sides did the same work (same pixels, same FID, same image count) before it
appends its result (bench/common.py), and fails loudly otherwise. The repeat-scoring benchmark
needs a project that has been through `make all`: a tiny one is made under <out>/project (its
first `make fid` is the untimed warm-up). Figures for bench/RESULTS.md come from the full-size
runs of each script (their docstrings); this table is for spotting a regression or a broken
baseline quickly, with the ratio and the peak fraction side by side.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
sys.path.insert(0, str(BENCH))
from common import RESULTS_ENV, cpu_name  # noqa: E402

# A project small enough to go through make all in well under a minute (as the end-to-end
# tests' TINY): the repeat-scoring benchmark scores its data/generated.
TINY_PROJECT = """\
fetch:
  source: builtin:fluent-emoji-3d
  limit: {limit}
crop:
  method: alpha
pad:
  size: 32
train:
  model: dcgan
  loss: ralsgan
  width: 0.125
  kimg: 0.2
  batch_size: 16
  tick_kimg: 0.1
generate:
  count: {n}
score:
  n: {n}
  batch_size: 20
"""

# (script, arguments) per size; "{out}" and "{project}" are filled in.
SUITES: dict[str, list[tuple[str, list[str]]]] = {
    "toy": [
        ("bench_train.py", ["--width", "0.125", "--batch", "8", "--steps", "2", "--warmup", "1",
                            "--group", "1"]),
        ("bench_generate.py", ["--n", "24", "--width", "0.125", "--batch-size", "8",
                               "--out", "{out}/generate"]),
        ("bench_pad.py", ["--n", "6", "--quick"]),
        ("bench_fid_repeat.py", ["--n", "16", "--project", "{project}"]),
        ("bench_fid.py", ["--n", "8", "--batch-size", "4"]),
    ],
    "small": [
        ("bench_train.py", ["--width", "0.25", "--batch", "32", "--steps", "10", "--warmup", "2",
                            "--group", "2"]),
        ("bench_generate.py", ["--n", "1000", "--out", "{out}/generate"]),
        ("bench_pad.py", ["--n", "200"]),
        ("bench_fid.py", ["--n", "200"]),
        ("bench_fid_repeat.py", ["--n", "200", "--project", "{project}"]),
    ],
}
PROJECT_SIZES = {"toy": (16, 16), "small": (300, 200)}  # (emoji fetched, images generated)
# With --jobs 2 (the smoke test: timings are not read there, only checks), two lanes of about
# equal length run side by side.
LANES = (("bench_fid_repeat.py",), ("bench_train.py", "bench_generate.py", "bench_pad.py",
                                    "bench_fid.py"))


def make_project(folder: Path, size: str) -> None:
    """A tiny project for the repeat-scoring benchmark (params only: its warm-up builds it)."""
    limit, n = PROJECT_SIZES[size]
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "params.yaml").write_text(TINY_PROJECT.format(limit=limit, n=n), encoding="utf-8")
    downloads = ROOT / "data" / "downloads"  # the npm tarball, when this checkout has it
    if downloads.is_dir() and not (folder / "data" / "downloads").exists():
        shutil.copytree(downloads, folder / "data" / "downloads")


def run_lane(scripts: tuple[str, ...], commands: dict[str, list[str]],
             env: dict[str, str]) -> str:
    """Run these benchmarks one after the other; '' when all passed, else what failed."""
    for script in scripts:
        start = time.perf_counter()
        done = subprocess.run(commands[script], cwd=ROOT, env=env, capture_output=True,
                              text=True)
        print(f"== {' '.join(commands[script][1:])} ({time.perf_counter() - start:.0f} s)\n"
              f"{done.stdout[-3000:]}", flush=True)
        if done.returncode != 0:
            return f"{script} failed (exit {done.returncode}):\n{done.stderr[-3000:]}"
    return ""


def table(rows: list[dict]) -> str:
    """Markdown: one line per result."""
    lines = ["| benchmark | case | ours | theirs | ours is | peak fraction (ours / theirs) "
             "| checks |", "|---|---|---:|---:|---:|---|---|"]
    for row in rows:
        notes = row["notes"]
        peak = (f"{100 * notes['ours_peak_fraction']:.1f}% / "
                f"{100 * notes['theirs_peak_fraction']:.1f}%"
                if "ours_peak_fraction" in notes else "")
        lines.append(f"| {row['benchmark']} | {row['case']} | {row['ours_s']:.4g} s "
                     f"| {row['theirs_s']:.4g} s | {row['ratio']:.2f}x | {peak} "
                     f"| {len(row['checks'])} passed |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", choices=list(SUITES), default="small")
    parser.add_argument("--out", type=Path, default=BENCH / "out" / "run_all")
    parser.add_argument("--jobs", type=int, choices=(1, 2), default=1,
                        help="2: two benchmarks at a time (a smoke run; ratios are then noise)")
    args = parser.parse_args()
    out = args.out.resolve()
    shutil.rmtree(out / "generate", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    results = out / "results.jsonl"
    results.unlink(missing_ok=True)
    project = out / "project"
    make_project(project, args.size)
    env = {**os.environ, RESULTS_ENV: str(results)}
    commands = {script: [sys.executable, str(BENCH / script),
                         *(a.format(out=out, project=project) for a in arguments)]
                for script, arguments in SUITES[args.size]}
    lanes = LANES if args.jobs == 2 else (tuple(commands),)
    with ThreadPoolExecutor(len(lanes)) as pool:
        for failure in pool.map(lambda lane: run_lane(lane, commands, env), lanes):
            if failure:
                raise SystemExit(failure)
    rows = [json.loads(line) for line in results.read_text(encoding="utf-8").splitlines()]
    print(f"\n{args.size} sizes on {cpu_name()} ({os.cpu_count()} CPUs); ratio = theirs / ours")
    print(table(rows))


if __name__ == "__main__":
    main()
