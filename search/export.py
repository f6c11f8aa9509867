"""Export a sweep's winner: retrained on train + validation with what its trial learned, or its checkpoint.

By default the winner is retrained (no Ray) on train + validation for the number of epochs its trial found
best, on the feature cache and views like the trials, and evaluated on the test split where there is one: the
sweep already measured the config on validation, so the export trains on data it has not trained on before
instead of repeating the trial. `retrain=False` (`tsweep export --from-trial`) exports the trial's best
checkpoint as it is. `results/<name>/export/` gets the model in each format of `--formats` (`model.keras`
always, a TF SavedModel in `model.export/` by default, and on request `model.tflite`, `model_int8.tflite`,
`model.onnx`; see `search.formats`), `labels.json`, `config.json`, `metrics.json` and `MODEL_CARD.md`. Every
format holds Keras's own layers only (it loads without tsweep) and is checked with its own runtime against the
trained model before the export is kept. The export is written to a temporary folder and swapped in at the
end, so a failed export never leaves half a model behind or destroys the previous one.
"""

from __future__ import annotations

import dataclasses
import json
import time
from pathlib import Path
from typing import Any, Callable, Sequence

from tsweep.errors import SweepConfigError
from tsweep.files import atomic_write_json
from tsweep.search.formats import DEFAULT_FORMATS, check_formats
from tsweep.search.objective import Objective
from tsweep.search.records import read_sweep, read_trials

MAX_PARITY_IMAGES = 1000  # formats are compared on at most this many held-out images (a seeded sample)


def pick_trial(trials: list[dict], objective: Objective, trial_id: str | None = None) -> dict:
    """The trial to export: `trial_id` if given, else the best by the objective among non-failed trials."""
    if trial_id:
        for t in trials:
            if t.get("trial_id") == trial_id:
                return t
        known = ", ".join(sorted(t.get("trial_id", "?") for t in trials))
        raise SweepConfigError(f"no trial {trial_id!r} in this sweep: choose one of {known}")
    scored = [(objective.sort_key(objective.best_epoch(history_of(t))[1]), t.get("trial_id", ""), t)
              for t in trials if t.get("status") != "failed"]
    scored = [s for s in scored if s[0] != float("inf")]
    if not scored:
        raise SweepConfigError(f"no trial has reported {objective.metric} yet: nothing to export")
    return min(scored, key=lambda s: s[:2])[2]


def history_of(trial: dict) -> list[dict]:
    """A trial record's per-epoch rows (none when the record lacks them or holds something else there)."""
    history = trial.get("history")
    return [row for row in history if isinstance(row, dict)] if isinstance(history, list) else []


def export_winner(root: str | Path, trial_id: str | None = None, retrain: bool = True,
                  progress: Callable[[str], None] = print, formats: str | Sequence[str] | None = None,
                  ensemble: int | None = None, tta: str | None = None) -> Path:
    """`export_trial`, with any unexpected failure (a full disk, a TensorFlow error) turned into one clear
    SweepConfigError (`tsweep export` exits 2 with it, no traceback): the sweep's records are only read, and the
    previous export stays as it was. The original exception is its __cause__."""
    try:
        return export_trial(root, trial_id, retrain, progress, formats, ensemble, tta)
    except SweepConfigError:
        raise
    except Exception as e:
        from tsweep.search.failures import brief

        raise SweepConfigError(f"exporting {root} failed: {brief(e)}. Nothing was replaced: the trial records and "
                               f"any previous export are unchanged; fix the cause and run `tsweep export {root}` "
                               "again") from e


def export_trial(root: str | Path, trial_id: str | None = None, retrain: bool = True,
                 progress: Callable[[str], None] = print, formats: str | Sequence[str] | None = None,
                 ensemble: int | None = None, tta: str | None = None) -> Path:
    """Export the chosen trial: retrained on train + validation for its best epoch count, or its checkpoint.

    Args:
        root: the sweep folder (results/<name>).
        trial_id: export this trial instead of the best one; default None.
        retrain: True (default): train the config from scratch on train + validation for as many epochs as
            its trial needed to reach its best validation metric (the sweep's epoch choice, as
            ModelCheckpoint(save_best_only) makes it), then evaluate on the test split if any. False: the
            trial's best checkpoint, evaluated on validation and test, with no training.
        progress: where progress lines go.
        formats: the formats to write, e.g. "keras,saved_model,litert,onnx"; default None: the sweep's own
            `--formats` (sweep.json), else keras,saved_model. Checked before any data is loaded.
        ensemble: K >= 2: export the ensemble of up to K top trials' checkpoints when it beats the single
            winner on validation (`search.ensemble_export`), else the single winner, saying so; 0: off;
            default None: the sweep's own `--ensemble` (not used with `trial_id`; both given is an error).
        tta: "flip": bake flip test-time augmentation into the exported model; default None: the sweep's.

    Returns the export folder.

    Raises:
        SweepConfigError: no such trial, no trial with the metric, (retrain=False) no checkpoint of it, an
            unknown format or one whose extra is not installed, or a format failing its parity check.
    """
    from tsweep.spaces.config import TrialConfig
    from tsweep.trainers.data import load_dataset
    from tsweep.trainers.runtime import configure_tensorflow
    from tsweep.trainers.train import evaluate

    root = Path(root)
    info = read_sweep(root)
    formats = check_formats(formats if formats is not None
                            else info.get("options", {}).get("formats") or DEFAULT_FORMATS)
    objective = Objective(info["metric"], info["mode"])
    if trial_id and ensemble:
        raise SweepConfigError(f"give --trial or --ensemble, not both: --trial {trial_id} exports that one trial")
    ensemble, tta = _quality_options(info, ensemble, tta)
    note = None
    if ensemble and trial_id is None:
        from tsweep.search.ensemble_export import export_ensemble

        out, note = export_ensemble(root, info, objective, ensemble, tta, formats, progress)
        if out is not None:
            return out
    trial = pick_trial(read_trials(root), objective, trial_id)
    epoch, value = objective.best_epoch(history_of(trial))
    if epoch is None:
        raise SweepConfigError(f"trial {trial['trial_id']} has not reported {objective.metric}: nothing to export "
                               "from it; pick another with --trial")
    config = TrialConfig.from_dict(trial["config"], f"trial {trial['trial_id']}")
    checkpoint = None if retrain else best_checkpoint(info, trial, objective, progress)
    configure_tensorflow()
    data = load_dataset(image_size=config.image_size, progress=progress, **info["data"])
    started = time.time()
    if retrain:
        result = retrain_winner(config, epoch, data, info, progress)
    else:
        from tsweep.trainers.checkpoint import load_checkpoint
        from tsweep.trainers.train import TrainResult

        progress(f"exporting the checkpoint of epoch {epoch} of trial {trial['trial_id']} ({objective.metric} "
                 f"{value:.4g}) as it is")
        model, history = load_checkpoint(checkpoint, config, data.num_classes)
        result = TrainResult(model, config, data.class_names, history)
    has_val = len(data.y_val) > 0
    metrics: dict = {"trial_id": trial["trial_id"], "sweep_best": {objective.metric: value, "epoch": epoch},
                     "retrained": retrain, "full_data": retrain and has_val,
                     "train_seconds": round(time.time() - started, 1),
                     "kept_epoch": len(result.history), "history": result.history}
    if checkpoint is not None:
        metrics["checkpoint"] = str(checkpoint)
    if trial.get("baseline"):  # the --baseline trial (small_cnn from scratch) really was the best
        metrics["baseline"] = True
        progress(f"the winner is the from-scratch baseline trial {trial['trial_id']}: transfer did not beat it")
    # loss, accuracy and balanced_accuracy of each held-out split; "per_class_recall": split -> class -> recall
    if not metrics["full_data"] and has_val:
        metrics["validation"] = evaluate(result.model, data.x_val, data.y_val, class_names=data.class_names)
    if data.x_test is not None:
        metrics["test"] = evaluate(result.model, data.x_test, data.y_test, class_names=data.class_names)
    recall = {split: metrics[split].pop("per_class_recall") for split in ("validation", "test") if split in metrics}
    if recall:
        metrics["per_class_recall"] = recall
    for split in ("validation", "test"):
        if split in metrics:
            progress(f"  {split}: " + ", ".join(f"{k} {v:.4f}" for k, v in metrics[split].items()))
    if note is not None:
        metrics["ensemble"] = note
    if tta == "flip":
        from tsweep.search.ensemble_export import apply_flip

        result = apply_flip(result, data, metrics, progress)
    return write_export(root, result, data, metrics, info, formats, progress)


def _quality_options(info: dict, ensemble: int | None, tta: str | None) -> tuple[int, str]:
    """`--ensemble` and `--tta`: as given, else the sweep's own (sweep.json), else off; validated."""
    from tsweep.search.ensemble import check_choices

    opts = info.get("options", {})
    ensemble = int(opts.get("ensemble", 0) if ensemble is None else ensemble)
    tta = str(opts.get("tta", "none") if tta is None else tta)
    check_choices(ensemble, tta)
    return ensemble, tta


def retrain_winner(config: Any, epochs: int, data: Any, info: dict, progress: Callable[[str], None]) -> Any:
    """Train `config` from scratch on train + validation for `epochs` epochs (its trial's best epoch), with the
    sweep's feature-cache settings; returns the TrainResult."""
    from tsweep.trainers.train import train

    cfg = dataclasses.replace(config, epochs=epochs, warmup_epochs=min(config.warmup_epochs, epochs))
    where = "train + validation" if len(data.y_val) else "train (there is no validation split)"
    progress(f"retraining the winner on {where} for {epochs} epochs (its best epoch in the sweep)")

    def on_epoch(history: list, model: Any) -> None:
        row = history[-1]
        shown = ", ".join(f"{k} {row[k]:.4f}" for k in ("loss", "accuracy") if k in row)
        progress(f"  epoch {row['epoch']}/{epochs} ({row['phase']}): {shown}")

    opts = info.get("options", {})
    cache = None
    if opts.get("feature_cache", True):
        from tsweep.trainers.features import default_feature_cache

        cache = default_feature_cache(info["data"].get("cache_dir"),
                                      dtype="float16" if opts.get("cache_float16") else "float32")
    return train(cfg, data, on_epoch=on_epoch, full_data=True, feature_cache=cache)


def best_checkpoint(info: dict, trial: dict, objective: Objective, progress: Callable[[str], None] = print) -> Path:
    """The trial's kept checkpoint with the best metric (Ray keeps the best and the latest per trial) among those
    that read back whole (an unreadable one is skipped, and `progress` told).

    Raises:
        SweepConfigError: the sweep's storage is not a local folder, or the trial has no readable checkpoint there.
    """
    from tsweep.files import is_uri
    from tsweep.trainers.checkpoint import STATE_FILE, CorruptCheckpoint, verify_checkpoint

    experiment = info.get("experiment", "")
    if is_uri(experiment):
        raise SweepConfigError(f"--from-trial reads checkpoints from a local folder; this sweep's storage is "
                               f"{experiment}: copy {experiment}/{trial['trial_id']} to a local folder first")
    folder = Path(experiment) / trial["trial_id"]
    kept = []
    for state in sorted(folder.glob(f"checkpoint_*/{STATE_FILE}")):
        try:
            verify_checkpoint(state.parent)
        except CorruptCheckpoint as e:
            progress(f"skipping checkpoint {state.parent.name}: {e}")
            continue
        history = json.loads(state.read_text()).get("history") or [{}]
        kept.append((objective.sort_key(history[-1].get(objective.metric)), state.parent))
    if not kept:
        raise SweepConfigError(f"trial {trial['trial_id']} has no checkpoint in {folder} that reads back: export it "
                               "without --from-trial (retraining it)")
    return min(kept)[1]


def parity_images(data: Any, limit: int = MAX_PARITY_IMAGES) -> tuple[str, Any, Any]:
    """The images the formats are compared on: the test split, else validation, else training images; at
    most `limit`, a seeded sample of them when there are more. Returns (split name, images, labels)."""
    import numpy as np

    for split, x, y in (("test", data.x_test, data.y_test), ("validation", data.x_val, data.y_val),
                        ("train", data.x_train, data.y_train)):
        if x is not None and len(x):
            if len(x) > limit:
                keep = np.sort(np.random.default_rng(0).choice(len(x), limit, replace=False))
                x, y = x[keep], y[keep]
            return split, x, y
    raise SweepConfigError("the dataset has no images to check the exported formats on")


def write_export(root: Path, result: Any, data: Any, metrics: dict, info: dict,
                 formats: str | Sequence[str] = DEFAULT_FORMATS, progress: Callable[[str], None] = print) -> Path:
    """Write every export file into a temporary folder, check each format with its own runtime against the
    trained model (figures in metrics["parity"]), then swap the folder in place of `root/export`, keeping the
    export it replaces as `root/export.previous` (`search.export_swap`: a kill at any moment leaves one of the two
    complete; concurrent exports never touch each other's folders).

    Every format holds `formats.portable_model(result.model)`: Keras's own layers only, so the export loads
    and runs without tsweep.

    Args:
        formats: `--formats`, e.g. "keras,saved_model,litert,onnx" (keras is always written).

    Raises:
        SweepConfigError: an unknown format or a missing extra (before anything is written), or a float
            format that disagrees with the Keras model (nothing is exported; the previous export stays).
    """
    from tsweep.search.export_swap import publish, staging
    from tsweep.search.formats import FLOAT_TOLERANCE, portable_model, write_formats
    from tsweep.search.model_card import model_card
    from tsweep.search.runtimes import check_parity, parity

    names = check_formats(formats)
    with staging(root) as tmp:  # this exporter's own folder: concurrent exports never share or delete it
        split, x, y = parity_images(data)
        # no check of its own here: the keras format's parity below compares it, read back, on every parity image
        # with the trained model, within PORTABLE_TOLERANCE (one trace of each model fewer)
        model = portable_model(result.model)
        write_formats(names, model, tmp, calibration=data.x_train, progress=progress)
        progress(f"checking each format with its own runtime on the {len(y)} {split} images:")
        figures = parity(tmp, names, result.model, x, y, progress)
        metrics["parity"] = {"split": split, "images": int(len(y)), "tolerance": FLOAT_TOLERANCE,
                             "reference": "the trained Keras model", "formats": figures}
        check_parity(figures)
        (tmp / "labels.json").write_text(json.dumps(list(result.class_names), indent=1))
        atomic_write_json(tmp / "config.json", result.config.to_dict())
        atomic_write_json(tmp / "metrics.json", metrics)
        (tmp / "MODEL_CARD.md").write_text(model_card(result, data, metrics, info))
        return publish(root, tmp, progress, what=f"trial {metrics.get('trial_id', '?')}")
