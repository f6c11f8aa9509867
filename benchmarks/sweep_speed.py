"""Benchmark: one sweep run three ways, sequentially, in this one invocation.

(a) tsweep (`run_sweep`, Ray Tune + ASHA), (b) a naive Ray Tune sweep written like Ray Tune's Keras
example (`_naive.py`), (c) KerasTuner's Hyperband over the same space (`_hyperband.py`): MobileNetV2 alpha
1.0 on ../shared/datasets/hymenoptera, one space, the same ASHA settings for (a) and (b). For each: wall
time, trials finished, epochs trained, best val accuracy and the peak summed RSS of this process and all
its descendants (Ray's processes and workers). Then a lower bound for (a): decoding once, one forward pass
of each distinct frozen prefix (a) used, and the training epochs (a) ran (their `epoch_time_s`).

    .venv/bin/python benchmarks/sweep_speed.py --json results/bench.json    # full: 24 trials, 12 epochs, 160 px
    .venv/bin/python benchmarks/sweep_speed.py --quick                      # 6 trials, 4 epochs, 96 px
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import ray  # noqa: E402  (importing ray puts its bundled psutil on sys.path: psutil is imported after it)

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # _naive.py, _hyperband.py and _report.py, also when imported from elsewhere
    sys.path.insert(0, str(HERE))

from _common import DEFAULT_WEIGHTS, SHARED, say  # noqa: E402
from _report import RUNS, figures, machine, overhead, steps_and_tracing, table, views_used  # noqa: E402
from _scale import scaling  # noqa: E402

DEFAULT_DATA = SHARED / "datasets" / "hymenoptera"
FULL, QUICK = (24, 12, 160), (6, 4, 96)  # trials, max epochs, image size


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", type=Path, default=DEFAULT_DATA,
                   help="image folder with train/ and val/ (default %(default)s)")
    p.add_argument("--weights", default=None, help=f"imagenet, none or a .h5 path (default {DEFAULT_WEIGHTS.name} "
                   "from ../shared/weights where present, else none)")
    p.add_argument("--quick", action="store_true", help="%d trials, max %d epochs, %d px" % QUICK)
    p.add_argument("--trials", type=int, help=f"trials of (a) and (b) (default {FULL[0]})")
    p.add_argument("--max-epochs", type=int, help=f"ASHA's max_t and Hyperband's max_epochs (default {FULL[1]})")
    p.add_argument("--image-size", type=int, help=f"pixels (default {FULL[2]})")
    p.add_argument("--only", default="a,b,c", help="a subset of a,b,c to run (default all)")
    p.add_argument("--seed", type=int, default=0, help="trial sampling and data split (default 0)")
    p.add_argument("--out-dir", type=Path,
                   help="keep results, Ray storage and caches here (default: a temp folder, removed)")
    p.add_argument("--json", type=Path, help="write the figures to this file")
    p.add_argument("--scale", default="", metavar="N,M",
                   help="also run (a)'s sweep and (b) at these trial counts (e.g. 24,96) and report the marginal "
                        "wall time per extra trial of each (default: off)")
    args = p.parse_args(argv)
    preset = QUICK if args.quick else FULL
    args.trials = args.trials or preset[0]
    args.max_epochs = args.max_epochs or preset[1]
    args.image_size = args.image_size or preset[2]
    names = {v: k for k, v in RUNS.items()}
    only = [names.get(s.strip(), s.strip()) for s in args.only.split(",") if s.strip()]
    if not only or any(s not in RUNS for s in only):
        p.error(f"--only takes a comma-separated subset of a,b,c ({', '.join(f'{k}={v}' for k, v in RUNS.items())})")
    args.only = sorted(set(only))
    try:
        args.scale = sorted({int(n) for n in args.scale.split(",") if n.strip()})
    except ValueError:
        p.error(f"--scale takes comma-separated trial counts like 24,96, got {args.scale!r}")
    if len(args.scale) == 1 or any(n < 1 for n in args.scale):
        p.error("--scale needs at least two trial counts, each >= 1")
    if args.weights is None:
        args.weights = str(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.is_file() else "none"
    if min(args.trials, args.max_epochs) < 1 or args.image_size < 32:
        p.error("--trials and --max-epochs must be >= 1, --image-size >= 32")
    return args


def prefixed(tag: str) -> Callable[[str], None]:
    return lambda msg: say(f"  ({tag}) {msg}")


class PeakRss:
    """Sums the RSS of this process and all its descendants every `interval` s in a thread; keeps the max."""

    def __init__(self, interval: float = 0.5) -> None:
        self.interval, self.peak = interval, 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, daemon=True)

    def sample(self) -> int:
        import psutil

        me = psutil.Process()
        total = 0
        for proc in [me, *me.children(recursive=True)]:
            try:
                total += proc.memory_info().rss
            except (psutil.NoSuchProcess, psutil.AccessDenied, psutil.ZombieProcess):
                pass
        return total

    def _loop(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.sample())
            self._stop.wait(self.interval)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, self.sample())


def measured(letter: str, fn: Callable[[], dict]) -> dict:
    """Run one way of sweeping; its figures plus wall_s and peak_rss_mb (Ray shut down after it)."""
    say(f"\n== ({letter}) {RUNS[letter]} ==")
    with PeakRss() as rss:
        start = time.perf_counter()
        try:
            found = fn()
        finally:
            wall = time.perf_counter() - start
            if ray.is_initialized():
                ray.shutdown()  # (b) starts its own local Ray next
    best = found["best_val_accuracy"]
    result = {"wall_s": round(wall, 1), **found, "best_val_accuracy": None if best is None else round(best, 4),
              "peak_rss_mb": round(rss.peak / 2**20)}
    say(f"  ({letter}) done: {json.dumps(result)}")
    return result


def write_space(path: Path, args: argparse.Namespace) -> Path:
    """The one space of all three runs (augmentation off in half of the configs on average)."""
    import yaml

    space = {"description": f"benchmarks/sweep_speed.py: MobileNetV2 1.0 at {args.image_size} px",
             "backbone": "mobilenet_v2", "alpha": 1.0, "weights": args.weights, "image_size": args.image_size,
             "batch_size": 32, "epochs": args.max_epochs, "warmup_epochs": min(2, args.max_epochs // 2),
             "head_size": {"choice": [0, 64, 256]}, "dropout": {"uniform": [0.0, 0.5]},
             "freeze_cutoff": {"choice": [17, 16, 13, 10]},  # 17 = the whole backbone frozen
             "optimizer": {"choice": ["adam", "adamw", "sgd", "rmsprop"]},
             "learning_rate": {"loguniform": [1.0e-5, 3.0e-3]}, "augmentation": {"choice": ["none", "light"]}}
    path.write_text(yaml.safe_dump(space, sort_keys=False))
    return path


def run_tsweep(args: argparse.Namespace, space_file: Path, work: Path) -> tuple[dict, list[dict]]:
    """The whole `tsweep run`: the sweep, then the export of its winner (timed apart as export_s)."""
    from tsweep.search.export import export_winner
    from tsweep.search.records import read_trials
    from tsweep.search.sweep import SweepOptions, run_sweep

    opts = SweepOptions(data=str(args.data), space=str(space_file), num_samples=args.trials, name="tsweep",
                        results_dir=str(work / "results"), grace_period=1, reduction_factor=3, cpus_per_trial=1,
                        seed=args.seed, cache_dir=str(work / "cache-a"), export=False)
    root = run_sweep(opts, progress=prefixed("a"))
    records = read_trials(root)
    if ray.is_initialized():
        ray.shutdown()  # as `tsweep run` does before exporting: the workers' memory goes back
    started = time.perf_counter()
    export_winner(root, progress=prefixed("a export"))
    export_s = time.perf_counter() - started
    values = [h["val_accuracy"] for r in records for h in r["history"] if "val_accuracy" in h]
    return ({"trials": sum(r["status"] in ("completed", "pruned") for r in records),
             "epochs": sum(len(r["history"]) for r in records),
             "best_val_accuracy": max(values) if values else None, "export_s": round(export_s, 1),
             **steps_and_tracing(records)}, records)


def lower_bound(args: argparse.Namespace, work: Path, records: list[dict], concurrency: int) -> dict:
    """What (a)'s work needs at the least: one decode, one pass of the train + val images through the deepest
    frozen prefix any trial used (shallower cutoffs are on the way), one augmentation and pass of the train
    images for each distinct view trained on, and the epochs (a) ran at their steady-state step time (after
    each phase's first epoch: no tracing or building), spread over the `concurrency` trials run side by side."""
    import keras
    import numpy as np

    from tsweep.spaces.backbones import get_spec
    from tsweep.spaces.config import TrialConfig
    from tsweep.trainers.cached_train import digest
    from tsweep.trainers.data import load_dataset
    from tsweep.trainers.layers import Preprocess
    from tsweep.trainers.pretrained import build_backbone
    from tsweep.trainers.train import phase_cutoff
    from tsweep.trainers.views import augment_view

    say("\n== lower bound for (a) ==")
    start = time.perf_counter()
    data = load_dataset(args.data, args.image_size, seed=args.seed, cache_dir=work / "cache-bound")
    decode_s = time.perf_counter() - start
    spec = get_spec("mobilenet_v2")
    cutoffs = {phase_cutoff(TrialConfig.from_dict(r["config"]), h.get("phase", "features"))
               for r in records for h in r["history"]}
    cutoffs.discard(0)
    deepest = max(cutoffs, default=spec.max_cutoff)
    x = np.concatenate([data.x_train, data.x_val])
    base = build_backbone(spec.name, args.image_size, weights=args.weights, alpha=1.0)
    inputs = keras.Input(x.shape[1:])
    prefix = keras.Model(base.input, base.get_layer(spec.boundaries[deepest - 1]).output)
    model = keras.Model(inputs, prefix(Preprocess(spec.preprocess)(inputs)))
    model.predict(x[:33], batch_size=32, verbose=0)  # trace full and partial batches outside the timing
    start = time.perf_counter()
    model.predict(x, batch_size=32, verbose=0)
    prefix_s = time.perf_counter() - start
    views = views_used(records)
    view_s = 0.0
    if views:
        start = time.perf_counter()
        view = augment_view(data.x_train, sorted(views)[0][0], 0, digest(data.x_train))
        model.predict(view, batch_size=32, verbose=0)
        view_s = time.perf_counter() - start
    steps = steps_and_tracing(records)
    train_s = steps["steps_s"] / max(1, concurrency)
    total = decode_s + prefix_s + view_s * len(views) + train_s
    say(f"  decode {decode_s:.1f} s + prefix through cutoff {deepest} {prefix_s:.1f} s + {len(views)} views x "
        f"{view_s:.1f} s + steady train steps {steps['steps_s']:.1f} s / {concurrency} = {total:.1f} s")
    return {"bound_s": total, "decode_s": decode_s, "prefix_s": {deepest: prefix_s}, "views": len(views),
            "view_s": view_s, "train_s": train_s, "steps_s": steps["steps_s"], "concurrency": concurrency}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)

    def save(payload: dict) -> None:
        if args.json:
            from tsweep.files import atomic_write_json  # creates the folder; a kill mid-write keeps the last file

            atomic_write_json(args.json, payload)

    if not args.data.is_dir():
        raise SystemExit(f"data folder {args.data} does not exist: pass --data")
    args.data = args.data.resolve()
    work = args.out_dir.resolve() if args.out_dir else Path(tempfile.mkdtemp(prefix="tsweep-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    info = machine()
    say(f"benchmark in {work}: {args.trials} trials, max {args.max_epochs} epochs, {args.image_size} px, "
        f"weights {args.weights}, runs {','.join(args.only)}; {info['cpus']} CPUs, {info['ram_gb']} GB RAM")
    try:
        from tsweep.spaces.space import load_space

        space_file = write_space(work / "space.yaml", args)
        space = load_space(space_file)
        results: dict[str, Any] = {}
        records: list[dict] = []
        if "a" in args.only:
            def run_a() -> dict:
                found, records[:] = run_tsweep(args, space_file, work)
                return found
            results["tsweep"] = measured("a", run_a)
        if "b" in args.only:
            import _naive

            results["naive_ray"] = measured("b", lambda: _naive.run(
                space, args.data, args.image_size, args.trials, args.max_epochs, args.seed, work / "ray-naive",
                info["ray_cpus"], prefixed("b")))
        if "c" in args.only:
            import _hyperband

            results["keras_tuner_hyperband"] = measured("c", lambda: _hyperband.run(
                space, args.data, args.image_size, args.max_epochs, args.seed, work / "cache-c",
                work / "keras-tuner", prefixed("c")))
        concurrency = min(info["ray_cpus"], args.trials)
        bound = lower_bound(args, work, records, concurrency) if "tsweep" in results else None
        trial_overhead = overhead(records, results["tsweep"]["wall_s"], min(info["ray_cpus"], args.trials)) \
            if "tsweep" in results else None
        if args.scale:
            # The scale runs take an hour: the figures so far are written first and after each count's runs,
            # so a run stopped part-way keeps what it measured.
            save({**figures(results, bound, trial_overhead), "scale": None})
            scale = scaling(args, space, space_file, work, info["ray_cpus"], say, prefixed,
                            lambda part: save({**figures(results, bound, trial_overhead), "scale": part}))
        else:
            scale = None
    finally:
        if not args.out_dir:
            shutil.rmtree(work, ignore_errors=True)
    say("\n" + table(results, bound, args, info, trial_overhead))
    if scale is not None:
        say(f"scale: wall s at {scale['trials']} trials: tsweep {scale['wall_s']['tsweep']}, naive "
            f"{scale['wall_s']['naive_ray']}; marginal s per extra trial: tsweep "
            f"{scale['marginal_s_per_trial']['tsweep']}, naive {scale['marginal_s_per_trial']['naive_ray']} "
            f"(tsweep / naive {scale['tsweep_over_naive']})")
    if args.json:
        save({**figures(results, bound, trial_overhead), "scale": scale})
        say(f"figures written to {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
