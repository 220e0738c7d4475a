"""The score table a contestant reads, and the history of scores across runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.scoring.metrics import read_precision_recall

HISTORY_COLUMNS = ["time", "generate_fingerprint", "fid", "kid_mean", "precision", "recall",
                   "mifid", "n_generated", "n_reference", "weights_sha256"]


def append_history(previous: Path, out: Path, score: dict[str, Any], fingerprint: str) -> None:
    """Copy the previous history (if any) to `out` with this score appended.

    The stage output is replaced atomically, so the history is carried forward rather than
    appended in place: a killed score stage leaves the old history untouched.
    """
    row = {key: score.get(key) for key in HISTORY_COLUMNS}
    row["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
    row["generate_fingerprint"] = fingerprint[:12]
    frame = pd.read_csv(previous) if previous.exists() else pd.DataFrame(columns=HISTORY_COLUMNS)
    frame = pd.concat([frame, pd.DataFrame([row])], ignore_index=True)
    frame.to_csv(out, index=False)


def _fmt(value: Any, digits: int) -> str:
    if value is None or value != value:  # None or NaN
        return "-"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return f"{value:,}" if isinstance(value, int) else str(value)


def precision_recall_reading(score: dict[str, Any]) -> str:
    """A score's precision and recall in words, or "-" when it lacks them (older scores)."""
    if score.get("precision") is None or score.get("recall") is None:
        return "-"
    return read_precision_recall(float(score["precision"]), float(score["recall"]))


def format_table(score: dict[str, Any]) -> str:
    """A small aligned table: FID, KID, precision, recall, MiFID, N, weights."""
    kid = _fmt(score.get("kid_mean"), 4)
    if score.get("kid_std") is not None and kid != "-":
        kid += f" ± {_fmt(score.get('kid_std'), 4)}"
    rows = [
        ("FID", _fmt(score.get("fid"), 2)),
        ("KID", kid),
        ("precision", _fmt(score.get("precision"), 3)),
        ("recall", _fmt(score.get("recall"), 3)),
        ("reading", precision_recall_reading(score)),
        ("MiFID", _fmt(score.get("mifid"), 2)),
        ("N generated", _fmt(score.get("n_generated"), 0)),
        ("N reference", _fmt(score.get("n_reference"), 0)),
        ("weights", f"{score.get('weights_source', '?')} "
                    f"({str(score.get('weights_sha256'))[:12]})"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)
