"""Benchmark: a repeat `make fid` vs a repeat `python -m pytorch_fid`, both with cached references.

Usage (from the repository root; the warm-up runs whatever `make fid` needs first):
    .venv/bin/python bench/bench_fid_repeat.py              # the default score.n, 2,048 images
    .venv/bin/python bench/bench_fid_repeat.py --n 200      # a quicker check
    .venv/bin/python bench/bench_fid_repeat.py --project P  # a project folder other than this one

Both score the same two folders: the first N PNGs of data/generated (what
`make fid SET="score.n=N"` scores; copied into bench/out/fid_repeat/gen for pytorch-fid, which
has no count option) against data/clean, the default reference. Both sides keep the reference's
statistics between runs, as a contestant scoring submission after submission would:
  1. warm-up, untimed: one `make fid` with score.n=N (brings the stages up to date and caches
     the reference statistics in data/cache), and `python -m pytorch_fid --save-stats
     data/clean ref.npz` (pytorch-fid's own cache of the same statistics); both read every
     image once, so the page cache is warm on both sides;
  2. ours: `make fid SET="score.n=N" ARGS=--force`, timed as a whole: make, interpreter start,
     the stage checks, Inception on the N generated PNGs, the cached reference, every metric
     (FID, KID, precision/recall, MiFID) and score.json;
  3. theirs: `python -m pytorch_fid GEN ref.npz`, timed as a whole, with the same weights file.
Check: both FIDs agree to 1e-3. The issue's target: ours takes at most half of theirs.
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
from common import Result, finish  # noqa: E402

from pipeline.scoring import fid, inception  # noqa: E402

OUT = ROOT / "bench" / "out" / "fid_repeat"


def make_fid(project: Path, n: int, force: bool) -> float:
    """Seconds for `make fid SET="score.n=N"` in `project` (--force: the score stage reruns)."""
    args = f"--root {project}" + (" --force" if force else "")
    command = ["make", "--no-print-directory", "fid", f"SET=score.n={n}", f"ARGS={args}",
               f"PARAMS={project / 'params.yaml'}"]
    start = time.perf_counter()
    done = subprocess.run(command, cwd=ROOT, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"{' '.join(command)} failed:\n{done.stdout[-2000:]}{done.stderr[-2000:]}")
    return time.perf_counter() - start


def pytorch_fid(base: list[str], env: dict[str, str], *args: str) -> tuple[float, str]:
    """Seconds and stdout of one `python -m pytorch_fid ...`."""
    start = time.perf_counter()
    done = subprocess.run(base + list(args), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"pytorch-fid failed:\n{done.stderr[-2000:]}")
    return time.perf_counter() - start, done.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=2048, help="generated images scored (score.n)")
    parser.add_argument("--device", default="cpu", help="cpu | cuda (both tools)")
    parser.add_argument("--project", type=Path, default=ROOT,
                        help="project folder with params.yaml (default: this repository)")
    args = parser.parse_args()
    project = args.project.resolve()

    # Warm-up, ours: brings every stage up to date and caches the reference statistics.
    make_fid(project, args.n, force=False)
    generated, reference = project / "data" / "generated", project / "data" / "clean"
    files = fid.list_images(generated, args.n)
    gen = OUT / "gen"
    shutil.rmtree(gen, ignore_errors=True)
    gen.mkdir(parents=True)
    for path in files:
        shutil.copy2(path, gen / path.name)
    # Warm-up, theirs: pytorch-fid's own cache of the reference statistics.
    weights = inception.resolve_weights(project / "data" / "cache", download=False)
    base, env = pytorch_fid_command(weights, args.device, 50, OUT / "torch_home")
    ref_stats = OUT / "ref.npz"
    ref_stats.unlink(missing_ok=True)
    pytorch_fid(base, env, "--save-stats", str(reference), str(ref_stats))

    ours = make_fid(project, args.n, force=True)
    score = json.loads((project / "data" / "score" / "score.json").read_text())
    theirs, stdout = pytorch_fid(base, env, str(gen), str(ref_stats))
    their_fid = float(re.search(r"FID:\s+([-\d.eE+]+)", stdout).group(1))

    n_ref = len(fid.list_images(reference))
    print(f"{args.n} generated vs {n_ref} reference PNGs, weights {weights.source}")
    print(f"repeat make fid (reference cached):        {ours:7.1f} s  FID {score['fid']:.4f}")
    print(f"repeat python -m pytorch_fid GEN ref.npz:  {theirs:7.1f} s  FID {their_fid:.4f}")
    finish(Result(
        "fid_repeat", f"{len(files)} vs {n_ref} PNGs", ours_s=ours, theirs_s=theirs,
        checks={"same FID to 1e-3": abs(score["fid"] - their_fid) <= 1e-3,
                "same image count": score["n_generated"] == len(files)},
        notes={"ours_fid": score["fid"], "theirs_fid": their_fid,
               "ours_share_of_theirs": ours / theirs}))
    print(f"make fid takes {ours / theirs:.2f}x pytorch-fid's time (target: at most 0.5x)")


if __name__ == "__main__":
    main()
