"""Compiled steps reused across trials (`trainers.step_pool`): a pooled twin trains a trial's suffix as the suffix
itself would, its steps traced once, its Dropout rate a variable."""

from __future__ import annotations

import numpy as np
import pytest

from tests.test_features import config  # the same tiny MobileNetV2 configs as the feature-cache tests
from tsweep.spaces.config import TrialConfig
from tsweep.trainers import step_pool, steps
from tsweep.trainers.data import Dataset, load_dataset
from tsweep.trainers.features import FeatureCache


@pytest.fixture(scope="module")
def data(shapes_dir, cache_dir) -> Dataset:
    return load_dataset(shapes_dir, 32, cache_dir=cache_dir)


@pytest.fixture(autouse=True)
def empty_pool():
    step_pool.forget_steps()
    yield
    step_pool.forget_steps()


@pytest.mark.numerics
@pytest.mark.parametrize("changes", [
    dict(freeze_cutoff=17, optimizer="adam"),  # feature extraction: the head on pooled features
    dict(freeze_cutoff=12, epochs=3, optimizer="sgd", learning_rate=0.01),  # warm-up, then fine-tuning blocks 13+
], ids=["features", "warmup_finetune"])
def test_a_reused_twin_trains_like_the_trials_own_suffix(data, tmp_path, changes):
    from tsweep.trainers.checkpoint import load_checkpoint, save_checkpoint
    from tsweep.trainers.train import train

    cfg = config(**changes, seed=3)
    cache = FeatureCache(tmp_path / "features", 10**8)
    reference = train(cfg, data, feature_cache=cache)
    with step_pool.reuse_steps():
        # An earlier trial of the same structure (other seed, dropout, learning rate) makes the twins and
        # leaves its trained weights and optimizer state in them.
        train(config(**{**changes, "dropout": 0.1, "learning_rate": 0.05}, seed=9), data, feature_cache=cache)
        made = dict(step_pool.STATS)
        trains = {id(t.model): (dict(steps._TRAIN[t.model]["functions"]), steps.tracing_count(t.model))
                  for t in step_pool._POOL.values()}
        pooled = train(cfg, data, feature_cache=cache)

    phases = len({h["phase"] for h in reference.history})
    assert step_pool.STATS["made"] == made["made"] and step_pool.STATS["reused"] == made["reused"] + phases
    # the same traced train steps served the second trial: none was rebuilt
    assert {id(t.model): (dict(steps._TRAIN[t.model]["functions"]), steps.tracing_count(t.model))
            for t in step_pool._POOL.values()} == trains
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        np.testing.assert_allclose([h[key] for h in pooled.history], [h[key] for h in reference.history],
                                   rtol=1e-5, err_msg=key)
    # the weights came back into the trial's own model after every epoch (its Dropout seed states included)
    for a, b in zip(pooled.model.variables, reference.model.variables, strict=True):
        assert a.path.split("/")[-1] == b.path.split("/")[-1]  # seed generators are numbered per process
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, err_msg=a.path)
    # and so did the optimizer's state: a checkpoint of it resumes like one of unpooled training
    save_checkpoint(tmp_path / "ckpt", pooled.model, pooled.history)
    loaded, _ = load_checkpoint(tmp_path / "ckpt", cfg, data.num_classes)
    for a, b in zip(loaded.optimizer.variables, reference.model.optimizer.variables, strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-6, err_msg=a.path)


@pytest.mark.numerics
def test_rate_dropout_draws_keras_dropout_masks_for_any_rate_in_one_trace():
    import keras
    import tensorflow as tf

    x = np.ones((64, 32), "float32")
    twin = step_pool.RateDropout()
    twin.build(x.shape)
    traces = []

    @tf.function
    def step(inputs):
        traces.append(1)
        return twin(inputs, training=True)

    for rate, seed in ((0.1, 1), (0.45, 2), (0.3, 1)):
        keras_dropout = keras.layers.Dropout(rate, seed=seed)
        twin.set_rate(rate)
        twin.seed_generator.state.assign(keras_dropout.seed_generator.state)
        np.testing.assert_array_equal(np.asarray(step(x)), np.asarray(keras_dropout(x, training=True)))
    assert len(traces) == 1
    assert np.array_equal(np.asarray(twin(x, training=False)), x)  # inference: the identity


def suffix_of(cfg: TrialConfig, cutoff: int = 17):
    from tsweep.trainers.model import build_model, compile_model, set_cutoff
    from tsweep.trainers.split import split_model

    model = build_model(cfg, 3)
    set_cutoff(model, cfg, cutoff)
    _, suffix = split_model(model, cfg, cutoff, pooled=cutoff == 17)
    compile_model(suffix, cfg, 3)
    return suffix


def test_signature_ignores_what_is_copied_in_and_keeps_what_is_traced():
    base = step_pool.signature(suffix_of(config(freeze_cutoff=17)))
    same = [dict(dropout=0.05), dict(learning_rate=0.2), dict(seed=7)]
    other = [dict(head_size=16), dict(optimizer="sgd"), dict(optimizer="sgd", momentum=0.5), dict(dropout=0.0),
             dict(optimizer="adamw", weight_decay=0.01)]
    assert all(step_pool.signature(suffix_of(config(freeze_cutoff=17, **c))) == base for c in same)
    signatures = [step_pool.signature(suffix_of(config(freeze_cutoff=17, **c))) for c in other]
    assert base not in signatures and len(set(signatures)) == len(other)
    assert step_pool.signature(suffix_of(config(freeze_cutoff=16), 16)) != base


def test_no_twin_outside_reuse_steps_or_under_mixed_precision():
    import keras

    suffix = suffix_of(config(freeze_cutoff=17))
    assert step_pool.bind(suffix) is None
    with step_pool.reuse_steps():
        before = keras.config.dtype_policy()
        keras.config.set_dtype_policy("mixed_float16")
        try:
            assert step_pool.bind(suffix) is None
        finally:
            keras.config.set_dtype_policy(before)
        assert step_pool.bind(suffix) is not None
    assert not step_pool._REUSE


def test_the_pool_keeps_the_most_recent_twins(monkeypatch):
    monkeypatch.setattr(step_pool, "MAX_TWINS", 2)
    with step_pool.reuse_steps():
        bindings = [step_pool.bind(suffix_of(config(freeze_cutoff=17, head_size=h))) for h in (0, 8, 16)]
        assert len(step_pool._POOL) == 2
        kept = [b.twin for b in bindings[1:]]
        assert list(step_pool._POOL.values()) == kept  # the least recently used (head 0) went
        again = step_pool.bind(suffix_of(config(freeze_cutoff=17, head_size=8, seed=5)))
        assert again.twin is bindings[1].twin and list(step_pool._POOL.values())[-1] is again.twin
