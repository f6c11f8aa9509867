"""The figures of `tsweep report` and `tsweep predict --plot`, drawn with matplotlib's object API on the Agg
canvas (no pyplot, no display, nothing global), each returned as PNG bytes.
"""

from __future__ import annotations

import io
import math
from typing import Any, Mapping, Sequence

import numpy as np

from tsweep.search.leaderboard import fmt
from tsweep.search.objective import Objective, is_number
from tsweep.search.report_stats import best_values, category_order, is_categorical

# Line style and end marker per trial status: pruned trials end dashed, with an x where ASHA stopped them.
STATUS_STYLE = {"completed": ("-", "o"), "pruned": ("--", "x"), "running": (":", ">"), "failed": ("-.", "X"),
                "stopped": ("--", "|")}  # stopped: by the time budget
OTHER_STYLE = (":", ".")
LOG_PARAMS = ("learning_rate", "warmup_learning_rate", "weight_decay")  # log axes even without sweep.json
DPI = 100


def new_figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=DPI, layout="constrained")
    FigureCanvasAgg(fig)
    return fig


def png(fig: Any) -> bytes:
    """The figure as PNG bytes."""
    out = io.BytesIO()
    fig.savefig(out, format="png", dpi=DPI)
    return out.getvalue()


def counterpart(metric: str) -> str:
    """val_accuracy <-> val_loss, accuracy <-> loss: the other curve worth showing beside the objective."""
    return metric.replace("accuracy", "loss") if "accuracy" in metric else metric.replace("loss", "accuracy")


def curves_png(trials: Sequence[dict], metric: str, rungs: Sequence[int] = (), max_epochs: int = 0,
               max_labels: int = 12) -> bytes:
    """Every trial's validation curve (metric and its counterpart, per epoch): line style by status, a
    marker at each trial's last epoch (x: stopped by ASHA there), grey lines at the ASHA rungs.

    Args:
        trials: trial records.
        metric: the sweep's metric (its counterpart, val_loss for val_accuracy, gets a second panel).
        rungs: epochs of the ASHA rungs; default () (none drawn).
        max_epochs: the epoch budget, the x axis's end (so a cut is visible against it); default 0 = data.
        max_labels: name each trial in the legend when there are at most this many; default 12.
    """
    from matplotlib.lines import Line2D

    metrics = [metric] + [m for m in [counterpart(metric)]
                          if m != metric and any(m in h for t in trials for h in t.get("history", []))]
    fig = new_figure(6.2 * len(metrics) + 1.8, 4.4)
    axes = fig.subplots(1, len(metrics), squeeze=False)[0]
    labelled = len(trials) <= max_labels
    handles: list[Any] = []
    for i, t in enumerate(trials):
        style, marker = STATUS_STYLE.get(t.get("status", ""), OTHER_STYLE)
        colour = f"C{i % 10}"
        for ax, m in zip(axes, metrics):
            points = [(h["epoch"], h[m]) for h in t.get("history", []) if is_number(h.get(m)) and "epoch" in h]
            if not points:
                continue
            x, y = zip(*points)
            ax.plot(x, y, linestyle=style, color=colour, linewidth=1.6, alpha=0.9)
            ax.plot(x[-1], y[-1], marker=marker, color=colour, markersize=9, markeredgewidth=2.2, linestyle="")
        if labelled and t.get("history"):
            label = f"{t.get('trial_id')} ({t.get('status')})"
            handles.append(Line2D([], [], color=colour, linestyle=style, label=label))
    for ax, m in zip(axes, metrics):
        for r in rungs:
            ax.axvline(r, color="0.6", linewidth=1, linestyle=(0, (1, 3)), zorder=0)
        ax.set_xlabel("epoch")
        ax.set_ylabel(m)
        ax.set_title(f"{m} per epoch")
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        if max_epochs:
            ax.set_xlim(0.7, max_epochs + 0.3)
    shown = {t.get("status") for t in trials if t.get("history")}
    legend = [Line2D([], [], color="0.2", linestyle=s, marker=mk, label=name)
              for name, (s, mk) in STATUS_STYLE.items() if name in shown]
    if rungs:
        legend.append(Line2D([], [], color="0.6", linestyle=(0, (1, 3)), label="ASHA rung"))
    axes[-1].legend(handles=legend + handles, loc="upper left", bbox_to_anchor=(1.02, 1.0), fontsize=8,
                    frameon=False)
    return png(fig)


def anytime_png(series: Mapping[str, Sequence[tuple[float, float]]], metric: str,
                budget_s: float | None = None) -> bytes:
    """Best-so-far curves against wall time, one step line per label (a sweep, or a method and seed).

    Args:
        series: label -> (seconds since its start, best value so far) at each improvement.
        metric: the y axis.
        budget_s: a time budget drawn as a grey line, and where the curves end; default None (their last point).
    """
    fig = new_figure(7.5, 3.8)
    ax = fig.add_subplot()
    end = budget_s or max((p[-1][0] for p in series.values() if p), default=1.0)
    for i, (label, points) in enumerate(series.items()):
        if not points:
            continue
        xs = [x / 60 for x, _ in points] + [end / 60]
        ys = [y for _, y in points] + [points[-1][1]]
        ax.step(xs, ys, where="post", color=f"C{i % 10}", label=label)
        ax.plot(xs[:-1], ys[:-1], "o", color=f"C{i % 10}", markersize=3)
    if budget_s:
        ax.axvline(budget_s / 60, color="0.6", linestyle=":", linewidth=1)
    ax.set_xlabel("wall time (minutes)")
    ax.set_ylabel(f"best {metric} so far")
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8, loc="lower right")
    return png(fig)


def params_png(trials: Sequence[dict], params: Sequence[str], objective: Objective,
               kinds: Mapping[str, str] | None = None) -> bytes:
    """Each sampled hyperparameter against each trial's best metric: log x for learning rates and log-uniform
    hyperparameters, categorical axes for choices and strings; the best trial circled in red."""
    scored = best_values(trials, objective)
    best = min(scored, key=lambda tv: objective.sort_key(tv[1]))[0] if scored else None
    cols = min(3, max(1, len(params)))
    rows = max(1, math.ceil(len(params) / cols))
    fig = new_figure(4.3 * cols, 3.3 * rows)
    axes = fig.subplots(rows, cols, squeeze=False).ravel()
    rng = np.random.default_rng(0)  # jitter of categorical points: the same picture every time
    for ax, p in zip(axes, params):
        pts = [(t, (t.get("config") or {}).get(p), v) for t, v in scored if p in (t.get("config") or {})]
        values = [v for _, v, _ in pts]
        categorical = is_categorical(values, (kinds or {}).get(p))
        order = category_order(values) if categorical else []
        position = {fmt(v): i for i, v in enumerate(order)}
        for t, value, y in pts:
            _, marker = STATUS_STYLE.get(t.get("status", ""), OTHER_STYLE)
            x = position[fmt(value)] + rng.uniform(-0.12, 0.12) if categorical else value
            ax.scatter([x], [y], marker=marker, s=40, color="C0" if t.get("status") == "completed" else "C1",
                       zorder=3)
            if t is best:
                ax.scatter([x], [y], s=180, facecolors="none", edgecolors="red", linewidths=1.8, zorder=4)
        if categorical:
            ax.set_xticks(range(len(order)), [fmt(v) for v in order], rotation=30 if len(order) > 3 else 0)
            ax.set_xlim(-0.5, len(order) - 0.5)
        elif values and ((kinds or {}).get(p) == "loguniform" or p in LOG_PARAMS) and min(values) > 0:
            ax.set_xscale("log")
        ax.set_title(p)
        ax.set_ylabel(f"best {objective.metric}")
        ax.grid(alpha=0.3)
    for ax in axes[len(params):]:
        ax.set_visible(False)
    return png(fig)


def history_png(history: Sequence[dict]) -> bytes:
    """The exported winner's training: accuracy and loss per epoch, training and validation, warm-up shaded."""
    fig = new_figure(11, 3.8)
    axes = fig.subplots(1, 2)
    epochs = [h.get("epoch", i + 1) for i, h in enumerate(history)]
    warm = [e for e, h in zip(epochs, history) if h.get("phase") == "warmup"]
    for ax, name in zip(axes, ("accuracy", "loss")):
        for key, style, label in ((name, "-", "training"), (f"val_{name}", "--", "validation")):
            xy = [(e, h[key]) for e, h in zip(epochs, history) if isinstance(h.get(key), (int, float))]
            if xy:
                ax.plot(*zip(*xy), linestyle=style, marker="o", label=label)
        if warm:
            ax.axvspan(min(warm) - 0.5, max(warm) + 0.5, color="0.85", zorder=0, label="warm-up")
        ax.set_title(f"{name} per epoch")
        ax.set_xlabel("epoch")
        ax.set_ylabel(name)
        ax.grid(alpha=0.3)
        ax.xaxis.get_major_locator().set_params(integer=True)
        ax.legend(fontsize=8)
    return png(fig)


def confusion_png(matrices: Mapping[str, np.ndarray], class_names: Sequence[str]) -> bytes:
    """One confusion matrix per split (rows: true class, columns: predicted), counts written in the cells."""
    n = len(class_names)
    side = max(3.6, 0.55 * n + 2.2)
    fig = new_figure(side * len(matrices), side)
    axes = fig.subplots(1, len(matrices), squeeze=False)[0]
    for ax, (split, cm) in zip(axes, matrices.items()):
        ax.imshow(cm, cmap="Blues", vmin=0)
        for (i, j), count in np.ndenumerate(cm):
            dark = count > cm.max() / 2
            ax.text(j, i, str(count), ha="center", va="center", color="white" if dark else "black", fontsize=9)
        total = int(cm.sum())
        accuracy = np.trace(cm) / total if total else 0.0
        ax.set_title(f"{split}: {total} images, accuracy {accuracy:.1%}")
        ax.set_xticks(range(n), class_names, rotation=45 if n > 4 else 0, ha="right" if n > 4 else "center")
        ax.set_yticks(range(n), class_names)
        ax.set_xlabel("predicted")
        ax.set_ylabel("true")
    return png(fig)


def predictions_png(items: Sequence[Mapping[str, Any]], columns: int = 3) -> bytes:
    """A grid of photos, each beside bars of its top-k class probabilities.

    Args:
        items: dicts with "title", "image" (uint8 H x W x 3), "predictions" [(class, probability), ...]
            best first, and optionally "truth" (the true class: its bar is green, a wrong top-1 red).
        columns: photos per row; default 3.
    """
    columns = max(1, min(columns, len(items)))
    rows = max(1, math.ceil(len(items) / columns))
    fig = new_figure(4.4 * columns, 1.9 * rows + 0.2)
    grid = fig.add_gridspec(rows, 2 * columns, width_ratios=[1.0, 1.35] * columns)
    for n, item in enumerate(items):
        r, c = divmod(n, columns)
        photo, bars = fig.add_subplot(grid[r, 2 * c]), fig.add_subplot(grid[r, 2 * c + 1])
        photo.imshow(item["image"], interpolation="nearest")
        photo.set_axis_off()
        photo.set_title(item["title"], fontsize=8)
        names = [name for name, _ in item["predictions"]]
        probs = [p for _, p in item["predictions"]]
        truth = item.get("truth")
        colours = ["C2" if name == truth else "C3" if truth is not None and i == 0 else "C0"
                   for i, name in enumerate(names)]
        bars.barh(range(len(names)), probs, color=colours)
        bars.set_yticks(range(len(names)), names, fontsize=8)
        bars.invert_yaxis()
        bars.set_xlim(0, 1)
        bars.tick_params(axis="x", labelsize=7)
        for i, p in enumerate(probs):
            bars.text(min(p + 0.02, 0.78), i, f"{p:.1%}", va="center", fontsize=8)
    return png(fig)
