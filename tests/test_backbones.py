"""Backbone registry, freeze cut points, weight loading errors and the in-model Preprocess layer.

Every backbone is built once (weights="none", 32 px; 75 px for InceptionV3) and shared by the tests.
"""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import keras
import numpy as np
import pytest

from tsweep.errors import SweepConfigError, out_of_range
from tsweep.spaces.backbones import BACKBONES, describe, get_spec
from tsweep.trainers.backbones import boundary_indices, cut_index, freeze
from tsweep.trainers.layers import Preprocess
from tsweep.trainers.pretrained import build_backbone

WEIGHTS = Path(__file__).resolve().parents[1].parent / "shared" / "weights"
NAMES = sorted(BACKBONES)
_BUILT: dict[str, keras.Model] = {}


def small_size(name: str) -> int:
    return max(32, BACKBONES[name].min_size)


@pytest.fixture(scope="module")
def built():
    """Backbone name -> its model, built on first use and reused by every test of this module."""

    def get(name: str) -> keras.Model:
        if name not in _BUILT:
            _BUILT[name] = build_backbone(name, small_size(name), weights="none")
        return _BUILT[name]

    yield get
    _BUILT.clear()


def ancestors(layer: keras.layers.Layer) -> set[str]:
    seen: set[str] = set()
    stack = [layer]
    while stack:
        current = stack.pop()
        if current.name not in seen:
            seen.add(current.name)
            stack.extend(parent.operation for node in current._inbound_nodes for parent in node.parent_nodes)
    return seen


@pytest.mark.parametrize("name", NAMES)
def test_boundaries_are_ordered_cut_points_ending_at_the_output(built, name):
    model, spec = built(name), BACKBONES[name]
    names = [layer.name for layer in model.layers]
    for boundary in spec.boundaries:
        assert boundary in names, f"{name}: no layer {boundary}"
    idx = boundary_indices(model, spec)
    assert idx == sorted(set(idx)), f"{name}: boundaries not strictly increasing: {idx}"
    assert idx[-1] == len(names) - 1 and model.layers[-1].name == spec.boundaries[-1]
    assert len(spec.labels) == len(spec.boundaries) == spec.max_cutoff
    # A clean cut: the frozen prefix is exactly the boundary layer and everything it depends on.
    for boundary, i in zip(spec.boundaries, idx):
        assert ancestors(model.get_layer(boundary)) == set(names[: i + 1]), f"{name}: {boundary}"


@pytest.mark.parametrize("name", NAMES)
def test_freeze_prefix(built, name):
    model, spec = built(name), BACKBONES[name]
    n = len(model.layers)
    assert freeze(model, name, spec.max_cutoff) == n
    assert not any(layer.trainable for layer in model.layers) and not model.trainable_weights
    assert freeze(model, spec, 0) == 0  # also undoes the full freeze
    assert all(layer.trainable for layer in model.layers) and model.trainable_weights
    mid = max(1, spec.max_cutoff // 2)
    end = boundary_indices(model, spec)[mid - 1]
    assert freeze(model, spec.constructor, mid) == end + 1 == cut_index(model, spec, mid)
    assert [layer.trainable for layer in model.layers] == [False] * (end + 1) + [True] * (n - end - 1)
    assert model.layers[end].name == spec.boundaries[mid - 1]
    freeze(model, spec, spec.max_cutoff)


@pytest.mark.parametrize("name", NAMES)
def test_out_of_range_cutoff(built, name):
    model, top = built(name), BACKBONES[name].max_cutoff
    for bad in (-1, top + 1):
        with pytest.raises(SweepConfigError) as info:
            freeze(model, name, bad)
        assert str(info.value).startswith(out_of_range("freeze_cutoff", 0, top, bad))


@pytest.mark.parametrize("name", NAMES)
def test_too_small_image_size(name):
    low = BACKBONES[name].min_size
    with pytest.raises(SweepConfigError) as info:
        build_backbone(name, low - 1, weights="none")
    assert out_of_range("image_size", low, 2048, low - 1) in str(info.value)


def test_get_spec_spellings_and_unknown():
    assert get_spec("MobileNetV2") is get_spec("mobilenet_v2") is get_spec("MOBILENET-V2")
    assert get_spec("EfficientNetB0").name == "efficientnet_b0"
    with pytest.raises(SweepConfigError) as info:
        get_spec("alexnet")
    message = str(info.value)
    assert "unknown backbone 'alexnet'" in message and "`tsweep backbones`" in message
    assert all(name in message for name in NAMES)


def test_describe_rows():
    rows = {row["name"]: row for row in describe()}
    assert set(rows) == set(NAMES)
    row = rows["mobilenet_v2"]
    assert (row["constructor"], row["max_cutoff"], row["preprocess"]) == ("MobileNetV2", 17, "tf")
    assert row["cut_points"][0] == "block_1" and row["cut_points"][-1] == "top"


def test_importing_backbones_skips_keras():
    code = "import sys, tsweep.trainers.backbones; print('keras' in sys.modules, 'tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_alpha_errors():
    with pytest.raises(SweepConfigError, match="MobileNet family"):
        build_backbone("vgg16", 32, weights="none", alpha=0.5)
    with pytest.raises(SweepConfigError, match="only at alpha 0.25, 0.5, 0.75, 1.0"):
        build_backbone("mobilenet", 128, weights="imagenet", alpha=0.35)  # fails before any download


def test_missing_weights_path(tmp_path):
    missing = tmp_path / "nope_no_top.h5"
    with pytest.raises(SweepConfigError, match="imagenet") as info:
        build_backbone("mobilenet_v2", 32, weights=str(missing))
    assert str(missing) in str(info.value)


def test_imagenet_offline_names_the_alternative():
    try:
        build_backbone("mobilenet_v2", 96, weights="imagenet", alpha=0.35)
    except SweepConfigError as e:
        assert "download of ImageNet weights for mobilenet_v2 failed" in str(e) and "--weights" in str(e)
    else:
        pytest.skip("the ImageNet download succeeded: this machine is online")


@pytest.mark.parametrize("name", [n for n in NAMES if BACKBONES[n].module])  # small_cnn: no Keras module
def test_preprocess_matches_keras(name):
    spec = BACKBONES[name]
    x = np.random.default_rng(0).uniform(0, 255, (3, 8, 8, 3)).astype("float32")
    expected = importlib.import_module(f"keras.applications.{spec.module}").preprocess_input(x.copy())
    got = keras.ops.convert_to_numpy(Preprocess(spec.preprocess)(x))
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("mode", ["tf", "caffe", "torch", "none"])
def test_preprocess_save_load_graph_mode_and_dtypes(tmp_path, mode):
    inputs = keras.Input((8, 8, 3))
    model = keras.Model(inputs, Preprocess(mode, name="preprocess")(inputs))
    x = np.random.default_rng(1).uniform(0, 255, (5, 8, 8, 3)).astype("float32")
    before = model.predict(x, batch_size=2, verbose=0)  # graph mode, with a short last batch
    model.save(tmp_path / "m.keras")
    loaded = keras.models.load_model(tmp_path / "m.keras", safe_mode=True)
    assert loaded.get_layer("preprocess").mode == mode
    np.testing.assert_allclose(loaded.predict(x, verbose=0), before, rtol=1e-5, atol=1e-5)
    # float16 inputs, computed in float16 under a mixed policy or cast to float32; uint8 images too.
    half = Preprocess(mode, dtype="mixed_float16")(x.astype("float16"))
    assert keras.backend.standardize_dtype(half.dtype) == "float16"
    np.testing.assert_allclose(keras.ops.convert_to_numpy(half).astype("float32"), before, atol=0.15)
    np.testing.assert_allclose(keras.ops.convert_to_numpy(Preprocess(mode)(x.astype("float16"))), before,
                               atol=0.15)
    pixels = np.round(x).astype("uint8")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(Preprocess(mode)(pixels)),
                               model.predict(pixels.astype("float32"), verbose=0), rtol=1e-5, atol=1e-5)


def test_preprocess_unknown_mode():
    with pytest.raises(SweepConfigError, match="choose one of tf, caffe, torch, none"):
        Preprocess("inception")


def shared_weights(filename: str) -> str:
    if not WEIGHTS.is_dir():
        pytest.skip(f"{WEIGHTS} is absent: the real ImageNet weights live in ../shared/weights")
    return str(WEIGHTS / filename)


def first_kernel(model: keras.Model) -> np.ndarray:
    return keras.ops.convert_to_numpy(model.get_layer("Conv1").kernel)


@pytest.mark.shared
@pytest.mark.parametrize("filename, alpha", [("mobilenet_v2_1.0_224_no_top.h5", 1.0),
                                             ("mobilenet_v2_0.35_224_no_top.h5", 0.35)])
def test_shared_mobilenet_v2_weights_load(filename, alpha):
    path = shared_weights(filename)
    loaded = build_backbone("mobilenet_v2", 96, weights=path, alpha=alpha)
    random = build_backbone("mobilenet_v2", 96, weights="none", alpha=alpha)
    assert first_kernel(loaded).shape == first_kernel(random).shape
    assert not np.allclose(first_kernel(loaded), first_kernel(random))


@pytest.mark.shared
def test_shared_weights_of_another_alpha_raise():
    path = shared_weights("mobilenet_v2_1.0_224_no_top.h5")
    with pytest.raises(SweepConfigError) as info:
        build_backbone("mobilenet_v2", 96, weights=path, alpha=0.35)
    message = str(info.value)
    assert path in message and "mobilenet_v2" in message and "alpha 0.35" in message


def test_a_weights_file_is_read_once_per_process_until_it_changes(tmp_path, monkeypatch):
    import os

    path = tmp_path / "tiny.weights.h5"
    build_backbone("mobilenet_v2", 32, weights="none", alpha=0.35).save_weights(path)
    reads = []
    original = keras.Model.load_weights
    monkeypatch.setattr(keras.Model, "load_weights",
                        lambda self, *a, **k: (reads.append(a[0]), original(self, *a, **k)))
    first = build_backbone("mobilenet_v2", 32, weights=str(path), alpha=0.35)
    second = build_backbone("mobilenet_v2", 32, weights=str(path), alpha=0.35)
    assert len(reads) == 1  # the second build copied the weights this process already had
    np.testing.assert_array_equal(first_kernel(first), first_kernel(second))
    assert first_kernel(first) is not first_kernel(second)
    # A new file at the same path (another size or mtime) is read again.
    build_backbone("mobilenet_v2", 32, weights="none", alpha=0.35).save_weights(path)
    os.utime(path, ns=(1, 1))
    third = build_backbone("mobilenet_v2", 32, weights=str(path), alpha=0.35)
    assert len(reads) == 2 and not np.allclose(first_kernel(third), first_kernel(first))


def test_a_reused_worker_hands_out_one_backbone_with_its_pretrained_weights_back(tmp_path):
    """Within reuse_backbones (a Ray trial), the next build of the same backbone and weights file is the same
    object, its weights put back to the file's after the previous trial fine-tuned them; outside, and for
    random init, every build is new."""
    from tsweep.trainers.pretrained import reuse_backbones

    path = tmp_path / "tiny.weights.h5"
    build_backbone("mobilenet_v2", 32, weights="none", alpha=0.35).save_weights(path)
    pretrained = build_backbone("mobilenet_v2", 32, weights=str(path), alpha=0.35).get_weights()
    with reuse_backbones():
        first = build_backbone("mobilenet_v2", 32, weights=str(path), alpha=0.35)
        first.set_weights([w + 1.0 for w in first.get_weights()])  # the trial trained it
        second = build_backbone("mobilenet_v2", 32, weights=str(path), alpha=0.35)
        assert second is first
        for got, want in zip(second.get_weights(), pretrained):
            np.testing.assert_array_equal(got, want)
        assert build_backbone("mobilenet_v2", 32, weights="none", alpha=0.35) is not first
        assert build_backbone("mobilenet_v2", 48, weights=str(path), alpha=0.35) is not first
    assert build_backbone("mobilenet_v2", 32, weights=str(path), alpha=0.35) is not first


def test_a_model_of_a_reused_backbone_trains_like_a_new_one(tmp_path, shapes_dir, cache_dir):
    """Two trials of one config in a reused worker (the second on the first's backbone, after the first
    fine-tuned it) give the same history as that config in a new process would: nothing carries over."""
    from tsweep.spaces.config import TrialConfig
    from tsweep.trainers.data import load_dataset
    from tsweep.trainers.pretrained import reuse_backbones
    from tsweep.trainers.runtime import fresh_session
    from tsweep.trainers.train import train

    path = tmp_path / "tiny.weights.h5"
    build_backbone("mobilenet_v2", 32, weights="none", alpha=0.35).save_weights(path)
    data = load_dataset(shapes_dir, image_size=32, cache_dir=cache_dir)
    cfg = TrialConfig(backbone="mobilenet_v2", alpha=0.35, weights=str(path), image_size=32, epochs=2,
                      warmup_epochs=1, freeze_cutoff=14, head_size=8, batch_size=16, learning_rate=1e-2)
    fresh_session()
    alone = train(cfg, data).history
    with reuse_backbones():
        fresh_session()
        train(cfg, data)
        fresh_session()
        again = train(cfg, data).history
    assert len(alone) == len(again) == 2
    for a, b in zip(alone, again):
        assert a["loss"] == pytest.approx(b["loss"], rel=1e-5) and a["val_accuracy"] == b["val_accuracy"]
