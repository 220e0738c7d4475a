"""Publishing the zip into submissions/: atomic, kept in a history, nothing else touched."""

from __future__ import annotations

import json
from pathlib import Path

from pipeline.deliver.publish import HISTORY, publish_zip


def _package(folder: Path, content: bytes, sha: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "images.zip").write_bytes(content)
    (folder / "validation.json").write_text(json.dumps({"sha256": sha, "count": 1}))
    return folder


def test_every_published_zip_is_kept_and_user_files_stay(tmp_path: Path) -> None:
    submissions = tmp_path / "submissions"
    submissions.mkdir()
    (submissions / "best.zip").write_bytes(b"mine")
    (submissions / "notes.txt").write_text("LB 41.2")
    first = _package(tmp_path / "run1", b"first zip", "a" * 64)
    assert "published submissions/images.zip" in publish_zip(
        first, submissions, "images.zip", "validation.json", keep_history=20)
    # Same output again (a cached rerun): nothing to do, no second history entry.
    assert publish_zip(first, submissions, "images.zip", "validation.json", 20) == ""
    second = _package(tmp_path / "run2", b"second zip", "b" * 64)
    publish_zip(second, submissions, "images.zip", "validation.json", 20)
    assert (submissions / "images.zip").read_bytes() == b"second zip"
    entries = sorted((submissions / HISTORY).iterdir())
    assert [e.name[-12:] for e in entries] == ["a" * 12, "b" * 12]
    assert (entries[0] / "images.zip").read_bytes() == b"first zip"
    assert json.loads((entries[0] / "validation.json").read_text())["sha256"] == "a" * 64
    assert (submissions / "best.zip").read_bytes() == b"mine"
    assert (submissions / "notes.txt").read_text() == "LB 41.2"
    # Linked, not copied: the published zip is the stage's file (no second copy on disk).
    assert (submissions / "images.zip").samefile(second / "images.zip")


def test_history_is_capped_oldest_first_and_foreign_folders_stay(tmp_path: Path) -> None:
    submissions = tmp_path / "submissions"
    (submissions / HISTORY / "my-own-folder").mkdir(parents=True)
    for i in range(4):
        package = _package(tmp_path / f"run{i}", f"zip {i}".encode(), f"{i}" * 64)
        note = publish_zip(package, submissions, "images.zip", "validation.json", keep_history=2)
    assert "2 kept" in note
    names = sorted(p.name for p in (submissions / HISTORY).iterdir())
    assert names[-1] == "my-own-folder" and [n[-12:] for n in names[:-1]] == ["2" * 12, "3" * 12]


def test_a_zip_is_remembered_per_competition_so_it_is_sent_once(tmp_path: Path) -> None:
    from pipeline.deliver.submission import already_submitted, remember_submission

    record = tmp_path / "data" / "submitted.json"
    assert not already_submitted(record, "dogs", "a" * 64)
    remember_submission(record, "dogs", "a" * 64)
    assert already_submitted(record, "dogs", "a" * 64)
    assert not already_submitted(record, "cats", "a" * 64)  # another competition
    assert not already_submitted(record, "dogs", "b" * 64)  # another zip
