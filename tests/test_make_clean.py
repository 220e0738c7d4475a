"""`make clean` removes what the pipeline rebuilds and nothing a user would miss; `clean-all`
asks first. Runs the real Makefile (copied into a scratch project) with real files."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
KEPT = ["data/raw/files/a.png", "data/runs/abc123/checkpoints/ckpt-000000004000.pt",
        "data/score/history.csv", "data/downloads/x.tgz", "data/cache/fid/ref.npz",
        "submissions/images.zip", "submissions/notes.txt", "data/clean/.gitkeep",
        "data/logs/20261130-train.log"]
GONE = ["data/crop/images/a.png", "data/clean/a.png", "data/pack/images.u8",
        "data/train/generator/generator.pt", "data/generated/00000.png",
        "data/.train.partial-0123456789ab/x", "data/report/index.html"]


def _project(tmp_path: Path) -> Path:
    shutil.copy2(REPO / "Makefile", tmp_path / "Makefile")
    for name in KEPT + GONE:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text("x")
    return tmp_path


def test_clean_keeps_raw_data_runs_history_and_submissions(tmp_path: Path) -> None:
    project = _project(tmp_path)
    result = subprocess.run(["make", "clean"], cwd=project, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert [name for name in KEPT if not (project / name).exists()] == []
    assert [name for name in GONE if (project / name).exists()] == []


def test_clean_all_asks_for_confirmation_first(tmp_path: Path) -> None:
    project = _project(tmp_path)
    refused = subprocess.run(["make", "clean-all"], cwd=project, capture_output=True, text=True)
    assert refused.returncode != 0 and "CONFIRM=yes" in refused.stdout
    assert all((project / name).exists() for name in KEPT + GONE)
    done = subprocess.run(["make", "clean-all", "CONFIRM=yes", "VENV=.venv-none"], cwd=project,
                          capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    assert [name for name in KEPT + GONE if (project / name).exists()] == ["data/clean/.gitkeep"]
