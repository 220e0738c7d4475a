"""The fetch and crop stages protect the user: sources inside stage folders, reject-list typos."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("source", ["dir:data/raw/mine", "zip:data/clean/x.zip",
                                    "dir:submissions/../data/generated/pics"])
def test_a_source_inside_a_stage_folder_is_refused_and_kept(tmp_path: Path, source: str) -> None:
    location = tmp_path / source.partition(":")[2]
    if source.startswith("dir:"):
        location.mkdir(parents=True)
        Image.new("RGB", (32, 32), "red").save(location / "a.png")
    else:
        location.parent.mkdir(parents=True)
        location.write_bytes(b"PK\x05\x06" + bytes(18))  # an empty zip
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "fetch", "--root", str(tmp_path), "--quiet",
         "--set", f"fetch.source={source}"], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 2 and "which the pipeline replaces" in result.stderr
    assert location.exists()  # the user's data is still there
    assert not (tmp_path / "data/raw/manifest.json").exists()


def test_reject_list_names_that_match_nothing_are_warned_about(tmp_path: Path) -> None:
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("a.png", "b.png"):
        Image.new("RGB", (32, 32), "red").save(photos / name)
    (tmp_path / "reject.txt").write_text("a.png\nb.pgn\n")  # one right, one typo
    result = subprocess.run(
        [sys.executable, "-m", "pipeline", "run", "crop", "--root", str(tmp_path), "--quiet",
         "--set", f"fetch.source=dir:{photos}", "--set", "crop.method=none",
         "--set", "crop.reject_list=reject.txt"],
        cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    assert "warning: 1 name(s) in reject.txt match no fetched image: b.pgn" in result.stdout
