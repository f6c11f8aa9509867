"""Frozen-prefix activations of images: a prefix model's outputs, computed in fixed-size batches.

These are the arrays ``trainers.features.FeatureCache`` stores ("bottleneck features"). No TensorFlow import:
the model comes in as an argument.
"""

from __future__ import annotations

from typing import Any

import numpy as np


def prefix_features(prefix_model: Any, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The prefix model's outputs for images `x`, in batches of `batch_size`, in inference mode (training=False).

    Every batch has exactly `batch_size` rows (the last one is zero-padded, and the padding dropped), so the
    model is traced once whatever len(x), and each image's activations come out the same whatever the
    dataset's size (CPU convolutions can round differently at different batch sizes).

    Args:
        prefix_model: a keras.Model (e.g. the prefix from ``trainers.split.split_model``).
        x: inputs (N, ...); may be a memory map.
        batch_size: images per forward pass; default 32.
    """
    outputs = []
    for start in range(0, len(x), batch_size):
        chunk = np.asarray(x[start:start + batch_size])
        real = len(chunk)
        if real < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - real, *chunk.shape[1:]), chunk.dtype)])
        outputs.append(np.asarray(prefix_model.predict_on_batch(chunk))[:real])
    if not outputs:
        return np.zeros((0, *prefix_model.output.shape[1:]), dtype=prefix_model.output.dtype)
    return np.concatenate(outputs)
