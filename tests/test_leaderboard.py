"""Ranking, direction and rendering of leaderboards, as pure functions of trial records."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest

from tsweep.errors import SweepConfigError
from tsweep.files import atomic_write_json
from tsweep.search.leaderboard import leaderboard_rows, render, render_table
from tsweep.search.objective import Objective, default_mode
from tsweep.search.recorder import progress_line
from tsweep.search.records import final_status, read_trials, sweep_dir


def trial(tid, status, accs, losses=None, lr=1e-3, head=64, wall=10.0):
    losses = losses or [1.0 - a for a in accs]
    history = [{"epoch": i + 1, "val_accuracy": a, "val_loss": v} for i, (a, v) in enumerate(zip(accs, losses))]
    return {"trial_id": tid, "status": status, "history": history, "wall_s": wall,
            "config": {"learning_rate": lr, "head_size": head, "epochs": 4}}


TRIALS = [
    trial("t1", "completed", [0.5, 0.7, 0.9, 0.8]),
    trial("t2", "pruned", [0.4]),
    trial("t3", "failed", []),
    trial("t4", "running", [0.6, 0.95], lr=5e-5),
    trial("t5", "completed", [0.3, float("nan")], losses=[0.2, 0.1]),
]


def test_objective_direction_in_one_place():
    up, down = Objective("val_accuracy"), Objective("val_loss")
    assert (up.mode, down.mode) == ("max", "min")
    assert up.better(0.9, 0.8) and not up.better(0.8, 0.9)
    assert down.better(0.1, 0.2)
    assert not up.better(float("nan"), 0.1) and not up.better(None, 0.1) and up.better(0.1, None)
    assert up.best_epoch([{"epoch": 1, "val_accuracy": 0.5}, {"epoch": 2, "val_accuracy": float("nan")},
                          {"epoch": 3, "val_accuracy": 0.7}]) == (3, 0.7)
    assert default_mode("loss") == "min" and default_mode("auc") == "max"
    with pytest.raises(SweepConfigError, match="`--mode` must be max or min, got 'up'"):
        Objective("val_accuracy", "up")


def test_rows_ranked_best_first_with_best_epoch_and_params():
    rows = leaderboard_rows(TRIALS, Objective("val_accuracy"), ["learning_rate", "head_size"])
    assert [r["trial"] for r in rows] == ["t4", "t1", "t2", "t5", "t3"]
    assert [r["rank"] for r in rows] == [1, 2, 3, 4, 5]
    top = rows[0]
    assert (top["status"], top["epochs"], top["val_accuracy"], top["best_epoch"]) == ("running", 2, 0.95, 2)
    assert top["learning_rate"] == 5e-5 and top["wall_s"] == 10.0
    assert rows[-1]["val_accuracy"] is None and rows[-1]["status"] == "failed"
    assert list(rows[0]) == ["rank", "trial", "status", "epochs", "val_accuracy", "best_epoch",
                             "learning_rate", "head_size", "wall_s"]


def test_rows_by_loss_are_minimised_and_top_k():
    rows = leaderboard_rows(TRIALS, Objective("val_loss"), [], top=2)
    assert [r["trial"] for r in rows] == ["t4", "t1"]  # t1 and t5 tie at 0.1: trial id breaks the tie
    assert rows[0]["val_loss"] == min(h["val_loss"] for t in TRIALS for h in t["history"])
    assert len(rows) == 2


def test_render_all_formats_round_trip():
    rows = leaderboard_rows(TRIALS, Objective("val_accuracy"), ["learning_rate"])
    table = render(rows, "table").splitlines()
    assert table[0].split()[:3] == ["rank", "trial", "status"] and set(table[1]) <= {"-", " "}
    assert "t4" in table[2] and "5.00e-05" in table[2] and "0.95" in table[2]
    parsed = list(csv.DictReader(io.StringIO(render(rows, "csv"))))
    assert [r["trial"] for r in parsed] == [r["trial"] for r in rows] and parsed[0]["val_accuracy"] == "0.95"
    assert json.loads(render(rows, "json"))[0]["trial"] == "t4"
    md = render(rows, "markdown").splitlines()
    assert md[0].startswith("| rank | trial |") and md[1].startswith("|---|") and len(md) == len(rows) + 2
    assert render_table([]) == "(no trials yet)"


def test_final_status_and_progress_line():
    assert final_status(4, 4, False) == "completed"
    assert final_status(1, 4, False) == "pruned"
    assert final_status(4, 4, True) == "failed"
    line = progress_line(TRIALS, Objective("val_accuracy"), 8, 83)
    assert line.startswith("[tsweep 01:23] 1 running, 1 pruned, 2 completed, 1 failed of 8")
    assert line.endswith("best val_accuracy 0.95 (t4, epoch 2)")


def test_records_atomic_and_unreadable_skipped(tmp_path):
    atomic_write_json(tmp_path / "sweep.json", {"metric": "val_accuracy"})
    atomic_write_json(tmp_path / "trials" / "a.json", TRIALS[0])
    (tmp_path / "trials" / "b.json").write_text('{"trial_id": "b", "hist')  # cut off mid-write
    with pytest.warns(UserWarning, match="b.json"):
        records = read_trials(tmp_path)
    assert [r["trial_id"] for r in records] == ["t1"]
    assert not [p for p in (tmp_path / "trials").iterdir() if p.name.startswith(".")]
    assert sweep_dir(tmp_path) == tmp_path
    with pytest.raises(SweepConfigError, match="is not a sweep folder.*sweeps inside it: x"):
        (tmp_path / "outer" / "x").mkdir(parents=True)
        atomic_write_json(tmp_path / "outer" / "x" / "sweep.json", {})
        sweep_dir(tmp_path / "outer")
    # a NaN metric (a diverged epoch) survives the round trip, and the best epoch passes over it
    atomic_write_json(tmp_path / "trials" / "e.json", TRIALS[4])
    with pytest.warns(UserWarning, match="b.json"):
        nan = next(r for r in read_trials(tmp_path) if r["trial_id"] == "t5")
    assert math.isnan(nan["history"][1]["val_accuracy"]) and nan["history"][1]["val_loss"] == 0.1
    assert leaderboard_rows([nan], Objective("val_accuracy"), [])[0]["best_epoch"] == 1
