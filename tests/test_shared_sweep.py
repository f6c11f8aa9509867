"""A real sweep on real photos with real ImageNet weights (../shared): corel5, MobileNetV2 0.35 at 96 px."""

from __future__ import annotations

import json

import pytest

from tests.conftest import shared_path

SPACE = """
description: corel5 with ImageNet MobileNetV2 0.35 - frozen features and a fine-tuned top
backbone: mobilenet_v2
alpha: 0.35
image_size: 96
batch_size: 32
epochs: 5
warmup_epochs: 1
head_size: {choice: [0, 64]}
dropout: {uniform: [0.0, 0.4]}
freeze_cutoff: {choice: [17, 14]}
optimizer: {choice: [adam, rmsprop]}
learning_rate: {loguniform: [1.0e-4, 3.0e-3]}
augmentation: none
"""


@pytest.mark.slow
def test_corel5_sweep_exports_an_accurate_model(cache_dir, tmp_path):
    import ray

    from tsweep.search.export import export_winner
    from tsweep.search.sweep import SweepOptions, run_sweep

    data = shared_path("datasets", "corel5")
    weights = shared_path("weights", "mobilenet_v2_0.35_224_no_top.h5")
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    ray.shutdown()
    opts = SweepOptions(data=str(data), space=str(space), overrides={"weights": str(weights)}, num_samples=6,
                        name="corel5", results_dir=str(tmp_path / "results"), cache_dir=str(cache_dir))
    root = run_sweep(opts, progress=lambda line: None)
    ray.shutdown()
    records = [json.loads(p.read_text()) for p in (root / "trials").glob("*.json")]
    assert len(records) == 6 and {r["status"] for r in records} <= {"completed", "pruned"}
    export = export_winner(root, progress=lambda line: None)
    metrics = json.loads((export / "metrics.json").read_text())
    assert metrics["test"]["accuracy"] >= 0.9  # 5 classes, 100 held-out test photos
