"""Exports that run anywhere: a `.keras` of Keras's own layers that loads without tsweep, LiteRT (float32 and
int8) and ONNX opt-in by `--formats`, each checked by its own runtime against the trained model (figures in
metrics.json and the model card), `tsweep predict` on any of them, and the model card's snippets run as written.

LiteRT and ONNX tests skip, saying which `pip install` they need, when the extras are not installed.
"""

from __future__ import annotations

import ast
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from tests.fake_sweeps import TINY, demo_trials, sweep_info, write_fake_sweep
from tsweep.errors import SweepConfigError
from tsweep.search.formats import DEFAULT_FORMATS, FORMATS, check_formats, install_hint, missing_modules, parse_formats

AVAILABLE = [name for name, fmt in FORMATS.items() if not missing_modules(fmt)]
MODES = ("tf", "caffe", "torch", "none")

# Prepended to code run in a fresh Python where `tsweep` (and, for LiteRT and ONNX, TensorFlow and Keras) cannot
# be imported, as on a machine that never installed them.
BLOCKER = """
import importlib.abc, sys
BLOCKED = {blocked!r}
class _Blocked(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ModuleNotFoundError(f"No module named {{name!r}} (blocked by the test)", name=name)
        return None
sys.meta_path.insert(0, _Blocked())
for top in BLOCKED:
    try:
        __import__(top)
    except ModuleNotFoundError:
        pass
    else:
        raise SystemExit(f"{{top}} is importable")
"""


def run_without(code: str, cwd: Path, blocked: tuple[str, ...] = ("tsweep",)) -> subprocess.CompletedProcess:
    out = subprocess.run([sys.executable, "-c", BLOCKER.format(blocked=set(blocked)) + code], cwd=cwd,
                         capture_output=True, text=True, timeout=600,
                         env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr[-4000:]
    return out


def needs(*names: str) -> None:
    missing = [n for n in names if n not in AVAILABLE]
    if missing:
        extras = [FORMATS[n].extra for n in missing]
        pytest.skip(f"format(s) {', '.join(missing)} need {install_hint(extras)}")


def test_parse_formats():
    assert parse_formats(DEFAULT_FORMATS) == ("keras", "saved_model")
    assert parse_formats("onnx, TFLite ,litert-int8,onnx") == ("keras", "litert", "litert-int8", "onnx")
    assert parse_formats(["saved_model"]) == ("keras", "saved_model")  # keras is always written: the reference
    for bad, message in (("keras,pt", "unknown format 'pt': choose from keras, saved_model, litert"),
                         (" , ", "`--formats` is empty")):
        with pytest.raises(SweepConfigError, match=message):
            parse_formats(bad)


def test_a_missing_extra_is_a_clear_error_before_any_trial(monkeypatch, tmp_path, shapes_dir, capsys):
    import importlib.util

    from tsweep.search.cli import main
    from tsweep.search.sweep import SweepOptions, check_options

    find_spec = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("onnxruntime", "ai_edge_litert") else find_spec(name, *a))
    with pytest.raises(SweepConfigError, match=r'onnx needs [\w, ]*onnxruntime, not installed: pip install '
                                               r'"transfer-sweep\[onnx\]"'):
        check_formats("keras,onnx")
    with pytest.raises(SweepConfigError, match=r"litert needs ai_edge_litert; litert-int8 needs ai_edge_litert.*"
                                               r'pip install "transfer-sweep\[litert\]"'):
        check_options(SweepOptions(data=str(shapes_dir), formats="litert,litert-int8"))
    assert check_formats("saved_model") == ("keras", "saved_model")  # the defaults need no extra
    results = tmp_path / "results"
    assert main(["run", "--data", str(shapes_dir), "--results-dir", str(results), "--formats", "onnx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("tsweep: error: `--formats keras,onnx`: onnx needs ") and "onnxruntime" in err
    assert 'pip install "transfer-sweep[onnx]"' in err
    assert not results.exists()  # refused before anything was written, Ray never started
    # `tsweep export` refuses before loading data or retraining
    root = write_fake_sweep(tmp_path / "sweep", demo_trials())
    assert main(["export", str(root), "--formats", "keras,litert"]) == 2
    assert "litert needs ai_edge_litert" in capsys.readouterr().err and not (root / "export").exists()


@pytest.mark.parametrize("mode", MODES)
def test_builtin_preprocess_is_preprocess(mode):
    import keras

    from tsweep.trainers.layers import Preprocess, builtin_preprocess

    x = np.random.default_rng(0).uniform(0, 255, (4, 6, 6, 3)).astype("float32")
    expected = keras.ops.convert_to_numpy(Preprocess(mode)(x))
    layer = builtin_preprocess(mode)
    assert type(layer).__module__.startswith("keras.") and not layer.trainable_weights
    got = keras.ops.convert_to_numpy(layer(x))
    if mode in ("caffe", "none"):
        np.testing.assert_array_equal(got, expected)  # a permutation and a bias: the same float32 numbers
    else:
        np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)
    pixels = np.round(x).astype("uint8")
    np.testing.assert_allclose(keras.ops.convert_to_numpy(layer(pixels)), keras.ops.convert_to_numpy(
        Preprocess(mode)(pixels)), rtol=1e-6, atol=1e-6)


def small_model(mode: str, classes: int):
    """A model shaped like build_model's (input, augmentation, preprocess, backbone, pool, head) with a small
    convolutional 'backbone', for each preprocessing mode."""
    import keras

    from tsweep.trainers.layers import Preprocess

    keras.utils.set_random_seed(1)
    inputs = keras.Input((16, 16, 3), name="image")
    x = keras.layers.RandomFlip("horizontal", seed=1)(inputs)
    x = Preprocess(mode, name="preprocess")(x)
    b_in = keras.Input((16, 16, 3))
    b = keras.layers.Conv2D(8, 3, activation="relu")(b_in)
    b = keras.layers.BatchNormalization()(b)
    base = keras.Model(b_in, keras.layers.Conv2D(8, 3, activation="relu")(b), name="backbone")
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    x = keras.layers.Dropout(0.1, name="dropout")(x)
    units, activation = (1, "sigmoid") if classes == 2 else (classes, "softmax")
    outputs = keras.layers.Dense(units, activation=activation, name="probabilities")(x)
    model = keras.Model(inputs, outputs, name=f"tsweep_{mode}")
    model.compile(loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    return model


def test_portable_keras_loads_without_tsweep_in_every_mode(tmp_path):
    """The `.keras` of the portable model loads with safe_mode in a Python where tsweep cannot be imported,
    and gives the trained model's probabilities, for each backbone preprocessing mode."""
    from tsweep.search.formats import portable_model

    x = np.random.default_rng(2).uniform(0, 255, (6, 16, 16, 3)).astype("float32")
    for mode, classes in zip(MODES, (3, 4, 2, 3)):
        model = small_model(mode, classes)
        portable = portable_model(model, check_images=x)
        assert [layer.name for layer in portable.layers] == ["image", "preprocess", "backbone", "pool", "dropout",
                                                             "probabilities"]  # augmentation dropped
        portable.save(tmp_path / f"{mode}.keras")
        np.save(tmp_path / f"{mode}.npy", model.predict(x, verbose=0))
        with zipfile.ZipFile(tmp_path / f"{mode}.keras") as archive:
            config = archive.read("config.json").decode()
        assert "tsweep>" not in config and "Preprocess" not in config, mode
    np.save(tmp_path / "x.npy", x)
    out = run_without(f"""
import keras, numpy as np
x = np.load("x.npy")
for mode in {MODES!r}:
    model = keras.saving.load_model(mode + ".keras", safe_mode=True)
    diff = np.max(np.abs(model.predict(x, verbose=0) - np.load(mode + ".npy")))
    print(mode, float(diff))
""", tmp_path)
    diffs = dict(line.split() for line in out.stdout.strip().splitlines())
    assert list(diffs) == list(MODES)
    assert all(float(d) <= 1e-5 for d in diffs.values()), diffs


@pytest.mark.numerics
@pytest.mark.parametrize("backbone", ["mobilenet_v2", "vgg16", pytest.param("densenet121", marks=pytest.mark.slow),
                                      pytest.param("efficientnet_b0", marks=pytest.mark.slow)])
def test_portable_model_of_each_backbone_gives_the_same_probabilities(backbone):
    """tf, caffe, torch and none on the real backbones (random init, 32 px; the torch and none backbones take
    20-40 s to build here, so they run with the slow tests: test_portable_keras_loads_without_tsweep_in_every_mode
    covers every mode in the default suite)."""
    from tsweep.search.formats import portable_model
    from tsweep.spaces.config import TrialConfig
    from tsweep.trainers.model import build_model, compile_model

    config = {k: v for k, v in TINY.items() if k != "freeze_cutoff"}
    config = TrialConfig.from_dict({**config, "backbone": backbone, "freeze_fraction": 1.0, "augmentation": "light",
                                    "alpha": 0.35 if backbone == "mobilenet_v2" else 1.0})
    model = build_model(config, 3)
    compile_model(model, config, 3)
    x = np.random.default_rng(3).uniform(0, 255, (4, 32, 32, 3)).astype("float32")
    portable = portable_model(model, check_images=x)
    assert portable.get_layer("preprocess").__class__.__module__.startswith("keras.")
    np.testing.assert_allclose(portable.predict(x, verbose=0), model.predict(x, verbose=0), atol=1e-5)
    assert portable.compiled and portable.loss == model.loss


@pytest.fixture(scope="module")
def export(tmp_path_factory, shapes_dir, cache_dir) -> Path:
    """A real tiny export in every format whose runtime is installed here."""
    from tsweep.search.export import export_winner

    root = tmp_path_factory.mktemp("formats") / "tiny"
    data = {"data_dir": str(shapes_dir), "val_fraction": 0.2, "seed": 0, "cache_dir": str(cache_dir)}
    write_fake_sweep(root, demo_trials(), sweep_info("tiny", data=data, max_epochs=4))
    return export_winner(root, formats=",".join(AVAILABLE), progress=lambda _: None)


def test_every_format_is_written_and_checked_by_its_own_runtime(export):
    metrics = json.loads((export / "metrics.json").read_text())
    parity = metrics["parity"]
    assert parity["split"] == "test" and parity["images"] == 15  # the held-out split: 5 per class
    assert list(parity["formats"]) == AVAILABLE
    for name, figures in parity["formats"].items():
        path = export / FORMATS[name].path
        assert path.exists() and figures["file"] == FORMATS[name].path
        size = sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size
        assert figures["bytes"] == size > 0 and figures["ms_per_image"] > 0
        assert 0 <= figures["accuracy"] <= 1
        if FORMATS[name].quantized:
            assert figures["accuracy_drop"] == pytest.approx(parity["formats"]["keras"]["accuracy"]
                                                             - figures["accuracy"])
        else:
            assert figures["max_abs_diff"] <= 1e-4 and figures["top1_agreement"] == 1.0, name
            assert figures["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-6), name
    assert parity["formats"]["keras"]["max_abs_diff"] <= 1e-5
    assert parity["formats"]["keras"]["top1_agreement"] == 1.0
    card = (export / "MODEL_CARD.md").read_text()
    for name in AVAILABLE:
        assert f"| {name} | `{FORMATS[name].path}`" in card
    assert "import tsweep" not in card


@pytest.mark.parametrize("name", ["litert", "litert-int8", "onnx"])
def test_optional_formats_are_written_when_their_extra_is_installed(export, name):
    needs(name)  # skips, naming the pip install, where the extra is missing (the other tests then omit it)
    figures = json.loads((export / "metrics.json").read_text())["parity"]["formats"][name]
    assert (export / figures["file"]).is_file() and figures["runtime"] == FORMATS[name].runtime


def test_exported_keras_loads_without_tsweep(export, tmp_path):
    from tsweep.search.predict import load_export
    from tsweep.trainers.data import load_dataset

    model, _, size = load_export(export)
    info = json.loads((export.parent / "sweep.json").read_text())
    x = load_dataset(image_size=size, **info["data"]).x_test.astype("float32")
    np.save(tmp_path / "x.npy", x)
    np.save(tmp_path / "p.npy", model.predict(x, verbose=0))
    out = run_without(f"""
import keras, numpy as np
model = keras.saving.load_model({str(export / "model.keras")!r}, safe_mode=True)
print(float(np.max(np.abs(model.predict(np.load("x.npy"), verbose=0) - np.load("p.npy")))))
""", tmp_path)
    assert float(out.stdout.split()[-1]) <= 1e-5


@pytest.fixture
def photos(tmp_path, shapes_dir) -> list[Path]:
    return sorted((shapes_dir / "test").glob("*/*.jpg"))[::3]


def test_predict_reads_every_format(export, photos, capsys):
    from tsweep.search.cli import main
    from tsweep.search.predict import predict_images

    keras_rows, _ = predict_images(export / "model.keras", photos, k=3)
    folder_rows, _ = predict_images(export, photos, k=3)  # the folder: model.keras is preferred
    assert folder_rows == keras_rows
    for name in AVAILABLE:
        path = export / FORMATS[name].path
        rows, skipped = predict_images(path, photos, k=3, batch_size=4)
        assert not skipped and [r[0] for r in rows] == [r[0] for r in keras_rows]
        if FORMATS[name].quantized:  # int8 is not the float model: what its own interpreter says of each photo
            from tsweep.search.runtimes import open_runner
            from tsweep.trainers.images import decode_image

            probs = open_runner(path).predict(np.stack([decode_image(p, 32) for p in photos]))
            classes = json.loads((export / "labels.json").read_text())
            want_rows = [(str(p), sorted(zip(classes, row.tolist()),
                                         key=lambda cp: -cp[1])) for p, row in zip(photos, probs)]
        else:
            want_rows = keras_rows
        for (_, got), (_, want) in zip(rows, want_rows):
            assert dict(got) == pytest.approx(dict(want), abs=1e-4), name
            assert [c for c, _ in got] == [c for c, _ in want], name
    # a folder holding only one non-Keras format is read with it
    name = next((n for n in ("onnx", "litert", "saved_model") if n in AVAILABLE))
    lone = export.parent / f"only-{name}"
    shutil.rmtree(lone, ignore_errors=True)
    lone.mkdir()
    for f in ("labels.json", "config.json"):
        shutil.copy(export / f, lone / f)
    src = export / FORMATS[name].path
    (shutil.copytree if src.is_dir() else shutil.copy)(src, lone / FORMATS[name].path)
    rows, _ = predict_images(lone, photos, k=3)
    for (_, got), (_, want) in zip(rows, keras_rows):
        assert dict(got) == pytest.approx(dict(want), abs=1e-4)
    # the command: --model
    capsys.readouterr()
    assert main(["predict", "--model", str(lone / FORMATS[name].path), *map(str, photos[:2]), "--format",
                 "json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert [p["class"] for p in printed[0]["predictions"]] == [c for c, _ in keras_rows[0][1]]


def card_snippets(card: str) -> dict[str, str]:
    """The Use section's python blocks, by the format named in the heading above each."""
    use = card.split("## Use", 1)[1]
    return {m.group(1): m.group(2) for m in
            re.finditer(r"### (\S+): `[^`]+`, with [^\n]*\n\n```python\n(.*?)```", use, re.S)}


@pytest.mark.slow  # a fresh interpreter per runtime snippet (~30 s idle); CI runs it in make test-slow
def test_model_card_snippets_run_without_tsweep(export, photos, tmp_path):
    """Each format's snippet in MODEL_CARD.md, run as written in a Python without tsweep (and, for LiteRT and
    ONNX, without TensorFlow or Keras), prints what `tsweep predict` gives for the photo."""
    from tsweep.search.predict import predict_images

    snippets = card_snippets((export / "MODEL_CARD.md").read_text())
    assert list(snippets) == AVAILABLE
    (tmp_path / "export").symlink_to(export)
    shutil.copy(photos[0], tmp_path / "photo.jpg")
    for name, code in snippets.items():
        [(_, want)], _ = predict_images(export / FORMATS[name].path, [photos[0]], k=3)
        assert "tsweep" not in code, name
        blocked = ("tsweep",) if name in ("keras", "saved_model") else ("tsweep", "tensorflow", "keras")
        printed = ast.literal_eval(run_without(code, tmp_path, blocked).stdout.strip().splitlines()[-1])
        assert set(printed) == {c for c, _ in want}
        assert {c: printed[c] for c, _ in want} == pytest.approx(dict(want), abs=1e-4), name


def test_the_keras_file_must_match_the_trained_model_within_the_portable_tolerance():
    """model.keras holds the portable model itself (no check of its own before writing): its parity figures are
    held to PORTABLE_TOLERANCE, the other float formats to FLOAT_TOLERANCE."""
    from tsweep.search.formats import FLOAT_TOLERANCE, PORTABLE_TOLERANCE, ParityError
    from tsweep.search.runtimes import check_parity

    between = (PORTABLE_TOLERANCE + FLOAT_TOLERANCE) / 2
    figures = {"max_abs_diff": between, "top1_agreement": 1.0, "top1_disagreements_beyond_ties": 0}
    check_parity({"saved_model": figures})
    with pytest.raises(ParityError, match="keras: max"):
        check_parity({"keras": figures, "saved_model": figures})
