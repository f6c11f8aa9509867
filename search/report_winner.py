"""The exported winner's part of `tsweep report`: its training curves (export/metrics.json "history"), and,
from ONE prediction pass over the validation and test images, confusion matrices, per-class precision and
recall, and the most confident mistakes with their top-3 probabilities.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tsweep.errors import SweepConfigError
from tsweep.search import report_plots as plots
from tsweep.search import report_stats as stats
from tsweep.search.reader import SweepSnapshot
from tsweep.search.report_html import Figures, Section, dict_table, facts_table, note

MAX_DRAWN_CLASSES = 50  # above this, the confusion matrix is a table of its largest off-diagonal cells
TOP_CONFUSIONS = 20


@dataclass
class Evaluation:
    """Predictions of an export on the sweep's validation and test images.

    Attributes:
        class_names: the export's classes (output order).
        splits: "validation" and/or "test" -> (images uint8 (N, S, S, 3), labels (N,), probabilities (N, C)).
    """

    class_names: list[str]
    splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]


def evaluate_export(export_dir: Path, data_options: dict, progress: Callable[[str], None] = print) -> Evaluation:
    """Load the export and the sweep's dataset at the export's image size; predict every validation and
    test image in one pass.

    Args:
        export_dir: results/<name>/export.
        data_options: sweep.json "data" (the `load_dataset` keyword arguments except image_size).
        progress: where progress lines go.

    Raises:
        SweepConfigError: not an export, the dataset is gone or its classes differ from the export's.
    """
    from tsweep.search.predict import load_export, probabilities
    from tsweep.trainers.data import load_dataset
    from tsweep.trainers.runtime import configure_tensorflow

    configure_tensorflow()
    model, classes, size = load_export(export_dir)
    data = load_dataset(image_size=size, progress=progress, **data_options)
    if list(data.class_names) != list(classes):
        raise SweepConfigError(f"the classes of {data.source} ({', '.join(data.class_names)}) differ from the "
                               f"export's labels.json ({', '.join(classes)}): was the data folder changed?")
    parts = [(name, x, y) for name, x, y in (("validation", data.x_val, data.y_val), ("test", data.x_test, data.y_test))
             if y is not None and len(y)]
    if not parts:
        return Evaluation(list(classes), {})
    x_all = np.concatenate([x for _, x, _ in parts]).astype("float32")
    probs = probabilities(model.predict(x_all, batch_size=64, verbose=0), len(classes))
    splits, start = {}, 0
    for name, x, y in parts:
        splits[name] = (np.asarray(x), np.asarray(y), probs[start:start + len(y)])
        start += len(y)
    return Evaluation(list(classes), splits)


def training_blocks(metrics: dict, figures: Figures) -> list[str]:
    """Facts, held-out scores and the per-epoch training curves of the exported model."""
    best = metrics.get("sweep_best") or {}
    facts = [("trial", metrics.get("trial_id")), ("trained on", "train + validation" if metrics.get("full_data")
                                                   else "train"),
             ("training time (s)", metrics.get("train_seconds"))]
    facts += [(f"in the sweep: {k}", v) for k, v in best.items()]
    if metrics.get("baseline"):
        facts.append(("baseline", "yes: the small_cnn trained from scratch (--baseline) beat every transfer trial"))
    for split in ("validation", "test"):
        facts += [(f"{split} {k}", v) for k, v in (metrics.get(split) or {}).items()]
    blocks = [facts_table(facts)]
    history = metrics.get("history") or []
    if history:
        warmup = " (warm-up epochs shaded)" if any(h.get("phase") == "warmup" for h in history) else ""
        blocks.append(figures.add("winner_training", plots.history_png(history), "winner training curves",
                                  "The exported model's accuracy and loss per epoch on the training and validation "
                                  f"images{warmup}."))
    else:
        blocks.append(note("export/metrics.json has no per-epoch history."))
    return blocks


def evaluation_blocks(ev: Evaluation, figures: Figures, full_data: bool) -> list[str]:
    """Confusion matrices and per-class precision/recall of each split."""
    if not ev.splits:
        return [note("The dataset has no validation or test images to evaluate on.")]
    n = len(ev.class_names)
    matrices = {split: stats.confusion_matrix(y, probs.argmax(axis=-1), n)
                for split, (_, y, probs) in ev.splits.items()}
    blocks = [note("The winner was retrained on train + validation: its validation scores are optimistic; "
                   "trust the test split.")] if full_data else []
    if n <= MAX_DRAWN_CLASSES:
        blocks.append(figures.add("confusion", plots.confusion_png(matrices, ev.class_names), "confusion matrices",
                                  "Rows: true class; columns: predicted class."))
    else:  # a drawn n x n matrix would be unreadable (and a gigapixel image): its largest cells instead
        for split, cm in matrices.items():
            blocks.append(f"<h3>{split}: the {TOP_CONFUSIONS} most frequent confusions of {n} classes</h3>")
            rows = stats.top_confusions(cm, ev.class_names, TOP_CONFUSIONS)
            blocks.append(dict_table(rows, "confusions") if rows else note(f"No {split} image is misclassified."))
    for split, cm in matrices.items():
        blocks.append(f"<h3>{split}: per-class precision and recall</h3>")
        blocks.append(dict_table(stats.per_class(cm, ev.class_names), "per-class"))
    return blocks


def mistake_blocks(ev: Evaluation, figures: Figures, max_images: int) -> list[str]:
    """The most confidently misclassified images of the test split (else validation), with top-3 bars."""
    from tsweep.search.predict import top_k

    if not ev.splits:
        return [note("No validation or test images.")]
    split = "test" if "test" in ev.splits else "validation"
    x, y, probs = ev.splits[split]
    if max_images == 0:
        return [note("No images requested (--max-images 0).")]
    wrong = stats.misclassified(y, probs, max_images)
    if not wrong:
        return [note(f"Every {split} image is classified correctly.")]
    k = min(3, len(ev.class_names))
    items = [{"title": f"{split} #{i}: true {ev.class_names[y[i]]}", "image": x[i], "truth": ev.class_names[y[i]],
              "predictions": top_k(probs[i:i + 1], ev.class_names, k)[0]} for i in wrong]
    total = int((probs.argmax(axis=-1) != y).sum())
    caption = (f"The {len(wrong)} most confident mistakes of {total} on {split} ({len(y)} images): top-{k} "
               "probabilities; red: the wrong top class, green: the true class.")
    return [figures.add("misclassified", plots.predictions_png(items), "misclassified images", caption)]


def winner_sections(export_dir: Path, snap: SweepSnapshot, figures: Figures, max_images: int = 8,
                    progress: Callable[[str], None] = print) -> list[Section]:
    """The winner, evaluation and misclassified sections; notes instead of plots where something is missing
    (no export yet, the dataset moved, ...), never an exception for those.

    Args:
        export_dir: results/<name>/export.
        snap: the sweep (its sweep.json "data" locates the images).
        figures: collects the plots.
        max_images: misclassified images shown at most; default 8.
        progress: where progress lines go.
    """
    winner = Section("winner", "Exported winner")
    evaluation = Section("evaluation", "Confusion matrix and per-class scores")
    mistakes = Section("misclassified", "Misclassified images")
    sections = [winner, evaluation, mistakes]
    metrics_file = export_dir / "metrics.json"
    if not metrics_file.is_file():
        text = (f"No export yet ({export_dir} has no metrics.json): the sweep may still be running. "
                f"`tsweep run` exports the winner when it ends; or run `tsweep export {export_dir.parent}`.")
        for s in sections:
            s.blocks.append(note(text))
        return sections
    try:
        metrics = json.loads(metrics_file.read_text())
    except (OSError, ValueError) as e:
        for s in sections:
            s.blocks.append(note(f"{metrics_file} is unreadable (being written?): {e}"))
        return sections
    winner.blocks += training_blocks(metrics, figures)
    data_options = snap.info.get("data")
    if not data_options:
        text = f"{snap.location} has no readable sweep.json \"data\": the images to evaluate on are unknown."
        evaluation.blocks.append(note(text))
        mistakes.blocks.append(note(text))
        return sections
    try:
        progress("predicting the validation and test images with the export")
        ev = evaluate_export(export_dir, data_options, progress)
    except (SweepConfigError, OSError, ValueError, KeyError) as e:  # the model or the data moved on
        text = f"Could not evaluate the export: {e}"
        evaluation.blocks.append(note(text))
        mistakes.blocks.append(note(text))
        return sections
    evaluation.blocks += evaluation_blocks(ev, figures, bool(metrics.get("full_data")))
    mistakes.blocks += mistake_blocks(ev, figures, max_images)
    return sections
