"""`class_weight: balanced`: scikit-learn's weights, the space key, and the loss it trains with on every path."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tsweep.errors import SweepConfigError
from tsweep.spaces.config import TrialConfig
from tsweep.trainers.metrics import class_weights, sample_weights

TINY = dict(backbone="mobilenet_v2", alpha=0.35, weights="none", image_size=32, batch_size=16, epochs=2,
            warmup_epochs=1, head_size=8, dropout=0.0, learning_rate=1e-3)


def test_class_weights_are_scikit_learns_balanced_formula():
    y = np.array([0] * 6 + [1] * 3 + [2])
    # scikit-learn's compute_class_weight("balanced"): n_samples / (n_classes * np.bincount(y))
    assert class_weights(y) == pytest.approx({0: 10 / (3 * 6), 1: 10 / (3 * 3), 2: 10 / (3 * 1)})
    np.testing.assert_allclose(sample_weights(y[::-1]), [10 / 3] + [10 / 9] * 3 + [10 / 18] * 6, rtol=1e-6)
    assert sample_weights(y).sum() == pytest.approx(len(y))  # the mean weight is 1: the loss keeps its scale
    # k counts the classes present (scikit-learn's np.unique(y)), so a class missing from the labels changes nothing
    assert class_weights(np.array([0, 0, 0, 2])) == pytest.approx({0: 4 / (2 * 3), 2: 4 / (2 * 1)})
    assert class_weights(np.array([1, 1])) == {1: 1.0} and class_weights(np.array([], dtype=int)) == {}


def test_class_weight_is_a_validated_searchable_key(tmp_path):
    from tsweep.search.ray_space import to_ray
    from tsweep.spaces.space import load_space

    assert TrialConfig().class_weight == "none"
    assert TrialConfig.from_dict({"class_weight": "Balanced"}).class_weight == "balanced"
    assert TrialConfig.from_dict({"class_weight": None}).class_weight == "none"  # `class_weight: null` in YAML
    with pytest.raises(SweepConfigError) as info:
        TrialConfig.from_dict({"class_weight": "auto"}, "space.yaml")
    assert str(info.value) == "space.yaml: `class_weight` must be one of none, balanced, got 'auto'"
    path = tmp_path / "space.yaml"
    path.write_text("class_weight: {choice: [none, balanced]}\nweights: none\n")
    space = load_space(path)
    assert space.sampled["class_weight"].values == ("none", "balanced")
    assert set(to_ray(space)["class_weight"].categories) == {"none", "balanced"}
    path.write_text("class_weight: {choice: [none, auto]}\n")
    with pytest.raises(SweepConfigError, match="`class_weight` must be one of none, balanced, got 'auto'"):
        load_space(path)


@pytest.mark.numerics
def test_balanced_weights_scale_each_samples_loss():
    """One batch: fit's reported loss is the batch's loss before the update, i.e. mean(w_i * CE_i)."""
    import keras

    from tsweep.trainers.train import fit_epoch

    x = np.random.default_rng(0).normal(size=(12, 4)).astype("float32")
    y = np.array([0] * 8 + [1] * 3 + [2])

    def model() -> keras.Model:
        keras.utils.set_random_seed(0)
        inputs = keras.Input((4,))
        m = keras.Model(inputs, keras.layers.Dense(3, activation="softmax")(inputs))
        m.compile(keras.optimizers.SGD(0.1), "sparse_categorical_crossentropy", metrics=["accuracy"])
        return m

    per_sample = -np.log(model().predict(x, verbose=0)[np.arange(len(y)), y])
    expected = {"none": per_sample.mean(), "balanced": (sample_weights(y) * per_sample).mean()}
    assert abs(expected["none"] - expected["balanced"]) > 1e-3  # the data makes the two differ
    for weighting, loss in expected.items():
        cfg = TrialConfig(class_weight=weighting, batch_size=len(y))
        assert fit_epoch(model(), x, y, None, cfg, 0)["loss"] == pytest.approx(loss, rel=1e-5), weighting


@pytest.fixture(scope="module")
def imbalanced(shapes_dir, cache_dir):
    """The shapes dataset with its training images 20 / 10 / 4 per class."""
    from tsweep.trainers.data import load_dataset

    data = load_dataset(shapes_dir, 32, cache_dir=cache_dir)
    keep = np.concatenate([np.flatnonzero(data.y_train == c)[:n] for c, n in enumerate((20, 10, 4))])
    return dataclasses.replace(data, x_train=data.x_train[keep], y_train=data.y_train[keep])


@pytest.mark.numerics
@pytest.mark.parametrize("changes", [
    dict(backbone="mobilenet", alpha=0.25, freeze_cutoff=13),  # feature extraction: cached pooled features
    dict(freeze_cutoff=12, epochs=3, optimizer="sgd", learning_rate=0.01),  # warm-up, then fine-tuning
], ids=["features", "finetune"])
def test_balanced_training_is_the_same_on_cache_and_end_to_end(imbalanced, tmp_path, changes):
    from tsweep.trainers.features import FeatureCache
    from tsweep.trainers.train import train

    cfg = TrialConfig.from_dict({**TINY, **changes, "class_weight": "balanced"})
    end_to_end = train(cfg, imbalanced)
    cached = train(cfg, imbalanced, feature_cache=FeatureCache(tmp_path / "f", 10**8))
    plain = train(dataclasses.replace(cfg, class_weight="none"), imbalanced)
    for key in ("loss", "accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy"):
        np.testing.assert_allclose([h[key] for h in cached.history], [h[key] for h in end_to_end.history],
                                   rtol=1e-4, atol=1e-6, err_msg=key)
    # weighted: the first epoch's training loss differs from the unweighted run's (same weights, same batches)
    assert abs(end_to_end.history[0]["loss"] - plain.history[0]["loss"]) > 1e-4


@pytest.mark.numerics
def test_balanced_weights_reach_training_on_cached_views(imbalanced, tmp_path):
    from tsweep.trainers.cached_train import stage_kind
    from tsweep.trainers.features import FeatureCache
    from tsweep.trainers.train import train

    cfg = TrialConfig.from_dict({**TINY, "backbone": "mobilenet", "alpha": 0.25, "freeze_cutoff": 13,
                                 "augmentation": "light", "augmentation_views": 2, "class_weight": "balanced"})
    assert stage_kind(cfg, "features") == "views"
    cache = FeatureCache(tmp_path / "f", 10**8)
    weighted = train(cfg, imbalanced, feature_cache=cache)
    plain = train(dataclasses.replace(cfg, class_weight="none"), imbalanced, feature_cache=cache)
    assert cache.stats["computed"] == 3  # two views of the training images, one of val: shared by both runs
    # the same views and batches, weighted differently
    assert abs(weighted.history[0]["loss"] - plain.history[0]["loss"]) > 1e-4
    assert all("val_balanced_accuracy" in h for h in weighted.history)
