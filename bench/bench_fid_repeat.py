"""Benchmark: a repeat `make fid` (reference statistics cached) vs `python -m pytorch_fid`.

Usage (from the repository root; the warm-up runs whatever `make fid` needs first):
    .venv/bin/python bench/bench_fid_repeat.py              # the default score.n, 2,048 images
    .venv/bin/python bench/bench_fid_repeat.py --n 200      # a quicker check

Both score the same two folders: the first N PNGs of data/generated (what
`make fid SET="score.n=N"` scores; copied into bench/out/fid_repeat/gen for pytorch-fid, which
has no count option) against data/clean, the default reference. Steps:
  1. warm-up, untimed: one `make fid` with score.n=N, which brings the stages up to date and
     caches the reference statistics in data/cache (a no-op when they are there already);
  2. ours: `make fid SET="score.n=N" ARGS=--force`, timed as a whole: make, interpreter start,
     the stage checks, Inception on the N generated PNGs, the cached reference, every metric
     (FID, KID, precision/recall, MiFID) and score.json;
  3. theirs: `python -m pytorch_fid GEN data/clean`, timed as a whole, with the same weights file.
The issue's target: ours takes at most half of theirs. Both FIDs are printed (they must agree).
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # run as a script from anywhere
sys.path.insert(0, str(ROOT / "bench"))

from bench_fid import pytorch_fid_command  # noqa: E402

from pipeline.scoring import fid, inception  # noqa: E402

OUT = ROOT / "bench" / "out" / "fid_repeat"


def make_fid(n: int, force: bool) -> float:
    """Seconds for `make fid SET="score.n=N"` (with --force: the score stage reruns)."""
    command = ["make", "--no-print-directory", "fid", f"SET=score.n={n}"]
    if force:
        command.append("ARGS=--force")
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2048, help="generated images scored (score.n)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (both tools)")
    args = parser.parse_args()

    # Warm-up: brings every stage up to date and caches the reference statistics if needed.
    make_fid(args.n, force=False)
    generated, reference = ROOT / "data" / "generated", ROOT / "data" / "clean"
    files = fid.list_images(generated, args.n)
    gen = OUT / "gen"
    shutil.rmtree(gen, ignore_errors=True)
    gen.mkdir(parents=True)
    for path in files:
        shutil.copy2(path, gen / path.name)

    ours = make_fid(args.n, force=True)
    score = json.loads((ROOT / "data" / "score" / "score.json").read_text())

    weights = inception.resolve_weights(ROOT / "data" / "cache", download=False)
    base, env = pytorch_fid_command(weights, args.device, 50)
    start = time.perf_counter()
    done = subprocess.run(base + [str(gen), str(reference)], env=env, capture_output=True,
                          text=True)
    theirs = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"pytorch-fid failed:\n{done.stderr[-2000:]}")
    their_fid = float(re.search(r"FID:\s+([-\d.eE+]+)", done.stdout).group(1))

    n_ref = len(fid.list_images(reference))
    print(f"{args.n} generated vs {n_ref} reference PNGs, weights {weights.source}")
    print(f"repeat make fid (reference cached): {ours:7.1f} s  FID {score['fid']:.4f}")
    print(f"python -m pytorch_fid GEN REF:      {theirs:7.1f} s  FID {their_fid:.4f}")
    print(f"make fid takes {ours / theirs:.2f}x pytorch-fid's time ({theirs / ours:.1f}x faster; "
          f"target: at most 0.5x); FID difference {abs(score['fid'] - their_fid):.1e}")


if __name__ == "__main__":
    main()
