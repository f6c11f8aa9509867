"""The search-algorithm plug point (`searchers.make_searcher`): --search/--time-budget/--warm-start options,
random vs seeded TPE, what TPE tells Optuna, and a restored TPE searcher learning the sweep's records."""

from __future__ import annotations

import math
import pickle

import pytest

from tests.fake_sweeps import record, write_fake_sweep
from tests.fake_trainable import fixed_space
from tsweep.errors import SweepConfigError
from tsweep.files import atomic_write_json
from tsweep.search.cli import build_parser
from tsweep.search.objective import Objective
from tsweep.search.options import SweepOptions, options_from_args, options_from_dict
from tsweep.search.records import trial_path
from tsweep.search.searchers import make_searcher, optuna_space, resolve_search
from tsweep.search.sweep import check_options

SPACE = dict(epochs=2, head_size=("choice", (0, 16, 64)), optimizer=("choice", ("adam", "sgd")),
             learning_rate=("loguniform", (1e-5, 1e-1)), dropout=("uniform", (0.0, 0.5)),
             freeze_cutoff=("randint", (12, 17)))


def test_run_flags_come_from_the_options():
    args = build_parser().parse_args(["run", "--data", "d", "--search", "tpe", "--time-budget", "20m",
                                      "--warm-start", "results/a", "results/b"])
    opts = options_from_args(args)
    assert (opts.search, opts.time_budget, opts.warm_start) == ("tpe", "20m", ["results/a", "results/b"])
    assert opts.trial_limit() == -1  # a budget and no --num-samples: no trial limit
    plain = options_from_args(build_parser().parse_args(["run", "--data", "d"]))
    assert (plain.search, plain.warm_start, plain.trial_limit()) == ("", [], 16)
    assert SweepOptions(data="d", num_samples=5, time_budget="1h").trial_limit() == 5
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run", "--data", "d", "--search", "bayes"])


def test_older_sweep_json_without_the_new_options_still_loads():
    old = {"data": "d", "space": "demo", "num_samples": 8, "metric": "val_accuracy", "grace_period": 1}
    opts = options_from_dict(old, progress=lambda line: None)
    assert (opts.search, opts.time_budget, opts.warm_start, opts.trial_limit()) == ("", "", [], 8)


@pytest.mark.parametrize("changes, needle", [
    ({"time_budget": "soon"}, "`--time-budget` must be a duration"), ({"time_budget": "0s"}, "more than 0 s"),
    ({"search": "grid"}, "--search must be one of random, tpe"), ({"num_samples": -1}, "--num-samples"),
    ({"warm_start": ["/nonexistent/sweep"]}, "--warm-start: /nonexistent/sweep is not a sweep folder"),
])
def test_bad_search_options_are_named(changes, needle):
    with pytest.raises(SweepConfigError, match=needle):
        check_options(SweepOptions(data="d", **changes))


def test_search_comes_from_the_flag_then_the_space_file(tmp_path):
    from tsweep.spaces.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text("backbone: mobilenet_v2\nsearch: TPE\nlearning_rate: {loguniform: [1.0e-4, 1.0e-2]}\n")
    space = load_space(path)
    assert resolve_search("", space) == "tpe" and resolve_search("random", space) == "random"
    assert resolve_search("", load_space("demo")) == "random"
    path.write_text("backbone: mobilenet_v2\nsearch: annealing\n")
    with pytest.raises(SweepConfigError, match=r"space.yaml: `search` must be one of random, tpe, got 'annealing'"):
        resolve_search("", load_space(path))


def test_optuna_space_keeps_each_kind():
    import optuna.distributions as d

    dists = optuna_space(fixed_space(**SPACE))
    assert set(dists) == {"head_size", "optimizer", "learning_rate", "dropout", "freeze_cutoff"}  # not epochs
    assert dists["head_size"] == d.CategoricalDistribution([0, 16, 64])  # numbers stay categorical
    assert dists["optimizer"] == d.CategoricalDistribution(["adam", "sgd"])
    assert dists["learning_rate"] == d.FloatDistribution(1e-5, 1e-1, log=True)
    assert dists["dropout"] == d.FloatDistribution(0.0, 0.5, log=False)
    assert dists["freeze_cutoff"] == d.IntDistribution(12, 17)  # both bounds included, as in the space file


def _suggest(searcher, n: int, prefix: str = "t") -> list[dict]:
    return [searcher.suggest(f"{prefix}{i}") for i in range(n)]


def test_tpe_is_seeded_and_stays_in_the_space():
    space = fixed_space(**SPACE)
    a, params = make_searcher("tpe", space, Objective(), seed=7)
    b, _ = make_searcher("tpe", space, Objective(), seed=7)
    c, _ = make_searcher("tpe", space, Objective(), seed=8)
    assert params == {"epochs": 2}  # the searcher owns the sampled keys; Ray merges the fixed ones in
    first = _suggest(a, 12)
    assert first == _suggest(b, 12) and first != _suggest(c, 12)
    for config in first:
        assert config["head_size"] in (0, 16, 64) and config["optimizer"] in ("adam", "sgd")
        assert 1e-5 <= config["learning_rate"] <= 1e-1 and 0 <= config["dropout"] <= 0.5
        assert config["freeze_cutoff"] in range(12, 18) and isinstance(config["freeze_cutoff"], int)
    lrs = [math.log10(c["learning_rate"]) for c in first]  # log scale: as many draws below 1e-3 as above
    assert sum(x < -3 for x in lrs) >= 3 and sum(x > -3 for x in lrs) >= 3


def test_random_search_is_rays_seeded_generator():
    from ray import tune
    from ray.tune.search.basic_variant import BasicVariantGenerator

    searcher, params = make_searcher("random", fixed_space(**SPACE), Objective(), seed=3)
    assert isinstance(searcher, BasicVariantGenerator)
    assert params["epochs"] == 2 and isinstance(params["learning_rate"], tune.search.sample.Float)


def test_tpe_tells_each_trial_its_best_epoch_and_failures_as_failed():
    from optuna.trial import TrialState

    searcher, _ = make_searcher("tpe", fixed_space(**SPACE), Objective(), seed=0)
    _suggest(searcher, 3)
    for acc in (0.4, 0.9, 0.6):  # ASHA or the budget may stop a trial after it peaked
        searcher.on_trial_result("t0", {"val_accuracy": acc, "training_iteration": 1})
    searcher.on_trial_complete("t0", {"val_accuracy": 0.6})
    searcher.on_trial_result("t1", {"val_accuracy": 0.3})
    searcher.on_trial_complete("t1", {"tsweep_error": "loss became nan"})  # a failure report has no metric
    searcher.on_trial_complete("t2", None, error=True)
    trials = {t.number: t for t in searcher._ot_study.trials}
    assert (trials[0].state, trials[0].value) == (TrialState.COMPLETE, 0.9)
    assert trials[1].state == trials[2].state == TrialState.FAIL
    assert searcher.known_trials() == {"t0", "t1", "t2"}


def test_a_restored_searcher_learns_every_finished_trial_from_the_records(tmp_path):
    """The saved searcher state (pickled as Ray does) knew one trial; three more ended before the driver died,
    one was running. After the restore the study holds every finished trial, once, with its best value."""
    from optuna.trial import TrialState

    root = tmp_path / "sweep"
    searcher, _ = make_searcher("tpe", fixed_space(**SPACE), Objective(), seed=0, root=root)
    configs = _suggest(searcher, 5)
    searcher.on_trial_result("t0", {"val_accuracy": 0.5})
    searcher.on_trial_complete("t0", {"val_accuracy": 0.5})
    saved = pickle.dumps(searcher)  # Ray's last checkpoint of the searcher
    statuses = {"t0": ("completed", [0.2, 0.5]), "t1": ("pruned", [0.3]), "t2": ("completed", [0.7, 0.6]),
                "t3": ("failed", []), "t4": ("running", [0.1])}
    trials = [record(t, status, accs, budget=2, **configs[int(t[1])]) for t, (status, accs) in statuses.items()]
    trials.append(record("old5", "stopped", [0.8], budget=2, **configs[0]))  # suggested before the checkpoint?
    write_fake_sweep(root, trials)

    restored = pickle.loads(saved)
    restored.suggest("t6")  # the first suggestion after a restore reads the records first
    assert restored.known_trials() == {"t0", "t1", "t2", "t3", "old5"}
    done = [t for t in restored._ot_study.trials if t.state != TrialState.RUNNING]
    values = sorted(t.value for t in done if t.state == TrialState.COMPLETE)
    assert values == [0.3, 0.5, 0.7, 0.8] and sum(t.state == TrialState.FAIL for t in done) == 1
    assert restored.sync_records() == 0  # nothing twice
    # The trial running at the kill resumes and ends: learned from its result even if never suggested here
    restored.on_trial_complete("t4", {"val_accuracy": 0.65, **{f"config/{k}": v for k, v in configs[4].items()}})
    fresh = pickle.loads(pickle.dumps(make_searcher("tpe", fixed_space(**SPACE), Objective(), 0, root=root)[0]))
    fresh.on_trial_complete("zz", {"val_accuracy": 0.4, **{f"config/{k}": v for k, v in configs[1].items()}})
    assert "t4" in restored.known_trials() and "zz" in fresh.known_trials()


def test_a_resumed_searcher_keeps_what_the_records_said_before_ray_reran_a_trial(tmp_path):
    """Ray's saved state had t1 running when the driver died, though it had finished (its record says so). On
    resume Ray runs t1 again and the recorder marks its record running before the first suggestion; Ray's
    restore also puts back the folder the state was saved with. The searcher still learns t1, and keeps the
    folder it was pointed at (a moved sweep)."""
    old, moved = tmp_path / "old", tmp_path / "moved"
    searcher, _ = make_searcher("tpe", fixed_space(**SPACE), Objective(), seed=0, root=old)
    configs = _suggest(searcher, 3)
    searcher.on_trial_complete("t0", {"val_accuracy": 0.5})
    state = tmp_path / "searcher-state.pkl"
    searcher.save(str(state))  # what Ray checkpointed: t0 done, t1 and t2 running
    write_fake_sweep(moved, [record("t0", "completed", [0.5], budget=2, **configs[0]),
                             record("t1", "completed", [0.6, 0.7], budget=2, **configs[1]),
                             record("t2", "running", [0.1], budget=2, **configs[2])])

    resumed = pickle.loads(pickle.dumps(searcher))  # tuner.pkl
    resumed.remember_records(moved)  # use_folder, before tuner.fit()
    resumed.restore(str(state))  # Ray's restore inside fit()
    atomic_write_json(trial_path(moved, "t1"), record("t1", "running", [], budget=2, **configs[1]))  # the recorder
    resumed.suggest("t3")
    assert resumed.known_trials() == {"t0", "t1"}
    assert resumed._root == str(moved)
