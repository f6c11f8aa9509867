"""Leaderboards: rank trial records of one or several sweeps, filter them, render them as a table, CSV,
JSON, Markdown or HTML.

Everything here is a pure function of trial records (dicts read by `records.read_trials` or
`reader.read_snapshot`), so it is tested without Ray and works on a sweep that is still running.
"""

from __future__ import annotations

import csv
import html
import io
import json
import math
import re
from dataclasses import dataclass, field
from typing import Any, Iterable, Sequence

from tsweep.errors import SweepConfigError
from tsweep.search.columns import extra_columns, extra_values, keep_top
from tsweep.search.objective import Objective, is_number
from tsweep.search.records import STATUSES

FORMATS = ("table", "csv", "json", "markdown", "html")
# Per-epoch keys of a trial's history that are bookkeeping, not metrics one could rank by.
NOT_METRICS = ("epoch", "phase")

def leaderboard_rows(trials: Iterable[dict], objective: Objective, params: Sequence[str],
                     top: int | None = None) -> list[dict]:
    """One row per trial, best first.

    Args:
        trials: trial records (`trial_id`, `status`, `config`, `history`, `wall_s`, `budget`).
        objective: the metric and direction to rank by.
        params: the hyperparameter columns (the sampled keys of the sweep's space).
        top: keep only the first `top` rows; default all.
    """
    trials = list(trials)
    extra = extra_columns(trials, objective)
    rows = []
    for t in trials:
        epoch, value = objective.best_epoch(t.get("history", []))
        row: dict[str, Any] = {
            "trial": t.get("trial_id", "?"),
            "status": t.get("status", "?"),
            "epochs": len(t.get("history", [])),
            objective.metric: value,
            "best_epoch": epoch,
            **extra_values(t, extra, epoch),
        }
        config = t.get("config", {})
        row.update({p: config.get(p) for p in params})
        row["wall_s"] = t.get("wall_s")
        rows.append(row)
    rows.sort(key=lambda r: (objective.sort_key(r[objective.metric]), str(r["trial"])))
    for i, row in enumerate(rows, 1):
        row["rank"] = i
    rows = [{"rank": r.pop("rank"), **r} for r in rows]
    return keep_top(rows, top, lambda r: r.get("baseline"))


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


def render_html(rows: Sequence[dict]) -> str:
    """An HTML <table class="leaderboard"> (escaped; numeric cells and status cells get CSS classes)."""
    if not rows:
        return '<p class="empty">no trials yet</p>'
    columns = list(rows[0])
    head = "".join(f"<th>{html.escape(c)}</th>" for c in columns)

    def cell(column: str, value: Any) -> str:
        kind = "num" if is_number(value, finite=False) else "text"
        if column == "status":
            kind += f" status-{html.escape(str(value))}"
        return f'<td class="{kind}">{html.escape(fmt(value))}</td>'

    body = "\n".join("<tr>" + "".join(cell(c, r.get(c)) for c in columns) + "</tr>" for r in rows)
    return f'<table class="leaderboard">\n<thead><tr>{head}</tr></thead>\n<tbody>\n{body}\n</tbody>\n</table>'


RENDERERS = {"table": render_table, "csv": render_csv, "json": render_json, "markdown": render_markdown,
             "html": render_html}


def render(rows: Sequence[dict], fmt_name: str = "table") -> str:
    """Render rows in one of FORMATS."""
    return RENDERERS[fmt_name](rows)


def status_counts(trials: Iterable[dict]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for t in trials:
        counts[t.get("status", "?")] = counts.get(t.get("status", "?"), 0) + 1
    return counts


# -- filters ----------------------------------------------------------------------------------------------
WHERE_RE = re.compile(r"^\s*([A-Za-z_][\w.-]*)\s*(==|!=|<=|>=|=|<|>)\s*(.*?)\s*$")
OPERATORS = {"=": lambda a, b: a == b, "!=": lambda a, b: a != b, "<": lambda a, b: a < b,
             "<=": lambda a, b: a <= b, ">": lambda a, b: a > b, ">=": lambda a, b: a >= b}


def _number(value: Any) -> float | None:
    """A float when `value` is a number or a string spelling one ("1e-3"); None otherwise (bools too)."""
    if isinstance(value, bool) or value is None:
        return None
    if isinstance(value, (int, float)):
        return float(value)
    try:
        return float(str(value))
    except ValueError:
        return None


@dataclass(frozen=True)
class Condition:
    """One `--where` condition, e.g. Condition("learning_rate", "<", "1e-3")."""

    key: str
    op: str
    value: str

    def test(self, actual: Any) -> bool:
        """Numbers compare as numbers when both sides are numbers, anything else as text; a missing value
        only satisfies `!=`."""
        if actual is None:
            return self.op == "!="
        a, b = _number(actual), _number(self.value)
        if a is not None and b is not None:
            return not math.isnan(a) and OPERATORS[self.op](a, b)
        text = str(actual).lower() if isinstance(actual, bool) else str(actual)  # True matches "true"
        return OPERATORS[self.op](text, self.value)


def parse_where(text: str) -> Condition:
    """Parse "key=value", "key!=value", "key<value" (and <=, >, >=; == is =) into a Condition.

    Raises:
        SweepConfigError: no operator, no key or no value.
    """
    match = WHERE_RE.match(text)
    if not match:
        raise SweepConfigError(f"`--where` must look like key=value or key<value (operators = != < <= > >=), "
                               f"got {text!r}")
    key, op, value = match.groups()
    if not value:
        raise SweepConfigError(f"`--where` needs a value after the operator, got {text!r}: e.g. {key}{op}0.001")
    return Condition(key, "=" if op == "==" else op, value)


def parse_statuses(text: str | None) -> tuple[str, ...]:
    """"completed,pruned" -> ("completed", "pruned"); None or "" -> () (every status).

    Raises:
        SweepConfigError: an unknown status.
    """
    wanted = tuple(dict.fromkeys(s.strip().lower() for s in (text or "").split(",") if s.strip()))
    unknown = [s for s in wanted if s not in STATUSES]
    if unknown:
        raise SweepConfigError(f"`--status` must be a comma-separated list of {', '.join(STATUSES)}, "
                               f"got {', '.join(map(repr, unknown))}")
    return wanted


# -- several sweeps in one table --------------------------------------------------------------------------
@dataclass
class Board:
    """A ranked, filtered table over one or more sweeps.

    Attributes:
        rows: ranked rows, best first (a `sweep` column after `rank` when there are several sweeps).
        objective: the metric and direction the rows are ranked by.
        notes: sentences for the user (differing objectives, ...), printed as warnings by the CLI.
    """

    rows: list[dict]
    objective: Objective
    notes: list[str] = field(default_factory=list)


def reported_metrics(trials: Iterable[dict]) -> list[str]:
    """The metrics trials reported (keys of their history rows), sorted."""
    return sorted({k for t in trials for h in t.get("history", []) for k in h if k not in NOT_METRICS})


def choose_objective(sweeps: Sequence[Any], sort: str | None = None, mode: str | None = None,
                     ) -> tuple[Objective, list[str]]:
    """The objective to rank by: `sort` (any reported metric; direction from its name unless `mode`), else
    the sweeps' own metric (the first sweep's when they differ, with a note).

    Raises:
        SweepConfigError: `sort` is not a metric the trials reported.
    """
    from tsweep.search.sweep import REPORTED_METRICS

    if sort:
        known = sorted(set(REPORTED_METRICS) | set(reported_metrics(t for s in sweeps for t in s.trials)))
        if sort not in known:
            raise SweepConfigError(f"`--sort` must be a reported metric ({', '.join(known)}), got {sort!r}")
        return Objective(sort, mode or ""), []
    own = [(s.name, s.objective()) for s in sweeps if s.objective() is not None]
    if not own:
        return Objective(mode=mode or ""), []
    first = own[0][1]
    notes = []
    if len({o.metric for _, o in own}) > 1:
        which = ", ".join(f"{name}: {o.metric}" for name, o in own)
        notes.append(f"the sweeps optimise different metrics ({which}): all ranked by {first.metric}; "
                     "pass --sort METRIC to choose")
    return Objective(first.metric, mode or first.mode), notes


def board(sweeps: Sequence[Any], sort: str | None = None, mode: str | None = None,
          statuses: Sequence[str] = (), where: Sequence[Condition] = (), top: int | None = None) -> Board:
    """Rank the trials of several sweeps in one table.

    Args:
        sweeps: `reader.SweepSnapshot`s (anything with name, trials, objective() and params()).
        sort: metric to rank by; default None = the sweeps' own metric.
        mode: "max" or "min"; default None = the sweep's own, or from the metric's name with `sort`.
        statuses: keep trials with these statuses only; default () = all.
        where: conditions every kept row satisfies, on a column (trial, status, epochs, the metric,
            best_epoch, wall_s, sweep) or else on the trial's config (any hyperparameter, sampled or fixed).
        top: keep the first `top` rows after filtering; default None = all.

    Raises:
        SweepConfigError: unknown `sort` metric, or a `where` key that no trial has.
    """
    objective, notes = choose_objective(sweeps, sort, mode)
    several = len(sweeps) > 1
    params = list(dict.fromkeys(p for s in sweeps for p in s.params()))
    extra = extra_columns([t for s in sweeps for t in s.trials], objective)
    columns = ["rank", *(["sweep"] if several else []), "trial", "status", "epochs", objective.metric,
               "best_epoch", *extra, *params, "wall_s"]
    # rank is given after filtering, so it cannot be filtered on (--top does that)
    known = (set(columns) - {"rank"}) | {"sweep"} | {k for s in sweeps for t in s.trials for k in t.get("config") or {}}
    unknown = sorted({c.key for c in where if c.key not in known})
    if unknown and any(s.trials for s in sweeps):
        raise SweepConfigError(f"`--where` key {', '.join(map(repr, unknown))} is no column or hyperparameter of "
                               f"these trials: choose from {', '.join(sorted(known))} (use --top for ranks)")
    rows = []
    for s in sweeps:
        kept = [t for t in s.trials if not statuses or t.get("status") in statuses]
        configs = {t.get("trial_id", "?"): t.get("config") or {} for t in kept}
        for row in leaderboard_rows(kept, objective, s.params()):
            # columns win over config keys: `epochs` is the epochs run, not the budget
            lookup = {**configs.get(row["trial"], {}), **row, "sweep": s.name}
            if all(c.test(lookup.get(c.key)) for c in where):
                rows.append((row, lookup))
    rows.sort(key=lambda r: (objective.sort_key(r[0][objective.metric]), r[1]["sweep"], str(r[0]["trial"])))
    # A hyperparameter sampled in one sweep shows its fixed value in the others (e.g. each one's backbone).
    out = [{c: (i if c == "rank" else lookup.get(c)) for c in columns} for i, (_, lookup) in enumerate(rows, 1)]
    return Board(keep_top(out, top, lambda r: r.get("baseline")), objective, notes)
