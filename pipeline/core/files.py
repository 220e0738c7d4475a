"""Shared plumbing, one implementation each: atomic file writes, file hashes, worker counts and
the multiprocessing context every pool uses.

Atomic writes: the bytes go to a hidden temporary sibling (`.NAME.<hex>.tmp`, same folder, so
os.replace is atomic), are flushed and fsynced, then renamed over the target, and the folder is
fsynced. A reader (or a run resumed after a kill or a power cut) sees the old file or the whole
new one, never half; a failed write leaves the old file and no temporary behind.
"""

from __future__ import annotations

import hashlib
import math
import multiprocessing
import os
import secrets
import shutil
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, BinaryIO

HASH_CHUNK = 1 << 20  # bytes per read while hashing (1 MiB): archives can be gigabytes
TMP_SUFFIX = ".tmp"  # default ending of temporary siblings
CGROUP_ROOT = Path("/sys/fs/cgroup")  # where Linux mounts the cgroup file systems

BytesWriter = Callable[[BinaryIO], object]  # writes into an open binary file
PathWriter = Callable[[Path], object]  # writes a file at the path it is given


# ----------------------------------------------------------------------------------------------
# Atomic writes


def temporary_sibling(path: Path, suffix: str = TMP_SUFFIX) -> Path:
    """Create an empty, unused, hidden file `.NAME.<8 hex>SUFFIX` beside `path`; return it.

    Created with O_EXCL (two writers never share one) and mode 0o666 less the umask, like any new
    file (tempfile.mkstemp would make it 0o600, and the rename would keep that).
    """
    while True:
        tmp = path.with_name(f".{path.name}.{secrets.token_hex(4)}{suffix}")
        try:
            os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            return tmp
        except FileExistsError:  # 1 in 4 billion: draw another name
            continue


def link_or_copy(source: Path, target: Path) -> None:
    """Make `target` the same bytes as `source`, atomically (a kill leaves old or new)."""
    tmp = temporary_sibling(target, ".part")  # a fresh unique name, reserved ...
    tmp.unlink()  # ... then freed for the link
    try:
        try:
            os.link(source, tmp)
        except OSError:  # another file system, or links not allowed: copy
            shutil.copy2(source, tmp)
        os.replace(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def _fsync_path(path: Path) -> None:
    """Flush a closed file's bytes to the disk (O_RDWR: Windows cannot fsync a read-only fd)."""
    fd = os.open(path, os.O_RDWR)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(folder: Path) -> None:
    """Make a rename in `folder` durable. Best effort: Windows cannot open a folder, some file
    systems refuse; the rename is still atomic without it, only maybe not yet on the disk."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def _publish(path: Path, fill: PathWriter, durable: bool, suffix: str) -> None:
    """Run `fill(tmp)` on a temporary sibling, then rename it over `path`; clean up on error."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = temporary_sibling(path, suffix)
    try:
        fill(tmp)
        os.replace(tmp, path)
    except BaseException:  # KeyboardInterrupt too: leave no temporary behind
        tmp.unlink(missing_ok=True)
        raise
    if durable:
        fsync_dir(path.parent)


def atomic_save(path: Path | str, writer: PathWriter, *, durable: bool = True,
                suffix: str = TMP_SUFFIX) -> None:
    """Replace `path` by what `writer(tmp_path)` writes (torch.save, PIL's save, a zip...).

    `durable=False` skips both fsyncs: for many small files that a resume re-checks anyway
    (an fsync costs milliseconds per file). `suffix` ends the temporary's name, so a caller can
    find and delete what a killed run left.
    """
    def fill(tmp: Path) -> None:
        writer(tmp)
        if durable:
            _fsync_path(tmp)  # the bytes are on disk before the name points at them

    _publish(Path(path), fill, durable, suffix)


def atomic_write_bytes(path: Path | str, data_or_writer: bytes | BytesWriter, *,
                       durable: bool = True) -> None:
    """Replace `path` by `data_or_writer` (bytes), or by what it writes into an open binary file
    (a callable such as `lambda handle: torch.save(state, handle)`)."""
    def fill(tmp: Path) -> None:
        with open(tmp, "wb") as handle:
            if isinstance(data_or_writer, bytes | bytearray | memoryview):
                handle.write(data_or_writer)
            else:
                data_or_writer(handle)
            handle.flush()
            if durable:
                os.fsync(handle.fileno())

    _publish(Path(path), fill, durable, TMP_SUFFIX)


def atomic_write_text(path: Path | str, text: str, *, durable: bool = True) -> None:
    """Replace `path` by `text`, encoded as UTF-8 (newlines written as given)."""
    atomic_write_bytes(path, text.encode("utf-8"), durable=durable)


# ----------------------------------------------------------------------------------------------
# Hashes


def sha256_file(path: Path | str, chunk: int = HASH_CHUNK) -> str:
    """Hex sha256 of a file, as `sha256sum` prints it, read `chunk` bytes at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
    return digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# Workers and pools


def _read_words(path: Path) -> list[str]:
    try:
        return path.read_text(encoding="ascii").split()
    except (OSError, UnicodeDecodeError):
        return []


def cgroup_cpu_quota(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs the cgroup quota allows (quota / period, e.g. 1.5), or None when there is none.

    cgroup v2: `cpu.max` holds "QUOTA PERIOD" in microseconds, QUOTA "max" when unlimited.
    cgroup v1: `cpu/cpu.cfs_quota_us` (-1 when unlimited) over `cpu/cpu.cfs_period_us`.
    """
    words = _read_words(root / "cpu.max")
    if len(words) == 2:
        quota, period = words
        return None if quota == "max" else _ratio(quota, period)
    for folder in ("cpu", "cpu,cpuacct"):
        quota_words = _read_words(root / folder / "cpu.cfs_quota_us")
        period_words = _read_words(root / folder / "cpu.cfs_period_us")
        if quota_words and period_words:
            return _ratio(quota_words[0], period_words[0])
    return None


def _ratio(quota: str, period: str) -> float | None:
    """quota / period for positive integers, else None (-1 or junk: no limit we can use)."""
    try:
        q, p = int(quota), int(period)
    except ValueError:
        return None
    return q / p if q > 0 and p > 0 else None


def usable_cpu_count() -> int:
    """CPUs this process may really use: its affinity mask (taskset, cpusets; Linux only, macOS
    has no sched_getaffinity) capped by the cgroup CPU quota (docker --cpus, Kubernetes limits),
    rounded up; never below 1. os.cpu_count() counts the whole machine."""
    if hasattr(os, "sched_getaffinity"):
        cpus = len(os.sched_getaffinity(0))
    else:
        cpus = os.cpu_count() or 1
    quota = cgroup_cpu_quota()
    if quota is not None:
        cpus = min(cpus, math.ceil(quota))
    return max(1, cpus)


def resolve_workers(workers: int) -> int:
    """Worker processes for a `workers` setting: 0 means one per usable CPU core."""
    if workers < 0:
        raise ValueError(f"workers must be 0 (one per CPU core) or positive, not {workers}")
    return workers or usable_cpu_count()


def process_pool_context() -> multiprocessing.context.BaseContext:
    """The start method of every worker pool: fork on Linux, the platform's default elsewhere.

    fork starts workers in milliseconds, they inherit the parent's imports, and the calling
    script needs no `if __name__ == "__main__"` guard (spawn and forkserver re-import it). It
    is safe here because pool workers only run PIL, OpenCV and numpy, never torch: a child forked
    after CUDA (or torch's thread pools) started cannot use them. Create pools before loading a
    model, so forked workers stay small. macOS and Windows keep spawn (fork is unsafe there).
    """
    return multiprocessing.get_context("fork" if sys.platform.startswith("linux") else None)


# ----------------------------------------------------------------------------------------------
# CSV cells a spreadsheet will not execute

FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r", "'")  # "'" too, so unescaping is exact


def spreadsheet_safe(text: str) -> str:
    """A cell a spreadsheet shows as text: a leading ', if the text starts like a formula.

    A file named `=HYPERLINK(...).png` would otherwise run as a formula when a contestant opens
    decisions.csv. Reversible with `from_spreadsheet_safe` (the pipeline reads its CSVs back).
    """
    return "'" + text if text.startswith(FORMULA_STARTS) else text


def from_spreadsheet_safe(text: str) -> str:
    """The text `spreadsheet_safe` was given."""
    return text[1:] if text.startswith("'") else text


def csv_safe_frame(frame: Any, columns: Sequence[str]) -> Any:
    """A copy of a pandas frame with `columns` made spreadsheet-safe (strings only)."""
    frame = frame.copy()
    for column in columns:
        frame[column] = [spreadsheet_safe(v) if isinstance(v, str) else v for v in frame[column]]
    return frame


def csv_unsafe_frame(frame: Any, columns: Sequence[str]) -> Any:
    """The inverse of `csv_safe_frame`, for a frame read back with pandas."""
    for column in columns:
        frame[column] = [from_spreadsheet_safe(v) if isinstance(v, str) else v
                         for v in frame[column]]
    return frame
