"""The submission zip: the generated PNGs, stored flat, checked the way a competition checks them.

PNGs are already deflate-compressed, so entries are stored (ZIP_STORED): deflating them again
costs time and saves almost nothing. Entries carry a fixed timestamp, so the same images always
give the same bytes and the same sha256. The zip is written under a temporary name in its own
folder and renamed into place only once it passed validation: a zip with the final name is valid.
"""

from __future__ import annotations

import contextlib
import io
import json
import time
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from tqdm import tqdm

from pipeline.core import kaggle
from pipeline.core.errors import UserError
from pipeline.core.faults import kill_point
from pipeline.core.files import (
    atomic_save,
    atomic_write_text,
    process_pool_context,
    resolve_workers,
    sha256_file,
)

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ZIP_EPOCH = (1980, 1, 1, 0, 0, 0)  # the earliest zip time: entries carry no build time
SHOWN_NAMES = 3  # example names quoted per kind of problem
PART_SUFFIX = ".part"  # the zip being built is `.NAME.<hex>.part` beside the final one
PARALLEL_FROM = 500  # zips with fewer entries are validated in the calling process
SLICES_PER_WORKER = 4  # validation tasks per process: progress steps vs reopening the zip


@dataclass(frozen=True)
class ZipReport:
    path: Path  # the submission zip
    count: int  # PNG entries in it
    bytes: int  # size of the zip file
    sha256: str  # hex digest of the zip file, to record what was submitted
    problems: tuple[str, ...] = ()  # validation problems (empty: write_zip raises otherwise)


# ----------------------------------------------------------------------------------------------
# Writing


def first_pngs(png_dir: Path, expected_count: int) -> list[Path]:
    """The first `expected_count` PNGs of `png_dir` by name, hidden files excluded."""
    pngs = sorted(p for p in png_dir.glob("*.png") if not p.name.startswith("."))
    if len(pngs) < expected_count:
        raise UserError(f"{png_dir} holds {len(pngs)} PNGs but the zip needs {expected_count}; "
                        "rerun generate with a count of at least that")
    return pngs[:expected_count]


def write_zip(png_dir: Path, zip_path: Path, expected_count: int, size: int, mode: str = "RGB",
              quiet: bool = False, workers: int = 0) -> ZipReport:
    """Zip the first `expected_count` PNGs (by name) flat and stored, validate, then publish.

    Raises UserError, leaving no zip behind, when the PNGs are too few or fail validation
    (`size` in pixels, `mode` a PIL mode: "RGB" or "L"). `workers`: validation processes
    (0 = one per CPU core).
    """
    pngs = first_pngs(png_dir, expected_count)

    def build(tmp: Path) -> None:
        with zipfile.ZipFile(tmp, "w", compression=zipfile.ZIP_STORED) as archive:
            for png in tqdm(pngs, desc="zip", unit="png", disable=quiet):
                entry = zipfile.ZipInfo(png.name, date_time=ZIP_EPOCH)
                entry.external_attr = 0o644 << 16  # a plain readable file once extracted
                archive.writestr(entry, png.read_bytes(), compress_type=zipfile.ZIP_STORED)
        problems = validate_zip(tmp, expected_count, size, mode, quiet, workers)
        if problems:
            raise UserError(f"the zip built from {png_dir} is not valid: {'; '.join(problems)}")

    # A failure or a kill midway leaves no partial zip: only a valid zip gets the final name.
    atomic_save(zip_path, build, suffix=PART_SUFFIX)
    return ZipReport(zip_path, len(pngs), zip_path.stat().st_size, sha256_file(zip_path))


# ----------------------------------------------------------------------------------------------
# Validation


def _check_entry(archive: zipfile.ZipFile, entry: zipfile.ZipInfo, size: int,
                 mode: str) -> list[str]:
    """Kinds of problem with one entry (short phrases, grouped by the caller)."""
    name = entry.filename
    if name.startswith("__MACOSX") or name.replace("\\", "/").rsplit("/", 1)[-1].startswith("."):
        return ["hidden or system file (e.g. .DS_Store, __MACOSX)"]
    if entry.is_dir() or "/" in name or "\\" in name:
        return ["folder or path in the name (entries must be flat)"]
    kinds = []
    if not name.lower().endswith(".png"):
        kinds.append("not named .png")
    if entry.compress_type != zipfile.ZIP_STORED:
        kinds.append("compressed entry (PNGs must be stored, not deflated)")
    try:
        data = archive.read(entry)  # also checks the CRC
    except (zipfile.BadZipFile, OSError, RuntimeError) as error:
        return kinds + [f"unreadable entry ({error})"]
    if not data.startswith(PNG_SIGNATURE):
        return kinds + ["not a PNG file (wrong signature bytes)"]
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()  # decode every pixel: catches truncated and corrupt data
            if image.size != (size, size):
                kinds.append(f"wrong size (expected {size}x{size})")
            if image.mode != mode:
                kinds.append(f"wrong mode (expected {mode})")
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as error:
        kinds.append(f"PNG does not decode ({error})")
    return kinds


def _check_slice(zip_path: Path, start: int, stop: int, size: int,
                 mode: str) -> list[tuple[str, list[str]]]:
    """Worker task: (name, kinds of problem) for entries start..stop-1 of the zip, in order.

    Each task opens the zip itself, so tasks share nothing and can run in any process.
    """
    with zipfile.ZipFile(zip_path) as archive:
        entries = archive.infolist()[start:stop]
        return [(e.filename, _check_entry(archive, e, size, mode)) for e in entries]


def _check_task(task: tuple[Path, int, int, int, str]) -> list[tuple[str, list[str]]]:
    return _check_slice(*task)


def _checked_entries(zip_path: Path, total: int, size: int, mode: str, workers: int,
                     quiet: bool) -> list[tuple[str, list[str]]]:
    """Check every entry, in slices over `workers` processes (0 = one per core), in order.

    Decoding every PNG is most of the cost (about 0.4 ms per 128x128 image), so it is spread
    over the cores; small zips are checked in this process. Each slice reopens the zip (~0.1 s
    for 10,000 entries), so there are only a few slices per worker.
    """
    workers = 1 if total < PARALLEL_FROM else resolve_workers(workers)
    step = max(1, -(-total // (workers * SLICES_PER_WORKER)))  # entries per slice, rounded up
    tasks = [(zip_path, k, min(k + step, total), size, mode) for k in range(0, total, step)]
    results: list[tuple[str, list[str]]] = []
    with tqdm(total=total, desc="validate", unit="png", disable=quiet) as bar, \
            contextlib.ExitStack() as stack:
        if workers > 1:
            pool = stack.enter_context(process_pool_context().Pool(workers))
            parts = pool.imap(_check_task, tasks)  # results in entry order
        else:
            parts = map(_check_task, tasks)
        for part in parts:
            results += part
            bar.update(len(part))
    return results


def validate_zip(zip_path: Path, expected_count: int, size: int, mode: str,
                 quiet: bool = True, workers: int = 0) -> list[str]:
    """Problems that would get the zip rejected; an empty list means it is valid.

    Checks: exactly `expected_count` entries, unique flat names, no hidden or system files,
    every entry stored and a real PNG (signature and full decode) of size x size in `mode`.
    One line per kind of problem, with how many entries have it and a few names. `workers`
    decoding processes (0 = one per CPU core).
    """
    try:
        with zipfile.ZipFile(zip_path) as archive:
            total = len(archive.infolist())
    except (zipfile.BadZipFile, OSError) as error:
        return [f"{zip_path} is not a readable zip file ({error})"]
    found: dict[str, list[str]] = {}  # kind of problem -> entry names that have it
    seen: set[str] = set()
    for name, kinds in _checked_entries(zip_path, total, size, mode, workers, quiet):
        kill_point("package:validating")
        if name in seen:
            kinds.append("duplicate name")
        seen.add(name)
        for kind in kinds:
            found.setdefault(kind, []).append(name)
    problems = []
    if total != expected_count:
        problems.append(f"{total} entries, expected exactly {expected_count}")
    for kind, names in found.items():
        shown = ", ".join(names[:SHOWN_NAMES]) + (", ..." if len(names) > SHOWN_NAMES else "")
        problems.append(f"{kind}: {len(names)} {'entry' if len(names) == 1 else 'entries'} "
                        f"({shown})")
    return problems


# ----------------------------------------------------------------------------------------------
# Submitting


def submit_to_kaggle(zip_path: Path, competition: str, message: str) -> str:
    """Upload the zip as a submission to `competition`; returns Kaggle's reply message.

    Credentials and errors go through pipeline.core.kaggle, so fetch and submit say the same
    thing: missing credentials, no network, unaccepted rules (403) or a wrong name (404) each
    raise one UserError sentence.
    """
    api = kaggle._new_api()  # UserError when there are no credentials or no network
    rules = f"https://www.kaggle.com/competitions/{competition}/rules"
    try:
        with contextlib.redirect_stdout(io.StringIO()):  # the client prints upload progress
            reply = api.competition_submit(str(zip_path), message, competition, quiet=True)
    except Exception as error:  # requests errors and the client's own
        raise kaggle._explain(error, f"submission to {competition}", rules,
                              "connect to the internet and run the package stage again") from None
    text = str(reply.message or "")
    if text == api.COMPETITION_SUBMIT_UPLOAD_FAILED_MESSAGE:
        raise UserError(f"the upload of {zip_path} to Kaggle did not complete; try again")
    return text


# ----------------------------------------------------------------------------------------------
# What was sent, so a rerun never submits the same zip twice

SUBMITTED_JSON = "submitted.json"  # data/submitted.json: competition -> zip sha256s sent


def _read_submitted(record: Path) -> dict[str, list[str]]:
    try:
        return json.loads(record.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}


def already_submitted(record: Path, competition: str, sha256: str) -> bool:
    """True when this exact zip (by content) was sent to `competition` before."""
    return sha256 in _read_submitted(record).get(competition, [])


def remember_submission(record: Path, competition: str, sha256: str, zip_name: str = "",
                        message: str = "") -> None:
    """Add the zip to the record (atomically), after Kaggle accepted it, and a line to the
    submission log beside it (data/submissions.jsonl: when, where, which zip, which message)."""
    sent = _read_submitted(record)
    sent.setdefault(competition, []).append(sha256)
    record.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(record, json.dumps(sent, indent=2, sort_keys=True))
    line = {"time": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "competition": competition,
            "sha256": sha256, "zip": zip_name, "message": message}
    with (record.parent / SUBMISSION_LOG).open("a", encoding="utf-8") as log:
        log.write(json.dumps(line) + "\n")


SUBMISSION_LOG = "submissions.jsonl"  # data/submissions.jsonl: one line per zip sent


def kaggle_submissions(competition: str) -> list[dict[str, Any]]:
    """The competition's submissions as Kaggle lists them (newest first): file name, date,
    description, status, public and private score (None until Kaggle has one). UserError
    offline or without access."""
    api = kaggle._new_api()
    try:
        listed = api.competition_submissions(competition) or []
    except Exception as error:  # requests errors and the client's own
        raise kaggle._explain(error, f"reading the submissions of {competition}",
                              f"https://www.kaggle.com/competitions/{competition}",
                              "connect to the internet for Kaggle's scores") from None
    return [{"file_name": s.file_name, "date": s.date, "description": s.description,
             "status": getattr(s.status, "name", str(s.status)),
             "public_score": s.public_score or None, "private_score": s.private_score or None}
            for s in listed if s is not None]
