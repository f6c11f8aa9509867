"""One real sweep through the CLI: local Ray on 2 CPUs, tiny inputs, random-init weights, ASHA pruning,
then the leaderboard, the export and a prediction, each through its own `tsweep` subprocess."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from tests.fake_sweeps import TrialGate

SPACE = """
description: integration test - tiny MobileNetV2, some learning rates far too low to learn
backbone: mobilenet_v2
alpha: 0.35
weights: none
image_size: 32
batch_size: 16
epochs: 4
warmup_epochs: 1
head_size: {choice: [0, 16]}
dropout: {uniform: [0.0, 0.2]}
freeze_cutoff: {choice: [17, 14]}
optimizer: {choice: [adam, rmsprop]}
learning_rate: {choice: [3.0e-3, 1.0e-8]}  # 1e-8: deliberately hopeless
augmentation: none
"""
METRICS = ("epoch", "loss", "accuracy", "val_loss", "val_accuracy")


def tsweep(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tsweep.search.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, shapes_dir, cache_dir):
    """Run the sweep in the background. Its first trial is held after its first epoch (recorded, not yet
    finished) while the leaderboard is read from "another terminal", then let go."""
    from tsweep.search.records import trial_path

    tmp = tmp_path_factory.mktemp("sweep")
    space = tmp / "space.yaml"
    space.write_text(SPACE)
    root = tmp / "results" / "it"
    args = ["run", "--data", str(shapes_dir), "--space", str(space), "--name", "it",
            "--results-dir", str(tmp / "results"), "--num-samples", "8", "--reduction-factor", "2",
            "--cpus-per-trial", "1", "--seed", "3", "--no-export"]
    with TrialGate(lambda gate, trial_id, epoch: len(gate.check_ins) == 1) as gate, \
            open(tmp / "stdout", "w") as out, open(tmp / "stderr", "w") as err:
        proc = subprocess.Popen([sys.executable, "-m", "tsweep.search.cli", *args], stdout=out, stderr=err,
                                env={**os.environ, **gate.env}, start_new_session=True)
        gate.watch(proc)
        try:
            gate.wait_until(lambda g: g.held, 600, "the first trial's first epoch")
            (trial_id, epoch), = gate.held.items()
            board = tsweep("leaderboard", str(root), "--format", "json", timeout=120)
            live = {"trial": trial_id, "epoch": epoch, "board": board,
                    "record": json.loads(trial_path(root, trial_id).read_text()),
                    "sweep": json.loads((root / "sweep.json").read_text())}
            gate.release(trial_id)
            proc.wait(timeout=900)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    stdout, stderr = (tmp / "stdout").read_text(), (tmp / "stderr").read_text()
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return root, stdout, live


def read_records(root: Path) -> dict[str, dict]:
    return {r["trial_id"]: r for r in (json.loads(p.read_text()) for p in (root / "trials").glob("*.json"))}


def test_sweep_records_every_trial_with_asha_pruning(sweep, shapes_dir, cache_dir):
    from tsweep.search.report_stats import asha_rungs
    from tsweep.trainers.checkpoint import checkpoint_epoch
    from tsweep.trainers.data import load_dataset

    root, stdout, _ = sweep
    assert "[tsweep" in stdout and "of 8" in stdout  # progress lines
    info = json.loads((root / "sweep.json").read_text())
    assert info["status"] == "finished" and info["metric"] == "val_accuracy"
    records = read_records(root)
    assert len(records) == 8
    statuses = {r["status"] for r in records.values()}
    assert statuses <= {"completed", "pruned"}, [r.get("error") for r in records.values()]
    pruned = [r for r in records.values() if r["status"] == "pruned"]
    completed = [r for r in records.values() if r["status"] == "completed"]
    assert pruned and completed
    assert all(len(r["history"]) == r["budget"] == 4 for r in completed)
    # Pruned trials stopped at one of ASHA's rungs (asha_rungs is checked against Ray's scheduler in
    # test_report), below another trial that reached that rung: Ray stops a trial under the cutoff of the
    # results recorded there before it, and no cutoff is above their best.
    rungs = asha_rungs(info["options"]["grace_period"], info["options"]["reduction_factor"], info["max_epochs"])
    for r in pruned:
        stop = len(r["history"])
        assert stop in rungs, (r["trial_id"], stop, rungs)
        others = [o["history"][stop - 1]["val_accuracy"] for o in records.values()
                  if o is not r and len(o["history"]) >= stop]
        assert r["history"][stop - 1]["val_accuracy"] < max(others), r["trial_id"]
    # Accuracy counts whole images of the validation split the sweep made (random-init features carry
    # little, so how good it is is not asserted here; see test_trainer for learning).
    n_val = len(load_dataset(image_size=32, **info["data"]).y_val)
    for r in records.values():
        for h in r["history"]:
            assert abs(h["val_accuracy"] * n_val - round(h["val_accuracy"] * n_val)) < 1e-4, (n_val, h)
    for trial_id, r in records.items():
        # the record holds what Ray itself logged for the trial, epoch by epoch
        rows = [json.loads(line) for line in (root / trial_id / "result.json").read_text().splitlines()]
        assert [{k: row[k] for k in METRICS} for row in rows] == [{k: h[k] for k in METRICS} for h in r["history"]]
        # disk stays bounded: the latest checkpoint, and the best one when that is another
        kept = sorted(checkpoint_epoch(d) for d in (root / trial_id).glob("checkpoint_*"))
        best = max(h["val_accuracy"] for h in r["history"])
        assert len(r["history"]) in kept and len(kept) <= 2, (trial_id, kept)
        assert all(r["history"][e - 1]["val_accuracy"] == best for e in kept if e != len(r["history"])), kept


def test_leaderboard_readable_while_the_sweep_runs(sweep):
    root, _, live = sweep
    assert live["board"].returncode == 0, live["board"].stderr
    rows = json.loads(live["board"].stdout)
    assert live["sweep"]["status"] == "running"
    assert [r["rank"] for r in rows] == list(range(1, len(rows) + 1))
    scores = [r["val_accuracy"] for r in rows]
    assert scores == sorted(scores, key=lambda v: (v is None, -(v or 0)))  # best first, trials without an epoch last
    held = next(r for r in rows if r["trial"] == live["trial"])  # the held trial: recorded, not finished
    assert (held["status"], held["epochs"], held["best_epoch"]) == ("running", live["epoch"], live["epoch"])
    assert held["val_accuracy"] == live["record"]["history"][-1]["val_accuracy"]
    # the epoch shown then is the one the finished record keeps (no epoch rewritten after it was recorded)
    assert read_records(root)[live["trial"]]["history"][live["epoch"] - 1] == live["record"]["history"][-1]


def test_leaderboard_command_all_formats(sweep):
    root, _, _ = sweep
    out = tsweep("leaderboard", str(root), "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    records = read_records(root)
    assert len(rows) == 8 and [r["rank"] for r in rows] == list(range(1, 9))
    for row in rows:  # each trial's best epoch, from its record
        history = records[row["trial"]]["history"]
        assert row["val_accuracy"] == max(h["val_accuracy"] for h in history)
        assert history[row["best_epoch"] - 1]["val_accuracy"] == row["val_accuracy"]
        assert (row["status"], row["epochs"]) == (records[row["trial"]]["status"], len(history))
    keys = [(-r["val_accuracy"], r["trial"]) for r in rows]
    assert keys == sorted(keys)  # best first, ties by trial id
    assert {"head_size", "dropout", "freeze_cutoff", "optimizer", "learning_rate"} <= set(rows[0])
    table = tsweep("leaderboard", str(root), "--top", "3")
    assert table.returncode == 0 and len(table.stdout.strip().splitlines()) == 5
    assert [line.split()[1] for line in table.stdout.strip().splitlines()[2:]] == [r["trial"] for r in rows[:3]]
    assert "pruned" in tsweep("leaderboard", str(root), "--format", "markdown").stdout


@pytest.mark.slow  # the CLI export of a real sweep (~60 s idle); test_export.py covers export_winner fast
def test_export_and_predict_commands(sweep, shapes_dir):
    from tsweep.search.predict import load_export
    from tsweep.trainers.data import load_dataset
    from tsweep.trainers.images import decode_image
    from tsweep.trainers.train import evaluate

    root, _, _ = sweep
    out = tsweep("export", str(root))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    export = root / "export"
    for name in ("model.keras", "labels.json", "config.json", "metrics.json", "MODEL_CARD.md"):
        assert (export / name).is_file(), name
    assert (export / "model.export" / "saved_model.pb").is_file()
    info = json.loads((root / "sweep.json").read_text())
    model, classes, size = load_export(export)
    data = load_dataset(image_size=size, **info["data"])  # the split the sweep and the export used
    assert classes == list(data.class_names) == ["circles", "squares", "triangles"]
    metrics = json.loads((export / "metrics.json").read_text())
    # Retrained on train + validation for the epochs its trial needed to reach its best val_accuracy
    winner = json.loads((root / "trials" / f"{metrics['trial_id']}.json").read_text())
    best = max(h["val_accuracy"] for h in winner["history"])
    best_epoch = min(h["epoch"] for h in winner["history"] if h["val_accuracy"] == best)
    assert metrics["full_data"] and metrics["sweep_best"] == {"val_accuracy": best, "epoch": best_epoch}
    assert [h["epoch"] for h in metrics["history"]] == list(range(1, best_epoch + 1))
    assert "validation" not in metrics and "val_loss" not in metrics["history"][0]  # validation was trained on
    # metrics.json says what the exported model does on the held-out test images
    for split, x, y in (("test", data.x_test, data.y_test),):
        measured = evaluate(model, x, y)
        assert measured["accuracy"] == pytest.approx(metrics[split]["accuracy"], abs=1e-6), split
        assert measured["loss"] == pytest.approx(metrics[split]["loss"], rel=1e-4), split
    # the SavedModel is the same model
    import tensorflow as tf

    images = data.x_test.astype("float32")
    saved_model = tf.saved_model.load(str(export / "model.export"))  # (kept: its variables die with it)
    np.testing.assert_allclose(np.asarray(saved_model.serve(tf.constant(images))), model.predict(images, verbose=0),
                               atol=1e-5)
    assert "tsweep predict" in (export / "MODEL_CARD.md").read_text()
    # `tsweep predict` prints the exported model's two most probable classes for the image
    image = sorted((shapes_dir / "test" / "squares").glob("*.jpg"))[0]
    pred = tsweep("predict", str(export), str(image), "--top", "2")
    assert pred.returncode == 0, pred.stderr[-2000:]
    lines = pred.stdout.strip().splitlines()
    assert lines[0] == str(image) and len(lines) == 3
    shown = [(line.split()[0], float(line.split()[-1].rstrip("%"))) for line in lines[1:]]
    probs = model.predict(decode_image(image, size)[None].astype("float32"), verbose=0)[0]
    expected = sorted(zip(classes, probs), key=lambda cp: -cp[1])[:2]
    assert [c for c, _ in shown] == [c for c, _ in expected]
    assert [p for _, p in shown] == pytest.approx([100 * float(p) for _, p in expected], abs=0.006)


def test_run_refuses_bad_input_before_any_trial(tmp_path, shapes_dir):
    cases = [
        (["--data", str(tmp_path / "missing")], "missing"),
        (["--data", str(shapes_dir), "--name", "../escape"], "--name"),
        (["--data", str(shapes_dir), "--backbone", "alexnet"], "unknown backbone 'alexnet'"),
        (["--data", str(shapes_dir), "--space", str(tmp_path / "nope.yaml")], "nope.yaml"),
        (["--data", str(shapes_dir), "--weights", str(tmp_path / "w.h5"), "--space", "demo"], "w.h5"),
        (["--data", str(shapes_dir), "--metric", "val_auc"], "--metric"),
    ]
    for args, needle in cases:
        out = tsweep("run", "--results-dir", str(tmp_path / "r"), *args, timeout=120)
        assert out.returncode == 2, (args, out.stderr[-2000:])
        assert needle in out.stderr and out.stderr.startswith("tsweep: error:"), out.stderr
    assert not (tmp_path / "r").exists() or not any((tmp_path / "r").iterdir())


def test_predict_refuses_non_export(tmp_path):
    out = tsweep("predict", str(tmp_path), str(Path(__file__)), timeout=120)
    assert out.returncode == 2 and "is not a tsweep export" in out.stderr
