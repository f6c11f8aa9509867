"""Export formats: which files `tsweep run/export --formats` writes, what each needs and how each is written
(reading them back and the parity checks are in `search.runtimes`).

Every format holds the same portable model (`portable_model`): the trained model with tsweep's `Preprocess`
layer replaced by Keras's own layers, so nothing in an export needs tsweep. Formats:

- ``keras``: ``model.keras``, loads with ``keras.saving.load_model(path, safe_mode=True)``. Always written: it
  is what ``tsweep report`` reads.
- ``saved_model``: ``model.export/``, a TF SavedModel (``tf.saved_model.load(path).serve(images)``).
- ``litert``: ``model.tflite``, float32 LiteRT (TFLite), built-in operations only.
- ``litert-int8``: ``model_int8.tflite``, full-integer quantisation (int8 weights and activations, float32 in
  and out) calibrated on training images.
- ``onnx``: ``model.onnx``, converted by Keras's exporter (tf2onnx), checked with onnxruntime.

LiteRT and ONNX need the optional extras ``[litert]`` and ``[onnx]`` of pyproject.toml; `check_formats` says
which ``pip install`` is missing before a sweep or an export starts.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tsweep.errors import SweepConfigError

DEFAULT_FORMATS = "keras,saved_model"
FLOAT_TOLERANCE = 1e-4  # float formats: max |probability difference| allowed vs the trained Keras model
PORTABLE_TOLERANCE = 1e-5  # the portable model (model.keras, read back) vs the trained one
CALIBRATION_IMAGES = 128  # training images that calibrate the int8 quantisation
TIMED_IMAGES = 16  # single-image calls timed per format (after a warm-up)


class ParityError(SweepConfigError):
    """An exported format does not give the trained model's probabilities: nothing is exported."""


@dataclass(frozen=True)
class ExportFormat:
    """One export format.

    Args:
        name: what `--formats` takes.
        path: its file (or folder) inside the export.
        runtime: what reads it, in words.
        extra: the pyproject optional extra that provides its packages, or None (tsweep's own dependencies).
        modules: the import names that extra provides.
        quantized: int8: no float tolerance; its accuracy drop is reported instead.
    """

    name: str
    path: str
    runtime: str
    extra: str | None = None
    modules: tuple[str, ...] = ()
    quantized: bool = False


FORMATS: dict[str, ExportFormat] = {f.name: f for f in (
    ExportFormat("keras", "model.keras", "Keras (safe_mode)"),
    ExportFormat("saved_model", "model.export", "TensorFlow SavedModel"),
    ExportFormat("litert", "model.tflite", "LiteRT interpreter (ai-edge-litert)", "litert", ("ai_edge_litert",)),
    ExportFormat("litert-int8", "model_int8.tflite", "LiteRT interpreter (ai-edge-litert)", "litert",
                 ("ai_edge_litert",), quantized=True),
    ExportFormat("onnx", "model.onnx", "ONNX Runtime", "onnx", ("tf2onnx", "onnx", "onnxruntime")),
)}
ALIASES = {"tflite": "litert", "tflite-int8": "litert-int8", "litert_int8": "litert-int8", "tf_saved_model":
           "saved_model", "savedmodel": "saved_model"}
# `tsweep predict` on a folder reads the first format present, in this order.
PREFERENCE = ("keras", "saved_model", "onnx", "litert", "litert-int8")


def parse_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """The format names of `--formats` ("keras,onnx" or a list), in FORMATS order, "keras" always first.

    Raises:
        SweepConfigError: an unknown name, or none at all.
    """
    items = text.split(",") if isinstance(text, str) else list(text)
    names = set()
    for item in items:
        key = item.strip().lower()
        if not key:
            continue
        key = ALIASES.get(key, key)
        if key not in FORMATS:
            raise SweepConfigError(f"`--formats`: unknown format {item.strip()!r}: choose from "
                                   f"{', '.join(FORMATS)} (comma-separated, default {DEFAULT_FORMATS})")
        names.add(key)
    if not names:
        raise SweepConfigError(f"`--formats` is empty: choose from {', '.join(FORMATS)} (default {DEFAULT_FORMATS})")
    names.add("keras")  # the reference every other format is checked against, and what `tsweep report` reads
    return tuple(n for n in FORMATS if n in names)


def install_hint(extras: Sequence[str]) -> str:
    """The pip command that installs these extras of transfer-sweep."""
    joined = ",".join(dict.fromkeys(extras))
    return f'pip install "transfer-sweep[{joined}]" (in a checkout: pip install -e ".[{joined}]")'


def missing_modules(fmt: ExportFormat) -> list[str]:
    """The modules of `fmt`'s extra that cannot be imported here (looked up, not imported)."""
    def absent(module: str) -> bool:
        try:
            return importlib.util.find_spec(module) is None
        except (ImportError, ValueError):  # a broken install, or an import hook refusing it
            return True

    return [m for m in fmt.modules if absent(m)]


def check_formats(text: str | Sequence[str]) -> tuple[str, ...]:
    """`parse_formats`, then check every format's extra is installed: call it before any trial or training.

    Raises:
        SweepConfigError: an unknown format, or one whose packages are missing (the message names the
            `pip install` that fixes it).
    """
    names = parse_formats(text)
    missing = {n: missing_modules(FORMATS[n]) for n in names}
    missing = {n: m for n, m in missing.items() if m}
    if missing:
        what = "; ".join(f"{n} needs {', '.join(m)}" for n, m in missing.items())
        extras = [FORMATS[n].extra for n in missing]
        raise SweepConfigError(f"`--formats {','.join(names)}`: {what}, not installed: {install_hint(extras)}")
    return names


def require(fmt: ExportFormat) -> None:
    """Raise SweepConfigError naming the pip install when `fmt`'s packages are missing."""
    missing = missing_modules(fmt)
    if missing:
        raise SweepConfigError(f"reading {fmt.path} needs {', '.join(missing)}, not installed: "
                               f"{install_hint([fmt.extra])}")


# --- the portable model ------------------------------------------------------------------------------------

def portable_model(model: Any, check_images: np.ndarray | None = None) -> Any:
    """`model` (from trainers.model.build_model) with only Keras's built-in layers: its `Preprocess` layer
    becomes `trainers.layers.builtin_preprocess`, its augmentation layers (identities at inference) are
    dropped, and every other layer is the trained one itself (the same weights, nothing copied). Compiled
    like `model` when it is compiled.

    Args:
        model: the trained model.
        check_images: raw RGB pixels (N, S, S, 3); when given, the two models' probabilities must agree
            within PORTABLE_TOLERANCE on them.

    A model that already holds Keras's own layers only (an ensemble or a TTA model of
    `search.ensemble_model`) is returned as it is.

    Raises:
        ValueError: `model` is not a build_model chain.
        ParityError: the two models do not agree.
    """
    import keras

    if is_portable(model):
        return model

    from tsweep.trainers.layers import Preprocess, builtin_preprocess
    from tsweep.trainers.model import BACKBONE_LAYER
    from tsweep.trainers.split import outer_chain

    augmentation = tuple(getattr(keras.layers, n) for n in dir(keras.layers) if n.startswith("Random"))
    source = model.inputs[0]
    inputs = keras.Input(tuple(source.shape[1:]), dtype=source.dtype, name=model.layers[0].name)
    x = inputs
    for layer in outer_chain(model):
        if isinstance(layer, augmentation):
            continue
        if isinstance(layer, Preprocess):
            x = builtin_preprocess(layer.mode, name=layer.name, dtype=layer.dtype_policy.name)(x)
        elif layer.name == BACKBONE_LAYER:
            x = layer(x, training=False)  # as build_model calls it: BatchNorm in inference mode
        else:
            x = layer(x)
    portable = keras.Model(inputs, x, name=model.name)
    compiled = model.get_compile_config() if getattr(model, "compiled", False) else None
    if compiled:  # loss and metrics, so `evaluate` works on the export; its optimizer built (loads silently)
        portable.compile_from_config(compiled)
    if check_images is not None and len(check_images):
        x = np.asarray(check_images, dtype="float32")
        diff = float(np.max(np.abs(portable.predict(x, verbose=0) - model.predict(x, verbose=0))))
        if not diff <= PORTABLE_TOLERANCE:
            raise ParityError(f"the portable model differs from the trained one by {diff:.3g} in probability "
                               f"(> {PORTABLE_TOLERANCE}): nothing was exported")
    return portable


def is_portable(model: Any) -> bool:
    """True when no layer of `model` (nested models included) is one of tsweep's own."""
    layers = list(getattr(model, "layers", []))
    while layers:
        layer = layers.pop()
        if type(layer).__module__.startswith("tsweep"):
            return False
        layers += list(getattr(layer, "layers", []))
    return True


# --- writers ---------------------------------------------------------------------------------------------------

def write_formats(names: Sequence[str], model: Any, folder: Path, calibration: np.ndarray | None = None,
                  progress: Callable[[str], None] = print) -> None:
    """Write `model` (a portable model) into `folder` in each format of `names` (from `check_formats`).

    LiteRT files are converted from the SavedModel (the one written for `saved_model`, or a temporary one),
    so the model is traced once for both.

    Args:
        calibration: training images (N, S, S, 3), raw pixels, for litert-int8.
    """
    import shutil

    folder = Path(folder)
    saved_model = folder / FORMATS["saved_model"].path if "saved_model" in names else folder / ".saved_model.tmp"
    for name in names:
        progress(f"writing {FORMATS[name].path} ({name})")
        path = folder / FORMATS[name].path
        if name == "keras":
            model.save(path)
        elif name == "saved_model":
            model.export(str(path), format="tf_saved_model", verbose=False)
        elif name in ("litert", "litert-int8"):
            if not saved_model.exists():
                model.export(str(saved_model), format="tf_saved_model", verbose=False)
            path.write_bytes(litert_bytes(saved_model, calibration if FORMATS[name].quantized else None,
                                          FORMATS[name].quantized))
        elif name == "onnx":
            model.export(str(path), format="onnx", verbose=False)
    if saved_model.name.endswith(".tmp"):
        shutil.rmtree(saved_model, ignore_errors=True)


def litert_bytes(saved_model: Path, calibration: np.ndarray | None = None, int8: bool = False) -> bytes:
    """A LiteRT flatbuffer of a SavedModel, with LiteRT's built-in operations only (no TensorFlow "Flex" ops,
    so any LiteRT runtime runs it). int8: full-integer quantisation (int8 weights and activations, float32
    input and output), calibrated on up to CALIBRATION_IMAGES of `calibration`, a seeded sample.
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_saved_model(str(saved_model))
    converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS]
    if int8:
        if calibration is None or not len(calibration):
            raise SweepConfigError("litert-int8 is calibrated on training images: this dataset has none")
        rng = np.random.default_rng(0)
        images = np.asarray(calibration)[np.sort(rng.permutation(len(calibration))[:CALIBRATION_IMAGES])]

        def representative() -> Any:
            for image in images:
                yield [image[None].astype("float32")]

        converter.optimizations = [tf.lite.Optimize.DEFAULT]
        converter.representative_dataset = representative
        converter.target_spec.supported_ops = [tf.lite.OpsSet.TFLITE_BUILTINS_INT8]
    return converter.convert()
