"""The search algorithms, built in one place (`make_searcher`, beside `tuner.make_scheduler`).

``random``: Ray's BasicVariantGenerator, seeded (what every sweep used before). ``tpe``: Optuna's TPE sampler,
seeded, through Ray Tune's OptunaSearch; ASHA still prunes. Either way a warm start's best configs are tried
first; TPE also learns from the warm start's finished trials.

The value a trial tells the searcher is its best epoch's metric (`Objective.best_epoch`), the way the
leaderboard ranks it, also for ASHA-pruned and budget-stopped trials.

A restored TPE searcher also learns from the sweep's own trial records (``search.optuna_search``). No Ray or
Optuna import at module level: the CLI and `check_options` import this module.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from tsweep.errors import SweepConfigError
from tsweep.search.objective import Objective

if TYPE_CHECKING:
    from tsweep.search.warm_start import WarmStart
    from tsweep.spaces.space import Space

SEARCHES = ("random", "tpe")


def resolve_search(option: str, space: Space) -> str:
    """The sweep's search algorithm: --search, else the space file's `search:` key, else random."""
    name = (option or space.search or "random").lower()
    if name not in SEARCHES:
        where = "--search" if option else f"{space.source}: `search`"
        raise SweepConfigError(f"{where} must be one of {', '.join(SEARCHES)}, got {name!r}")
    return name


def check_search_options(opts: Any) -> None:
    """--search, --time-budget and --warm-start (each earlier sweep must be a sweep folder), before Ray starts;
    a warm start's compatibility with the space is `warm_start.load_warm_start`'s."""
    from tsweep.files import is_uri
    from tsweep.search.cache_budget import parse_duration
    from tsweep.search.records import sweep_dir

    if opts.search and opts.search not in SEARCHES:
        raise SweepConfigError(f"--search must be one of {', '.join(SEARCHES)}, got {opts.search!r}")
    if getattr(opts, "baseline", False) and opts.search == "tpe":
        raise SweepConfigError("--baseline works with --search random, got --search tpe: its small_cnn trial lies "
                               "outside the space TPE models; run the baseline in a random sweep")
    if opts.time_budget and parse_duration(opts.time_budget, "--time-budget") <= 0:
        raise SweepConfigError(f"`--time-budget` must be more than 0 s, got {opts.time_budget!r}")
    for path in opts.warm_start:
        if not is_uri(path):
            try:
                sweep_dir(Path(path).expanduser())
            except SweepConfigError as e:
                raise SweepConfigError(f"--warm-start: {e}") from None


def describe_search(opts: Any, search: str) -> str:
    """"16 trials, random search", "at most 40 trials in 20m, tpe search", "trials for 1h, tpe search"."""
    limit = opts.trial_limit()
    if opts.time_budget:
        trials = f"at most {limit} trials in {opts.time_budget}" if limit > 0 else f"trials for {opts.time_budget}"
    else:
        trials = f"{limit} trials"
    warm = f", warm-started from {len(opts.warm_start)} sweep(s)" if opts.warm_start else ""
    return f"{trials}, {search} search{warm}"


def optuna_space(space: Space) -> dict[str, Any]:
    """Optuna distributions of the sampled keys: choices stay categorical (whatever their values), log-uniform
    keys sample on a log scale, randint bounds are both included (as in the space file)."""
    import optuna

    dists = optuna.distributions
    out: dict[str, Any] = {}
    for key, d in space.sampled.items():
        if d.kind == "choice":
            out[key] = dists.CategoricalDistribution(list(d.values))
        elif d.kind == "uniform":
            out[key] = dists.FloatDistribution(*d.values)
        elif d.kind == "loguniform":
            out[key] = dists.FloatDistribution(*d.values, log=True)
        elif d.kind == "randint":
            out[key] = dists.IntDistribution(*d.values)
    return out


def make_searcher(search: str, space: Space, objective: Objective, seed: int, root: Path | None = None,
                  warm: WarmStart | None = None, baseline: dict | None = None) -> tuple[Any, dict]:
    """The Ray Tune search algorithm and the Tuner's param_space for it.

    Args:
        search: "random" or "tpe" (`resolve_search`).
        space: the validated space (with overrides).
        objective: metric and direction.
        seed: the sampler's seed (--seed).
        root: the sweep folder, whose trial records a restored TPE searcher reads (None: none to read).
        warm: a warm start (`warm_start.load_warm_start`): its best configs run first, and TPE's study
            starts with its finished trials.
        baseline: the `--baseline` trial's config (search/baseline.py), run first; random search only (its
            small_cnn lies outside the space TPE models).
    """
    from tsweep.search.ray_space import to_ray

    first = list(warm.first) if warm else []
    if baseline is not None and search != "random":
        raise SweepConfigError(f"--baseline works with --search random, got --search {search}: its small_cnn trial "
                               "lies outside the space TPE models; run the baseline in a random sweep")
    if search == "random":
        first = ([baseline] if baseline is not None else []) + first
        from ray.tune.search.basic_variant import BasicVariantGenerator

        return BasicVariantGenerator(random_state=seed, points_to_evaluate=first or None), to_ray(space)
    if search != "tpe":
        raise SweepConfigError(f"--search must be one of {', '.join(SEARCHES)}, got {search!r}")
    import optuna

    from tsweep.search.optuna_search import TsweepOptunaSearch

    optuna.logging.set_verbosity(optuna.logging.WARNING)  # not a line per trial on the sweep's terminal

    # constant_liar: two trials suggested while both run do not get the same config
    sampler = optuna.samplers.TPESampler(seed=seed, constant_liar=True)
    searcher = TsweepOptunaSearch(space=optuna_space(space), metric=objective.metric, mode=objective.mode,
                                  sampler=sampler, points_to_evaluate=first or None, root=root)
    for config, value in warm.history if warm else []:
        searcher.add_evaluated_point(config, value)
    return searcher, dict(space.fixed)  # the searcher owns the sampled keys; Ray merges in the fixed ones
