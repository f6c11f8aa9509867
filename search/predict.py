"""`tsweep predict`: load an export safely and print top-k classes with probabilities."""

from __future__ import annotations

import json
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
    """The model (loaded with Keras safe_mode), its class names and its input size."""
    import keras

    import tsweep.trainers.layers  # noqa: F401  (registers Preprocess for deserialization)

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


def predict_files(export_dir: str | Path, images: Sequence[str | Path], k: int = 3) -> list[tuple[str, list]]:
    """[(image path, [(class, probability), ...]), ...] for each readable image; unreadable ones raise."""
    from tsweep.trainers.images import BadImageError, decode_image

    model, classes, size = load_export(export_dir)
    arrays = []
    for path in images:
        try:
            arrays.append(decode_image(Path(path), size))
        except (BadImageError, OSError) as e:
            raise SweepConfigError(f"cannot read image {path}: {e}") from None
    if not arrays:
        return []
    outputs = model.predict(np.stack(arrays).astype("float32"), verbose=0)
    return list(zip(map(str, images), top_k(probabilities(outputs, len(classes)), classes, k)))


def render_predictions(rows: list[tuple[str, list]]) -> str:
    """Plain text: each image, then its classes with probabilities."""
    lines = []
    for path, preds in rows:
        lines.append(path)
        lines += [f"  {name:<24} {p:7.2%}" for name, p in preds]
    return "\n".join(lines)
