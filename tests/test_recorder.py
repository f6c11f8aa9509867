"""The driver-side recorder, driven with fake Ray trials: statuses, restarts and stale-state errors."""

from __future__ import annotations

import json
from types import SimpleNamespace

from tsweep.search.objective import Objective
from tsweep.search.recorder import SweepRecorder


def fake_trial(tmp_path, trial_id="t1", epochs=3):
    error_file = tmp_path / f"{trial_id}-error.txt"
    error_file.write_text("Traceback ...\nValueError: Could not recover from checkpoint")
    return SimpleNamespace(trial_id=trial_id, config={"epochs": epochs}, error_file=str(error_file))


def run_epochs(recorder, trial, epochs, start=1):
    for epoch in range(start, epochs + 1):
        recorder.on_trial_result(0, [], trial, {"epoch": epoch, "val_accuracy": 0.5 + epoch / 10, "node_id": "n1"})


def test_statuses_from_events(tmp_path):
    recorder = SweepRecorder(tmp_path, Objective(), total=3, printer=lambda line: None)
    done, pruned, broken = (fake_trial(tmp_path, t) for t in ("done", "pruned", "broken"))
    for trial, epochs in ((done, 3), (pruned, 1), (broken, 2)):
        recorder.on_trial_start(0, [], trial)
        run_epochs(recorder, trial, epochs)
    recorder.on_trial_complete(0, [], done)
    recorder.on_trial_complete(0, [], pruned)
    recorder.on_trial_error(0, [], broken)
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "trials").glob("*.json")}
    assert {k: r["status"] for k, r in records.items()} == {"done": "completed", "pruned": "pruned",
                                                            "broken": "failed"}
    assert records["broken"]["error"].startswith("ValueError: Could not recover")


def test_error_after_every_epoch_was_reported_keeps_the_result(tmp_path):
    """A resumed sweep whose stale Ray state names a deleted checkpoint errors a trial that had finished."""
    recorder = SweepRecorder(tmp_path, Objective(), total=1, printer=lambda line: None)
    trial = fake_trial(tmp_path)
    recorder.on_trial_start(0, [], trial)
    run_epochs(recorder, trial, 3)
    fresh = SweepRecorder(tmp_path, Objective(), total=1, printer=lambda line: None)  # the resuming driver
    fresh.on_trial_start(0, [], trial)
    fresh.on_trial_error(0, [], trial)
    record = json.loads((tmp_path / "trials" / "t1.json").read_text())
    assert record["status"] == "completed" and record["error"] is None
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3] and "Could not recover" in record["note"]


def test_restart_replaces_epochs_from_the_checkpoint_on(tmp_path):
    recorder = SweepRecorder(tmp_path, Objective(), total=1, printer=lambda line: None)
    trial = fake_trial(tmp_path, epochs=4)
    recorder.on_trial_start(0, [], trial)
    run_epochs(recorder, trial, 3)
    recorder.on_trial_recover(0, [], trial)
    recorder.on_trial_result(0, [], trial, {"epoch": 3, "val_accuracy": 0.9, "resumed_from": 2, "node_id": "n2"})
    run_epochs(recorder, trial, 4, start=4)
    recorder.on_trial_complete(0, [], trial)
    record = json.loads((tmp_path / "trials" / "t1.json").read_text())
    assert [h["epoch"] for h in record["history"]] == [1, 2, 3, 4] and record["history"][2]["val_accuracy"] == 0.9
    assert record["resumed_from"] == [2] and record["nodes"] == ["n1", "n2", "n1"] and record["restarts"] == 1
    assert record["status"] == "completed"


def test_a_resumed_driver_marks_trials_ray_never_saved_as_lost(tmp_path):
    """The killed driver had started `late` after Ray last saved its state: the resumed Ray does not know it, so
    it can never continue; its record must not stay "running". A finished record of an unknown trial stays."""
    first = SweepRecorder(tmp_path, Objective(), total=3, printer=lambda line: None)
    kept, late, done = (fake_trial(tmp_path, t, epochs=1) for t in ("kept", "late", "done"))
    for trial in (kept, late, done):
        first.on_trial_start(0, [], trial)
        run_epochs(first, trial, 1)
    first.on_trial_complete(0, [], done)
    lines = []
    resumed = SweepRecorder(tmp_path, Objective(), total=3, printer=lines.append, resumed=True)
    resumed.on_step_begin(0, [kept])
    resumed.on_step_begin(1, [kept])  # once only
    records = {p.stem: json.loads(p.read_text()) for p in (tmp_path / "trials").glob("*.json")}
    assert {k: r["status"] for k, r in records.items()} == {"kept": "running", "late": "stopped", "done": "completed"}
    assert records["late"]["note"].startswith("lost") and len(records["late"]["history"]) == 1
    assert sum("late" in line for line in lines) == 1
    fresh = SweepRecorder(tmp_path / "new", Objective(), total=1, printer=lambda line: None)
    fresh.on_step_begin(0, [])  # a new sweep has nothing to mark
    assert not (tmp_path / "new" / "trials").exists()
