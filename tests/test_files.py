"""core.files: atomic writes, file hashes, CPU counts and the pool context, on real files."""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import BinaryIO

import pytest

from pipeline.core import files
from pipeline.core.files import (
    atomic_save,
    atomic_write_bytes,
    atomic_write_text,
    cgroup_cpu_quota,
    process_pool_context,
    resolve_workers,
    sha256_file,
    usable_cpu_count,
)


def _names(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


# ----------------------------------------------------------------------------------------------
# Atomic writes


def test_new_content_lands_and_no_temporary_is_left(tmp_path: Path) -> None:
    target = tmp_path / "sub" / "data.bin"  # the folder is created
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"\x00new bytes\xff")
    assert target.read_bytes() == b"\x00new bytes\xff"
    atomic_write_text(tmp_path / "note.txt", "động cơ\n")
    assert (tmp_path / "note.txt").read_bytes() == "động cơ\n".encode()
    assert _names(tmp_path) == ["note.txt", "sub"] and _names(tmp_path / "sub") == ["data.bin"]


def test_a_writer_into_the_open_file(tmp_path: Path) -> None:
    target = tmp_path / "w.bin"

    def write(handle: BinaryIO) -> None:
        handle.write(b"ab")
        handle.write(b"cd")

    atomic_write_bytes(target, write)
    assert target.read_bytes() == b"abcd" and _names(tmp_path) == ["w.bin"]


def test_a_failing_writer_keeps_the_old_file(tmp_path: Path) -> None:
    target = tmp_path / "keep.txt"
    target.write_text("old", encoding="utf-8")

    def half_then_fail(handle: BinaryIO) -> None:
        handle.write(b"half of the new")
        raise RuntimeError("disk on fire")

    with pytest.raises(RuntimeError, match="disk on fire"):
        atomic_write_bytes(target, half_then_fail)
    assert target.read_text(encoding="utf-8") == "old"
    assert _names(tmp_path) == ["keep.txt"]  # the temporary was removed


def test_atomic_save_hands_a_hidden_sibling_and_cleans_up(tmp_path: Path) -> None:
    target = tmp_path / "image.png"
    target.write_bytes(b"old")
    seen: list[Path] = []

    def write_then_fail(tmp: Path) -> None:
        seen.append(tmp)
        tmp.write_bytes(b"partial")
        raise KeyboardInterrupt  # a kill midway: BaseException, not Exception

    with pytest.raises(KeyboardInterrupt):
        atomic_save(target, write_then_fail, suffix=".part")
    tmp = seen[0]
    assert tmp.parent == tmp_path and tmp.name.startswith(".image.png.")
    assert tmp.name.endswith(".part") and not tmp.exists()
    assert target.read_bytes() == b"old" and _names(tmp_path) == ["image.png"]

    atomic_save(target, lambda tmp: tmp.write_bytes(b"new"), durable=False)
    assert target.read_bytes() == b"new" and _names(tmp_path) == ["image.png"]


def test_written_files_get_the_usual_permissions(tmp_path: Path) -> None:
    plain = tmp_path / "plain"
    plain.write_bytes(b"x")  # mode 0o666 less the umask
    atomic_write_bytes(tmp_path / "atomic", b"x")
    assert (tmp_path / "atomic").stat().st_mode == plain.stat().st_mode


def test_old_names_still_work() -> None:
    from pipeline.gan import checkpoint
    from pipeline.ingest import archive
    from pipeline.scoring import inception

    assert archive.sha256_file is sha256_file and inception.sha256_file is sha256_file
    assert checkpoint.atomic_write_text is atomic_write_text
    assert checkpoint.atomic_write_bytes is atomic_write_bytes


# ----------------------------------------------------------------------------------------------
# Hashes


def test_sha256_file_known_value_and_many_chunks(tmp_path: Path) -> None:
    abc = tmp_path / "abc"
    abc.write_bytes(b"abc")
    # FIPS 180-2's example digest of "abc".
    assert sha256_file(abc) == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    data = bytes(range(256)) * 41 + b"tail"  # 10,500 bytes: 10 full 1 KiB chunks and a rest
    big = tmp_path / "big"
    big.write_bytes(data)
    expected = hashlib.sha256(data).hexdigest()
    assert sha256_file(big, chunk=1024) == expected == sha256_file(big)
    empty = tmp_path / "empty"
    empty.write_bytes(b"")
    assert sha256_file(empty) == hashlib.sha256(b"").hexdigest()


# ----------------------------------------------------------------------------------------------
# CPUs and pools


def test_usable_cpu_count_is_the_affinity_when_no_quota() -> None:
    count = usable_cpu_count()
    assert 1 <= count <= (os.cpu_count() or 1)
    if hasattr(os, "sched_getaffinity") and cgroup_cpu_quota() is None:
        assert count == len(os.sched_getaffinity(0))


def test_cgroup_v2_quota(tmp_path: Path) -> None:
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert cgroup_cpu_quota(tmp_path) == 1.5
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert cgroup_cpu_quota(tmp_path) is None


def test_cgroup_v1_quota(tmp_path: Path) -> None:
    assert cgroup_cpu_quota(tmp_path) is None  # no cgroup files at all (macOS)
    folder = tmp_path / "cpu,cpuacct"
    folder.mkdir()
    (folder / "cpu.cfs_period_us").write_text("100000\n")
    (folder / "cpu.cfs_quota_us").write_text("-1\n")
    assert cgroup_cpu_quota(tmp_path) is None
    (folder / "cpu.cfs_quota_us").write_text("200000\n")
    assert cgroup_cpu_quota(tmp_path) == 2.0


def test_resolve_workers() -> None:
    assert resolve_workers(0) == usable_cpu_count()
    assert resolve_workers(3) == 3
    with pytest.raises(ValueError, match="workers"):
        resolve_workers(-1)


def test_process_pool_context_runs_a_pool() -> None:
    context = process_pool_context()
    if sys.platform.startswith("linux"):
        assert context.get_start_method() == "fork"
    with context.Pool(2) as pool:
        assert pool.map(abs, [-3, 2, -1]) == [3, 2, 1]


def test_hash_chunk_is_one_mebibyte() -> None:
    assert files.HASH_CHUNK == 1_048_576
