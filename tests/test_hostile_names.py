"""File names a careful user might meet: formulas, undecodable bytes, dotfiles and git folders.

Real files in real folders; the fetch code path and the CSV writers the stages use.
"""

from __future__ import annotations

import os
from pathlib import Path

import pandas as pd
from PIL import Image

from pipeline.core.files import from_spreadsheet_safe, spreadsheet_safe
from pipeline.ingest.archive import NOT_UTF8
from pipeline.ingest.decisions import kept, read_decisions, rejected, write_decisions
from pipeline.ingest.raw import list_fetched_images, source_fingerprint
from pipeline.ingest.sources import fetch


def test_spreadsheet_escapes_round_trip() -> None:
    for text in ("=HYPERLINK(\"x\")", "+1", "-2.png", "@SUM", "'quoted", "plain.png", ""):
        escaped = spreadsheet_safe(text)
        assert not escaped.startswith(("=", "+", "-", "@")) and from_spreadsheet_safe(
            escaped) == text


def test_formula_names_are_escaped_in_csvs_and_read_back_exactly(tmp_path: Path) -> None:
    rows = [kept("=cmd|' /C calc'!A0.png", "crop", output="=cmd.png"),
            rejected("+evil.png", "crop", "none: no clock")]
    write_decisions(rows, tmp_path / "decisions.csv")
    raw = pd.read_csv(tmp_path / "decisions.csv", keep_default_na=False)
    assert all(not str(v).startswith(("=", "+", "-", "@")) for v in raw["file"])
    back = read_decisions(tmp_path / "decisions.csv")
    assert list(back["file"]) == ["=cmd|' /C calc'!A0.png", "+evil.png"]
    assert list(back["output"]) == ["=cmd.png", ""]


def _source(tmp_path: Path) -> Path:
    source = tmp_path / "photos"
    (source / ".git" / "objects").mkdir(parents=True)
    for name in ("a.png", "=b.png"):
        Image.new("RGB", (24, 24), "red").save(source / name)
    return source


def test_undecodable_and_formula_names_are_listed_never_crash(tmp_path: Path) -> None:
    source = _source(tmp_path)
    bad = os.fsencode(source) + b"/caf\xe9.png"  # Latin-1 bytes: not UTF-8
    with open(bad, "wb") as handle:
        Image.new("RGB", (24, 24), "blue").save(handle, format="PNG")
    out = tmp_path / "raw"
    report = fetch(f"dir:{source}", out, tmp_path / "downloads", quiet=True)
    assert report.n_images == 2
    table = pd.read_csv(out / "files.csv", keep_default_na=False)
    reasons = dict(zip(table["path"], table["reason"]))
    assert reasons["caf\\xe9.png"] == NOT_UTF8
    assert sorted(p.name for p in list_fetched_images(out)) == ["=b.png", "a.png"]
    assert source_fingerprint(f"dir:{source}", tmp_path)  # no UnicodeEncodeError


def test_dotfiles_and_git_do_not_change_the_fingerprint(tmp_path: Path) -> None:
    source = _source(tmp_path)
    before = source_fingerprint(f"dir:{source}", tmp_path)
    (source / ".DS_Store").write_bytes(b"\0" * 10)
    (source / ".git" / "objects" / "ab12").write_bytes(b"commit")
    (source / "notes.txt").write_text("not an image")
    assert source_fingerprint(f"dir:{source}", tmp_path) == before
    Image.new("RGB", (24, 24), "green").save(source / "c.png")
    assert source_fingerprint(f"dir:{source}", tmp_path) != before
