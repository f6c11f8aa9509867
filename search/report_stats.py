"""The numbers behind `tsweep report`: ASHA rungs, hyperparameter importance, confusion matrices, per-class
precision and recall, the most confident mistakes. Pure numpy functions of trial records and predictions.
"""

from __future__ import annotations

from typing import Any, Iterable, Mapping, Sequence

import numpy as np

from tsweep.search.leaderboard import fmt
from tsweep.search.objective import Objective, is_number


def asha_rungs(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """The epochs at which ASHA compares trials (and may stop them): grace_period * reduction_factor**k
    below max_t, as in Ray Tune's ASHAScheduler with one bracket."""
    if grace_period < 1 or reduction_factor < 2:
        return []
    rungs, t = [], grace_period
    while t < max_t:
        rungs.append(int(t))
        t *= reduction_factor
    return rungs


def best_values(trials: Iterable[dict], objective: Objective) -> list[tuple[dict, float]]:
    """(trial, its best value of the objective's metric) for every trial that reported the metric."""
    out = []
    for t in trials:
        value = objective.best_epoch(t.get("history", []))[1]
        if value is not None:
            out.append((t, value))
    return out


def epoch_points(trials: Iterable[dict], metric: str) -> list[tuple[float, float]]:
    """(when, value) of every epoch that reported `metric`, in seconds since the epoch; records written before
    epochs carried their time ("at") place each epoch by the trial's start plus its epochs' `epoch_time_s`."""
    points = []
    for t in trials:
        clock = float(t.get("started") or 0.0)
        for row in t.get("history") or []:
            clock += float(row.get("epoch_time_s") or 0.0)
            when = row.get("at", clock if t.get("started") else None)
            if is_number(row.get(metric)) and is_number(when):
                points.append((float(when), float(row[metric])))
    return sorted(points)


def best_so_far(points: Iterable[tuple[float, float]], objective: Objective,
                start: float = 0.0) -> list[tuple[float, float]]:
    """The running best of (time, value) points: one (seconds after `start`, new best) per improvement."""
    out: list[tuple[float, float]] = []
    for when, value in sorted(points):
        if not out or objective.better(value, out[-1][1]):
            out.append((when - start, value))
    return out


def is_categorical(values: Sequence[Any], kind: str | None = None) -> bool:
    """Plot and group a hyperparameter by category: a `choice` in the space, or any value not a number."""
    return kind == "choice" or not all(is_number(v) for v in values)


def category_order(values: Iterable[Any]) -> list[Any]:
    """Distinct values, numbers in numeric order first, then everything else by its text."""
    distinct = list(dict.fromkeys(values))
    numbers = sorted(v for v in distinct if is_number(v))
    return numbers + sorted((v for v in distinct if not is_number(v)), key=str)


def spearman(x: Sequence[float], y: Sequence[float]) -> float | None:
    """Spearman rank correlation (ties get their average rank); None with fewer than 3 points or a
    constant side."""
    x, y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return None

    def ranks(a: np.ndarray) -> np.ndarray:
        r = np.empty(len(a))
        r[np.argsort(a, kind="mergesort")] = np.arange(len(a), dtype=float)
        for v in np.unique(a):
            tied = a == v
            r[tied] = r[tied].mean()
        return r

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])


def value_groups(values: Sequence[Any], categorical: bool, bins: int = 3) -> list[str]:
    """A group label per value: the value itself for categories (and numbers with at most `bins` distinct
    values), else one of `bins` equal-count ranges labelled "lo..hi" by their actual members."""
    if categorical or len(set(values)) <= bins:
        return [fmt(v) for v in values]
    x = np.asarray(values, dtype=float)
    edges = np.quantile(x, np.linspace(0, 1, bins + 1))
    index = np.clip(np.searchsorted(edges[1:-1], x, side="right"), 0, bins - 1)
    labels = {}
    for b in np.unique(index):
        members = x[index == b]
        labels[b] = f"{fmt(float(members.min()))}..{fmt(float(members.max()))}"
    return [labels[b] for b in index]


def importance(trials: Sequence[dict], params: Sequence[str], objective: Objective,
               kinds: Mapping[str, str] | None = None, bins: int = 3) -> list[dict]:
    """Rank hyperparameters by how much the best metric moves with them.

    For each hyperparameter the trials that reported the metric are grouped by its value (numbers with more
    than `bins` distinct values: into `bins` equal-count ranges). `spread` is the best group's mean best
    metric minus the worst group's (in metric units); `spearman` is |Spearman| between the value and the
    best metric for numeric hyperparameters. Rows come largest spread first.

    Args:
        trials: trial records.
        params: the sampled hyperparameters.
        objective: the metric and its direction.
        kinds: hyperparameter -> distribution kind from sweep.json ("choice" groups by value); default None.
        bins: ranges for numeric hyperparameters; default 3.

    Returns:
        Dicts with param, n (trials used), groups, spread, spearman, best (label of the best group) and
        best_mean; spread, spearman and best are None when there is too little to compare.
    """
    scored = best_values(trials, objective)
    rows = []
    for p in params:
        pts = [((t.get("config") or {})[p], v) for t, v in scored if p in (t.get("config") or {})]
        row: dict[str, Any] = {"param": p, "n": len(pts), "groups": 0, "spread": None, "spearman": None,
                               "best": None, "best_mean": None}
        rows.append(row)
        if len(pts) < 2:
            continue
        values, ys = [a for a, _ in pts], np.array([b for _, b in pts], dtype=float)
        labels = value_groups(values, is_categorical(values, (kinds or {}).get(p)), bins)
        means = {g: float(ys[[lab == g for lab in labels]].mean()) for g in dict.fromkeys(labels)}
        best = min(means, key=lambda g: objective.sort_key(means[g]))
        row.update(groups=len(means), best=best, best_mean=means[best])
        if len(means) >= 2:
            row["spread"] = max(means.values()) - min(means.values())
        if all(is_number(v) for v in values):
            rho = spearman([float(v) for v in values], ys)
            row["spearman"] = None if rho is None else abs(rho)
    rows.sort(key=lambda r: (r["spread"] is None, -(r["spread"] or 0.0), r["param"]))
    return rows


def confusion_matrix(y_true: Sequence[int], y_pred: Sequence[int], num_classes: int) -> np.ndarray:
    """counts[true, predicted], int64 (num_classes, num_classes)."""
    cm = np.zeros((num_classes, num_classes), dtype=np.int64)
    np.add.at(cm, (np.asarray(y_true, dtype=int), np.asarray(y_pred, dtype=int)), 1)
    return cm


def top_confusions(cm: np.ndarray, class_names: Sequence[str], k: int = 20) -> list[dict]:
    """The `k` most frequent mistakes (true class predicted as another), most first: for confusion matrices too
    large to draw. `share` is the fraction of that true class's images that went to that prediction."""
    off = np.array(cm, dtype=np.int64)
    np.fill_diagonal(off, 0)
    flat = np.flatnonzero(off)
    order = flat[np.argsort(-off.flat[flat], kind="mergesort")][:max(0, k)]
    actual = cm.sum(axis=1)
    rows = []
    for index in order:
        i, j = divmod(int(index), cm.shape[1])
        rows.append({"true": class_names[i], "predicted": class_names[j], "images": int(off[i, j]),
                     "share of true": off[i, j] / actual[i] if actual[i] else None})
    return rows


def per_class(cm: np.ndarray, class_names: Sequence[str]) -> list[dict]:
    """Precision, recall, F1 and support per class of a confusion matrix (None where undefined: a class
    never predicted has no precision)."""
    rows = []
    for i, name in enumerate(class_names):
        predicted, actual, hit = int(cm[:, i].sum()), int(cm[i, :].sum()), int(cm[i, i])
        precision = hit / predicted if predicted else None
        recall = hit / actual if actual else None
        f1 = (2 * precision * recall / (precision + recall)
              if precision is not None and recall is not None and precision + recall > 0 else None)
        rows.append({"class": name, "precision": precision, "recall": recall, "f1": f1, "support": actual})
    return rows


def misclassified(y_true: Sequence[int], probs: np.ndarray, limit: int = 8) -> list[int]:
    """Indices of wrongly predicted rows, most confident mistakes first, at most `limit`."""
    probs = np.asarray(probs)
    y_true = np.asarray(y_true, dtype=int)
    pred = probs.argmax(axis=-1)
    wrong = np.flatnonzero(pred != y_true)
    order = np.argsort(-probs[wrong, pred[wrong]], kind="mergesort")
    return [int(i) for i in wrong[order][:max(0, limit)]]
