"""Classification scores from predicted probabilities, and class weights: pure numpy, no TensorFlow.

Every validation number a trial reports (`val_loss`, `val_accuracy`, `val_balanced_accuracy`) and every
held-out score of an export comes from `scores` on one prediction pass, so they agree on every training path
(end to end, cached features, cached views). The loss is Keras's cross-entropy on probabilities (clipped to
[1e-7, 1 - 1e-7], Keras's epsilon), the accuracy Keras's (a sigmoid output counts as class 1 above 0.5).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

EPSILON = 1e-7  # keras.config.epsilon(): the clip of probabilities in Keras's cross-entropy


def class_weights(y: np.ndarray) -> dict[int, float]:
    """scikit-learn's "balanced" class weights, n / (k * n_c), for the classes present in `y`.

    Args:
        y: integer labels (N,).

    Returns:
        class index -> weight; a class with half the mean count gets weight 2.
    """
    y = np.asarray(y).astype(np.int64).ravel()
    if y.size == 0:
        return {}
    counts = np.bincount(y)
    present = np.flatnonzero(counts)
    return {int(c): float(y.size / (len(present) * counts[c])) for c in present}


def sample_weights(y: np.ndarray) -> np.ndarray:
    """Each label's `class_weights` (float32, (N,)): what `fit` weighs each training sample's loss by."""
    weights = class_weights(y)
    lookup = np.zeros(max(weights, default=-1) + 1, dtype=np.float32)
    for c, w in weights.items():
        lookup[c] = w
    return lookup[np.asarray(y).astype(np.int64).ravel()]


def predicted_classes(probabilities: np.ndarray) -> np.ndarray:
    """Class indices from a model's output: (N, 1) sigmoid -> 0/1 above 0.5, (N, C) softmax -> argmax."""
    p = np.asarray(probabilities)
    if p.ndim == 1 or p.shape[-1] == 1:
        return (p.reshape(len(p)) > 0.5).astype(np.int64)
    return p.argmax(axis=-1).astype(np.int64)


def per_class_recall(y: np.ndarray, predicted: np.ndarray, num_classes: int) -> np.ndarray:
    """Recall of each class (correct / images of that class); NaN for a class with no images.

    Args:
        y: true labels (N,).
        predicted: predicted labels (N,).
        num_classes: C, the length of the result.
    """
    y, predicted = np.asarray(y).astype(np.int64).ravel(), np.asarray(predicted).astype(np.int64).ravel()
    total = np.bincount(y, minlength=num_classes)[:num_classes].astype(np.float64)
    correct = np.bincount(y[y == predicted], minlength=num_classes)[:num_classes].astype(np.float64)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)


def balanced_accuracy(y: np.ndarray, predicted: np.ndarray, num_classes: int | None = None) -> float:
    """The mean recall over the classes that have images (scikit-learn's balanced_accuracy_score).

    Args:
        y: true labels (N,).
        predicted: predicted labels (N,).
        num_classes: C; default None = 1 + the largest label seen.
    """
    y = np.asarray(y).astype(np.int64).ravel()
    if y.size == 0:
        return float("nan")
    predicted = np.asarray(predicted).astype(np.int64).ravel()
    n = num_classes or int(max(y.max(), predicted.max(initial=0))) + 1
    return float(np.nanmean(per_class_recall(y, predicted, n)))


def crossentropy(y: np.ndarray, probabilities: np.ndarray) -> float:
    """The mean binary (a (N, 1) sigmoid output) or sparse categorical cross-entropy, as Keras computes it."""
    y = np.asarray(y).astype(np.int64).ravel()
    p = np.asarray(probabilities, dtype=np.float64)
    if p.ndim == 1 or p.shape[-1] == 1:
        p = np.clip(p.reshape(len(p)), EPSILON, 1 - EPSILON)
        return float(-np.mean(y * np.log(p) + (1 - y) * np.log(1 - p)))
    p = p / p.sum(axis=-1, keepdims=True)
    return float(-np.mean(np.log(np.clip(p[np.arange(len(y)), y], EPSILON, 1 - EPSILON))))


def scores(y: np.ndarray, probabilities: np.ndarray, num_classes: int,
           class_names: Sequence[str] | None = None) -> dict:
    """loss, accuracy and balanced_accuracy of predictions (floats), plus per_class_recall when named.

    Args:
        y: true labels (N,).
        probabilities: the model's output (N, 1) or (N, C).
        num_classes: C (2 for a sigmoid output).
        class_names: when given, "per_class_recall" maps each class name to its recall (None: no images).
    """
    predicted = predicted_classes(probabilities)
    y = np.asarray(y).astype(np.int64).ravel()
    out: dict = {"loss": crossentropy(y, probabilities), "accuracy": float(np.mean(predicted == y)),
                 "balanced_accuracy": balanced_accuracy(y, predicted, num_classes)}
    if class_names is not None:
        recall = per_class_recall(y, predicted, num_classes)
        out["per_class_recall"] = {str(name): (None if np.isnan(r) else float(r))
                                   for name, r in zip(class_names, recall)}
    return out


def imbalance_warning(counts: Sequence[int], names: Sequence[str], ratio: float = 3.0) -> str | None:
    """A warning when the largest class has more than `ratio` (default 3) times the images of the smallest.

    Args:
        counts: images per class (training images).
        names: the class names, same order.
        ratio: the imbalance that warrants a warning.
    """
    counts = [int(c) for c in counts]
    if len(counts) < 2 or max(counts) <= 0:
        return None
    big, small = int(np.argmax(counts)), int(np.argmin(counts))
    if counts[big] <= ratio * counts[small]:
        return None
    times = f"{counts[big] / counts[small]:.1f}x" if counts[small] else "none of the smallest"
    return (f"warning: the classes are imbalanced: {names[big]!s} has {counts[big]} training images, {names[small]!s} "
            f"{counts[small]} ({times}); consider `class_weight: balanced` in the space and "
            "`--metric val_balanced_accuracy`")
