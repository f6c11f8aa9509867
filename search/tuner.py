"""Ray Tune wiring: connect to (or start) Ray, build the ASHA scheduler and the Tuner, and run it."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

from tsweep.files import is_uri
from tsweep.search.objective import Objective
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
    from tsweep.search import ray_connect

    if address:
        ray_connect.check_address(address)  # `tsweep resume --address` too: seconds, where Ray retries for minutes
        try:
            ray.init(address=address, runtime_env=runtime_env_for(address), log_to_driver=False)
        except (ConnectionError, ValueError, ray.exceptions.AuthenticationError) as e:  # none there, a bad token
            raise ray_connect.connection_error(address, e) from None
        return

    # "local" always starts a private Ray, never attaching to another one found on this machine; it listens
    # on 127.0.0.1 only, with token auth, and no dashboard (search.ray_connect).
    ray_connect.check_local_auth()
    ray_connect.ensure_private_token()
    with ray_connect.loopback_only():
        ray.init(address="local", include_dashboard=False, runtime_env=runtime_env_for(None), log_to_driver=False)


def check_fits(opts: Any) -> None:
    """On a cluster, once connected: a trial's resources must fit some node (a local Ray's are checked with the
    other options, before any decoding)."""
    if opts.address:
        from tsweep.search.ray_connect import check_cluster_fits

        check_cluster_fits(opts.cpus_per_trial, opts.gpus_per_trial, opts.address)


def trainable_for(opts: Any, data_options: dict, space: Space | None = None) -> Any:
    """The trial function with its per-trial resources (CPUs, a GPU fraction); `space` gives the cutoffs
    whose activations the feature cache keeps on the way (`sweep.feature_settings`)."""
    from ray import tune

    from tsweep.search.sweep import feature_settings

    resources = {"cpu": opts.cpus_per_trial, "gpu": opts.gpus_per_trial}
    trainable = make_trainable(data_options, mixed_precision=opts.mixed_precision,
                               features=feature_settings(opts, space))
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
              max_epochs: int, progress: Callable[[str], None] = print, warm: Any = None) -> Any:
    """Run the trials of a prepared sweep with Ray Tune; returns Ray's ResultGrid.

    Args:
        opts: the SweepOptions (resources, ASHA settings, seed, address).
        space: the validated space (compiled here to Ray's param_space).
        data_options: `load_dataset` arguments for the trials.
        root: the sweep folder; Ray writes its experiment state and checkpoints there too.
        objective: metric and direction.
        max_epochs: ASHA's max_t.
        progress: where progress lines go.
        warm: a `warm_start.WarmStart` seeding the searcher, or None.
    """
    from ray import tune

    from tsweep.search import baseline as scratch
    from tsweep.search.budget import TimeBudget
    from tsweep.search.cache_budget import parse_duration
    from tsweep.search.searchers import make_searcher, resolve_search

    init_ray(opts.address)
    check_fits(opts)
    trainable = trainable_for(opts, data_options, space)
    budget = TimeBudget(parse_duration(opts.time_budget, "--time-budget"), root) if opts.time_budget else None
    # --baseline: one more trial, small_cnn from scratch, run first and spared by ASHA (search/baseline.py)
    baseline = scratch.baseline_config(space, max_epochs) if getattr(opts, "baseline", False) else None
    if baseline is not None:
        scratch.quiet_preset_warnings()
    search_alg, param_space = make_searcher(resolve_search(opts.search, space), space, objective, opts.seed,
                                            root, warm, baseline)
    limit = opts.trial_limit()
    num_samples = limit + (baseline is not None) if limit > 0 else limit
    recorder = SweepRecorder(root, objective, total=num_samples, printer=progress, budget=budget, baseline=baseline)
    tuner = tune.Tuner(
        trainable,
        param_space=scratch.param_space(param_space, baseline),
        tune_config=tune.TuneConfig(
            metric=objective.metric, mode=objective.mode, num_samples=num_samples,
            scheduler=make_scheduler(max_epochs, opts.grace_period, opts.reduction_factor, baseline),
            search_alg=search_alg,
            trial_dirname_creator=lambda trial: trial.trial_id,
            reuse_actors=opts.reuse_workers,
        ),
        run_config=tune.RunConfig(
            name=root.name, storage_path=storage_path(opts, root), callbacks=[recorder], verbose=0, stop=budget,
            # Disk stays bounded: the best checkpoint by the metric, plus Ray always keeps the latest.
            checkpoint_config=tune.CheckpointConfig(num_to_keep=1, checkpoint_score_attribute=objective.metric,
                                                    checkpoint_score_order=objective.mode),
            failure_config=tune.FailureConfig(max_failures=opts.max_failures),
        ),
    )
    with queued_trials(opts):
        return tuner.fit()


@contextmanager
def queued_trials(opts: Any) -> Iterator[None]:
    """A sweep bounded by its time budget alone: Ray would queue 200 pending trials up front (for autoscaling),
    which the budget then ends unstarted. Keep about two waves queued instead, and quiet Ray's warning about
    trials that never started (they have no results; tsweep records only trials that start)."""
    import logging

    import ray

    key = "TUNE_MAX_PENDING_TRIALS_PG"  # read when Ray's TuneController is built, inside fit()
    if opts.trial_limit() >= 0 or key in os.environ:
        yield
        return
    os.environ[key] = str(max(4, 2 * int(ray.cluster_resources().get("CPU", 1) / opts.cpus_per_trial)))
    logging.getLogger("ray.tune.analysis.experiment_analysis").setLevel(logging.ERROR)
    try:
        yield
    finally:
        os.environ.pop(key, None)


def storage_path(opts: Any, root: Path) -> str:
    """Ray's storage_path: --storage (a shared path or a cloud URI) or, by default, the results folder."""
    if not opts.storage:
        return str(root.parent)
    return opts.storage if is_uri(opts.storage) else str(Path(opts.storage).expanduser().resolve())


def resume_tuner(opts: Any, data_options: dict, experiment: str, root: Path, objective: Objective,
                 progress: Callable[[str], None] = print, space: Space | None = None) -> Any:
    """Continue an interrupted sweep from Ray's experiment state: finished and pruned trials stay as they
    are, unfinished and errored ones continue from their last checkpoint. The search algorithm and the time
    budget come back from the Tuner's state, re-pointed at `root`: a TPE searcher then also learns every finished
    trial from the sweep's records (`optuna_search`), and a budget continues with what is left (`budget`).

    Args:
        experiment: the Ray experiment folder, derived from `root` (Ray re-derives its trials' paths from it).
        root: the sweep folder being resumed: its records are the ones updated, wherever the sweep ran before.
    """
    from ray import tune

    from tsweep.errors import SweepConfigError

    init_ray(opts.address)
    check_fits(opts)
    try:
        restorable = tune.Tuner.can_restore(experiment)
    except Exception as e:  # pyarrow: OSError (access denied, no network), ArrowInvalid
        raise SweepConfigError(f"cannot read the sweep's Ray state at {experiment} ({e}); credentials given inside "
                               "a --storage URI are never stored in sweep.json: give them in the environment "
                               "(AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS) and "
                               "resume again") from None
    if not restorable:
        raise SweepConfigError(f"{experiment} holds no Ray Tune experiment state to resume from (the sweep "
                               "stopped before its first trial started): run it again with `tsweep run`")
    from tsweep.search.ray_state import repair_stale_checkpoints

    repair_stale_checkpoints(experiment)
    tuner = tune.Tuner.restore(experiment, trainable_for(opts, data_options, space), resume_unfinished=True,
                               resume_errored=True)
    use_folder(tuner, root, objective, opts, progress)
    with queued_trials(opts):
        return tuner.fit()


def use_folder(tuner: Any, root: Path, objective: Objective, opts: Any, progress: Callable[[str], None]) -> None:
    """Point what tuner.pkl unpickled at `root`, the folder being resumed (they name the folder the sweep first
    ran in, which differs for a copied or moved sweep): a new SweepRecorder, the time budget's and the TPE
    searcher's record folder. Ray offers no public setter: this edits the restored Tuner's configs (Ray 2.x)."""
    local = getattr(tuner, "_local_tuner", None)
    if local is None:  # Ray Client (ray://): the Tuner lives on the head node, out of reach
        import warnings

        warnings.warn("resuming through Ray Client: trial records go to the folder the sweep was recorded in, "
                      f"not necessarily {root}", stacklevel=2)
        return
    run_config = local.get_run_config()
    budget = run_config.stop if hasattr(run_config.stop, "budget_s") else None
    if budget is not None:
        budget.root = str(root)
    searcher = getattr(getattr(local, "_tune_config", None), "search_alg", None)
    searcher = getattr(searcher, "searcher", searcher)  # a ConcurrencyLimiter or SearchGenerator wraps it
    if hasattr(searcher, "remember_records") and searcher._root is not None:
        searcher.remember_records(root)
    recorder = SweepRecorder(root, objective, total=opts.trial_limit(), printer=progress, budget=budget, resumed=True)
    run_config.callbacks = [c for c in (run_config.callbacks or []) if not isinstance(c, SweepRecorder)] + [recorder]
