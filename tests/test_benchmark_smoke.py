"""benchmarks/sweep_speed.py without running a sweep: options, its space, the RSS sampler, table and --json."""

from __future__ import annotations

import pytest

from tests.bench_scripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("sweep_speed")


def test_presets_and_overrides(bench):
    full = bench.parse_args([])
    assert (full.trials, full.max_epochs, full.image_size, full.only) == (24, 12, 160, ["a", "b", "c"])
    tiny = bench.parse_args(["--quick", "--trials", "2", "--max-epochs", "1", "--image-size", "64", "--only", "c,a"])
    assert (tiny.trials, tiny.max_epochs, tiny.image_size, tiny.only) == (2, 1, 64, ["a", "c"])
    assert bench.parse_args(["--quick"]).max_epochs == bench.QUICK[1]
    assert bench.parse_args(["--only", "naive_ray"]).only == ["b"]
    assert bench.parse_args(["--weights", "none"]).weights == "none"
    with pytest.raises(SystemExit):
        bench.parse_args(["--only", "a,d"])
    assert full.scale == [] and bench.parse_args(["--scale", "96,24"]).scale == [24, 96]
    for bad in ("24", "24,x", "0,5"):
        with pytest.raises(SystemExit):
            bench.parse_args(["--scale", bad])


def test_space_is_valid_and_shared(bench, tmp_path):
    from tsweep.spaces.space import load_space

    args = bench.parse_args(["--weights", "none", "--max-epochs", "12"])
    space = load_space(bench.write_space(tmp_path / "space.yaml", args))
    assert set(space.sampled) == {"head_size", "dropout", "freeze_cutoff", "optimizer", "learning_rate",
                                  "augmentation"}
    assert 17 in space.params["freeze_cutoff"].values
    assert space.params["augmentation"].values == ("none", "light")
    assert space.fixed["epochs"] == 12 and space.fixed["image_size"] == 160


def test_peak_rss_sees_this_process(bench):
    with bench.PeakRss(interval=0.05) as rss:
        pass
    assert rss.peak > 10 * 2**20


def test_figures_and_table_with_a_subset(bench):
    args = bench.parse_args(["--only", "a,c", "--weights", "none"])
    a = {"wall_s": 100.0, "trials": 24, "epochs": 80, "best_val_accuracy": 0.95, "peak_rss_mb": 3000,
         "export_s": 16.0}
    c = {"wall_s": 250.0, "trials": 30, "epochs": 136, "best_val_accuracy": 0.93, "peak_rss_mb": 1500}
    bound = {"bound_s": 60.0, "decode_s": 5.0, "prefix_s": {17: 4.0}, "views": 2, "view_s": 1.5, "train_s": 48.0,
             "steps_s": 96.0, "concurrency": 2}
    results = {"tsweep": a, "keras_tuner_hyperband": c}
    out = bench.figures(results, bound)
    assert set(out) == {"tsweep", "naive_ray", "keras_tuner_hyperband", "bound_s", "ratios", "tsweep_overhead"}
    assert out["naive_ray"] is None and out["bound_s"] == 60.0
    assert out["ratios"] == {"naive_over_tsweep": None, "hyperband_over_tsweep": 2.5, "tsweep_over_bound": 1.67,
                             "sweep_over_bound": 1.4}  # (100 - 16) / 60: the bound counts no export
    info = {"cpus": 2, "ray_cpus": 2, "cpu": "cpu", "ram_gb": 8.0, "python": "3", "tensorflow": "2",
            "keras": "3", "ray": "2", "keras_tuner": "1"}
    text = bench.table(results, bound, args, info)
    assert "naive / tsweep: n/a" in text and "hyperband / tsweep: 2.50" in text and "not run" in text
    assert "(cutoff 17) 4.0 + 2 views x 1.5 + steady-state train steps 96.0 / 2 trials side by side" in text
    assert "export included) / bound: 1.67; its sweep alone" in text and "/ bound: 1.40" in text
    assert bench.figures({}, None)["ratios"]["tsweep_over_bound"] is None


def test_per_trial_overhead_is_the_time_outside_epochs(bench):
    records = [{"wall_s": 10.0, "history": [{"epoch_time_s": 3.0}, {"epoch_time_s": 4.0}]},  # 3 s outside
               {"wall_s": 5.0, "history": [{"epoch_time_s": 4.0}]}]  # 1 s outside
    got = bench.overhead(records, wall_s=10.0, concurrency=2)
    assert got == {"overhead_s": 4.0, "share": 0.2, "per_trial_s": 2.0}
    args = bench.parse_args(["--only", "a", "--weights", "none"])
    a = {"wall_s": 10.0, "trials": 2, "epochs": 3, "best_val_accuracy": 0.9, "peak_rss_mb": 900}
    text = bench.table({"tsweep": a}, None, args, {"cpus": 2, "ray_cpus": 2, "cpu": "x", "ram_gb": 24,
                       "python": "3", "tensorflow": "2", "keras": "3", "ray": "2", "keras_tuner": "1"}, got)
    assert "per-trial overhead of (a): 4.0 s over its trials (2.00 s per trial), 20.0% of its workers' time" in text


def _trial(config: dict, times: list[tuple[str, float, float]]) -> dict:
    """A record with per-epoch (phase, epoch_time_s, stage_s)."""
    base = {"backbone": "mobilenet_v2", "alpha": 0.35, "weights": "none", "image_size": 32, "epochs": 12,
            "warmup_epochs": 1}
    return {"trial_id": str(id(times)), "config": {**base, **config},
            "history": [{"epoch": i + 1, "phase": p, "epoch_time_s": t, "stage_s": st}
                        for i, (p, t, st) in enumerate(times)]}


def test_steady_steps_and_tracing_come_from_each_phase(bench):
    records = [
        # warm-up (2 epochs: first 5 s of which 1 s staging, then 1 s) then fine-tune (first 6 s, then 2, 2, 3)
        _trial({"freeze_cutoff": 13, "warmup_epochs": 2},
               [("warmup", 5.0, 1.0), ("warmup", 1.0, 0.0), ("finetune", 6.0, 0.5), ("finetune", 2.0, 0.0),
                ("finetune", 2.0, 0.0), ("finetune", 3.0, 0.0)]),
        # stopped after one epoch: its steady time is the median of its kind (the warm-up above: 1 s)
        _trial({"freeze_cutoff": 13, "warmup_epochs": 2}, [("warmup", 4.0, 0.0)]),
    ]
    got = bench.steps_and_tracing(records)
    # steps: 1 s x 2 + 2 s x 4 + 1 s x 1; tracing: (4 - 1) + (5.5 - 2) + (4 - 1); staging 1.5
    assert got == {"steps_s": 11.0, "tracing_s": 9.5, "staged_s": 1.5, "phases": 3}


def test_views_used_follow_each_trials_schedule(bench):
    from tsweep.trainers.views import view_of

    aug = _trial({"freeze_cutoff": 17, "augmentation": "light", "augmentation_views": 4, "seed": 5},
                 [("features", 1.0, 0.0)] * 2)
    plain = _trial({"freeze_cutoff": 17}, [("features", 1.0, 0.0)] * 3)
    online = _trial({"freeze_cutoff": 17, "augmentation": "light", "augmentation_views": 0},
                    [("features", 1.0, 0.0)] * 3)
    assert bench.views_used([aug, plain, online]) == {("light", view_of(e, 4, 5)) for e in range(2)}


def test_scale_saves_its_figures_after_every_run(bench, tmp_path, monkeypatch):
    # A --scale run takes an hour: each count's wall times must be on disk before the next run starts.
    import _naive
    import _scale

    import tsweep.search.sweep as sweep

    runs = []
    monkeypatch.setattr(sweep, "run_sweep", lambda opts, progress: runs.append(("tsweep", opts.num_samples)))
    monkeypatch.setattr(_naive, "run", lambda space, data, size, n, *rest: runs.append(("naive_ray", n)))
    args = bench.parse_args(["--scale", "2,6", "--weights", "none"])
    saved = []
    result = _scale.scaling(args, None, tmp_path / "space.yaml", tmp_path, 2, lambda line: None,
                            lambda prefix: (lambda line: None), lambda part: saved.append(json_copy(part)))
    assert runs == [("tsweep", 2), ("naive_ray", 2), ("tsweep", 6), ("naive_ray", 6)]
    assert [sorted((k, sorted(int(n) for n in v)) for k, v in part["wall_s"].items()) for part in saved] == [
        [("naive_ray", []), ("tsweep", [2])], [("naive_ray", [2]), ("tsweep", [2])],
        [("naive_ray", [2]), ("tsweep", [2, 6])], [("naive_ray", [2, 6]), ("tsweep", [2, 6])]]
    assert all(part["partial"] for part in saved) and "partial" not in result
    assert set(result["marginal_s_per_trial"]) == {"tsweep", "naive_ray"}


def json_copy(part: dict) -> dict:
    import json

    return json.loads(json.dumps(part))
