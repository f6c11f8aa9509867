"""`fit_epoch` trains through `train_steps` and scores through `predict_batches`: the model's own compiled steps fed
from NumPy. They must compute exactly what one epoch of `model.fit` and `model.predict` compute."""

from __future__ import annotations

import numpy as np
import pytest

from tsweep.spaces.config import TrialConfig
from tsweep.trainers import steps
from tsweep.trainers.train import fit_epoch, predict_batches, train_steps

pytestmark = pytest.mark.numerics  # equal bit for bit under each kernel family


def tiny(seed: int, optimizer: str = "adamw"):
    import keras

    keras.utils.set_random_seed(seed)
    model = keras.Sequential([keras.Input((12,)), keras.layers.Dense(16, activation="relu"),
                              keras.layers.Dropout(0.3), keras.layers.Dense(3, activation="softmax")])
    opt = keras.optimizers.AdamW(3e-3) if optimizer == "adamw" else keras.optimizers.SGD(0.05, momentum=0.9)
    model.compile(optimizer=opt, loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def assert_same_state(a, b) -> None:
    for u, v in zip(a.weights + a.optimizer.variables, b.weights + b.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(u), np.asarray(v), err_msg=u.path)


@pytest.mark.parametrize("weighted, optimizer", [(False, "adamw"), (True, "adamw"), (True, "sgd")])
def test_train_steps_give_fits_metrics_weights_and_optimizer_state(weighted, optimizer):
    rng = np.random.default_rng(0)
    x = rng.normal(size=(70, 12)).astype("float16")  # 70 = two steps of 32 and a short one of 6
    y = rng.integers(0, 3, 70)
    w = rng.uniform(0.5, 2.0, 70).astype("float32") if weighted else None
    fitted, stepped = tiny(1, optimizer), tiny(1, optimizer)
    for epoch in range(3):
        order = rng.permutation(len(y))
        sw = None if w is None else w[order]
        history = fitted.fit(x[order], y[order], sample_weight=sw, batch_size=32, epochs=epoch + 1,
                             initial_epoch=epoch, shuffle=False, verbose=0).history
        got = train_steps(stepped, x[order], y[order], sw, 32)
        assert got == {k: float(v[-1]) for k, v in history.items()}, epoch
    assert_same_state(fitted, stepped)
    assert int(np.asarray(stepped.optimizer.iterations)) == 3 * 3  # three steps an epoch, the short one included
    # one trace for full and short steps, every epoch (Keras's train_on_batch traced three times: the first
    # trace made the metric and optimizer variables, then again, then relaxed for the short step)
    assert steps.tracing_count(stepped) == 1


def test_predict_batches_equal_predict():
    model = tiny(2)
    x = np.random.default_rng(1).normal(size=(45, 12)).astype("float32")
    np.testing.assert_array_equal(predict_batches(model, x, 16), model.predict(x, batch_size=16, verbose=0))
    assert predict_batches(model, x[:0], 16).shape == (0, 3)
    assert steps.tracing_count(model) == 1  # batches of 16 and the last of 13 (and none) share one trace


def test_fit_epoch_with_a_progress_bar_trains_the_same(capsys):
    """verbose > 0 keeps Keras's `fit` (its progress bar); verbose 0 runs the steps: the same epoch either way."""
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(40, 12)).astype("float32"), rng.integers(0, 3, 40)
    validation = (rng.normal(size=(10, 12)).astype("float32"), rng.integers(0, 3, 10))
    cfg = TrialConfig(batch_size=16, class_weight="balanced", seed=5)
    shown, quiet = tiny(4), tiny(4)
    for epoch in range(2):
        assert fit_epoch(shown, x, y, validation, cfg, epoch, verbose=2) == \
            fit_epoch(quiet, x, y, validation, cfg, epoch, verbose=0)
    assert "loss:" in capsys.readouterr().out  # the progress lines of the verbose run
    assert_same_state(shown, quiet)


def test_a_recompiled_model_trains_its_new_trainable_set_like_fit():
    """A new phase recompiles the model with other trainable layers and a new optimizer: the step traced for
    the old compile must not serve it."""
    import keras

    rng = np.random.default_rng(4)
    x, y = rng.normal(size=(40, 12)).astype("float32"), rng.integers(0, 3, 40)
    fitted, stepped = tiny(6), tiny(6)
    fitted.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0)
    train_steps(stepped, x, y, None, 16)
    for model in (fitted, stepped):
        model.layers[0].trainable = False
        model.compile(optimizer=keras.optimizers.SGD(0.1), loss="sparse_categorical_crossentropy",
                      metrics=["accuracy"])
    frozen = np.asarray(stepped.layers[0].kernel).copy()
    history = fitted.fit(x, y, batch_size=16, epochs=1, shuffle=False, verbose=0).history
    assert train_steps(stepped, x, y, None, 16) == {k: float(v[-1]) for k, v in history.items()}
    np.testing.assert_array_equal(np.asarray(stepped.layers[0].kernel), frozen)
    assert_same_state(fitted, stepped)


def test_traced_steps_do_not_keep_their_model_alive():
    """A reused worker trains a new model every trial: the steps kept for a model must go with it."""
    import gc
    import weakref

    rng = np.random.default_rng(5)
    x, y = rng.normal(size=(20, 12)).astype("float32"), rng.integers(0, 3, 20)
    model = tiny(7)
    train_steps(model, x, y, None, 8)
    predict_batches(model, x, 8)
    gone = weakref.ref(model)
    del model
    gc.collect()
    assert gone() is None
