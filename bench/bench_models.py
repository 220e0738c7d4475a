"""Quality at an equal CPU budget: DCGAN-RaLSGAN against StyleGAN2 on the embedded emoji at 64 px.

Usage (from the repository root):
    .venv/bin/python bench/bench_models.py --minutes 10       # the run in bench/RESULTS.md
    .venv/bin/python bench/bench_models.py --minutes 0.05 --n 32 --limit 48   # a smoke run

Each model gets its own project folder under --out (params.yaml with pad.size=64 plus the model's
settings below) and runs the real pipeline. First both run `python -m pipeline run train` side
by side, one torch thread each (train.threads=1): fetch, crop, pad, augment, then training for
exactly `--minutes` of wall clock (train.minutes, with a kimg no run reaches), so each gets one
core for the same time, an equal CPU budget. Then, one after the other, `run score`: --n
generated PNGs scored against that folder's data/clean (the 2,611 64-px emoji); the second
project reuses the first one's reference statistics (same pixels, same cache key). Prints kimg
reached, img/s, FID and KID per model; the grids are <out>/<model>/data/train/fakes*.png.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

# What a contestant would pick for each family on this data (see params.yaml and
# profiles/wrist-watch.yaml); the CPU-sized StyleGAN2 channels are the train defaults.
MODELS: dict[str, list[str]] = {
    "dcgan-ralsgan": [  # params.yaml's settings: seed 004's recipe at a quarter width
        "train.model=dcgan", "train.loss=ralsgan",
    ],
    "stylegan2": [  # seed 000's recipe: non-saturating loss + lazy R1, Adam(0.0025, 0, 0.99)
        "train.model=stylegan2", "train.loss=nonsaturating", "train.batch_size=32",
        "train.lr_g=0.0025", "train.lr_d=0.0025", "train.beta1=0.0", "train.beta2=0.99",
        "train.r1_gamma=0.1", "train.ema_kimg=10",
    ],
}


def pipeline_command(stage: str, name: str, project: Path, args: argparse.Namespace) -> list[str]:
    """`python -m pipeline run <stage>` in `project` with this benchmark's settings."""
    settings = [f"fetch.limit={args.limit}", "pad.size=64", "pad.workers=1", "train.threads=1",
                f"train.minutes={args.minutes}", "train.kimg=100000",
                f"train.snapshot_kimg={max(1, round(args.minutes))}",
                f"generate.count={args.n}", f"score.n={args.n}", *MODELS[name]]
    command = [sys.executable, "-m", "pipeline", "run", stage, "--root", str(project),
               "--params", str(ROOT / "params.yaml"), "--quiet"]
    for setting in settings:
        command += ["--set", setting]
    return command


def check(name: str, done: subprocess.CompletedProcess | subprocess.Popen, out: str) -> None:
    if done.returncode != 0:
        raise SystemExit(f"{name} failed:\n{out[-3000:]}")


def results(name: str, project: Path) -> dict:
    train = json.loads((project / "data/train/manifest.json").read_text())
    score = json.loads((project / "data/score/score.json").read_text())
    return {"model": name, "kimg": train["counts"]["kimg"],
            "img_per_s": train["counts"]["img_per_s"], "fid": score["fid"],
            "kid": score["kid_mean"], "n": score["n_generated"]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per model")
    parser.add_argument("--n", type=int, default=2048, help="images generated and scored")
    parser.add_argument("--limit", type=int, default=0, help="emoji used (0 = all)")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/out/models")
    args = parser.parse_args()

    projects = {name: args.out / name for name in MODELS}
    for project in projects.values():
        shutil.rmtree(project, ignore_errors=True)
        project.mkdir(parents=True)
    # 1. Train side by side: one core each for the same minutes.
    start = time.perf_counter()
    running = {name: subprocess.Popen(pipeline_command("train", name, project, args), cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
               for name, project in projects.items()}
    for name, process in running.items():
        out, _ = process.communicate()
        check(name, process, out)
    print(f"trained both in {time.perf_counter() - start:.0f} s", flush=True)
    # 2. Generate and score one after the other; the second reuses the reference statistics.
    rows, first = [], None
    for name, project in projects.items():
        if first is not None:
            shutil.copytree(first / "data/cache", project / "data/cache", dirs_exist_ok=True)
        done = subprocess.run(pipeline_command("score", name, project, args), cwd=ROOT,
                              capture_output=True, text=True)
        check(name, done, done.stdout + done.stderr)
        rows.append(results(name, project))
        first = first or project
        print(json.dumps(rows[-1]), flush=True)
    print(f"\n{args.minutes:g} minutes of training on one core each, 64 px emoji, "
          f"FID on {args.n} images:")
    for row in rows:
        print(f"  {row['model']:<14} {row['kimg']:8.1f} kimg {row['img_per_s']:7.1f} img/s  "
              f"FID {row['fid']:7.2f}  KID {row['kid']:.4f}")
    ratio = rows[1]["fid"] / rows[0]["fid"]
    print(f"FID ratio stylegan2 / dcgan-ralsgan: {ratio:.2f}x")


if __name__ == "__main__":
    main()
