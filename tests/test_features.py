"""The frozen-prefix feature cache: clean splits, equivalence with end-to-end training, keys, locking, memory."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from tsweep.spaces.backbones import BACKBONES
from tsweep.spaces.config import TrialConfig
from tsweep.trainers.data import Dataset, load_dataset
from tsweep.trainers.features import FeatureCache

TINY = dict(backbone="mobilenet_v2", alpha=0.35, weights="none", image_size=32, batch_size=16, epochs=2,
            warmup_epochs=1, head_size=8, dropout=0.3, learning_rate=1e-3)


def config(**changes) -> TrialConfig:
    return TrialConfig.from_dict({**TINY, **changes})


@pytest.fixture(scope="module")
def data(shapes_dir, cache_dir) -> Dataset:
    return load_dataset(shapes_dir, 32, cache_dir=cache_dir)


# ---- (a) training on cached features == training end to end -------------------------------------------
@pytest.mark.numerics
@pytest.mark.parametrize("changes", [
    dict(backbone="mobilenet", alpha=0.25, freeze_cutoff=13),  # feature extraction: the sampled optimizer
    dict(freeze_cutoff=12, epochs=3, optimizer="sgd", learning_rate=0.01),  # warm-up, then two fine-tune epochs
], ids=["features", "warmup_finetune"])
def test_cached_training_equals_end_to_end(data, tmp_path, changes):
    # Same seed => same weights, same Dropout masks (dropout 0.3, the layer's own seed generator) and the
    # same batches: both call fit(shuffle=True) per epoch, whose permutation depends on the seed and N only.
    from tsweep.trainers.checkpoint import load_checkpoint, save_checkpoint
    from tsweep.trainers.train import train

    cfg = config(**changes)
    seen = []
    reference = train(cfg, data)
    cache = FeatureCache(tmp_path / "features", 10**8)
    cached = train(cfg, data, feature_cache=cache, on_epoch=lambda h, m: seen.append((len(h), m.name)))

    assert [h["phase"] for h in cached.history] == [h["phase"] for h in reference.history]
    assert [set(h) for h in cached.history] == [set(h) for h in reference.history]
    for key in ("loss", "val_loss", "accuracy", "val_accuracy"):
        np.testing.assert_allclose([h[key] for h in cached.history], [h[key] for h in reference.history],
                                   rtol=1e-4, err_msg=key)
    for a, b in zip(cached.model.weights, reference.model.weights, strict=True):
        assert a.path == b.path
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), atol=1e-5, err_msg=a.path)
    # The result is the full model: raw images in, probabilities out, compiled, seen by on_epoch each epoch.
    assert seen == [(i + 1, reference.model.name) for i in range(cfg.epochs)]
    assert cached.model.input_shape == (None, 32, 32, 3) and cached.model.output_shape == (None, 3)
    assert cache.stats["computed"] == (2 if cfg.is_feature_extraction() else 4)  # train + val per cutoff
    np.testing.assert_allclose(np.asarray(cached.model(data.x_val[:4])), np.asarray(reference.model(data.x_val[:4])),
                               atol=1e-5)
    assert cached.model.loss == reference.model.loss and cached.model.optimizer is not None  # compiled
    if not cfg.is_feature_extraction():
        # A checkpoint of it carries the optimizer that trained the suffix, slot for slot.
        save_checkpoint(tmp_path / "ckpt", cached.model, cached.history)
        loaded, _ = load_checkpoint(tmp_path / "ckpt", cfg, data.num_classes)
        for a, b in zip(loaded.optimizer.variables, cached.model.optimizer.variables, strict=True):
            np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


@pytest.mark.numerics
def test_augmented_trial_validates_on_cached_features(data, tmp_path):
    # Augmentation keeps training end to end; validation comes from the suffix on cached features and
    # matches fit's own validation, epoch by epoch, through warm-up and fine-tuning.
    from tsweep.trainers.train import train

    cfg = config(freeze_cutoff=12, epochs=2, augmentation="light", augmentation_views=0)  # online, 2 phases
    reference = train(cfg, data)
    cache = FeatureCache(tmp_path / "features", 10**8)
    cached = train(cfg, data, feature_cache=cache)
    assert cache.stats["computed"] == 2  # the val split at the whole backbone (warm-up) and at cutoff 12
    # staged once per phase, not again every epoch: the fine-tune phase's val features at cutoff 12 were made
    # first during warm-up (the whole backbone's come from them) and are served once, at its start
    assert cache.stats["memory_hits"] == 1
    for key in ("loss", "accuracy"):  # the same training: augmentation draws and batches unchanged
        np.testing.assert_allclose([h[key] for h in cached.history], [h[key] for h in reference.history],
                                   rtol=1e-5, err_msg=key)
    for key in ("val_loss", "val_accuracy"):
        np.testing.assert_allclose([h[key] for h in cached.history], [h[key] for h in reference.history],
                                   rtol=1e-4, atol=1e-6, err_msg=key)
    assert [set(h) for h in cached.history] == [set(h) for h in reference.history]


def test_can_use_cache():
    from tsweep.trainers.cached_train import can_use_cache

    assert can_use_cache(config(freeze_cutoff=12)) and can_use_cache(config())  # default cutoff = all frozen
    assert not can_use_cache(config(freeze_cutoff=12, augmentation="light", augmentation_views=0))
    assert can_use_cache(config(freeze_cutoff=12, augmentation="light", augmentation_views=2))
    assert not can_use_cache(config(freeze_cutoff=0))
    assert not can_use_cache(config(backbone="efficientnet_b0", alpha=1.0))


# ---- (b) split_model cuts every backbone cleanly at every cutoff -----------------------------------------
_BUILT: dict = {}


def built(name: str) -> tuple:
    """(config, model) of a backbone at its smallest size, random init, built once per module."""
    if name not in _BUILT:
        from tsweep.trainers.model import build_model

        size = max(32, BACKBONES[name].min_size)
        cfg = TrialConfig.from_dict(dict(backbone=name, weights="none", image_size=size, head_size=0, dropout=0))
        _BUILT[name] = cfg, build_model(cfg, 3)
    return _BUILT[name]


def check_values(name: str, cutoffs: range) -> None:
    """suffix(prefix(x)) == model(x) at each cutoff, on real activation scales."""
    from tsweep.trainers.model import calibrate_batchnorm
    from tsweep.trainers.split import split_model

    cfg, model = built(name)
    x = np.random.default_rng(0).uniform(0, 255, (3, cfg.image_size, cfg.image_size, 3)).astype("float32")
    calibrate_batchnorm(model, x)  # random init's BatchNorm statistics shrink activations to ~1e-11
    full = np.asarray(model(x, training=False))
    assert np.ptp(full, axis=0).max() > 1e-4  # the images give different outputs: a real comparison
    for cutoff in cutoffs:
        prefix, suffix = split_model(model, cfg, cutoff)
        np.testing.assert_allclose(np.asarray(suffix(prefix(x, training=False), training=False)), full,
                                   rtol=1e-5, atol=1e-6, err_msg=f"{name} cutoff {cutoff}")


@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_split_model_is_a_clean_cut_at_every_cutoff(name):
    # Keras itself refuses a cut that a later layer crosses ("Graph disconnected"); values: the tests below.
    import keras

    from tsweep.trainers.backbones import cut_index
    from tsweep.trainers.cached_train import STOCHASTIC_BACKBONES
    from tsweep.trainers.model import set_cutoff
    from tsweep.trainers.split import split_model

    cfg, model = built(name)
    spec, base = BACKBONES[name], model.get_layer("backbone")
    stochastic = any(isinstance(layer, (keras.layers.Dropout, keras.layers.SpatialDropout2D,
                                        keras.layers.GaussianNoise)) for layer in base.layers)
    assert stochastic == (name in STOCHASTIC_BACKBONES)
    shared = {id(w) for w in model.weights}
    for cutoff in range(1, spec.max_cutoff + 1):
        prefix, suffix = split_model(model, cfg, cutoff)  # raises unless the cut is clean
        inner = {"backbone_prefix": [], "backbone_suffix": []}
        for part in (prefix, suffix):
            for layer in part.layers:
                if layer.name in inner:
                    inner[layer.name] = [la.name for la in layer.layers if not isinstance(la, keras.layers.InputLayer)]
        if cutoff == spec.max_cutoff:
            inner["backbone_prefix"] = [la.name for la in base.layers[1:]]
        # The prefix is exactly what freeze() freezes at this cutoff, the suffix exactly the rest.
        first = cut_index(base, spec, cutoff)
        assert sorted(inner["backbone_prefix"]) == sorted(la.name for la in base.layers[1:first])
        assert sorted(inner["backbone_suffix"]) == sorted(la.name for la in base.layers[first:])
        assert prefix.output_shape == base.get_layer(spec.boundaries[cutoff - 1]).output.shape
        assert suffix.output_shape == model.output_shape
        assert {id(w) for w in suffix.weights} <= shared and {id(w) for w in prefix.weights} <= shared
        # Same trainable variables in the same order: a checkpoint's optimizer slots rely on it.
        set_cutoff(model, cfg, cutoff)
        assert [id(v) for v in suffix.trainable_variables] == [id(v) for v in model.trainable_variables]
    with pytest.raises(ValueError, match="cutoff 0"):
        split_model(model, cfg, 0)
    with pytest.raises(ValueError, match="pooled"):
        split_model(model, cfg, 1, pooled=True)


@pytest.mark.numerics
def test_split_model_values_mobilenet_v2():
    check_values("mobilenet_v2", range(10, 18, 3))  # pooled=True: in the training equivalence tests above


@pytest.mark.numerics
@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(BACKBONES))
def test_split_model_values_at_every_cutoff(name):
    check_values(name, range(1, BACKBONES[name].max_cutoff + 1))


# ---- (c) cache keys and computing once -------------------------------------------------------------------
def test_feature_keys_never_reuse_stale_features(shapes_dir, tmp_path):
    from tsweep.trainers.cached_train import decoded_key, feature_key, weights_identity

    folder = shutil.copytree(shapes_dir, tmp_path / "shapes")
    weights = tmp_path / "w.h5"
    weights.write_bytes(b"not really weights")
    cache = FeatureCache(tmp_path / "features", 10**7)
    calls = []

    def features(cfg: TrialConfig, cutoff: int) -> np.ndarray:
        data = load_dataset(folder, cfg.image_size, cache_dir=tmp_path / "decoded")
        parts = feature_key(cfg, cutoff, False, weights_identity(cfg, data.x_train), decoded_key(data), "train",
                            data.x_train)
        return cache.get_or_compute(parts, lambda: calls.append(1) or np.full(3, len(calls), "float32"))

    cfg = config(weights=str(weights))
    first = features(cfg, 12)
    np.testing.assert_array_equal(features(cfg, 12), first)  # the same key: reused
    assert len(calls) == 1
    features(cfg, 13)  # another cutoff
    features(config(weights=str(weights), image_size=40), 12)  # another size
    os.utime(weights, ns=(time.time_ns(), time.time_ns() + 10**9))  # the weights file was replaced
    features(cfg, 12)
    assert len(calls) == 4
    image = next((folder / "train" / "circles").iterdir())
    image.write_bytes((folder / "train" / "squares" / next((folder / "train" / "squares").iterdir()).name)
                      .read_bytes())  # one image changed: a new decoded cache key
    assert features(cfg, 12)[0] == 5 and len(calls) == 5
    seeds = [features(config(weights="none", seed=s), 12)[0] for s in (0, 1, 0)]  # random init: per seed
    assert seeds == [6, 7, 6]


class SignalledFlock:
    """Stands in for the `fcntl` module inside tsweep.trainers.features: an exclusive flock first tries without
    blocking and, when another holder has the lock, calls `on_wait()` before it blocks. So a racer says that it
    found the entry's lock held and waits, and the test needs no sleep to make the racers overlap."""

    def __init__(self, on_wait):
        import fcntl

        self._fcntl, self._on_wait = fcntl, on_wait

    def __getattr__(self, name):
        return getattr(self._fcntl, name)

    def flock(self, fd, operation):
        if operation == self._fcntl.LOCK_EX:
            try:
                return self._fcntl.flock(fd, operation | self._fcntl.LOCK_NB)
            except BlockingIOError:
                self._on_wait()
        return self._fcntl.flock(fd, operation)


_RACER = """
import sys
import numpy as np
from tsweep.trainers import features
{spy}
def compute():  # only a racer that did not wait for the lock gets here
    open(sys.argv[2] + "/computed-" + sys.argv[3], "w").close()
    return np.arange(1000, dtype="float32")
features.fcntl = SignalledFlock(lambda: print("waiting", flush=True))
print(features.FeatureCache(sys.argv[1], 0).get_or_compute({{"race": 1}}, compute).sum(), flush=True)
"""


def test_racing_threads_and_processes_compute_once(tmp_path, monkeypatch):
    """One racer computes while it holds the entry's lock; a thread and two processes find the lock held, wait
    for it, then read the stored array instead of computing it again."""
    import inspect
    import queue

    from tsweep.trainers import features

    marks, expected = tmp_path / "marks", np.arange(1000, dtype="float32")
    marks.mkdir()
    events: queue.Queue = queue.Queue()  # (racer, "waiting" or what it finally printed / returned)
    monkeypatch.setattr(features, "fcntl", SignalledFlock(lambda: events.put(("thread", "waiting"))))
    cache = FeatureCache(tmp_path / "cache", 10**6)
    computing, finish = threading.Event(), threading.Event()
    results = {}

    def compute_holding_the_lock():
        (marks / "computed-first").touch()
        computing.set()
        assert finish.wait(120), "the other racers never all waited"
        return expected

    def compute():  # only a racer that did not wait for the lock gets here
        (marks / "computed-thread").touch()
        return expected

    def race(name, fn):
        results[name] = cache.get_or_compute({"race": 1}, fn)
        events.put((name, "returned"))

    def relay(name, stream):  # a racer process's lines
        for line in stream:
            events.put((name, line.strip()))

    first = threading.Thread(target=race, args=("first", compute_holding_the_lock))
    first.start()
    assert computing.wait(60), "the first racer never started computing"
    racers = [threading.Thread(target=race, args=("thread", compute))]
    procs = [subprocess.Popen([sys.executable, "-c", _RACER.format(spy=inspect.getsource(SignalledFlock)),
                               str(tmp_path / "cache"), str(marks), f"process-{i}"], stdout=subprocess.PIPE, text=True)
             for i in range(2)]
    racers += [threading.Thread(target=relay, args=(f"process-{i}", proc.stdout)) for i, proc in enumerate(procs)]
    for t in racers:
        t.start()
    try:
        arrived = [events.get(timeout=120) for _ in range(3)]  # one event from each of the three racers
    finally:
        finish.set()  # the first racer stores its array and lets go of the lock
    first.join(60)
    for t in racers:
        t.join(60)
    assert all(proc.wait(60) == 0 for proc in procs)
    last = {}
    while not events.empty():
        who, what = events.get()
        last[who] = what
    assert sorted(arrived) == [("process-0", "waiting"), ("process-1", "waiting"), ("thread", "waiting")]
    assert [p.name for p in marks.iterdir()] == ["computed-first"]  # computed once, by the lock's holder
    assert cache.stats["computed"] == 1
    assert last == {"first": "returned", "thread": "returned", "process-0": str(expected.sum()),
                               "process-1": str(expected.sum())}
    for r in results.values():
        np.testing.assert_array_equal(r, expected)
    assert sorted(results) == ["first", "thread"]


# ---- (d) memory budget, spilling, float16 ----------------------------------------------------------------
def test_memory_budget_evicts_and_spills_to_disk(tmp_path):
    arrays = {i: np.random.default_rng(i).normal(size=(50, 100)).astype("float32") for i in range(3)}  # 20 kB
    cache = FeatureCache(tmp_path, memory_budget_bytes=30_000)

    def get(i: int) -> np.ndarray:
        return cache.get_or_compute({"i": i}, lambda: arrays[i])

    for i in range(3):
        np.testing.assert_array_equal(get(i), arrays[i])
    assert cache.in_memory_keys() == [cache.key({"i": 2})] and cache.in_memory_bytes() <= 30_000
    assert cache.stats["evictions"] == 2
    np.testing.assert_array_equal(get(0), arrays[0])  # evicted: read back from disk
    assert cache.stats["disk_loads"] == 1 and cache.in_memory_keys() == [cache.key({"i": 0})]
    big = np.ones((100, 100), "float32")  # 40 kB > budget: never held in memory, memory-mapped
    for _ in range(2):
        served = cache.get_or_compute({"big": 1}, lambda: big)
        assert isinstance(served, np.memmap) and not served.flags.writeable
        np.testing.assert_array_equal(served, big)
    assert cache.stats["computed"] == 4 and cache.stats["mmap_loads"] == 2

    half = FeatureCache(tmp_path / "f16", memory_budget_bytes=0, dtype="float16")
    stored = half.get_or_compute({"i": 1}, lambda: arrays[1])
    assert stored.dtype == np.float16
    np.testing.assert_allclose(stored, arrays[1], rtol=1e-3, atol=1e-3)
    full_bytes = cache.path({"i": 1}).stat().st_size
    assert half.path({"i": 1}).stat().st_size < 0.52 * full_bytes
    assert half.key({"i": 1}) != cache.key({"i": 1})  # the stored dtype is part of the key


def test_default_memory_budget_is_a_share_of_ram(tmp_path):
    from tsweep.trainers.features import default_feature_cache, default_memory_budget

    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    assert default_memory_budget() == int(ram * 0.25) and default_memory_budget(0.5) == int(ram * 0.5)
    cache = default_feature_cache(tmp_path, fraction=0.1, dtype="float16")
    assert cache.directory == tmp_path / "features" and cache.memory_budget_bytes == int(ram * 0.1)


def test_a_failed_compute_leaves_no_entry_and_releases_the_lock(tmp_path):
    cache = FeatureCache(tmp_path, 0)
    with pytest.raises(RuntimeError):
        cache.get_or_compute({"x": 1}, lambda: (_ for _ in ()).throw(RuntimeError("boom")))
    assert not list(Path(tmp_path).glob("*.npy")) and not list(Path(tmp_path).glob("*.tmp"))
    assert cache.get_or_compute({"x": 1}, lambda: np.zeros(2))[0] == 0
