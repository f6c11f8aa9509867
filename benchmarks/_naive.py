"""Run (b) of sweep_speed.py: a naive Ray Tune sweep, written the way Ray Tune's Keras example does it.

Every trial loads the JPEGs itself with `keras.utils.image_dataset_from_directory` (no `.cache()`, so they
are decoded again every epoch, as in the TensorFlow transfer-learning tutorial, which only prefetches),
builds and compiles the full model and trains it end to end, reporting once per epoch from a Keras
callback (no checkpoints). No warm-up phase: the layers above the cutoff train from the first epoch.
Kept equal to tsweep on purpose: the param_space (the same `search.ray_space.to_ray` and the same seeded
BasicVariantGenerator, so both sample the same configs), ASHA's settings, 1 CPU per trial, the backbone
and its weights, the freeze (`tsweep.trainers.backbones.freeze`) and the "light" augmentation layers.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any, Callable

from ray import tune


def split_dirs(data_dir: Path) -> tuple[Path, Path]:
    """train/ and val/ (or validation/) of a data dir; the naive trainable reads no other layout."""
    for name in ("val", "validation"):
        if (data_dir / "train").is_dir() and (data_dir / name).is_dir():
            return data_dir / "train", data_dir / name
    raise SystemExit(f"{data_dir}: the naive baseline needs train/<class>/ and val/<class>/ folders")


def make_trainable(data_dir: Path, image_size: int, num_classes: int, seed: int) -> Callable[[dict], None]:
    train_dir, val_dir = split_dirs(data_dir)

    def naive_trial(config: dict) -> None:
        import keras
        import tensorflow as tf

        from tsweep.trainers.backbones import freeze

        size = (image_size, image_size)
        label_mode = "binary" if num_classes == 2 else "int"
        train_ds = keras.utils.image_dataset_from_directory(train_dir, image_size=size, batch_size=32,
                                                            label_mode=label_mode, seed=seed)
        val_ds = keras.utils.image_dataset_from_directory(val_dir, image_size=size, batch_size=32,
                                                          label_mode=label_mode, shuffle=False)
        train_ds, val_ds = (ds.prefetch(tf.data.AUTOTUNE) for ds in (train_ds, val_ds))

        weights = None if config["weights"] == "none" else config["weights"]
        base = keras.applications.MobileNetV2(input_shape=size + (3,), include_top=False, weights=weights,
                                              alpha=config["alpha"])
        freeze(base, "mobilenet_v2", config["freeze_cutoff"])
        inputs = keras.Input(size + (3,))
        x = inputs
        if config["augmentation"] == "light":  # the same layers as tsweep's "light"
            x = keras.layers.RandomFlip("horizontal")(x)
            x = keras.layers.RandomRotation(0.05)(x)
            x = keras.layers.RandomZoom(0.1)(x)
        x = keras.applications.mobilenet_v2.preprocess_input(x)
        x = base(x, training=False)
        x = keras.layers.GlobalAveragePooling2D()(x)
        if config["head_size"]:
            x = keras.layers.Dense(config["head_size"], activation="relu")(x)
        if config["dropout"]:
            x = keras.layers.Dropout(config["dropout"])(x)
        if num_classes == 2:
            outputs, loss = keras.layers.Dense(1, activation="sigmoid")(x), "binary_crossentropy"
        else:
            outputs = keras.layers.Dense(num_classes, activation="softmax")(x)
            loss = "sparse_categorical_crossentropy"
        model = keras.Model(inputs, outputs)
        lr = config["learning_rate"]
        optimizer = {"adam": lambda: keras.optimizers.Adam(lr),
                     "adamw": lambda: keras.optimizers.AdamW(lr, weight_decay=1e-4),
                     "sgd": lambda: keras.optimizers.SGD(lr, momentum=0.9, nesterov=True),
                     "rmsprop": lambda: keras.optimizers.RMSprop(lr)}[config["optimizer"]]()
        model.compile(optimizer=optimizer, loss=loss, metrics=["accuracy"])

        class ReportEpoch(keras.callbacks.Callback):
            def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
                tune.report({k: float(v) for k, v in (logs or {}).items()})

        model.fit(train_ds, validation_data=val_ds, epochs=config["epochs"], verbose=0, callbacks=[ReportEpoch()])

    return naive_trial


class Progress(tune.Callback):
    """One line per ended trial: how many ended, epochs so far, best val_accuracy; with a `timeline` list, also
    appends (time.time(), val_accuracy) of every epoch to it (anytime.py's best-so-far curves)."""

    def __init__(self, total: int, printer: Callable[[str], None], timeline: list | None = None) -> None:
        self.total, self.printer, self.started = total, printer, time.time()
        self.ended = self.epochs = 0
        self.best: float | None = None
        self.timeline = timeline

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        self.epochs += 1
        if "val_accuracy" in result:
            self.best = max(self.best or 0.0, result["val_accuracy"])
            if self.timeline is not None:
                self.timeline.append((time.time(), float(result["val_accuracy"])))

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        self.ended += 1
        minutes, seconds = divmod(int(time.time() - self.started), 60)
        best = "-" if self.best is None else f"{self.best:.4f}"
        of = f" of {self.total}" if self.total > 0 else ""
        self.printer(f"[naive {minutes:02d}:{seconds:02d}] {self.ended}{of} trials ended, "
                     f"{self.epochs} epochs, best val_accuracy {best}")

    on_trial_error = on_trial_complete


def run(space: Any, data_dir: Path, image_size: int, trials: int, max_epochs: int, seed: int, storage: Path,
        num_cpus: int, progress: Callable[[str], None], time_budget_s: float | None = None,
        timeline: list | None = None) -> dict:
    """Start a local Ray, run the naive sweep, return trials, epochs and best val accuracy (Ray stays up).

    `time_budget_s` is Ray Tune's own TuneConfig(time_budget_s) (with trials=-1: as many as fit);
    `timeline` collects (time, val_accuracy) of every epoch."""
    import ray
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from tsweep.search.ray_space import to_ray

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import benchmarks/
    num_classes = len([d for d in split_dirs(data_dir)[0].iterdir() if d.is_dir() and not d.name.startswith(".")])
    # The same Ray settings as tsweep's local Ray (no dashboard, worker output not copied to the driver).
    ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=False,
             runtime_env={"env_vars": {"TF_CPP_MIN_LOG_LEVEL": "2"}})
    tuner = tune.Tuner(
        tune.with_resources(make_trainable(data_dir, image_size, num_classes, seed), {"cpu": 1}),
        param_space=to_ray(space),
        tune_config=tune.TuneConfig(
            metric="val_accuracy", mode="max", num_samples=trials, time_budget_s=time_budget_s,
            scheduler=ASHAScheduler(max_t=max_epochs, grace_period=1, reduction_factor=3),
            search_alg=BasicVariantGenerator(random_state=seed)),
        run_config=tune.RunConfig(name="naive", storage_path=str(storage), verbose=0,
                                  callbacks=[Progress(trials, progress, timeline)]),
    )
    grid = tuner.fit()
    finished = epochs = 0
    best: float | None = None
    for result in grid:
        # a time budget ends some trials before they start: they have no iteration
        finished += result.error is None and int((result.metrics or {}).get("training_iteration", 0)) > 0
        epochs += int((result.metrics or {}).get("training_iteration", 0))
        df = result.metrics_dataframe
        if df is not None and "val_accuracy" in df and len(df):
            best = max(best or 0.0, float(df["val_accuracy"].max()))
    return {"trials": finished, "epochs": epochs, "best_val_accuracy": best}
