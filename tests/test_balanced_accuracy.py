"""Balanced accuracy and per-class recall (pure, on fake predictions), the scores every epoch reports, and the
imbalance warning of a sweep's summary."""

from __future__ import annotations

import numpy as np
import pytest

from tsweep.trainers.metrics import (
    balanced_accuracy,
    crossentropy,
    imbalance_warning,
    per_class_recall,
    predicted_classes,
    scores,
)

Y = np.array([0, 0, 0, 0, 1, 1, 2])
PRED = np.array([0, 0, 0, 1, 1, 0, 2])  # recalls: 3/4, 1/2, 1/1


def test_balanced_accuracy_is_the_mean_recall_of_the_classes_present():
    np.testing.assert_allclose(per_class_recall(Y, PRED, 3), [0.75, 0.5, 1.0])
    assert balanced_accuracy(Y, PRED) == pytest.approx((0.75 + 0.5 + 1.0) / 3)
    assert np.mean(Y == PRED) == pytest.approx(5 / 7)  # plain accuracy favours the big class
    recall = per_class_recall(Y, PRED, 4)  # a class with no images has no recall and is left out of the mean
    assert np.isnan(recall[3]) and balanced_accuracy(Y, PRED, 4) == pytest.approx(0.75)
    # always predicting the majority class: accuracy 4/7, balanced accuracy 1/3 (chance)
    assert balanced_accuracy(Y, np.zeros_like(Y), 3) == pytest.approx(1 / 3)
    assert np.isnan(balanced_accuracy(np.array([], dtype=int), np.array([], dtype=int)))


def test_scores_from_probabilities_sigmoid_and_softmax():
    softmax = np.eye(3)[PRED] * 0.8 + 0.1  # rows sum to 1.1: crossentropy renormalises like Keras
    out = scores(Y, softmax, 3, class_names=["a", "b", "c", "d"][:3])
    assert out["accuracy"] == pytest.approx(5 / 7) and out["balanced_accuracy"] == pytest.approx(0.75)
    assert out["per_class_recall"] == pytest.approx({"a": 0.75, "b": 0.5, "c": 1.0})
    sigmoid = np.array([[0.9], [0.2], [0.5], [0.51]])
    assert list(predicted_classes(sigmoid)) == [1, 0, 0, 1]  # Keras's binary accuracy: > 0.5
    binary = scores(np.array([1, 1, 0, 0]), sigmoid, 2, class_names=["neg", "pos"])
    assert binary["per_class_recall"] == {"neg": 0.5, "pos": 0.5} and binary["balanced_accuracy"] == 0.5
    assert scores(np.array([0, 0]), np.array([[0.1], [0.2]]), 2, ["x", "y"])["per_class_recall"]["y"] is None


@pytest.mark.numerics
def test_crossentropy_matches_keras():
    import keras

    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.ones(4), size=16).astype("float32")
    probs[0] = [1.0, 0.0, 0.0, 0.0]  # a zero probability of the true class: clipped as Keras does
    y = rng.integers(0, 4, 16)
    y[0] = 1
    expected = float(keras.losses.SparseCategoricalCrossentropy()(y, probs))
    assert crossentropy(y, probs) == pytest.approx(expected, rel=1e-5)
    p = rng.uniform(0, 1, (16, 1)).astype("float32")
    b = rng.integers(0, 2, 16)
    assert crossentropy(b, p) == pytest.approx(float(keras.losses.BinaryCrossentropy()(b[:, None], p)), rel=1e-5)


def test_imbalance_warning_above_three_times():
    names = ["bluebell", "daisy", "windflower"]
    message = imbalance_warning([48, 30, 10], names)
    assert message is not None and "bluebell has 48 training images, windflower 10 (4.8x)" in message
    assert "`class_weight: balanced`" in message and "`--metric val_balanced_accuracy`" in message
    assert imbalance_warning([30, 20, 10], names) is None  # exactly 3x: no warning
    assert imbalance_warning([31, 20, 10], names) is not None
    assert imbalance_warning([5], ["only"]) is None


@pytest.mark.numerics
def test_every_epoch_reports_val_balanced_accuracy_of_the_model(shapes_dir, cache_dir):
    from tsweep.spaces.config import TrialConfig
    from tsweep.trainers.data import load_dataset
    from tsweep.trainers.train import evaluate, train

    data = load_dataset(shapes_dir, 32, cache_dir=cache_dir)
    cfg = TrialConfig(backbone="mobilenet", alpha=0.25, weights="none", image_size=32, batch_size=16, epochs=2,
                      head_size=0, dropout=0.0)
    result = train(cfg, data)
    assert all({"val_loss", "val_accuracy", "val_balanced_accuracy"} <= set(h) for h in result.history)
    last = evaluate(result.model, data.x_val, data.y_val, class_names=data.class_names)
    assert result.history[-1]["val_balanced_accuracy"] == pytest.approx(last["balanced_accuracy"])
    assert result.history[-1]["val_loss"] == pytest.approx(last["loss"], rel=1e-5)
    assert set(last["per_class_recall"]) == set(data.class_names)
    recall = np.array(list(last["per_class_recall"].values()))
    assert last["balanced_accuracy"] == pytest.approx(recall.mean())


def test_dataset_summary_warns_on_flowers12_imbalanced(tmp_path):
    from tests.conftest import shared_path
    from tsweep.trainers.data import load_dataset

    data = load_dataset(shared_path("datasets", "flowers12-imbalanced"), 32, cache_dir=tmp_path)
    message = data.imbalance_warning()
    assert message is not None and "bluebell has 48 training images, windflower 10 (4.8x)" in message


def imbalanced_folder(root):
    """A generated 2-class dataset, train/ 12 and 3 images per class (4x), no test split."""
    from tsweep.trainers.synthetic import make_synthetic_dataset

    folder = make_synthetic_dataset(root, num_classes=2, train_per_class=12, test_per_class=0, size=32)
    small = sorted((folder / "train").iterdir())[1]
    for image in sorted(small.iterdir())[3:]:
        image.unlink()
    for empty in sorted((folder / "test").iterdir()):  # test_per_class=0 leaves empty class folders
        empty.rmdir()
    (folder / "test").rmdir()
    return folder


def test_prepare_prints_the_warning_once(tmp_path, cache_dir):
    """A sweep's start: the summary line of each image size, then the warning once; small_cnn has no weights
    to check."""
    from tsweep.search.options import SweepOptions
    from tsweep.search.sweep import prepare

    space = tmp_path / "space.yaml"
    space.write_text("backbone: small_cnn\nimage_size: {choice: [32, 40]}\n")
    lines: list[str] = []
    prepare(SweepOptions(data=str(imbalanced_folder(tmp_path / "data")), space=str(space), name="w",
                         results_dir=str(tmp_path / "results"), cache_dir=str(cache_dir), val_fraction=0.25),
            progress=lines.append)
    assert sum(" train / " in line for line in lines) == 2  # one summary per image size
    warnings = [line for line in lines if line.startswith("warning: the classes are imbalanced")]
    assert len(warnings) == 1 and "`class_weight: balanced`" in warnings[0], lines
    assert not any(line.startswith("checking") for line in lines)  # small_cnn: no weights to check
