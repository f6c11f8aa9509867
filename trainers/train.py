"""Train one config: the same function runs inside a Ray Tune trial and, with no Ray at all, for the winner.

Fine-tuning follows the classic Keras recipe: the new head first trains for ``warmup_epochs`` on a fully
frozen backbone (Adam at ``warmup_learning_rate``), then the layers above ``freeze_cutoff`` unfreeze and
training continues with the sampled optimizer at the sampled (usually low) learning rate. A config whose
cutoff freezes the whole backbone is pure feature extraction: every epoch trains the head alone with the
sampled optimizer. A from-scratch backbone (`small_cnn`) trains all of it, every epoch, with the sampled
optimizer ("finetune" at cutoff 0): there is nothing frozen to warm a head up over.

Every phase validates the same way (`validation_scores`: one prediction pass, `val_loss`, `val_accuracy` and
`val_balanced_accuracy` from `trainers.metrics`), and `class_weight: balanced` weights every training sample by
its class's weight in `fit_epoch`, the one place every kind of stage trains through.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Mapping

import numpy as np

from tsweep.errors import TrialError
from tsweep.spaces.config import TrialConfig
from tsweep.trainers.data import Dataset
from tsweep.trainers.steps import predict_function, train_function

# Called after every epoch with the history so far (the last row is that epoch) and the model.
EpochCallback = Callable[[list, Any], None]


@dataclass
class TrainResult:
    """What training one config produced."""

    model: Any  # keras.Model
    config: TrialConfig
    class_names: tuple[str, ...]
    history: list[dict] = field(default_factory=list)


def phase_of(epoch_index: int, config: TrialConfig) -> str:
    """"features" (whole backbone frozen), "warmup" (head on a frozen base) or "finetune" for a 0-based epoch."""
    if config.is_feature_extraction():
        return "features"
    if config.from_scratch():
        return "finetune"
    return "warmup" if epoch_index < config.warmup_epochs else "finetune"


def as_config(config: Mapping[str, Any] | TrialConfig, source: str = "trial config") -> TrialConfig:
    return config if isinstance(config, TrialConfig) else TrialConfig.from_dict(config, source)


def train(config: Mapping[str, Any] | TrialConfig, data: Dataset, *, on_epoch: EpochCallback | None = None,
          resume_from: str | Path | None = None, full_data: bool = False, verbose: int = 0,
          feature_cache: Any = None) -> TrainResult:
    """Build and train the model of one config for its full epoch budget.

    The one phase loop of tsweep: each phase trains through a `trainers.stages.Stage`, end to end, on
    cached frozen-prefix features or on cached augmented views, whichever `cached_train.stage_kind` says.

    Args:
        config: a TrialConfig or a plain dict of its keys (a sampled Ray Tune config).
        data: the decoded dataset.
        on_epoch: called after each epoch with the history so far, whose last row holds that epoch's
            metrics (epoch, phase, loss, accuracy, val_loss, val_accuracy, val_balanced_accuracy, epoch_time_s,
            stage_s), and the
            full model; default None.
        resume_from: a checkpoint directory written by `save_checkpoint`; training continues after its
            epoch with the saved weights and optimizer state. Default None (start from scratch).
        full_data: train on train + validation (for the exported winner); no validation metrics then.
        verbose: Keras fit verbosity, default 0.
        feature_cache: a `tsweep.trainers.features.FeatureCache`: phases with a frozen prefix then train on
            its cached activations (the same result as end to end up to float rounding, far less compute),
            augmented configs on cached fixed views (`augmentation_views`), and end-to-end phases validate
            on cached activations. Default None: always end to end, online augmentation.

    Raises:
        TrialError: the loss or a weight became NaN or infinite (a too-high learning rate, usually).
    """
    import keras

    from tsweep.trainers.checkpoint import load_checkpoint
    from tsweep.trainers.model import build_model, calibrate_batchnorm
    from tsweep.trainers.stages import make_stage

    cfg = as_config(config)
    n = data.num_classes
    x_calibration = data.full_train()[0] if full_data else data.x_train
    keras.utils.set_random_seed(cfg.seed)
    if resume_from is not None:
        model, history = load_checkpoint(resume_from, cfg, n)
        phase = history[-1]["phase"] if history else None
    else:
        model, history, phase = build_model(cfg, n), [], None
        if cfg.weights == "none":
            calibrate_batchnorm(model, x_calibration)
    features = None
    if feature_cache is not None and not cfg.from_scratch():  # from scratch: nothing frozen, nothing to cache
        from tsweep.trainers.cached_train import PrefixFeatures

        features = PrefixFeatures(model, cfg, data, x_calibration, feature_cache)
    stage, resumed_phase = None, phase
    for epoch in range(len(history), cfg.epochs):
        started = time.perf_counter()
        wanted = phase_of(epoch, cfg)
        if stage is None or wanted != phase:  # a new trainable set: a new stage and optimizer
            stage = None  # let the previous phase's arrays go first
            # A resumed phase keeps the checkpoint's optimizer (its state was restored); a new phase starts afresh.
            optimizer = model.optimizer if wanted == resumed_phase and resume_from is not None else None
            stage = make_stage(model, cfg, data, wanted, features=features, full_data=full_data,
                               optimizer=optimizer)
            resumed_phase, phase = None, wanted
        staged = time.perf_counter() - started
        metrics = stage.epoch(epoch, verbose)
        metrics["stage_s"] = round(staged + metrics.get("stage_s", 0.0), 3)
        end_epoch(metrics, cfg, epoch, phase, started, history, on_epoch, model)
    return TrainResult(model, cfg, data.class_names, history)


def phase_cutoff(cfg: TrialConfig, phase: str) -> int:
    """The freeze cutoff of `phase`: the config's own when fine-tuning, else the whole backbone frozen."""
    return cfg.cutoff() if phase == "finetune" else max_cutoff(cfg)


def prepare_phase(model: Any, cfg: TrialConfig, num_classes: int, phase: str) -> None:
    """Freeze the backbone for `phase` ("features", "warmup" or "finetune") and compile with its optimizer."""
    from tsweep.trainers.model import compile_model, set_cutoff

    set_cutoff(model, cfg, phase_cutoff(cfg, phase))
    compile_model(model, cfg, num_classes, warmup=phase == "warmup")


def end_epoch(metrics: dict, cfg: TrialConfig, epoch: int, phase: str, started: float, history: list,
              on_epoch: EpochCallback | None, model: Any) -> None:
    """Complete an epoch's metrics, stop a diverged trial, record the epoch and tell `on_epoch`.

    Raises:
        TrialError: the loss or a trainable weight is NaN or infinite.
    """
    metrics.update(epoch=epoch + 1, phase=phase, epoch_time_s=round(time.perf_counter() - started, 3))
    what = None
    if not math.isfinite(metrics.get("loss", 0.0)):
        what = f"loss became {metrics['loss']}"
    else:
        # Some kernels (oneDNN's min/max in ReLU6 and the loss's epsilon clip, on Intel CPUs) turn NaN into finite
        # numbers, so a finite loss does not prove a sane model: the weights are checked too.
        bad = first_nonfinite_weight(model)
        if bad is not None:
            what = f"weight {bad} became NaN or infinite"
    if what is not None:
        optimizer, rate = ("adam", cfg.warmup_learning_rate) if phase == "warmup" else (cfg.optimizer,
                                                                                      cfg.learning_rate)
        raise TrialError(f"{what} at epoch {epoch + 1} ({phase} phase, {optimizer} at learning_rate {rate:g}): "
                         f"lower `{'warmup_learning_rate' if phase == 'warmup' else 'learning_rate'}`")
    history.append(metrics)
    if on_epoch is not None:
        on_epoch(history, model)


def first_nonfinite_weight(model: Any) -> str | None:
    """The path of the first trainable weight of `model` holding a NaN or an infinity, else None.

    One `all(isfinite(.))` reduction per weight (an explicit test, not a min/max a kernel may rewrite) and
    one transfer of the flags: a few ms for MobileNetV2.
    """
    import keras

    ops = keras.ops
    variables = model.trainable_variables
    if not variables:
        return None
    finite = ops.convert_to_numpy(ops.stack([ops.all(ops.isfinite(v)) for v in variables]))
    return None if finite.all() else variables[int(np.argmin(finite))].path


def fit_epoch(model: Any, x: Any, y: Any, validation: tuple | None, cfg: TrialConfig, epoch: int,
              verbose: int = 0, validator: Any = None) -> dict[str, float]:
    """One epoch of training (`train_steps`; `model.fit` when `verbose`, for its progress bar: the same result)
    in a seeded order of its own: a new permutation every epoch, the same one for the same (seed, epoch)
    whether the model sees images or cached features. With `class_weight: balanced` each sample weighs its
    class's `metrics.class_weights` (from the labels it trains on).

    Args:
        validation: (x, y) scored after the epoch by `validation_scores`, or None.
        validator: the model that scores `validation` (e.g. the suffix on cached activations); default `model`.
    """
    order = np.random.default_rng([cfg.seed, epoch]).permutation(len(y))
    weights = None
    if cfg.class_weight == "balanced":
        from tsweep.trainers.metrics import sample_weights

        weights = sample_weights(y[order])
    if verbose:  # Keras's own progress bar
        fit = model.fit(x[order], y[order], sample_weight=weights, batch_size=cfg.batch_size, epochs=epoch + 1,
                        initial_epoch=epoch, shuffle=False, verbose=verbose)
        metrics = {k: float(v[-1]) for k, v in fit.history.items()}
    else:
        metrics = train_steps(model, x[order], y[order], weights, cfg.batch_size)
    if validation is not None:
        metrics.update(validation_scores(validator if validator is not None else model, *validation,
                                         batch_size=cfg.batch_size))
    return metrics


def train_steps(model: Any, x: np.ndarray, y: np.ndarray, sample_weight: np.ndarray | None,
                batch_size: int) -> dict[str, float]:
    """One epoch of `model`'s compiled train step over (x, y) in their order, fed batch by batch from NumPy.

    It computes what one epoch of `model.fit(x, y, shuffle=False)` does: the same steps, weights and metrics, bit
    for bit (tests/test_train_steps.py). `fit` builds a tf.data pipeline and its callbacks on every call, which
    on a cached epoch costs several times the steps themselves (0.15-0.3 s against ~0.02 s for a head).

    Args:
        model: a compiled Keras model.
        x, y: the epoch's inputs and labels, in training order.
        sample_weight: one weight per sample, or None.
        batch_size: samples per step; the last step takes what is left.

    Returns:
        The epoch's metrics (loss and the compiled ones), as `fit`'s history reports them.
    """
    def batch(start: int) -> tuple:
        end = start + batch_size
        return x[start:end], y[start:end], None if sample_weight is None else sample_weight[start:end]

    step = train_function(model, *batch(0))
    if step is None:  # several replicas: Keras's own step (traced again for the short last batch)
        model.train_on_batch(*batch(0))  # builds the train function and the metrics, and resets the metrics first
        for start in range(batch_size, len(y), batch_size):
            model.train_function(iter([batch(start)]))
    else:
        model.reset_metrics()
        for start in range(0, len(y), batch_size):
            step(*(part for part in batch(start) if part is not None))
    model.optimizer.finalize_variable_values(model.trainable_weights)  # as `fit` ends (EMA optimizers)
    return {k: float(v) for k, v in model.get_metrics_result().items()}


def predict_batches(model: Any, x: np.ndarray, batch_size: int = 64) -> np.ndarray:
    """`model.predict(x)`, the same outputs bit for bit, through the model's compiled predict step batch by
    batch, without the tf.data pipeline `predict` builds on every call."""
    starts = range(0, len(x), batch_size) if len(x) else [0]  # an empty x: one empty batch (`predict` fails)
    step = predict_function(model, x)
    call = model.predict_on_batch if step is None else step
    return np.concatenate([np.asarray(call(x[start:start + batch_size])) for start in starts])


def validation_scores(model: Any, x: Any, y: Any, batch_size: int = 64) -> dict[str, float]:
    """val_loss, val_accuracy and val_balanced_accuracy of `model` on (x, y), from one prediction pass."""
    return {f"val_{k}": v for k, v in evaluate(model, x, y, batch_size).items()}


def max_cutoff(cfg: TrialConfig) -> int:
    from tsweep.spaces.backbones import get_spec

    return get_spec(cfg.backbone).max_cutoff


def evaluate(model: Any, x: Any, y: Any, batch_size: int = 64, class_names: Any = None) -> dict:
    """loss, accuracy and balanced_accuracy of `model` on (x, y) as plain floats (`metrics.scores`), from one
    prediction pass; with `class_names`, also "per_class_recall" (class name -> recall)."""
    from tsweep.trainers.metrics import scores

    probabilities = predict_batches(model, x, batch_size)
    classes = 2 if probabilities.shape[-1] == 1 else probabilities.shape[-1]
    return scores(y, probabilities, classes, class_names)
