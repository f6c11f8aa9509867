"""Flip test-time augmentation: the mirror in built-in layers is exact, the TTA model is the mean of the model on
the image and its mirror, `--tta flip` bakes it into every export format, and `tsweep predict --tta flip` does it
for exports without it."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.fake_sweeps import demo_trials, sweep_info, tiny_export, write_fake_sweep
from tsweep.search.formats import FORMATS, missing_modules

AVAILABLE = [name for name, fmt in FORMATS.items() if not missing_modules(fmt)]


def small_portable(classes: int = 3):
    """A small convolutional model of built-in layers, not mirror-symmetric (a 3x3 kernel and a dense head)."""
    import keras

    keras.utils.set_random_seed(3)
    image = keras.Input((12, 12, 3), name="image")
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(image)
    x = keras.layers.Conv2D(4, 3, activation="relu")(x)
    x = keras.layers.Flatten()(x)
    return keras.Model(image, keras.layers.Dense(classes, activation="softmax")(x), name="small")


def test_the_mirror_is_exact():
    from tsweep.search.ensemble_model import mirror_model

    x = np.random.default_rng(0).uniform(0, 255, (4, 12, 12, 3)).astype("float32")
    assert np.array_equal(mirror_model(12).predict(x, verbose=0), x[:, :, ::-1])


@pytest.mark.numerics
def test_flip_tta_is_the_mean_of_the_image_and_its_mirror():
    """Within 1e-6: the same graph operations on bit-identical inputs, averaged in float32."""
    from tsweep.search.ensemble_model import with_flip_tta

    model = small_portable()
    tta = with_flip_tta(model)
    x = np.random.default_rng(1).uniform(0, 255, (6, 12, 12, 3)).astype("float32")
    plain, mirrored = model.predict(x, verbose=0), model.predict(x[:, :, ::-1].copy(), verbose=0)
    assert np.max(np.abs(plain - mirrored)) > 1e-3  # the model itself is not mirror-symmetric
    np.testing.assert_allclose(tta.predict(x, verbose=0), (plain + mirrored) / 2, atol=1e-6)


def flip_export(tmp_path_factory, shapes_dir, cache_dir, formats: list[str]):
    """A tiny sweep's winner exported with --tta flip in `formats` (each checked by its own runtime against the
    TTA model, or nothing is exported)."""
    from tsweep.search.export import export_winner

    root = tmp_path_factory.mktemp("tta") / "tiny"
    data = {"data_dir": str(shapes_dir), "val_fraction": 0.2, "seed": 0, "cache_dir": str(cache_dir)}
    write_fake_sweep(root, demo_trials(), sweep_info("tiny", data=data, max_epochs=4))
    return export_winner(root, tta="flip", formats=",".join(formats), progress=lambda _: None)


@pytest.fixture(scope="module")
def tta_export(tmp_path_factory, shapes_dir, cache_dir):
    # The default formats here; every installed one in the slow test below (LiteRT int8 and ONNX take minutes).
    return flip_export(tmp_path_factory, shapes_dir, cache_dir, ["keras", "saved_model"])


@pytest.mark.slow
def test_flip_tta_exports_to_every_installed_format(tmp_path_factory, shapes_dir, cache_dir):
    export = flip_export(tmp_path_factory, shapes_dir, cache_dir, AVAILABLE)
    assert list(json.loads((export / "metrics.json").read_text())["parity"]["formats"]) == AVAILABLE


def test_an_export_with_flip_tta_records_its_effect(tta_export):
    import keras

    from tsweep.trainers.data import load_dataset

    metrics = json.loads((tta_export / "metrics.json").read_text())
    assert list(metrics["parity"]["formats"]) == ["keras", "saved_model"]
    effect = metrics["tta"]
    assert effect["mode"] == "flip" and "validation" not in effect  # the retrained winner trained on validation
    assert metrics["test"] == effect["test"]["with"] and {"loss", "accuracy"} <= set(effect["test"]["without"])
    assert json.loads((tta_export / "config.json").read_text())["tta"] == "flip"
    card = (tta_export / "MODEL_CARD.md").read_text()
    assert "## Test-time augmentation" in card and "without;" in card and "| `tta` | flip |" in card
    model = keras.saving.load_model(tta_export / "model.keras", safe_mode=True)
    info = json.loads((tta_export.parent / "sweep.json").read_text())
    x = load_dataset(image_size=32, **info["data"]).x_test.astype("float32")
    # the mean over an image and its mirror gives the mirror the same probabilities
    np.testing.assert_allclose(model.predict(x, verbose=0), model.predict(x[:, :, ::-1].copy(), verbose=0), atol=1e-6)
    test_accuracy = float(np.mean(model.predict(x, verbose=0).argmax(1) == load_dataset(
        image_size=32, **info["data"]).y_test))
    assert test_accuracy == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)


def test_predict_flips_exports_without_tta_and_not_those_with_it(tta_export, tmp_path_factory, shapes_dir,
                                                                 cache_dir, monkeypatch):
    from tsweep.search import predict
    from tsweep.search.predict import load_export, predict_images, probabilities
    from tsweep.trainers.images import decode_image

    plain = tiny_export(tmp_path_factory.getbasetemp(), shapes_dir, cache_dir) / "export"
    photos = sorted((shapes_dir / "test").glob("*/*.jpg"))[::4]
    model, classes, size = load_export(plain)
    x = np.stack([decode_image(p, size) for p in photos]).astype("float32")
    expected = probabilities((model.predict(x, verbose=0) + model.predict(x[:, :, ::-1].copy(), verbose=0)) / 2,
                             len(classes))
    rows, _ = predict_images(plain, photos, k=len(classes), tta="flip")
    for (path, preds), want in zip(rows, expected):
        got = dict(preds)
        assert [got[c] for c in classes] == pytest.approx(want.tolist(), abs=1e-6), path
    calls = []
    runner_of = predict.open_export

    def counting(path):
        runner, names, side = runner_of(path)
        original = runner.predict_batch
        runner.predict_batch = lambda batch: calls.append(len(batch)) or original(batch)
        return runner, names, side

    monkeypatch.setattr(predict, "open_export", counting)
    predict_images(tta_export, photos, tta="flip")
    assert len(calls) == 1  # flip TTA is inside this export: one pass, not two


def test_run_and_export_take_ensemble_and_tta_flags():
    from tsweep.search.cli import build_parser
    from tsweep.search.options import options_from_args

    parser = build_parser()
    opts = options_from_args(parser.parse_args(["run", "--data", "d", "--ensemble", "3", "--tta", "flip"]))
    assert (opts.ensemble, opts.tta) == (3, "flip")
    assert (options_from_args(parser.parse_args(["run", "--data", "d"])).ensemble, opts.tta) == (0, "flip")
    args = parser.parse_args(["export", "results/x", "--ensemble", "5", "--tta", "flip"])
    assert (args.ensemble, args.tta) == (5, "flip")
    assert parser.parse_args(["export", "results/x"]).ensemble is None  # the sweep's own then
    assert parser.parse_args(["predict", "e", "i.jpg", "--tta", "flip"]).tta == "flip"
