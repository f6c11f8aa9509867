"""`tsweep report`: one self-contained HTML file about a sweep (plots embedded as base64 PNG, and saved as
PNG files beside it): leaderboard, validation curves with ASHA's cuts, hyperparameters against the metric,
their importance, and the exported winner's training, confusion matrices, per-class scores and mistakes.

It reads whatever exists: a sweep still running (no export yet) gets a report of its trials so far.
The page is assembled by pure functions (`render_page`, `figure_html`, ...) from the pieces `build_sections`
computes; `write_report` writes the files.
"""

from __future__ import annotations

import html
import time
from pathlib import Path
from typing import Callable

from tsweep.errors import SweepConfigError
from tsweep.files import atomic_open, is_uri
from tsweep.search import report_plots as plots
from tsweep.search import report_stats as stats
from tsweep.search.baseline import gain_sentence, transfer_gain
from tsweep.search.leaderboard import board, render_html, status_counts
from tsweep.search.objective import Objective
from tsweep.search.reader import SweepSnapshot, read_snapshot
from tsweep.search.records import EXPORT_DIR
from tsweep.search.report_html import Figures, Section, facts_table, importance_table, note, render_page
from tsweep.search.report_winner import winner_sections

IMPORTANCE_HELP = (
    "For each hyperparameter, the trials that reported {metric} are grouped by its value (numbers with many "
    "distinct values into 3 equal-count ranges). <b>spread</b> is the difference between the best and the worst "
    "group's mean best {metric}: the larger, the more this hyperparameter moved the result in this sweep. "
    "<b>|&rho;|</b> is the absolute Spearman rank correlation between a numeric hyperparameter and the best "
    "{metric} (1: the metric rises or falls steadily with it; 0: no monotonic relation). ASHA-pruned trials "
    "count with the best value they reached before being stopped. With few trials these are hints, not proof.")


def summary_section(snap: SweepSnapshot, objective: Objective) -> Section:
    info = snap.info
    counts = status_counts(snap.trials)
    facts = [("sweep", snap.name), ("status", info.get("status", "unknown (no sweep.json)")),
             ("created", info.get("created", "-")), ("ended", info.get("ended", "-")),
             ("space", info.get("space", "-")), ("data", (info.get("data") or {}).get("data_dir", "-")),
             ("objective", f"{objective.metric} ({objective.mode})"),
             ("trials", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none yet")]
    gain = gain_sentence(transfer_gain(snap.trials, objective))
    if gain:  # --baseline: what transfer gained over small_cnn trained from scratch
        facts.append(("over the baseline", gain))
    blocks = [facts_table(facts)]
    blocks += [note(p) for p in snap.problems]
    blocks.append(f"<p>TensorBoard: <code>tensorboard --logdir {html.escape(snap.location)}</code> shows every "
                  "trial's loss, accuracy, val_loss, val_accuracy and val_balanced_accuracy per epoch side by side "
                  "(tags <code>ray/tune/*</code>).</p>")
    return Section("summary", f"Sweep {snap.name}", blocks)


def sweep_sections(snap: SweepSnapshot, objective: Objective, figures: Figures) -> list[Section]:
    """Leaderboard, validation curves, hyperparameter scatter and importance of one sweep snapshot."""
    info, trials, params = snap.info, snap.trials, snap.params()
    kinds = {k: v.get("kind", "") for k, v in (info.get("params") or {}).items() if isinstance(v, dict)}
    rows = board([snap], sort=objective.metric, mode=objective.mode).rows
    leaderboard = Section("leaderboard", "Leaderboard", [render_html(rows)])
    curves = Section("curves", "Validation curves")
    if any(t.get("history") for t in trials):
        opts = info.get("options") or {}
        max_epochs = int(info.get("max_epochs", 0) or 0)
        rungs = stats.asha_rungs(int(opts.get("grace_period", 0) or 0), int(opts.get("reduction_factor", 0) or 0),
                                 max_epochs)
        caption = (f"{objective.metric} per epoch of every trial. Solid: completed; dashed and ending in x: stopped "
                   "by ASHA at that rung; dotted: still running. Grey dotted lines: ASHA rungs.")
        curves.blocks.append(figures.add("curves", plots.curves_png(trials, objective.metric, rungs, max_epochs),
                                         "validation curves", caption))
    else:
        curves.blocks.append(note("No trial has reported an epoch yet."))
    hyper = Section("hyperparameters", "Hyperparameters against the best metric")
    importance = Section("importance", "Hyperparameter importance")
    scored = stats.best_values(trials, objective)
    if params and scored:
        caption = (f"Each trial's best {objective.metric} against each sampled hyperparameter (o completed, "
                   "x pruned, > running); the best trial circled in red.")
        hyper.blocks.append(figures.add("hyperparameters", plots.params_png(trials, params, objective, kinds),
                                        "hyperparameters against the best metric", caption))
        importance.blocks += [f"<p>{IMPORTANCE_HELP.format(metric=html.escape(objective.metric))}</p>",
                              importance_table(stats.importance(trials, params, objective, kinds),
                                               objective.metric)]
    else:
        why = "no hyperparameter is sampled" if not params else f"no trial has reported {objective.metric} yet"
        hyper.blocks.append(note(f"Nothing to plot: {why}."))
        importance.blocks.append(note(f"Nothing to rank: {why}."))
    return [leaderboard, curves, hyper, importance]


def build_sections(root: Path, max_images: int = 8, progress: Callable[[str], None] = print,
                   ) -> tuple[SweepSnapshot, list[Section], Figures]:
    """Read the sweep and compute every section and plot of its report."""
    snap = read_snapshot(root)
    objective = snap.objective() or Objective()
    figures = Figures()
    sections = [summary_section(snap, objective), *sweep_sections(snap, objective, figures)]
    sections += winner_sections(root / EXPORT_DIR, snap, figures, max_images, progress)
    return snap, sections, figures


def write_report(sweep: str | Path, out: str | Path | None = None, max_images: int = 8,
                 progress: Callable[[str], None] = print) -> Path:
    """Write the HTML report of a sweep and its plots as PNGs in `<out stem>_files/` beside it.

    Args:
        sweep: the local sweep folder (results/<name>).
        out: the HTML file; default None = results/<name>/report.html.
        max_images: misclassified images shown at most; default 8.
        progress: where progress lines go; default print.

    Returns:
        The HTML file.

    Raises:
        SweepConfigError: a URI instead of a local folder, not a sweep folder, or max_images < 0.
    """
    if is_uri(str(sweep)):
        raise SweepConfigError(f"`tsweep report` needs a local sweep folder (it loads the exported model), got "
                               f"{sweep}: copy it first (e.g. `aws s3 sync {sweep} results/NAME`)")
    if max_images < 0:
        raise SweepConfigError(f"`--max-images` must be 0 or more, got {max_images}")
    root = Path(sweep).expanduser()
    snap, sections, figures = build_sections(root, max_images, progress)
    out = Path(out) if out else root / "report.html"
    files = out.parent / f"{out.stem}_files"
    # Temp file + rename, readable like any file (a report is meant to be shared and served): a browser
    # reloading the report never sees half of it.
    for name, data in figures.items.items():
        with atomic_open(files / name, shared=True) as f:
            f.write(data)
    for stale in files.glob("*.png") if files.is_dir() else []:  # plots of an older report that are gone now
        if stale.name not in figures.items:
            stale.unlink()
    page = render_page(f"tsweep report: {snap.name}", sections, time.strftime("%Y-%m-%d %H:%M:%S"))
    with atomic_open(out, shared=True) as f:
        f.write(page.encode("utf-8"))
    return out
