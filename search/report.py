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
from typing import Callable, Sequence

from tsweep.errors import SweepConfigError
from tsweep.files import atomic_open, is_uri
from tsweep.search import report_plots as plots
from tsweep.search import report_stats as stats
from tsweep.search.baseline import gain_sentence, transfer_gain
from tsweep.search.cache_budget import parse_duration
from tsweep.search.export_swap import current_export
from tsweep.search.leaderboard import board, render_html, status_counts
from tsweep.search.objective import Objective
from tsweep.search.reader import SweepSnapshot, read_snapshot
from tsweep.search.report_html import Figures, Section, facts_table, files_written, importance_table, note, render_page
from tsweep.search.report_winner import winner_sections

IMPORTANCE_HELP = (
    "For each hyperparameter, the trials that reported {metric} are grouped by its value (numbers with many "
    "distinct values into 3 equal-count ranges). <b>spread</b> is the difference between the best and the worst "
    "group's mean best {metric}: the larger, the more this hyperparameter moved the result in this sweep. "
    "<b>|&rho;|</b> is the absolute Spearman rank correlation between a numeric hyperparameter and the best "
    "{metric} (1: the metric rises or falls steadily with it; 0: no monotonic relation). ASHA-pruned trials "
    "count with the best value they reached before being stopped. With few trials these are hints, not proof.")


def summary_section(snap: SweepSnapshot, objective: Objective, key: str = "summary") -> Section:
    info = snap.info
    counts = status_counts(snap.trials)
    facts = [("sweep", snap.name), ("status", info.get("status", "unknown (no sweep.json)")),
             ("created", info.get("created", "-")), ("ended", info.get("ended", "-")),
             ("space", info.get("space", "-")), ("data", (info.get("data") or {}).get("data_dir", "-")),
             ("objective", f"{objective.metric} ({objective.mode})"), *search_facts(info),
             ("trials", ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "none yet")]
    gain = gain_sentence(transfer_gain(snap.trials, objective))
    if gain:  # --baseline: what transfer gained over small_cnn trained from scratch
        facts.append(("over the baseline", gain))
    blocks = [facts_table(facts)]
    blocks += [note(p) for p in snap.problems]
    blocks.append(f"<p>TensorBoard: <code>tensorboard --logdir {html.escape(snap.location)}</code> shows every "
                  "trial's loss, accuracy, val_loss, val_accuracy and val_balanced_accuracy per epoch side by side "
                  "(tags <code>ray/tune/*</code>).</p>")
    return Section(key, f"Sweep {snap.name}", blocks)


def search_facts(info: dict) -> list[tuple[str, str]]:
    """The search algorithm, the trial limit, the time budget and the warm start of a sweep's sweep.json."""
    opts = info.get("options") or {}
    search = info.get("search") or opts.get("search") or "random"  # sweeps before --search were random
    limit = opts.get("num_samples") or (16 if not opts.get("time_budget") else 0)
    facts = [("search", f"{search}, ASHA pruning"), ("trials at most", str(limit) if limit else "no limit"),
             ("time budget", opts.get("time_budget") or "none")]
    if opts.get("warm_start"):
        facts.append(("warm start", ", ".join(opts["warm_start"])))
    return facts


def anytime_section(snaps: Sequence[SweepSnapshot], objective: Objective, figures: Figures) -> Section:
    """Best-so-far against wall time of one sweep, or of several side by side (each from its first trial)."""
    section = Section("anytime", "Best so far against wall time")
    series = {}
    for snap in snaps:
        points = stats.epoch_points(snap.trials, objective.metric)
        start = min((float(t["started"]) for t in snap.trials if t.get("started")), default=0.0)
        label = f"{snap.name} ({search_facts(snap.info)[0][1].split(',')[0]})"
        series[label] = stats.best_so_far(points, objective, start)
    if not any(series.values()):
        section.blocks.append(note(f"No trial has reported {objective.metric} yet."))
        return section
    budgets = [parse_duration(b, "--time-budget") for b in
               {(s.info.get("options") or {}).get("time_budget") for s in snaps} if b]
    caption = (f"The best {objective.metric} any trial had reached, against the wall time since the sweep's first "
               "trial started (a dot per improvement)." + (" Grey dotted line: the time budget." if budgets else ""))
    section.blocks.append(figures.add("anytime", plots.anytime_png(series, objective.metric,
                                                                   max(budgets) if budgets else None),
                                      "best so far against wall time", caption))
    return section


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
                   others: Sequence[Path] = ()) -> tuple[SweepSnapshot, list[Section], Figures]:
    """Read the sweep and compute every section and plot of its report; `others` (more sweeps given
    together) add their summaries, their trials to a second leaderboard and their curves to the
    best-so-far plot."""
    snap = read_snapshot(root)
    more = [read_snapshot(o) for o in others]
    objective = snap.objective() or Objective()
    figures = Figures()
    sections = [summary_section(snap, objective)]
    sections += [summary_section(m, objective, f"summary-{i}") for i, m in enumerate(more, 2)]
    main = sweep_sections(snap, objective, figures)
    sections += [main[0], anytime_section([snap, *more], objective, figures)]
    if more:
        rows = board([snap, *more], sort=objective.metric, mode=objective.mode).rows
        sections.append(Section("all", "Leaderboard of all the sweeps", [render_html(rows)]))
    sections += main[1:] + winner_sections(current_export(root), snap, figures, max_images, progress)
    return snap, sections, figures


def write_report(sweep: str | Path | Sequence[str | Path], out: str | Path | None = None, max_images: int = 8,
                 progress: Callable[[str], None] = print) -> Path:
    """Write the HTML report of a sweep and its plots as PNGs in `<out stem>_files/` beside it.

    Args:
        sweep: the local sweep folder (results/<name>), or several: the report is the first one's, with the
            others' summaries, trials and best-so-far curves beside its own.
        out: the HTML file; default None = results/<name>/report.html.
        max_images: misclassified images shown at most; default 8.
        progress: where progress lines go; default print.

    Returns:
        The HTML file.

    Raises:
        SweepConfigError: a URI instead of a local folder, not a sweep folder, or max_images < 0.
    """
    sweeps = [sweep] if isinstance(sweep, (str, Path)) else list(sweep)
    for one in sweeps:
        if is_uri(str(one)):
            raise SweepConfigError(f"`tsweep report` needs a local sweep folder (it loads the exported model), got "
                                   f"{one}: copy it first (e.g. `aws s3 sync {one} results/NAME`)")
    if max_images < 0:
        raise SweepConfigError(f"`--max-images` must be 0 or more, got {max_images}")
    root = Path(sweeps[0]).expanduser()
    snap, sections, figures = build_sections(root, max_images, progress, [Path(o).expanduser() for o in sweeps[1:]])
    out = Path(out) if out else root / "report.html"
    files = out.parent / f"{out.stem}_files"
    # Temp file + rename, readable like any file (a report is meant to be shared and served): a browser
    # reloading the report never sees half of it.
    # The plots an earlier report at `out` wrote (listed in its page) and that are gone now are removed: only
    # those, never another PNG that happens to be in that folder.
    try:
        earlier = files_written(out.read_text(encoding="utf-8", errors="replace"))
    except OSError:  # no earlier report here
        earlier = []
    for name, data in figures.items.items():
        with atomic_open(files / name, shared=True) as f:
            f.write(data)
    page = render_page(f"tsweep report: {snap.name}", sections, time.strftime("%Y-%m-%d %H:%M:%S"),
                       files=figures.items)
    with atomic_open(out, shared=True) as f:
        f.write(page.encode("utf-8"))
    for name in set(earlier) - set(figures.items):
        (files / name).unlink(missing_ok=True)
    return out
