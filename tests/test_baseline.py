"""The classic small-CNN baseline: `backbone: small_cnn` (from scratch, nothing frozen or cached, no weights),
`tsweep run --baseline` (its config, ASHA sparing it, its place in leaderboards, the export and the report), and
one real sweep with it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from tests.fake_sweeps import record, tiny_space_yaml, write_fake_sweep
from tsweep.search.baseline import baseline_config, gain_sentence, is_baseline, param_space, transfer_gain
from tsweep.search.leaderboard import leaderboard_rows
from tsweep.search.objective import Objective
from tsweep.spaces.config import TrialConfig
from tsweep.spaces.space import load_space


def test_small_cnn_ignores_what_only_a_pretrained_backbone_has():
    from tsweep.trainers.cached_train import stage_kind
    from tsweep.trainers.train import phase_of

    # a MobileNetV2 space's cutoff, alpha and warm-up still validate (runs in any space) and change nothing
    cfg = TrialConfig.from_dict({"backbone": "SmallCNN", "freeze_cutoff": 14, "alpha": 0.35, "warmup_epochs": 2,
                                 "epochs": 3})
    assert cfg.backbone == "small_cnn" and cfg.from_scratch() and cfg.cutoff() == 0
    assert not cfg.is_feature_extraction() and [phase_of(e, cfg) for e in range(3)] == ["finetune"] * 3
    assert stage_kind(cfg, "finetune") == "end_to_end"  # nothing frozen: nothing to cache
    assert not TrialConfig(backbone="mobilenet_v2").from_scratch()


def test_small_cnn_builds_without_weights_and_trains_all_of_it(shapes_dir, cache_dir, tmp_path):
    from tsweep.trainers.data import load_dataset
    from tsweep.trainers.features import FeatureCache
    from tsweep.trainers.pretrained import build_backbone
    from tsweep.trainers.train import train

    # "imagenet" is ignored: this machine is offline, so a download attempt would raise
    base = build_backbone("small_cnn", 40, weights="imagenet", alpha=0.5)
    assert [layer.name for layer in base.layers][-2:] == ["block3_conv", "block3_pool"]
    assert base.output_shape == (None, 5, 5, 128)
    data = load_dataset(shapes_dir, 32, cache_dir=cache_dir)
    cfg = TrialConfig(backbone="small_cnn", image_size=32, epochs=2, batch_size=16, head_size=8)
    cache = FeatureCache(tmp_path / "f", 10**8)
    seen = []
    result = train(cfg, data, feature_cache=cache,
                   on_epoch=lambda h, m: seen.append(all(w.trainable for w in m.get_layer("backbone").weights)))
    assert seen == [True, True] and cache.stats["computed"] == 0
    assert [h["phase"] for h in result.history] == ["finetune", "finetune"]
    assert result.model.get_layer("preprocess").mode == "tf"  # a plain [-1, 1] scaling, no ImageNet statistics
    first = np.asarray(result.model.get_layer("backbone").get_layer("block1_conv").kernel)
    fresh = np.asarray(build_backbone("small_cnn", 32).get_layer("block1_conv").kernel)
    assert not np.allclose(first, fresh)  # the convolutions trained


def test_check_weights_skips_small_cnn():
    from tsweep.search.sweep import check_weights
    from tsweep.spaces.space import Space

    lines: list[str] = []
    check_weights(Space({}).with_fixed(backbone="small_cnn", weights="imagenet"), lines.append)
    assert lines == []


def test_baseline_config_in_any_space():
    space = load_space("backbones")  # backbones, freeze fractions, heads and rates sampled; 224 px fixed
    config = baseline_config(space, 10)
    assert set(space.params) <= set(config)
    assert (config["backbone"], config["weights"], config["epochs"], config["image_size"]) == ("small_cnn", "none",
                                                                                              10, 224)
    assert (config["optimizer"], config["learning_rate"], config["warmup_epochs"]) == ("adam", 1e-3, 0)
    assert config["head_size"] == TrialConfig.head_size and config["augmentation"] == "none"  # sampled: defaults
    assert config["batch_size"] == 32  # fixed in the space: kept
    TrialConfig.from_dict(config)
    ray_space = param_space({"learning_rate": "sampled"}, config)
    assert ray_space["learning_rate"] == "sampled" and ray_space["backbone"] == TrialConfig.backbone
    assert param_space({"a": 1}, None) == {"a": 1}
    assert is_baseline(dict(config), config) and not is_baseline({**config, "seed": 1}, config)
    assert not is_baseline(config, None)


def fake_trials():
    base = record("b0", "completed", [0.40, 0.55, 0.62, 0.70])
    base["config"].update(backbone="small_cnn")
    base["baseline"] = True
    return [record("t1", "completed", [0.7, 0.8, 0.9, 0.94]), record("t2", "pruned", [0.5]), base,
            record("t3", "completed", [0.6, 0.75, 0.8, 0.85])]


def test_baseline_place_in_the_leaderboard_and_the_gain():
    objective = Objective("val_accuracy")
    rows = leaderboard_rows(fake_trials(), objective, ["learning_rate"])
    assert [(r["trial"], r["baseline"]) for r in rows] == [("t1", None), ("t3", None), ("b0", "yes"), ("t2", None)]
    assert list(rows[0])[:7] == ["rank", "trial", "status", "epochs", "val_accuracy", "best_epoch", "baseline"]
    top = leaderboard_rows(fake_trials(), objective, [], top=1)  # the baseline row stays, with its real rank
    assert [(r["rank"], r["trial"]) for r in top] == [(1, "t1"), (3, "b0")]
    gain = transfer_gain(fake_trials(), objective)
    assert gain["gain"] == pytest.approx(0.24) and (gain["best_trial"], gain["baseline_trial"]) == ("t1", "b0")
    assert gain_sentence(gain) == ("transfer: +24.0 points of val_accuracy over training from scratch (0.94, trial "
                                   "t1; small_cnn baseline 0.7, trial b0)")
    assert transfer_gain(fake_trials()[:2], objective) is None and gain_sentence(None) is None
    loss = transfer_gain(fake_trials(), Objective("val_loss"))
    assert loss["gain"] == pytest.approx(0.16 - 0.40) and "val_loss -0.24" in gain_sentence(loss)


def test_board_and_report_mark_the_baseline(tmp_path):
    from tsweep.search.leaderboard import board
    from tsweep.search.reader import read_snapshot
    from tsweep.search.report import summary_section

    root = write_fake_sweep(tmp_path / "s", fake_trials())
    snap = read_snapshot(root)
    result = board([snap], top=2)
    assert [r["trial"] for r in result.rows] == ["t1", "t3", "b0"] and result.rows[-1]["baseline"] == "yes"
    page = "".join(summary_section(snap, Objective("val_accuracy")).blocks)
    assert "+24.0 points of val_accuracy over training from scratch" in page


def test_the_baseline_is_exported_only_when_it_is_the_best():
    from tsweep.search.export import pick_trial

    objective = Objective("val_accuracy")
    assert pick_trial(fake_trials(), objective)["trial_id"] == "t1"
    trials = fake_trials()
    trials[2]["history"][-1]["val_accuracy"] = 0.99
    assert pick_trial(trials, objective)["trial_id"] == "b0"


def test_baseline_asha_spares_the_baseline_and_keeps_it_out_of_the_rungs():
    from ray.tune.schedulers import ASHAScheduler, TrialScheduler

    from tsweep.search.tuner import make_scheduler

    base_config = {"backbone": "small_cnn", "seed": 0}
    trials = {name: SimpleNamespace(trial_id=name, config={"backbone": "mobilenet_v2", "seed": i})
              for i, name in enumerate(("t1", "t3"))}
    trials["base"] = SimpleNamespace(trial_id="base", config=dict(base_config))

    def run(scheduler, order):
        scheduler.set_search_properties("val_accuracy", "max")
        decisions = {}
        for name, value in order:
            scheduler.on_trial_add(None, trials[name])
            decisions[name] = scheduler.on_trial_result(None, trials[name],
                                                        {"training_iteration": 1, "val_accuracy": value})
        return decisions

    # rung 1 of ASHA (grace 1, reduction factor 2): a trial below the median of those recorded before it stops
    order = [("t1", 0.9), ("base", 0.1), ("t3", 0.5)]
    plain = run(make_scheduler(4, 1, 2), order)
    assert type(make_scheduler(4, 1, 2)) is ASHAScheduler
    assert plain["base"] == TrialScheduler.STOP  # plain ASHA cuts a slow starter at the first rung
    assert plain["t3"] == TrialScheduler.CONTINUE  # ... and its low value in the rung lets t3 through
    spared = run(make_scheduler(4, 1, 2, baseline=base_config), order)
    assert spared["base"] == TrialScheduler.CONTINUE
    # t3 meets the rung as if the baseline had never reported: its cut is the transfer trials' alone
    without = run(make_scheduler(4, 1, 2), [o for o in order if o[0] != "base"])
    assert spared["t3"] == without["t3"] == TrialScheduler.STOP
    scheduler = make_scheduler(4, 1, 2, baseline=base_config)
    run(scheduler, order)
    scheduler.on_trial_complete(None, trials["base"], {"training_iteration": 4, "val_accuracy": 0.7})
    assert "base" not in scheduler._trial_info


SPACE = tiny_space_yaml("baseline test - tiny MobileNetV2, random init", warmup_epochs=0,
                        learning_rate={"choice": [3.0e-3, 1.0e-3]})


@pytest.mark.slow
def test_a_real_sweep_with_a_baseline_on_imbalanced_classes(tmp_path, cache_dir):
    """`tsweep run --baseline --metric val_balanced_accuracy`: 1 trial + the baseline, real Ray, 2 CPUs."""
    from tests.test_balanced_accuracy import imbalanced_folder

    data = imbalanced_folder(tmp_path / "data")
    (tmp_path / "space.yaml").write_text(SPACE)
    args = ["run", "--data", str(data), "--space", str(tmp_path / "space.yaml"), "--name", "b", "--results-dir",
            str(tmp_path / "results"), "--num-samples", "1", "--baseline", "--metric", "val_balanced_accuracy",
            "--cpus-per-trial", "1", "--no-export", "--cache-dir", str(cache_dir)]
    proc = subprocess.run([sys.executable, "-m", "tsweep.search.cli", *args], capture_output=True, text=True,
                          timeout=900, env={**os.environ, "TSWEEP_CACHE": str(cache_dir)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "warning: the classes are imbalanced" in proc.stdout and "+ 1 baseline" in proc.stdout
    assert "Pre-set value" not in proc.stdout + proc.stderr
    root = tmp_path / "results" / "b"
    records = [json.loads(p.read_text()) for p in (root / "trials").glob("*.json")]
    assert len(records) == 2
    base = [r for r in records if r.get("baseline")]
    assert len(base) == 1 and base[0]["config"]["backbone"] == "small_cnn" and base[0]["status"] == "completed"
    assert [h["phase"] for h in base[0]["history"]] == ["finetune", "finetune"]  # the sweep's 2 epochs
    for r in records:
        assert all(0 <= h["val_balanced_accuracy"] <= 1 for h in r["history"]) and len(r["history"]) == 2
    assert "transfer:" in proc.stdout and "points of val_balanced_accuracy over training from scratch" in proc.stdout
    sweep = json.loads((root / "sweep.json").read_text())
    assert sweep["options"]["baseline"] is True and sweep["metric"] == "val_balanced_accuracy"
    board = subprocess.run([sys.executable, "-m", "tsweep.search.cli", "leaderboard", str(root), "--format", "json"],
                           capture_output=True, text=True, timeout=300)
    rows = json.loads(board.stdout)
    assert sorted(r["baseline"] or "" for r in rows) == ["", "yes"]
