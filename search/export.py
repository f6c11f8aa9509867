"""Retrain a sweep's winner from scratch with the same trainer (no Ray) and export it.

`results/<name>/export/` gets `model.keras`, a TF SavedModel in `model.export/`, `labels.json`,
`config.json`, `metrics.json` and `MODEL_CARD.md`. The export is written to a temporary folder and swapped
in at the end, so a failed export never leaves half a model behind or destroys the previous one.
"""

from __future__ import annotations

import json
import shutil
import time
from pathlib import Path
from typing import Any, Callable

from tsweep.errors import SweepConfigError
from tsweep.search.objective import Objective
from tsweep.search.records import EXPORT_DIR, atomic_write_json, read_sweep, read_trials


def pick_trial(trials: list[dict], objective: Objective, trial_id: str | None = None) -> dict:
    """The trial to export: `trial_id` if given, else the best by the objective among non-failed trials."""
    if trial_id:
        for t in trials:
            if t.get("trial_id") == trial_id:
                return t
        known = ", ".join(sorted(t.get("trial_id", "?") for t in trials))
        raise SweepConfigError(f"no trial {trial_id!r} in this sweep: choose one of {known}")
    scored = [(objective.sort_key(objective.best_epoch(t.get("history", []))[1]), t.get("trial_id", ""), t)
              for t in trials if t.get("status") != "failed"]
    scored = [s for s in scored if s[0] != float("inf")]
    if not scored:
        raise SweepConfigError(f"no trial has reported {objective.metric} yet: nothing to export")
    return min(scored, key=lambda s: s[:2])[2]


def export_winner(root: str | Path, trial_id: str | None = None, full_data: bool = False,
                  progress: Callable[[str], None] = print) -> Path:
    """Retrain the chosen trial's config for its full epoch budget and export it.

    The exported weights are those of the epoch with the best validation metric (as Keras's
    ModelCheckpoint(save_best_only=True) keeps them in the classic guides); with `full_data` there is no
    validation split, so the last epoch's weights are kept.

    Args:
        root: the sweep folder (results/<name>).
        trial_id: export this trial instead of the best one; default None.
        full_data: train on train + validation (validation metrics are then not reported).
        progress: where progress lines go.

    Returns the export folder.
    """
    from tsweep.spaces.config import TrialConfig
    from tsweep.trainers.data import load_dataset
    from tsweep.trainers.runtime import configure_tensorflow
    from tsweep.trainers.train import evaluate, train

    root = Path(root)
    info = read_sweep(root)
    objective = Objective(info["metric"], info["mode"])
    trial = pick_trial(read_trials(root), objective, trial_id)
    config = TrialConfig.from_dict(trial["config"], f"trial {trial['trial_id']}")
    configure_tensorflow()
    data = load_dataset(image_size=config.image_size, progress=progress, **info["data"])
    epoch, value = objective.best_epoch(trial.get("history", []))
    progress(f"retraining trial {trial['trial_id']} ({objective.metric} {value:.4g} at epoch {epoch} in the "
             f"sweep) for {config.epochs} epochs{' on train+validation' if full_data else ''}")
    started = time.time()

    best: dict = {}  # the epoch and weights with the best validation metric (ModelCheckpoint(save_best_only))

    def on_epoch(history: list, model: Any) -> None:
        row = history[-1]
        shown = ", ".join(f"{k} {row[k]:.4f}" for k in ("loss", "accuracy", "val_loss", "val_accuracy") if k in row)
        progress(f"  epoch {row['epoch']}/{config.epochs} ({row['phase']}): {shown}")
        if objective.metric in row and ("value" not in best or objective.better(row[objective.metric], best["value"])):
            best.update(epoch=row["epoch"], value=row[objective.metric], weights=model.get_weights())

    opts = info.get("options", {})
    cache = None
    if opts.get("feature_cache", True):
        from tsweep.trainers.features import default_feature_cache

        cache = default_feature_cache(info["data"].get("cache_dir"),
                                      dtype="float16" if opts.get("cache_float16") else "float32")
    result = train(config, data, on_epoch=on_epoch, full_data=full_data, feature_cache=cache)
    if best:  # without validation (--full-data) the last epoch's weights stay
        result.model.set_weights(best["weights"])
        progress(f"  keeping the weights of epoch {best['epoch']} (best {objective.metric} {best['value']:.4f})")
    metrics: dict = {"trial_id": trial["trial_id"], "sweep_best": {objective.metric: value, "epoch": epoch},
                     "full_data": full_data, "train_seconds": round(time.time() - started, 1),
                     "kept_epoch": best.get("epoch", config.epochs), "history": result.history}
    if not full_data and len(data.y_val):
        metrics["validation"] = evaluate(result.model, data.x_val, data.y_val)
    if data.x_test is not None:
        metrics["test"] = evaluate(result.model, data.x_test, data.y_test)
    for split in ("validation", "test"):
        if split in metrics:
            progress(f"  {split}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics[split].items()))
    return write_export(root, result, data, metrics, info)


def write_export(root: Path, result: object, data: object, metrics: dict, info: dict) -> Path:
    """Write every export file into a temporary folder, then swap it in place of `root/export`."""
    from tsweep.search.model_card import model_card

    final = root / EXPORT_DIR
    tmp = root / f".{EXPORT_DIR}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    result.model.save(tmp / "model.keras")
    result.model.export(str(tmp / "model.export"), format="tf_saved_model", verbose=False)
    (tmp / "labels.json").write_text(json.dumps(list(result.class_names), indent=1))
    atomic_write_json(tmp / "config.json", result.config.to_dict())
    atomic_write_json(tmp / "metrics.json", metrics)
    (tmp / "MODEL_CARD.md").write_text(model_card(result, data, metrics, info))
    old = root / f".{EXPORT_DIR}.old"
    shutil.rmtree(old, ignore_errors=True)
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return final
