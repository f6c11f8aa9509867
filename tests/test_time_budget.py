"""--time-budget: the budget's accounting across runs, the progress line, and a sweep on a local Ray whose
trials (a fake trainable, held by a TrialGate) are stopped by the budget: no new trial, epochs kept."""

from __future__ import annotations

import functools
import json
import pickle

import pytest

from tests.fake_sweeps import TrialGate
from tests.fake_trainable import FakeClock, fixed_space, use_fake_trainable
from tsweep.search.budget import BUDGET_FILE, TimeBudget, format_left, spent_s
from tsweep.search.objective import Objective
from tsweep.search.recorder import progress_line


def test_budget_counts_across_runs(tmp_path):
    clock = FakeClock()
    budget = TimeBudget(600, tmp_path, clock=clock)
    assert not budget.stop_all() and budget.remaining() == 600
    clock.advance(4)
    assert not budget.stop_all() and spent_s(tmp_path) == 0  # saved every 5 s, not at every step
    clock.advance(2)
    assert not budget.stop_all() and spent_s(tmp_path) == 6
    clock.advance(244)
    budget.save()
    assert json.loads((tmp_path / BUDGET_FILE).read_text()) == {"budget_s": 600, "spent_s": 250}
    # `tsweep resume` unpickles the budget twice (Ray's loop and the recorder each get a copy): both start again
    # from the 250 s spent; the recorder's copy starts a moment later, yet knows when Ray's copy says spent
    state = pickle.dumps(budget)
    loop, recorder = pickle.loads(state), pickle.loads(state)
    loop.clock = recorder.clock = clock
    clock.advance(1000)  # the driver was down meanwhile: that does not count
    assert loop.remaining() == 350
    clock.advance(5)
    assert recorder.remaining() == 350
    clock.advance(344)
    assert not loop.stop_all() and not recorder.exhausted()
    clock.advance(1)
    assert loop.stop_all() and spent_s(tmp_path) == 600
    assert recorder.remaining() == 5 and recorder.exhausted()
    assert budget.__call__("any", {}) is False  # trials are stopped together, never one by one


def test_progress_line_shows_the_time_left():
    records = [{"trial_id": "a", "status": "running", "history": [{"epoch": 1, "val_accuracy": 0.5}]},
               {"trial_id": "b", "status": "stopped", "history": [{"epoch": 1, "val_accuracy": 0.25}]}]
    line = progress_line(records, Objective(), total=-1, elapsed=75, left=517)
    assert line == ("[tsweep 01:15] 1 running, 0 pruned, 0 completed, 0 failed, 1 stopped; best val_accuracy 0.5 "
                    "(a, epoch 1); 08:37 left")
    assert progress_line(records[:1], Objective(), total=8, elapsed=5).endswith("0 failed of 8; best val_accuracy "
                                                                                "0.5 (a, epoch 1)")
    assert format_left(3723) == "1:02:03 left" and format_left(-2) == "time budget spent"


@pytest.fixture
def local_ray():
    import ray

    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False)
    yield
    ray.shutdown()


@pytest.mark.slow
def test_budget_stops_running_trials_and_starts_no_new_one(local_ray, tmp_path, monkeypatch):
    """Both trials a 2-CPU Ray runs are held after epoch 1 of 3, so only the budget can end the sweep: the
    (fake) clock passes the budget when the second one is held. Both end "stopped" with their epoch, no other
    trial starts, the sweep ends normally (then the export would run) and budget.json holds the spent budget."""
    from tsweep.search import budget as budget_module
    from tsweep.search.options import SweepOptions
    from tsweep.search.records import read_trials
    from tsweep.search.sweep import sweep_status
    from tsweep.search.tuner import run_tuner

    clock = FakeClock()

    def hold(gate: TrialGate, trial_id: str, epoch: int) -> bool:
        if len(gate.held) == 1:  # the second trial: both have recorded epoch 1
            clock.advance(3600)
        return True

    monkeypatch.setattr(budget_module, "TimeBudget", functools.partial(TimeBudget, clock=clock))
    space = fixed_space(epochs=3, learning_rate=("loguniform", (1e-4, 1e-2)))
    root = tmp_path / "budget"
    root.mkdir()
    opts = SweepOptions(data="unused", time_budget="20m", search="tpe", grace_period=3, seed=1)
    lines: list[str] = []
    info = {"name": "budget", "status": "running"}
    with TrialGate(hold) as gate:
        use_fake_trainable(monkeypatch, gate.path)
        with sweep_status(root, info, lines.append):
            run_tuner(opts, space, {}, root, Objective(), 3, lines.append)
        assert len(gate.check_ins) == 2
    trials = read_trials(root)
    assert len(trials) == 2, [t["trial_id"] for t in trials]
    for t in trials:
        assert t["status"] == "stopped" and t["note"] == "stopped by the time budget"
        assert [h["epoch"] for h in t["history"]] == [1] and t["ended"] is not None
    assert info["status"] == "finished"
    assert json.loads((root / BUDGET_FILE).read_text()) == {"budget_s": 1200, "spent_s": 1200}
    assert any(line.endswith("20:00 left") for line in lines), lines
