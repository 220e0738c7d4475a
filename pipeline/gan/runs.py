"""The training runs of a project, side by side: what each changed, how far it got, its score.

Every distinct set of train settings trains in its own folder, data/runs/<key>/ (bookkeeping
knobs such as kimg or minutes continue the same folder). A contestant tries a dozen of them in a
week; `python -m pipeline runs` (make runs) lists them with the settings that differ from the
project's params.yaml, the kimg and minutes reached, the best evaluation and where the grids are.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from pipeline.core import layout
from pipeline.core.config import BOOKKEEPING_KEYS, TrainConfig
from pipeline.gan.plots import read_stats


@dataclass(frozen=True)
class RunSummary:
    folder: Path
    config: dict[str, Any]  # the resolved train settings the run started with
    kimg: float  # how far it trained (the last tick)
    minutes: float  # wall time of its last call (a resumed run: since the resume)
    best: dict[str, Any] | None  # the lowest-KID evaluation: kimg, kid, fid, n
    grid: Path | None  # the newest sample grid
    started: float  # modification time of training_options.json (sorts the list)


def run_folder(train_dir: Path, root: Path) -> Path | None:
    """The run folder the train stage's output points at (data/train/run_dir.txt, relative to
    the project root), or None when there is no such pointer."""
    try:
        return root / (train_dir / layout.RUN_DIR_TXT).read_text(encoding="utf-8").strip()
    except OSError:
        return None


def read_run(folder: Path) -> RunSummary | None:
    """One run folder's summary, or None when it is not one (no training_options.json)."""
    try:
        options = json.loads((folder / layout.TRAINING_OPTIONS_JSON).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    rows = read_stats(folder / layout.STATS_JSONL)
    evals = read_stats(folder / layout.EVAL_JSONL)
    grids = sorted(folder.glob("fakes*.png"))
    return RunSummary(
        folder=folder, config=dict(options.get("config", {})),
        kimg=float(rows[-1]["kimg"]) if rows else 0.0,
        minutes=float(rows[-1].get("seconds", 0.0)) / 60 if rows else 0.0,
        best=min(evals, key=lambda row: row["kid"]) if evals else None,
        grid=grids[-1] if grids else None,
        started=(folder / layout.TRAINING_OPTIONS_JSON).stat().st_mtime)


def list_runs(runs_dir: Path) -> list[RunSummary]:
    """Every run under data/runs/, oldest first."""
    if not runs_dir.is_dir():
        return []
    found = (read_run(folder) for folder in runs_dir.iterdir() if folder.is_dir())
    return sorted((run for run in found if run is not None), key=lambda run: run.started)


def changed_settings(config: dict[str, Any], baseline: TrainConfig) -> dict[str, Any]:
    """The train settings of `config` that differ from `baseline` (bookkeeping knobs aside:
    they do not change what is trained)."""
    base = asdict(baseline)
    return {key: value for key, value in config.items()
            if key in base and key not in BOOKKEEPING_KEYS and value != base[key]}


def format_setting(key: str, value: Any) -> str:
    return f"{key}={json.dumps(value) if isinstance(value, str) and not value else value}"


def runs_table(runs: list[RunSummary], baseline: TrainConfig, root: Path,
               current: Path | None = None) -> str:
    """The list `make runs` prints: one block per run, the current one (data/train) starred."""
    if not runs:
        return "no training runs yet (data/runs/ is empty): make train"
    lines = [f"{len(runs)} training run(s) in {runs[0].folder.parent.relative_to(root)}/; "
             "settings shown where they differ from params.yaml's train section:"]
    for run in runs:
        star = "*" if current is not None and run.folder.resolve() == current.resolve() else " "
        score = (f"best at {run.best['kimg']:g} kimg: FID {run.best['fid']:.1f}, KID "
                 f"{run.best['kid']:.4f} (n={run.best.get('n', '?')})" if run.best
                 else "not evaluated (train.eval_kimg 0)")
        lines.append(f"{star} {run.folder.name}  {run.config.get('model', '?')}, "
                     f"{run.kimg:g} kimg in {run.minutes:.1f} min, {score}")
        changed = changed_settings(run.config, baseline)
        lines.append("    changed: " + (", ".join(format_setting(k, v) for k, v in
                                                changed.items()) or "nothing (params.yaml as is)"))
        if run.grid is not None:
            lines.append(f"    grids: {run.grid.relative_to(root)}")
    if current is not None:
        lines.append("* the run data/train/ holds (what generate uses)")
    return "\n".join(lines)
