"""The trainer without Ray: model structure, phases, freezing, BatchNorm, checkpoints, failures, KerasTuner."""

from __future__ import annotations

import numpy as np
import pytest

from tsweep.errors import TrialError
from tsweep.spaces.config import TrialConfig
from tsweep.trainers.data import Dataset, load_dataset

pytestmark = pytest.mark.numerics  # float equivalences and NaN checks: run under oneDNN too

TINY = dict(backbone="mobilenet_v2", alpha=0.35, weights="none", image_size=32, batch_size=16, epochs=3,
            warmup_epochs=1, head_size=8, dropout=0.1, learning_rate=1e-3)


@pytest.fixture(scope="module")
def data(shapes_dir, cache_dir) -> Dataset:
    return load_dataset(shapes_dir, 32, cache_dir=cache_dir)


def config(**changes) -> TrialConfig:
    return TrialConfig.from_dict({**TINY, **changes})


def test_phase_of_follows_the_classic_recipe():
    from tsweep.trainers.train import phase_of

    finetune = config(freeze_cutoff=12, warmup_epochs=2, epochs=4)
    assert [phase_of(e, finetune) for e in range(4)] == ["warmup", "warmup", "finetune", "finetune"]
    features = config(freeze_cutoff=17, warmup_epochs=2, epochs=3)
    assert [phase_of(e, features) for e in range(3)] == ["features"] * 3


def test_model_structure_binary_and_multiclass():
    from tsweep.trainers.model import build_model

    multi = build_model(config(head_size=8, dropout=0.1, augmentation="light"), 3)
    names = [layer.name for layer in multi.layers]
    assert {"preprocess", "backbone", "pool", "hidden", "dropout", "probabilities"} <= set(names)
    assert any("random_flip" in n for n in names) and multi.output_shape == (None, 3)
    assert multi.get_layer("probabilities").activation.__name__ == "softmax"
    binary = build_model(config(head_size=0, dropout=0.0), 2)
    assert binary.output_shape == (None, 1) and "hidden" not in [layer.name for layer in binary.layers]
    assert binary.get_layer("probabilities").activation.__name__ == "sigmoid"
    assert not any(w.trainable for w in binary.get_layer("backbone").weights)  # built fully frozen


def test_warmup_then_finetune_unfreezes_above_cutoff_and_keeps_batchnorm_statistics(data):
    import keras

    from tsweep.trainers.train import train

    seen = []

    def on_epoch(history, model):
        base = model.get_layer("backbone")
        seen.append((history[-1]["phase"], sum(layer.trainable for layer in base.layers if layer.weights)))

    result = train(config(freeze_cutoff=14, epochs=3, warmup_epochs=1), data, on_epoch=on_epoch)
    assert [h["phase"] for h in result.history] == ["warmup", "finetune", "finetune"]
    assert seen[0][1] == 0 and seen[1][1] > 0 and seen[1][1] == seen[2][1]
    assert {"loss", "accuracy", "val_loss", "val_accuracy", "epoch_time_s"} <= set(result.history[0])
    base = result.model.get_layer("backbone")
    trainable = [layer for layer in base.layers if layer.trainable and layer.weights]
    assert all(layer.name.startswith(("block_15", "block_16", "Conv_1", "out")) for layer in trainable)
    # BatchNorm in inference mode: moving statistics of unfrozen BN layers must not move while training
    norm = base.get_layer("Conv_1_bn")  # above the cutoff, in the unfrozen part
    assert isinstance(norm, keras.layers.BatchNormalization) and base.get_layer("Conv_1").trainable
    before = np.array(norm.moving_mean)
    train_more = result.model.fit(data.x_train, data.y_train, epochs=1, verbose=0)
    assert train_more.history["loss"]
    np.testing.assert_array_equal(before, np.array(norm.moving_mean))


def test_training_is_seeded(data):
    from tsweep.trainers.train import train

    cfg = config(freeze_cutoff=17, epochs=2, head_size=0)
    first, again = train(cfg, data), train(cfg, data)
    np.testing.assert_allclose([h["loss"] for h in first.history], [h["loss"] for h in again.history], rtol=1e-4)


def test_frozen_imagenet_features_learn_corel5(cache_dir):
    """Real learning: frozen ImageNet MobileNetV2 (0.35) features + a linear head on corel5 at 96 px."""
    from tests.conftest import shared_path
    from tsweep.trainers.train import train

    weights = shared_path("weights", "mobilenet_v2_0.35_224_no_top.h5")
    corel = load_dataset(shared_path("datasets", "corel5"), 96, cache_dir=cache_dir)
    result = train(config(image_size=96, weights=str(weights), freeze_cutoff=17, epochs=3, head_size=0,
                          dropout=0.0, learning_rate=3e-3, batch_size=32), corel)
    assert [h["phase"] for h in result.history] == ["features"] * 3
    assert max(h["val_accuracy"] for h in result.history) > 0.8  # 5 classes: chance is 0.2


def test_checkpoint_resume_continues_after_saved_epoch(data, tmp_path):
    from tsweep.trainers.checkpoint import save_checkpoint
    from tsweep.trainers.train import train

    cfg = config(freeze_cutoff=14, epochs=3, warmup_epochs=1)

    def keep_epoch_2(history, model):
        if history[-1]["epoch"] == 2:
            save_checkpoint(tmp_path / "ckpt", model, history)

    full = train(cfg, data, on_epoch=keep_epoch_2)
    resumed_epochs = []
    resumed = train(cfg, data, resume_from=tmp_path / "ckpt",
                    on_epoch=lambda history, model: resumed_epochs.append(history[-1]["epoch"]))
    assert resumed_epochs == [3]  # only the missing epoch ran
    assert [h["epoch"] for h in resumed.history] == [1, 2, 3]
    assert resumed.history[:2] == full.history[:2]
    assert resumed.history[2]["phase"] == "finetune"
    # Weights, optimizer slots and the Dropout seed state come back: epoch 3 repeats the uninterrupted run.
    for key in ("loss", "val_loss", "val_accuracy"):
        assert resumed.history[2][key] == pytest.approx(full.history[2][key], rel=1e-4), key


def test_checkpoint_round_trip_and_a_checkpoint_of_another_config(data, tmp_path):
    import numpy as np

    from tsweep.trainers.checkpoint import load_checkpoint, save_checkpoint
    from tsweep.trainers.train import train

    cfg = config(freeze_cutoff=14, epochs=2, warmup_epochs=1)
    result = train(cfg, data)
    save_checkpoint(tmp_path / "ckpt", result.model, result.history)
    model, history = load_checkpoint(tmp_path / "ckpt", cfg, data.num_classes)
    assert history == result.history
    np.testing.assert_allclose(np.asarray(model(data.x_val[:4])), np.asarray(result.model(data.x_val[:4])), atol=1e-6)
    assert [v.path for v in model.trainable_variables] == [v.path for v in result.model.trainable_variables]
    for a, b in zip(model.optimizer.variables, result.model.optimizer.variables, strict=True):
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
    with pytest.raises(ValueError, match="weights.npz .*another config"):
        load_checkpoint(tmp_path / "ckpt", config(freeze_cutoff=14, head_size=7), data.num_classes)


def _poisoned_epochs(monkeypatch, poison):
    """Make every epoch of train() end with `poison(model, metrics)` applied, whatever the kernels compute:
    NaN is injected directly, not hoped for from a kernel (oneDNN's min/max turn NaN into finite numbers)."""
    from tsweep.trainers import train as train_module

    real = train_module.fit_epoch

    def fit_epoch(model, *args, **kwargs):
        metrics = real(model, *args, **kwargs)
        poison(model, metrics)
        return metrics

    monkeypatch.setattr(train_module, "fit_epoch", fit_epoch)


@pytest.mark.parametrize("cached", [False, True], ids=["end_to_end", "cached"])
def test_nan_loss_is_a_trial_error_naming_the_rate(data, monkeypatch, tmp_path, cached):
    from tsweep.trainers.features import FeatureCache
    from tsweep.trainers.train import train

    _poisoned_epochs(monkeypatch, lambda model, metrics: metrics.update(loss=float("nan")))
    cache = FeatureCache(tmp_path / "f", 10**8) if cached else None
    with pytest.raises(TrialError, match=r"loss became nan at epoch 1 \(features phase, adam at learning_rate "
                                         r"0.003\): lower `learning_rate`"):
        train(config(freeze_cutoff=17, epochs=2, learning_rate=3e-3), data, feature_cache=cache)


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_a_nonfinite_weight_with_a_finite_loss_is_a_trial_error(data, monkeypatch, tmp_path, value):
    # A finite loss does not prove a sane model: a weight gone NaN/inf after the epoch ends the trial too,
    # naming the weight, the phase and the optimizer that ran it.
    from tsweep.trainers.features import FeatureCache
    from tsweep.trainers.train import train

    def poison(model, metrics):
        if len(seen) == 1:  # after the second epoch, the first of the fine-tune phase
            kernel = model.get_layer("hidden").kernel
            kernel.assign(np.where(np.arange(kernel.shape[1]) == 3, value, np.asarray(kernel)))
        seen.append(metrics["loss"])

    seen: list = []
    _poisoned_epochs(monkeypatch, poison)
    with pytest.raises(TrialError, match=r"weight .*hidden/kernel became NaN or infinite at epoch 2 \(finetune "
                                         r"phase, sgd at learning_rate 0.01\): lower `learning_rate`"):
        train(config(freeze_cutoff=14, epochs=3, warmup_epochs=1, optimizer="sgd", learning_rate=0.01), data,
              feature_cache=FeatureCache(tmp_path / "f", 10**8))
    assert len(seen) == 2 and all(np.isfinite(seen))  # the loss itself stayed finite


def test_the_warmup_phase_names_its_own_rate(data, monkeypatch):
    from tsweep.trainers.train import train

    _poisoned_epochs(monkeypatch, lambda model, metrics: metrics.update(loss=float("inf")))
    with pytest.raises(TrialError, match=r"loss became inf at epoch 1 \(warmup phase, adam at learning_rate "
                                         r"0.02\): lower `warmup_learning_rate`"):
        train(config(freeze_cutoff=14, epochs=2, warmup_epochs=1, optimizer="sgd", warmup_learning_rate=0.02), data)


def test_first_nonfinite_weight_finds_the_weight(data):
    from tsweep.trainers.model import build_model
    from tsweep.trainers.train import first_nonfinite_weight

    model = build_model(config(freeze_cutoff=17), data.num_classes)
    assert first_nonfinite_weight(model) is None
    bias = model.get_layer("probabilities").bias
    bias.assign(np.array([0.0, np.inf, 0.0], dtype="float32"))
    assert first_nonfinite_weight(model) == bias.path


def test_full_data_trains_on_train_and_val(data):
    from tsweep.trainers.train import train

    result = train(config(freeze_cutoff=17, epochs=1, batch_size=1000), data, full_data=True)
    assert "val_loss" not in result.history[0]
    assert len(data.full_train()[1]) == len(data.y_train) + len(data.y_val)


@pytest.mark.slow  # a keras-tuner search of its own (~30 s idle)
def test_same_space_runs_under_keras_tuner(data, tmp_path):
    import keras_tuner

    from tsweep.spaces.space import Space, parse_dist
    from tsweep.trainers.hypermodel import TransferHyperModel

    params = {k: parse_dist(k, v, "test") for k, v in {**TINY, "freeze_cutoff": {"choice": [17, 14]},
                                                      "epochs": 2}.items()}
    hypermodel = TransferHyperModel(Space(params, "test"), num_classes=3)
    tuner = keras_tuner.RandomSearch(hypermodel, objective="val_accuracy", max_trials=2, seed=1,
                                     directory=str(tmp_path), project_name="kt", overwrite=True)
    tuner.search(data.x_train, data.y_train, epochs=2, validation_data=(data.x_val, data.y_val), verbose=0)
    trials = tuner.oracle.get_best_trials(2)
    assert len(trials) == 2 and all(t.score is not None for t in trials)
    assert {t.hyperparameters.get("freeze_cutoff") for t in trials} <= {17, 14}
