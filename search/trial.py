"""The Ray Tune trainable: one sampled config -> `tsweep.trainers.train.train`, one report per epoch.

Each report carries a checkpoint (model with optimizer state, plus the history), so a trial moved to
another node or resumed by `tsweep resume` continues from its last epoch. What a failure inside the trial means
(retried by Ray, or failed at once with its reason) is decided by `search.failures`, in one `except` here.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Callable

ERROR_KEY = "tsweep_error"  # set in a trial's last report when it failed on its own (e.g. NaN loss)
NOTE_KEY = "tsweep_note"  # set in a report after the trial skipped an unreadable checkpoint (search.failures)
GATE_ENV = "TSWEEP_TRIAL_GATE"  # tests only: a Unix socket every trial checks in with after each epoch (check_in)


def make_trainable(data_options: dict[str, Any], mixed_precision: bool = False,
                   features: dict[str, Any] | None = None) -> Callable[[dict], None]:
    """A Ray Tune function trainable reading the dataset described by `data_options`.

    Args:
        mixed_precision: train in float16 on GPUs (ignored on CPU-only trials); default False.
        features: the frozen-prefix feature cache's settings, {"memory_bytes": int, "dtype": "float32" or
            "float16", "waypoints": [cutoff, ...]} (`FeatureCache`'s arguments), or None to train every trial
            end to end; default None.
        data_options: keyword arguments of `tsweep.trainers.data.load_dataset` except image_size
            (data_dir as an absolute path, val_fraction, seed, cache_dir); decoded arrays come from the
            on-disk cache, so trials never decode images themselves on a node that has them.
    """

    def tsweep_trial(config: dict) -> None:
        import ray
        from ray import tune

        from tsweep.search.failures import NodeFault, classify, kept_checkpoints, resume_chain
        from tsweep.trainers.checkpoint import checkpoint_epoch, save_checkpoint
        from tsweep.trainers.pretrained import reuse_backbones
        from tsweep.trainers.runtime import configure_tensorflow, fresh_session
        from tsweep.trainers.step_pool import reuse_steps
        from tsweep.trainers.train import as_config

        fresh_session()
        context = ray.get_runtime_context()
        assigned = context.get_assigned_resources()
        # Where the trial ran and what it was given, for the records (and the multi-node tests).
        placement = {"node_id": context.get_node_id()[:12], "gpu_fraction": assigned.get("GPU", 0.0),
                     "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES", ""), "pid": os.getpid()}
        resumed: list[int] = []  # the checkpoint epoch this run continues from, said in its first report
        notes: list[str] = []  # checkpoints skipped as unreadable, said in the next report

        def report(history: list, model: Any) -> None:
            metrics = {**history[-1], **placement, "rss_mb": rss_mb()}
            if resumed:
                metrics["resumed_from"] = resumed.pop()
            if notes:
                metrics[NOTE_KEY] = "; ".join(notes)
                notes.clear()
            with tempfile.TemporaryDirectory(prefix="tsweep-ckpt-") as tmp:
                save_checkpoint(tmp, model, history, cfg)  # the frozen pretrained layers are left out
                tune.report(metrics, checkpoint=tune.Checkpoint.from_directory(tmp))
            check_in(tune.get_context().get_trial_id(), history[-1]["epoch"])

        def run(resume_dir: Any) -> None:
            from tsweep.trainers.train import train

            data = dataset(cfg.image_size, data_options)
            resumed[:] = [] if resume_dir is None else [checkpoint_epoch(resume_dir)]
            train(cfg, data, on_epoch=report, resume_from=resume_dir,
                  feature_cache=feature_cache(features, data_options.get("cache_dir")))

        try:
            cfg = as_config(config)  # read by run and report (a bad config fails the trial here, classified)
            configure_tensorflow(assigned.get("CPU"), gpu_fraction=assigned.get("GPU", 0.0),
                                 mixed_precision=mixed_precision)
            # One trial at a time in this worker: its next trials reuse the backbone and the traced steps.
            with reuse_backbones(), reuse_steps():
                resume_chain(kept_checkpoints(tune.get_checkpoint()), run, notes.append)
        except Exception as e:  # one place decides (search.failures): retried by Ray, or failed at once
            failure = classify(e)
            if failure.retried:
                raise NodeFault(f"on node {context.get_node_id()}: {failure.reason}") from e
            tune.report({ERROR_KEY: failure.reason, **({NOTE_KEY: "; ".join(notes)} if notes else {})})

    return tsweep_trial


def check_in(trial_id: str, epoch: int) -> None:
    """A test seam, inert unless $TSWEEP_TRIAL_GATE names a Unix socket: send it "<trial_id> <epoch>" and wait
    for its answer. Called once `tune.report` of that epoch has returned, i.e. once the driver has recorded the
    epoch and registered its checkpoint (a function trainable's report blocks until the driver asks for the
    next result). Tests hold a trial at an epoch this way, until they answer or for good, instead of timing
    against epochs (tests/fake_sweeps.py, TrialGate)."""
    path = os.environ.get(GATE_ENV)
    if not path:
        return
    import socket

    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as gate:
        gate.connect(path)
        gate.sendall(f"{trial_id} {epoch}\n".encode())
        gate.recv(1)  # the go-ahead, or the gate closing: blocks for as long as the test holds this trial


# A reused worker (Ray Tune actor reuse) keeps the datasets it decoded: one per (size, data options).
_DATASETS: dict[tuple, Any] = {}


def dataset(image_size: int, data_options: dict[str, Any]) -> Any:
    """The decoded dataset, loaded once per worker process (memory-mapped from the node's cache)."""
    from tsweep.trainers.data import load_dataset

    key = (image_size, tuple(sorted(data_options.items())))
    if key not in _DATASETS:
        if len(_DATASETS) >= 2:  # a sweep over image sizes: keep the memory a worker holds bounded
            _DATASETS.pop(next(iter(_DATASETS)))
        _DATASETS[key] = load_dataset(image_size=image_size, **data_options)
    return _DATASETS[key]


_FEATURE_CACHES: dict[tuple, Any] = {}


def feature_cache(features: dict[str, Any] | None, cache_dir: str | None) -> Any:
    """This worker's FeatureCache (its in-memory part survives from trial to trial in a reused worker);
    the files on disk are shared by every trial on the node."""
    if features is None:
        return None
    from tsweep.trainers.data import default_cache_dir
    from tsweep.trainers.features import FEATURES_SUBDIR, FeatureCache

    root = Path(cache_dir).expanduser() if cache_dir else default_cache_dir()
    waypoints = tuple(features.get("waypoints", ()))
    key = (str(root), features["memory_bytes"], features["dtype"], waypoints)
    if key not in _FEATURE_CACHES:
        _FEATURE_CACHES[key] = FeatureCache(root / FEATURES_SUBDIR, features["memory_bytes"], features["dtype"],
                                            waypoints)
    return _FEATURE_CACHES[key]


def rss_mb() -> float:
    """Resident memory of this process in MB (Linux /proc; 0 where unavailable)."""
    try:
        pages = int(open("/proc/self/statm").read().split()[1])
        return round(pages * os.sysconf("SC_PAGE_SIZE") / 2**20, 1)
    except (OSError, ValueError, IndexError):
        return 0.0
