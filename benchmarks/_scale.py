"""--scale of sweep_speed.py: (a)'s sweep and (b) at several trial counts, and the marginal wall time per trial."""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import Any, Callable

import ray


def scaling(args: argparse.Namespace, space: Any, space_file: Path, work: Path, num_cpus: int,
            say: Callable[[str], None], prefixed: Callable[[str], Callable[[str], None]],
            saved: Callable[[dict], None] = lambda part: None) -> dict:
    """Wall time of (a)'s sweep (no export) and of (b) at each of `args.scale`'s trial counts, each from fresh
    caches, and the marginal wall time per extra trial between the smallest and the largest count. `saved` gets
    {"trials", "wall_s", "partial": True} after every run, so a stopped run keeps what it measured."""
    import _naive

    from tsweep.search.sweep import SweepOptions, run_sweep

    walls: dict[str, dict[int, float]] = {"tsweep": {}, "naive_ray": {}}
    found: dict[int, dict] = {}  # the naive run's own figures per count (best val accuracy, trials, epochs)
    for n in args.scale:
        say(f"\n== scale: {n} trials ==")
        opts = SweepOptions(data=str(args.data), space=str(space_file), num_samples=n, name=f"tsweep-{n}",
                            results_dir=str(work / "scale"), grace_period=1, reduction_factor=3, cpus_per_trial=1,
                            seed=args.seed, cache_dir=str(work / f"cache-scale-{n}"), export=False)
        for name, fn in (("tsweep", lambda: run_sweep(opts, progress=prefixed(f"a{n}"))),
                         ("naive_ray", lambda: _naive.run(space, args.data, args.image_size, n, args.max_epochs,
                                                          args.seed, work / f"ray-naive-{n}", num_cpus,
                                                          prefixed(f"b{n}")))):
            start = time.perf_counter()
            try:
                out = fn()
                if isinstance(out, dict):
                    found[n] = {k: out.get(k) for k in ("best_val_accuracy", "trials", "epochs")}
            finally:
                if ray.is_initialized():
                    ray.shutdown()
            walls[name][n] = round(time.perf_counter() - start, 1)
            say(f"  {name} at {n} trials: {walls[name][n]} s")
            saved({"trials": args.scale, "wall_s": walls, "naive_ray": found, "partial": True})
    lo, hi = args.scale[0], args.scale[-1]
    marginal = {name: round((w[hi] - w[lo]) / (hi - lo), 2) for name, w in walls.items()}
    return {"trials": args.scale, "wall_s": walls, "naive_ray": found, "marginal_s_per_trial": marginal,
            "tsweep_over_naive": round(marginal["tsweep"] / marginal["naive_ray"], 3)
            if marginal["naive_ray"] else None}
