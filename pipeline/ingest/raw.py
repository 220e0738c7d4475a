"""Reading fetch's output (data/raw/) and fingerprinting local sources.

Kept apart from `sources` (which downloads and extracts) so the crop stage and the runner can use
it without importing the download machinery.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import pandas as pd

from pipeline.core.files import csv_unsafe_frame
from pipeline.ingest.archive import ignore_reason, sha256_file


def list_fetched_images(raw_dir: Path) -> list[Path]:
    """The image files fetch kept, sorted by relative path (files.csv kind == image)."""
    table = pd.read_csv(raw_dir / "files.csv", encoding="utf-8", keep_default_na=False)
    table = csv_unsafe_frame(table, ["path"])  # names as they were (spreadsheet escapes undone)
    paths = sorted(table.loc[table["kind"] == "image", "path"].astype(str))
    return [raw_dir / "files" / p for p in paths]


def source_fingerprint(source: str, project_root: Path) -> str:
    """What a local source holds, so adding a file to a `dir:` folder refetches it.

    Folders are fingerprinted by their listing (relative path and size, not times: a fresh copy
    of the same data stays cached), zips by their bytes. Remote sources return "": their
    identity is the source string itself, already part of the params.
    """
    kind, _, location = source.partition(":")
    if kind not in ("dir", "zip"):
        return ""
    path = Path(location).expanduser()
    path = path if path.is_absolute() else project_root / path
    digest = hashlib.sha256()
    if kind == "dir" and path.is_dir():
        # The pipeline's own outputs may sit inside a `dir:.` source: fetch skips them, so must we.
        own = (project_root / "data").resolve(), (project_root / "submissions").resolve()
        # Image files only, as fetch copies them: a .DS_Store, a git commit or a .venv inside
        # the folder changes nothing that is fetched, so it must not refetch (and retrain).
        files = (p for p in path.rglob("*") if p.is_file()
                 and not ignore_reason(p.relative_to(path).as_posix())
                 and not any(p.resolve().is_relative_to(folder) for folder in own))
        for file in sorted(files):
            digest.update(f"{file.relative_to(path).as_posix()}\0{file.stat().st_size}\n".encode())
    elif kind == "zip" and path.is_file():
        return sha256_file(path)
    else:
        return "missing"
    return digest.hexdigest()
