"""Resumable checkpoints: a state_dict `.pt` plus a readable JSON sidecar, written atomically.

A checkpoint is the pair `ckpt-<images>.pt` (tensors: networks, optimizers, RNG states) and
`ckpt-<images>.json` (the resolved config, images seen, loop state). Both are written to a
temporary name and renamed into place, the sidecar last: a checkpoint counts only once its
sidecar exists, so a kill at any moment leaves the previous checkpoints intact. Ordering and
resuming read the sidecar's `images_seen`, never the file name.
"""

from __future__ import annotations

import json
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch

# The atomic writers live in core.files; imported here so `ckpt.atomic_write_text` keeps working.
from pipeline.core.files import TMP_SUFFIX, atomic_write_bytes, atomic_write_text

PREFIX = "ckpt-"


def save_checkpoint(folder: Path, state: dict[str, Any], meta: dict[str, Any]) -> Path:
    """Write `state` (tensors) and `meta` (JSON-able, must hold `images_seen`); return the .pt.

    The .pt goes first and the sidecar second, so a half-written pair is never listed.
    """
    images = int(meta["images_seen"])
    stem = f"{PREFIX}{images:012d}"  # readable and sortable, but not what ordering relies on
    pt_path = folder / f"{stem}.pt"
    atomic_write_bytes(pt_path, lambda handle: torch.save(state, handle))
    atomic_write_text(folder / f"{stem}.json", json.dumps(meta, indent=2, sort_keys=True))
    return pt_path


def read_meta(pt_path: Path) -> dict[str, Any]:
    """The JSON sidecar of a checkpoint."""
    return json.loads(pt_path.with_suffix(".json").read_text(encoding="utf-8"))


def list_checkpoints(folder: Path) -> list[Path]:
    """Complete checkpoints (.pt with a readable sidecar), oldest first by images seen."""
    found: list[tuple[int, float, Path]] = []  # (images seen, sidecar time, .pt path)
    if not folder.is_dir():
        return []
    # Start from the sidecars: they are written last, so each one marks a complete pair.
    for sidecar in folder.glob(f"{PREFIX}*.json"):
        pt_path = sidecar.with_suffix(".pt")
        if not pt_path.is_file():  # pruned between our glob and now
            continue
        try:
            meta = json.loads(sidecar.read_text(encoding="utf-8"))
            found.append((int(meta["images_seen"]), sidecar.stat().st_mtime, pt_path))
        except (ValueError, KeyError, OSError):
            continue  # a damaged sidecar: the checkpoint does not count
    return [path for _, _, path in sorted(found)]


def latest_checkpoint(folder: Path) -> Path | None:
    """The newest complete checkpoint, or None when there is none."""
    found = list_checkpoints(folder)
    return found[-1] if found else None


def prune_checkpoints(folder: Path, keep: int) -> list[Path]:
    """Delete all but the `keep` newest checkpoints (and stray temporaries); return what went."""
    removed = []
    for pt_path in list_checkpoints(folder)[:-keep] if keep > 0 else []:
        for path in (pt_path.with_suffix(".json"), pt_path):  # sidecar first: never half-listed
            path.unlink(missing_ok=True)
        removed.append(pt_path)
    # Temporaries of killed writes: `.ckpt-*.<hex>.tmp` (core.files), `ckpt-*.tmp` (older runs).
    for pattern in (f".{PREFIX}*{TMP_SUFFIX}", f"{PREFIX}*{TMP_SUFFIX}"):
        for stray in folder.glob(pattern):
            stray.unlink(missing_ok=True)
    return removed


def load_checkpoint(pt_path: Path, device: torch.device | str = "cpu") -> dict[str, Any]:
    """Load the tensor state. weights_only: a checkpoint can hold data, never code."""
    return torch.load(pt_path, map_location=device, weights_only=True)


# ----------------------------------------------------------------------------------------------
# RNG states: every generator the loop draws from, so a resumed run draws the same numbers.


def capture_rng() -> dict[str, Any]:
    """torch CPU, CUDA (all devices, when present), numpy and python RNG states.

    Stored as tensors and plain Python values so that `weights_only` loading accepts them.
    """
    # numpy's legacy state: ('MT19937', 624 uint32 keys, position, Box-Muller leftovers).
    kind, keys, pos, has_gauss, cached = np.random.get_state()
    # python's: (version, 625 ints, gauss leftover or None).
    version, py_state, gauss = random.getstate()
    state: dict[str, Any] = {
        "torch": torch.get_rng_state(),
        "numpy": {
            "kind": kind,
            "keys": torch.from_numpy(np.asarray(keys, dtype=np.int64)),
            "pos": int(pos),
            "has_gauss": int(has_gauss),
            "cached": float(cached),
        },
        "python": {"version": version, "state": list(py_state), "gauss": gauss},
    }
    # Only once CUDA is in use: querying it would otherwise initialise a context for nothing.
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def restore_rng(state: dict[str, Any]) -> None:
    """Inverse of `capture_rng` (a CUDA state is restored only when CUDA is present)."""
    torch.set_rng_state(state["torch"].cpu())
    npy = state["numpy"]
    keys = npy["keys"].cpu().numpy().astype(np.uint32)
    np.random.set_state((npy["kind"], keys, npy["pos"], npy["has_gauss"], npy["cached"]))
    py = state["python"]
    random.setstate((py["version"], tuple(py["state"]), py["gauss"]))
    if "cuda" in state and torch.cuda.is_available():
        # A machine with fewer GPUs restores the states of the devices it has.
        cuda_states = [s.cpu() for s in state["cuda"]]
        torch.cuda.set_rng_state_all(cuda_states[: torch.cuda.device_count()])


def snapshot_dir(run_dir: Path, kimg: float) -> Path:
    """Where the generator evaluated at `kimg` is kept (generate.snapshot names it by kimg)."""
    return run_dir / "snapshots" / f"kimg{kimg:010.3f}"
