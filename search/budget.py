"""A sweep's wall-time budget (`--time-budget 20m`): a Ray Tune Stopper, and what is left of it across resumes.

When the budget is spent, `stop_all` tells Ray to end the experiment: no trial starts after it and the
running ones stop at once (Ray stops them without a trial-complete event, so the recorder marks their
records "stopped" at the experiment's end; their epochs so far count, as an ASHA-pruned trial's do). Then
the sweep ends normally and the winner is exported.

The time spent is kept in `budget.json` in the sweep folder (rewritten every few seconds), so `tsweep
resume` continues with what is left, also after the driver was killed (at most `SAVE_EVERY_S` lost).
"""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

from ray.tune.stopper import Stopper

from tsweep.files import atomic_write_json

BUDGET_FILE = "budget.json"
SAVE_EVERY_S = 5.0


def spent_s(root: str | Path) -> float:
    """Seconds of the budget earlier runs of this sweep used (0 for a new sweep or an unreadable file)."""
    try:
        return float(json.loads((Path(root) / BUDGET_FILE).read_text())["spent_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def format_left(seconds: float) -> str:
    """"12:05 left", "1:02:03 left" or "time budget spent"."""
    if seconds <= 0:
        return "time budget spent"
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    return (f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes:02d}:{secs:02d}") + " left"


class TimeBudget(Stopper):
    """Args:
        budget_s: the whole sweep's budget in seconds (every run of it together).
        root: the sweep folder, where `budget.json` keeps the seconds spent.
        clock: time.time; tests pass a fake one.

    The clock starts at the first call of `stop_all` (Ray calls it at every step of its loop), or of
    `remaining`: a budget pickled with the Tuner and unpickled by `tsweep resume` starts again from the
    spent seconds on disk.
    """

    def __init__(self, budget_s: float, root: str | Path, clock: Any = time.time) -> None:
        self.budget_s = float(budget_s)
        self.root = str(root)
        self.clock = clock
        self._reset()

    def _reset(self) -> None:
        self._started: float | None = None
        self._before = 0.0  # seconds earlier runs spent
        self._saved = 0.0

    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["clock"] = None if self.clock is time.time else self.clock
        return state

    def __setstate__(self, state: dict) -> None:
        self.__dict__.update(state)
        self.clock = state["clock"] or time.time
        self._reset()  # a new run (a resume): count from the spent seconds on disk

    def start(self) -> None:
        if self._started is None:
            self._started = self._saved = self.clock()
            self._before = spent_s(self.root)

    def spent(self) -> float:
        self.start()
        return self._before + self.clock() - self._started

    def remaining(self) -> float:
        return self.budget_s - self.spent()

    def exhausted(self) -> bool:
        """Whether the budget is spent, by this copy's clock or by budget.json (a resumed driver unpickles one
        copy for Ray's loop and another for the recorder: the one that stopped the sweep wrote the file)."""
        return self.remaining() <= 0 or spent_s(self.root) >= self.budget_s

    def save(self) -> None:
        """Write the seconds spent so far to budget.json."""
        self.start()
        self._saved = self.clock()
        atomic_write_json(Path(self.root) / BUDGET_FILE, {"budget_s": self.budget_s,
                                                         "spent_s": round(min(self.spent(), self.budget_s), 2)})

    # -- Ray Tune's Stopper -----------------------------------------------------------------------------
    def __call__(self, trial_id: str, result: dict) -> bool:
        return False  # trials are not stopped one by one: `stop_all` ends them together

    def stop_all(self) -> bool:
        self.start()
        spent = self.remaining() <= 0
        if spent or self.clock() - self._saved >= SAVE_EVERY_S:
            self.save()
        return spent
