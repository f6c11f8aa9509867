"""Train one config on cached frozen-prefix features: same phases, metrics and result as `trainers.train.train`.

Below its freeze cutoff the backbone is a fixed function for a config without augmentation (its weights
are frozen and BatchNormalization always runs in inference mode, see `trainers.model.set_cutoff`), so its
output is computed once per (backbone, alpha, weights, image size, cutoff, dataset, split) and kept in a
`FeatureCache`; only the layers above it train, on those activations:

* warm-up and feature-extraction epochs train the head on the cached pooled output of the whole backbone;
* fine-tuning epochs train the backbone's layers above the cutoff plus the head (the suffix from
  `trainers.split.split_model`) on the cached activations of the boundary.

The suffix shares its layers with the full model, so the returned model is the full model (raw images in,
probabilities out) with the trained weights, compiled with the optimizer that trained it (its state
included), ready for `evaluate`, `save_checkpoint` and export. Batches come in the same order as in
`train` (both use `trainers.train.fit_epoch`: a seeded permutation per (seed, epoch)) and Dropout's
seed generator is the same layer's, so with the same seed both give the same per-epoch losses and weights up
to float rounding (tests/test_features.py). Note that `fit` on numpy input copies the whole array into a
TensorFlow tensor each call, so memory-mapped (spilled) features are read into memory while they train.

`epoch_time_s` of the first epoch of a phase includes making or loading that phase's features.
"""

from __future__ import annotations

import hashlib
import inspect
import time
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from tsweep.spaces.config import TrialConfig
from tsweep.trainers.data import Dataset
from tsweep.trainers.features import FeatureCache, prefix_features
from tsweep.trainers.train import EpochCallback, TrainResult, as_config, end_epoch, fit_epoch, phase_cutoff, phase_of

# Backbones with layers that act differently with training=True besides BatchNorm (EfficientNet's stochastic
# depth Dropout): `fit` passes training=True through the frozen part too, so their frozen prefix is not a
# fixed function and caching it would change training. tests/test_features.py checks this list.
STOCHASTIC_BACKBONES = frozenset({"efficientnet_b0"})
PREDICT_BATCH = 32  # the features do not depend on it (see prefix_features); keys leave it out


def can_use_cache(config: Mapping[str, Any] | TrialConfig) -> bool:
    """True when `config` can train on cached features with the same result as end to end.

    False with augmentation (it sits before the backbone, so the prefix input changes every epoch), at
    cutoff 0 (nothing is frozen) and for STOCHASTIC_BACKBONES.
    """
    cfg = as_config(config)
    return cfg.augmentation == "none" and cfg.cutoff() > 0 and cfg.backbone not in STOCHASTIC_BACKBONES


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
                split: str, images: np.ndarray, images_digest: str | None = None) -> dict:
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
    """
    import keras

    return {"what": "prefix_features", "backbone": config.backbone, "alpha": config.alpha, "weights": weights,
            "image_size": config.image_size, "cutoff": cutoff, "pooled": pooled, "dataset": dataset,
            "split": split, "count": int(len(images)), "images_sha256": images_digest or digest(images),
            "keras": keras.__version__, "backend": keras.backend.backend(),
            "dtype_policy": keras.config.dtype_policy().name}


class _Features:
    """Makes (trainer model, train features, val features) for one cutoff of one trial."""

    def __init__(self, model: Any, cfg: TrialConfig, data: Dataset, x_calibration: np.ndarray,
                 cache: FeatureCache, full_data: bool) -> None:
        self.model, self.cfg, self.data, self.cache, self.full_data = model, cfg, data, cache, full_data
        self.weights = weights_identity(cfg, x_calibration)
        self.dataset = decoded_key(data)
        self._digests: dict[str, str] = {}

    def stage(self, cutoff: int, pooled: bool) -> tuple[Any, np.ndarray, np.ndarray | None]:
        from tsweep.trainers.split import split_model

        prefix, suffix = split_model(self.model, self.cfg, cutoff, pooled=pooled)
        data = self.data
        train = self._split(prefix, cutoff, pooled, "train", data.x_train)
        has_val = len(data.y_val) > 0
        val = self._split(prefix, cutoff, pooled, "val", data.x_val) if has_val else None
        if self.full_data:
            return suffix, (np.concatenate([train, val]) if has_val else train), None
        return suffix, train, val

    def val_stage(self, cutoff: int, pooled: bool) -> tuple[Any, np.ndarray]:
        """(suffix, validation features) at `cutoff`: `stage` for the validation split alone."""
        from tsweep.trainers.split import split_model

        prefix, suffix = split_model(self.model, self.cfg, cutoff, pooled=pooled)
        return suffix, self._split(prefix, cutoff, pooled, "val", self.data.x_val)

    def _split(self, prefix: Any, cutoff: int, pooled: bool, name: str, images: np.ndarray) -> np.ndarray:
        """One split's prefix activations, from the cache or computed."""
        if name not in self._digests:  # hashing the images once per trial, not once per phase
            self._digests[name] = digest(images)
        parts = feature_key(self.cfg, cutoff, pooled, self.weights, self.dataset, name, images, self._digests[name])
        return self.cache.get_or_compute(parts, lambda: prefix_features(prefix, images, PREDICT_BATCH))


class CachedValidation:
    """Validation of an end-to-end trial (one with augmentation) on cached frozen-prefix features.

    Augmentation keeps a trial's training images changing, so its training runs end to end; its validation
    images never change, and validation runs in inference mode, where the frozen prefix is a fixed function.
    So each epoch's val_loss / val_accuracy come from the suffix (sharing the model's layers, so its current
    weights) on the cached prefix activations of the validation split: the same numbers as `fit`'s own
    validation up to float rounding, without pushing the images through the frozen layers again every epoch
    or tracing the full model's evaluation step. Stochastic backbones qualify too: they are deterministic in
    inference mode.
    """

    def __init__(self, model: Any, cfg: TrialConfig, data: Dataset, x_calibration: np.ndarray,
                 cache: FeatureCache) -> None:
        self.features = _Features(model, cfg, data, x_calibration, cache, full_data=False)
        self.y_val, self.batch_size = data.y_val, cfg.batch_size
        self.suffix = self.fv = None

    def stage(self, cutoff: int, pooled: bool, loss: Any) -> bool:
        """Prepare the suffix at `cutoff` (compiled with `loss` and accuracy); False at cutoff 0 (no prefix:
        validate end to end instead)."""
        self.suffix = self.fv = None
        if cutoff == 0:
            return False
        self.suffix, self.fv = self.features.val_stage(cutoff, pooled)
        self.suffix.compile(optimizer="sgd", loss=loss, metrics=["accuracy"])  # evaluation only
        return True

    def evaluate(self) -> dict[str, float]:
        """{"val_loss", "val_accuracy"} of the model's current weights."""
        values = self.suffix.evaluate(self.fv, self.y_val, batch_size=self.batch_size, verbose=0,
                                      return_dict=True)
        return {"val_loss": float(values["loss"]), "val_accuracy": float(values["accuracy"])}


def train_cached(config: Mapping[str, Any] | TrialConfig, data: Dataset, *, cache: FeatureCache,
                 on_epoch: EpochCallback | None = None, full_data: bool = False, verbose: int = 0) -> TrainResult:
    """`trainers.train.train` (without resume) on cached frozen-prefix features; same contract.

    Args:
        config: a TrialConfig or a plain dict of its keys; `can_use_cache(config)` must hold.
        data: the decoded dataset.
        cache: where prefix activations are found or stored.
        on_epoch: called after each epoch with the history so far (last row: epoch, phase, loss, accuracy,
            val_loss, val_accuracy, epoch_time_s) and the full model; default None.
        full_data: train on train + validation; no validation metrics then.
        verbose: Keras fit verbosity, default 0.

    Raises:
        ValueError: the config cannot use the cache (augmentation, cutoff 0, a stochastic backbone).
        TrialError: the loss became NaN or infinite.
    """
    import keras

    from tsweep.trainers.backbones import get_spec
    from tsweep.trainers.model import build_model, calibrate_batchnorm, compile_model, set_cutoff

    cfg = as_config(config)
    if not can_use_cache(cfg):
        raise ValueError(f"config cannot train on cached features (augmentation {cfg.augmentation!r}, cutoff "
                         f"{cfg.cutoff()}, backbone {cfg.backbone}): use trainers.train.train")
    n = data.num_classes
    x, y = data.full_train() if full_data else (data.x_train, data.y_train)
    y_val = None if full_data or len(data.y_val) == 0 else data.y_val
    top = get_spec(cfg.backbone).max_cutoff
    # The same seeding and building as train(), so weights, Dropout and the shuffle start alike.
    keras.utils.set_random_seed(cfg.seed)
    model = build_model(cfg, n)
    if cfg.weights == "none":
        calibrate_batchnorm(model, x)
    features = _Features(model, cfg, data, x, cache, full_data)

    history: list[dict] = []
    phase = trainer = fx = fv = None
    for epoch in range(cfg.epochs):
        started = time.perf_counter()
        wanted = phase_of(epoch, cfg)
        if wanted != phase:  # a new trainable set: new features and a new optimizer, as in train()
            cutoff = phase_cutoff(cfg, wanted)
            set_cutoff(model, cfg, cutoff)
            trainer = fx = fv = None  # let the previous phase's arrays go
            trainer, fx, fv = features.stage(cutoff, pooled=cutoff == top)
            compile_model(trainer, cfg, n, warmup=wanted == "warmup")
            _compile_full(model, trainer)
            phase = wanted
        # the same batches in the same order as train() (fit_epoch), then the same bookkeeping (end_epoch)
        metrics = fit_epoch(trainer, fx, y, None if y_val is None else (fv, y_val), cfg, epoch, verbose)
        end_epoch(metrics, cfg, epoch, phase, started, history, on_epoch, model)
    return TrainResult(model, cfg, data.class_names, history)


def _compile_full(model: Any, trainer: Any) -> None:
    """Compile the full model with the trainer's optimizer, so a checkpoint of it holds that optimizer's
    state. Keras saves optimizer slots in trainable-variable order, so both models must list the same
    variables in the same order (split_model keeps the backbone's layer order); else a fresh optimizer."""
    same = [id(v) for v in model.trainable_variables] == [id(v) for v in trainer.trainable_variables]
    optimizer = trainer.optimizer if same else type(trainer.optimizer).from_config(trainer.optimizer.get_config())
    model.compile(optimizer=optimizer, loss=trainer.loss, metrics=["accuracy"])
