"""Run a sweep: check everything up front, then Ray Tune with ASHA over the space, then export the winner.

Order matters for users: every configuration error (data folder, space file, backbone, weights, name) is
found before Ray starts, and once trials run, a failing trial is recorded and the sweep goes on.
"""

from __future__ import annotations

import math
import os
import re
import secrets
import time
from contextlib import contextmanager
from dataclasses import asdict
from pathlib import Path
from typing import Any, Callable, Iterator

from tsweep.errors import SweepConfigError, out_of_range
from tsweep.files import check_folder, join_location
from tsweep.search.cache_budget import evict_cache, parse_size
from tsweep.search.ensemble import check_choices
from tsweep.search.formats import check_formats
from tsweep.search.options import OVERRIDE_FLAGS as OVERRIDE_OPTIONS
from tsweep.search.options import SweepOptions
from tsweep.search.ownership import Claim, abandon, claim_folder, claim_storage
from tsweep.search.ray_connect import check_address, check_local_auth
from tsweep.search.reader import check_storage
from tsweep.search.records import read_trials, sweep_dir, write_sweep
from tsweep.spaces.overrides import with_overrides
from tsweep.spaces.space import Space, load_space

CLAIMS: dict[Path, Claim] = {}  # folders `prepare` claimed, until run_sweep takes them over
# what every trial reports per epoch
REPORTED_METRICS = ("val_accuracy", "val_loss", "val_balanced_accuracy", "accuracy", "loss")
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
    from tsweep.search.searchers import check_search_options

    check_search_options(opts)
    for key, value, lo in (("num_samples", opts.num_samples, 0), ("grace_period", opts.grace_period, 1),
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
    if not (math.isfinite(opts.cpus_per_trial) and math.isfinite(opts.gpus_per_trial)) \
            or opts.cpus_per_trial <= 0 or opts.gpus_per_trial < 0:
        raise SweepConfigError("--cpus-per-trial must be > 0 and --gpus-per-trial >= 0, got "
                               f"{opts.cpus_per_trial} and {opts.gpus_per_trial}")
    if not 0 <= opts.seed <= 2**31 - 1:
        raise SweepConfigError(f"--seed: {out_of_range('seed', 0, 2**31 - 1, opts.seed)}")
    check_formats(opts.formats)  # unknown formats and missing extras (the pip install that fixes it)
    for flag, folder in (("--results-dir", opts.results_dir), ("--cache-dir", opts.cache_dir)):
        check_folder(flag, folder)
    check_storage(opts.storage)  # a local folder, or a URI pyarrow can open (with credentials set up)
    check_choices(opts.ensemble, opts.tta)
    if opts.address is None:  # a local Ray has this machine's resources only: a trial that cannot fit waits forever
        check_local_resources(opts.cpus_per_trial, opts.gpus_per_trial)
        check_local_auth()  # a local Ray listens on loopback with token auth (search.ray_connect)
    else:
        check_address(opts.address)  # an unreachable address fails in seconds, not after decoding


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
    """Build each backbone of the space with its weights at every image size of the space (Keras's ImageNet
    file differs per size for MobileNetV2), so a failed download or a bad weights file stops the sweep before
    any trial (and Keras caches ImageNet downloads for the trials)."""
    from tsweep.spaces.backbones import get_spec
    from tsweep.trainers.pretrained import build_backbone

    for backbone in candidates(space, "backbone"):
        if get_spec(backbone).from_scratch:  # small_cnn: random init, no weights to check
            continue
        for weights in candidates(space, "weights"):
            for alpha in candidates(space, "alpha"):
                for size in sorted(set(candidates(space, "image_size"))):
                    progress(f"checking {backbone} weights={weights} alpha={alpha} at {size} px")
                    build_backbone(backbone, size, weights=weights, alpha=alpha)


def prepare(opts: SweepOptions, progress: Callable[[str], None] = print) -> tuple[Space, dict, Path]:
    """Every check that can fail before Ray starts; evicts least recently used cache entries over the
    `--cache-disk` budget (`cache_budget.evict_cache`), then decodes (and caches) the images for each size.

    Returns the space with overrides applied, the data options for trials and the sweep folder.
    """
    check_options(opts)
    claim = claim_name(opts, progress)  # first: a second run with this name is refused before anything slow
    try:
        space, data_options = _prepare_inputs(opts, progress)
    except BaseException:
        abandon(claim)
        raise
    CLAIMS[claim.root] = claim  # held by run_sweep until the sweep ends
    return space, data_options, claim.root


def claim_name(opts: SweepOptions, progress: Callable[[str], None] = print) -> Claim:
    """Create and lock results/<name> (`ownership.claim_folder`), and claim the --storage experiment folder.

    A default name is sweep-<date>-<time>-<4 hex digits>, drawn again if that folder exists: two sweeps started
    in the same second never share one."""
    parent = Path(opts.results_dir).resolve()
    claim = None
    if opts.name:
        claim = claim_folder(parent / check_name(opts.name), default_name=False, progress=progress)
    for _ in range(20):
        if claim is not None:
            break
        name = time.strftime("sweep-%Y%m%d-%H%M%S-") + secrets.token_hex(2)
        claim = claim_folder(parent / name, default_name=True, progress=progress)
    if claim is None:
        raise SweepConfigError(f"could not find a free default sweep name in {parent}: pass --name")
    experiment = experiment_path(opts, claim.root)
    if experiment != str(claim.root):
        try:
            claim.storage = claim_storage(experiment, claim.root, claim.marker)
        except BaseException:
            abandon(claim)
            raise
    return claim


def _prepare_inputs(opts: SweepOptions, progress: Callable[[str], None]) -> tuple[Space, dict]:
    from tsweep.files import is_uri
    from tsweep.trainers.data import default_cache_dir, discover, load_dataset
    from tsweep.trainers.decoded_cache import cache_key
    from tsweep.trainers.remote import local_data_dir

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
    warned = False
    for size in candidates(space, "image_size"):
        data = load_dataset(image_size=int(size), progress=progress, **data_options)
        progress(data.summary())
        if not warned and data.imbalance_warning():  # the class counts are the same at every size: once
            progress(data.imbalance_warning())
            warned = True
    check_weights(space, progress)
    return space, data_options


def feature_settings(opts: SweepOptions, space: Space | None = None) -> dict | None:
    """What trials need to build their FeatureCache: the node's budget split over its concurrent trials, and
    the cutoffs trials may fine-tune from (`space_cutoffs`), whose activations a pass through them keeps."""
    if not opts.feature_cache:
        return None
    from tsweep.trainers.features import default_memory_budget

    node = parse_size(opts.cache_memory) if opts.cache_memory else default_memory_budget()
    per_node = max(1, int((os.cpu_count() or 1) / opts.cpus_per_trial))
    return {"memory_bytes": node // per_node, "dtype": "float16" if opts.cache_float16 else "float32",
            "waypoints": space_cutoffs(space) if space is not None else []}


def space_cutoffs(space: Space) -> list[int]:
    """The freeze cutoffs a space samples (fixed, a choice or a randint of them), none for `freeze_fraction`."""
    d = space.params.get("freeze_cutoff")
    if d is None or d.kind not in ("fixed", "choice", "randint"):
        return []
    values = range(d.values[0], d.values[1] + 1) if d.kind == "randint" else d.values
    return sorted({int(v) for v in values if isinstance(v, int) and v > 0})


def experiment_path(opts: SweepOptions, root: Path) -> str:
    """Where Ray Tune keeps this sweep's experiment state and checkpoints (what `tsweep resume` restores)."""
    if not opts.storage:
        return str(root)
    from tsweep.files import is_uri

    if is_uri(opts.storage):  # the name goes into the path, before any ?query (e.g. pyarrow's ?region=...)
        return join_location(opts.storage, root.name)
    return str(Path(opts.storage).expanduser().resolve() / root.name)


def run_sweep(opts: SweepOptions, progress: Callable[[str], None] = print) -> Path:
    """Run the whole sweep; returns its folder (results/<name>). Raises SweepConfigError before any trial."""
    space, data_options, root = prepare(opts, progress)
    claim = CLAIMS.pop(root)
    try:
        return _run_claimed(opts, space, data_options, claim, progress)
    finally:
        claim.release()


def _run_claimed(opts: SweepOptions, space: Space, data_options: dict, claim: Claim,
                 progress: Callable[[str], None]) -> Path:
    from tsweep.search.searchers import describe_search, resolve_search
    from tsweep.search.warm_start import load_warm_start

    root = claim.root
    objective = opts.objective()
    warm = load_warm_start(opts.warm_start, space, objective, progress)  # incompatible: an error, no trial ran
    max_epochs = max(int(e) for e in candidates(space, "epochs"))
    info = {"name": root.name, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "status": "running",
            "options": asdict(opts), "data": data_options, "space": space.source,
            "params": {k: asdict(d) for k, d in space.params.items()}, "sampled": list(space.sampled),
            "metric": objective.metric, "mode": objective.mode, "max_epochs": max_epochs,
            "experiment": experiment_path(opts, root), "sweep_id": claim.marker["id"],
            "search": resolve_search(opts.search, space)}
    write_sweep(root, info)
    extra = " + 1 baseline (small_cnn from scratch, spared by ASHA)" if opts.baseline else ""
    progress(f"sweep {root.name}: {describe_search(opts, info['search'])}{extra} of {space.source}, ASHA on "
             f"{objective.metric} ({objective.mode}), up to {max_epochs} epochs; results in {root}")
    from tsweep.search.tuner import run_tuner

    with sweep_status(root, info, progress):
        run_tuner(opts, space, data_options, root, objective, max_epochs, progress, warm)
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


def summary(root: Path) -> dict[str, Any]:
    """Counts by status for a finished sweep (used by the CLI's closing line)."""
    from tsweep.search.leaderboard import status_counts

    return status_counts(read_trials(sweep_dir(root)))
