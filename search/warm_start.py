"""Warm starts (`--warm-start results/old [results/older ...]`): what earlier sweeps tell a new one.

Every finished trial (completed, pruned or stopped by a budget) of an earlier sweep is placed in the new
space: keys it lacks take the new space's value (a fixed key's value; for a sampled key the TrialConfig
default the old trial ran with, when the new range holds it, else the range's middle, with a notice), and
keys the new space leaves out must have the TrialConfig default the new trials will use. A trial whose
values lie outside the new space is left out with a notice; a sweep with none inside, with another metric or
direction, or with keys this tsweep does not know, is a SweepConfigError before any trial runs.

The result seeds the searcher (`searchers.make_searcher`): TPE learns from every placed trial (its config and
best metric), and each sweep's best config is tried first (random search too). Pure functions of the
sweeps' records: no Ray.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Callable, Sequence

from tsweep.errors import SweepConfigError
from tsweep.search.objective import Objective
from tsweep.spaces.config import FIELDS, TrialConfig
from tsweep.spaces.space import Dist, Space

USABLE = ("completed", "pruned", "stopped")  # failed and running trials say nothing reliable


@dataclass(frozen=True)
class WarmStart:
    """Attributes:
        history: (config of the sampled keys, best metric value) of every placed trial.
        first: the best config of each earlier sweep (sampled keys), tried before anything else.
        sources: the sweeps it came from.
        notes: one line per trial left out or key filled in.
    """

    history: list[tuple[dict, float]] = field(default_factory=list)
    first: list[dict] = field(default_factory=list)
    sources: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def contains(d: Dist, value: Any) -> bool:
    """Whether a distribution can produce `value` (float bounds with a relative tolerance of 1e-9)."""
    if d.kind in ("fixed", "choice"):
        return any(_same(value, v) for v in d.values)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return False
    lo, hi = d.values
    if d.kind == "randint" and float(value) != int(value):
        return False
    slack = 1e-9 * max(abs(lo), abs(hi))
    return lo - slack <= value <= hi + slack


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)
    return a == b


def middle(d: Dist) -> Any:
    """A value standing for a whole distribution: the first choice or the (geometric) middle of the range."""
    if d.kind in ("fixed", "choice"):
        return d.values[0]
    lo, hi = d.values
    if d.kind == "loguniform":
        return math.sqrt(lo * hi)
    return (lo + hi) // 2 if d.kind == "randint" else (lo + hi) / 2


def full_space(space: Space) -> dict[str, Dist]:
    """Every TrialConfig key with what the new trials get: the space's distribution, else the default."""
    return {key: space.params.get(key, Dist("fixed", (getattr(TrialConfig, key),))) for key in FIELDS}


def place(config: dict, space: Space, source: str) -> tuple[dict | None, str, list[str]]:
    """An old trial's config in the new space.

    Returns (the sampled keys' values or None when it lies outside, why it lies outside, the keys filled in).

    Raises:
        SweepConfigError: a config key this tsweep does not know.
    """
    unknown = sorted(set(config) - set(FIELDS))
    if unknown:
        raise SweepConfigError(f"--warm-start {source}: its trials have keys this tsweep does not know "
                               f"({', '.join(unknown)}): warm-start from sweeps of this tsweep's keys")
    filled = []
    for key, d in full_space(space).items():
        if key not in config:
            continue  # filled in below for sampled keys; a fixed or default key is the new trials' value
        if not contains(d, config[key]):
            if key not in space.params:
                what = f"it does not set `{key}`: its trials get the default {d.values[0]!r}"
            else:
                what = f"fixed at {d.values[0]!r}" if d.kind == "fixed" else f"{d.kind} {list(d.values)}"
            return None, f"`{key}` {config[key]!r} is outside this sweep's space ({what})", []
    placed = {}
    for key, d in space.sampled.items():
        if key in config:  # inside the range up to its tolerance: clipped, so Optuna takes it
            placed[key] = min(max(config[key], d.values[0]), d.values[1]) if d.kind != "choice" else config[key]
        else:
            default = getattr(TrialConfig, key)
            placed[key] = default if contains(d, default) else middle(d)
            filled.append(key)
    return placed, "", filled


def from_sweep(info: dict, trials: Sequence[dict], space: Space, objective: Objective,
               source: str) -> WarmStart:
    """What one earlier sweep (its sweep.json and trial records) tells a sweep over `space`.

    Raises:
        SweepConfigError: another metric or direction, unknown keys, or no finished trial inside the space.
    """
    metric, mode = info.get("metric"), info.get("mode")
    if (metric, mode) != (objective.metric, objective.mode):
        raise SweepConfigError(f"--warm-start {source}: it optimised {metric} ({mode}), this sweep optimises "
                               f"{objective.metric} ({objective.mode}): warm starts need the same --metric and "
                               "--mode")
    history, notes, outside, filled_keys = [], [], [], set()
    best: tuple[float, dict] | None = None
    finished = [t for t in trials if t.get("status") in USABLE]
    for t in finished:
        value = objective.best_epoch(t.get("history") or [])[1]
        if value is None:
            continue
        placed, why, filled = place(t.get("config") or {}, space, source)
        if placed is None:
            outside.append(f"trial {t.get('trial_id')}: {why}")
            continue
        filled_keys.update(filled)
        history.append((placed, value))
        if best is None or objective.better(value, best[0]):
            best = (value, placed)
    if best is None:
        reason = outside[0] if outside else "it has no finished trial with a value of " + objective.metric
        raise SweepConfigError(f"--warm-start {source}: no trial of it fits this sweep ({reason}); warm-start "
                               "from a sweep over a compatible space, or drop it")
    if outside:
        notes.append(f"warm start {source}: left out {len(outside)} of {len(finished)} trials outside this "
                     f"space, e.g. {outside[0]}")
    if filled_keys:
        notes.append(f"warm start {source}: its trials did not set {', '.join(sorted(filled_keys))}; they take "
                     "the default (or the middle of this space's range)")
    return WarmStart(history=history, first=[best[1]], sources=[source], notes=notes)


def load_warm_start(paths: Sequence[str], space: Space, objective: Objective,
                    progress: Callable[[str], None] = print) -> WarmStart | None:
    """Read the earlier sweeps (local folders or URIs) and merge what they tell; None for no --warm-start.

    Raises:
        SweepConfigError: a path that is not a sweep, or an incompatible sweep (`from_sweep`).
    """
    if not paths:
        return None
    from tsweep.search.reader import read_snapshot

    merged = WarmStart()
    for path in paths:
        try:
            snap = read_snapshot(path)
        except SweepConfigError as e:
            raise SweepConfigError(f"--warm-start {path}: {e}") from None
        if not snap.info:
            raise SweepConfigError(f"--warm-start {path}: its sweep.json could not be read "
                                   f"({'; '.join(snap.problems)})")
        part = from_sweep(snap.info, snap.trials, space, objective, str(path))
        merged.history.extend(part.history)
        merged.first.extend(c for c in part.first if c not in merged.first)
        merged.sources.extend(part.sources)
        merged.notes.extend(part.notes)
    for note in merged.notes:
        progress(note)
    progress(f"warm start: {len(merged.history)} finished trials of {len(merged.sources)} earlier sweep(s); "
             f"their {len(merged.first)} best config(s) run first")
    return merged
