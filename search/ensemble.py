"""Greedy ensemble selection with replacement (Caruana et al., "Ensemble selection from libraries of models",
ICML 2004), as a pure function of prediction arrays, and the checks of `--ensemble` and `--tta`.

Each candidate is one trial's best checkpoint, given as its probabilities on the validation images. Starting
from the empty ensemble, every step adds the candidate (any one, again or not: with replacement) whose addition
gives the best score of the averaged probabilities; after K steps the ensemble kept is the best of the K
prefixes, the smallest one among equals. A member picked twice weighs twice. Ties between candidates at a step
go to the lower log loss, then to the earlier candidate (the better-ranked trial), so a selection never depends
on dict or float-summation order.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np

from tsweep.errors import SweepConfigError

TTA_MODES = ("none", "flip")
EPSILON = 1e-7  # probabilities are clipped to [EPSILON, 1 - EPSILON] in the log loss, as Keras does


def check_choices(ensemble: int, tta: str) -> None:
    """Validate `--ensemble` and `--tta` before any trial or training.

    Raises:
        SweepConfigError: ensemble is neither 0 (off) nor at least 2, or tta is not a known mode.
    """
    if ensemble != 0 and not 2 <= ensemble <= 64:
        raise SweepConfigError(f"`--ensemble` must be 0 (off) or in [2, 64], got {ensemble}")
    if tta not in TTA_MODES:
        raise SweepConfigError(f"`--tta` must be one of {', '.join(TTA_MODES)}, got {tta!r}")


def as_probabilities(outputs: np.ndarray) -> np.ndarray:
    """(N, C) class probabilities from a model's outputs (one sigmoid unit means two classes)."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if outputs.ndim == 2 and outputs.shape[1] == 1:
        return np.concatenate([1.0 - outputs, outputs], axis=1)
    return outputs


def accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    return float(np.mean(probs.argmax(axis=1) == y))


def log_loss(probs: np.ndarray, y: np.ndarray) -> float:
    picked = np.clip(probs[np.arange(len(y)), y], EPSILON, 1.0 - EPSILON)
    return float(-np.mean(np.log(picked)))


def balanced_accuracy(probs: np.ndarray, y: np.ndarray) -> float:
    """The mean per-class recall over the classes present in `y`."""
    predicted = probs.argmax(axis=1)
    return float(np.mean([np.mean(predicted[y == c] == c) for c in np.unique(y)]))


# metric name without "val_" -> (function of (probs, labels), True when higher is better)
SCORES: dict[str, tuple[Callable[[np.ndarray, np.ndarray], float], bool]] = {
    "accuracy": (accuracy, True), "loss": (log_loss, False), "balanced_accuracy": (balanced_accuracy, True)}


def score_of(metric: str) -> tuple[str, Callable[[np.ndarray, np.ndarray], float], bool]:
    """(name, function, higher is better) scoring predictions for a sweep metric ("val_accuracy" ->
    accuracy; the training metrics "accuracy"/"loss" select on validation too).

    Raises:
        SweepConfigError: a metric no prediction score is known for.
    """
    name = metric.removeprefix("val_")
    if name not in SCORES:
        raise SweepConfigError(f"`--ensemble` scores validation predictions by the sweep's metric; {metric!r} has "
                               f"no such score: use one of {', '.join('val_' + n for n in SCORES)}")
    return (name, *SCORES[name])


@dataclass(frozen=True)
class Selection:
    """What `greedy_select` chose.

    Args:
        picks: candidate indices in the order they were added, with repeats, up to the kept prefix.
        scores: the ensemble's score after each of the K steps (the kept prefix is the best of them).
        single: the score of candidate 0 alone (the sweep's winner).
    """

    picks: tuple[int, ...]
    scores: tuple[float, ...]
    single: float

    @property
    def weights(self) -> dict[int, int]:
        """Candidate index -> how many times it was picked, in order of first pick."""
        counts: dict[int, int] = {}
        for i in self.picks:
            counts[i] = counts.get(i, 0) + 1
        return counts

    @property
    def score(self) -> float:
        return self.scores[len(self.picks) - 1]


def greedy_select(predictions: Sequence[np.ndarray], y: np.ndarray, k: int, metric: str = "accuracy",
                  ) -> Selection:
    """Greedy ensemble selection with replacement over candidates' validation probabilities.

    Args:
        predictions: one (N, C) probability array per candidate (or (N, 1) sigmoid outputs), best-ranked
            candidate first; candidate 0 is the single winner the ensemble is compared with.
        y: the N integer labels.
        k: the most members (picks, counting repeats); at least 1.
        metric: a key of SCORES ("accuracy", "loss", "balanced_accuracy").

    Returns the Selection: the best prefix of the K greedy steps, the shortest among equal scores.

    Raises:
        ValueError: no candidates, k < 1, or arrays whose shapes differ from each other or from `y`.
    """
    if not len(predictions) or k < 1:
        raise ValueError(f"greedy_select needs candidates and k >= 1, got {len(predictions)} and {k}")
    probs = [as_probabilities(p) for p in predictions]
    y = np.asarray(y, dtype=np.int64)
    if any(p.shape != probs[0].shape or len(p) != len(y) for p in probs):
        raise ValueError(f"predictions must all be shaped ({len(y)}, classes), got "
                         f"{sorted({p.shape for p in probs})}")
    fn, higher = SCORES[metric]
    sign = 1.0 if higher else -1.0
    total = np.zeros_like(probs[0])
    picks: list[int] = []
    scores: list[float] = []
    for step in range(1, k + 1):
        best = None
        for i, p in enumerate(probs):
            mean = (total + p) / step
            key = (sign * fn(mean, y), -log_loss(mean, y), -i)  # the best score, then log loss, then rank
            if best is None or key > best[0]:
                best = (key, i)
        i = best[1]
        picks.append(i)
        total += probs[i]
        scores.append(sign * best[0][0])
    keep = max(range(k), key=lambda s: (sign * scores[s], -s))  # the best prefix, the shortest among equals
    return Selection(tuple(picks[:keep + 1]), tuple(scores), fn(probs[0], y))


def is_better(selection: Selection, metric: str) -> bool:
    """True when the selection has two or more distinct members and scores strictly better than candidate 0
    alone on validation."""
    return len(selection.weights) >= 2 and beats(selection.score, selection.single, metric)


def beats(score: float, single: float, metric: str) -> bool:
    """True when `score` is strictly better than `single` for `metric` (a key of SCORES)."""
    return score > single if SCORES[metric][1] else score < single
