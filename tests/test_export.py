"""The export: a retrain on train + validation for the trial's best epoch count, or its checkpoint as it is."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tests.fake_sweeps import TINY, record, sweep_info, write_fake_sweep
from tsweep.errors import SweepConfigError


@pytest.fixture(scope="module")
def sweep(shapes_dir, cache_dir, tmp_path_factory):
    """A fake sweep over the shapes data whose trial t1 really trained (checkpoints of epochs 1 and 2 in its
    experiment folder, as Ray keeps them) and reached its best val_accuracy at epoch 1 of 2."""
    from tsweep.spaces.config import TrialConfig
    from tsweep.trainers.checkpoint import save_checkpoint
    from tsweep.trainers.data import load_dataset
    from tsweep.trainers.train import train

    base = tmp_path_factory.mktemp("export")
    data_options = {"data_dir": str(shapes_dir), "val_fraction": 0.2, "seed": 0, "cache_dir": str(cache_dir)}
    config = {**TINY, "head_size": 8}
    experiment = base / "ray" / "sweep"
    data = load_dataset(image_size=32, **data_options)

    def keep(history, model):
        save_checkpoint(experiment / "t1" / f"checkpoint_{history[-1]['epoch'] - 1:06d}", model, history)

    result = train(TrialConfig.from_dict(config), data, on_epoch=keep)
    winner = record("t1", "completed", [0.9, 0.5], budget=2, **config)  # best at epoch 1
    for row, real in zip(winner["history"], result.history):  # the checkpoints' own metrics, but epoch 1 best
        row.update(real, val_accuracy=row["val_accuracy"])
    for epoch, acc in ((1, 0.9), (2, 0.5)):  # what Ray's result rows said: epoch 1 is the best checkpoint
        state = experiment / "t1" / f"checkpoint_{epoch - 1:06d}" / "state.json"
        saved = json.loads(state.read_text())
        saved["history"][-1]["val_accuracy"] = acc
        state.write_text(json.dumps(saved))
    no_metric = record("t2", "running", [], budget=2, **config)
    info = {**sweep_info("sweep", data=data_options, max_epochs=2), "experiment": str(experiment)}
    return write_fake_sweep(base / "results" / "sweep", [winner, no_metric], info), experiment, data


def test_retrain_uses_train_and_validation_for_the_best_epoch_count(sweep):
    from tsweep.search.export import export_winner
    from tsweep.search.predict import load_export
    from tsweep.trainers.train import evaluate

    root, _, data = sweep
    lines: list[str] = []
    export = export_winner(root, progress=lines.append)
    metrics = json.loads((export / "metrics.json").read_text())
    assert metrics["retrained"] and metrics["full_data"]
    assert [h["epoch"] for h in metrics["history"]] == [1]  # the trial's best epoch, not its whole budget
    assert "val_loss" not in metrics["history"][0] and "validation" not in metrics  # validation was trained on
    assert json.loads((export / "config.json").read_text())["epochs"] == 1
    assert any("train + validation for 1 epochs" in line for line in lines)
    model, _, _ = load_export(export)
    measured = evaluate(model, data.x_test, data.y_test)  # the held-out test split it reports
    assert measured["accuracy"] == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)
    card = (export / "MODEL_CARD.md").read_text()
    assert "retrained from scratch on train + validation for 1 epochs" in card
    assert "during the sweep (trial t1, on validation): val_accuracy 0.9000, epoch 1" in card


def test_from_trial_exports_the_best_checkpoint_bit_for_bit(sweep):
    from tsweep.search.export import export_winner
    from tsweep.search.predict import load_export
    from tsweep.spaces.config import TrialConfig
    from tsweep.trainers.checkpoint import load_checkpoint

    root, experiment, _ = sweep
    export = export_winner(root, retrain=False, progress=lambda _: None)
    metrics = json.loads((export / "metrics.json").read_text())
    assert not metrics["retrained"] and metrics["checkpoint"].endswith("checkpoint_000000")  # epoch 1: the best
    assert [h["epoch"] for h in metrics["history"]] == [1] and "validation" in metrics
    model, _, _ = load_export(export)
    config = TrialConfig.from_dict(json.loads((export / "config.json").read_text()))
    saved = {e: load_checkpoint(experiment / "t1" / f"checkpoint_{e - 1:06d}", config, 3)[0] for e in (1, 2)}
    assert len(model.weights) == len(saved[1].weights) > 0
    for a, b in zip(model.weights, saved[1].weights):
        assert a.path == b.path
        np.testing.assert_array_equal(np.asarray(a), np.asarray(b), err_msg=a.path)  # bit for bit
    assert any(not np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(model.weights, saved[2].weights))
    assert "best checkpoint (epoch 1), as it is" in (export / "MODEL_CARD.md").read_text()


def test_a_trial_without_the_metric_or_checkpoint_is_a_clear_error(sweep, tmp_path):
    from tsweep.search.export import best_checkpoint, export_winner
    from tsweep.search.objective import Objective

    root, _, _ = sweep
    with pytest.raises(SweepConfigError, match="trial t2 has not reported val_accuracy.*--trial"):
        export_winner(root, trial_id="t2", progress=lambda _: None)
    with pytest.raises(SweepConfigError, match="no checkpoint in .*without --from-trial"):
        best_checkpoint({"experiment": str(tmp_path)}, {"trial_id": "t1"}, Objective())
