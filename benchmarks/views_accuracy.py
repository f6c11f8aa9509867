"""Benchmark: what fixed augmented views cost in accuracy, against online augmentation.

The same two augmented configs (typical of spaces/default.yaml) are trained with `augmentation_views` V = 0
(online: a new random view every epoch, end to end) and V in {2, 4, 8, 16} (V fixed views per image whose
frozen-prefix activations are cached), on each dataset, for several seeds:

    (A) feature extraction: freeze_cutoff 17, head 64, dropout 0.3, adam 1e-3, augmentation light
    (B) fine-tuning: freeze_cutoff 13, 2 warm-up epochs, head 64, dropout 0.3, rmsprop 1e-4, augmentation light

Every run calls `tsweep.trainers.train.train` in this process (no Ray), with ONE FeatureCache per dataset for
the whole invocation: views are shared across trials (their seeds come from the dataset, the policy and the
view, never the trial), so the first run that reaches a view pays for making it, and later runs load it. Each
run's time is reported as measured; the time of the epochs that computed activations (views, and the
validation activations the first time) is summed apart from their `stage_s`.

    .venv/bin/python benchmarks/views_accuracy.py --json results/views_accuracy.json   # full (long on 2 cores)
    .venv/bin/python benchmarks/views_accuracy.py --quick                              # smoke: 3 epochs, 96 px
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the _*.py helpers beside this script, also when it is imported from elsewhere
    sys.path.insert(0, str(HERE))

from _common import DEFAULT_WEIGHTS, dataset_dir, say  # noqa: E402

CONFIGS = {
    "A": {"freeze_cutoff": 17, "head_size": 64, "dropout": 0.3, "optimizer": "adam", "learning_rate": 1e-3,
          "augmentation": "light"},
    "B": {"freeze_cutoff": 13, "warmup_epochs": 2, "head_size": 64, "dropout": 0.3, "optimizer": "rmsprop",
          "learning_rate": 1e-4, "augmentation": "light"},
}
CONFIG_NAMES = {"A": "A feature extraction", "B": "B fine-tuning"}
QUICK = {"epochs": 3, "image_size": 96, "seeds": 1, "views": "0,2"}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="hymenoptera,flowers12",
                   help="comma-separated names under ../shared/datasets or folder paths (default %(default)s)")
    p.add_argument("--views", help="comma-separated values of augmentation_views, 0 = online (default 0,2,4,8,16)")
    p.add_argument("--seeds", type=int, help="seeds 0..N-1 per (dataset, config, V) (default 3)")
    p.add_argument("--epochs", type=int, help="epochs per trial, warm-up included (default 12)")
    p.add_argument("--image-size", type=int, help="pixels (default 160)")
    p.add_argument("--configs", default="A,B", help="a subset of A,B (default %(default)s)")
    p.add_argument("--weights", default=None, help=f"imagenet, none or a .h5 path (default {DEFAULT_WEIGHTS.name} "
                   "from ../shared/weights where present, else none)")
    p.add_argument("--cache-dir", type=Path,
                   help="decoded images and feature caches go here, kept (default: a temp folder, removed)")
    p.add_argument("--json", type=Path, help="write every run and the summary to this file")
    p.add_argument("--quick", action="store_true",
                   help="smoke setting: %(epochs)d epochs, %(image_size)d px, %(seeds)d seed, V in %(views)s" % QUICK)
    args = p.parse_args(argv)
    preset = QUICK if args.quick else {"epochs": 12, "image_size": 160, "seeds": 3, "views": "0,2,4,8,16"}
    for key in ("epochs", "image_size", "seeds", "views"):
        if getattr(args, key) is None:
            setattr(args, key, preset[key])
    try:
        args.views = sorted({int(v) for v in str(args.views).split(",") if v.strip()})
    except ValueError:
        p.error("--views takes comma-separated whole numbers, e.g. 0,2,4")
    if not args.views or min(args.views) < 0:
        p.error("--views needs at least one value >= 0")
    args.configs = [c.strip().upper() for c in args.configs.split(",") if c.strip()]
    if not args.configs or any(c not in CONFIGS for c in args.configs):
        p.error("--configs takes a comma-separated subset of A,B")
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    if args.weights is None:
        args.weights = str(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.is_file() else "none"
    if min(args.seeds, args.epochs) < 1 or args.image_size < 32:
        p.error("--seeds and --epochs must be >= 1, --image-size >= 32")
    return args


def machine() -> dict:
    import keras
    import tensorflow as tf

    cpu = ""
    if Path("/proc/cpuinfo").exists():
        cpu = next((line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
                    if line.startswith("model name")), "")
    return {"cpu": cpu or platform.processor(), "cpus": os.cpu_count(), "python": platform.python_version(),
            "tensorflow": tf.__version__, "keras": keras.__version__}


def load() -> list[float]:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def one_run(args: argparse.Namespace, data: Any, cache: Any, dataset: str, config: str, views: int,
            seed: int) -> dict:
    """Train one (config, V, seed) on `data` with `cache`; its figures."""
    from tsweep.spaces.config import TrialConfig
    from tsweep.trainers.runtime import fresh_session
    from tsweep.trainers.train import evaluate, train

    cfg = TrialConfig.from_dict({**CONFIGS[config], "weights": args.weights, "epochs": args.epochs,
                                 "batch_size": 32, "image_size": args.image_size, "seed": seed,
                                 "augmentation_views": views})
    fresh_session()
    made = {"epochs": 0, "s": 0.0, "arrays": 0}
    computed = [cache.stats["computed"]]

    def on_epoch(history: list, _model: Any) -> None:  # the epochs that computed activations (views, val)
        now = cache.stats["computed"]
        if now > computed[0]:
            made["epochs"] += 1
            made["s"] += history[-1].get("stage_s", 0.0)
            made["arrays"] += now - computed[0]
        computed[0] = now

    started = time.perf_counter()
    result = train(cfg, data, feature_cache=cache, on_epoch=on_epoch)
    wall = time.perf_counter() - started
    history = result.history
    vals = [row["val_accuracy"] for row in history]
    best = max(range(len(vals)), key=vals.__getitem__)
    test = None
    if data.x_test is not None and len(data.y_test):
        test = evaluate(result.model, data.x_test, data.y_test)["accuracy"]
    return {"dataset": dataset, "config": config, "views": views, "seed": seed,
            "best_val_accuracy": round(vals[best], 4), "best_epoch": best + 1,
            "final_val_accuracy": round(vals[-1], 4),
            "final_test_accuracy": None if test is None else round(test, 4),
            "wall_s": round(wall, 2), "stage_s": round(sum(row.get("stage_s", 0.0) for row in history), 2),
            "making_s": round(made["s"], 2), "making_epochs": made["epochs"], "arrays_computed": made["arrays"],
            "epoch_time_s": [row["epoch_time_s"] for row in history]}


def mean_sd(values: list[float]) -> tuple[float | None, float | None]:
    if not values:
        return None, None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarise(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["dataset"], run["config"], run["views"]), []).append(run)
    rows = []
    for (dataset, config, views), group in groups.items():
        acc, acc_sd = mean_sd([r["best_val_accuracy"] for r in group])
        wall, wall_sd = mean_sd([r["wall_s"] for r in group])
        tests = [r["final_test_accuracy"] for r in group if r["final_test_accuracy"] is not None]
        test, test_sd = mean_sd(tests)
        rows.append({"dataset": dataset, "config": config, "views": views, "n": len(group),
                     "best_val_mean": acc, "best_val_sd": acc_sd, "wall_mean_s": wall, "wall_sd_s": wall_sd,
                     "test_mean": test, "test_sd": test_sd,
                     "making_s": round(sum(r["making_s"] for r in group), 2),
                     "wall_without_making_mean_s": statistics.fmean(r["wall_s"] - r["making_s"] for r in group)})
    online = {(r["dataset"], r["config"]): r for r in rows if r["views"] == 0}
    for row in rows:
        ref = online.get((row["dataset"], row["config"]))
        row["delta_vs_online"] = None if ref is None else row["best_val_mean"] - ref["best_val_mean"]
        row["within_online_sd"] = None if ref is None or row["views"] == 0 else \
            abs(row["delta_vs_online"]) <= ref["best_val_sd"]
    return rows


def recommendation(rows: list[dict], views: list[int]) -> int | None:
    """The smallest V > 0 within one sd of online's mean best val accuracy for every (dataset, config)."""
    for v in sorted(x for x in views if x > 0):
        mine = [r for r in rows if r["views"] == v]
        if mine and all(r["within_online_sd"] for r in mine):
            return v
    return None


def table(rows: list[dict]) -> str:
    def pm(mean: float | None, sd: float | None, digits: int) -> str:
        return "n/a" if mean is None else f"{mean:.{digits}f} ± {sd:.{digits}f}"

    head = ["dataset", "config", "V", "n", "best val acc", "Δ vs online", "within 1 sd", "s / trial",
            "s / trial w/o making", "making s (sum)", "final test acc"]
    lines = [head]
    for r in rows:
        delta = "" if r["views"] == 0 or r["delta_vs_online"] is None else f"{r['delta_vs_online']:+.4f}"
        within = "" if r["within_online_sd"] is None else ("yes" if r["within_online_sd"] else "no")
        lines.append([r["dataset"], CONFIG_NAMES[r["config"]], "0 (online)" if r["views"] == 0 else str(r["views"]),
                      str(r["n"]), pm(r["best_val_mean"], r["best_val_sd"], 4), delta, within,
                      pm(r["wall_mean_s"], r["wall_sd_s"], 1), f"{r['wall_without_making_mean_s']:.1f}",
                      f"{r['making_s']:.1f}", pm(r["test_mean"], r["test_sd"], 4)])
    widths = [max(len(line[i]) for line in lines) for i in range(len(head))]
    out = ["  ".join(cell.ljust(w) for cell, w in zip(line, widths)).rstrip() for line in lines]
    out.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    work = args.cache_dir or Path(tempfile.mkdtemp(prefix="views_accuracy_"))
    started = time.perf_counter()
    load_start = load()
    say(f"load average at start: {load_start}; cache dir {work}")
    say(f"datasets {args.datasets}, configs {args.configs}, V {args.views}, seeds 0..{args.seeds - 1}, "
        f"{args.epochs} epochs, {args.image_size} px, weights {args.weights}")
    runs: list[dict] = []
    try:
        from tsweep.trainers.data import load_dataset
        from tsweep.trainers.features import FeatureCache

        for name in args.datasets:
            data = load_dataset(dataset_dir(name), args.image_size, cache_dir=work / "decoded")
            say(f"\n== {data.summary()} ==")
            cache = FeatureCache(work / "features" / Path(name).name, memory_budget_bytes=None)
            for config in args.configs:
                for views in args.views:
                    for seed in range(args.seeds):
                        run = one_run(args, data, cache, Path(name).name, config, views, seed)
                        runs.append(run)
                        say(f"  {config} V={views:<2d} seed {seed}: best val {run['best_val_accuracy']:.4f} "
                            f"(epoch {run['best_epoch']}), final val {run['final_val_accuracy']:.4f}"
                            + ("" if run["final_test_accuracy"] is None
                               else f", final test {run['final_test_accuracy']:.4f}")
                            + f", {run['wall_s']:.1f} s (making activations {run['making_s']:.1f} s, "
                            f"{run['arrays_computed']} arrays), load {load()}")
            say(f"  cache stats: {cache.stats}")
    finally:
        if args.cache_dir is None:
            shutil.rmtree(work, ignore_errors=True)
    rows = summarise(runs)
    best_v = recommendation(rows, args.views)
    total = time.perf_counter() - started
    info = machine()
    say("\n" + table(rows))
    say(f"\nsmallest V within one sd of online on every dataset and config: {best_v}")
    say(f"total {total / 60:.1f} min; load average at start {load_start}, at end {load()}; "
        f"{info['cpu']}, {info['cpus']} CPUs, Python {info['python']}, TensorFlow {info['tensorflow']}, "
        f"Keras {info['keras']}")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
        args.json.write_text(json.dumps({"settings": settings, "machine": info, "total_s": round(total, 1),
                                         "load_start": load_start, "load_end": load(), "recommended_views": best_v,
                                         "summary": rows, "runs": runs}, indent=2))
        say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
