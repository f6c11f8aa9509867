"""Mending Ray's experiment state when it names a checkpoint that retention deleted (a killed driver)."""

import json

import pytest

from tsweep.search.ray_state import newest_checkpointed_row, read_rows, repair_stale_checkpoints


def test_newest_checkpointed_row_skips_deleted_checkpoints():
    rows = [{"epoch": 1, "checkpoint_dir_name": "checkpoint_000000"},
            {"epoch": 2, "checkpoint_dir_name": "checkpoint_000001"},
            {"epoch": 3, "checkpoint_dir_name": "checkpoint_000002"}]
    assert newest_checkpointed_row(rows, {"checkpoint_000000", "checkpoint_000002"}.__contains__)["epoch"] == 3
    assert newest_checkpointed_row(rows, {"checkpoint_000000"}.__contains__)["epoch"] == 1
    assert newest_checkpointed_row(rows, lambda name: False) is None


def test_read_rows_stops_at_a_line_cut_off_mid_write():
    text = '{"epoch": 1}\n{"epoch": 2}\n{"epo'
    assert [r["epoch"] for r in read_rows(text)] == [1, 2]


def _state(tmp_path, latest_epoch):
    """An experiment folder whose saved state names checkpoints 0..latest_epoch-1 as Ray would, with
    retention num_to_keep=1 by val_accuracy."""
    from ray.train import Checkpoint, CheckpointConfig
    from ray.train._internal.checkpoint_manager import _CheckpointManager
    from ray.train._internal.session import _TrainingResult
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    trial_dir = tmp_path / "exp" / "tsweep_trial_abc_00000"
    trial_dir.mkdir(parents=True)
    metadata = _TrainingRunMetadata()
    metadata.checkpoint_manager = _CheckpointManager(CheckpointConfig(
        num_to_keep=1, checkpoint_score_attribute="val_accuracy", checkpoint_score_order="max"))
    rows = []
    accuracies = [0.5, 0.9, 0.6, 0.7, 0.8]
    for i in range(latest_epoch):
        name = f"checkpoint_{i:06d}"
        (trial_dir / name).mkdir()
        (trial_dir / name / "state.json").write_text(json.dumps({"epoch": i + 1}))
        row = {"trial_id": "abc_00000", "training_iteration": i + 1, "val_accuracy": accuracies[i],
               "checkpoint_dir_name": name}
        rows.append(row)
        metadata.checkpoint_manager.register_checkpoint(
            _TrainingResult(Checkpoint.from_directory(str(trial_dir / name)), row))
    (trial_dir / "result.json").write_text("".join(json.dumps(r) + "\n" for r in rows))
    state_file = tmp_path / "exp" / "experiment_state-2026-11-23_12-00-00.json"
    state_file.write_text(json.dumps({"trial_data": [["{}", metadata.get_json_state()]], "runner_data": {}}))
    return trial_dir, state_file


def _latest(state_file):
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    entry = json.loads(state_file.read_text())["trial_data"][0]
    manager = _TrainingRunMetadata.from_json_state(entry[1]).checkpoint_manager
    return manager.latest_checkpoint_result


def test_stale_latest_checkpoint_is_replaced_by_the_newest_on_storage(tmp_path):
    trial_dir, state_file = _state(tmp_path, latest_epoch=3)  # state: latest checkpoint_000002, best 000001
    # After the state was saved the trial went on: epochs 4 and 5 were checkpointed and retention deleted
    # 000002 and 000003 (neither best nor latest); then the driver died before Ray saved its state again.
    import shutil

    for i, acc in ((3, 0.7), (4, 0.8)):
        (trial_dir / f"checkpoint_{i:06d}").mkdir()
        with open(trial_dir / "result.json", "a") as f:
            f.write(json.dumps({"trial_id": "abc_00000", "training_iteration": i + 1, "val_accuracy": acc,
                                "checkpoint_dir_name": f"checkpoint_{i:06d}"}) + "\n")
    shutil.rmtree(trial_dir / "checkpoint_000002")
    shutil.rmtree(trial_dir / "checkpoint_000003")

    lines = []
    assert repair_stale_checkpoints(str(tmp_path / "exp"), progress=lines.append) == ["abc_00000"]
    latest = _latest(state_file)
    assert latest.checkpoint.path.endswith("checkpoint_000004")
    assert latest.metrics["training_iteration"] == 5  # Ray's iteration (ASHA's time) continues from there
    assert "abc_00000" in lines[0]
    # A state naming existing checkpoints is left alone, byte for byte.
    before = state_file.read_bytes()
    assert repair_stale_checkpoints(str(tmp_path / "exp"), progress=lines.append) == []
    assert state_file.read_bytes() == before


def test_nothing_to_continue_from_leaves_the_state_alone(tmp_path):
    import shutil

    trial_dir, state_file = _state(tmp_path, latest_epoch=2)
    for name in ("checkpoint_000000", "checkpoint_000001"):
        shutil.rmtree(trial_dir / name, ignore_errors=True)
    before = state_file.read_bytes()
    assert repair_stale_checkpoints(str(tmp_path / "exp")) == []
    assert state_file.read_bytes() == before


def test_an_unreadable_state_warns_and_does_not_block_the_resume(tmp_path):
    (tmp_path / "experiment_state-x.json").write_text("{not json")
    with pytest.warns(UserWarning, match="stale checkpoints"):
        assert repair_stale_checkpoints(str(tmp_path)) == []
