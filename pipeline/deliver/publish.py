"""Putting a validated zip where the contestant looks: submissions/, without losing anything.

The package stage builds its zip in its own folder (data/package/). Publishing hard-links it
(no second copy on disk; a plain copy across file systems) to `submissions/<name>`, replaced
atomically, and keeps every zip ever published in `submissions/history/<time>-<sha12>/` with
its validation record. Nothing else in submissions/ is touched: a `best.zip` or notes a user keeps
there stay. `package.keep_history` caps the history (oldest first; only entries we wrote).
"""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

from pipeline.core.files import link_or_copy

HISTORY = "history"  # submissions/history/
ENTRY = re.compile(r"^\d{8}-\d{6}-[0-9a-f]{12}$")  # the names this module gives entries


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.samefile(b)
    except OSError:
        return False


def publish_zip(package_dir: Path, submissions: Path, name: str, validation_name: str,
                keep_history: int) -> str:
    """Publish package_dir/name into `submissions/`; '' when it was already there."""
    source = package_dir / name
    record = json.loads((package_dir / validation_name).read_text(encoding="utf-8"))
    target = submissions / name
    if _same_file(source, target):
        return ""
    submissions.mkdir(parents=True, exist_ok=True)
    history = submissions / HISTORY
    entry = history / f"{time.strftime('%Y%m%d-%H%M%S')}-{record['sha256'][:12]}"
    if not any(folder.name.endswith(record["sha256"][:12])
               for folder in history_entries(history)):
        entry.mkdir(parents=True, exist_ok=True)
        link_or_copy(source, entry / name)
        link_or_copy(package_dir / validation_name, entry / validation_name)
    link_or_copy(source, target)
    link_or_copy(package_dir / validation_name, submissions / validation_name)
    pruned = _prune(history, keep_history)
    kept = len(history_entries(history))
    return (f"published submissions/{name} ({kept} kept in submissions/{HISTORY}/"
            f"{f', {pruned} oldest removed' if pruned else ''})")


def history_entries(history: Path) -> list[Path]:
    """History entries this module wrote, oldest first (their names sort by time)."""
    if not history.is_dir():
        return []
    return sorted(p for p in history.iterdir() if p.is_dir() and ENTRY.match(p.name))


def _prune(history: Path, keep: int) -> int:
    """Remove the oldest entries beyond `keep` (0 = keep all); returns how many went."""
    entries = history_entries(history)
    excess = entries[:-keep] if keep > 0 and len(entries) > keep else []
    for folder in excess:
        shutil.rmtree(folder)
    return len(excess)
