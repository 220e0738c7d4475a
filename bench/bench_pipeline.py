"""Time `make all` and `make fid` on the default profile, per stage, from a clean data folder.

    python bench/bench_pipeline.py [--root PATH] [--keep-downloads]

Runs every stage from scratch in a scratch project (a copy of params.yaml, the download cache
reused so npm is not timed), then once more to time the all-cached path. Prints a table of
seconds per stage (read from each stage's manifest) and the wall time of each command.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
STAGES = ["fetch", "crop", "pad", "augment", "train", "generate", "package", "score"]
OUTPUT = {"fetch": "data/raw", "crop": "data/crop", "pad": "data/clean", "augment": "data/pack",
          "train": "data/train", "generate": "data/generated", "package": "submissions",
          "score": "data/score"}


def timed(root: Path, target: str) -> float:
    start = time.perf_counter()
    subprocess.run([sys.executable, "-m", "pipeline", "run", target, "--root", str(root),
                    "--params", str(REPO / "params.yaml"), "--quiet"], cwd=REPO, check=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=REPO / "bench" / "out" / "pipeline")
    args = parser.parse_args()
    root: Path = args.root
    for name in ("data", "submissions"):
        if name == "data" and (root / "data").exists():
            for child in (root / "data").iterdir():
                if child.name != "downloads":
                    shutil.rmtree(child) if child.is_dir() else child.unlink()
        else:
            shutil.rmtree(root / name, ignore_errors=True)
    root.mkdir(parents=True, exist_ok=True)

    wall_all = timed(root, "package")
    wall_fid = timed(root, "score")
    wall_cached = timed(root, "package")
    print(f"\n{'stage':<10}{'seconds':>10}")
    for stage in STAGES:
        manifest = json.loads((root / OUTPUT[stage] / "manifest.json").read_text())
        print(f"{stage:<10}{manifest['seconds']:>10.1f}   {manifest['summary']}")
    print(f"\nmake all (cold): {wall_all:.0f} s\nmake fid (cold reference stats): {wall_fid:.0f} s"
          f"\nmake all (all cached): {wall_cached:.1f} s")


if __name__ == "__main__":
    main()
