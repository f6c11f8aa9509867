"""Each export format read back by its own runtime (Keras, TF's SavedModel loader, the LiteRT interpreter,
onnxruntime), and the parity figures that compare what each file computes with the trained Keras model.

`open_runner` opens any file of an export (`tsweep predict` reads them all the same way); `parity` measures
max |probability difference|, top-1 agreement, accuracy, size and ms per image for every written format, and
`check_parity` fails an export whose float formats drift beyond `formats.FLOAT_TOLERANCE`.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tsweep.errors import SweepConfigError
from tsweep.search.formats import (
    FLOAT_TOLERANCE,
    FORMATS,
    PORTABLE_TOLERANCE,
    PREFERENCE,
    TIMED_IMAGES,
    ExportFormat,
    ParityError,
    require,
)


class Runner:
    """A model file read by its own runtime: `predict(images)` gives the model's outputs.

    Attributes:
        format: the ExportFormat.
        path: the file or folder.
        image_size: the side of the square input, when the file says (None otherwise).
    """

    format: ExportFormat
    path: Path
    image_size: int | None = None

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict(self, images: np.ndarray, batch_size: int = 64) -> np.ndarray:
        """Outputs (N, units) for raw RGB pixels (N, S, S, 3), `batch_size` images at a time."""
        images = np.asarray(images, dtype="float32")
        out = [np.asarray(self.predict_batch(images[i:i + batch_size]), dtype="float32")
               for i in range(0, len(images), batch_size)]
        return np.concatenate(out)


class KerasRunner(Runner):
    def __init__(self, path: Path, model: Any = None) -> None:
        import keras

        self.format, self.path = FORMATS["keras"], Path(path)
        self.model = model if model is not None else keras.saving.load_model(self.path, safe_mode=True)
        self.image_size = _side(self.model.inputs[0].shape)
        self._call = None

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        if self._call is None:
            import tensorflow as tf

            # One trace for every batch size (predict_on_batch traces again for the last, shorter batch and for
            # single images: seconds each for a MobileNetV2).
            shape = [None, *self.model.inputs[0].shape[1:]]
            self._call = tf.function(lambda x: self.model(x, training=False), reduce_retracing=True,
                                     input_signature=[tf.TensorSpec(shape, "float32")])
        return self._call(np.asarray(images, dtype="float32")).numpy()


class SavedModelRunner(Runner):
    def __init__(self, path: Path) -> None:
        import tensorflow as tf

        self.format, self.path, self._tf = FORMATS["saved_model"], Path(path), tf
        self.model = tf.saved_model.load(str(self.path))
        _, inputs = self.model.signatures["serving_default"].structured_input_signature
        self.image_size = _side(next(iter(inputs.values())).shape) if inputs else None

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        return self.model.serve(self._tf.constant(images)).numpy()


class LiteRTRunner(Runner):
    def __init__(self, path: Path, fmt: ExportFormat) -> None:
        require(fmt)
        from ai_edge_litert.interpreter import Interpreter

        self.format, self.path = fmt, Path(path)
        self.interpreter = Interpreter(model_path=str(self.path))
        self._input = self.interpreter.get_input_details()[0]
        self._output = self.interpreter.get_output_details()[0]
        self._batch = None
        self.image_size = _side(self._input["shape"])

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        interpreter, index = self.interpreter, self._input["index"]
        if self._batch != len(images):
            interpreter.resize_tensor_input(index, [len(images), *self._input["shape"][1:]])
            interpreter.allocate_tensors()
            self._batch = len(images)
        x = images
        if np.issubdtype(self._input["dtype"], np.integer):  # an integer input: quantise the pixels
            scale, zero = self._input["quantization"]
            info = np.iinfo(self._input["dtype"])
            x = np.clip(np.round(images / scale + zero), info.min, info.max)
        interpreter.set_tensor(index, x.astype(self._input["dtype"]))
        interpreter.invoke()
        out = interpreter.get_tensor(self._output["index"])
        if np.issubdtype(out.dtype, np.integer):
            scale, zero = self._output["quantization"]
            out = (out.astype("float32") - zero) * scale
        return out


class OnnxRunner(Runner):
    def __init__(self, path: Path) -> None:
        fmt = FORMATS["onnx"]
        require(ExportFormat(fmt.name, fmt.path, fmt.runtime, fmt.extra, ("onnxruntime",)))
        import onnxruntime

        self.format, self.path = fmt, Path(path)
        self.session = onnxruntime.InferenceSession(str(self.path), providers=["CPUExecutionProvider"])
        self._input = self.session.get_inputs()[0]
        self.image_size = _side(self._input.shape)

    def predict_batch(self, images: np.ndarray) -> np.ndarray:
        return self.session.run(None, {self._input.name: images})[0]


def _side(shape: Any) -> int | None:
    side = list(shape)[1] if len(list(shape)) == 4 else None
    return int(side) if isinstance(side, (int, np.integer)) and side > 0 else None


def format_of(path: Path) -> ExportFormat:
    """The format of a model file or folder, from its name (or a SavedModel's saved_model.pb)."""
    path = Path(path)
    for fmt in FORMATS.values():
        if path.name == fmt.path:
            return fmt
    if path.is_dir() and (path / "saved_model.pb").is_file():
        return FORMATS["saved_model"]
    suffix = {".keras": "keras", ".onnx": "onnx", ".tflite": "litert"}.get(path.suffix.lower())
    if suffix is None:
        raise SweepConfigError(f"{path} is no model tsweep reads: pass an export folder, or its model.keras, "
                               "model.export/, model.tflite, model_int8.tflite or model.onnx")
    return FORMATS[suffix]


def open_runner(path: str | Path, fmt: ExportFormat | None = None) -> Runner:
    """A Runner for a model file or folder, read by its format's own runtime."""
    path = Path(path)
    fmt = fmt or format_of(path)
    if not path.exists():
        raise SweepConfigError(f"no such model: {path}")
    if fmt.name == "keras":
        import tsweep.trainers.layers  # noqa: F401  (older exports hold tsweep's Preprocess layer)

        return KerasRunner(path)
    if fmt.name == "saved_model":
        return SavedModelRunner(path)
    if fmt.name == "onnx":
        return OnnxRunner(path)
    return LiteRTRunner(path, fmt)


def find_model(export_dir: Path) -> Path:
    """The model file of an export folder: the first format present in PREFERENCE order."""
    for name in PREFERENCE:
        path = Path(export_dir) / FORMATS[name].path
        if path.exists():
            return path
    raise SweepConfigError(f"{export_dir} holds no model ({', '.join(FORMATS[n].path for n in PREFERENCE)}): "
                           "pass results/<name>/export, written by `tsweep run` or `tsweep export`")


# --- parity -----------------------------------------------------------------------------------------------------

def _probabilities(outputs: np.ndarray) -> np.ndarray:
    outputs = np.asarray(outputs, dtype="float64")
    return np.concatenate([1.0 - outputs, outputs], axis=-1) if outputs.shape[-1] == 1 else outputs


def _bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file()) if path.is_dir() else path.stat().st_size


def ms_per_image(runner: Runner, images: np.ndarray) -> float:
    """Median milliseconds of one single-image call, over up to TIMED_IMAGES images after a warm-up."""
    images = np.asarray(images[:TIMED_IMAGES], dtype="float32")
    runner.predict_batch(images[:1])
    times = []
    for image in images:
        start = time.perf_counter()
        runner.predict_batch(image[None])
        times.append(time.perf_counter() - start)
    return round(1000 * float(np.median(times)), 3)


def measure(runner: Runner, images: np.ndarray, labels: np.ndarray, reference: np.ndarray) -> dict:
    """What one format does on the parity images, vs the trained model's probabilities `reference`."""
    probs = _probabilities(runner.predict(images))
    ref = _probabilities(reference)
    top, ref_top = probs.argmax(-1), ref.argmax(-1)
    rows = np.arange(len(ref))
    # a disagreement between two classes within the tolerance of each other is a tie, not an error
    margin = ref[rows, ref_top] - ref[rows, top]
    return {"file": runner.format.path, "runtime": runner.format.runtime,
            "max_abs_diff": float(np.max(np.abs(probs - ref))), "top1_agreement": float(np.mean(top == ref_top)),
            "top1_disagreements_beyond_ties": int(np.sum((top != ref_top) & (margin > 2 * FLOAT_TOLERANCE))),
            "accuracy": float(np.mean(top == np.asarray(labels))), "bytes": _bytes(runner.path),
            "ms_per_image": ms_per_image(runner, images)}


def check_parity(figures: dict) -> None:
    """Raise ParityError when a float format is not within FLOAT_TOLERANCE of the Keras model or disagrees
    with it on top-1 (beyond near-ties: two classes within 2 * FLOAT_TOLERANCE of each other). The keras
    format holds the portable model itself (`formats.portable_model`: the trained layers, built-in
    preprocessing), so it must agree within PORTABLE_TOLERANCE."""
    def tolerance(name: str) -> float:
        return PORTABLE_TOLERANCE if name == "keras" else FLOAT_TOLERANCE

    bad = [f"{name}: max |probability difference| {f['max_abs_diff']:.3g}, top-1 agreement "
           f"{f['top1_agreement']:.2%}" for name, f in figures.items()
           if not FORMATS[name].quantized
           and (f["max_abs_diff"] > tolerance(name) or f["top1_disagreements_beyond_ties"])]
    if bad:
        raise ParityError(f"parity check failed ({'; '.join(bad)}; float formats must agree on top-1 and "
                          f"within {FLOAT_TOLERANCE} in probability, model.keras within {PORTABLE_TOLERANCE}): "
                          "nothing was exported")


def parity(folder: Path, names: Sequence[str], model: Any, images: np.ndarray, labels: np.ndarray,
           progress: Callable[[str], None] = print) -> dict:
    """Run every written format with its own runtime on `images` and compare it with the trained `model`.

    Returns {format name: {file, runtime, max_abs_diff, top1_agreement, accuracy, bytes, ms_per_image, ...}};
    the int8 format also gets `accuracy_drop` (the Keras model's accuracy minus its own).
    """
    images = np.asarray(images, dtype="float32")
    reference = KerasRunner(Path(folder) / "model.keras", model).predict(images)
    keras_accuracy = float(np.mean(_probabilities(reference).argmax(-1) == np.asarray(labels)))
    figures = {}
    for name in names:
        runner = open_runner(Path(folder) / FORMATS[name].path, FORMATS[name])
        figures[name] = measure(runner, images, labels, reference)
        if FORMATS[name].quantized:
            figures[name]["accuracy_drop"] = keras_accuracy - figures[name]["accuracy"]
        f = figures[name]
        progress(f"  {name}: max |p diff| {f['max_abs_diff']:.2g}, top-1 agreement {f['top1_agreement']:.2%}, "
                 f"accuracy {f['accuracy']:.4f}, {f['bytes'] / 1e6:.2f} MB, {f['ms_per_image']:.2f} ms/image")
        del runner
    return figures
