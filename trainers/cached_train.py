"""Frozen-prefix activations for training on cache: their keys, and how a trial's stages find or make them.

Below its freeze cutoff the backbone is a fixed function (its weights are frozen and BatchNormalization
always runs in inference mode, see `trainers.model.set_cutoff`), so its output is computed once per
(backbone, alpha, weights, image size, cutoff, dataset, split[, augmentation policy and view]) and kept in a
`FeatureCache`; only the layers above it train, on those activations (`trainers.stages`):

* warm-up and feature-extraction epochs train the head on the cached pooled output of the whole backbone;
* fine-tuning epochs train the backbone's layers above the cutoff plus the head (the suffix from
  `trainers.split.split_model`) on the cached activations of the boundary;
* augmented configs (``augmentation_views > 0``) do the same on the activations of fixed augmented views of
  the training images (`trainers.views`); validation stays unaugmented.

Each block is computed once per node: activations at a deeper cutoff are made from those of the deepest
shallower cutoff already cached (blocks 11-13 applied to the cached block-10 output), not from the images,
and a pass through a cutoff the sweep may fine-tune from (`FeatureCache.waypoints`) keeps its activations.
"""

from __future__ import annotations

import hashlib
import inspect
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tsweep.spaces.config import TrialConfig
from tsweep.trainers.activations import prefix_features
from tsweep.trainers.data import Dataset
from tsweep.trainers.features import FeatureCache
from tsweep.trainers.train import as_config, phase_cutoff

# Backbones with layers that act differently with training=True besides BatchNorm (EfficientNet's stochastic
# depth Dropout): `fit` passes training=True through the frozen part too, so their frozen prefix is not a
# fixed function and caching it would change training. tests/test_features.py checks this list.
STOCHASTIC_BACKBONES = frozenset({"efficientnet_b0"})
PREDICT_BATCH = 32  # the features do not depend on it (see prefix_features); keys leave it out


def stage_kind(config: Mapping[str, Any] | TrialConfig, phase: str, cached: bool = True) -> str:
    """How `phase` of `config` trains: "features" (cached prefix activations of the images), "views"
    (cached activations of fixed augmented views, `trainers.views`) or "end_to_end" (images through the
    whole model).

    End to end without a cache, at cutoff 0 (nothing frozen), for STOCHASTIC_BACKBONES and with online
    augmentation (``augmentation_views: 0``: the prefix input changes every epoch).

    Args:
        config: a TrialConfig or a plain dict of its keys.
        phase: "features", "warmup" or "finetune".
        cached: whether there is a feature cache. Default True.
    """
    cfg = as_config(config)
    if not cached or phase_cutoff(cfg, phase) == 0 or cfg.backbone in STOCHASTIC_BACKBONES:
        return "end_to_end"
    if cfg.augmentation == "none":
        return "features"
    return "views" if cfg.augmentation_views > 0 else "end_to_end"


def can_use_cache(config: Mapping[str, Any] | TrialConfig) -> bool:
    """True when every phase of `config` trains on cached activations (features or views)."""
    from tsweep.trainers.train import phase_of

    cfg = as_config(config)
    return all(stage_kind(cfg, phase_of(e, cfg)) != "end_to_end" for e in range(cfg.epochs))


def digest(array: np.ndarray) -> str:
    """SHA-256 of an array's dtype, shape and bytes (~1.4 GB/s)."""
    h = hashlib.sha256(f"{array.dtype.str}{array.shape}".encode())
    h.update(memoryview(np.ascontiguousarray(array)).cast("B"))
    return h.hexdigest()


def weights_identity(config: TrialConfig, train_images: np.ndarray) -> dict:
    """What decides the backbone's weights: "imagenet"; a file's path, size and mtime; or, for random init,
    the seed and the images `calibrate_batchnorm` takes its BatchNorm statistics from."""
    if config.weights == "imagenet":
        return {"kind": "imagenet"}
    if config.weights == "none":
        from tsweep.trainers.model import calibrate_batchnorm

        count = inspect.signature(calibrate_batchnorm).parameters["max_images"].default
        return {"kind": "none", "seed": config.seed, "calibration": digest(train_images[:count])}
    path = Path(config.weights).resolve()
    st = path.stat()
    return {"kind": "file", "path": str(path), "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def decoded_key(data: Dataset) -> str | None:
    """`trainers.data.cache_key` of the dataset's folder at its image size (None when it cannot be read)."""
    from tsweep.trainers.data import cache_key, discover

    try:
        return cache_key(discover(data.source, val_fraction=0.0), data.image_size)
    except Exception:  # a Dataset built in memory, or a folder gone since: the image digests still count
        return None


def feature_key(config: TrialConfig, cutoff: int, pooled: bool, weights: dict, dataset: str | None,
                split: str, images: np.ndarray, images_digest: str | None = None, view: int | None = None) -> dict:
    """The key parts of the prefix activations of one split (see `FeatureCache.get_or_compute`).

    Args:
        config: the trial's config (backbone, alpha, image size).
        cutoff: the boundary the activations are taken at.
        pooled: whether they are the pooled output of the whole backbone.
        weights: `weights_identity(...)`.
        dataset: `decoded_key(data)`.
        split: "train" or "val".
        images: that split's images; their SHA-256 is part of the key (`images_digest` if given).
        images_digest: `digest(images)` when already known. Default None (computed).
        view: the augmented view (`trainers.views`) of the images under the config's augmentation, or None
            for the images themselves. Default None.
    """
    import keras

    parts = {"what": "prefix_features", "backbone": config.backbone, "alpha": config.alpha, "weights": weights,
            "image_size": config.image_size, "cutoff": cutoff, "pooled": pooled, "dataset": dataset,
            "split": split, "count": int(len(images)), "images_sha256": images_digest or digest(images),
            "keras": keras.__version__, "backend": keras.backend.backend(),
            "dtype_policy": keras.config.dtype_policy().name}
    if view is not None:
        from tsweep.trainers.views import VIEW_BATCH, policy_id

        parts.update(what="view_features", view=int(view), augmentation=config.augmentation,
                     policy=policy_id(config.augmentation), view_batch=VIEW_BATCH)
    return parts


class _Gone(Exception):
    """An entry seen in the cache went away before it was read (evicted meanwhile)."""


class PrefixFeatures:
    """Finds or makes the prefix activations of one trial's splits, at any cutoff, of images or views.

    Args:
        model: the trial's full model (its frozen prefix computes the activations).
        cfg: its config.
        data: the dataset.
        x_calibration: the images `calibrate_batchnorm` used (random-init weights depend on them).
        cache: where activations are found or stored.
    """

    def __init__(self, model: Any, cfg: TrialConfig, data: Dataset, x_calibration: np.ndarray,
                 cache: FeatureCache) -> None:
        self.model, self.cfg, self.data, self.cache = model, cfg, data, cache
        self.weights = weights_identity(cfg, x_calibration)
        self.dataset = decoded_key(data)
        self._digests: dict[str, str] = {}

    def images(self, split: str) -> np.ndarray:
        return self.data.x_train if split == "train" else self.data.x_val

    def key(self, cutoff: int, pooled: bool, split: str, view: int | None = None) -> dict:
        images = self.images(split)
        if split not in self._digests:  # hashing the images once per trial, not once per phase
            self._digests[split] = digest(images)
        return feature_key(self.cfg, cutoff, pooled, self.weights, self.dataset, split, images,
                           self._digests[split], view)

    def get(self, prefix: Any, cutoff: int, pooled: bool, split: str, view: int | None = None) -> np.ndarray:
        """The activations of `split` ("train" or "val"; of its augmented `view` if given) at `cutoff`.

        Args:
            prefix: the model's prefix at `cutoff` (`split_model`), used when nothing shallower is cached.
            cutoff: the boundary; `pooled` as in `split_model`.
            split: "train" or "val".
            view: an augmented view index, or None for the images. Default None.
        """
        parts = self.key(cutoff, pooled, split, view)
        return self.cache.get_or_compute(parts, lambda: self._compute(prefix, cutoff, pooled, split, view))

    def waypoints(self) -> frozenset[int]:
        """Cutoffs whose activations a pass through them keeps: the cache's (the space's cutoffs), and this
        trial's own when a warm-up comes before its fine-tuning (that phase needs them next)."""
        own, cfg = self.cfg.cutoff(), self.cfg
        fine_tunes = 0 < own and cfg.epochs > cfg.warmup_epochs and not cfg.is_feature_extraction()
        return self.cache.waypoints | ({own} if fine_tunes else set())

    def _compute(self, prefix: Any, cutoff: int, pooled: bool, split: str, view: int | None,
                 gone: frozenset[int] = frozenset()) -> np.ndarray:
        from tsweep.trainers.split import bridge_model, split_model

        # The deepest activations cached below `cutoff` (0: none, start from the images) ...
        start = next((c for c in range(cutoff - 1, 0, -1) if c not in gone and self._cached(c, split, view)), 0)
        # ... and, when a waypoint lies between, make its activations first and go on from them: no block
        # below a cutoff a trial may fine-tune from runs twice (each waypoint is cached on the way).
        mid = max((w for w in self.waypoints() if start < w < cutoff), default=0)
        if mid:
            below = self.get(split_model(self.model, self.cfg, mid)[0], mid, False, split, view)
            return prefix_features(bridge_model(self.model, self.cfg, mid, cutoff, pooled=pooled), below,
                                   PREDICT_BATCH)
        if start:
            try:
                cached = self.cache.get_or_compute(self.key(start, False, split, view), _gone)
            except _Gone:  # evicted since we looked: the next one down
                return self._compute(prefix, cutoff, pooled, split, view, gone | {start})
            return prefix_features(bridge_model(self.model, self.cfg, start, cutoff, pooled=pooled), cached,
                                   PREDICT_BATCH)
        images = self.images(split)
        if view is not None:
            from tsweep.trainers.views import augment_view

            images = augment_view(images, self.cfg.augmentation, view, self._digests[split])
        return prefix_features(prefix, images, PREDICT_BATCH)

    def _cached(self, cutoff: int, split: str, view: int | None) -> bool:
        parts = self.key(cutoff, False, split, view)
        return self.cache.key(parts) in self.cache.in_memory_keys() or self.cache.path(parts).exists()


def _gone() -> np.ndarray:
    raise _Gone()
