"""One writer per project: a second command exits at once, naming the first; readers never wait.

Real processes: the holder is a Python process that takes the lock as the CLI does; the second
writer is the real CLI.
"""

from __future__ import annotations

import csv
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image

from pipeline.core.lock import OWNER_FILE

REPO = Path(__file__).resolve().parents[1]
HOLDER = """
import sys, time
from pathlib import Path
from pipeline.core.lock import project_lock
with project_lock(Path(sys.argv[1])):
    print("holding", flush=True)
    time.sleep(60)
"""


def test_a_second_writer_stops_at_once_and_names_the_first(tmp_path: Path) -> None:
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(tmp_path / "data"), "make-all"],
                              cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "holding"
        start = time.perf_counter()
        second = subprocess.run([sys.executable, "-m", "pipeline", "run", "fetch", "--root",
                                 str(tmp_path), "--quiet"], cwd=REPO, capture_output=True,
                                text=True, timeout=60)
        assert second.returncode == 2 and time.perf_counter() - start < 30
        assert "another pipeline command is writing to this project" in second.stderr
        assert f"pid {holder.pid}:" in second.stderr and "make-all" in second.stderr
        assert not (tmp_path / "data/raw").exists()  # it wrote nothing
        # A reader does not wait for the lock.
        status = subprocess.run([sys.executable, "-m", "pipeline", "status", "--root",
                                 str(tmp_path)], cwd=REPO, capture_output=True, text=True,
                                timeout=60)
        assert status.returncode == 0 and "fetch" in status.stdout
    finally:
        holder.kill()
        holder.wait()
    # Once the holder is gone (killed, even), the lock is free again.
    again = subprocess.run([sys.executable, "-m", "pipeline", "run", "fetch", "--root",
                            str(tmp_path), "--quiet", "--set", "fetch.source=dir:nowhere"],
                           cwd=REPO, capture_output=True, text=True, timeout=60)
    assert "another pipeline command" not in again.stderr


def test_a_real_second_writer_is_refused_and_the_first_finishes_whole(tmp_path: Path) -> None:
    """Two real CLI runs of fetch at once: the second stops, the first publishes every file.

    The first is frozen with SIGSTOP as soon as it holds the lock (its owner note appears), so
    the second certainly meets the lock whatever the machine's speed; then it is let go.
    """
    photos = tmp_path / "photos"
    photos.mkdir()
    rng = np.random.default_rng(0)
    for i in range(300):
        Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(photos / f"{i}.png")
    command = [sys.executable, "-m", "pipeline", "run", "fetch", "--root", str(tmp_path),
               "--quiet", "--set", f"fetch.source=dir:{photos}"]
    owner = tmp_path / "data" / OWNER_FILE
    first = subprocess.Popen(command, cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
    try:
        deadline = time.monotonic() + 120
        while not owner.exists() and first.poll() is None and time.monotonic() < deadline:
            time.sleep(0.002)
        first.send_signal(signal.SIGSTOP)
        assert first.poll() is None and owner.exists(), "the first run ended before it was seen"
        second = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
        assert second.returncode == 2, second.stdout + second.stderr
        assert "another pipeline command is writing to this project" in second.stderr
        assert f"pid {first.pid}:" in second.stderr
    finally:
        first.send_signal(signal.SIGCONT)
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, out + err
    with open(tmp_path / "data/raw/files.csv", newline="", encoding="utf-8") as table:
        rows = [row for row in csv.DictReader(table) if row["kind"] == "image"]
    assert len(rows) == 300  # every photo listed, and every listed file is there
    assert all((tmp_path / "data/raw/files" / row["path"]).is_file() for row in rows)
    status = subprocess.run([sys.executable, "-m", "pipeline", "status", "--root", str(tmp_path),
                             "--set", f"fetch.source=dir:{photos}"], cwd=REPO,
                            capture_output=True, text=True, timeout=60)
    assert status.returncode == 0 and "fetch     cached" in status.stdout, status.stdout
