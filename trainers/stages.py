"""What one phase trains on: the plug point for the kinds of training (`make_stage`).

A phase of `trainers.train.train` (warm-up, fine-tuning or feature extraction) runs its epochs through one
Stage, made when the phase starts:

* "end_to_end": the full model on the images (online augmentation included); with a cache, its validation
  comes from the suffix on the cached activations of the validation images (inference mode, so the frozen
  prefix is a fixed function there even when training is not);
* "features": the suffix above the cutoff on the cached activations of the images;
* "views": the suffix on the cached activations of epoch e's fixed augmented view (`trainers.views`).

Every kind trains with `trainers.train.fit_epoch` (the same seeded batch order, the same class weights, the
same validation scores) and the suffix shares its
layers with the full model, so a phase gives the same losses and weights on any kind, up to float rounding
(tests/test_features.py, tests/test_views.py). The kind is `cached_train.stage_kind(config, phase)`.
Adding a kind touches this file only.
"""

from __future__ import annotations

import time
from typing import Any, Callable

import numpy as np

from tsweep.spaces.config import TrialConfig
from tsweep.trainers.data import Dataset


class Stage:
    """One phase's training. `trainer` is the model `fit` trains (the full model or its suffix); `epoch`
    trains one epoch and returns its metrics, `stage_s` included (seconds spent making or loading
    activations and building the trainer, within the epoch)."""

    trainer: Any

    def epoch(self, epoch: int, verbose: int = 0) -> dict[str, float]:
        raise NotImplementedError


class EndToEnd(Stage):
    def __init__(self, model: Any, cfg: TrialConfig, x: np.ndarray, y: np.ndarray, validation: tuple | None,
                 validator: Any = None) -> None:
        self.trainer, self.cfg, self.x, self.y = model, cfg, x, y
        self.validation, self.validator = validation, validator

    def epoch(self, epoch: int, verbose: int = 0) -> dict[str, float]:
        from tsweep.trainers.train import fit_epoch

        return fit_epoch(self.trainer, self.x, self.y, self.validation, self.cfg, epoch, verbose, self.validator)


class Cached(Stage):
    """`binding` (a `step_pool.Binding`, within `step_pool.reuse_steps`): train its pooled twin of `trainer`,
    whose steps are already traced, and copy the weights back into `trainer` after every epoch."""

    def __init__(self, trainer: Any, cfg: TrialConfig, train_of: Callable[[int], np.ndarray], y: np.ndarray,
                 validation: tuple | None, binding: Any = None) -> None:
        self.trainer, self.cfg, self.train_of, self.y, self.validation = trainer, cfg, train_of, y, validation
        self.binding = binding

    def epoch(self, epoch: int, verbose: int = 0) -> dict[str, float]:
        from tsweep.trainers.train import fit_epoch

        started = time.perf_counter()
        x = self.train_of(epoch)  # a view is made or loaded when an epoch first needs it
        staged = time.perf_counter() - started
        trains = self.trainer if self.binding is None else self.binding.trainer
        metrics = fit_epoch(trains, x, self.y, self.validation, self.cfg, epoch, verbose)
        if self.binding is not None:
            self.binding.store()
        return {**metrics, "stage_s": staged}


def make_stage(model: Any, cfg: TrialConfig, data: Dataset, phase: str, *, features: Any = None,
               full_data: bool = False, optimizer: Any = None) -> Stage:
    """Freeze the model for `phase`, compile what trains, and return the phase's Stage.

    Args:
        model: the trial's full model (from `build_model` or `load_checkpoint`).
        cfg: its config.
        data: the dataset.
        phase: "features", "warmup" or "finetune".
        features: a `cached_train.PrefixFeatures` (there is a feature cache), or None: end to end.
        full_data: train on train + validation, no validation metrics.
        optimizer: the optimizer to train with (a resumed phase's, with its state); default None: a new
            one for the phase (`model.make_optimizer`).
    """
    from tsweep.trainers.cached_train import stage_kind
    from tsweep.trainers.model import compile_model, make_optimizer, set_cutoff
    from tsweep.trainers.split import split_model
    from tsweep.trainers.step_pool import bind
    from tsweep.trainers.train import max_cutoff, phase_cutoff

    n = data.num_classes
    cutoff = phase_cutoff(cfg, phase)
    pooled = cutoff == max_cutoff(cfg)
    set_cutoff(model, cfg, cutoff)
    optimizer = optimizer or make_optimizer(cfg, warmup=phase == "warmup")
    kind = stage_kind(cfg, phase, features is not None)
    has_val = not full_data and len(data.y_val) > 0
    if kind == "end_to_end":
        compile_model(model, cfg, n, optimizer=optimizer)
        x, y = data.full_train() if full_data else (data.x_train, data.y_train)
        validation = (data.x_val, data.y_val) if has_val else None
        validator = None
        if features is not None and has_val and cutoff > 0:
            prefix, validator = split_model(model, cfg, cutoff, pooled=pooled)
            validation = (features.get(prefix, cutoff, pooled, "val"), data.y_val)  # scored by predict: no compile
        return EndToEnd(model, cfg, x, y, validation, validator)

    prefix, trainer = split_model(model, cfg, cutoff, pooled=pooled)
    views = kind == "views"
    y = data.full_train()[1] if full_data else data.y_train

    def train_of(epoch: int) -> np.ndarray:
        from tsweep.trainers.views import view_of

        view = view_of(epoch, cfg.augmentation_views, cfg.seed) if views else None
        train = features.get(prefix, cutoff, pooled, "train", view)
        if full_data and len(data.y_val):
            return np.concatenate([train, features.get(prefix, cutoff, pooled, "val", view)])
        return train

    validation = (features.get(prefix, cutoff, pooled, "val"), data.y_val) if has_val else None
    compile_model(trainer, cfg, n, optimizer=optimizer)
    compile_full(model, trainer)
    binding = bind(trainer)
    if not views:  # one array for the whole phase
        fixed = train_of(0)
        return Cached(trainer, cfg, lambda _: fixed, y, validation, binding)
    return Cached(trainer, cfg, train_of, y, validation, binding)


def compile_full(model: Any, trainer: Any) -> None:
    """Compile the full model with the trainer's optimizer, so a checkpoint of it holds that optimizer's
    state. Keras saves optimizer slots in trainable-variable order, so both models must list the same
    variables in the same order (split_model keeps the backbone's layer order); else a fresh optimizer."""
    same = [id(v) for v in model.trainable_variables] == [id(v) for v in trainer.trainable_variables]
    optimizer = trainer.optimizer if same else type(trainer.optimizer).from_config(trainer.optimizer.get_config())
    model.compile(optimizer=optimizer, loss=trainer.loss, metrics=["accuracy"])
