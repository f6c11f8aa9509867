"""Cached augmented views: seeds, laziness, keys, equivalence with end-to-end training on the same views, and
deeper cutoffs made from shallower cached activations."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from tsweep.spaces.config import TrialConfig
from tsweep.trainers.data import Dataset, load_dataset
from tsweep.trainers.features import FeatureCache

pytestmark = pytest.mark.numerics  # float equivalences and NaN checks: run under oneDNN too

TINY = dict(backbone="mobilenet_v2", alpha=0.35, weights="none", image_size=32, batch_size=16, epochs=2,
            warmup_epochs=1, head_size=8, dropout=0.3, learning_rate=1e-3, augmentation="light")


def config(**changes) -> TrialConfig:
    return TrialConfig.from_dict({**TINY, **changes})


@pytest.fixture(scope="module")
def data(shapes_dir, cache_dir) -> Dataset:
    return load_dataset(shapes_dir, 32, cache_dir=cache_dir)


def entries(cache: FeatureCache, what: str) -> list[dict]:
    import json

    metas = [json.loads(p.read_text())["key_parts"] for p in cache.directory.glob("*.json")]
    return [m for m in metas if m["what"] == what]


def test_view_seeds_depend_on_dataset_policy_and_view_only(data):
    from tsweep.trainers.views import augment_view, policy_id, view_seed

    x = data.x_train
    first, again = augment_view(x, "light", 0, "d"), augment_view(x, "light", 0, "d")
    np.testing.assert_array_equal(first, again)  # shared by every trial: no trial seed enters
    assert not np.allclose(first, augment_view(x, "light", 1, "d"))  # views differ
    assert not np.allclose(first, augment_view(x, "light", 0, "other dataset"))
    assert not np.allclose(first, augment_view(x, "strong", 0, "d"))
    assert not np.allclose(first, x)  # it is augmented
    # an image's view does not depend on what comes after it in the split (full batches every time)
    np.testing.assert_array_equal(augment_view(x[:40], "light", 0, "d"), first[:40])
    assert len({view_seed("d", policy_id("light"), v, 0) for v in range(50)}) == 50


def test_view_schedule_uses_every_view_before_repeating():
    from tsweep.trainers.views import view_of

    for views in (1, 2, 4, 7):
        order = [view_of(e, views, seed=3) for e in range(3 * views)]
        for cycle in range(3):
            assert sorted(order[cycle * views:(cycle + 1) * views]) == list(range(views))
    assert [view_of(e, 4, 3) for e in range(8)] == [view_of(e, 4, 3) for e in range(8)]  # seeded
    assert any([view_of(e, 8, s) for e in range(8)] != [view_of(e, 8, 0) for e in range(8)] for s in (1, 2, 3))


def test_a_changed_policy_never_reuses_stale_views(data, tmp_path, monkeypatch):
    from tsweep.trainers import model as model_module
    from tsweep.trainers.cached_train import feature_key
    from tsweep.trainers.views import policy_id

    cfg = config()
    key = feature_key(cfg, 12, False, {"kind": "none"}, "ds", "train", data.x_train, view=0)
    assert key["what"] == "view_features" and key["view"] == 0
    assert key != feature_key(cfg, 12, False, {"kind": "none"}, "ds", "train", data.x_train, view=1)
    assert key != feature_key(config(augmentation="strong"), 12, False, {"kind": "none"}, "ds", "train",
                              data.x_train, view=0)
    assert key != feature_key(cfg, 12, False, {"kind": "none"}, "ds", "train", data.x_train)  # plain images
    before = policy_id("light")
    real = model_module.augmentation_layers

    def wider(kind, seed):  # the same level name with another rotation: a new policy
        import keras

        return [keras.layers.RandomRotation(0.3, seed=seed) if isinstance(layer, keras.layers.RandomRotation)
                else layer for layer in real(kind, seed)]

    monkeypatch.setattr(model_module, "augmentation_layers", wider)
    assert policy_id("light") != before
    assert feature_key(cfg, 12, False, {"kind": "none"}, "ds", "train", data.x_train, view=0)["policy"] \
        != key["policy"]


def test_views_are_made_lazily_and_shared_by_trials(data, tmp_path):
    from tsweep.trainers.train import train

    cache = FeatureCache(tmp_path / "f", 10**8)
    train(config(freeze_cutoff=17, epochs=1, augmentation_views=4), data, feature_cache=cache)
    assert len(entries(cache, "view_features")) == 1  # one epoch: one view of the train split, no more
    assert {e["split"] for e in entries(cache, "prefix_features")} == {"val"}  # validation is not augmented
    # Another trial (other seed, head and rate) with the same backbone, weights, size, cutoff and policy
    # reuses the views the first made and makes only those it reaches first.
    train(config(freeze_cutoff=17, epochs=4, augmentation_views=4, seed=0, head_size=4, learning_rate=3e-3),
          data, feature_cache=cache)
    views = entries(cache, "view_features")
    assert sorted(e["view"] for e in views) == [0, 1, 2, 3] and all(e["split"] == "train" for e in views)
    # More views than before: only the new ones are computed.
    computed = cache.stats["computed"]
    train(config(freeze_cutoff=17, epochs=6, augmentation_views=6), data, feature_cache=cache)
    assert sorted(e["view"] for e in entries(cache, "view_features")) == list(range(6))
    assert cache.stats["computed"] == computed + 2


def test_cached_views_equal_training_end_to_end_on_the_same_views(data, tmp_path):
    # Feature extraction with 3 views over 4 epochs (view 0..2, then a repeat): the same losses and weights as
    # a model without augmentation trained end to end on those fixed view images, epoch by epoch.
    from tsweep.trainers.cached_train import digest
    from tsweep.trainers.model import build_model, calibrate_batchnorm, compile_model
    from tsweep.trainers.train import fit_epoch, train
    from tsweep.trainers.views import augment_view, view_of

    cfg = config(freeze_cutoff=17, epochs=4, augmentation_views=3, optimizer="sgd", learning_rate=0.05)
    cached = train(cfg, data, feature_cache=FeatureCache(tmp_path / "f", 10**8))

    plain = dataclasses.replace(cfg, augmentation="none")
    reference = build_model(plain, data.num_classes)
    calibrate_batchnorm(reference, data.x_train)  # random init: BatchNorm statistics from the raw images, as train()
    compile_model(reference, plain, data.num_classes, warmup=False)
    views = [augment_view(data.x_train, "light", v, digest(data.x_train)) for v in range(3)]
    history = [fit_epoch(reference, views[view_of(e, 3, cfg.seed)], data.y_train, (data.x_val, data.y_val), cfg, e)
               for e in range(cfg.epochs)]
    # rtol 1e-4: the cached prefix ran in batches of 32 where fit's forward pass runs in batches of 16, and CPU
    # convolutions (oneDNN's too) round differently per batch size; the losses agree to ~1e-6 here.
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose([h[key] for h in cached.history], [h[key] for h in history], rtol=1e-4,
                                   err_msg=key)
    ref = {w.path: np.asarray(w) for w in reference.trainable_weights}
    for w in cached.model.get_layer("probabilities").weights + cached.model.get_layer("hidden").weights:
        np.testing.assert_allclose(np.asarray(w), ref[w.path], atol=1e-5, err_msg=w.path)


def test_views_through_warmup_and_finetune_equal_end_to_end(data, tmp_path, monkeypatch):
    # One view (V=1): every epoch trains on view 0, through warm-up and fine-tuning above cutoff 12.
    from tsweep.trainers import model as model_module
    from tsweep.trainers.cached_train import digest
    from tsweep.trainers.train import train
    from tsweep.trainers.views import augment_view

    # Fine-tuning at a fine-tuning rate (TINY's 3e-3 is a head's): at 3e-3 Adam's per-element steps turn the
    # rounding differences below into a drift of 4e-3 in val_loss after two fine-tune epochs (seen), chaos
    # that says nothing about views; at 3e-4 both runs follow one trajectory.
    cfg = config(freeze_cutoff=12, epochs=3, augmentation_views=1, learning_rate=3e-4)
    cached = train(cfg, data, feature_cache=FeatureCache(tmp_path / "f", 10**8))
    view = augment_view(data.x_train, "light", 0, digest(data.x_train))
    fixed = dataclasses.replace(data, x_train=view)
    real = model_module.calibrate_batchnorm  # random init: BatchNorm statistics from the raw images, as above
    monkeypatch.setattr(model_module, "calibrate_batchnorm", lambda model, _: real(model, data.x_train))
    reference = train(dataclasses.replace(cfg, augmentation="none"), fixed)
    assert [h["phase"] for h in cached.history] == ["warmup", "finetune", "finetune"]
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):  # tolerance as in the test above
        np.testing.assert_allclose([h[key] for h in cached.history], [h[key] for h in reference.history],
                                   rtol=1e-4, atol=1e-6, err_msg=key)
    ref = {w.path: np.asarray(w) for w in reference.model.trainable_weights}
    assert ref
    # rtol 1e-3: the fine-tuned kernels take two epochs of gradients through activations rounded per batch size
    # (above); a few of their elements drift ~2e-4 relative (seen: 1 of 18816 in block_15_project, 2.6e-4).
    for w in cached.model.trainable_weights:
        np.testing.assert_allclose(np.asarray(w), ref[w.path], rtol=1e-3, atol=1e-5, err_msg=w.path)


@pytest.mark.parametrize("view", [None, 0], ids=["images", "views"])
def test_a_deeper_cutoff_is_made_from_a_shallower_cached_one(data, tmp_path, monkeypatch, view):
    from tsweep.trainers import split as split_module
    from tsweep.trainers.cached_train import PrefixFeatures
    from tsweep.trainers.model import build_model
    from tsweep.trainers.split import split_model

    cfg = config()
    model = build_model(cfg, data.num_classes)
    bridges = []
    real = split_module.bridge_model
    monkeypatch.setattr(split_module, "bridge_model", lambda *a, **k: bridges.append(a[2:4]) or real(*a, **k))
    cached = PrefixFeatures(model, cfg, data, data.x_train, FeatureCache(tmp_path / "f", 10**8))
    direct = PrefixFeatures(model, cfg, data, data.x_train, FeatureCache(tmp_path / "g", 10**8))

    shallow = cached.get(split_model(model, cfg, 10)[0], 10, False, "train", view)
    assert bridges == []  # nothing below cutoff 10 was cached: from the images
    deep = cached.get(split_model(model, cfg, 13)[0], 13, False, "train", view)
    top = cached.get(split_model(model, cfg, 17, pooled=True)[0], 17, True, "train", view)
    assert bridges == [(10, 13), (13, 17)]  # each from the deepest shallower one cached
    assert shallow.shape[1:] != deep.shape[1:] and top.ndim == 2
    # The same values as from the images (float32 activations, the same batches: rounding only)
    np.testing.assert_allclose(deep, direct.get(split_model(model, cfg, 13)[0], 13, False, "train", view),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(top, direct.get(split_model(model, cfg, 17, pooled=True)[0], 17, True, "train",
                                               view), rtol=1e-5, atol=1e-5)


def test_a_pass_keeps_the_activations_of_the_spaces_cutoffs_on_its_way(data, tmp_path, monkeypatch):
    # A feature-extraction trial (cutoff 17) of a space that also samples cutoffs 10 and 13: its pass through
    # the backbone keeps their activations, so a later trial fine-tuning from 13 runs no block again.
    from tsweep.trainers import split as split_module
    from tsweep.trainers.cached_train import PrefixFeatures
    from tsweep.trainers.model import build_model
    from tsweep.trainers.split import split_model

    bridges = []
    real = split_module.bridge_model
    monkeypatch.setattr(split_module, "bridge_model", lambda *a, **k: bridges.append(a[2:4]) or real(*a, **k))
    cache = FeatureCache(tmp_path / "f", 10**8, waypoints=[10, 13, 17])
    cfg = config(freeze_cutoff=17)
    model = build_model(cfg, data.num_classes)
    top = PrefixFeatures(model, cfg, data, data.x_train, cache).get(split_model(model, cfg, 17, pooled=True)[0],
                                                                     17, True, "train", 0)
    assert bridges == [(10, 13), (13, 17)]
    assert sorted(e["cutoff"] for e in entries(cache, "view_features")) == [10, 13, 17]
    computed = cache.stats["computed"]
    later = config(freeze_cutoff=13)
    deep = PrefixFeatures(model, later, data, data.x_train, cache).get(split_model(model, later, 13)[0], 13,
                                                                       False, "train", 0)
    assert cache.stats["computed"] == computed and bridges == [(10, 13), (13, 17)]  # found, not made again
    # The same values as straight from the images (float32 activations: rounding only)
    direct = PrefixFeatures(model, cfg, data, data.x_train, FeatureCache(tmp_path / "g", 10**8))
    np.testing.assert_allclose(deep, direct.get(split_model(model, cfg, 13)[0], 13, False, "train", 0),
                               rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(top, direct.get(split_model(model, cfg, 17, pooled=True)[0], 17, True, "train", 0),
                               rtol=1e-5, atol=1e-5)


def test_a_warmup_makes_the_finetune_cutoffs_activations_first(data, tmp_path, monkeypatch):
    # Warm-up trains on the whole backbone's output, fine-tuning on cutoff 12's: the blocks below 12 run once,
    # for the images and for each view (the warm-up's activations come from cutoff 12's).
    from tsweep.trainers import split as split_module
    from tsweep.trainers.train import train

    bridges = []
    real = split_module.bridge_model
    monkeypatch.setattr(split_module, "bridge_model", lambda *a, **k: bridges.append(a[2:4]) or real(*a, **k))
    cache = FeatureCache(tmp_path / "f", 10**8)
    train(config(freeze_cutoff=12, epochs=3, warmup_epochs=1, augmentation_views=2), data, feature_cache=cache)
    from tsweep.trainers.views import view_of

    assert bridges == [(12, 17)] * 2  # the warm-up's train view and the val images, each once
    made = sorted((e["what"], e["split"], e["cutoff"], e.get("view")) for e in
                  entries(cache, "prefix_features") + entries(cache, "view_features"))
    warm, fine = view_of(0, 2, 0), {view_of(e, 2, 0) for e in (1, 2)}
    train_views = {("view_features", "train", 17, warm)} | {("view_features", "train", 12, v) for v in {warm} | fine}
    assert made == sorted([("prefix_features", "val", 12, None), ("prefix_features", "val", 17, None),
                           *train_views])
