"""`tsweep predict`: load an export safely (any of its formats, each with its own runtime), classify files,
folders and globs, print top-k classes with probabilities as a table, JSON or CSV, and optionally plot each
photo beside its top-k bars."""

from __future__ import annotations

import csv
import glob
import io
import json
import os
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from tsweep.errors import SweepConfigError


def probabilities(outputs: np.ndarray, num_classes: int) -> np.ndarray:
    """(N, num_classes) probabilities from the model's outputs (one sigmoid unit for two classes)."""
    outputs = np.asarray(outputs, dtype=np.float64)
    if num_classes == 2 and outputs.shape[-1] == 1:
        return np.concatenate([1.0 - outputs, outputs], axis=-1)
    return outputs


def top_k(probs: np.ndarray, classes: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """The k most probable (class, probability) pairs per row, best first."""
    order = np.argsort(-probs, axis=-1)[:, :k]
    return [[(classes[i], float(p[i])) for i in row] for p, row in zip(probs, order)]


def load_export(export_dir: str | Path) -> tuple[Any, list[str], int]:
    """The Keras model of an export (loaded with Keras safe_mode), its class names and its input size."""
    import keras

    import tsweep.trainers.layers  # noqa: F401  (exports are Keras's own layers; older ones hold tsweep's Preprocess)

    export_dir = Path(export_dir)
    needed = [export_dir / n for n in ("model.keras", "labels.json", "config.json")]
    missing = [str(p) for p in needed if not p.is_file()]
    if missing:
        raise SweepConfigError(f"{export_dir} is not a tsweep export (missing {', '.join(missing)}): "
                               "pass results/<name>/export, written by `tsweep run` or `tsweep export`")
    model = keras.models.load_model(needed[0], safe_mode=True)
    classes = json.loads(needed[1].read_text())
    size = int(json.loads(needed[2].read_text())["image_size"])
    return model, classes, size


def open_export(path: str | Path) -> tuple[Any, list[str], int]:
    """A Runner for an export folder (the first format present: model.keras, model.export/, model.onnx,
    model.tflite, model_int8.tflite) or one of its model files, with the export's class names and input size.

    Args:
        path: results/<name>/export, or a model file or folder inside it (labels.json and config.json are
            read beside it).

    Raises:
        SweepConfigError: not an export or a model of one, or (LiteRT, ONNX) its runtime is not installed.
    """
    from tsweep.search.export_swap import current_export
    from tsweep.search.records import EXPORT_DIR
    from tsweep.search.runtimes import find_model, format_of, open_runner

    path = Path(path)
    if path.name == EXPORT_DIR and not path.exists():  # a swap killed between its renames left export.previous/
        path = current_export(path.parent)
    if path.is_dir() and not (path / "saved_model.pb").is_file():
        folder = path
        if not (folder / "labels.json").is_file():
            raise SweepConfigError(f"{folder} is not a tsweep export (missing {folder / 'labels.json'}): pass "
                                   "results/<name>/export, written by `tsweep run` or `tsweep export`")
        model_path = find_model(folder)
    elif path.exists():
        folder, model_path = path.parent, path
        format_of(path)  # a clear error for a file that is no model
    else:
        raise SweepConfigError(f"no such export or model: {path}")
    labels = folder / "labels.json"
    if not labels.is_file():
        raise SweepConfigError(f"{model_path} has no labels.json beside it: keep the export's files together")
    classes = json.loads(labels.read_text())
    runner = open_runner(model_path)
    size = runner.image_size
    if (folder / "config.json").is_file():
        size = int(json.loads((folder / "config.json").read_text())["image_size"])
    if size is None:
        raise SweepConfigError(f"{model_path}: no config.json beside it and no fixed input size inside it")
    return runner, classes, size


def expand_images(inputs: Sequence[str | Path]) -> list[Path]:
    """Image files from files, folders (images inside, recursively; hidden files and folders skipped) and
    globs (quoted, e.g. 'photos/**/*.jpg'; ** recurses), in the order given, each file once.

    Raises:
        SweepConfigError: an input that is no file, folder or matching glob, or a folder without images.
    """
    from tsweep.trainers.images import EXTENSIONS_TEXT, is_image_file

    def in_folder(folder: Path) -> list[Path]:
        return sorted(p for p in folder.rglob("*") if p.is_file() and is_image_file(p)
                      and not any(part.startswith(".") for part in p.relative_to(folder).parts))

    found: list[Path] = []
    for item in map(str, inputs):
        path = Path(item).expanduser()
        if path.is_dir():
            files = in_folder(path)
            if not files:
                raise SweepConfigError(f"folder {path} holds no images ({EXTENSIONS_TEXT}), sub-folders included")
        elif path.is_file():
            files = [path]  # named explicitly: decoding tells whether it is an image
        elif any(c in item for c in "*?["):
            files = []
            for match in sorted(glob.glob(os.path.expanduser(item), recursive=True)):
                m = Path(match)
                files += in_folder(m) if m.is_dir() else [m] if m.is_file() and is_image_file(m) else []
            if not files:
                raise SweepConfigError(f"no images match {item!r} ({EXTENSIONS_TEXT})")
        else:
            raise SweepConfigError(f"no such image file or folder: {item}")
        found += files
    return list(dict.fromkeys(found))


def baked_tta(path: str | Path) -> str:
    """The test-time augmentation inside an export ("flip" or "none"), from the config.json of the export
    folder `path` or of a model file's folder."""
    path = Path(path)
    config = (path if path.is_dir() and not (path / "saved_model.pb").is_file() else path.parent) / "config.json"
    try:
        return str(json.loads(config.read_text()).get("tta", "none"))
    except (OSError, ValueError, AttributeError):
        return "none"


def predict_images(export_dir: str | Path, images: Sequence[str | Path], k: int = 3, batch_size: int = 64,
                   tta: str = "none") -> tuple[list[tuple[str, list]], list[tuple[str, str]]]:
    """Classify image files with an export, skipping unreadable ones.

    Args:
        export_dir: results/<name>/export (read in the first format present, see `open_export`), or one of
            its model files: model.keras, model.export/, model.tflite, model_int8.tflite, model.onnx.
        images: image files (see `expand_images` for folders and globs).
        k: classes kept per image, most probable first; default 3.
        batch_size: images decoded and predicted at a time (bounds memory on big folders); default 64.
        tta: "flip": average each image's outputs with its horizontal mirror's (twice the compute); skipped
            for an export with flip TTA inside already. Default "none".

    Returns:
        ([(image path, [(class, probability), ...]), ...] in input order, [(path, reason), ...] skipped).
    """
    from tsweep.trainers.images import BadImageError, decode_image

    if tta not in ("none", "flip"):
        raise SweepConfigError(f"`--tta` must be none or flip, got {tta!r}")
    model, classes, size = open_export(export_dir)
    flip = tta == "flip" and baked_tta(export_dir) != "flip"  # a flip-averaged model is mirror-symmetric already
    rows: list[tuple[str, list]] = []
    skipped: list[tuple[str, str]] = []
    batch_size = max(1, min(batch_size, len(images)))
    for start in range(0, len(images), batch_size):
        paths, arrays = [], []
        for path in images[start:start + batch_size]:
            try:
                arrays.append(decode_image(Path(path), size))
                paths.append(str(path))
            except BadImageError as e:
                skipped.append((str(path), e.reason))
            except OSError as e:
                skipped.append((str(path), str(e)))
        if arrays:
            # Every batch is padded to one shape: the model is traced once, not once per partial batch.
            batch = np.zeros((batch_size, size, size, 3), dtype="float32")
            batch[:len(arrays)] = np.stack(arrays)
            outputs = np.asarray(model.predict_batch(batch))[:len(arrays)]
            if flip:
                outputs = (outputs + np.asarray(model.predict_batch(batch[:, :, ::-1].copy()))[:len(arrays)]) / 2
            rows += zip(paths, top_k(probabilities(outputs, len(classes)), classes, k))
    return rows, skipped


def predict_files(export_dir: str | Path, images: Sequence[str | Path], k: int = 3) -> list[tuple[str, list]]:
    """[(image path, [(class, probability), ...]), ...] for each readable image; unreadable ones raise."""
    rows, skipped = predict_images(export_dir, images, k)
    if skipped:
        raise SweepConfigError(f"cannot read image {skipped[0][0]}: {skipped[0][1]}")
    return rows


def render_predictions(rows: list[tuple[str, list]], fmt: str = "table") -> str:
    """Predictions as text.

    Args:
        rows: (image path, [(class, probability), ...]) pairs from `predict_images`.
        fmt: "table" (each image, then its classes with a bar and the probability), "json" (a list of
            {"image", "predictions": [{"class", "probability"}]}) or "csv" (image, rank, class,
            probability: one line per class); default "table".
    """
    if fmt == "json":
        return json.dumps([{"image": path, "predictions": [{"class": c, "probability": p} for c, p in preds]}
                           for path, preds in rows], indent=2)
    if fmt == "csv":
        out = io.StringIO()
        writer = csv.writer(out, lineterminator="\n")
        writer.writerow(["image", "rank", "class", "probability"])
        writer.writerows([path, rank, c, f"{p:.6f}"] for path, preds in rows for rank, (c, p) in enumerate(preds, 1))
        return out.getvalue().rstrip("\n")
    if fmt != "table":
        raise SweepConfigError(f"`--format` must be table, json or csv, got {fmt!r}")
    width = max([len(c) for _, preds in rows for c, _ in preds] + [8])
    lines = []
    for path, preds in rows:
        lines.append(path)
        lines += [f"  {name:<{width}}  {'#' * round(p * 20):<20}  {p:7.2%}" for name, p in preds]
    return "\n".join(lines)


def plot_predictions(rows: list[tuple[str, list]], out: str | Path, max_images: int = 24, columns: int = 3) -> int:
    """Write a PNG with each photo beside bars of its top-k classes; returns how many photos it shows.

    Args:
        rows: (image path, [(class, probability), ...]) pairs from `predict_images`.
        out: the PNG file to write (its folder is created).
        max_images: photos shown at most (the first ones); default 24.
        columns: photos per row; default 3.
    """
    from tsweep.search.report_plots import predictions_png
    from tsweep.trainers.images import decode_image

    shown = rows[:max(1, max_images)]
    items = [{"title": "/".join(Path(path).parts[-2:])[-36:], "image": decode_image(Path(path), 128),
              "predictions": preds} for path, preds in shown]
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_bytes(predictions_png(items, columns))
    return len(shown)
