"""Warm workers: trials reuse their worker process, and nothing leaks from one trial to the next.

A reused worker used to grow ~5 MB per trial on cached features and ~28 MB per end-to-end trial although
each trial starts from keras.backend.clear_session(): Keras 3's TF optimizer all-reduces gradients through a
tf.custom_gradient, and TF (2.21) registers each traced one as "CustomGradient-<uid>" in its global gradient
registry, whose closure keeps the whole traced train step (graph, ops, functions) alive. `fresh_session`
now drops those entries (`trainers.runtime._forget_custom_gradients`).
"""

from __future__ import annotations

import json

import pytest

from tsweep.search.sweep import SweepOptions, run_sweep

SPACE = """
description: reuse test - 50 one-epoch trials of a tiny model
backbone: mobilenet_v2
alpha: 0.35
weights: none
image_size: 32
batch_size: 16
epochs: 1
warmup_epochs: 0
freeze_cutoff: 17
head_size: {choice: [0, 8, 16]}
dropout: {uniform: [0.0, 0.3]}
learning_rate: {loguniform: [1.0e-4, 1.0e-2]}
"""


def test_fresh_session_releases_the_previous_trials_train_step():
    # Keras 3's TF optimizer all-reduces gradients through a tf.custom_gradient, which registers a
    # "CustomGradient-<uid>" function holding the whole traced train step in TF's global gradient registry;
    # fresh_session must drop it, or every trial of a reused worker keeps its graphs (and their functions).
    import gc
    import weakref

    import keras
    import numpy as np
    from tensorflow.python.framework import ops
    from tensorflow.python.framework.func_graph import FuncGraph

    from tsweep.trainers.runtime import fresh_session

    def one_trial():
        model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3, activation="softmax")])
        model.compile(optimizer="adam", loss="sparse_categorical_crossentropy", metrics=["accuracy"])
        model.fit(np.zeros((8, 4), "float32"), np.zeros(8, "int32"), batch_size=4, epochs=1, verbose=0)

    def graphs() -> dict:
        return {id(o): o for o in gc.get_objects() if isinstance(o, FuncGraph)}

    fresh_session()
    before = graphs()
    one_trial()
    traced = [weakref.ref(g) for i, g in graphs().items() if i not in before]
    del before
    assert traced and any(str(k).startswith("CustomGradient-") for k in ops._gradient_registry.list())
    fresh_session()
    assert not any(str(k).startswith("CustomGradient-") for k in ops._gradient_registry.list())
    assert [r() for r in traced if r() is not None] == []


@pytest.mark.slow
def test_fifty_trials_in_one_reused_worker_level_off_in_memory(shapes_dir, cache_dir, tmp_path):
    import ray

    ray.shutdown()
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    # 2 CPUs per trial on a 2-CPU Ray: one trial at a time, so every trial can land in the same worker
    opts = SweepOptions(data=str(shapes_dir), space=str(space), num_samples=50, name="reuse",
                        results_dir=str(tmp_path / "results"), cpus_per_trial=2, export=False,
                        cache_dir=str(cache_dir))
    root = run_sweep(opts, progress=lambda line: None)
    ray.shutdown()
    recs = sorted((json.loads(p.read_text()) for p in (root / "trials").glob("*.json")), key=lambda r: r["started"])
    assert len(recs) == 50 and all(r["status"] == "completed" for r in recs)
    pids = [r["resources"]["pid"] for r in recs]
    assert len(set(pids)) == 1, f"trials ran in {len(set(pids))} processes, not one reused worker"
    rss = [r["history"][-1]["rss_mb"] for r in recs]
    # levels off: the last 10 trials hold no more than trials 11-20 did, give or take allocator noise
    early, late = max(rss[10:20]), max(rss[40:50])
    print(f"\nworker RSS (MB) by trial: first {rss[0]}, trials 11-20 max {early}, trials 41-50 max {late}")
    assert late <= early * 1.10 + 50, rss
