"""Ray Tune wiring: connect to (or start) Ray, build the ASHA scheduler and the Tuner, and run it."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable

from tsweep.files import is_uri
from tsweep.search.objective import Objective
from tsweep.search.ray_space import to_ray
from tsweep.search.recorder import SweepRecorder
from tsweep.search.trial import make_trainable
from tsweep.spaces.space import Space

# Trials inherit these: quiet TensorFlow's C++ logging, and stop Ray from copying every worker's
# output to the driver's terminal (the recorder prints progress instead).
# MALLOC_ARENA_MAX: Ray runs each trial of a reused worker in a new thread, and glibc gives new threads new
# malloc arenas that fragment: ~1.5 MB more RSS per trial measured here, ~0.1 MB with 2 arenas.
TRIAL_ENV = {"TF_CPP_MIN_LOG_LEVEL": "2", "PYTHONWARNINGS": "ignore", "MALLOC_ARENA_MAX": "2"}


# What a cluster's workers never need from a source checkout (Ray uploads the working_dir to every node).
SHIP_EXCLUDES = ["results/", ".venv/", "venv/", ".git/", "**/__pycache__/", ".pytest_cache/", ".ruff_cache/",
                 ".cache/", "*.h5", "*.keras", "*.egg-info/"]


def source_root() -> Path | None:
    """The checkout tsweep runs from (the folder with pyproject.toml), or None for an installed wheel."""
    import tsweep

    root = Path(tsweep.__file__).resolve().parents[1]
    return root if (root / "pyproject.toml").is_file() and (root / "search").is_dir() else None


def runtime_env_for(address: str | None) -> dict:
    """Trial environment: quiet logs everywhere; on a cluster, also this checkout as Ray's working_dir,
    so every node runs the driver's code (without results, caches and virtualenvs)."""
    env: dict = {"env_vars": dict(TRIAL_ENV)}
    root = source_root()
    if address and root is not None:
        env.update(working_dir=str(root), excludes=list(SHIP_EXCLUDES))
    return env


def init_ray(address: str | None) -> None:
    """Start an embedded local Ray (address None) or connect to a running cluster."""
    import ray

    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_DEDUP_LOGS", "1")
    # A trial that fails on its own sends one last report without the metric (see trial.ERROR_KEY);
    # the metric name itself is checked against what trials report before Ray starts.
    os.environ["TUNE_DISABLE_STRICT_METRIC_CHECKING"] = "1"
    # Per-epoch checkpoints of short trials trip a "snapshotting too often" warning that users cannot act on.
    os.environ.setdefault("TUNE_WARN_EXCESSIVE_EXPERIMENT_CHECKPOINT_SYNC_THRESHOLD_S", "0")
    if address:
        ray.init(address=address, runtime_env=runtime_env_for(address), log_to_driver=False)
    else:
        # "local" always starts a private Ray, never attaching to another one found on this machine.
        ray.init(address="local", include_dashboard=False, runtime_env=runtime_env_for(None), log_to_driver=False)


def trainable_for(opts: Any, data_options: dict) -> Any:
    """The trial function with its per-trial resources (CPUs, a GPU fraction)."""
    from ray import tune

    from tsweep.search.sweep import feature_settings

    resources = {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}
    trainable = make_trainable(data_options, mixed_precision=opts.mixed_precision, features=feature_settings(opts))
    return tune.with_resources(trainable, resources)


def make_scheduler(max_epochs: int, grace_period: int, reduction_factor: int, baseline: dict | None = None) -> Any:
    """ASHA over training iterations (one per epoch); metric and mode come from the TuneConfig. With a
    `baseline` config, ASHA spares that trial (`search.baseline.BaselineASHA`)."""
    from ray.tune.schedulers import ASHAScheduler

    kwargs = dict(time_attr="training_iteration", max_t=max_epochs, grace_period=min(grace_period, max_epochs),
                  reduction_factor=reduction_factor)
    if baseline is None:
        return ASHAScheduler(**kwargs)
    from tsweep.search.baseline_asha import BaselineASHA

    return BaselineASHA(baseline, **kwargs)


def run_tuner(opts: Any, space: Space, data_options: dict, root: Path, objective: Objective,
              max_epochs: int, progress: Callable[[str], None] = print) -> Any:
    """Run the trials of a prepared sweep with Ray Tune; returns Ray's ResultGrid.

    Args:
        opts: the SweepOptions (resources, ASHA settings, seed, address).
        space: the validated space (compiled here to Ray's param_space).
        data_options: `load_dataset` arguments for the trials.
        root: the sweep folder; Ray writes its experiment state and checkpoints there too.
        objective: metric and direction.
        max_epochs: ASHA's max_t.
        progress: where progress lines go.
    """
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    from tsweep.search import baseline as scratch

    init_ray(opts.address)
    trainable = trainable_for(opts, data_options)
    # --baseline: one more trial, small_cnn from scratch, run first and spared by ASHA (search/baseline.py)
    baseline = scratch.baseline_config(space, max_epochs) if getattr(opts, "baseline", False) else None
    if baseline is not None:
        scratch.quiet_preset_warnings()
    num_samples = opts.num_samples + (baseline is not None)
    recorder = SweepRecorder(root, objective, total=num_samples, printer=progress, baseline=baseline)
    tuner = tune.Tuner(
        trainable,
        param_space=scratch.param_space(to_ray(space), baseline),
        tune_config=tune.TuneConfig(
            metric=objective.metric, mode=objective.mode, num_samples=num_samples,
            scheduler=make_scheduler(max_epochs, opts.grace_period, opts.reduction_factor, baseline),
            search_alg=BasicVariantGenerator(random_state=opts.seed,
                                             points_to_evaluate=[baseline] if baseline else None),
            trial_dirname_creator=lambda trial: trial.trial_id,
            reuse_actors=opts.reuse_workers,
        ),
        run_config=tune.RunConfig(
            name=root.name, storage_path=storage_path(opts, root), callbacks=[recorder], verbose=0,
            # Disk stays bounded: the best checkpoint by the metric, plus Ray always keeps the latest.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=objective.metric,
                                                    checkpoint_score_order=objective.mode),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
        ),
    )
    return tuner.fit()


def storage_path(opts: Any, root: Path) -> str:
    """Ray's storage_path: --storage (a shared path or a cloud URI) or, by default, the results folder."""
    if not opts.storage:
        return str(root.parent)
    return opts.storage if is_uri(opts.storage) else str(Path(opts.storage).expanduser().resolve())


def resume_tuner(opts: Any, data_options: dict, experiment: str) -> Any:
    """Continue an interrupted sweep from Ray's experiment state: finished and pruned trials stay as they
    are, unfinished and errored ones continue from their last checkpoint."""
    from ray import tune

    init_ray(opts.address)
    if not tune.Tuner.can_restore(experiment):
        from tsweep.errors import SweepConfigError

        raise SweepConfigError(f"{experiment} holds no Ray Tune experiment state to resume from (the sweep "
                               "stopped before its first trial started): run it again with `tsweep run`")
    from tsweep.search.ray_state import repair_stale_checkpoints

    repair_stale_checkpoints(experiment)
    tuner = tune.Tuner.restore(experiment, trainable_for(opts, data_options), resume_unfinished=True,
                               resume_errored=True)
    return tuner.fit()
