"""--warm-start: placing earlier sweeps' trials in a new space, the compatibility errors (before any trial),
and the searchers seeded with them."""

from __future__ import annotations

import pytest

from tests.fake_sweeps import record, sweep_info, write_fake_sweep
from tests.fake_trainable import fixed_space
from tsweep.errors import SweepConfigError
from tsweep.search.objective import Objective
from tsweep.search.searchers import make_searcher
from tsweep.search.warm_start import from_sweep, load_warm_start, place

# The new space: what tests/fake_sweeps.py's TINY trials ran with, with a narrower learning rate range.
NEW = dict(backbone="mobilenet_v2", alpha=0.35, weights="none", image_size=32, batch_size=16, epochs=2,
           warmup_epochs=1, head_size=("choice", (0, 16)), dropout=("uniform", (0.0, 0.3)),
           freeze_cutoff=("choice", (17, 14)), optimizer=("choice", ("adam", "sgd")),
           learning_rate=("loguniform", (1e-5, 1e-2)), augmentation="none")


def old_trials() -> list[dict]:
    return [record("a", "completed", [0.5, 0.8], budget=2, learning_rate=3e-3),
            record("b", "pruned", [0.3], budget=2, learning_rate=1e-4, optimizer="sgd", head_size=16),
            record("c", "stopped", [0.6], budget=2, learning_rate=5e-4, dropout=0.25),
            record("d", "failed", [], budget=2),
            record("e", "running", [0.9], budget=2)]


def test_finished_trials_seed_the_search_and_the_best_runs_first():
    warm = from_sweep(sweep_info("old"), old_trials(), fixed_space(**NEW), Objective(), "results/old")
    assert [round(v, 2) for _, v in warm.history] == [0.8, 0.3, 0.6]  # failed and running ones say nothing
    assert warm.first == [{"head_size": 0, "dropout": 0.1, "freeze_cutoff": 17, "optimizer": "adam",
                           "learning_rate": 3e-3}]
    assert set(warm.history[1][0]) == {"head_size", "dropout", "freeze_cutoff", "optimizer", "learning_rate"}
    assert warm.notes == []


def test_keys_an_old_sweep_lacks_take_the_new_spaces_values():
    space = fixed_space(**NEW, momentum=("uniform", (0.5, 0.95)), weight_decay=("uniform", (0.01, 0.1)))
    placed, why, filled = place(old_trials()[0]["config"], space, "results/old")
    assert why == "" and filled == ["momentum", "weight_decay"]
    assert placed["momentum"] == 0.9  # the default the old trial ran with lies in the new range
    assert placed["weight_decay"] == pytest.approx(0.055)  # 1e-4 does not: the middle of the range
    assert "did not set momentum, weight_decay" in from_sweep(sweep_info("old"), old_trials(), space, Objective(),
                                                             "results/old").notes[0]


def test_values_at_a_bound_are_clipped_into_it():
    at_bound = record("a", "completed", [0.5], budget=2, learning_rate=1e-2 * (1 + 1e-12), dropout=-1e-15)
    placed, why, _ = place(at_bound["config"], fixed_space(**NEW), "results/old")
    assert why == "" and placed["learning_rate"] == 1e-2 and placed["dropout"] == 0.0
    searcher, _ = make_searcher("tpe", fixed_space(**NEW), Objective(), seed=0,
                                warm=from_sweep(sweep_info("old"), [at_bound], fixed_space(**NEW), Objective(), "o"))
    assert [t.state.name for t in searcher._ot_study.trials] == ["WAITING", "COMPLETE"]  # to run first; learned


def test_trials_outside_the_new_space_are_left_out_with_a_note():
    trials = old_trials() + [record("f", "completed", [0.95], budget=2, learning_rate=0.5)]
    warm = from_sweep(sweep_info("old"), trials, fixed_space(**NEW), Objective(), "results/old")
    assert len(warm.history) == 3 and warm.first[0]["learning_rate"] == 3e-3  # not f's, outside the space
    assert warm.notes == ["warm start results/old: left out 1 of 4 trials outside this space, e.g. trial f: "
                          "`learning_rate` 0.5 is outside this sweep's space (loguniform [1e-05, 0.01])"]


@pytest.mark.parametrize("info, trials, space, needle", [
    (sweep_info("old", metric="val_loss", mode="min"), None, NEW,
     r"results/old: it optimised val_loss \(min\), this sweep optimises val_accuracy \(max\)"),
    (sweep_info("old", mode="min"), None, NEW, r"need the same --metric and --mode"),
    (sweep_info("old"), None, {**NEW, "image_size": 64},
     r"no trial of it fits this sweep \(trial a: `image_size` 32 is outside this sweep's space \(fixed at 64\)\)"),
    (sweep_info("old"), None, {k: v for k, v in NEW.items() if k != "augmentation"} | {"batch_size": 8},
     r"`batch_size` 16 is outside this sweep's space \(fixed at 8\)"),
    (sweep_info("old"), [record("a", "completed", [0.5], budget=2, colour="red")], NEW,
     r"keys this tsweep does not know \(colour\)"),
    (sweep_info("old"), [record("d", "failed", [], budget=2)], NEW, r"no finished trial with a value of val_acc"),
])
def test_incompatible_sweeps_are_errors(info, trials, space, needle):
    with pytest.raises(SweepConfigError, match=needle):
        from_sweep(info, trials if trials is not None else old_trials(), fixed_space(**space), Objective(),
                   "results/old")


def test_a_key_the_new_space_leaves_out_must_have_its_default():
    trials = [record("a", "completed", [0.5], budget=2, momentum=0.5)]
    with pytest.raises(SweepConfigError, match=r"`momentum` 0.5 is outside this sweep's space \(it does not set "
                                               r"`momentum`: its trials get the default 0.9\)"):
        from_sweep(sweep_info("old"), trials, fixed_space(**NEW), Objective(), "results/old")


def test_several_sweeps_merge_and_bad_paths_are_named(tmp_path):
    old = write_fake_sweep(tmp_path / "old", old_trials())
    older = write_fake_sweep(tmp_path / "older", [record("z", "completed", [0.4, 0.7], budget=2, head_size=16)])
    lines: list[str] = []
    warm = load_warm_start([str(old), str(older)], fixed_space(**NEW), Objective(), lines.append)
    assert len(warm.history) == 4 and len(warm.first) == 2 and warm.first[1]["head_size"] == 16
    assert lines[-1] == "warm start: 4 finished trials of 2 earlier sweep(s); their 2 best config(s) run first"
    assert load_warm_start([], fixed_space(**NEW), Objective()) is None
    with pytest.raises(SweepConfigError, match=r"--warm-start .*nowhere: .*nowhere does not exist"):
        load_warm_start([str(tmp_path / "nowhere")], fixed_space(**NEW), Objective())


def test_tpe_learns_the_warm_start_and_tries_its_best_configs_first(tmp_path):
    from optuna.trial import TrialState

    warm = from_sweep(sweep_info("old"), old_trials(), fixed_space(**NEW), Objective(), "results/old")
    searcher, _ = make_searcher("tpe", fixed_space(**NEW), Objective(), seed=0, warm=warm)
    done = [t for t in searcher._ot_study.trials if t.state == TrialState.COMPLETE]
    assert sorted(round(t.value, 2) for t in done) == [0.3, 0.6, 0.8]
    assert searcher.suggest("new1") == warm.first[0]
    assert searcher.suggest("new2") != warm.first[0]


def test_random_search_tries_the_best_configs_first(tmp_path):
    warm = from_sweep(sweep_info("old"), old_trials(), fixed_space(**NEW), Objective(), "results/old")
    searcher, _ = make_searcher("random", fixed_space(**NEW), Objective(), seed=0, warm=warm)
    assert searcher._points_to_evaluate == warm.first


@pytest.mark.slow  # decodes the data and builds the backbone first (~40 s on a busy machine)
def test_cli_refuses_an_incompatible_warm_start_before_any_trial(tmp_path, capsys, shapes_dir, cache_dir):
    from tsweep.search.cli import main

    results = tmp_path / "results"
    code = main(["run", "--data", str(shapes_dir), "--warm-start", str(tmp_path / "missing"), "--results-dir",
                 str(results)])
    assert code == 2 and "--warm-start: " in capsys.readouterr().err and not results.exists()
    old = write_fake_sweep(tmp_path / "old", old_trials(), sweep_info("old", metric="val_loss", mode="min"))
    space = tmp_path / "space.yaml"
    space.write_text("\n".join(f"{k}: {v}" for k, v in NEW.items() if not isinstance(v, tuple)) + "\n")
    code = main(["run", "--data", str(shapes_dir), "--space", str(space), "--warm-start", str(old),
                 "--results-dir", str(results), "--name", "new", "--cache-dir", str(cache_dir)])
    err = capsys.readouterr().err
    assert code == 2 and "it optimised val_loss (min), this sweep optimises val_accuracy (max)" in err, err
    assert not list((results / "new").glob("trials/*.json"))  # no trial ran (the claimed folder may stay, rerunnable)
