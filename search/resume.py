"""`tsweep resume`: continue a sweep in the folder it is given, under the driver lock, after the owner check.

Everything is derived from the folder passed in, never from paths recorded in sweep.json: a copied or moved
sweep continues in place and its original is not touched (Ray itself re-derives its trials' paths from the
experiment folder it restores, see `Trial.set_storage`; `resume_tuner` points the recorder at this folder).
"""

from __future__ import annotations

import os
import time
from pathlib import Path
from typing import Any, Callable

from tsweep.errors import SweepConfigError
from tsweep.files import atomic_write_json
from tsweep.search.objective import Objective
from tsweep.search.options import options_from_dict
from tsweep.search.ownership import (
    check_owner,
    claim_storage,
    has_ray_state,
    lock_sweep,
    read_marker,
    update_storage_owner,
)
from tsweep.search.records import read_sweep, read_trials, trial_path, write_sweep
from tsweep.search.sweep import OVERRIDE_FLAGS, SweepOptions, experiment_path, summary, sweep_status


def resume_sweep(root: Path, address: str | None = None, progress: Callable[[str], None] = print,
                 trust: bool = False) -> tuple[Path, bool]:
    """Continue a sweep whose driver stopped: finished and pruned trials are not run again. A sweep that
    stopped before Ray saved any experiment state starts afresh from its sweep.json.

    Args:
        root: the sweep folder (results/<name>), wherever it is now.
        address: a Ray cluster to resume on; default the sweep's own (None = a new local Ray).
        progress: where progress lines go.
        trust: resume even when the folder or its Ray state belongs to another user (their pickles run here).

    Returns the sweep folder and whether the sweep asked for an export.

    Raises:
        SweepConfigError: the sweep's driver still runs, its files belong to someone else (without `trust`), or
            its Ray state belongs to the sweep it was copied from.
    """
    root = Path(root).resolve()
    info = read_sweep(root)
    options = dict(info["options"])
    if address:
        options["address"] = address
    opts = options_from_dict(options, progress)
    if opts.address:
        from tsweep.search.ray_connect import check_address

        check_address(opts.address)  # an unreachable cluster fails in seconds, before anything is loaded
    check_owner(root, str(root), trust)  # before this driver writes its lock there
    lock = lock_sweep(root, "wait for it to end (or stop it) before resuming")
    try:
        experiment = resume_experiment(root, opts, info, progress)
        check_owner(root, experiment, trust)  # the storage's files, before Ray unpickles them
        if info.get("status") == "finished":
            progress(f"{root} already finished: nothing to resume")
            return root, False
        fresh = not has_ray_state(experiment)
        if fresh:
            experiment = experiment_path(opts, root)
            marker = read_marker(root)
            if marker and experiment != str(root):
                claim_storage(experiment, root, marker)
            stale = _end_stale_records(root)
            progress(f"{root.name} stopped before Ray saved its first experiment state: starting it afresh from "
                     f"its sweep.json{f' ({stale} unfinished trial records marked failed)' if stale else ''}")
        else:
            done = {s: n for s, n in summary(root).items() if s in ("completed", "pruned", "failed")}
            progress(f"resuming {root.name}: {sum(done.values())} trials already ended ({done}); unfinished trials "
                     "continue from their last checkpoints")
        info.update(status="running", experiment=experiment)
        info.setdefault("resumed", []).append(time.strftime("%Y-%m-%dT%H:%M:%S"))
        write_sweep(root, info)
        with sweep_status(root, info, progress):
            if fresh:
                _start_fresh(opts, info, root, progress)
            else:
                from tsweep.search.tuner import resume_tuner

                resume_tuner(opts, info["data"], experiment, root=root, objective=Objective(info["metric"],
                             info["mode"]), progress=progress, space=_space(opts))
    finally:
        os.close(lock)
    return root, opts.export


def resume_experiment(root: Path, opts: SweepOptions, info: dict, progress: Callable[[str], None] = print) -> str:
    """The Ray experiment folder a resume of `root` continues: `root` itself without --storage; with it,
    <storage>/<root's name>, or the recorded one for a moved sweep whose storage stayed where it was.

    Raises:
        SweepConfigError: that storage belongs to another sweep, or to the sweep `root` was copied from.
    """
    if not opts.storage:
        return str(root)
    candidate = experiment_path(opts, root)
    recorded = info.get("experiment") or candidate
    experiment = candidate
    if recorded != candidate and not has_ray_state(candidate) and has_ray_state(recorded):
        experiment = recorded
    marker, owner = read_marker(root), read_marker(experiment)
    if not marker or not owner:  # a sweep from before markers: nothing to compare
        return experiment
    if owner.get("id") != marker.get("id"):
        raise SweepConfigError(f"--storage: {experiment} holds the Ray state of another sweep ({owner.get('results')})"
                               f", not of {root}")
    original = Path(owner.get("results", str(root)))
    if original != root:
        still_there = (read_marker(original) or {}).get("id") == marker["id"] if original.is_dir() else False
        if still_there and experiment == recorded:
            elsewhere = f", or copy {experiment} to {candidate} and resume again" if candidate != recorded else ""
            raise SweepConfigError(f"{root} is a copy of {original}, whose Ray state in {experiment} it would "
                                   f"advance: resume {original} instead{elsewhere}")
        update_storage_owner(experiment, root, marker)
        progress(f"{experiment} now belongs to {root} (it was {original}'s)")
    return experiment


def _end_stale_records(root: Path) -> int:
    """Mark records left "running" by a driver that never saved Ray state as failed (Ray cannot continue them)."""
    stale = [r for r in read_trials(root) if r.get("status") == "running"]
    for record in stale:
        record.update(status="failed", ended=time.time(), error="its driver stopped before Ray saved any "
                      "experiment state; `tsweep resume` started the sweep afresh")
        atomic_write_json(trial_path(root, record["trial_id"]), record)
    return len(stale)


def _start_fresh(opts: SweepOptions, info: dict, root: Path, progress: Callable[[str], None]) -> None:
    """Run the sweep recorded in sweep.json from its first trial, in `root`."""
    from tsweep.search.tuner import run_tuner

    run_tuner(opts, _space(opts), info["data"], root, Objective(info["metric"], info["mode"]),
              int(info["max_epochs"]), progress)


def _space(opts: SweepOptions) -> Any:
    """The sweep's space as sweep.json's options give it (its file, then its overrides)."""
    from tsweep.spaces.overrides import with_overrides
    from tsweep.spaces.space import load_space

    space = load_space(opts.space)
    if opts.overrides:
        space, _ = with_overrides(space, opts.overrides, OVERRIDE_FLAGS)
    return space
