"""The score table a contestant reads, and the history of scores across runs."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.scoring.metrics import read_precision_recall

HISTORY_COLUMNS = ["time", "generate_fingerprint", "fid", "kid_mean", "precision", "recall",
                   "mifid", "n_generated", "n_reference", "weights_sha256", "run", "settings"]
SETTINGS_SEPARATOR = "; "  # between the key=value pairs of the settings column


def settings_text(changed: dict[str, Any]) -> str:
    """{"width": 0.25, "loss": "hinge"} -> "loss=hinge; width=0.25" (sorted, one line)."""
    return SETTINGS_SEPARATOR.join(f"{key}={changed[key]}" for key in sorted(changed))


def settings_change(before: str, after: str) -> str:
    """What moved between two rows' settings columns: "width 0.125 -> 0.25; +lr_g=0.0005"."""
    def parse(text: Any) -> dict[str, str]:
        if not isinstance(text, str) or not text:
            return {}
        return dict(part.split("=", 1) for part in text.split(SETTINGS_SEPARATOR) if "=" in part)

    old, new = parse(before), parse(after)
    parts = [f"{key} {old[key]} -> {new[key]}" for key in sorted(old.keys() & new.keys())
             if old[key] != new[key]]
    parts += [f"+{key}={new[key]}" for key in sorted(new.keys() - old.keys())]
    parts += [f"-{key}={old[key]}" for key in sorted(old.keys() - new.keys())]
    return SETTINGS_SEPARATOR.join(parts)


def append_history(previous: Path, out: Path, score: dict[str, Any], fingerprint: str,
                   run: str = "", settings: str = "") -> None:
    """Copy the previous history (if any) to `out` with this score appended.

    `run` is the training run folder behind the images and `settings` its train settings that
    differ from the built-in defaults (settings_text), so each row says what produced it. The
    stage output is replaced atomically, so the history is carried forward rather than
    appended in place: a killed score stage leaves the old history untouched.
    """
    row = {key: score.get(key) for key in HISTORY_COLUMNS}
    row["time"] = time.strftime("%Y-%m-%d %H:%M:%S")
    row["generate_fingerprint"] = fingerprint[:12]
    row["run"], row["settings"] = run, settings
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


def inception_score_text(score: dict[str, Any]) -> str:
    """"8.21 ± 0.12", or why there is none (the weights carry no classifier)."""
    if score.get("inception_score") is None:
        return "- (the Inception weights in use carry no classifier)"
    return f"{score['inception_score']:.2f} ± {_fmt(score.get('inception_score_std'), 2)}"


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
        ("Inception Score", inception_score_text(score)),
        ("N generated", _fmt(score.get("n_generated"), 0)),
        ("N reference", _fmt(score.get("n_reference"), 0)),
        ("weights", f"{score.get('weights_source', '?')} "
                    f"({str(score.get('weights_sha256'))[:12]})"),
    ]
    width = max(len(name) for name, _ in rows)
    return "\n".join(f"  {name:<{width}}  {value}" for name, value in rows)
