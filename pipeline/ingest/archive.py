"""Safe extraction of zip and tar archives, keeping images only.

Archives come from strangers (Kaggle uploads, forum links), so nothing in them is trusted: every
entry's path is normalised and checked before a byte is written, links are never created, and
every entry, extracted or not, gets a FileRecord (path, bytes, sha256, kind, reason) so the fetch
record says exactly what the archive held and why each skipped entry was skipped.
"""

from __future__ import annotations

import errno
import hashlib
import os
import posixpath
import re
import shutil
import stat
import tarfile
import unicodedata
import zipfile
import zlib
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import IO

from tqdm import tqdm

from pipeline.core.errors import UserError
from pipeline.core.files import sha256_file as sha256_file  # re-exported: one implementation

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".gif", ".webp", ".bmp", ".tif", ".tiff")
IMAGE = "image"  # FileRecord.kind of an extracted image
IGNORED = "ignored"  # FileRecord.kind of anything else (its reason says why)
CHUNK = 1 << 20  # bytes per read while copying
MAX_ENTRY_BYTES = 512 << 20  # a single "image" larger than this is a decompression bomb
MAX_TOTAL_BYTES = 64 << 30  # all images of one archive: past this it is a bomb, not a dataset
FREE_SPACE_MARGIN = 256 << 20  # left free on the disk after the declared sizes are written

# Reasons shared by the checks below; the fetch summary groups ignored entries by them.
UNSAFE_ESCAPE = "unsafe path: escapes the target folder"
UNSAFE_ABSOLUTE = "unsafe path: absolute"
UNSAFE_LINK = "unsafe link: points outside the target folder"
LINK = "link (not extracted)"
SPECIAL = "special file (device or fifo)"
DUPLICATE = "duplicate entry"
BEYOND_LIMIT = "beyond limit"
NOT_UTF8 = "file name is not valid UTF-8"
TOO_LARGE = "too large"

# An entry filter: given the entry's clean relative path, '' keeps it, else the reason to skip.
MemberFilter = Callable[[str], str]


class TooLarge(ValueError):
    """An entry grew past the size cap while being copied (a decompression bomb)."""


@dataclass(frozen=True)
class FileRecord:
    """One row of files.csv: a file of the source and what became of it."""

    path: str  # posix path relative to the output folder (as stored, for refused entries)
    bytes: int  # content size; declared size for entries that were not read
    sha256: str  # hex digest of the content; '' when it was not read (links, special files)
    kind: str  # IMAGE or IGNORED
    reason: str = ""  # why ignored ('' for images)


@dataclass(frozen=True)
class ExtractReport:
    """What an extraction did: every entry of the archive, in archive order."""

    archive: str  # path of the archive that was read
    records: tuple[FileRecord, ...]

    @property
    def n_images(self) -> int:
        return sum(r.kind == IMAGE for r in self.records)

    @property
    def n_ignored(self) -> int:
        return sum(r.kind == IGNORED for r in self.records)

    @property
    def ignored_by_reason(self) -> dict[str, int]:
        return count_reasons(self.records)


def count_reasons(records: tuple[FileRecord, ...] | list[FileRecord]) -> dict[str, int]:
    """Ignored records per reason, most common first (for the one-line stage summary)."""
    counts = Counter(r.reason for r in records if r.kind == IGNORED)
    return dict(counts.most_common())


# ----------------------------------------------------------------------------------------------
# Path checks (pure functions, shared with the dir: source)


def is_utf8(name: str) -> bool:
    """False for a name holding undecodable bytes (Python keeps them as lone surrogates)."""
    try:
        name.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def printable_name(name: str) -> str:
    """A name safe to write in a CSV or a log: undecodable bytes shown as \\xNN escapes."""
    return name if is_utf8(name) else name.encode("utf-8", "surrogateescape").decode(
        "utf-8", "backslashreplace")


def ignore_reason(rel_path: str) -> str:
    """Why a safe relative path is not an image to keep ('' if it is one)."""
    if not is_utf8(rel_path):  # bytes no encoding can name: listed (escaped), never copied
        return NOT_UTF8
    parts = rel_path.split("/")
    # macOS zips carry resource forks under __MACOSX/ (named like the images: never keep them).
    if "__MACOSX" in parts:
        return "__MACOSX"
    # .DS_Store, ._name.png (AppleDouble), .git/...: hidden files are never data.
    if any(p.startswith(".") for p in parts):
        return "dotfile"
    ext = posixpath.splitext(parts[-1])[1].lower()
    if ext not in IMAGE_EXTENSIONS:
        return f"not an image extension: {ext or '(none)'}"
    return ""


def clean_member_path(name: str) -> tuple[str, str]:
    """Normalise an archive entry name to a relative posix path, or say why it is unsafe.

    Returns (path, reason): reason is '' for a safe path. Backslashes count as separators
    (Windows-made zips use them), so `..\\evil.png` is caught too.
    """
    text = unicodedata.normalize("NFC", name.replace("\\", "/"))
    if "\x00" in text:
        return text, UNSAFE_ESCAPE
    # "/etc/x", "//server/share" and "C:/x" are absolute wherever they are extracted.
    if text.startswith("/") or re.match(r"^[A-Za-z]:", text):
        return text, UNSAFE_ABSOLUTE
    parts = [p for p in text.split("/") if p not in ("", ".")]
    if ".." in parts:
        return text, UNSAFE_ESCAPE
    return "/".join(parts), ""


def link_reason(entry_path: str, link: str, relative_to_entry: bool) -> str:
    """Why a link entry is not extracted: outside the target is unsafe, inside merely skipped.

    Symlink targets are relative to the link's folder; tar hardlink targets to the archive root.
    """
    link = link.replace("\\", "/")
    if link.startswith("/") or re.match(r"^[A-Za-z]:", link):
        return UNSAFE_LINK
    base = posixpath.dirname(entry_path) if relative_to_entry else ""
    resolved = posixpath.normpath(posixpath.join(base, link))
    if resolved == ".." or resolved.startswith("../"):
        return UNSAFE_LINK
    return LINK


def _inside(target: Path, rel: str) -> Path | None:
    """The destination of `rel` under `target`, or None if it would land outside (last guard)."""
    root = os.path.realpath(target)
    dest = os.path.realpath(os.path.join(root, rel))
    return Path(dest) if dest.startswith(root + os.sep) else None


# ----------------------------------------------------------------------------------------------
# Copying with a hash


def copy_hashed(src: IO[bytes], dest: Path | None,
                max_bytes: int = MAX_ENTRY_BYTES) -> tuple[int, str]:
    """Stream `src` into `dest` (None: only hash it) and return (bytes, sha256).

    Raises TooLarge past `max_bytes`, counting real bytes, so a lying header cannot fill the disk.
    """
    digest = hashlib.sha256()
    size = 0
    out = open(dest, "wb") if dest is not None else None
    try:
        while chunk := src.read(CHUNK):
            size += len(chunk)
            if size > max_bytes:
                raise TooLarge(f"{TOO_LARGE}: over {max_bytes >> 20} MiB")
            digest.update(chunk)
            if out is not None:
                out.write(chunk)
    except BaseException:
        # Never leave a partial file behind that a later stage could take for an image.
        if out is not None:
            out.close()
            dest.unlink(missing_ok=True)
        raise
    if out is not None:
        out.close()
    return size, digest.hexdigest()


# ----------------------------------------------------------------------------------------------
# One reader interface over zip and tar


@dataclass(frozen=True)
class _Member:
    name: str  # entry name as decoded (not yet checked)
    size: int  # declared size in bytes
    type: str  # file | dir | symlink | hardlink | special
    link: str  # link target for symlink/hardlink, else ''
    open: Callable[[], IO[bytes]]  # content stream (files only)
    problem: str = ""  # a reason known from the header alone (encrypted entry...)


def _zip_name(info: zipfile.ZipInfo) -> str:
    """The entry name, repairing legacy zips that store UTF-8 names without the UTF-8 flag.

    zipfile decodes such names as cp437, turning 'Đồng hồ.png' into mojibake; encoding back to
    cp437 gives the stored bytes, which are tried as UTF-8 first (what macOS/Linux tools write).
    """
    if info.flag_bits & 0x800:
        return info.filename
    try:
        return info.filename.encode("cp437").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return info.filename


def _zip_members(zf: zipfile.ZipFile) -> Iterator[_Member]:
    for info in zf.infolist():
        # Unix file type bits, when a unix tool made the zip (0 from Windows and zipfile.writestr).
        ftype = stat.S_IFMT(info.external_attr >> 16)
        if info.is_dir() or ftype == stat.S_IFDIR:
            kind = "dir"
        elif ftype == stat.S_IFLNK:
            kind = "symlink"
        elif ftype not in (0, stat.S_IFREG):
            kind = "special"
        else:
            kind = "file"
        problem = "encrypted (no password)" if info.flag_bits & 0x1 else ""
        link = ""
        if kind == "symlink" and not problem:
            # A zip symlink's content is its target; read a bounded amount (it could be a bomb).
            with zf.open(info) as stream:
                link = stream.read(4096).decode("utf-8", "replace")
        yield _Member(_zip_name(info), info.file_size, kind, link,
                      lambda info=info: zf.open(info), problem)


def _tar_members(tf: tarfile.TarFile) -> Iterator[_Member]:
    for m in tf.getmembers():
        kind = ("dir" if m.isdir() else "symlink" if m.issym() else "hardlink" if m.islnk()
                else "file" if m.isfile() else "special")
        # Names that are not UTF-8 arrive with surrogate escapes; make them printable.
        name = m.name.encode("utf-8", "surrogateescape").decode("utf-8", "replace")
        yield _Member(name, m.size, kind, m.linkname, lambda m=m: tf.extractfile(m))


def archive_format(path: Path) -> str:
    """'zip' or 'tar' from the file's content (extensions lie), else UserError."""
    if not path.is_file():
        raise UserError(f"archive {path} does not exist: check the path in fetch.source")
    if zipfile.is_zipfile(path):
        return "zip"
    if tarfile.is_tarfile(path):
        return "tar"
    raise UserError(f"{path} is neither a zip nor a tar archive: give a .zip, .tar or .tar.gz")


# ----------------------------------------------------------------------------------------------
# Extraction


def _plan(members: list[_Member], keep: MemberFilter | None, limit: int) -> list[tuple[str, str]]:
    """(clean path, reason) for each member, deciding everything before any write."""
    plan: list[tuple[str, str]] = []
    seen: set[str] = set()
    for m in members:
        # Checks in order of severity: the first reason found is the one recorded.
        path, reason = clean_member_path(m.name)
        if not reason and m.type in ("symlink", "hardlink"):
            reason = link_reason(path, m.link, relative_to_entry=m.type == "symlink")
        elif not reason and m.type == "special":
            reason = SPECIAL
        # Then what is merely not wanted: encrypted, junk, non-images, the caller's filter.
        reason = reason or m.problem or ignore_reason(path)
        if not reason and keep is not None:
            reason = keep(path)
        # A second entry of the same path would overwrite the first: keep the first only.
        if not reason and path in seen:
            reason = DUPLICATE
        if not reason:
            seen.add(path)
        plan.append((path, reason))
    # `limit` keeps the first N images by path, the same N whatever the archive's order.
    if limit > 0:
        chosen = set(sorted(p for p, r in plan if not r)[:limit])
        plan = [(p, r or ("" if p in chosen else BEYOND_LIMIT)) for p, r in plan]
    return plan


def _extract_one(m: _Member, path: str, reason: str, target: Path, max_bytes: int) -> FileRecord:
    """Write one planned member (or only hash it when it is ignored) and return its record."""
    if m.type != "file" or reason.startswith(("unsafe", "encrypted")):
        # Links, special files and refused paths are never opened.
        return FileRecord(path, m.size, "", IGNORED, reason)
    # Ignored regular files are still read, to record their sha256, but never written.
    dest = None if reason else _inside(target, path)
    if not reason and dest is None:
        reason = UNSAFE_ESCAPE
    try:
        if dest is not None:
            dest.parent.mkdir(parents=True, exist_ok=True)
        with m.open() as stream:
            size, sha = copy_hashed(stream, dest, max_bytes)
    except TooLarge as error:
        return FileRecord(path, m.size, "", IGNORED, str(error))
    except (zipfile.BadZipFile, zlib.error, tarfile.TarError, EOFError) as error:
        return FileRecord(path, m.size, "", IGNORED, f"corrupt entry: {error}")
    except NotImplementedError as error:  # e.g. a zip compression method Python lacks
        return FileRecord(path, m.size, "", IGNORED, f"unsupported entry: {error}")
    except OSError as error:
        if error.errno in (errno.ENOSPC, errno.EDQUOT):
            raise UserError(f"disk full while extracting into {target}: free some space") from None
        return FileRecord(path, m.size, "", IGNORED, f"cannot write: {error.strerror}")
    return FileRecord(path, size, sha, IGNORED if reason else IMAGE, reason)


def check_free_space(target: Path, needed: int, margin: int = FREE_SPACE_MARGIN) -> None:
    """UserError before any write when the disk under `target` cannot take `needed` bytes."""
    free = shutil.disk_usage(target).free
    if needed + margin > free:
        raise UserError(f"extracting into {target} needs {needed / 2**30:.2f} GiB (the sizes the "
                        f"archive declares) and {margin >> 20} MiB to spare, but only "
                        f"{free / 2**30:.2f} GiB are free: free some space")


def _extract_all(listing: list[_Member], plan: list[tuple[str, str]], target: Path,
                 max_bytes: int, max_total: int, quiet: bool) -> list[FileRecord]:
    """Write the planned members in archive order, stopping the whole archive past max_total.

    Sizes in headers can lie, so the total counts the bytes really written: each entry may
    write at most what is left of the total, and one that would cross it ends extraction.
    """
    check_free_space(target, sum(m.size for m, (_, r) in zip(listing, plan)
                                 if not r and m.type == "file"))
    records, written = [], 0
    for m, (path, reason) in tqdm(list(zip(listing, plan)), desc="extract", unit="file",
                                  disable=quiet):
        if m.type == "dir":  # folders are created on demand, never recorded
            continue
        left = max_total - written  # only written images count towards the total
        cap = max_bytes if reason else min(max_bytes, left)
        record = _extract_one(m, path, reason, target, cap)
        if not reason and record.reason.startswith(TOO_LARGE) and left < max_bytes:
            raise UserError(f"the images of this archive expand past {max_total:,} bytes "
                            f"(at {printable_name(path)}): a decompression bomb, or a dataset "
                            "larger than this pipeline extracts; nothing was kept as fetched")
        written += record.bytes if record.kind == IMAGE else 0
        records.append(record)
    return records


def safe_extract(archive: Path, target: Path, members: MemberFilter | None = None,
                 limit: int = 0, quiet: bool = True, max_bytes: int = MAX_ENTRY_BYTES,
                 max_total: int = MAX_TOTAL_BYTES) -> ExtractReport:
    """Extract the images of a zip or tar(.gz/.bz2/.xz) under `target`, refusing hostile entries.

    `members(path)` returns '' to keep an entry or the reason to skip it; `limit` > 0 keeps the
    first N images by path. Unsafe entries (escaping paths, absolute paths, links leaving the
    target) are refused and counted, and extraction goes on: one bad entry should not cost a
    user the rest of a large download. Only a corrupt archive raises UserError.
    """
    kind = archive_format(archive)
    target.mkdir(parents=True, exist_ok=True)
    # Plan everything from the listing first (limit needs all names), then write in archive
    # order, which keeps a compressed tar a forward read.
    try:
        with (zipfile.ZipFile(archive) if kind == "zip" else tarfile.open(archive, "r:*")) as af:
            listing = list(_zip_members(af) if kind == "zip" else _tar_members(af))
            plan = _plan(listing, members, limit)
            records = _extract_all(listing, plan, target, max_bytes, max_total, quiet)
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, zlib.error) as error:
        raise UserError(
            f"{archive} is corrupt or truncated ({error}): delete it and fetch again"
        ) from None
    return ExtractReport(str(archive), tuple(records))
