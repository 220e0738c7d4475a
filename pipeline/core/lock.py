"""One writer at a time per project folder: a `filelock` lock on data/.lock.

Two commands writing the same stage folders at once (a second terminal, `make fid` while
`make all` runs) could publish a half output as done. Every command that writes under data/ or
submissions/ takes this lock without waiting; a second one stops at once and names the command
that holds it. Read-only commands (status, params, help) never take it. Under torchrun only
rank 0 takes it: the other ranks are the same command.
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

from filelock import FileLock, Timeout

from pipeline.core.errors import UserError

LOCK_FILE = ".lock"  # data/.lock (filelock's; its content is not ours)
OWNER_FILE = ".lock.owner"  # data/.lock.owner: who holds it, for the message a second one gets


@contextlib.contextmanager
def project_lock(data_dir: Path) -> Iterator[None]:
    """Hold the project's write lock for the duration; UserError at once if another has it."""
    if int(os.environ.get("RANK", "0")) != 0:
        yield
        return
    data_dir.mkdir(parents=True, exist_ok=True)
    lock = FileLock(data_dir / LOCK_FILE, timeout=0)
    try:
        lock.acquire()
    except Timeout:
        raise UserError(f"another pipeline command is writing to this project "
                        f"({_owner(data_dir)}); wait for it to finish or stop it, then rerun"
                        ) from None
    owner = data_dir / OWNER_FILE
    try:
        owner.write_text(json.dumps({"pid": os.getpid(), "command": " ".join(sys.argv),
                                     "since": time.strftime("%Y-%m-%d %H:%M:%S")}))
        yield
    finally:
        owner.unlink(missing_ok=True)
        lock.release()


def _owner(data_dir: Path) -> str:
    """'pid N: COMMAND, since TIME' from the holder's note, or a shorter phrase without it.
    The holder writes its note just after taking the lock, so a refused writer that reads in
    between retries for up to a second before giving up."""
    for _ in range(20):
        try:
            note = json.loads((data_dir / OWNER_FILE).read_text(encoding="utf-8"))
            return f"pid {note['pid']}: {note['command']}, since {note['since']}"
        except (OSError, ValueError, KeyError):
            time.sleep(0.05)
    return "its command could not be read"
