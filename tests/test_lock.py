"""One writer per project: a second command exits at once, naming the first; readers never wait.

Real processes: the holder is a Python process that takes the lock as the CLI does; the second
writer is the real CLI.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

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
