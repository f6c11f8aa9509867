"""The sweep's objective: one metric and its direction. Every min/max decision in tsweep goes through here."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable

from tsweep.errors import SweepConfigError

MODES = ("max", "min")


def default_mode(metric: str) -> str:
    """Losses and errors are minimised, everything else (accuracy, AUC, ...) maximised."""
    return "min" if "loss" in metric or "error" in metric else "max"


@dataclass(frozen=True)
class Objective:
    """Args:
        metric: a reported metric, default "val_accuracy".
        mode: "max" or "min"; default chosen from the metric's name by `default_mode`.
    """

    metric: str = "val_accuracy"
    mode: str = ""

    def __post_init__(self) -> None:
        if not self.mode:
            object.__setattr__(self, "mode", default_mode(self.metric))
        if self.mode not in MODES:
            raise SweepConfigError(f"`--mode` must be max or min, got {self.mode!r}")

    def better(self, a: Any, b: Any) -> bool:
        """True when metric value `a` beats `b` (a missing or NaN value never beats anything)."""
        return self.sort_key(a) < self.sort_key(b)

    def sort_key(self, value: Any) -> float:
        """Ascending sort key: best first, missing/NaN last."""
        if not is_number(value):
            return math.inf
        return -float(value) if self.mode == "max" else float(value)

    def best_epoch(self, history: Iterable[dict]) -> tuple[int | None, float | None]:
        """(epoch, value) of the best value of the metric over a trial's per-epoch history."""
        best: tuple[int | None, float | None] = (None, None)
        for row in history:
            value = row.get(self.metric)
            if is_number(value) and (best[1] is None or self.better(value, best[1])):
                best = (row.get("epoch"), float(value))
        return best


def is_number(value: Any, finite: bool = True) -> bool:
    """True for an int or a float (not a bool); with `finite` (the default) only a finite one, no NaN or inf."""
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and (not finite or math.isfinite(value)))
