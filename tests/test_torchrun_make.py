"""`make train GPUS=2`: torchrun on the CPU (Gloo), stopped and resumed, then split generation.

A file of its own: two torchrun launches, scoring and `make fid GPUS=2` take two minutes, which
run beside test_end_to_end.py on the other xdist worker (tests/conftest.py).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from tiny_project import REPO, TINY, checkpoints, cli, summary

pytestmark = pytest.mark.slow


def _pids_mentioning(text: str) -> list[int]:
    """Live processes whose command line contains `text`."""
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(
                    errors="replace"):
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_make_train_gpus_2_through_torchrun_killed_and_resumed(tmp_path):
    """`make train GPUS=2`: torchrun starts two Gloo ranks on the CPU; stopped after its first
    checkpoint, the same command resumes and finishes; rank 0 alone exports and logs."""
    (tmp_path / "params.yaml").write_text(TINY.replace("kimg: 0.4", "kimg: 0.8"))
    command = ["make", "train", "GPUS=2", f"PARAMS={tmp_path / 'params.yaml'}",
               f"ARGS=--root {tmp_path} --quiet"]
    subprocess.run(["make", "augment", f"PARAMS={tmp_path / 'params.yaml'}",
                    f"ARGS=--root {tmp_path} --quiet"], cwd=REPO, check=True,
                   capture_output=True, timeout=600)
    process = subprocess.Popen(command, cwd=REPO, stdout=subprocess.DEVNULL,
                               stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.time() + 600
    while not checkpoints(tmp_path) and process.poll() is None and time.time() < deadline:
        time.sleep(0.05)
    assert process.poll() is None, "training ended before its first checkpoint"
    # SIGTERM, as `kill` or a job scheduler sends it: torchrun passes it on to its workers,
    # which run in sessions of their own (a SIGKILL of make's group would orphan them).
    os.killpg(process.pid, signal.SIGTERM)
    process.wait(timeout=120)
    deadline = time.time() + 60  # the workers' exit, after the agent's
    while _pids_mentioning(str(tmp_path)) and time.time() < deadline:
        time.sleep(0.2)
    assert not _pids_mentioning(str(tmp_path)), "a torchrun worker outlived the stop"
    assert not (tmp_path / "data/train/manifest.json").exists()
    done = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    train_line = summary(done)["train"]
    assert "resumed at" in train_line and train_line.startswith("0.8 kimg"), train_line
    assert (tmp_path / "data/train/generator/generator.pt").is_file()
    run = next((tmp_path / "data/runs").iterdir())
    options = json.loads((run / "training_options.json").read_text())
    assert options["world_size"] == 2 and options["per_rank_batch"] == 8
    kimgs = [json.loads(line)["kimg"] for line in (run / "stats.jsonl").read_text().splitlines()]
    assert kimgs == sorted(set(kimgs)) and kimgs[-1] == 0.8  # one writer, no duplicate ticks
    assert not list((tmp_path / "data").glob(".train.rank*"))  # rank 1's scratch is gone

    # Generation and scoring split by rank give exactly one process's PNGs and score.
    cli(tmp_path, "run", "score")
    one = {p.name: p.read_bytes() for p in (tmp_path / "data/generated").glob("*.png")}
    one_score = json.loads((tmp_path / "data/score/score.json").read_text())
    for folder in ("generated", "score"):
        shutil.rmtree(tmp_path / "data" / folder)
    done = subprocess.run(["make", "fid", "GPUS=2", f"PARAMS={tmp_path / 'params.yaml'}",
                           f"ARGS=--root {tmp_path} --quiet"], cwd=REPO, capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "train: cached" in done.stdout  # nothing retrained
    two = {p.name: p.read_bytes() for p in (tmp_path / "data/generated").glob("*.png")}
    assert len(one) == 40 and two == one
    two_score = json.loads((tmp_path / "data/score/score.json").read_text())
    for key in ("fid", "kid_mean", "precision", "recall"):
        assert two_score[key] == pytest.approx(one_score[key], rel=1e-6, abs=1e-9), key
    assert two_score["n_generated"] == one_score["n_generated"] == 40
    history = (tmp_path / "data/score/history.csv").read_text().splitlines()
    assert len(history) == 2  # a header and one row: rank 1 wrote nothing
