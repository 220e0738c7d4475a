"""Where the images come from: parse `fetch.source` and put its images under out_dir/files.

Every source ends the same way: images under `out_dir/files/` (nested layout preserved) and
`out_dir/files.csv` listing every file met, image or ignored, with its size, sha256 and the
reason it was ignored. Downloads go to `downloads_dir`, a cache outside the stage's atomic
output, so fetching the same source again downloads nothing.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image
from tqdm import tqdm

from pipeline.core import kaggle
from pipeline.core.errors import UserError
from pipeline.core.faults import kill_point
from pipeline.core.files import csv_safe_frame
from pipeline.ingest.archive import (
    BEYOND_LIMIT,
    IGNORED,
    IMAGE,
    NOT_UTF8,
    SPECIAL,
    FileRecord,
    copy_hashed,
    count_reasons,
    ignore_reason,
    printable_name,
    safe_extract,
    sha256_file,
)

SOURCE_FORMS = (
    "builtin:fluent-emoji-3d, builtin:fashion-mnist, builtin:mnist, dir:PATH, zip:PATH, "
    "kaggle:OWNER/SLUG[@VERSION], kaggle-competition:NAME"
)
BUILTINS = ("fluent-emoji-3d", "fashion-mnist", "mnist")
CSV_COLUMNS = ["path", "bytes", "sha256", "kind", "reason"]

# The default set: Microsoft's Fluent Emoji 3D renders as packaged on npm (MIT).
EMOJI_SPEC = "@lobehub/fluent-emoji-3d@1.1.0"
EMOJI_FILE = "lobehub-fluent-emoji-3d-1.1.0.tgz"  # the name `npm pack` gives it
EMOJI_BYTES = 15_792_027
EMOJI_SHA256 = "c1bb7eee7de090205a232518a9ab4adb3df458bfbe8a1f78232991194c8b2e58"
EMOJI_ASSETS = "package/assets/"
# npm errors that mean "no network" rather than "bad package".
NPM_OFFLINE_CODES = ("ENOTFOUND", "EAI_AGAIN", "ECONNREFUSED", "ETIMEDOUT", "ECONNRESET",
                     "ENETUNREACH", "EHOSTUNREACH", "ENOTCACHED")

# Teaching sets: 28x28 grey idx files (Debian ships Fashion-MNIST; torchvision downloads both).
DEBIAN_FASHION_MNIST = Path("/usr/share/datasets/fashion-mnist")
IDX_FILES = {"train": "train-images-idx3-ubyte", "test": "t10k-images-idx3-ubyte"}
TORCHVISION_CLASS = {"fashion-mnist": "FashionMNIST", "mnist": "MNIST"}
LICENSES = {"fluent-emoji-3d": "MIT", "fashion-mnist": "MIT", "mnist": "CC BY-SA 3.0"}


@dataclass(frozen=True)
class Source:
    """A parsed `fetch.source`."""

    kind: str  # builtin | dir | zip | kaggle | kaggle-competition
    name: str  # builtin set name, PATH as written, OWNER/SLUG, or competition NAME
    version: int | None = None  # kaggle dataset version; None = latest


@dataclass(frozen=True)
class FetchReport:
    """What fetch produced, for the stage's one-line summary and manifest."""

    source: str  # the source string as given
    kind: str  # Source.kind
    n_images: int  # images written under out_dir/files
    n_ignored: int  # files met but not kept (see files.csv)
    ignored_by_reason: dict[str, int] = field(default_factory=dict)
    archive: str | None = None  # path of the downloaded or given archive, if any
    bytes: int = 0  # total size of the images written, in bytes
    n_test: int = 0  # teaching sets only: test-split PNGs written under out_dir/test
    license: str = ""  # licence of the data when the source states one


@dataclass(frozen=True)
class _Fetched:
    """What one source fetcher hands back to `fetch`."""

    records: list[FileRecord]
    archive: Path | None = None
    license: str = ""
    n_test: int = 0


def _bad_source(text: str, why: str) -> UserError:
    return UserError(f"fetch.source {text!r} {why}; use one of: {SOURCE_FORMS}")


def parse_source(text: str) -> Source:
    """Parse a source string into a Source, or raise UserError listing the accepted forms."""
    # Split on the first colon only: paths may hold colons (C:\data, names with times).
    kind, sep, rest = text.strip().partition(":")
    rest = rest.strip()
    if not sep or not rest:
        raise _bad_source(text, "is not of the form KIND:VALUE")
    if kind == "builtin":
        if rest not in BUILTINS:
            raise _bad_source(text, f"names no built-in set ({', '.join(BUILTINS)})")
        return Source("builtin", rest)
    if kind in ("dir", "zip"):
        return Source(kind, rest)
    if kind == "kaggle":
        # Slugs and owner names are letters, digits, '-', '_' and '.', never '..'.
        match = re.fullmatch(r"([\w.-]+)/([\w.-]+)(?:@(\d+))?", rest, flags=re.ASCII)
        if not match or ".." in rest:
            raise _bad_source(text, "is not kaggle:OWNER/SLUG or kaggle:OWNER/SLUG@VERSION")
        version = int(match[3]) if match[3] else None
        return Source("kaggle", f"{match[1]}/{match[2]}", version)
    if kind == "kaggle-competition":
        if not re.fullmatch(r"[\w-]+", rest, flags=re.ASCII):
            raise _bad_source(text, "is not kaggle-competition:NAME")
        return Source("kaggle-competition", rest)
    raise _bad_source(text, f"has an unknown kind {kind!r}")


# ----------------------------------------------------------------------------------------------
# builtin:fluent-emoji-3d through npm


def _npm_pack(spec: str, folder: Path) -> None:
    """Run `npm pack SPEC` into `folder`; turn every failure into one sentence."""
    npm = shutil.which("npm")
    if npm is None:
        raise UserError("npm is missing: install Node.js/npm (apt-get install npm) "
                        "or choose another fetch.source")
    # Few, short retries: offline, npm's defaults wait over a minute before failing.
    command = [npm, "pack", spec, "--json", "--pack-destination", str(folder),
               "--prefer-offline", "--fetch-retries=1", "--fetch-retry-mintimeout=1000",
               "--fetch-retry-maxtimeout=5000"]
    try:
        done = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=900)
    except subprocess.TimeoutExpired:
        raise UserError(f"npm pack {spec} took over 15 minutes: check the network") from None
    if done.returncode == 0:
        return
    # With --json, npm puts the error code in stdout's JSON and again in stderr's log lines.
    output = done.stdout + done.stderr
    if any(code in output for code in NPM_OFFLINE_CODES):
        raise UserError(
            f"npm cannot reach its registry to download {spec} (offline?): connect once "
            "(the file is then cached in data/downloads/) or choose another fetch.source"
        )
    # Otherwise quote npm's first error line (e.g. "code E404"): the user can search it.
    lines = [ln for ln in done.stderr.splitlines() if ln.startswith("npm error")] or ["?"]
    raise UserError(f"npm pack {spec} failed ({lines[0][10:].strip()}); see `npm pack {spec}`")


def fetch_npm_tarball(spec: str, filename: str, sha256: str, folder: Path) -> Path:
    """The verified tarball of an npm package in `folder`, packed at most twice.

    A cached file with the right sha256 is used as is (no npm, no network); a mismatch is
    downloaded again once, then reported: a second mismatch means the registry serves
    something else, which no retry will fix.
    """
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / filename
    # Attempt 1 may use the cache; attempt 2 always packs afresh (the bad file is gone).
    for _ in range(2):
        if not path.is_file():
            _npm_pack(spec, folder)
        if path.is_file() and sha256_file(path) == sha256:
            return path
        path.unlink(missing_ok=True)  # wrong or missing: never keep a bad cache entry
    raise UserError(
        f"npm gave {filename} with a sha256 other than {sha256} twice: check which registry "
        "npm uses (npm config get registry) or choose another fetch.source"
    )


def _fetch_emoji(files_dir: Path, downloads_dir: Path, limit: int, quiet: bool) -> _Fetched:
    tarball = fetch_npm_tarball(EMOJI_SPEC, EMOJI_FILE, EMOJI_SHA256, downloads_dir / "npm")
    # Only the renders: package.json and README.md are recorded as ignored, not extracted.
    report = safe_extract(
        tarball, files_dir, limit=limit, quiet=quiet,
        members=lambda p: "" if p.startswith(EMOJI_ASSETS) else "outside package/assets",
    )
    return _Fetched(list(report.records), tarball, LICENSES["fluent-emoji-3d"])


# ----------------------------------------------------------------------------------------------
# builtin:fashion-mnist and builtin:mnist


def read_idx_images(path: Path) -> np.ndarray:
    """Images of an idx3-ubyte file (raw or .gz) as a (N, rows, cols) uint8 array."""
    opener = gzip.open if path.suffix == ".gz" else open
    with opener(path, "rb") as f:
        data = f.read()
    # Header: magic 0x00000803 (unsigned bytes, 3 dims), then N, rows, cols as big-endian int32.
    magic, n, rows, cols = np.frombuffer(data[:16], dtype=">i4")
    if magic != 0x803 or len(data) != 16 + n * rows * cols:
        raise UserError(f"{path} is not an idx image file (corrupt download?): delete it")
    return np.frombuffer(data, dtype=np.uint8, offset=16).reshape(n, rows, cols)


def _find_idx(folder: Path, stem: str) -> Path | None:
    for name in (stem, stem + ".gz"):
        if (folder / name).is_file():
            return folder / name
    return None


def _idx_folder(name: str, downloads_dir: Path, quiet: bool) -> Path:
    """A folder holding both idx image files of `name`: Debian's copy, else torchvision's."""
    if name == "fashion-mnist" and all(_find_idx(DEBIAN_FASHION_MNIST, s)
                                       for s in IDX_FILES.values()):
        return DEBIAN_FASHION_MNIST
    import torchvision.datasets  # heavy; only the teaching sets need it

    # torchvision's own layout under our cache: ROOT/<ClassName>/raw/<idx files>.
    root = downloads_dir / "torchvision"
    cls = getattr(torchvision.datasets, TORCHVISION_CLASS[name])
    raw = root / cls.__name__ / "raw"
    try:
        # torchvision skips the download when the files are already in `raw`.
        with contextlib.redirect_stdout(io.StringIO()) if quiet else contextlib.nullcontext():
            cls(str(root), train=True, download=True)
            cls(str(root), train=False, download=True)
    except (RuntimeError, OSError) as error:
        hint = " or apt-get install dataset-fashion-mnist" if name == "fashion-mnist" else ""
        raise UserError(
            f"cannot download {name} with torchvision (offline?): connect once{hint}, or put its "
            f"four idx files in {raw} ({str(error).splitlines()[0]})"
        ) from None
    return raw


def _write_pngs(images: np.ndarray, folder: Path, limit: int, quiet: bool,
                desc: str) -> list[FileRecord]:
    """Write images as grey PNGs named by index; records relative to `folder`."""
    folder.mkdir(parents=True, exist_ok=True)
    count = min(limit, len(images)) if limit > 0 else len(images)
    records = []
    for i in tqdm(range(count), desc=desc, unit="img", disable=quiet):
        buffer = io.BytesIO()
        Image.fromarray(images[i]).save(buffer, format="PNG")  # 2-D uint8: mode L
        data = buffer.getvalue()
        name = f"{i:05d}.png"  # zero-padded: sorting by name keeps the idx order
        (folder / name).write_bytes(data)
        records.append(FileRecord(name, len(data), hashlib.sha256(data).hexdigest(), IMAGE))
    return records


def _fetch_idx_set(name: str, out_dir: Path, downloads_dir: Path, limit: int,
                   quiet: bool) -> _Fetched:
    """Train split as PNGs under files/, test split under test/ (`limit` caps both)."""
    folder = _idx_folder(name, downloads_dir, quiet)
    train_file = _find_idx(folder, IDX_FILES["train"])
    train = read_idx_images(train_file)
    test = read_idx_images(_find_idx(folder, IDX_FILES["test"]))
    records = _write_pngs(train, out_dir / "files", limit, quiet, f"{name} train")
    # The test split is what the teaching mode's FID is measured against.
    n_test = len(_write_pngs(test, out_dir / "test", limit, quiet, f"{name} test"))
    return _Fetched(records, train_file, LICENSES[name], n_test)


# ----------------------------------------------------------------------------------------------
# dir:PATH and zip:PATH


def _resolve(path_text: str, project_root: Path | None) -> Path:
    """A user path: absolute as is, relative against the project root (never the cwd)."""
    path = Path(path_text).expanduser()
    if path.is_absolute():
        return path
    if project_root is None:
        raise ValueError(f"relative source path {path_text!r} needs project_root")
    return project_root / path


def _scan_dir(root: Path, skip: set[str]) -> list[tuple[str, Path, str]]:
    """(relative posix path, absolute path, reason) for every file under `root`, sorted."""
    found = []
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        here = Path(dirpath)
        # Sorted, and never into our own output or cache if they lie inside the source.
        dirnames[:] = sorted(d for d in dirnames if os.path.realpath(here / d) not in skip)
        for d in dirnames:
            if (here / d).is_symlink():  # walk does not follow them: say so
                rel = (here / d).relative_to(root).as_posix()
                found.append((rel, here / d, "link to a folder (not followed)"))
        for name in sorted(filenames):
            full = here / name
            rel = full.relative_to(root).as_posix()
            reason = ignore_reason(rel)
            rel = rel if reason != NOT_UTF8 else printable_name(rel)
            if not reason and not full.exists():
                reason = "broken link"
            elif not reason and not full.is_file():
                reason = SPECIAL
            found.append((rel, full, reason))
    return sorted(found)


def _copy_dir(root: Path, files_dir: Path, limit: int, quiet: bool,
              skip: set[str]) -> list[FileRecord]:
    """Copy the images under `root` (links to files are followed: the user owns this folder)."""
    if not root.is_dir():
        hint = "; use zip:PATH for an archive" if root.is_file() else ""
        raise UserError(f"folder {root} does not exist{hint}: check fetch.source")
    found = _scan_dir(root, skip)
    # `found` is sorted by path, so the first N images are the same N on every machine.
    chosen = [rel for rel, _, reason in found if not reason]
    chosen_set = set(chosen[:limit] if limit > 0 else chosen)
    records = []
    for rel, full, reason in tqdm(found, desc="copy", unit="file", disable=quiet):
        if reason or rel not in chosen_set:
            # Ignored local files are listed but not hashed: they may be huge and are not data.
            size = full.lstat().st_size
            records.append(FileRecord(rel, size, "", IGNORED, reason or BEYOND_LIMIT))
            continue
        dest = files_dir / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        with open(full, "rb") as src:
            size, sha = copy_hashed(src, dest, max_bytes=1 << 62)  # local files: no size cap
        records.append(FileRecord(rel, size, sha, IMAGE))
    return records


# ----------------------------------------------------------------------------------------------
# kaggle: and kaggle-competition: (the client itself lives in pipeline.core.kaggle)


def _fetch_kaggle(src: Source, files_dir: Path, downloads_dir: Path, limit: int,
                  quiet: bool) -> _Fetched:
    owner, slug = src.name.split("/")
    # One cache folder per source string: each version is its own download.
    cache = downloads_dir / "kaggle" / owner / (slug + (f"@{src.version}" if src.version else ""))
    archive, license_text = kaggle.download_dataset(owner, slug, src.version, cache, quiet)
    report = safe_extract(archive, files_dir, limit=limit, quiet=quiet)
    return _Fetched(list(report.records), archive, license_text)


def _fetch_competition(src: Source, files_dir: Path, downloads_dir: Path, limit: int,
                       quiet: bool) -> _Fetched:
    cache = downloads_dir / "kaggle-competition" / src.name
    archive = kaggle.download_competition(src.name, cache, quiet)
    report = safe_extract(archive, files_dir, limit=limit, quiet=quiet)
    return _Fetched(list(report.records), archive)


# ----------------------------------------------------------------------------------------------
# The entry point


def _fetch_any(src: Source, out_dir: Path, downloads_dir: Path, limit: int, quiet: bool,
               project_root: Path | None) -> _Fetched:
    """Run the fetcher of the source's kind."""
    files_dir = out_dir / "files"
    if src.kind == "builtin" and src.name == "fluent-emoji-3d":
        return _fetch_emoji(files_dir, downloads_dir, limit, quiet)
    if src.kind == "builtin":
        return _fetch_idx_set(src.name, out_dir, downloads_dir, limit, quiet)
    if src.kind == "dir":
        # Our own output and cache may lie inside the folder (dir:.): never copy them.
        skip = {os.path.realpath(out_dir), os.path.realpath(downloads_dir)}
        root = _resolve(src.name, project_root)
        return _Fetched(_copy_dir(root, files_dir, limit, quiet, skip))
    if src.kind == "zip":
        archive = _resolve(src.name, project_root)
        report = safe_extract(archive, files_dir, limit=limit, quiet=quiet)
        return _Fetched(list(report.records), archive)
    if src.kind == "kaggle":
        return _fetch_kaggle(src, files_dir, downloads_dir, limit, quiet)
    return _fetch_competition(src, files_dir, downloads_dir, limit, quiet)


def write_files_csv(records: list[FileRecord], path: Path) -> None:
    """files.csv: one row per file met, sorted by path (UTF-8 keeps Vietnamese names)."""
    frame = pd.DataFrame([asdict(r) for r in records], columns=CSV_COLUMNS)
    frame = csv_safe_frame(frame.sort_values("path", kind="stable"), ["path", "reason"])
    # errors="replace": a name that is not valid UTF-8 must not cost the whole record.
    frame.to_csv(path, index=False, encoding="utf-8", errors="replace")


def fetch(source: str, out_dir: Path, downloads_dir: Path, limit: int = 0, quiet: bool = False,
          project_root: Path | None = None) -> FetchReport:
    """Fetch `source` into `out_dir` (files/, files.csv; test/ for the teaching sets).

    `downloads_dir` caches downloads across runs; `limit` > 0 keeps the first N images by path;
    relative dir:/zip: paths are resolved against `project_root`. Raises UserError when the
    source yields no image at all, so an empty folder never counts as a finished fetch.
    """
    src = parse_source(source)
    out_dir, downloads_dir = Path(out_dir), Path(downloads_dir)
    (out_dir / "files").mkdir(parents=True, exist_ok=True)
    got = _fetch_any(src, out_dir, downloads_dir, limit, quiet, project_root)
    kill_point("fetch:files-written")
    # The record is written even when we then fail below: it explains an empty result.
    write_files_csv(got.records, out_dir / "files.csv")
    images = [r for r in got.records if r.kind == IMAGE]
    ignored = count_reasons(got.records)
    if not images:
        top = ", ".join(f"{n} {reason}" for reason, n in list(ignored.items())[:3]) or "none"
        raise UserError(f"{source} holds no image files (ignored: {top}); images must end in "
                        ".png .jpg .jpeg .gif .webp .bmp .tif or .tiff")
    return FetchReport(
        source=source, kind=src.kind, n_images=len(images),
        n_ignored=len(got.records) - len(images), ignored_by_reason=ignored,
        archive=str(got.archive) if got.archive else None,
        bytes=sum(r.bytes for r in images), n_test=got.n_test, license=got.license,
    )
