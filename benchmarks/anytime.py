"""Benchmark: best-so-far val accuracy against wall time, each way of sweeping given the same wall budget.

Per dataset, sequentially in this one invocation: tsweep with --search random and with --search tpe (each for
every seed, `--time-budget` = the budget), the naive Ray Tune sweep of `_naive.py` (Ray Tune's own
`time_budget_s`) and KerasTuner's Hyperband of `_hyperband.py` (stopped at the budget), over sweep_speed.py's
space. Every run starts cold (its own fresh decode and feature cache) and its clock starts when the run does,
so data loading, Ray's start and tsweep's checks count. Prints, per run, the best val accuracy at 25/50/100 %
of the budget and the time to reach the naive sweep's final best, checks issue 11's targets, and writes a
plot of the best-so-far curves (--plot) and every figure (--json).

    .venv/bin/python benchmarks/anytime.py --plot results/anytime.png --json results/anytime.json  # 10 min each
    .venv/bin/python benchmarks/anytime.py --datasets /tmp/shapes --budget 20s --seeds 1 --image-size 64  # smoke
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ray  # noqa: E402  (before psutil: see sweep_speed.py)

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

from _common import DEFAULT_WEIGHTS, dataset_dir, say  # noqa: E402
from _report import machine  # noqa: E402
from sweep_speed import prefixed, write_space  # noqa: E402

METHODS = ("random", "tpe", "naive", "hyperband")  # random and tpe are tsweep's --search
FRACTIONS = (0.25, 0.5, 1.0)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    from tsweep.search.cache_budget import parse_duration

    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="hymenoptera,flowers12",
                   help="comma-separated names under ../shared/datasets or folders with train/ and val/ "
                        "(default %(default)s)")
    p.add_argument("--budget", default="10m", help="wall budget of each run, e.g. 20s, 10m (default %(default)s)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1 of tsweep's random and tpe runs "
                   "(default %(default)s)")
    p.add_argument("--baseline-seeds", type=int, default=1, help="seeds of the naive and Hyperband runs "
                   "(default %(default)s)")
    p.add_argument("--methods", default=",".join(METHODS), help="a subset of %(default)s")
    p.add_argument("--weights", default=None, help=f"imagenet, none or a .h5 path (default {DEFAULT_WEIGHTS.name} "
                   "from ../shared/weights where present, else none)")
    p.add_argument("--max-epochs", type=int, default=12, help="ASHA's max_t, Hyperband's max_epochs (default 12)")
    p.add_argument("--image-size", type=int, default=160, help="pixels (default 160)")
    p.add_argument("--out-dir", type=Path, help="keep every run's results here (default: a temp folder, removed)")
    p.add_argument("--plot", type=Path, metavar="FILE.png", help="write the best-so-far curves to this PNG")
    p.add_argument("--json", type=Path, help="write every run's curve and the table's figures to this file")
    args = p.parse_args(argv)
    try:
        args.budget_s = parse_duration(args.budget, "--budget")
    except ValueError as e:
        p.error(str(e))
    args.methods = [m.strip() for m in args.methods.split(",") if m.strip()]
    if not args.methods or any(m not in METHODS for m in args.methods):
        p.error(f"--methods takes a comma-separated subset of {','.join(METHODS)}")
    args.datasets = [dataset_dir(d) for d in args.datasets.split(",") if d.strip()]
    if args.seeds < 1 or args.baseline_seeds < 1 or args.max_epochs < 1 or args.image_size < 32:
        p.error("--seeds and --baseline-seeds must be >= 1, --max-epochs >= 1, --image-size >= 32")
    if args.weights is None:
        args.weights = str(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.is_file() else "none"
    return args


def run_one(method: str, seed: int, data: Path, space_file: Path, work: Path, args: argparse.Namespace,
            progress: Callable[[str], None]) -> dict:
    """One run under the budget: its (seconds since its start, val_accuracy) of every epoch, trials, epochs."""
    from tsweep.spaces.space import load_space

    tag = work / f"{method}-{seed}"
    started = time.time()
    timeline: list[tuple[float, float]] = []
    try:
        if method in ("random", "tpe"):
            from tsweep.search.records import read_trials
            from tsweep.search.report_stats import epoch_points
            from tsweep.search.sweep import SweepOptions, run_sweep

            opts = SweepOptions(data=str(data), space=str(space_file), search=method, time_budget=f"{args.budget_s}s",
                                name=tag.name, results_dir=str(work / "results"), grace_period=1,
                                reduction_factor=3, cpus_per_trial=1, seed=seed, cache_dir=str(tag / "cache"),
                                export=False)
            records = read_trials(run_sweep(opts, progress=progress))
            timeline = epoch_points(records, "val_accuracy")
            counts = {"trials": len(records), "epochs": sum(len(r["history"]) for r in records)}
        elif method == "naive":
            import _naive

            found = _naive.run(load_space(space_file), data, args.image_size, -1, args.max_epochs, seed,
                               tag / "ray", machine()["ray_cpus"], progress, args.budget_s, timeline)
            counts = {"trials": found["trials"], "epochs": found["epochs"]}
        else:
            import _hyperband

            found = _hyperband.run(load_space(space_file), data, args.image_size, args.max_epochs, seed,
                                   tag / "cache", tag / "keras-tuner", progress, args.budget_s, timeline)
            counts = {"trials": found["trials"], "epochs": found["epochs"]}
    finally:
        wall = time.time() - started
        if ray.is_initialized():
            ray.shutdown()
    curve = [(round(t - started, 2), v) for t, v in sorted(timeline) if t - started <= args.budget_s]
    return {"method": method, "seed": seed, "wall_s": round(wall, 1), **counts, "curve": curve}


def best_by(curve: list[tuple[float, float]], seconds: float) -> float | None:
    values = [v for t, v in curve if t <= seconds]
    return max(values) if values else None


def time_to(curve: list[tuple[float, float]], target: float | None) -> float | None:
    """The first time the run's best so far reached `target` (None: never within the budget)."""
    if target is None:
        return None
    return next((t for t, v in sorted(curve) if v >= target - 1e-9), None)


def summarize(runs: list[dict], budget_s: float) -> list[dict]:
    """One row per run: the best at each fraction of the budget, the time to the naive sweep's final best."""
    naive = [r for r in runs if r["method"] == "naive"]
    finals = [b for b in (best_by(r["curve"], budget_s) for r in naive) if b is not None]
    target = max(finals) if finals else None  # the naive sweep's final best (None: it finished no epoch)
    rows = []
    for r in runs:
        row = {"dataset": r["dataset"], "method": r["method"], "seed": r["seed"], "trials": r["trials"],
               "epochs": r["epochs"], **{f"best_{int(f * 100)}%": best_by(r["curve"], f * budget_s)
                                         for f in FRACTIONS}}
        reach = time_to(r["curve"], target)
        row.update(naive_final=target, to_naive_s=reach, to_naive_frac=None if reach is None else reach / budget_s)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    fmt = lambda v, spec: "-" if v is None else format(v, spec)  # noqa: E731
    lines = [f"{'dataset':<14}{'method':<11}{'seed':>5}{'trials':>7}{'epochs':>7}{'best@25%':>10}{'@50%':>8}"
             f"{'@100%':>8}{'to naive best':>16}"]
    for r in rows:
        reach = "-" if r["naive_final"] is None else "never" if r["to_naive_s"] is None else \
            f"{r['to_naive_s']:.0f} s ({r['to_naive_frac']:.0%})"
        lines.append(f"{r['dataset']:<14}{r['method']:<11}{r['seed']:>5}{r['trials']:>7}{r['epochs']:>7}"
                     f"{fmt(r['best_25%'], '.4f'):>10}{fmt(r['best_50%'], '.4f'):>8}{fmt(r['best_100%'], '.4f'):>8}"
                     f"{reach:>16}")
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        for method in ("random", "tpe"):
            finals = [r["best_100%"] for r in rows if (r["dataset"], r["method"]) == (dataset, method)
                      and r["best_100%"] is not None]
            if len(finals) > 1:
                lines.append(f"{dataset}: tsweep {method} best@100% mean {statistics.mean(finals):.4f} "
                             f"sd {statistics.stdev(finals):.4f} over {len(finals)} seeds")
    return "\n".join(lines)


def targets(rows: list[dict]) -> list[str]:
    """Issue 11's targets, each with PASS or FAIL and the figures behind it."""
    out = []
    for dataset in dict.fromkeys(r["dataset"] for r in rows):
        mine = [r for r in rows if r["dataset"] == dataset and r["method"] in ("random", "tpe")]
        others = [r for r in rows if r["dataset"] == dataset and r["method"] in ("naive", "hyperband")]
        bar = max((r["best_100%"] or 0.0 for r in others), default=None)
        if mine and any(r["best_100%"] is None for r in mine):
            out.append(f"FAIL {dataset}: a tsweep run finished no epoch within the budget")
        elif mine and bar is not None:
            worst = min(r["best_100%"] for r in mine)
            out.append(f"{'PASS' if worst >= bar else 'FAIL'} {dataset}: every tsweep run's best ({worst:.4f} at the "
                       f"worst) >= naive's and Hyperband's ({bar:.4f})")
        reach = [r["to_naive_frac"] for r in mine]
        if mine and mine[0]["naive_final"] is not None:
            ok = all(f is not None and f <= 0.2 for f in reach)
            shown = ", ".join("never" if f is None else f"{f:.0%}" for f in reach)
            out.append(f"{'PASS' if ok else 'FAIL'} {dataset}: tsweep reaches the naive final best within 1/5 of the "
                       f"budget ({shown})")
    return out


def plot(runs: list[dict], path: Path, budget_s: float) -> None:
    """Best so far against minutes, one panel per dataset, one colour per method, one dash per seed."""
    from tsweep.search.objective import Objective
    from tsweep.search.report_plots import new_figure, png
    from tsweep.search.report_stats import best_so_far

    datasets = list(dict.fromkeys(r["dataset"] for r in runs))
    fig = new_figure(6.5 * len(datasets), 4.2)
    dashes = ("-", "--", ":", "-.")
    for i, dataset in enumerate(datasets):
        ax = fig.add_subplot(1, len(datasets), i + 1)
        for r in (r for r in runs if r["dataset"] == dataset):
            steps = best_so_far(r["curve"], Objective())
            if not steps:
                continue
            xs = [t / 60 for t, _ in steps] + [budget_s / 60]
            ys = [v for _, v in steps] + [steps[-1][1]]
            ax.step(xs, ys, where="post", color=f"C{METHODS.index(r['method'])}",
                    linestyle=dashes[r["seed"] % len(dashes)], label=f"{r['method']} seed {r['seed']}")
        ax.set_title(dataset)
        ax.set_xlabel("wall time (minutes)")
        ax.set_ylabel("best val_accuracy so far")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7, loc="lower right")
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(png(fig))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    for data in args.datasets:
        if not data.is_dir():
            raise SystemExit(f"dataset {data} does not exist: pass --datasets")
    work = args.out_dir.resolve() if args.out_dir else Path(tempfile.mkdtemp(prefix="tsweep-anytime-"))
    info = machine()
    say(f"anytime benchmark in {work}: {', '.join(d.name for d in args.datasets)}; {args.budget} per run; methods "
        f"{','.join(args.methods)}; {info['cpus']} CPUs, {info['ram_gb']} GB RAM")
    runs: list[dict] = []
    try:
        for data in args.datasets:
            base = work / data.name
            base.mkdir(parents=True, exist_ok=True)
            space_file = write_space(base / "space.yaml", args)
            for method in args.methods:
                seeds = args.seeds if method in ("random", "tpe") else args.baseline_seeds
                for seed in range(seeds):
                    say(f"\n== {data.name}: {method}, seed {seed} ==")
                    run = run_one(method, seed, data, space_file, base, args, prefixed(f"{method} {seed}"))
                    runs.append({"dataset": data.name, **run})
                    say(f"  done: {run['trials']} trials, {run['epochs']} epochs, best "
                        f"{best_by(run['curve'], args.budget_s)} in {run['wall_s']} s")
                    write_json(args, info, runs, complete=False)  # an interrupted benchmark keeps its runs
    finally:
        if not args.out_dir:
            shutil.rmtree(work, ignore_errors=True)
    rows = write_json(args, info, runs, complete=True)
    say("\n" + table(rows))
    for line in targets(rows):
        say(line)
    if args.plot:
        plot(runs, args.plot, args.budget_s)
        say(f"plot written to {args.plot}")
    if args.json:
        say(f"figures written to {args.json}")
    return 0


def write_json(args: argparse.Namespace, info: dict, runs: list[dict], complete: bool) -> list[dict]:
    """The table's rows of `runs`; written with every run to --json when given (`"complete": false` until the
    last run has ended, so a benchmark stopped half-way keeps what it measured)."""
    rows = [row for data in args.datasets for row in summarize([r for r in runs if r["dataset"] == data.name],
                                                               args.budget_s)]
    if args.json:
        from tsweep.files import atomic_write_json  # creates the folder; a kill mid-write keeps the last file

        atomic_write_json(args.json, {"machine": info, "budget_s": args.budget_s, "complete": complete, "runs": runs,
                                      "rows": rows, "targets": targets(rows)})
    return rows


if __name__ == "__main__":
    sys.exit(main())
