"""`tsweep export --ensemble K` and `--tta flip`: the ensemble of the top trials, or the single winner with flip
test-time augmentation, exported as one model through `search.export.write_export`.

Members are the trials' best checkpoints as they are (no retraining): the selection scores them on the very
validation images they were chosen on, and retraining a member on train + validation would leave nothing to
score the ensemble with. The candidates are the top max(MIN_POOL, 2K) trials by the sweep's metric that have a
checkpoint; `search.ensemble.greedy_select` picks up to K members on their validation probabilities. The
exported ensemble is kept only when it scores strictly better on validation than the single winner's
checkpoint alone (a selection on validation is optimistic there: the test split, where there is one, is the
honest comparison, and the model card shows both); otherwise the export says so and the single winner is
exported as without `--ensemble`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from tsweep.errors import SweepConfigError
from tsweep.search.objective import Objective
from tsweep.search.records import read_trials

MIN_POOL = 8  # candidates: the top max(MIN_POOL, 2K) trials by the sweep's metric


class ExportConfig:
    """What config.json of an ensemble or TTA export holds (a plain dict; `image_size` is the model's input)."""

    def __init__(self, values: dict) -> None:
        self.values = dict(values)

    def to_dict(self) -> dict:
        return dict(self.values)


def ranked_trials(trials: list[dict], objective: Objective) -> list[dict]:
    """Non-failed trials that reported the metric, best first (ties by trial id, as `export.pick_trial`)."""
    scored = [(objective.sort_key(objective.best_epoch(t.get("history", []))[1]), t.get("trial_id", ""), t)
              for t in trials if t.get("status") != "failed"]
    return [t for key, _, t in sorted(scored, key=lambda s: s[:2]) if key != float("inf")]


def _splits(data: Any) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    return {name: (x, y) for name, x, y in (("validation", data.x_val, data.y_val), ("test", data.x_test, data.y_test))
            if x is not None and len(x)}


def _scores(model: Any, data: Any, score: Callable, name: str) -> dict[str, dict[str, float]]:
    """{split: {"loss", "accuracy", name}} of `model` on the validation and test images."""
    from tsweep.search.ensemble import as_probabilities
    from tsweep.trainers.train import evaluate

    out = {}
    for split, (x, y) in _splits(data).items():
        out[split] = evaluate(model, x, y)
        out[split][name] = score(as_probabilities(model.predict(x, batch_size=64, verbose=0)), np.asarray(y))
    return out


def _ms(model: Any, images: np.ndarray) -> float:
    from tsweep.search.runtimes import KerasRunner, ms_per_image

    return ms_per_image(KerasRunner(Path("."), model), images)


def load_candidates(candidates: list[tuple[dict, Path]], info: dict, progress: Callable[[str], None]
                    ) -> tuple[dict[int, Any], list, list, list]:
    """Each candidate's model from its checkpoint and its validation outputs; the dataset at each image size.

    Returns ({image size: Dataset}, models, TrialConfigs, validation outputs), in `candidates` order.
    """
    from tsweep.spaces.config import TrialConfig
    from tsweep.trainers.checkpoint import load_checkpoint
    from tsweep.trainers.data import load_dataset

    datasets: dict[int, Any] = {}
    models, configs, outputs = [], [], []
    for trial, checkpoint in candidates:
        config = TrialConfig.from_dict(trial["config"], f"trial {trial['trial_id']}")
        if config.image_size not in datasets:
            datasets[config.image_size] = load_dataset(image_size=config.image_size, progress=progress, **info["data"])
        data = datasets[config.image_size]
        model = load_checkpoint(checkpoint, config, data.num_classes)[0]
        models.append(model)
        configs.append(config)
        outputs.append(model.predict(data.x_val, batch_size=64, verbose=0) if len(data.y_val) else None)
    return datasets, models, configs, outputs


def export_ensemble(root: Path, info: dict, objective: Objective, k: int, tta: str, formats: Sequence[str],
                    progress: Callable[[str], None] = print) -> tuple[Path | None, dict]:
    """Select an ensemble of up to `k` top trials' checkpoints and export it when it beats the single winner.

    Returns (the export folder, the summary written to metrics.json "ensemble") when the ensemble is kept,
    else (None, the summary saying why: the caller exports the single winner and records it).
    """
    from tsweep.search.ensemble import as_probabilities, beats, greedy_select, is_better, score_of
    from tsweep.search.ensemble_model import Member, ensemble_model, member_mean
    from tsweep.search.export import best_checkpoint, write_export
    from tsweep.search.formats import PORTABLE_TOLERANCE, ParityError, portable_model
    from tsweep.trainers.train import TrainResult

    name, score, _ = score_of(objective.metric)
    summary: dict[str, Any] = {"k": k, "metric": name, "kept": False, "members_are": "best checkpoints, as they are"}
    candidates, skipped = [], []
    for trial in ranked_trials(read_trials(root), objective)[:max(MIN_POOL, 2 * k)]:
        try:
            candidates.append((trial, best_checkpoint(info, trial, objective)))
        except SweepConfigError as e:
            skipped.append(f"{trial['trial_id']}: {e}")
    summary["skipped"] = skipped
    if len(candidates) < 2:
        summary["reason"] = f"{len(candidates)} trial(s) with a checkpoint: an ensemble needs two or more"
        progress(f"--ensemble {k}: {summary['reason']}; exporting the single winner")
        return None, summary
    progress(f"--ensemble {k}: scoring the best checkpoints of {len(candidates)} top trials on validation")
    datasets, models, configs, val_probs = load_candidates(candidates, info, progress)
    if not len(next(iter(datasets.values())).y_val):
        summary["reason"] = "the dataset has no validation split to select members on"
        progress(f"--ensemble {k}: {summary['reason']}; exporting the single winner")
        return None, summary
    y_val = np.asarray(next(iter(datasets.values())).y_val)
    selection = greedy_select(val_probs, y_val, k, name)
    ids = [t["trial_id"] for t, _ in candidates]
    summary.update(candidates=ids, picks=[ids[i] for i in selection.picks], steps=list(selection.scores),
                   single={"trial_id": ids[0], "validation": {name: selection.single}},
                   selected={"validation": {name: selection.score}})
    if not is_better(selection, name):
        summary["reason"] = (f"the best ensemble of up to {k} ({', '.join(summary['picks'])}) has validation {name} "
                             f"{selection.score:.4f}, not better than the single winner's {selection.single:.4f}")
        progress(f"--ensemble {k}: {summary['reason']}: keeping the single model")
        return None, summary
    members = [Member(models[i], configs[i], w, f"member{j}") for j, (i, w) in enumerate(selection.weights.items())]
    model = ensemble_model(members)
    size = int(model.inputs[0].shape[1])
    data = datasets[size]
    diff = float(np.max(np.abs(model.predict(data.x_val[:8], verbose=0) - member_mean(members, data.x_val[:8]))))
    if not diff <= PORTABLE_TOLERANCE:
        raise ParityError(f"the ensemble model differs from its members' mean by {diff:.3g} (> {PORTABLE_TOLERANCE})"
                          ": nothing was exported")
    figures = _scores(model, data, score, name)
    if not beats(figures["validation"][name], selection.single, name):  # resized members may score otherwise
        summary["reason"] = (f"the exported ensemble's validation {name} {figures['validation'][name]:.4f} is not "
                             f"better than the single winner's {selection.single:.4f}")
        progress(f"--ensemble {k}: {summary['reason']}: keeping the single model")
        return None, summary
    single = portable_model(models[0])
    single_figures = _scores(single, datasets[configs[0].image_size], score, name)
    timed = data.x_val[:16]
    summary.update(kept=True, single={"trial_id": ids[0], **single_figures}, selected=figures,
                   members=[{"name": m.name, "trial_id": ids[i], "weight": m.weight,
                             "checkpoint": str(candidates[i][1]), "cutoff": configs[i].cutoff(),
                             "image_size": configs[i].image_size, "backbone": configs[i].backbone,
                             "validation": {name: score(as_probabilities(val_probs[i]), y_val)}}
                            for m, i in zip(members, selection.weights)],
                   ms_per_image={"ensemble": _ms(model, timed),
                                 "single": _ms(single, datasets[configs[0].image_size].x_val[:16])})
    progress(f"--ensemble {k}: {len(members)} members ({', '.join(summary['picks'])}), validation {name} "
             f"{figures['validation'][name]:.4f} vs {selection.single:.4f} for the single winner; "
             f"{summary['ms_per_image']['ensemble']:.1f} vs {summary['ms_per_image']['single']:.1f} ms per image")
    metrics: dict[str, Any] = {"trial_id": ids[0], "retrained": False, "full_data": False, "train_seconds": 0.0,
                               "sweep_best": {objective.metric: objective.best_epoch(candidates[0][0]["history"])[1]},
                               "history": [], "ensemble": summary, **figures}
    config = {"ensemble": [{"trial_id": m["trial_id"], "weight": m["weight"], **configs[i].to_dict()}
                           for m, i in zip(summary["members"], selection.weights)], "image_size": size, "tta": "none"}
    result = TrainResult(model, ExportConfig(config), data.class_names, [])
    if tta == "flip":
        result = apply_flip(result, data, metrics, progress)
    return write_export(root, result, data, metrics, info, formats, progress), summary


def apply_flip(result: Any, data: Any, metrics: dict, progress: Callable[[str], None] = print) -> Any:
    """`result` with its model wrapped in flip TTA; metrics' validation/test become the TTA model's, their
    values without TTA go to metrics["tta"]. Splits the model was trained on (a retrained winner's validation)
    are not scored."""
    from tsweep.search.ensemble_model import with_flip_tta
    from tsweep.search.formats import portable_model
    from tsweep.trainers.train import TrainResult, evaluate

    model = with_flip_tta(portable_model(result.model))
    effect: dict[str, Any] = {"mode": "flip"}
    for split, (x, y) in _splits(data).items():
        if split in metrics:
            effect[split] = {"without": metrics[split], "with": evaluate(model, x, y)}
            metrics[split] = effect[split]["with"]
            progress(f"  flip TTA on {split}: accuracy {effect[split]['without'].get('accuracy', 0):.4f} -> "
                     f"{effect[split]['with']['accuracy']:.4f}")
    metrics["tta"] = effect
    effect["ms_per_image"] = {"with": _ms(model, data.x_train[:16]), "without": _ms(result.model, data.x_train[:16])}
    config = {**result.config.to_dict(), "tta": "flip"}
    return TrainResult(model, ExportConfig(config), result.class_names, result.history)
