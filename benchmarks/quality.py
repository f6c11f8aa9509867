"""Benchmark: the quality of what a sweep exports: the single winner vs ensembles of top trials vs flip TTA,
and class_weight none vs balanced on imbalanced data (issue 13, item 5). Not a test.

For each dataset and seed, ONE sweep (`tsweep run` with `--space default`, the shared MobileNetV2 weights,
`--trials` trials of `--max-epochs` epochs, no export) is run, then each part exports from it and is scored on
the test split:

    single         the default export: the winner retrained on train + validation for its best epoch count
    single+flip    that export's model averaged over each test image and its mirror (what --tta flip bakes in)
    checkpoint     the winner's best checkpoint as it is (--from-trial): what ensemble members are
    ensembleK      --ensemble K --from-trial: the ensemble when it beats the checkpoint on validation, else the
                   checkpoint (the `kept` column counts the seeds where the ensemble was kept)
    ensembleK+flip the ensemble export's model with flip TTA

hymenoptera has no test split: its val split is halved (per class, seeded) into val and test, as symlinks in a
temporary folder. `--class-weight` adds, on flowers12-imbalanced, one sweep per seed with `class_weight: none`
and one with `balanced` (both with `--metric val_balanced_accuracy` where the sweep knows that metric), scored by
test balanced accuracy (mean per-class recall); it is skipped, saying so, where the space has no `class_weight`.

    .venv/bin/python benchmarks/quality.py --json results/quality.json                 # full: long, an idle machine
    .venv/bin/python benchmarks/quality.py --datasets corel5 --trials 4 --max-epochs 2 --seeds 1 --image-size 96
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

HERE = Path(__file__).resolve().parent
if str(HERE) not in sys.path:  # the _*.py helpers beside this script, also when it is imported from elsewhere
    sys.path.insert(0, str(HERE))

from _common import DEFAULT_WEIGHTS, dataset_dir, say  # noqa: E402

from tsweep.files import atomic_write_json  # noqa: E402

IMBALANCED = "flowers12-imbalanced"


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="flowers12,hymenoptera",
                   help="comma-separated names under ../shared/datasets or folder paths (default %(default)s)")
    p.add_argument("--seeds", type=int, default=3, help="sweeps per dataset, seeds F..F+N-1 (default 3)")
    p.add_argument("--first-seed", type=int, default=0, help="F, the first seed (default 0): continue a stopped run")
    p.add_argument("--trials", type=int, default=16, help="trials per sweep (default 16)")
    p.add_argument("--max-epochs", type=int, default=8, help="epochs per trial (default 8)")
    p.add_argument("--image-size", type=int, help="fix the space's image_size (default: the space's, 224)")
    p.add_argument("--ensembles", default="3,5", help="ensemble sizes K (default %(default)s)")
    p.add_argument("--space", default="default", help="the sweep's space (default %(default)s)")
    p.add_argument("--weights", default=None, help=f"imagenet, none or a .h5 path (default {DEFAULT_WEIGHTS.name} "
                   "from ../shared/weights where present, else imagenet)")
    p.add_argument("--class-weight", action="store_true", help=f"add class_weight none vs balanced on {IMBALANCED}")
    p.add_argument("--results-dir", type=Path, help="keep the sweeps here (default: a temp folder, removed)")
    p.add_argument("--json", type=Path, help="write every run and the summary to this file")
    args = p.parse_args(argv)
    args.datasets = [d.strip() for d in args.datasets.split(",") if d.strip()]
    try:
        args.ensembles = sorted({int(k) for k in args.ensembles.split(",") if k.strip()})
    except ValueError:
        p.error("--ensembles takes comma-separated whole numbers, e.g. 3,5")
    if any(k < 2 for k in args.ensembles) or min(args.seeds, args.trials, args.max_epochs) < 1 or args.first_seed < 0:
        p.error("--ensembles values must be >= 2; --seeds, --trials and --max-epochs >= 1; --first-seed >= 0")
    if args.weights is None:
        args.weights = str(DEFAULT_WEIGHTS) if DEFAULT_WEIGHTS.is_file() else "imagenet"
    return args


def halve_val(source: Path, out: Path, seed: int = 0) -> Path:
    """`source` with train/ as it is and its val/ split per class into val/ and test/ halves (seeded), as
    symlinks under `out`; returns `out`."""
    from tsweep.trainers.images import is_image_file

    val = next(source / n for n in ("val", "validation") if (source / n).is_dir())
    for cls in sorted(p for p in (source / "train").iterdir() if p.is_dir()):
        (out / "train" / cls.name).mkdir(parents=True, exist_ok=True)
        for f in sorted(cls.iterdir()):
            (out / "train" / cls.name / f.name).symlink_to(f.resolve())
    rng = np.random.default_rng(seed)
    for cls in sorted(p for p in val.iterdir() if p.is_dir()):
        files = sorted(f for f in cls.iterdir() if is_image_file(f))
        order = rng.permutation(len(files))
        for rank, i in enumerate(order):
            split = "val" if rank < (len(files) + 1) // 2 else "test"
            (out / split / cls.name).mkdir(parents=True, exist_ok=True)
            (out / split / cls.name / files[i].name).symlink_to(files[i].resolve())
    return out


def has_test(path: Path) -> bool:
    return (path / "test").is_dir()


def space_knows(key: str) -> bool:
    from dataclasses import fields

    from tsweep.spaces.config import TrialConfig

    return key in {f.name for f in fields(TrialConfig)}


def scores(model: Any, x: np.ndarray, y: np.ndarray, flip: bool = False) -> dict:
    """Test accuracy and balanced accuracy of an exported Keras model (with flip TTA when asked)."""
    from tsweep.search.ensemble import accuracy, as_probabilities, balanced_accuracy

    out = model.predict(x, batch_size=64, verbose=0)
    if flip:
        out = (out + model.predict(x[:, :, ::-1].copy(), batch_size=64, verbose=0)) / 2
    probs = as_probabilities(out)
    return {"test_accuracy": round(accuracy(probs, y), 4),
            "test_balanced_accuracy": round(balanced_accuracy(probs, y), 4)}


def run_sweep_once(args: argparse.Namespace, data: Path, name: str, seed: int, results: Path,
                   extra: dict | None = None, metric: str = "val_accuracy") -> tuple[Path, float]:
    from tsweep.search.options import SweepOptions
    from tsweep.search.sweep import run_sweep

    overrides = {"epochs": args.max_epochs, "weights": args.weights, **(extra or {})}
    if args.image_size:
        overrides["image_size"] = args.image_size
    opts = SweepOptions(data=str(data), space=args.space, num_samples=args.trials, name=name, seed=seed,
                        results_dir=str(results), overrides=overrides, export=False, metric=metric, formats="keras")
    started = time.perf_counter()
    root = run_sweep(opts, progress=lambda line: None)
    return root, round(time.perf_counter() - started, 1)


def export_part(root: Path, part: str, x: np.ndarray, y: np.ndarray, **kwargs: Any) -> dict:
    """Export with `kwargs` (export_winner's), then score the export's model on the test images."""
    from tsweep.search.export import export_winner
    from tsweep.search.predict import load_export

    started = time.perf_counter()
    out = export_winner(root, progress=lambda line: None, formats="keras", **kwargs)
    seconds = round(time.perf_counter() - started, 1)
    metrics = json.loads((out / "metrics.json").read_text())
    model = load_export(out)[0]
    ms = metrics["parity"]["formats"]["keras"]["ms_per_image"]
    rows = [{"part": part, **scores(model, x, y), "export_s": seconds, "ms_per_image": ms}]
    ensemble = metrics.get("ensemble")
    if ensemble is not None:
        rows[0]["kept"] = bool(ensemble.get("kept"))
        rows[0]["members"] = [m["trial_id"] for m in ensemble.get("members", [])]
    if part in ("single",) or part.startswith("ensemble"):
        rows.append({"part": part + "+flip", **scores(model, x, y, flip=True), "ms_per_image": 2 * ms,
                     **({"kept": rows[0]["kept"]} if "kept" in rows[0] else {})})
    return rows


def quality_runs(args: argparse.Namespace, dataset: str, data: Path, seed: int, results: Path,
                 progress: Callable[[str], None] = say) -> list[dict]:
    """One sweep, then every export part, on the test split."""
    from tsweep.trainers.data import load_dataset

    root, sweep_s = run_sweep_once(args, data, f"{Path(dataset).name}-s{seed}", seed, results)
    info = json.loads((root / "sweep.json").read_text())
    size = int(json.loads(next((root / "trials").glob("*.json")).read_text())["config"]["image_size"])
    test = load_dataset(image_size=size, **info["data"])
    x, y = test.x_test.astype("float32"), np.asarray(test.y_test)
    rows = export_part(root, "single", x, y)
    rows += export_part(root, "checkpoint", x, y, retrain=False)
    for k in args.ensembles:
        rows += export_part(root, f"ensemble{k}", x, y, retrain=False, ensemble=k)
    for row in rows:
        row.update(dataset=Path(dataset).name, seed=seed, sweep_s=sweep_s)
        progress(f"  {row['dataset']} seed {seed} {row['part']:<16} test acc {row['test_accuracy']:.4f}  "
                 f"{row['ms_per_image']:.1f} ms/image" + (f"  kept {row['kept']}" if "kept" in row else ""))
    return rows


def class_weight_runs(args: argparse.Namespace, seed: int, results: Path, progress: Callable[[str], None] = say
                      ) -> list[dict]:
    from tsweep.search.sweep import REPORTED_METRICS
    from tsweep.trainers.data import load_dataset

    metric = "val_balanced_accuracy" if "val_balanced_accuracy" in REPORTED_METRICS else "val_accuracy"
    data = dataset_dir(IMBALANCED)
    rows = []
    for weight in ("none", "balanced"):
        root, sweep_s = run_sweep_once(args, data, f"imbalanced-{weight}-s{seed}", seed, results,
                                       {"class_weight": weight}, metric)
        info = json.loads((root / "sweep.json").read_text())
        size = int(json.loads(next((root / "trials").glob("*.json")).read_text())["config"]["image_size"])
        test = load_dataset(image_size=size, **info["data"])
        row = export_part(root, f"class_weight={weight}", test.x_test.astype("float32"), np.asarray(test.y_test))[0]
        row.update(dataset=IMBALANCED, seed=seed, sweep_s=sweep_s, metric=metric)
        progress(f"  {IMBALANCED} seed {seed} class_weight {weight:<9} test balanced acc "
                 f"{row['test_balanced_accuracy']:.4f} (sweep metric {metric})")
        rows.append(row)
    return rows


def summarise(runs: list[dict]) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for run in runs:
        groups.setdefault((run["dataset"], run["part"]), []).append(run)
    rows = []
    for (dataset, part), group in groups.items():
        acc = [r["test_accuracy"] for r in group]
        bal = [r["test_balanced_accuracy"] for r in group]
        row = {"dataset": dataset, "part": part, "n": len(group), "test_mean": statistics.fmean(acc),
               "test_sd": statistics.stdev(acc) if len(acc) > 1 else 0.0, "balanced_mean": statistics.fmean(bal),
               "ms_per_image": statistics.fmean(r["ms_per_image"] for r in group)}
        if any("kept" in r for r in group):
            row["kept"] = sum(bool(r.get("kept")) for r in group)
        rows.append(row)
    return rows


def table(rows: list[dict]) -> str:
    lines = ["| dataset | export | n | test accuracy | test balanced accuracy | ms / image (Keras) | ensemble kept |",
             "|---|---|---|---|---|---|---|"]
    for r in rows:
        kept = f"{r['kept']}/{r['n']}" if "kept" in r else ""
        lines.append(f"| {r['dataset']} | {r['part']} | {r['n']} | {r['test_mean']:.4f} ± {r['test_sd']:.4f} | "
                     f"{r['balanced_mean']:.4f} | {r['ms_per_image']:.1f} | {kept} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    from tsweep.trainers.runtime import configure_tensorflow

    configure_tensorflow()
    work = Path(tempfile.mkdtemp(prefix="tsweep-quality-"))
    results = args.results_dir or work / "results"
    runs: list[dict] = []
    notes: list[str] = []
    started = time.perf_counter()

    def write_json(summary: list[dict]) -> None:
        # Written after every sweep too, so a run stopped part-way keeps what it measured.
        if args.json:  # atomic: a kill during the write keeps the previous sweeps' figures
            atomic_write_json(args.json, {"args": {k: str(v) for k, v in vars(args).items()}, "runs": runs,
                                          "summary": summary, "notes": notes, "load": list(os.getloadavg()),
                                          "wall_s": round(time.perf_counter() - started, 1)})

    try:
        for dataset in args.datasets:
            source = dataset_dir(dataset)
            if not source.is_dir():
                notes.append(f"skipped {dataset}: no folder {source}")
                say(notes[-1])
                continue
            data = source if has_test(source) else halve_val(source, work / f"{source.name}-halved")
            for seed in range(args.first_seed, args.first_seed + args.seeds):
                say(f"{source.name} seed {seed}: a sweep of {args.trials} trials x {args.max_epochs} epochs")
                runs += quality_runs(args, dataset, data, seed, results)
                write_json(summarise(runs))
        if args.class_weight:
            if not space_knows("class_weight"):
                notes.append("skipped --class-weight: this tsweep's configs have no `class_weight` key yet")
                say(notes[-1])
            elif not dataset_dir(IMBALANCED).is_dir():
                notes.append(f"skipped --class-weight: no folder {dataset_dir(IMBALANCED)}")
                say(notes[-1])
            else:
                for seed in range(args.first_seed, args.first_seed + args.seeds):
                    runs += class_weight_runs(args, seed, results)
                    write_json(summarise(runs))
    finally:
        shutil.rmtree(work, ignore_errors=True)  # the halved copies (symlinks), and the sweeps without --results-dir
    summary = summarise(runs)
    say("\n" + table(summary))
    for note in notes:
        say(f"note: {note}")
    if args.json:
        write_json(summary)
        say(f"wrote {args.json}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
