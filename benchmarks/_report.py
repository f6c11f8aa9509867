"""Figures of sweep_speed.py: the machine, the final table, the --json document."""

from __future__ import annotations

import argparse
import os
import platform
from pathlib import Path

import ray  # also puts its bundled psutil on sys.path (ray[tune] does not install psutil itself)

RUNS = {"a": "tsweep", "b": "naive_ray", "c": "keras_tuner_hyperband"}


def machine() -> dict:
    import keras
    import keras_tuner
    import psutil
    import tensorflow as tf

    try:
        from ray._private.utils import get_num_cpus  # the CPUs a local Ray detects (cgroup limits included)

        ray_cpus = int(get_num_cpus())
    except Exception:
        ray_cpus = os.cpu_count() or 1
    cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                if line.startswith("model name")), platform.processor()) if Path("/proc/cpuinfo").exists() else ""
    return {"cpus": os.cpu_count(), "ray_cpus": ray_cpus, "cpu": cpu,
            "ram_gb": round(psutil.virtual_memory().total / 2**30, 1), "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__, "ray": ray.__version__,
            "keras_tuner": keras_tuner.__version__}


def ratio(num: dict | None, den: dict | float | None) -> float | None:
    a = num["wall_s"] if isinstance(num, dict) else num
    b = den["wall_s"] if isinstance(den, dict) else den
    return round(a / b, 2) if a and b else None


def overhead(records: list[dict], wall_s: float, concurrency: int) -> dict:
    """Per-trial overhead of (a): the time each trial spent outside its epochs (worker start or reuse, data,
    model build, checkpoints, reports: its `wall_s` minus the sum of its `epoch_time_s`), summed over trials.

    `share` divides that sum by the worker time (a) had, wall_s x concurrency (trials running side by side),
    so it is the fraction of (a)'s wall time the workers spent on overhead. Note that `epoch_time_s` counts
    `fit`, so the tracing of a new model's train step and a phase's feature computation count as epochs.
    """
    spent = sum(max(0.0, r["wall_s"] - sum(h.get("epoch_time_s", 0.0) for h in r["history"]))
                for r in records if r.get("wall_s") is not None)
    share = spent / (wall_s * max(1, concurrency)) if wall_s else None
    return {"overhead_s": round(spent, 1), "share": None if share is None else round(share, 3),
            "per_trial_s": round(spent / len(records), 2) if records else None}


def table(results: dict, bound: dict | None, args: argparse.Namespace, info: dict,
          trial_overhead: dict | None = None) -> str:
    fmt = lambda v, spec: "n/a" if v is None else format(v, spec)  # noqa: E731
    rows = [f"{'run':<28}{'wall s':>9}{'trials':>8}{'epochs':>8}{'s/epoch':>9}{'best val acc':>14}"
            f"{'peak RSS MB':>13}{'wall / (a)':>12}"]
    for letter, name in RUNS.items():
        r = results.get(name)
        if r is None:
            rows.append(f"({letter}) {name:<24}{'not run':>9}")
            continue
        per_epoch = r["wall_s"] / r["epochs"] if r["epochs"] else None
        rows.append(f"({letter}) {name:<24}{r['wall_s']:>9.1f}{r['trials']:>8}{r['epochs']:>8}"
                    f"{fmt(per_epoch, '.2f'):>9}{fmt(r['best_val_accuracy'], '.4f'):>14}{r['peak_rss_mb']:>13}"
                    f"{fmt(ratio(r, results.get('tsweep')), '.2f'):>12}")
    a = results.get("tsweep")
    lines = [f"sweep: {args.trials} trials, ASHA max {args.max_epochs} epochs (grace 1, reduction 3), "
             f"MobileNetV2 1.0 at {args.image_size} px, weights {Path(args.weights).name}, data {args.data}",
             f"machine: {info['cpus']} CPUs ({info['cpu']}), {info['ram_gb']} GB RAM, Python {info['python']}, "
             f"TensorFlow {info['tensorflow']}, Keras {info['keras']}, Ray {info['ray']}, "
             f"KerasTuner {info['keras_tuner']}", "", *rows, ""]
    for label, num in (("naive / tsweep", results.get("naive_ray")),
                       ("hyperband / tsweep", results.get("keras_tuner_hyperband"))):
        lines.append(f"{label}: {fmt(ratio(num, a), '.2f')}")
    if bound is None:
        lines.append("lower bound for (a): n/a (needs (a))")
    else:
        (cut, prefix_s), = bound["prefix_s"].items()
        lines.append(f"lower bound for (a): {bound['bound_s']:.1f} s = decode {bound['decode_s']:.1f} + one pass "
                     f"through the deepest frozen prefix (cutoff {cut}) {prefix_s:.1f} + {bound['views']} views x "
                     f"{bound['view_s']:.1f} + steady-state train steps {bound['steps_s']:.1f} / "
                     f"{bound['concurrency']} trials side by side; tsweep (whole run, export included) / bound: "
                     f"{fmt(ratio(a, bound['bound_s']), '.2f')}; its sweep alone (without the export, which the bound "
                     f"leaves out) / bound: {fmt(sweep_ratio(a, bound), '.2f')}")
    if a is not None and "tracing_s" in a:
        lines.append(f"where (a)'s trial time went: steady train steps {a['steps_s']:.1f} s, first epochs of "
                     f"{a['phases']} phases beyond steady (tracing, building) {a['tracing_s']:.1f} s, making or "
                     f"loading cached activations {a['staged_s']:.1f} s (summed over trials); export "
                     f"{a['export_s']:.1f} s of the wall time")
    if trial_overhead is not None:
        lines.append(f"per-trial overhead of (a): {trial_overhead['overhead_s']:.1f} s over its trials "
                     f"({fmt(trial_overhead['per_trial_s'], '.2f')} s per trial), "
                     f"{fmt(None if trial_overhead['share'] is None else 100 * trial_overhead['share'], '.1f')}% "
                     "of its workers' time (wall x trials side by side)")
    return "\n".join(lines)


def sweep_ratio(a: dict | None, bound: dict | None) -> float | None:
    """(a)'s wall time without its export, over the bound (which counts no export work)."""
    if a is None or bound is None or a.get("export_s") is None:
        return None
    return ratio({"wall_s": a["wall_s"] - a["export_s"]}, bound["bound_s"])


def figures(results: dict, bound: dict | None, trial_overhead: dict | None = None) -> dict:
    """What --json writes: each run's figures (null when not run), the bound and the wall-time ratios."""
    a = results.get("tsweep")
    return {**{name: results.get(name) for name in RUNS.values()},
            "bound_s": None if bound is None else round(bound["bound_s"], 1),
            "ratios": {"naive_over_tsweep": ratio(results.get("naive_ray"), a),
                       "hyperband_over_tsweep": ratio(results.get("keras_tuner_hyperband"), a),
                       "tsweep_over_bound": ratio(a, None if bound is None else bound["bound_s"]),
                       "sweep_over_bound": sweep_ratio(a, bound)},
            "tsweep_overhead": trial_overhead}


def phases(records: list[dict]) -> list[dict]:
    """Each trial's phases (a run of epochs with one phase name) with their timing: `first_s` (the first
    epoch's time beyond staging), `staged_s` (making or loading activations and building the trainer, summed
    over the phase), `steady_s` (the median epoch time after the first, staging left out; None for a
    one-epoch phase), `epochs`, and the `key` (cutoff and stage kind) that phases of equal cost share."""
    from tsweep.spaces.config import TrialConfig
    from tsweep.trainers.cached_train import stage_kind
    from tsweep.trainers.train import phase_cutoff

    out = []
    for r in records:
        history = r.get("history") or []
        if not history:
            continue
        cfg = TrialConfig.from_dict(r["config"])
        runs: list[list[dict]] = []
        for row in history:
            if runs and runs[-1][0].get("phase") == row.get("phase"):
                runs[-1].append(row)
            else:
                runs.append([row])
        for rows in runs:
            net = [max(0.0, h.get("epoch_time_s", 0.0) - h.get("stage_s", 0.0)) for h in rows]
            phase = rows[0].get("phase", "features")
            later = sorted(net[1:])
            out.append({"trial": r.get("trial_id"), "phase": phase, "epochs": len(rows), "first_s": net[0],
                        "staged_s": sum(h.get("stage_s", 0.0) for h in rows),
                        "steady_s": later[len(later) // 2] if later else None,
                        "key": (phase_cutoff(cfg, phase), stage_kind(cfg, phase), cfg.head_size > 0)})
    return out


def steps_and_tracing(records: list[dict]) -> dict:
    """Steady-state train time and what first epochs cost beyond it (tracing, building), summed over phases.

    A phase's steady epoch time is its own median after its first epoch; a one-epoch phase (a trial ASHA
    stopped early) takes the median of the phases with the same cutoff, stage kind and head. `steps_s` is that
    steady time times the epochs each phase ran; `tracing_s` the excess of each first epoch over it;
    `staged_s` the time spent making or loading cached activations and trainers.
    """
    table = phases(records)
    by_key: dict[tuple, list[float]] = {}
    for p in table:
        if p["steady_s"] is not None:
            by_key.setdefault(p["key"], []).append(p["steady_s"])
    steps = tracing = staged = 0.0
    for p in table:
        same = sorted(by_key.get(p["key"], []))
        steady = p["steady_s"] if p["steady_s"] is not None else (same[len(same) // 2] if same else p["first_s"])
        steps += steady * p["epochs"]
        tracing += max(0.0, p["first_s"] - steady)
        staged += p["staged_s"]
    return {"steps_s": round(steps, 1), "tracing_s": round(tracing, 1), "staged_s": round(staged, 1),
            "phases": len(table)}


def views_used(records: list[dict]) -> set[tuple[str, int]]:
    """The distinct (augmentation, view) pairs the trials trained on (cached augmented views)."""
    from tsweep.spaces.config import TrialConfig
    from tsweep.trainers.cached_train import stage_kind
    from tsweep.trainers.views import view_of

    used = set()
    for r in records:
        cfg = TrialConfig.from_dict(r["config"])
        for e, row in enumerate(r.get("history") or []):
            if stage_kind(cfg, row.get("phase", "features")) == "views":
                used.add((cfg.augmentation, view_of(e, cfg.augmentation_views, cfg.seed)))
    return used
