"""One real sweep through the CLI: local Ray on 2 CPUs, tiny inputs, random-init weights, ASHA pruning,
then the leaderboard, the export and a prediction, each through its own `tsweep` subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

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


def tsweep(*args: str, env: dict | None = None, timeout: float = 900) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tsweep.search.cli", *args], capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


@pytest.fixture(scope="module")
def sweep(tmp_path_factory, shapes_dir, cache_dir):
    """Run the sweep in the background and read the leaderboard from "another terminal" while it runs."""
    tmp = tmp_path_factory.mktemp("sweep")
    space = tmp / "space.yaml"
    space.write_text(SPACE)
    root = tmp / "results" / "it"
    args = ["run", "--data", str(shapes_dir), "--space", str(space), "--name", "it",
            "--results-dir", str(tmp / "results"), "--num-samples", "8", "--reduction-factor", "2",
            "--cpus-per-trial", "1", "--seed", "3", "--no-export"]
    proc = subprocess.Popen([sys.executable, "-m", "tsweep.search.cli", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    live = []  # leaderboards read while the sweep was running
    while proc.poll() is None:
        time.sleep(3)
        if (root / "sweep.json").exists() and proc.poll() is None:
            board = tsweep("leaderboard", str(root), "--format", "json", timeout=60)
            if board.returncode == 0 and board.stdout.strip():
                live.append(json.loads(board.stdout))
    stdout, stderr = proc.communicate(timeout=900)
    assert proc.returncode == 0, stdout[-3000:] + stderr[-3000:]
    return root, stdout, live


def test_sweep_records_every_trial_with_asha_pruning(sweep):
    root, stdout, _ = sweep
    assert "[tsweep" in stdout and "of 8" in stdout  # progress lines
    records = [json.loads(p.read_text()) for p in (root / "trials").glob("*.json")]
    assert len(records) == 8
    statuses = {r["status"] for r in records}
    assert statuses <= {"completed", "pruned"}, [r.get("error") for r in records]
    pruned = [r for r in records if r["status"] == "pruned"]
    completed = [r for r in records if r["status"] == "completed"]
    assert pruned and completed
    assert all(len(r["history"]) < 4 for r in pruned) and all(len(r["history"]) == 4 for r in completed)
    # random-init features carry little, so no accuracy is asserted here (see test_trainer for learning)
    assert all(0.0 <= h["val_accuracy"] <= 1.0 for r in records for h in r["history"])
    # disk stays bounded: at most the best and the latest checkpoint per trial
    for r in records:
        assert len(list((root / r["trial_id"]).glob("checkpoint_*"))) <= 2
    info = json.loads((root / "sweep.json").read_text())
    assert info["status"] == "finished" and info["metric"] == "val_accuracy"


def test_leaderboard_readable_while_the_sweep_runs(sweep):
    _, _, live = sweep
    assert live, "no leaderboard could be read during the sweep"
    assert any(row["status"] == "running" for board in live for row in board)
    assert all(board == [] or board[0]["rank"] == 1 for board in live)


def test_leaderboard_command_all_formats(sweep):
    root, _, _ = sweep
    out = tsweep("leaderboard", str(root), "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)
    assert len(rows) == 8 and rows[0]["rank"] == 1
    scores = [r["val_accuracy"] for r in rows]
    assert scores == sorted(scores, reverse=True)
    assert {"head_size", "dropout", "freeze_cutoff", "optimizer", "learning_rate"} <= set(rows[0])
    assert rows[0]["status"] in ("completed", "pruned")
    table = tsweep("leaderboard", str(root), "--top", "3")
    assert table.returncode == 0 and len(table.stdout.strip().splitlines()) == 5
    assert "pruned" in tsweep("leaderboard", str(root), "--format", "markdown").stdout


def test_export_and_predict_commands(sweep, shapes_dir):
    root, _, _ = sweep
    out = tsweep("export", str(root))
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    export = root / "export"
    for name in ("model.keras", "labels.json", "config.json", "metrics.json", "MODEL_CARD.md"):
        assert (export / name).is_file(), name
    assert (export / "model.export" / "saved_model.pb").is_file()
    labels = json.loads((export / "labels.json").read_text())
    assert labels == ["circles", "squares", "triangles"]
    metrics = json.loads((export / "metrics.json").read_text())
    assert len(metrics["history"]) == 4 and "test" in metrics and "validation" in metrics
    kept = metrics["history"][metrics["kept_epoch"] - 1]  # the best validation epoch's weights were kept
    assert kept["val_accuracy"] == max(h["val_accuracy"] for h in metrics["history"])
    assert abs(metrics["validation"]["accuracy"] - kept["val_accuracy"]) < 1e-6
    assert 0.0 <= metrics["test"]["accuracy"] <= 1.0 and metrics["test"]["loss"] > 0
    assert "tsweep predict" in (export / "MODEL_CARD.md").read_text()
    image = sorted((shapes_dir / "test" / "squares").glob("*.jpg"))[0]
    pred = tsweep("predict", str(export), str(image), "--top", "2")
    assert pred.returncode == 0, pred.stderr[-2000:]
    lines = pred.stdout.strip().splitlines()
    assert lines[0] == str(image) and len(lines) == 3
    probabilities = [float(line.split()[-1].rstrip("%")) for line in lines[1:]]
    assert probabilities == sorted(probabilities, reverse=True) and sum(probabilities) <= 100.01


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
