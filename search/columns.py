"""Leaderboard columns beyond the objective: `val_balanced_accuracy` at the objective's best epoch (when trials
report it) and the mark of the `--baseline` trial trained from scratch, which `--top` never hides.

Pure functions of trial records, like the rest of `search.leaderboard`.
"""

from __future__ import annotations

from typing import Any, Callable, Sequence

from tsweep.search.objective import Objective

BALANCED = "val_balanced_accuracy"  # shown beside the objective, at its best epoch, when trials report it


def extra_columns(trials: Sequence[dict], objective: Objective) -> list[str]:
    """Columns after best_epoch: val_balanced_accuracy (when reported and not the objective) and baseline
    ("yes" for the `--baseline` trial trained from scratch) when there is one."""
    extra = []
    if objective.metric != BALANCED and any(BALANCED in h for t in trials for h in t.get("history", [])):
        extra.append(BALANCED)
    if any(t.get("baseline") for t in trials):
        extra.append("baseline")
    return extra


def extra_values(trial: dict, columns: Sequence[str], epoch: int | None) -> dict[str, Any]:
    """The `extra_columns` cells of one trial: the balanced accuracy at the objective's best `epoch`."""
    at_best = next((h for h in trial.get("history", []) if h.get("epoch") == epoch), {})
    values = {"val_balanced_accuracy": at_best.get(BALANCED), "baseline": "yes" if trial.get("baseline") else None}
    return {c: values[c] for c in columns}


def keep_top(rows: list, top: int | None, is_baseline: Callable[[dict], Any]) -> list:
    """The first `top` rows, plus the baseline's row when it ranks below them (so the comparison stays)."""
    return rows[:top] + [r for r in rows[top:] if is_baseline(r)] if top else rows
