"""Run a sweep: check everything up front, then Ray Tune with ASHA over the space, then export the winner.

Order matters for users: every configuration error (data folder, space file, backbone, weights, name) is
found before Ray starts, and once trials run, a failing trial is recorded and the sweep goes on.
"""

from __future__ import annotations

import os
import re
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

from tsweep.errors import SweepConfigError, out_of_range
from tsweep.search.cache_budget import evict_cache, parse_size
from tsweep.search.ensemble import check_choices
from tsweep.search.formats import check_formats
from tsweep.search.options import OVERRIDE_FLAGS as OVERRIDE_OPTIONS
from tsweep.search.options import SweepOptions, options_from_dict
from tsweep.search.records import read_trials, sweep_dir, write_sweep
from tsweep.spaces.overrides import with_overrides
from tsweep.spaces.space import Space, load_space

REPORTED_METRICS = ("val_accuracy", "val_loss", "accuracy", "loss")  # what every trial reports per epoch
NAME_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]*$")
# The `tsweep run` flag of each override key, so messages name what the user typed.
OVERRIDE_FLAGS = {key: flag for key, (flag, _, _) in OVERRIDE_OPTIONS.items()}


def check_name(name: str) -> str:
    """A sweep name is one plain path component: never `..`, `/` or anything escaping results/."""
    if not NAME_RE.match(name) or ".." in name:
        raise SweepConfigError(f"`--name` must be a plain folder name (letters, digits, _ . -), got {name!r}: "
                               "it may not contain '/' or '..'")
    return name


def check_options(opts: SweepOptions) -> None:
    for key, value, lo in (("num_samples", opts.num_samples, 1), ("grace_period", opts.grace_period, 1),
                           ("reduction_factor", opts.reduction_factor, 2), ("max_failures", opts.max_failures, 0)):
        if value < lo:
            raise SweepConfigError(f"--{key.replace('_', '-')}: {out_of_range(key, lo, 'inf', value)}")
    if opts.metric not in REPORTED_METRICS:
        raise SweepConfigError(f"--metric must be one of {', '.join(REPORTED_METRICS)}, got {opts.metric!r}")
    if not 0 < opts.val_fraction < 1:
        raise SweepConfigError(f"--val-fraction: {out_of_range('val_fraction', 0, 1, opts.val_fraction)}")
    if opts.cache_memory:
        parse_size(opts.cache_memory)
    if opts.cache_disk:
        parse_size(opts.cache_disk, "--cache-disk")
    if opts.cpus_per_trial <= 0 or opts.gpus_per_trial < 0:
        raise SweepConfigError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0, got "
                               f"{opts.cpus_per_trial} and {opts.gpus_per_trial}")
    if not 0 <= opts.seed <= 2**31 - 1:
        raise SweepConfigError(f"--seed: {out_of_range('seed', 0, 2**31 - 1, opts.seed)}")
    check_formats(opts.formats)  # unknown formats and missing extras (the pip install that fixes it)
    check_choices(opts.ensemble, opts.tta)
    if opts.address is None:  # a local Ray has this machine's resources only: a trial that cannot fit waits forever
        check_local_resources(opts.cpus_per_trial, opts.gpus_per_trial)


def check_local_resources(cpus: float, gpus: float) -> None:
    """A trial's resources must fit this machine when the sweep runs on a local Ray."""
    have = os.cpu_count() or 1
    if cpus > have:
        raise SweepConfigError(f"--cpus-per-trial {cpus:g} is more than this machine's {have} CPUs: a local sweep "
                               f"could never start a trial; pass at most --cpus-per-trial {have}, or --address of "
                               "a Ray cluster with larger nodes")
    if gpus > 0:
        from tsweep.trainers.runtime import visible_gpus

        count = visible_gpus()
        if gpus > count:
            raise SweepConfigError(f"--gpus-per-trial {gpus:g} needs more GPUs than this machine's {count}: a local "
                                   "sweep could never start a trial; drop --gpus-per-trial or pass --address of a "
                                   "Ray cluster with GPU nodes")


def candidates(space: Space, key: str) -> list:
    """The values a key can take in a space, for keys that must be fixed or a choice (sizes, backbones)."""
    from tsweep.spaces.config import TrialConfig

    d = space.params.get(key)
    if d is None:
        return [getattr(TrialConfig, key)]
    if d.kind not in ("fixed", "choice"):
        raise SweepConfigError(f"{space.source}: `{key}` must be fixed or a `choice`, got `{d.kind}` "
                               "(decoded images and backbones are prepared per value)")
    return list(d.values)


def check_weights(space: Space, progress: Callable[[str], None] = print) -> None:
    """Build each backbone of the space once with its weights, so a failed download or a bad weights
    file stops the sweep before any trial (and Keras caches ImageNet downloads for the trials)."""
    from tsweep.trainers.pretrained import build_backbone

    for backbone in candidates(space, "backbone"):
        for weights in candidates(space, "weights"):
            for alpha in candidates(space, "alpha"):
                size = min(candidates(space, "image_size"))
                progress(f"checking {backbone} weights={weights} alpha={alpha}")
                build_backbone(backbone, size, weights=weights, alpha=alpha)


def prepare(opts: SweepOptions, progress: Callable[[str], None] = print) -> tuple[Space, dict, Path]:
    """Every check that can fail before Ray starts; evicts least recently used cache entries over the
    `--cache-disk` budget (`cache_budget.evict_cache`), then decodes (and caches) the images for each size.

    Returns the space with overrides applied, the data options for trials and the sweep folder.
    """
    from tsweep.files import is_uri
    from tsweep.trainers.data import default_cache_dir, discover, load_dataset
    from tsweep.trainers.decoded_cache import cache_key
    from tsweep.trainers.remote import local_data_dir

    check_options(opts)
    name = check_name(opts.name or time.strftime("sweep-%Y%m%d-%H%M%S"))
    root = Path(opts.results_dir).resolve() / name
    if root.exists() and not root.is_dir():
        raise SweepConfigError(f"--name {name}: {root} is a file, not a sweep folder: pass another --name")
    if root.exists() and any(root.iterdir()):
        raise SweepConfigError(f"{root} already holds a sweep: pass another --name, `tsweep resume {root}`, "
                               "or remove the folder")
    space = load_space(opts.space)
    if opts.overrides:
        space, notices = with_overrides(space, opts.overrides, OVERRIDE_FLAGS)
        for notice in notices:
            progress(notice)
    # A URI stays a URI (every node makes its own copy); a local path becomes absolute for the trials.
    data_dir = opts.data if is_uri(opts.data) else str(Path(opts.data).expanduser().resolve())
    cache = Path(opts.cache_dir).expanduser() if opts.cache_dir else default_cache_dir()
    # layout and class checks, before any decoding
    layout = discover(local_data_dir(data_dir, cache, progress), val_fraction=opts.val_fraction)
    data_options = {"data_dir": data_dir, "val_fraction": opts.val_fraction, "seed": opts.seed,
                    "cache_dir": opts.cache_dir}
    evict_cache(cache, opts, [cache_key(layout, int(size)) for size in candidates(space, "image_size")], progress)
    for size in candidates(space, "image_size"):
        data = load_dataset(image_size=int(size), progress=progress, **data_options)
        progress(data.summary())
    check_weights(space, progress)
    return space, data_options, root


def feature_settings(opts: SweepOptions) -> dict | None:
    """What trials need to build their FeatureCache: the node's budget split over its concurrent trials."""
    if not opts.feature_cache:
        return None
    from tsweep.trainers.features import default_memory_budget

    node = parse_size(opts.cache_memory) if opts.cache_memory else default_memory_budget()
    per_node = max(1, int((os.cpu_count() or 1) / opts.cpus_per_trial))
    return {"memory_bytes": node // per_node, "dtype": "float16" if opts.cache_float16 else "float32"}


def experiment_path(opts: SweepOptions, root: Path) -> str:
    """Where Ray Tune keeps this sweep's experiment state and checkpoints (what `tsweep resume` restores)."""
    if not opts.storage:
        return str(root)
    from tsweep.files import is_uri

    if is_uri(opts.storage):
        return f"{opts.storage.rstrip('/')}/{root.name}"
    return str(Path(opts.storage).expanduser().resolve() / root.name)


def run_sweep(opts: SweepOptions, progress: Callable[[str], None] = print) -> Path:
    """Run the whole sweep; returns its folder (results/<name>). Raises SweepConfigError before any trial."""
    space, data_options, root = prepare(opts, progress)
    objective = opts.objective()
    max_epochs = max(int(e) for e in candidates(space, "epochs"))
    info = {"name": root.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "status": "running",
            "options": asdict(opts), "data": data_options, "space": space.source,
            "params": {k: asdict(d) for k, d in space.params.items()}, "sampled": list(space.sampled),
            "metric": objective.metric, "mode": objective.mode, "max_epochs": max_epochs,
            "experiment": experiment_path(opts, root)}
    root.mkdir(parents=True, exist_ok=True)
    write_sweep(root, info)
    progress(f"sweep {root.name}: {opts.num_samples} trials of {space.source}, ASHA on {objective.metric} "
             f"({objective.mode}), up to {max_epochs} epochs; results in {root}")
    from tsweep.search.tuner import run_tuner

    with sweep_status(root, info, progress):
        run_tuner(opts, space, data_options, root, objective, max_epochs, progress)
    return root


@contextmanager
def sweep_status(root: Path, info: dict, progress: Callable[[str], None]) -> Iterator[None]:
    """Mark sweep.json finished, interrupted or failed when the block ends, however it ends."""
    try:
        yield
        unfinished = [r["trial_id"] for r in read_trials(root) if r.get("status") == "running"]
        if unfinished:  # Ray Tune stopped on Ctrl-C and returned instead of raising
            raise KeyboardInterrupt(f"{len(unfinished)} trials unfinished")
        info["status"] = "finished"
    except KeyboardInterrupt:
        info["status"] = "interrupted"
        progress(f"interrupted: trials so far are kept in {root}; continue with `tsweep resume {root}`")
        raise
    except BaseException:
        info["status"] = "failed"
        raise
    finally:
        info["ended"] = time.strftime("%Y-%m-%dT%H:%M:%S")
        write_sweep(root, info)


def resume_sweep(root: Path, address: str | None = None,
                 progress: Callable[[str], None] = print) -> tuple[Path, bool]:
    """Continue a sweep whose driver stopped: finished and pruned trials are not run again.

    Args:
        root: the sweep folder (results/<name>).
        address: a Ray cluster to resume on; default the sweep's own (None = a new local Ray).
        progress: where progress lines go.

    Returns the sweep folder and whether the sweep asked for an export.
    """
    from tsweep.search.records import read_sweep
    from tsweep.search.tuner import resume_tuner

    info = read_sweep(root)
    options = dict(info["options"])
    if address:
        options["address"] = address
    opts = options_from_dict(options, progress)
    if info.get("status") == "finished":
        progress(f"{root} already finished: nothing to resume")
        return root, False
    done = {s: n for s, n in summary(root).items() if s in ("completed", "pruned", "failed")}
    progress(f"resuming {root.name}: {sum(done.values())} trials already ended ({done}); unfinished trials "
             "continue from their last checkpoints")
    info["status"] = "running"
    info.setdefault("resumed", []).append(time.strftime("%Y-%m-%dT%H:%M:%S"))
    write_sweep(root, info)
    with sweep_status(root, info, progress):
        resume_tuner(opts, info["data"], info.get("experiment", str(root)))
    return root, opts.export


def summary(root: Path) -> dict[str, Any]:
    """Counts by status for a finished sweep (used by the CLI's closing line)."""
    from tsweep.search.leaderboard import status_counts

    return status_counts(read_trials(sweep_dir(root)))
