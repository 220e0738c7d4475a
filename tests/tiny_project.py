"""The tiny project the end-to-end tests run: its params.yaml and the CLI wrapper they share.

Real data (the first 48 renders of the embedded Fluent Emoji 3D set), tiny sizes (32 px, a
narrow DCGAN, a few hundred images of training, 40 generated PNGs), so a whole run takes seconds.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from pipeline.gan.checkpoint import list_checkpoints

REPO = Path(__file__).resolve().parents[1]

TINY = """\
fetch:
  source: builtin:fluent-emoji-3d
  limit: 48
crop:
  method: alpha
pad:
  size: 32
augment:
  hflip: true
train:
  model: dcgan
  loss: ralsgan
  width: 0.125
  kimg: 0.4
  batch_size: 16
  tick_kimg: 0.1
  checkpoint_kimg: 0.1
  snapshot_kimg: 0.2
  threads: 1
  amp: "off"  # auto may pick bf16 on a CPU that has it: runs compared byte for byte stay fp32
generate:
  count: 40
  batch_size: 16
  workers: 1
package:
  name: images.zip
score:
  n: 40
  batch_size: 20
  workers: 1
"""

# Torch threads of every CLI run here: both cores when the suite runs in one process (scoring
# and generation are most of the time these tests wait for), one beside another xdist worker
# (tests/conftest.py sets it). Runs compared byte for byte all use the same count.
CLI_ENV = {"OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "2")}


def cli(root: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run `python -m pipeline ARGS --root ROOT --params ROOT/params.yaml` and return it."""
    command = [sys.executable, "-m", "pipeline", *args]
    if args[0] in ("run", "status"):
        command += ["--root", str(root), "--params", str(root / "params.yaml"), "--quiet"
                    ] if args[0] == "run" else ["--root", str(root)]
    result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900,
                            env={**os.environ, **CLI_ENV})
    if check and result.returncode != 0:
        raise AssertionError(f"{command} failed:\n{result.stdout}\n{result.stderr}")
    return result


def summary(result: subprocess.CompletedProcess) -> dict[str, str]:
    """stage name -> its summary line (the runner prints one line per stage)."""
    lines = {}
    for line in result.stdout.splitlines():
        name, _, rest = line.partition(": ")
        if name in ("fetch", "crop", "pad", "augment", "train", "generate", "package", "score"):
            lines.setdefault(name, rest)  # the stage's own line (package also says "published")
    return lines


def checkpoints(root: Path) -> set[Path]:
    """Complete checkpoints of every run, as training lists them when it resumes: a `.pt` counts
    only once its JSON sidecar is written, so a stop between the two leaves nothing to resume."""
    return {pt for folder in (root / "data/runs").glob("*/checkpoints")
            for pt in list_checkpoints(folder)}
