"""Benchmark: the warm-up's learning rate (`warmup_learning_rate`, Adam on the new head) vs what a sweep finds.

ASHA's first rung (grace 1) judges every trial on its first epoch, which is a warm-up epoch: the head alone,
trained by Adam at `warmup_learning_rate`, whatever the trial's own optimizer and rate. On a small dataset an
epoch is a few steps (hymenoptera: 8 of 32 images), so a slow warm-up leaves every trial near chance at that
rung and the pruning there is close to random. This runs the sweep of `sweep_speed.py` (its space, 24 trials,
ASHA max 12 epochs, the shared MobileNetV2 weights, no export) for each rate, dataset and seed, and prints mean
+- sd of the sweep's best val accuracy, of the best first-epoch val accuracy (what the first rung saw) and of
the sweep's wall time. Not a test. Caches are shared by the runs of one dataset (the features do not depend on
the rate), so wall times after a dataset's first run are warm-cache times.

    .venv/bin/python benchmarks/warmup_rate.py --json results/warmup_rate.json             # long: ~20 min
    .venv/bin/python benchmarks/warmup_rate.py --datasets hymenoptera --seeds 1 --trials 4 --rates 1e-3,1e-2
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:
    sys.path.insert(0, str(HERE))

import ray  # noqa: E402
from _common import DEFAULT_WEIGHTS, SHARED, say  # noqa: E402
from sweep_speed import FULL, prefixed, write_space  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="hymenoptera,flowers12", help="folders of ../shared/datasets")
    p.add_argument("--rates", default="1e-3,3e-3,1e-2", help="warmup_learning_rate values (default %(default)s)")
    p.add_argument("--seeds", type=int, default=3, help="seeds 0..N-1: trial sampling and data split")
    p.add_argument("--trials", type=int, default=FULL[0])
    p.add_argument("--max-epochs", type=int, default=FULL[1])
    p.add_argument("--image-size", type=int, default=FULL[2])
    p.add_argument("--out-dir", type=Path, help="keep results and caches here (default: a temp folder)")
    p.add_argument("--json", type=Path, help="write every run's figures to this file")
    return p.parse_args(argv)


def one_sweep(args: argparse.Namespace, data: Path, rate: float, seed: int, work: Path, cache: Path) -> dict:
    """One sweep with the warm-up at `rate`; its best val accuracy, best first-epoch val accuracy and wall."""
    import yaml

    from tsweep.search.records import read_trials
    from tsweep.search.sweep import SweepOptions, run_sweep

    space = write_space(work / "space.yaml", args)
    spec = yaml.safe_load(space.read_text())
    space.write_text(yaml.safe_dump({**spec, "warmup_learning_rate": rate}, sort_keys=False))
    opts = SweepOptions(data=str(data), space=str(space), num_samples=args.trials, name="sweep",
                        results_dir=str(work / "results"), grace_period=1, reduction_factor=3, cpus_per_trial=1,
                        seed=seed, cache_dir=str(cache), export=False)
    started = time.perf_counter()
    try:
        records = read_trials(run_sweep(opts, progress=lambda m: None))
    finally:
        wall = time.perf_counter() - started
        if ray.is_initialized():
            ray.shutdown()
    rows = [(h["val_accuracy"], r) for r in records for h in r["history"] if "val_accuracy" in h]
    first = [r["history"][0]["val_accuracy"] for r in records if r["history"] and "val_accuracy" in r["history"][0]]
    best, winner = max(rows, key=lambda x: x[0])
    keys = ("freeze_cutoff", "head_size", "optimizer", "learning_rate", "augmentation")
    return {"best_val_accuracy": round(best, 4), "best_first_epoch": round(max(first), 4), "wall_s": round(wall, 1),
            "epochs": sum(len(r["history"]) for r in records), "winner": {k: winner["config"][k] for k in keys}}


def mean_sd(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.4f} +- {sd:.4f}"


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    args.weights = str(DEFAULT_WEIGHTS)
    if not DEFAULT_WEIGHTS.exists():
        raise SystemExit(f"{DEFAULT_WEIGHTS} is missing: this benchmark needs ../shared/weights")
    rates = [float(r) for r in args.rates.split(",")]
    root = args.out_dir or Path(tempfile.mkdtemp(prefix="tsweep-warmup-"))
    runs: list[dict] = []
    for name in args.datasets.split(","):
        data = SHARED / "datasets" / name
        for seed in range(args.seeds):
            for rate in rates:
                work = root / name / f"seed{seed}-rate{rate:g}"
                work.mkdir(parents=True, exist_ok=True)
                run = {"dataset": name, "seed": seed, "rate": rate,
                       **one_sweep(args, data, rate, seed, work, root / name / "cache")}
                prefixed(name)(json.dumps(run))
                runs.append(run)
                if args.json:
                    args.json.write_text(json.dumps({"runs": runs}, indent=1))
    say(f"\n{args.trials} trials, ASHA max {args.max_epochs} epochs (grace 1, reduction 3), {args.seeds} seeds")
    say(f"{'dataset':14} {'warm-up rate':>12}  {'best val acc':>18}  {'best epoch-1 val acc':>20}  {'wall s':>8}")
    for name in args.datasets.split(","):
        for rate in rates:
            mine = [r for r in runs if r["dataset"] == name and r["rate"] == rate]
            say(f"{name:14} {rate:12g}  {mean_sd([r['best_val_accuracy'] for r in mine]):>18}  "
                f"{mean_sd([r['best_first_epoch'] for r in mine]):>20}  "
                f"{statistics.mean(r['wall_s'] for r in mine):8.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
