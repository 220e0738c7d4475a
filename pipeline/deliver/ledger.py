"""Which zip went where: every kept submission with its local score and, once sent, Kaggle's.

The package stage keeps each published zip in submissions/history/<time>-<sha12>/ with its
validation.json (which names the generated images it holds: the generate fingerprint); the
score stage's history.csv rows carry the same fingerprint, and data/submissions.jsonl has a line
per zip sent to Kaggle. `python -m pipeline submissions` (make submissions) joins the three, and
with --kaggle reads each competition's public scores back through the kaggle client.
"""

from __future__ import annotations

import datetime as dt
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd

from pipeline.core import layout
from pipeline.deliver.publish import HISTORY, history_entries
from pipeline.gan.plots import read_stats


@dataclass
class KeptSubmission:
    folder: Path  # submissions/history/<time>-<sha12>/
    zip_name: str
    sha256: str
    created: str  # from the folder name: YYYYmmdd-HHMMSS
    local: dict[str, Any] | None  # the latest history.csv row for its images (fid, kid, ...)
    sent: list[dict[str, Any]] = field(default_factory=list)  # submissions.jsonl lines
    kaggle: list[dict[str, Any]] = field(default_factory=list)  # Kaggle's rows, when read


def kept_submissions(submissions: Path, score_history: Path, log: Path) -> list[KeptSubmission]:
    """Every zip kept in submissions/history/, oldest first, with what is known about it."""
    scores = pd.read_csv(score_history) if score_history.is_file() else pd.DataFrame()
    sent = read_stats(log)  # one JSON object per line; a torn last line is dropped
    kept = []
    for folder in history_entries(submissions / HISTORY):
        try:
            record = json.loads((folder / layout.VALIDATION_JSON).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue
        fingerprint = record.get("generate_fingerprint")
        local = None
        if fingerprint and "generate_fingerprint" in scores:
            rows = scores[scores["generate_fingerprint"].astype(str) == fingerprint]
            local = rows.iloc[-1].to_dict() if len(rows) else None
        kept.append(KeptSubmission(
            folder=folder, zip_name=str(record.get("zip", "")), sha256=str(record["sha256"]),
            created=folder.name[:15], local=local,
            sent=[line for line in sent if line.get("sha256") == record["sha256"]]))
    return kept


def match_kaggle(kept: list[KeptSubmission], listed: dict[str, list[dict[str, Any]]]) -> None:
    """Attach to each sent zip the Kaggle row of the same competition, file name and message
    submitted at or after our record of it (the earliest such): Kaggle does not know our
    sha256, so time, name and message are what ties a row to a zip."""
    for item in kept:
        for line in item.sent:
            sent_at = _parse_time(line.get("time", ""))
            rows = [row for row in listed.get(line["competition"], [])
                    if row.get("file_name") == line.get("zip", item.zip_name)
                    and (row.get("description") or "") == (line.get("message") or "")
                    and (sent_at is None or _aware(row["date"]) >= sent_at
                         - dt.timedelta(minutes=5))]
            if rows:
                best = min(rows, key=lambda row: _aware(row["date"]))
                item.kaggle.append({"competition": line["competition"], **best})


def _parse_time(text: str) -> dt.datetime | None:
    try:
        return _aware(dt.datetime.strptime(text, "%Y-%m-%dT%H:%M:%S%z"))
    except ValueError:
        return None


def _aware(moment: dt.datetime) -> dt.datetime:
    """Kaggle's dates come without a zone (UTC); ours carry one."""
    return moment if moment.tzinfo else moment.replace(tzinfo=dt.timezone.utc)


def ledger_table(kept: list[KeptSubmission], root: Path, kaggle_note: str = "") -> str:
    """What `make submissions` prints: one block per kept zip, newest last."""
    if not kept:
        return ("no submissions kept yet (submissions/history/ is empty): make all publishes "
                "one")
    lines = [f"{len(kept)} kept submission(s) in {(kept[0].folder.parent).relative_to(root)}/:"]
    for item in kept:
        local = item.local
        score = (f"local FID {local['fid']:.2f} on {int(local['n_generated']):,} "
                 f"(KID {local.get('kid_mean', float('nan')):.4f})" if local is not None
                 else "not scored locally (make fid)")
        lines.append(f"  {item.created}  {item.zip_name}  sha256 {item.sha256[:12]}  {score}")
        if local is not None and isinstance(local.get("settings"), str) and local["settings"]:
            lines.append(f"      run {local.get('run', '?')}: {local['settings']}")
        for line in item.sent:
            lines.append(f"      sent to {line['competition']} at {line.get('time', '?')}"
                         f" ({line.get('message') or 'no message'})")
        for row in item.kaggle:
            public = row.get("public_score") or "pending"
            lines.append(f"      Kaggle {row['competition']}: public score {public}, "
                         f"status {row.get('status', '?')}")
    if kaggle_note:
        lines.append(kaggle_note)
    return "\n".join(lines)

