"""Fixed augmented views: what an augmented config trains on when its frozen prefix is cached.

Online augmentation draws a new random view of every image every epoch, so the frozen prefix sees new
inputs each time and nothing can be cached. With ``augmentation_views: V`` (> 0) each training image has V
fixed augmented views instead: view ``v`` of the images is made by the config's own augmentation layers
(`trainers.model.augmentation_layers`, in training mode) seeded from (dataset, policy, v, batch of the
image), never from the trial, so every trial with the same dataset, policy, backbone, weights, image size
and cutoff trains on the same views and shares their cached prefix activations. Epoch ``e`` trains on one
view of every image: ``view_of(e, V, seed)``, a seeded permutation of the V views per cycle of V epochs, so
every view is used before any repeats. Views are made lazily, view ``v`` when a trial first reaches an epoch
that uses it (ASHA-pruned sweeps never pay for views no trial reached).

What changes for the user: V fixed augmented views per image, not a new random view every epoch
(benchmarks/README.md measures what that costs in accuracy). Validation is never augmented.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np

VIEW_BATCH = 32  # images augmented per call; a view depends on it (the draws are per batch), so it is fixed


def policy_id(kind: str) -> str:
    """The augmentation policy as text: its layers' classes and settings (seeds and names left out), so a
    changed policy never reuses views made with another."""
    from tsweep.trainers.model import augmentation_layers

    layers = []
    for layer in augmentation_layers(kind, seed=0):
        conf = {k: v for k, v in layer.get_config().items() if k not in ("name", "seed", "trainable", "dtype")}
        layers.append([type(layer).__name__, conf])
    return json.dumps([kind, layers], sort_keys=True, default=str)


def view_seed(dataset: str, policy: str, view: int, batch: int) -> int:
    """The augmentation seed of batch `batch` of view `view` (31 bits, from a SHA-256)."""
    blob = json.dumps([dataset, policy, view, batch]).encode()
    return int.from_bytes(hashlib.sha256(blob).digest()[:4], "little") & 0x7FFFFFFF


def augment_view(images: np.ndarray, kind: str, view: int, dataset: str) -> np.ndarray:
    """View `view` of `images` (N, S, S, 3 raw pixels) under augmentation `kind`, as float32.

    Args:
        images: the split's images, in the dataset's order (a view's values depend on each image's place).
        kind: the augmentation level ("light", "strong").
        view: 0-based view index.
        dataset: what identifies the images (e.g. their SHA-256), part of every seed.
    """
    import keras

    from tsweep.trainers.model import augmentation_layers

    policy = policy_id(kind)
    out = np.empty(images.shape, dtype="float32")
    for start in range(0, len(images), VIEW_BATCH):
        chunk = np.asarray(images[start:start + VIEW_BATCH], dtype="float32")
        real = len(chunk)
        if real < VIEW_BATCH:  # a full batch every time, so an image's draws never depend on the split's length
            chunk = np.concatenate([chunk, np.zeros((VIEW_BATCH - real, *chunk.shape[1:]), "float32")])
        x = keras.ops.convert_to_tensor(chunk)
        for layer in augmentation_layers(kind, view_seed(dataset, policy, view, start // VIEW_BATCH)):
            x = layer(x, training=True)
        out[start:start + real] = keras.ops.convert_to_numpy(x)[:real]
    return out


def view_of(epoch: int, views: int, seed: int) -> int:
    """The view epoch `epoch` (0-based) trains on: a new seeded permutation of the views every `views` epochs."""
    cycle, position = divmod(epoch, views)
    return int(np.random.default_rng([seed, cycle, views]).permutation(views)[position])
