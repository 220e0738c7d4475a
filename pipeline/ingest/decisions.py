"""The decision record: one row per image that enters ingest, saying what happened to it and why.

The stages that drop images (crop, pad) write their rows to a CSV in their output folder with
pandas; `python -m pipeline status` and the report count them by reason. Kept rows name the file
the stage wrote (`output`), which links crop's rows to pad's in the consolidated ingest.csv.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from pathlib import Path

import pandas as pd

from pipeline.core.files import csv_safe_frame, csv_unsafe_frame

KEPT = "kept"
REJECTED = "rejected"
COLUMNS = ["file", "stage", "decision", "reason", "box", "score", "output"]
NAME_COLUMNS = ["file", "reason", "output"]  # may start with = + - @: escaped in the CSV


@dataclass(frozen=True)
class Decision:
    file: str  # path relative to the stage's input folder (unique per image)
    stage: str  # crop | pad
    decision: str  # KEPT or REJECTED
    reason: str = ""  # why rejected ("corrupt: ...", "duplicate of X"); "" if kept
    box: str = ""  # crop box "x0 y0 x1 y1" in source pixels, "" if none
    score: float | None = None  # detector confidence, when a detector decided
    output: str = ""  # name of the file this stage wrote for a kept image, "" if none


def kept(file: str, stage: str, box: str = "", score: float | None = None,
         output: str = "") -> Decision:
    return Decision(file, stage, KEPT, "", box, score, output)


def rejected(file: str, stage: str, reason: str, box: str = "",
             score: float | None = None) -> Decision:
    return Decision(file, stage, REJECTED, reason, box, score)


def write_decisions(rows: list[Decision], path: Path) -> None:
    """Write the rows as CSV (UTF-8, so Vietnamese file names survive)."""
    frame = pd.DataFrame([asdict(r) for r in rows], columns=COLUMNS)
    csv_safe_frame(frame, NAME_COLUMNS).to_csv(path, index=False, encoding="utf-8")


def read_decisions(path: Path) -> pd.DataFrame:
    """The rows of a decisions CSV, names as they were (spreadsheet escapes undone)."""
    frame = pd.read_csv(path, encoding="utf-8", keep_default_na=False)
    return csv_unsafe_frame(frame, NAME_COLUMNS)


def count_by_reason(rows: list[Decision]) -> dict[str, int]:
    """Rejections per reason family (the text before the first ':'), most common first."""
    counts: dict[str, int] = {}
    for r in rows:
        if r.decision == REJECTED:
            family = r.reason.split(":")[0].split(" of ")[0].strip()
            counts[family] = counts.get(family, 0) + 1
    return dict(sorted(counts.items(), key=lambda kv: -kv[1]))


def summarize(rows: list[Decision], record: str) -> tuple[str, dict[str, int]]:
    """The stage's summary line ("2,616 kept, 775 rejected (773 duplicate, ...) (see X)")."""
    n_kept = sum(r.decision == KEPT for r in rows)
    reasons = ", ".join(f"{n:,} {why}" for why, n in count_by_reason(rows).items())
    text = f"{n_kept:,} kept, {len(rows) - n_kept:,} rejected"
    text += (f" ({reasons})" if reasons else "") + f" (see {record})"
    return text, {"kept": n_kept, "rejected": len(rows) - n_kept}


def consolidate_decisions(crop_rows: pd.DataFrame, pad_rows: list[Decision]) -> pd.DataFrame:
    """One row per image that entered ingest, with its final decision.

    Images crop rejected keep crop's row; images crop kept get pad's decision, named by their
    source file (crop's `output` column maps crop's file name back to it), with pad's `output`,
    the file in data/clean, for the ones pad kept. So `file` is always a source path.
    """
    pad_frame = pd.DataFrame([asdict(r) for r in pad_rows], columns=COLUMNS)
    rejected_by_crop = crop_rows[crop_rows["decision"] == REJECTED]
    kept_by_crop = crop_rows[crop_rows["output"] != ""]
    origin = dict(zip(kept_by_crop["output"], kept_by_crop["file"]))
    pad_frame["file"] = [origin.get(name, name) for name in pad_frame["file"]]
    return pd.concat([rejected_by_crop[COLUMNS], pad_frame], ignore_index=True)
