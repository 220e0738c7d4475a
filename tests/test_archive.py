"""Safe extraction against hostile archives built here: nothing may land outside the target."""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import tarfile
import warnings
import zipfile
from pathlib import Path

import pytest
from PIL import Image

from pipeline.core.errors import UserError
from pipeline.ingest.archive import (
    BEYOND_LIMIT,
    DUPLICATE,
    LINK,
    SPECIAL,
    UNSAFE_ABSOLUTE,
    UNSAFE_ESCAPE,
    UNSAFE_LINK,
    check_free_space,
    clean_member_path,
    ignore_reason,
    safe_extract,
)

VIETNAMESE = "Đồng hồ đeo tay/ảnh số 1.png"


def png(seed: int = 0) -> bytes:
    """A real 4x4 PNG, different per seed."""
    buffer = io.BytesIO()
    Image.new("RGB", (4, 4), (seed * 7 % 256, 100, 200)).save(buffer, format="PNG")
    return buffer.getvalue()


def tree(root: Path) -> list[str]:
    """Every file under root as a relative posix path."""
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def reasons(report) -> dict[str, str]:
    return {r.path: r.reason for r in report.records}


# ----------------------------------------------------------------------------------------------
# Pure path checks


@pytest.mark.parametrize("name, path, reason", [
    ("a/b.png", "a/b.png", ""),
    ("./a//b.png", "a/b.png", ""),
    ("../evil.png", "../evil.png", UNSAFE_ESCAPE),
    ("a/../../evil.png", "a/../../evil.png", UNSAFE_ESCAPE),
    ("..\\evil.png", "../evil.png", UNSAFE_ESCAPE),
    ("/etc/evil.png", "/etc/evil.png", UNSAFE_ABSOLUTE),
    ("C:/Windows/evil.png", "C:/Windows/evil.png", UNSAFE_ABSOLUTE),
    ("c:evil.png", "c:evil.png", UNSAFE_ABSOLUTE),
])
def test_clean_member_path(name: str, path: str, reason: str) -> None:
    assert clean_member_path(name) == (path, reason)


@pytest.mark.parametrize("path, reason", [
    ("x/photo.PNG", ""), ("a.jpeg", ""), ("a.TIFF", ""), ("a.webp", ""),
    ("__MACOSX/x/._photo.png", "__MACOSX"), (".DS_Store", "dotfile"),
    ("x/._photo.png", "dotfile"), (".git/a.png", "dotfile"),
    ("notes.txt", "not an image extension: .txt"), ("Makefile", "not an image extension: (none)"),
])
def test_ignore_reason(path: str, reason: str) -> None:
    assert ignore_reason(path) == reason


# ----------------------------------------------------------------------------------------------
# Zip


def _hostile_zip(path: Path) -> dict[str, bytes]:
    """A zip mixing good images with every trick; returns the images that must be extracted."""
    good = {"ok/a.png": png(1), VIETNAMESE: png(2), "ok/deep/er/b.JPG": png(3)}
    with zipfile.ZipFile(path, "w") as zf, warnings.catch_warnings():
        warnings.simplefilter("ignore")  # zipfile warns about the duplicate we add on purpose
        for name, data in good.items():
            zf.writestr(name, data)
        for i, name in enumerate(["../evil.png", "/abs.png", "C:\\win.png", "..\\back.png",
                                  "__MACOSX/ok/._a.png", ".DS_Store", "ok/.hidden.png",
                                  "notes.txt", "ok/a.png"]):
            zf.writestr(name, png(10 + i))
        zf.writestr("ok/", b"")  # a folder entry
        for name, target in [("ok/passwd.png", "/etc/passwd"), ("ok/alias.png", "a.png")]:
            link = zipfile.ZipInfo(name)
            link.external_attr = 0o120777 << 16  # a unix symlink, as `zip --symlinks` stores it
            zf.writestr(link, target)
    return good


def test_zip_hostile_entries_refused_and_counted(tmp_path: Path) -> None:
    target = tmp_path / "target"
    good = _hostile_zip(tmp_path / "a.zip")
    report = safe_extract(tmp_path / "a.zip", target)
    # Exactly the good images, byte for byte, and nothing anywhere else.
    assert tree(target) == sorted(good)
    assert sorted(os.listdir(tmp_path)) == ["a.zip", "target"]
    for name, data in good.items():
        assert (target / name).read_bytes() == data
    why = reasons(report)
    assert why["../evil.png"] == why["../back.png"] == UNSAFE_ESCAPE
    assert why["/abs.png"] == why["C:/win.png"] == UNSAFE_ABSOLUTE
    assert why["__MACOSX/ok/._a.png"] == "__MACOSX"
    assert why[".DS_Store"] == why["ok/.hidden.png"] == "dotfile"
    assert why["notes.txt"] == "not an image extension: .txt"
    assert why["ok/passwd.png"] == UNSAFE_LINK and why["ok/alias.png"] == LINK
    assert report.n_images == 3 and report.n_ignored == 11
    assert report.ignored_by_reason[UNSAFE_ESCAPE] == 2
    assert report.ignored_by_reason[DUPLICATE] == 1  # the second ok/a.png
    # Records carry the real content hash of what was written.
    image = {r.path: r for r in report.records if r.kind == "image"}
    assert image[VIETNAMESE].sha256 == hashlib.sha256(good[VIETNAMESE]).hexdigest()


def _legacy_zip(path: Path, stored: bytes, data: bytes) -> None:
    """A zip whose entry name is `stored` bytes WITHOUT the UTF-8 flag (old Windows/macOS tools)."""
    placeholder = "x" * len(stored)
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(placeholder, data)
    raw = path.read_bytes()
    assert raw.count(placeholder.encode()) == 2  # local header + central directory
    path.write_bytes(raw.replace(placeholder.encode(), stored))


@pytest.mark.parametrize("stored, expected", [
    ("Ảnh đồng hồ/Đồng hồ 1.png".encode(), "Ảnh đồng hồ/Đồng hồ 1.png"),
    ("café/thé.png".encode("cp437"), "café/thé.png"),  # true cp437 names still decode
])
def test_zip_names_without_utf8_flag(tmp_path: Path, stored: bytes, expected: str) -> None:
    _legacy_zip(tmp_path / "a.zip", stored, png(1))
    report = safe_extract(tmp_path / "a.zip", tmp_path / "t")
    assert tree(tmp_path / "t") == [expected] and report.n_images == 1


def test_nfd_names_become_nfc(tmp_path: Path) -> None:
    import unicodedata

    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        zf.writestr(unicodedata.normalize("NFD", VIETNAMESE), png())
    safe_extract(tmp_path / "a.zip", tmp_path / "t")
    assert tree(tmp_path / "t") == [VIETNAMESE]


# ----------------------------------------------------------------------------------------------
# Tar


def _add(tf: tarfile.TarFile, name: str, data: bytes = b"", kind: bytes = tarfile.REGTYPE,
         link: str = "") -> None:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.size = kind, link, len(data)
    tf.addfile(info, io.BytesIO(data) if data else None)


def test_tar_links_and_escapes(tmp_path: Path) -> None:
    with tarfile.open(tmp_path / "a.tar", "w") as tf:
        _add(tf, "imgs/a.png", png(1))
        _add(tf, "imgs/passwd.png", kind=tarfile.SYMTYPE, link="/etc/passwd")
        _add(tf, "imgs/up.png", kind=tarfile.SYMTYPE, link="../../outside.png")
        _add(tf, "imgs/same.png", kind=tarfile.SYMTYPE, link="a.png")
        _add(tf, "imgs/hard.png", kind=tarfile.LNKTYPE, link="../outside.png")
        _add(tf, "imgs/hard_abs.png", kind=tarfile.LNKTYPE, link="/etc/passwd")
        _add(tf, "imgs/hard_in.png", kind=tarfile.LNKTYPE, link="imgs/a.png")
        _add(tf, "imgs/tty.png", kind=tarfile.CHRTYPE)
        _add(tf, "imgs/pipe.png", kind=tarfile.FIFOTYPE)
        _add(tf, "../evil.png", png(2))
        _add(tf, "/tmp/abs.png", png(3))
    target = tmp_path / "t"
    report = safe_extract(tmp_path / "a.tar", target)
    assert tree(target) == ["imgs/a.png"]
    assert not any(p.is_symlink() for p in target.rglob("*"))
    why = reasons(report)
    for name in ("imgs/passwd.png", "imgs/up.png", "imgs/hard.png", "imgs/hard_abs.png"):
        assert why[name] == UNSAFE_LINK, name
    assert why["imgs/same.png"] == why["imgs/hard_in.png"] == LINK
    assert why["imgs/tty.png"] == why["imgs/pipe.png"] == SPECIAL
    assert why["../evil.png"] == UNSAFE_ESCAPE and why["/tmp/abs.png"] == UNSAFE_ABSOLUTE
    assert not (tmp_path / "evil.png").exists() and not Path("/tmp/abs.png").exists()


@pytest.mark.parametrize("mode, suffix", [("w:gz", ".tar.gz"), ("w:bz2", ".tar.bz2"),
                                          ("w:xz", ".tar.xz")])
def test_compressed_tars(tmp_path: Path, mode: str, suffix: str) -> None:
    archive = tmp_path / ("a" + suffix)
    with tarfile.open(archive, mode) as tf:
        _add(tf, VIETNAMESE, png(5))
        _add(tf, "readme.md", b"hi")
    report = safe_extract(archive, tmp_path / "t")
    assert (tmp_path / "t" / VIETNAMESE).read_bytes() == png(5)
    assert report.ignored_by_reason == {"not an image extension: .md": 1}


# ----------------------------------------------------------------------------------------------
# Filter, limit, bombs, bad archives


def test_filter_and_limit(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "a.zip", "w") as zf:
        for name in ["keep/c.png", "keep/a.png", "drop/z.png", "keep/b.png"]:
            zf.writestr(name, png(len(name)))
    report = safe_extract(tmp_path / "a.zip", tmp_path / "t", limit=2,
                          members=lambda p: "" if p.startswith("keep/") else "not wanted")
    # The first two by path, whatever the archive order.
    assert tree(tmp_path / "t") == ["keep/a.png", "keep/b.png"]
    assert reasons(report)["keep/c.png"] == BEYOND_LIMIT
    assert reasons(report)["drop/z.png"] == "not wanted"


def test_oversized_entry_is_refused(tmp_path: Path) -> None:
    with zipfile.ZipFile(tmp_path / "a.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("bomb.png", b"\0" * 200_000)  # compresses to a few hundred bytes
        zf.writestr("fine.png", png())
    report = safe_extract(tmp_path / "a.zip", tmp_path / "t", max_bytes=100_000)
    assert tree(tmp_path / "t") == ["fine.png"]
    assert reasons(report)["bomb.png"].startswith("too large")


def test_many_entries_past_the_total_cap_stop_extraction(tmp_path: Path) -> None:
    """Each entry is under the per-entry cap, their sum is not: the archive is refused as a
    whole (the total counts bytes written, not the headers' sizes), naming the cap."""
    with zipfile.ZipFile(tmp_path / "a.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        for i in range(5):
            zf.writestr(f"part{i}.png", bytes([i]) * 60_000)
    with pytest.raises(UserError, match="expand past") as error:
        safe_extract(tmp_path / "a.zip", tmp_path / "t", max_bytes=100_000, max_total=150_000)
    assert "part2.png" in str(error.value)  # 3 x 60,000 crosses 150,000 at the third
    assert not (tmp_path / "t/part2.png").exists()  # the crossing entry is not left half written
    # Under a cap that fits, the same archive extracts whole.
    report = safe_extract(tmp_path / "a.zip", tmp_path / "t2", max_bytes=100_000,
                          max_total=300_000)
    assert report.n_images == 5


def test_too_little_free_space_is_refused_before_writing(tmp_path: Path) -> None:
    """The free-space check runs on the sizes the archive declares, before any file is written."""
    free = shutil.disk_usage(tmp_path).free
    with pytest.raises(UserError, match="GiB are free"):
        check_free_space(tmp_path, needed=free + (1 << 30))
    check_free_space(tmp_path, needed=1024)  # a small archive passes


def test_truncated_and_non_archives(tmp_path: Path) -> None:
    _hostile_zip(tmp_path / "a.zip")
    (tmp_path / "cut.zip").write_bytes((tmp_path / "a.zip").read_bytes()[:300])
    (tmp_path / "text.zip").write_text("hello")
    with pytest.raises(UserError, match="neither a zip nor a tar"):
        safe_extract(tmp_path / "text.zip", tmp_path / "t")
    with pytest.raises(UserError, match="neither a zip nor a tar|corrupt"):
        safe_extract(tmp_path / "cut.zip", tmp_path / "t")
    with pytest.raises(UserError, match="does not exist"):
        safe_extract(tmp_path / "missing.zip", tmp_path / "t")
    with tarfile.open(tmp_path / "a.tar.gz", "w:gz") as tf:
        for i in range(20):
            _add(tf, f"{i}.png", os.urandom(20_000))
    (tmp_path / "cut.tar.gz").write_bytes((tmp_path / "a.tar.gz").read_bytes()[:200_000])
    with pytest.raises(UserError, match="corrupt or truncated"):
        safe_extract(tmp_path / "cut.tar.gz", tmp_path / "t2")
