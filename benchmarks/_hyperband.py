"""Run (c) of sweep_speed.py: KerasTuner's Hyperband over the same space, in this process.

Data: the decoded arrays of `tsweep.trainers.data.load_dataset` (decoded once into the run's own fresh
cache, which counts in its wall time); the model and its warm-up-then-fine-tune recipe are
`tsweep.trainers.hypermodel.TransferHyperModel`. Trials and best val accuracy come from the oracle,
epochs from a callback counting every epoch trained (Hyperband continues promoted trials from their
predecessor's weights, so those epochs are only the new ones).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Callable


class BudgetSpent(Exception):
    """Raised at the start of a trial once the time budget is spent (KerasTuner has no budget of its own)."""


def run(space: Any, data_dir: Path, image_size: int, max_epochs: int, seed: int, cache_dir: Path,
        directory: Path, progress: Callable[[str], None], time_budget_s: float | None = None,
        timeline: list | None = None) -> dict:
    """`time_budget_s` (counted from this call): the running trial stops at its next batch and no trial starts
    after it; `timeline` collects (time, val_accuracy) of every epoch (anytime.py's best-so-far curves)."""
    import keras
    import keras_tuner

    from tsweep.trainers.data import load_dataset
    from tsweep.trainers.hypermodel import TransferHyperModel

    data = load_dataset(data_dir, image_size, seed=seed, cache_dir=cache_dir, progress=progress)
    progress(data.summary())

    started = time.time()
    deadline = started + time_budget_s if time_budget_s else None

    class EpochCounter(keras.callbacks.Callback):
        epochs = 0  # a class attribute: KerasTuner deep-copies the callbacks for every trial

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            type(self).epochs += 1
            if timeline is not None and "val_accuracy" in (logs or {}):
                timeline.append((time.time(), float(logs["val_accuracy"])))

        def on_train_batch_end(self, batch: int, logs: dict | None = None) -> None:
            if deadline and time.time() >= deadline:
                self.model.stop_training = True

    class Hyperband(keras_tuner.Hyperband):
        def on_trial_begin(self, trial: Any) -> None:
            if deadline and time.time() >= deadline:
                raise BudgetSpent
            super().on_trial_begin(trial)

        def on_trial_end(self, trial: Any) -> None:
            super().on_trial_end(trial)
            scores = [t.score for t in self.oracle.trials.values() if t.score is not None]
            minutes, seconds = divmod(int(time.time() - started), 60)
            best = f"{max(scores):.4f}" if scores else "-"
            progress(f"[hyperband {minutes:02d}:{seconds:02d}] trial {trial.trial_id} {trial.status.lower()}, "
                     f"{len(self.oracle.trials)} trials, {EpochCounter.epochs} epochs, best val_accuracy {best}")

    tuner = Hyperband(TransferHyperModel(space, data.num_classes), objective="val_accuracy",
                      max_epochs=max_epochs, factor=3, seed=seed, directory=str(directory),
                      project_name="hyperband", overwrite=True)
    batch_size = int(space.fixed.get("batch_size", 32))
    try:
        tuner.search(data.x_train, data.y_train, validation_data=(data.x_val, data.y_val), batch_size=batch_size,
                     callbacks=[EpochCounter()], verbose=0)
    except BudgetSpent:
        progress(f"[hyperband] time budget of {time_budget_s:.0f} s spent")
    completed = [t for t in tuner.oracle.trials.values() if t.status == "COMPLETED"]
    best = tuner.oracle.get_best_trials(1)
    score = best[0].score if best and best[0].score is not None else None
    return {"trials": len(completed), "epochs": EpochCounter.epochs,
            "best_val_accuracy": None if score is None else float(score)}
