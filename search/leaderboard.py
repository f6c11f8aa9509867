"""Leaderboards: rank a sweep's trial records and render them as a table, CSV, JSON or Markdown.

Everything here is a pure function of trial records (dicts read by `records.read_trials`), so it is tested
without Ray and works on a sweep that is still running.
"""

from __future__ import annotations

import csv
import io
import json
from typing import Any, Iterable, Sequence

from tsweep.search.objective import Objective

FORMATS = ("table", "csv", "json", "markdown")


def leaderboard_rows(trials: Iterable[dict], objective: Objective, params: Sequence[str],
                     top: int | None = None) -> list[dict]:
    """One row per trial, best first.

    Args:
        trials: trial records (`trial_id`, `status`, `config`, `history`, `wall_s`, `budget`).
        objective: the metric and direction to rank by.
        params: the hyperparameter columns (the sampled keys of the sweep's space).
        top: keep only the first `top` rows; default all.
    """
    rows = []
    for t in trials:
        epoch, value = objective.best_epoch(t.get("history", []))
        row: dict[str, Any] = {
            "trial": t.get("trial_id", "?"),
            "status": t.get("status", "?"),
            "epochs": len(t.get("history", [])),
            objective.metric: value,
            "best_epoch": epoch,
        }
        config = t.get("config", {})
        row.update({p: config.get(p) for p in params})
        row["wall_s"] = t.get("wall_s")
        rows.append(row)
    rows.sort(key=lambda r: (objective.sort_key(r[objective.metric]), str(r["trial"])))
    for i, row in enumerate(rows, 1):
        row["rank"] = i
    rows = [{"rank": r.pop("rank"), **r} for r in rows]
    return rows[:top] if top else rows


def fmt(value: Any) -> str:
    """A cell for humans: short floats, '-' for missing."""
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != 0 and (abs(value) < 1e-3 or abs(value) >= 1e5):
            return f"{value:.2e}"
        return f"{value:.4g}"
    return str(value)


def render_table(rows: Sequence[dict]) -> str:
    """Fixed-width text table; numbers right-aligned."""
    if not rows:
        return "(no trials yet)"
    columns = list(rows[0])
    cells = [[fmt(r.get(c)) for c in columns] for r in rows]
    widths = [max(len(c), *(len(line[i]) for line in cells)) for i, c in enumerate(columns)]
    numeric = [all(isinstance(r.get(c), (int, float)) or r.get(c) is None for r in rows) for c in columns]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)).rstrip()

    return "\n".join([line(columns), line(["-" * w for w in widths]), *(line(c) for c in cells)])


def render_csv(rows: Sequence[dict]) -> str:
    out = io.StringIO()
    if rows:
        writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
    return out.getvalue()


def render_json(rows: Sequence[dict]) -> str:
    return json.dumps(list(rows), indent=2)


def render_markdown(rows: Sequence[dict]) -> str:
    if not rows:
        return "_no trials yet_"
    columns = list(rows[0])
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    lines += ["| " + " | ".join(fmt(r.get(c)).replace("|", "\\|") for c in columns) + " |" for r in rows]
    return "\n".join(lines)


RENDERERS = {"table": render_table, "csv": render_csv, "json": render_json, "markdown": render_markdown}


def render(rows: Sequence[dict], fmt_name: str = "table") -> str:
    """Render rows in one of FORMATS."""
    return RENDERERS[fmt_name](rows)


def status_counts(trials: Iterable[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.get("status", "?")] = counts.get(t.get("status", "?"), 0) + 1
    return counts
