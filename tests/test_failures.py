"""Failures classified once (search.failures): retried, failed at once with the reason, or restored from another
checkpoint; a resumed trial that completes is completed; weights checked at every size; the feature cache falls
back to memory when its disk fails."""

from __future__ import annotations

import errno
import json
import warnings
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.fake_sweeps import TINY
from tsweep.errors import NodeFileError, SweepConfigError, TrialError
from tsweep.search.failures import CHECKPOINT, DETERMINISTIC, INFRASTRUCTURE, NodeFault, classify
from tsweep.trainers.checkpoint import CorruptCheckpoint


class ResourceExhaustedError(Exception):
    """Stands for tf.errors.ResourceExhaustedError (recognised by its class name: no TensorFlow import)."""


@pytest.mark.parametrize("error, kind", [
    (ResourceExhaustedError("OOM when allocating tensor with shape [64,112,112,96]"), DETERMINISTIC),
    (MemoryError(), DETERMINISTIC),
    (RuntimeError("CUDA_ERROR_OUT_OF_MEMORY: out of memory"), DETERMINISTIC),
    (TrialError("loss became nan at epoch 2"), DETERMINISTIC),
    (SweepConfigError("`dropout` must be in [0, 0.9], got 2"), DETERMINISTIC),
    (NodeFileError("weights file '/w.h5' does not exist"), INFRASTRUCTURE),
    (FileNotFoundError(2, "No such file", "/cache/decoded/x/images.npy"), INFRASTRUCTURE),
    (ConnectionResetError(), INFRASTRUCTURE),
    (CorruptCheckpoint("weights.npz is unreadable"), CHECKPOINT),
])
def test_each_failure_has_one_kind(error, kind):
    failure = classify(error)
    assert failure.kind == kind and failure.retried == (kind == INFRASTRUCTURE) and failure.reason


def run_trainable(monkeypatch, error: BaseException) -> list[dict]:
    """The real trainable of search.trial, with Ray's session faked and `train` raising `error`; returns what
    it reported."""
    import ray
    from ray import tune

    import tsweep.search.trial as trial
    import tsweep.trainers.train as train_module

    reports: list[dict] = []
    context = SimpleNamespace(get_assigned_resources=lambda: {"CPU": 1.0}, get_node_id=lambda: "ab" * 20)
    monkeypatch.setattr(ray, "get_runtime_context", lambda: context)
    monkeypatch.setattr(tune, "get_checkpoint", lambda: None)
    monkeypatch.setattr(tune, "report", lambda metrics, checkpoint=None: reports.append(metrics))
    monkeypatch.setattr(trial, "dataset", lambda size, options: None)

    def failing(*args, **kwargs):
        raise error

    monkeypatch.setattr(train_module, "train", failing)
    trial.make_trainable({"data_dir": "/data"})(dict(TINY))
    return reports


def test_out_of_memory_fails_the_trial_at_once_with_its_reason(monkeypatch):
    """Before: the OOM reached Ray, which retried the same config up to --max-failures times."""
    from tsweep.search.trial import ERROR_KEY

    reports = run_trainable(monkeypatch, ResourceExhaustedError("OOM when allocating tensor"))
    assert len(reports) == 1 and "out of memory at this config" in reports[0][ERROR_KEY]


def test_weights_missing_on_this_node_is_retried(monkeypatch):
    """Before: a SweepConfigError inside a trial was recorded as the trial's failure, never retried elsewhere."""
    with pytest.raises(NodeFault, match="node abab.*missing on this node.*does not exist"):
        run_trainable(monkeypatch, NodeFileError("weights file '/w.h5' does not exist"))


def fake_trial(tmp_path: Path, trial_id: str, epochs: int) -> SimpleNamespace:
    error_file = tmp_path / f"{trial_id}-error.txt"
    error_file.write_text("Traceback ...\nResourceExhaustedError: OOM when allocating tensor")
    return SimpleNamespace(trial_id=trial_id, config={**TINY, "epochs": epochs}, error_file=str(error_file))


def test_a_trial_that_errored_then_completed_after_resume_is_completed_and_exported(tmp_path):
    from tsweep.search.export import pick_trial
    from tsweep.search.objective import Objective
    from tsweep.search.recorder import SweepRecorder
    from tsweep.search.records import read_trials

    quiet = {"printer": lambda line: None}
    first = SweepRecorder(tmp_path, Objective(), total=2, **quiet)
    oom, steady = fake_trial(tmp_path, "oom", 3), fake_trial(tmp_path, "steady", 3)
    for trial in (oom, steady):
        first.on_trial_start(0, [], trial)
    for epoch in (1, 2, 3):
        first.on_trial_result(0, [], steady, {"epoch": epoch, "val_accuracy": 0.5})
    first.on_trial_complete(0, [], steady)
    first.on_trial_result(0, [], oom, {"epoch": 1, "val_accuracy": 0.6})
    first.on_trial_error(0, [], oom)  # the OOM, and then the driver stops
    resumed = SweepRecorder(tmp_path, Objective(), total=2, **quiet)  # `tsweep resume`
    resumed.on_trial_start(0, [], oom)
    for epoch in (2, 3):
        resumed.on_trial_result(0, [], oom, {"epoch": epoch, "val_accuracy": 0.9, "resumed_from": 1})
    resumed.on_trial_complete(0, [], oom)
    records = {r["trial_id"]: r for r in read_trials(tmp_path)}
    assert records["oom"]["status"] == "completed" and records["oom"]["error"] is None
    assert records["oom"]["earlier_errors"] == ["ResourceExhaustedError: OOM when allocating tensor"]
    assert pick_trial(list(records.values()), Objective())["trial_id"] == "oom"


@pytest.fixture(scope="module")
def two_checkpoints(shapes_dir, cache_dir, tmp_path_factory):
    """The two checkpoints Ray keeps of a tiny trial (epochs 1 and 2, where Ray writes them), of a built model:
    restoring reads them exactly as it reads trained ones."""
    from tsweep.spaces.config import TrialConfig
    from tsweep.trainers.checkpoint import save_checkpoint
    from tsweep.trainers.data import load_dataset
    from tsweep.trainers.model import build_model

    trial_dir = tmp_path_factory.mktemp("trial")
    data = load_dataset(image_size=32, data_dir=str(shapes_dir), val_fraction=0.2, seed=0, cache_dir=str(cache_dir))
    model = build_model(TrialConfig.from_dict(TINY), data.num_classes)
    rows = [{"epoch": e, "phase": p, "loss": 1.0, "accuracy": 0.4, "val_loss": 1.0, "val_accuracy": 0.4}
            for e, p in ((1, "warmup"), (2, "finetune"))]
    for epoch in (1, 2):
        save_checkpoint(trial_dir / f"checkpoint_{epoch - 1:06d}", model, rows[:epoch])
    return trial_dir, data


def copy_of(trial_dir: Path, tmp_path: Path) -> Path:
    import shutil

    return Path(shutil.copytree(trial_dir, tmp_path / "trial"))


def resume(trial_dir: Path, run) -> tuple[object, list[str]]:
    """What search.trial does on a restart: the chain from the latest checkpoint (the one Ray restores)."""
    from ray.tune import Checkpoint

    from tsweep.search.failures import kept_checkpoints, resume_chain

    notes: list[str] = []
    latest = Checkpoint.from_directory(str(trial_dir / "checkpoint_000001"))
    return resume_chain(kept_checkpoints(latest), run, notes.append), notes


def truncate_latest(trial_dir: Path) -> None:
    from tsweep.trainers.checkpoint import WEIGHTS_FILE

    weights = trial_dir / "checkpoint_000001" / WEIGHTS_FILE
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # truncated, as by a full disk


def test_a_corrupt_latest_checkpoint_falls_back_to_the_other_kept_one(two_checkpoints, tmp_path):
    from tsweep.spaces.config import TrialConfig
    from tsweep.trainers.checkpoint import load_checkpoint

    trial_dir = copy_of(two_checkpoints[0], tmp_path)
    truncate_latest(trial_dir)
    with pytest.raises(CorruptCheckpoint):  # what a restart met before: an error retried up to --max-failures
        load_checkpoint(trial_dir / "checkpoint_000001", TrialConfig.from_dict(TINY), 3)
    chosen, notes = resume(trial_dir, lambda d: ("from", Path(d).name))
    assert chosen == ("from", "checkpoint_000000")
    assert "checkpoint_000001 is unusable" in notes[0] and "weights.npz" in notes[0]
    assert notes[1] == "continuing from the other kept checkpoint, checkpoint_000000"


@pytest.mark.slow
def test_training_resumes_from_the_other_kept_checkpoint(two_checkpoints, tmp_path):
    from tsweep.spaces.config import TrialConfig
    from tsweep.trainers.train import train

    trial_dir = copy_of(two_checkpoints[0], tmp_path)
    truncate_latest(trial_dir)

    saved = json.loads((trial_dir / "checkpoint_000000" / "state.json").read_text())["history"]
    result, notes = resume(trial_dir, lambda d: train(TrialConfig.from_dict(TINY), two_checkpoints[1], resume_from=d))
    history = result.history
    assert [h["epoch"] for h in history] == [1, 2] and history[0] == saved[0]  # epoch 1 kept, epoch 2 trained again
    assert history[1]["loss"] != saved[0]["loss"] and len(notes) == 2  # a real epoch, not the saved row


def test_no_readable_checkpoint_restarts_from_epoch_0_and_says_so(two_checkpoints, tmp_path):
    trial_dir = copy_of(two_checkpoints[0], tmp_path)
    (trial_dir / "checkpoint_000001" / "state.json").write_text("{")  # cut off mid-write
    (trial_dir / "checkpoint_000000" / "weights.npz").unlink()
    chosen, notes = resume(trial_dir, lambda d: ("from", d))
    assert chosen == ("from", None)  # `train(resume_from=None)`: epoch 0
    assert "checkpoint_000001 is unusable" in notes[0] and "checkpoint_000000 is unusable" in notes[1]
    assert len(notes) == 3 and "restarting from epoch 0" in notes[-1]


def test_check_weights_builds_every_image_size(tmp_path, monkeypatch):
    """Before: only the smallest size was built, though MobileNetV2's ImageNet file differs per size."""
    import tsweep.trainers.pretrained as pretrained
    from tsweep.search.sweep import check_weights
    from tsweep.spaces.space import load_space

    space_file = tmp_path / "space.yaml"
    space_file.write_text("backbone: mobilenet_v2\nalpha: 0.35\nweights: imagenet\nimage_size: {choice: [128, 96]}\n")
    built: list[int] = []

    def build(name, size, weights, alpha):
        built.append(size)
        if size == 128:
            raise NodeFileError("the download of ImageNet weights for mobilenet_v2 failed (offline)")

    monkeypatch.setattr(pretrained, "build_backbone", build)
    with pytest.raises(SweepConfigError, match="download of ImageNet weights"):
        check_weights(load_space(str(space_file)), progress=lambda line: None)
    assert built == [96, 128]


def test_a_feature_cache_that_cannot_be_created_falls_back_to_memory(tmp_path):
    """The cache dir's parent is a file: mkdir fails as on a read-only disk (even for root, who ignores modes).
    Before: FeatureCache() raised, failing every cacheable trial."""
    from tsweep.trainers.features import FeatureCache

    blocker = tmp_path / "cache"
    blocker.write_text("not a folder")
    with pytest.warns(UserWarning, match="could not write the feature cache .* memory only"):
        cache = FeatureCache(blocker / "features", memory_budget_bytes=2**20)
    calls = []
    for _ in range(2):
        out = cache.get_or_compute({"what": "test"}, lambda: calls.append(1) or np.ones((4, 3)))
        assert out.shape == (4, 3) and out.dtype == np.float32
    assert calls == [1] and cache.stats["memory_hits"] == 1 and cache.disk_error


def test_a_full_feature_cache_disk_falls_back_to_memory(tmp_path, monkeypatch):
    import tsweep.trainers.features as features

    cache = features.FeatureCache(tmp_path / "features", memory_budget_bytes=2**20)

    def full(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(features.np, "save", full)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        first = cache.get_or_compute({"what": "a"}, lambda: np.zeros((2, 2)))
        second = cache.get_or_compute({"what": "b"}, lambda: np.ones((2, 2)))
    assert first.sum() == 0 and second.sum() == 4 and cache.stats["computed"] == 2
    assert [str(w.message) for w in caught if "feature cache" in str(w.message)][0].count("No space left") == 1
    assert len([w for w in caught if "feature cache" in str(w.message)]) == 1  # warned once, not per entry
    assert not list((tmp_path / "features").glob("*.npy")) and not list((tmp_path / "features").glob(".*.tmp"))


def test_a_retried_trial_is_kept_off_the_node_it_failed_on_while_another_can_run_it():
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    from tsweep.search.failures import avoid_nodes, faulty_node

    node_a, node_b = "a" * 56, "b" * 56
    assert faulty_node(f"Traceback ...\nNodeFault: on node {node_a}: missing on this node (retried on another)") \
        == node_a and faulty_node("ValueError: Could not recover") is None
    updated: list = []
    trial = SimpleNamespace(placement_group_factory=PlacementGroupFactory([{"CPU": 1.0}]),
                            update_resources=updated.append)
    one_cpu = {"Resources": {"CPU": 1.0}, "Alive": True}
    assert not avoid_nodes(trial, [node_a], alive=[{"NodeID": node_a, **one_cpu}])  # nowhere else: unplaceable
    assert not avoid_nodes(trial, [node_a], alive=[{"NodeID": node_a, **one_cpu},
                                                   {"NodeID": node_b, "Resources": {"CPU": 0.5}}])  # too small
    assert avoid_nodes(trial, [node_a], alive=[{"NodeID": node_a, **one_cpu}, {"NodeID": node_b, **one_cpu}])
    assert updated == [PlacementGroupFactory([{"CPU": 1.0}], "PACK",
                                             bundle_label_selector=[{"ray.io/node-id": f"!in({node_a})"}])]


SPACE = """
description: failure tests - tiny, ImageNet weights (which one node has a corrupt copy of)
backbone: mobilenet_v2
alpha: 0.35
weights: imagenet
image_size: 32
batch_size: 8
epochs: 1
warmup_epochs: 1
head_size: 0
dropout: 0.0
freeze_cutoff: 17
optimizer: adam
learning_rate: {loguniform: [1.0e-4, 1.0e-2]}
"""
KERAS_FILE = "mobilenet_v2_weights_tf_dim_ordering_tf_kernels_0.35_224_no_top.h5"  # Keras's name (32 px uses 224's)


@pytest.mark.slow
def test_weights_broken_on_one_node_of_a_cluster_are_retried_on_another(shapes_dir, cache_dir, tmp_path, monkeypatch):
    """Two worker nodes of one CPU, each with its own Keras folder: the first holds a corrupt copy of the ImageNet
    file, the second the real one. Before: the trial that started on the first failed at once, never retried."""
    import shutil

    import keras.src.backend.config as keras_config
    import ray
    from ray.cluster_utils import Cluster

    from tests.conftest import shared_path
    from tsweep.search.sweep import SweepOptions, run_sweep

    homes = {}
    for name in ("broken", "good"):
        (tmp_path / name / "models").mkdir(parents=True)
        homes[name] = tmp_path / name
    shutil.copy(shared_path("weights", "mobilenet_v2_0.35_224_no_top.h5"), homes["good"] / "models" / KERAS_FILE)
    (homes["broken"] / "models" / KERAS_FILE).write_bytes(b"not an HDF5 file")
    monkeypatch.setattr(keras_config, "_KERAS_DIR", str(homes["good"]))  # the driver's own check passes
    (tmp_path / "space.yaml").write_text(SPACE)
    ray.shutdown()
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    try:
        broken = cluster.add_node(num_cpus=1, env_vars={"KERAS_HOME": str(homes["broken"])})
        good = cluster.add_node(num_cpus=1, env_vars={"KERAS_HOME": str(homes["good"])})
        cluster.wait_for_nodes()
        opts = SweepOptions(data=str(shapes_dir), space=str(tmp_path / "space.yaml"), num_samples=2, name="nodes",
                            results_dir=str(tmp_path / "results"), address=cluster.address, export=False,
                            cache_dir=str(cache_dir), max_failures=2)
        root = run_sweep(opts, progress=lambda line: None)
    finally:
        ray.shutdown()
        cluster.shutdown()
    records = [json.loads(p.read_text()) for p in sorted((root / "trials").glob("*.json"))]
    assert [r["status"] for r in records] == ["completed", "completed"]
    moved = [r for r in records if r["restarts"]]
    assert len(moved) == 1, "expected exactly one trial to start on the node with the corrupt weights"
    assert "missing on this node" in moved[0]["retried_after"][0] and moved[0]["avoided_nodes"] == [broken.node_id]
    assert {n for r in records for n in r["nodes"]} == {good.node_id[:12]}  # every epoch ran on the good node
