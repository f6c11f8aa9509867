"""Checkpoints of a pretrained backbone leave its frozen layers out and get them back from the same weights."""

from __future__ import annotations

import json

import numpy as np
import pytest

from tsweep.spaces.config import TrialConfig
from tsweep.trainers.data import Dataset, load_dataset

pytestmark = pytest.mark.numerics  # bit-for-bit restores: run under oneDNN too


@pytest.fixture(scope="module")
def data(shapes_dir, cache_dir) -> Dataset:
    return load_dataset(shapes_dir, 32, cache_dir=cache_dir)


@pytest.fixture(scope="module")
def weights_file(tmp_path_factory) -> str:
    """A 'pretrained' file: a random-init backbone's weights saved, as the shared *_no_top.h5 are."""
    from tsweep.trainers.pretrained import build_backbone

    path = tmp_path_factory.mktemp("weights") / "tiny.weights.h5"
    build_backbone("mobilenet_v2", 32, weights="none", alpha=0.35).save_weights(path)
    return str(path)


def config(weights: str, **changes) -> TrialConfig:
    return TrialConfig.from_dict({"backbone": "mobilenet_v2", "alpha": 0.35, "weights": weights, "image_size": 32,
                                  "batch_size": 16, "epochs": 3, "warmup_epochs": 1, "head_size": 8,
                                  "dropout": 0.1, "learning_rate": 1e-3, "freeze_cutoff": 14, **changes})


def saved_at(tmp_path, cfg, data, epochs):
    """Train `cfg`, checkpointing (with the config) after each epoch in `epochs`; {epoch: (dir, weights)}."""
    from tsweep.trainers.checkpoint import save_checkpoint
    from tsweep.trainers.train import train

    kept = {}

    def on_epoch(history, model):
        epoch = history[-1]["epoch"]
        if epoch in epochs:
            kept[epoch] = (save_checkpoint(tmp_path / f"ckpt{epoch}", model, history, cfg),
                           [np.array(v) for v in model.variables])

    train(cfg, data, on_epoch=on_epoch)
    return kept


def test_frozen_layers_are_left_out_and_restored_bit_for_bit(data, weights_file, tmp_path):
    from tsweep.trainers.checkpoint import STATE_FILE, WEIGHTS_FILE, load_checkpoint

    cfg = config(weights_file)
    kept = saved_at(tmp_path, cfg, data, {1, 3})  # a warm-up checkpoint and a fine-tuning one
    for epoch, (folder, weights) in kept.items():
        state = json.loads((folder / STATE_FILE).read_text())
        assert state["frozen_from"]["weights"].endswith("tiny.weights.h5") and state["frozen_from"]["sha256"]
        with np.load(folder / WEIGHTS_FILE) as saved:
            assert len(saved.files) == len(state["stored"]) < len(weights)  # the frozen part is not written
        model, history = load_checkpoint(folder, cfg, data.num_classes)
        assert history[-1]["epoch"] == epoch
        restored = [np.array(v) for v in model.variables]
        assert len(restored) == len(weights)
        for before, after in zip(weights, restored):
            np.testing.assert_array_equal(before, after)
    # fine-tuning unfroze the top blocks: their weights changed and are written from then on
    stored = {e: len(json.loads((kept[e][0] / STATE_FILE).read_text())["stored"]) for e in kept}
    assert stored[3] > stored[1]


def test_a_changed_weights_file_makes_the_checkpoint_unusable(data, weights_file, tmp_path):
    from tsweep.trainers.checkpoint import CorruptCheckpoint, load_checkpoint
    from tsweep.trainers.pretrained import build_backbone

    other = tmp_path / "other.weights.h5"
    cfg = config(weights_file, epochs=1)
    folder = saved_at(tmp_path, cfg, data, {1})[1][0]
    build_backbone("mobilenet_v2", 32, weights="none", alpha=0.35).save_weights(other)  # other random weights
    with pytest.raises(CorruptCheckpoint, match="frozen layers come from .*tiny.weights.h5.*not from the config's "
                                                "weights now .*other.weights.h5"):
        load_checkpoint(folder, config(str(other), epochs=1), data.num_classes)
    with pytest.raises(CorruptCheckpoint, match="cannot be read here"):
        load_checkpoint(folder, config(str(tmp_path / "gone.h5"), epochs=1), data.num_classes)


def test_random_init_and_no_config_write_every_variable(data, weights_file, tmp_path):
    from tsweep.trainers.checkpoint import STATE_FILE, WEIGHTS_FILE, save_checkpoint
    from tsweep.trainers.train import train

    result = train(config("none", epochs=1), data)
    for cfg in (config("none", epochs=1), None):
        folder = save_checkpoint(tmp_path / f"c{cfg is None}", result.model, result.history, cfg)
        assert "frozen_from" not in json.loads((folder / STATE_FILE).read_text())
        with np.load(folder / WEIGHTS_FILE) as saved:
            assert len(saved.files) == len(result.model.variables)
