"""Ensembles of top trials: greedy selection with replacement on fake predictions (pure), the shared-prefix
ensemble model equal to averaging its members' own outputs, and `tsweep export --ensemble` end to end (the
ensemble exported and loaded like a single model; kept single, saying so, when it is not better)."""

from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from tests.fake_sweeps import TINY, record, sweep_info, write_fake_sweep
from tsweep.errors import SweepConfigError
from tsweep.search.ensemble import as_probabilities, check_choices, greedy_select, is_better, log_loss, score_of
from tsweep.search.formats import FORMATS, missing_modules

AVAILABLE = [name for name, fmt in FORMATS.items() if not missing_modules(fmt)]


# --- the selection (pure) -------------------------------------------------------------------------------------

def sigmoid_rows(*columns: float) -> np.ndarray:
    return np.asarray(columns, dtype="float64")[:, None]  # one sigmoid unit per image: P(class 1)


def test_greedy_picks_with_replacement_and_stops_at_k():
    """Three images of class 1. A alone gets 2 of 3; A + B averages the third right but the first two to a
    0.5 tie (argmax: class 0); A, A, B gets all three: only picking A twice finds it."""
    y = np.array([1, 1, 1])
    a, b = sigmoid_rows(0.9, 0.9, 0.45), sigmoid_rows(0.1, 0.1, 0.9)
    selection = greedy_select([a, b], y, k=3)
    assert selection.picks == (0, 0, 1) and selection.weights == {0: 2, 1: 1}
    assert selection.score == 1.0 and selection.single == pytest.approx(2 / 3)
    assert is_better(selection, "accuracy")
    mean = (2 * as_probabilities(a) + as_probabilities(b)) / 3
    assert selection.score == np.mean(mean.argmax(1) == y)  # the score is that of the weighted average
    short = greedy_select([a, b], y, k=2)  # two picks cannot reach it: A twice is A, the shortest prefix is kept
    assert short.picks == (0,) and len(short.scores) == 2 and not is_better(short, "accuracy")


def test_greedy_starts_from_the_best_candidate_and_adds_what_helps():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    truth = np.eye(3)[y]
    noise = [rng.dirichlet(np.ones(3), 60) for _ in range(3)]
    weak, good, other = (0.3 * truth + 0.7 * noise[0], 0.6 * truth + 0.4 * noise[1], 0.6 * truth + 0.4 * noise[2])
    selection = greedy_select([weak, good, other], y, k=4, metric="loss")
    assert selection.picks[0] == 1  # the lowest log loss alone
    assert 2 in selection.picks and selection.score < log_loss(good, y)  # two independent errors average out
    assert selection.scores[len(selection.picks) - 1] == min(selection.scores)
    assert len(selection.scores) == 4 and len(selection.picks) <= 4


def test_ties_go_to_the_lower_log_loss_then_to_the_earlier_candidate():
    y = np.array([0, 1, 1, 0])
    sure = np.array([[0.9, 0.1], [0.2, 0.8], [0.1, 0.9], [0.6, 0.4]])
    unsure = np.array([[0.6, 0.4], [0.4, 0.6], [0.45, 0.55], [0.55, 0.45]])  # the same accuracy, higher loss
    assert greedy_select([unsure, sure], y, k=1).picks == (1,)
    twins = greedy_select([sure, sure.copy(), sure.copy()], y, k=3)
    assert twins.picks == (0,) and not is_better(twins, "accuracy")  # identical members: nothing to gain
    assert greedy_select([sure.copy(), sure], y, k=2).picks == (0,)


def test_bad_inputs_are_clear_errors():
    with pytest.raises(ValueError, match="shaped"):
        greedy_select([np.zeros((3, 2)), np.zeros((4, 2))], np.zeros(3, int), k=2)
    with pytest.raises(ValueError, match="k >= 1"):
        greedy_select([np.zeros((3, 2))], np.zeros(3, int), k=0)
    assert score_of("val_loss")[0] == "loss" and score_of("val_accuracy")[2]
    with pytest.raises(SweepConfigError, match="val_auc"):
        score_of("val_auc")
    with pytest.raises(SweepConfigError, match=r"`--ensemble` must be 0 \(off\) or in \[2, 64\], got 1"):
        check_choices(1, "none")
    with pytest.raises(SweepConfigError, match="`--tta` must be one of none, flip"):
        check_choices(0, "mirror")


# --- the ensemble model ---------------------------------------------------------------------------------------

def trained_like(overrides: dict, seed_noise: int):
    """A tiny model (TINY: MobileNetV2 0.35, random init, 32 px) whose layers above its cutoff and head are
    moved by seeded noise, as training would move them; the frozen layers keep their init (and BatchNorm
    statistics calibrated as `train` does for random-init backbones)."""
    import keras

    from tsweep.search.ensemble_model import Member
    from tsweep.spaces.config import TrialConfig
    from tsweep.trainers.model import build_model, calibrate_batchnorm, set_cutoff

    config = TrialConfig.from_dict({**TINY, "head_size": 8, **overrides})
    model = build_model(config, 3)
    size = config.image_size  # the same calibration images for every member: the same BatchNorm statistics
    calibrate_batchnorm(model, np.random.default_rng(9).uniform(0, 255, (16, size, size, 3)).astype("float32"))
    set_cutoff(model, config, config.cutoff())
    rng = np.random.default_rng(seed_noise)
    for v in model.trainable_variables:
        v.assign(keras.ops.convert_to_numpy(v) + rng.normal(0, 0.05, tuple(v.shape)).astype("float32"))
    return Member(model, config)


@pytest.fixture(scope="module")
def members():
    """Members at cutoffs 17 (picked twice) and 10 of one backbone init; one of another seed at another image
    size and cutoff 14; one with nothing frozen."""
    from dataclasses import replace

    specs = [({"freeze_cutoff": 17}, 1, 2), ({"freeze_cutoff": 10}, 2, 1),
             ({"freeze_cutoff": 14, "seed": 7, "image_size": 40}, 3, 1), ({"freeze_cutoff": 0}, 4, 1)]
    return [replace(trained_like(o, noise), weight=w, name=f"member{i}") for i, (o, noise, w) in enumerate(specs)]


@pytest.mark.numerics
def test_the_shared_prefix_ensemble_equals_the_mean_of_its_members(members):
    """The members at cutoffs 17 and 10 share one trunk; another seed's backbone (another image size: resized
    inside the model) and the member with nothing frozen get paths of their own. The model's outputs equal the
    weighted mean of the members' own models within 1e-5 (both through `predict`: the shared trunk runs the same
    graph operations, bit for bit here; the float32 Average sums and divides in another order than numpy)."""
    from tsweep.search.ensemble_model import ensemble_model, member_mean, trunks

    assert trunks(members) == [[0, 1], [2], [3]]  # owners first: the deepest cutoff of each trunk
    model = ensemble_model(members)
    names = {layer.name for layer in model.layers}
    assert {"trunk0_to10", "trunk0_10to17", "trunk1_to14", "member3", "resize32"} <= names
    assert model.inputs[0].shape[1] == 40  # the largest member's size
    x = np.random.default_rng(0).uniform(0, 255, (5, 40, 40, 3)).astype("float32")
    np.testing.assert_allclose(model.predict(x, verbose=0), member_mean(members, x), atol=1e-5)


def test_members_of_one_backbone_cost_one_backbone_pass(members):
    """Members at cutoffs 17 and 10: the layers below 10 once, 10 to 17 once frozen (member0's) and once
    trained (member1's), then the two heads."""
    from tsweep.search.ensemble_model import ensemble_model
    from tsweep.trainers.split import split_model

    model = ensemble_model(members[:2])
    paths = sorted(layer.name for layer in model.layers if layer.name.startswith("trunk"))
    assert paths == ["trunk0_10to17", "trunk0_preprocess", "trunk0_to10"]  # then each member's own suffix
    shared = split_model(members[1].model, members[1].config, 10)[0].count_params()  # the layers below 10
    assert model.count_params() == members[0].model.count_params() + members[1].model.count_params() - shared


# --- the export -----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def sweep(shapes_dir, cache_dir, tmp_path_factory):
    """A fake sweep over the shapes data with three really trained trials (checkpoints as Ray keeps them):
    t1 and t2 share their backbone init (cutoffs 17 and 14), t3 has its own seed; t4 is t1's exact copy."""
    from tsweep.spaces.config import TrialConfig
    from tsweep.trainers.checkpoint import save_checkpoint
    from tsweep.trainers.data import load_dataset
    from tsweep.trainers.train import train

    base = tmp_path_factory.mktemp("ensemble")
    data_options = {"data_dir": str(shapes_dir), "val_fraction": 0.2, "seed": 0, "cache_dir": str(cache_dir)}
    experiment = base / "ray" / "sweep"
    data = load_dataset(image_size=32, **data_options)
    records = []
    for trial_id, extra in (("t1", {}), ("t2", {"freeze_cutoff": 14}), ("t3", {"seed": 5})):
        config = {**TINY, "head_size": 8, **extra}

        def keep(history, model, trial_id=trial_id):
            save_checkpoint(experiment / trial_id / f"checkpoint_{history[-1]['epoch'] - 1:06d}", model, history)

        result = train(TrialConfig.from_dict(config), data, on_epoch=keep)
        rec = record(trial_id, "completed", [h["val_accuracy"] for h in result.history], budget=2, **config)
        records.append(rec)
    info = {**sweep_info("sweep", data=data_options, max_epochs=2), "experiment": str(experiment)}
    return write_fake_sweep(base / "results" / "sweep", records, info), records, data


def forced_export(root, monkeypatch, formats: str):
    """`export_winner --ensemble 3 --from-trial`, forced to keep the ensemble (the decision is tested above, on
    fake predictions)."""
    import tsweep.search.ensemble as ensemble
    from tsweep.search.export import export_winner

    monkeypatch.setattr(ensemble, "is_better", lambda selection, metric: True)  # the selection's verdict
    monkeypatch.setattr(ensemble, "beats", lambda score, single, metric: True)  # and the built model's
    return export_winner(root, ensemble=3, retrain=False, formats=formats, progress=lambda _: None)


def test_an_ensemble_exports_and_loads_like_a_single_model(sweep, monkeypatch):
    """The keras and saved_model formats are written and checked by their own runtimes against the ensemble,
    the .keras loads with safe_mode, and the card lists the members, both scores and the inference cost."""
    import keras

    from tsweep.search.predict import load_export

    root, records, data = sweep
    export = forced_export(root, monkeypatch, "keras,saved_model")
    metrics = json.loads((export / "metrics.json").read_text())
    summary = metrics["ensemble"]
    assert summary["kept"] and summary["members_are"] == "best checkpoints, as they are"
    assert list(metrics["parity"]["formats"]) == ["keras", "saved_model"]  # within tolerance, or no export
    assert {m["trial_id"] for m in summary["members"]} <= {"t1", "t2", "t3"}
    config = json.loads((export / "config.json").read_text())
    assert config["image_size"] == 32 and [m["trial_id"] for m in config["ensemble"]] == \
        [m["trial_id"] for m in summary["members"]]
    model, classes, size = load_export(export)
    loaded = keras.saving.load_model(export / "model.keras", safe_mode=True)
    assert "Preprocess" not in json.dumps(loaded.get_config())
    np.testing.assert_allclose(model.predict(data.x_test, verbose=0), loaded.predict(data.x_test, verbose=0))
    accuracy = float(np.mean(as_probabilities(model.predict(data.x_test, verbose=0)).argmax(1) == data.y_test))
    assert accuracy == pytest.approx(metrics["test"]["accuracy"], abs=1e-6)
    card = (export / "MODEL_CARD.md").read_text()
    assert f"ensemble of {len(summary['members'])} trials" in card and "## Ensemble" in card
    assert "ms per image vs" in card and "single winner (trial" in card
    for m in summary["members"]:
        assert f"| {m['name']} | {m['trial_id']} | {m['weight']} |" in card


@pytest.mark.slow
def test_an_ensemble_exports_to_every_installed_format(sweep, monkeypatch):
    """LiteRT (float32 and int8) and ONNX too, each checked by its own runtime (minutes on a busy 2-core machine:
    three MobileNetV2 paths converted four times)."""
    export = forced_export(sweep[0], monkeypatch, ",".join(AVAILABLE))
    assert list(json.loads((export / "metrics.json").read_text())["parity"]["formats"]) == AVAILABLE


def test_an_ensemble_that_is_not_better_keeps_the_single_model_and_says_so(sweep, tmp_path):
    """t1 and an exact copy of its checkpoint (t4) are the only candidates: their average is t1 itself."""
    from tsweep.search.export import export_winner

    root, records, _ = sweep
    info = json.loads((root / "sweep.json").read_text())
    experiment = tmp_path / "ray"
    shutil.copytree(f"{info['experiment']}/t1", experiment / "t1")
    shutil.copytree(f"{info['experiment']}/t1", experiment / "t4")
    twin = {**records[0], "trial_id": "t4"}
    copy = write_fake_sweep(tmp_path / "copy", [records[0], twin], {**info, "experiment": str(experiment)})
    lines: list[str] = []
    export = export_winner(copy, ensemble=2, retrain=False, progress=lines.append)
    metrics = json.loads((export / "metrics.json").read_text())
    assert not metrics["ensemble"]["kept"] and metrics["trial_id"] == "t1"
    assert "not better than the single winner" in metrics["ensemble"]["reason"]
    assert any("keeping the single model" in line for line in lines)
    card = (export / "MODEL_CARD.md").read_text()
    assert "`--ensemble 2` was asked for and not kept" in card and "winner (trial t1)" in card
    assert "ensemble" not in json.loads((export / "config.json").read_text())


def test_bad_ensemble_requests_fail_before_any_data_is_read(tmp_path):
    from tests.fake_sweeps import demo_trials
    from tsweep.search.export import export_winner

    root = write_fake_sweep(tmp_path / "s", demo_trials(), sweep_info("s", data={"data_dir": str(tmp_path / "gone")}))
    with pytest.raises(SweepConfigError, match="give --trial or --ensemble, not both"):
        export_winner(root, trial_id="t1", ensemble=3, progress=lambda _: None)
    with pytest.raises(SweepConfigError, match=r"`--ensemble` must be 0 \(off\) or in \[2, 64\], got 1"):
        export_winner(root, ensemble=1, progress=lambda _: None)
