"""The equal-budget tournament: every model family, its recommended recipe, the same minutes.

Usage (from the repository root, on a quiet machine: nothing else running):
    .venv/bin/python bench/bench_models.py --size 64 --minutes 10            # the 64 px round
    .venv/bin/python bench/bench_models.py --size 128 --minutes 15 --only dcgan-ralsgan fastgan
    .venv/bin/python bench/bench_models.py --size 64 --minutes 0.05 --n 24 --limit 40  # smoke

One entry at a time, never side by side: each gets the whole machine (both cores) for exactly
`--minutes` of training wall clock (train.minutes, with a kimg no run reaches; evaluation of
snapshots counts in that time, as it does in `make all`). Then `run score`: --n generated PNGs
(from the best evaluated snapshot, generate.snapshot=best) against that size's data/clean, with
pytorch-fid's Inception: the same reference, the same n, the same scorer for every entry.

Resumable: the data stages run once per size in <out>/<size>px/base and are hard-linked into
each entry's project; each finished entry appends one JSON line to <out>/results.jsonl, and a
rerun skips entries already there (same size, minutes, n, recipe). A killed entry restarts.
Grids: <out>/<size>px/<entry>/data/train/fakes*.png, and the first 64 scored samples (from the
best snapshot) in <out>/tournament-<size>px-<entry>.png (bench/results/ keeps the recorded ones).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import torch  # noqa: E402

from pipeline.core.config import TrainConfig  # noqa: E402
from pipeline.gan.plots import make_grid  # noqa: E402
from pipeline.gan.precision import eval_dtype  # noqa: E402
from pipeline.scoring.snapshots import SnapshotScorer  # noqa: E402

# Each family's recipe as a contestant would set it on two CPU cores: the paper's loss, tricks
# and optimiser, at a width this machine can train. eval_kimg aims at about four evaluations.
# Every key params.yaml sets under train: is set here too, so an entry is its recipe alone.
RECIPES: dict[str, list[str]] = {
    "dcgan-ralsgan": [  # the former params.yaml: seed 004's recipe at a quarter width
        "train.model=dcgan", "train.loss=ralsgan", "train.width=0.25", "train.batch_size=64",
        "train.lr_g=0.0008", "train.lr_d=0.0008", "train.real_label=0.8", "train.ema_kimg=2",
        "train.eval_kimg=20", 'train.diffaugment=""',
    ],
    "dcgan-diffaug": [  # the same network with DiffAugment and the DiffAugment paper's lr
        "train.model=dcgan", "train.loss=ralsgan", "train.width=0.25", "train.batch_size=64",
        "train.lr_g=0.0002", "train.lr_d=0.0002", "train.real_label=0.8", "train.ema_kimg=2",
        "train.diffaugment=color,translation", "train.eval_kimg=20",
    ],
    "stylegan2": [  # seed 000 / ADA's small-data recipe: non-saturating + lazy R1, Adam(0, 0.99)
        "train.model=stylegan2", "train.loss=nonsaturating", "train.batch_size=32",
        "train.lr_g=0.0025", "train.lr_d=0.0025", "train.beta1=0.0", "train.beta2=0.99",
        "train.r1_gamma=0.1", "train.ema_kimg=10", "train.eval_kimg=2",
        "train.diffaugment=color,translation,cutout",
    ],
    "fastgan": [  # Liu et al. 2021: hinge, DiffAugment color+translation, Adam(2e-4, 0.5, 0.999)
        "train.model=fastgan", "train.loss=hinge", "train.width=0.125", "train.batch_size=8",
        "train.lr_g=0.0002", "train.lr_d=0.0002", "train.beta1=0.5", "train.beta2=0.999",
        "train.diffaugment=color,translation", "train.ema_kimg=2", "train.eval_kimg=5",
    ],
    "fastgan-default": [  # params.yaml's FastGAN: the paper's, but DiffAugment translation alone
        # and G's learning rate twice D's
        "train.model=fastgan", "train.loss=hinge", "train.width=0.125", "train.batch_size=8",
        "train.lr_g=0.0004", "train.lr_d=0.0002", "train.beta1=0.5", "train.beta2=0.999",
        "train.diffaugment=translation", "train.recon_size=16", "train.ema_kimg=2",
        "train.eval_kimg=5",
    ],
    "r3gan": [  # Huang et al. 2024: RpGAN + R1 + R2 every step, Adam(2e-4, 0, 0.99), no tricks
        "train.model=r3gan", "train.loss=rpgan", "train.width=0.125", "train.batch_size=32",
        "train.lr_g=0.0002", "train.lr_d=0.0002", "train.beta1=0.0", "train.beta2=0.99",
        "train.r1_gamma=0.05", "train.r2_gamma=0.05", "train.reg_interval=1",
        "train.ema_kimg=2", "train.eval_kimg=3", 'train.diffaugment=""',
    ],
}
DATA_STAGES = ("raw", "crop", "clean", "pack", "cache")  # folders shared by every entry


def common_settings(args: argparse.Namespace) -> list[str]:
    """What every entry shares: data, budget, sample sizes."""
    return [f"fetch.limit={args.limit}", f"pad.size={args.size}", f"train.minutes={args.minutes}",
            f"augment.size={args.train_size}",
            "train.kimg=100000", "train.tick_kimg=1", "train.checkpoint_kimg=4",
            "train.snapshot_kimg=4", f"train.eval_n={min(args.eval_n, args.n)}",
            f"generate.count={args.n}", f"score.n={args.n}", "generate.snapshot=best"]


def pipeline(stage: str, project: Path, settings: list[str]) -> subprocess.CompletedProcess:
    """`python -m pipeline run <stage>` in `project`; a failure ends the benchmark loudly."""
    command = [sys.executable, "-m", "pipeline", "run", stage, "--root", str(project),
               "--params", str(ROOT / "params.yaml"), "--quiet"]
    for setting in settings:
        command += ["--set", setting]
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{project.name}: {stage} failed:\n{(done.stdout + done.stderr)[-3000:]}")
    return done


def prepare_base(base: Path, args: argparse.Namespace) -> None:
    """fetch -> crop -> pad -> augment once for this size, plus the reference statistics."""
    base.mkdir(parents=True, exist_ok=True)
    pipeline("augment", base, common_settings(args) + RECIPES["dcgan-ralsgan"])
    # Reference statistics of data/clean into the shared cache, so no entry pays for them:
    # all of it (the final score) and the evaluations' spread sample (train.eval_reference_n).
    # The evaluations' sample in the precision they use (train.eval_precision: auto), the full
    # reference in float32 as the score stage reads it.
    cpu = torch.device("cpu")
    for reference_n, dtype in ((0, None), (TrainConfig().eval_reference_n,
                                           eval_dtype(TrainConfig().eval_precision, cpu))):
        SnapshotScorer(base / "data/clean", base / "data/cache", 10, 8, cpu,
                       reference_n=reference_n, dtype=dtype)


def entry_project(base: Path, project: Path) -> None:
    """A fresh project whose data stages are hard links of the base's (cached by content)."""
    shutil.rmtree(project, ignore_errors=True)
    for name in DATA_STAGES:
        if (base / "data" / name).exists():
            shutil.copytree(base / "data" / name, project / "data" / name, copy_function=os.link)


def run_entry(name: str, base: Path, args: argparse.Namespace) -> dict:
    """Train, generate and score one entry; return its row."""
    project = base.parent / (name + "".join(f"_{s}" for s in args.set)
                             + (f"_at{args.train_size}" if args.train_size else ""))
    entry_project(base, project)
    settings = common_settings(args) + RECIPES[name] + args.set
    start = time.perf_counter()
    pipeline("train", project, settings)
    train_seconds = time.perf_counter() - start
    pipeline("score", project, settings)
    train = json.loads((project / "data/train/manifest.json").read_text())
    score = json.loads((project / "data/score/score.json").read_text())
    generated = json.loads((project / "data/generated/manifest.json").read_text())
    evals = [json.loads(line) for line in (project / "data/train/eval.jsonl").read_text()
             .splitlines()] if (project / "data/train/eval.jsonl").exists() else []
    save_samples(project, args.out / f"tournament-{args.size}px-{project.name}.png")
    return {"size": args.size, "train_size": args.train_size, "minutes": args.minutes,
            "n": args.n, "entry": name, "recipe": RECIPES[name], "extra": args.set,
            "kimg": train["counts"]["kimg"],
            "img_per_s": train["counts"]["img_per_s"], "train_wall_s": round(train_seconds),
            "fid": score["fid"], "kid": score["kid_mean"], "precision": score["precision"],
            "recall": score["recall"], "generator": generated["counts"].get("generator"),
            "evals": evals, "cpu": cpu_name()}


def save_samples(project: Path, path: Path) -> None:
    """The first 64 generated PNGs as one 8x8 grid: what the score was computed on."""
    files = sorted((project / "data/generated").glob("*.png"))[:64]
    images = np.stack([np.asarray(Image.open(f).convert("RGB")) for f in files])
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(make_grid(images)).save(path, optimize=True)


def cpu_name() -> str:
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip() + f" x{os.cpu_count()}"
    return "unknown"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--size", type=int, default=64, help="pad.size: 64 or 128")
    parser.add_argument("--minutes", type=float, default=10.0, help="training budget per entry")
    parser.add_argument("--n", type=int, default=2048, help="images generated and scored")
    parser.add_argument("--eval-n", type=int, default=500, help="samples per snapshot score")
    parser.add_argument("--limit", type=int, default=0, help="emoji used (0 = all)")
    parser.add_argument("--only", nargs="*", default=list(RECIPES), choices=list(RECIPES))
    parser.add_argument("--train-size", type=int, default=0,
                        help="augment.size: train at this side, deliver --size (0 = --size)")
    parser.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                        help="extra setting for every entry (a tuning trial); recorded")
    parser.add_argument("--out", type=Path, default=ROOT / "bench/out/models")
    args = parser.parse_args()

    # The entry's data stages (pack included) are shared per delivery size; augment.size
    # only rebuilds the pack inside an entry's project, a few seconds.
    base = args.out / f"{args.size}px" / "base"
    results = args.out / "results.jsonl"
    done = [json.loads(line) for line in results.read_text().splitlines()] if (
        results.exists()) else []
    prepare_base(base, args)
    rows = []
    for name in args.only:
        key = (args.size, args.train_size, args.minutes, args.n, name, RECIPES[name], args.set)
        same = [r for r in done if (r["size"], r.get("train_size", 0), r["minutes"], r["n"],
                                    r["entry"], r["recipe"], r.get("extra", [])) == key]
        if same:
            rows.append(same[-1])
            print(f"{name}: already measured, skipped", flush=True)
            continue
        rows.append(run_entry(name, base, args))
        with results.open("a", encoding="utf-8") as handle:  # each result as it lands
            handle.write(json.dumps(rows[-1]) + "\n")
        print(json.dumps({k: v for k, v in rows[-1].items() if k != "evals"}), flush=True)
    print(f"\n{args.size} px emoji, {args.minutes:g} minutes of training each on this machine, "
          f"FID/KID on {args.n} images against data/clean:")
    for row in rows:
        print(f"  {row['entry']:<14} {row['kimg']:8.1f} kimg {row['img_per_s']:7.1f} img/s  "
              f"FID {row['fid']:7.2f}  KID {row['kid']:.4f}  P {row['precision']:.2f} "
              f"R {row['recall']:.2f}")
    best = min(rows, key=lambda row: row["fid"])
    for row in rows:
        print(f"FID ratio {row['entry']} / {best['entry']}: {row['fid'] / best['fid']:.2f}x")


if __name__ == "__main__":
    main()
