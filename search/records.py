"""A sweep on disk: `sweep.json` (what was asked) and `trials/<id>.json` (one record per trial).

The driver rewrites a trial's record after every event, atomically (temp file + rename,
``tsweep.files.atomic_write_json``), so a reader in another terminal (`tsweep leaderboard` during a sweep)
never sees half a file and needs no Ray.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

from tsweep.errors import SweepConfigError
from tsweep.files import atomic_write_json, is_uri, without_credentials

SWEEP_FILE = "sweep.json"
TRIALS_DIR = "trials"
EXPORT_DIR = "export"
STATUSES = ("running", "completed", "pruned", "stopped", "failed", "pending")  # stopped: by the time budget


def sweep_dir(path: str | Path) -> Path:
    """Check that `path` holds a sweep (a sweep.json), naming the fix when it does not."""
    root = Path(path)
    if not (root / SWEEP_FILE).is_file():
        hint = ""
        if root.is_dir():
            inner = sorted(p.parent.name for p in root.glob(f"*/{SWEEP_FILE}"))
            if inner:
                hint = f" (sweeps inside it: {', '.join(inner[:5])})"
        raise SweepConfigError(f"{root} is not a sweep folder: it has no {SWEEP_FILE}{hint}. "
                               f"Pass results/<name> as written by `tsweep run`.")
    return root


def read_sweep(root: str | Path) -> dict:
    return json.loads((sweep_dir(root) / SWEEP_FILE).read_text())


def write_sweep(root: Path, info: dict) -> None:
    """Write sweep.json; credentials inside URIs (--storage, --data) are never stored (`without_credentials`):
    Ray and the trials got the URIs in full, and a resume reads them from the environment."""
    atomic_write_json(root / SWEEP_FILE, _stored(info))


def _stored(value: Any) -> Any:
    """`value` with every URI in it (at any depth) stripped of credentials."""
    if isinstance(value, dict):
        return {k: _stored(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_stored(v) for v in value]
    return without_credentials(value) if isinstance(value, str) and is_uri(value) else value


def trial_path(root: Path, trial_id: str) -> Path:
    return root / TRIALS_DIR / f"{trial_id}.json"


def read_trials(root: str | Path) -> list[dict]:
    """Every readable trial record of a sweep; unreadable ones are skipped with a warning."""
    records = []
    for path in sorted((Path(root) / TRIALS_DIR).glob("*.json")):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError) as e:
            warnings.warn(f"skipping unreadable trial record {path}: {e}", stacklevel=2)
    return records


def final_status(epochs_run: int, budget: int, failed: bool) -> str:
    """The status of a trial that stopped: failed, completed (ran its whole budget) or pruned by ASHA."""
    if failed:
        return "failed"
    return "completed" if epochs_run >= budget else "pruned"
