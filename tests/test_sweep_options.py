"""Sweep options checked before Ray starts: names, sizes, the feature cache's budget."""

from __future__ import annotations

import os

import pytest

from tsweep.errors import SweepConfigError
from tsweep.search.cache_budget import parse_size
from tsweep.search.sweep import SweepOptions, check_name, check_options, feature_settings
from tsweep.spaces.overrides import with_overrides


def test_sizes():
    assert parse_size("512MB") == 512 * 2**20 and parse_size("4GB") == 4 * 2**30
    assert parse_size("1.5g") == int(1.5 * 2**30) and parse_size("1000") == 1000 and parse_size("2GiB") == 2**31
    with pytest.raises(SweepConfigError, match="`--cache-memory` must be a size like 512MB or 4GB, got 'lots'"):
        parse_size("lots")


def test_feature_cache_budget_is_split_over_concurrent_trials():
    per_node = max(1, int((os.cpu_count() or 1) / 0.5))
    settings = feature_settings(SweepOptions(data="d", cache_memory="8GB", cpus_per_trial=0.5, cache_float16=True))
    assert settings == {"memory_bytes": 8 * 2**30 // per_node, "dtype": "float16", "waypoints": []}
    assert feature_settings(SweepOptions(data="d", feature_cache=False)) is None


def test_the_feature_cache_keeps_the_spaces_cutoffs_on_the_way(tmp_path):
    from tsweep.search.sweep import space_cutoffs
    from tsweep.spaces.space import load_space

    def space(cutoff: str):
        (tmp_path / "s.yaml").write_text(f"backbone: mobilenet_v2\n{cutoff}\n")
        return load_space(tmp_path / "s.yaml")

    assert feature_settings(SweepOptions(data="d"), space("freeze_cutoff: {choice: [17, 10, 13]}"))["waypoints"] \
        == [10, 13, 17]
    assert space_cutoffs(space("freeze_cutoff: {randint: [12, 14]}")) == [12, 13, 14]
    assert space_cutoffs(space("freeze_cutoff: 0")) == []  # nothing frozen: no activations to keep
    assert space_cutoffs(space("freeze_fraction: 0.5")) == []  # cutoffs per backbone: none known up front


@pytest.mark.parametrize("name", ["../up", "a/b", "..", "/abs", "", ".hidden"])
def test_names_that_escape_results_are_refused(name):
    with pytest.raises(SweepConfigError, match="`--name` must be a plain folder name"):
        check_name(name)


@pytest.mark.parametrize("changes, needle", [
    ({"num_samples": -1}, "--num-samples"), ({"reduction_factor": 1}, "--reduction-factor"),
    ({"val_fraction": 1.5}, "--val-fraction"), ({"metric": "auc"}, "--metric"),
    ({"cache_memory": "big"}, "--cache-memory"), ({"cpus_per_trial": 0}, "--cpus-per-trial"),
])
def test_bad_options_are_named(changes, needle):
    with pytest.raises(SweepConfigError, match=needle):
        check_options(SweepOptions(data="d", **changes))


# ---- overrides report in their own terms -----------------------------------------------------------------
def _space(tmp_path, text: str):
    from tsweep.spaces.space import load_space

    path = tmp_path / "space.yaml"
    path.write_text("backbone: mobilenet_v2\nepochs: 12\n" + text)
    return load_space(path)


def test_max_epochs_shorter_than_the_warmup_shortens_it_with_a_notice():
    from tsweep.search.sweep import OVERRIDE_FLAGS
    from tsweep.spaces.space import Dist, load_space

    space, notices = with_overrides(load_space("default"), {"epochs": 1}, OVERRIDE_FLAGS)
    assert notices == ["--max-epochs 1 is shorter than the space's warmup_epochs 2: warm-up shortened to 1 epoch"]
    assert space.params["warmup_epochs"] == Dist("fixed", (1,)) and space.params["epochs"] == Dist("fixed", (1,))
    assert with_overrides(load_space("default"), {"epochs": 2}, OVERRIDE_FLAGS)[1] == []  # it fits: unchanged


@pytest.mark.parametrize("warmup, epochs, clipped, notice", [
    ("{choice: [0, 2, 4]}", 3, ("choice", (0, 2, 3)),
     "{choice: [0, 2, 4]}: warm-up shortened to at most 3 epochs (warmup_epochs {choice: [0, 2, 3]})"),
    ("{choice: [2, 4]}", 2, ("fixed", (2,)), "{choice: [2, 4]}: warm-up shortened to 2 epochs"),
    ("{randint: [1, 4]}", 2, ("randint", (1, 2)),
     "{randint: [1, 4]}: warm-up shortened to at most 2 epochs (warmup_epochs {randint: [1, 2]})"),
    ("{randint: [3, 5]}", 2, ("fixed", (2,)), "{randint: [3, 5]}: warm-up shortened to 2 epochs"),
])
def test_warmup_choices_and_ranges_are_clipped_to_max_epochs(tmp_path, warmup, epochs, clipped, notice):
    from tsweep.search.sweep import OVERRIDE_FLAGS
    from tsweep.spaces.space import Dist

    space, notices = with_overrides(_space(tmp_path, f"warmup_epochs: {warmup}\n"), {"epochs": epochs}, OVERRIDE_FLAGS)
    assert space.params["warmup_epochs"] == Dist(*clipped)
    assert notices == [f"--max-epochs {epochs} is shorter than the space's warmup_epochs {notice}"]


def test_the_default_warmup_is_shortened_too(tmp_path):
    from tsweep.search.sweep import OVERRIDE_FLAGS
    from tsweep.spaces.space import Dist

    space, notices = with_overrides(_space(tmp_path, ""), {"epochs": 1}, OVERRIDE_FLAGS)
    assert notices == ["--max-epochs 1 is shorter than the default warmup_epochs 2: warm-up shortened to 1 epoch"]
    assert space.params["warmup_epochs"] == Dist("fixed", (1,))


def test_image_size_override_fixes_the_input_size_over_the_default_space():
    from tsweep.search.sweep import OVERRIDE_FLAGS
    from tsweep.spaces.space import Dist, load_space

    space = load_space("default")
    assert space.params["image_size"] == Dist("fixed", (224,))
    fixed, notices = with_overrides(space, {"image_size": 160}, OVERRIDE_FLAGS)
    assert fixed.params["image_size"] == Dist("fixed", (160,)) and notices == []


@pytest.mark.parametrize("overrides, message", [
    ({"backbone": "resnet50"}, "--backbone resnet50: `freeze_cutoff` must be in [0, 4], got 17 (resnet50 has 4 "
     "cut points; `tsweep backbones` lists them) in the space {source}; drop --backbone or pass a --space that fits"),
    ({"backbone": "resnet50", "epochs": 1}, "--backbone resnet50: `freeze_cutoff` must be in [0, 4]"),
    ({"backbone": "nosuch"}, "--backbone nosuch: unknown backbone 'nosuch'"),
    ({"epochs": 0}, "--max-epochs 0: `epochs` must be in [1, 10000], got 0"),
    ({"epochs": "many"}, "--max-epochs many: `epochs` must be an integer, got 'many'"),
    ({"image_size": 16}, "--image-size 16: `image_size` must be in [32, 2048], got 16"),
])
def test_an_override_the_space_does_not_fit_is_named(overrides, message):
    from tsweep.search.sweep import OVERRIDE_FLAGS
    from tsweep.spaces.space import load_space

    space = load_space("default")
    with pytest.raises(SweepConfigError) as info:
        with_overrides(space, overrides, OVERRIDE_FLAGS)
    assert str(info.value).startswith(message.format(source=space.source))


def test_overrides_that_break_the_space_only_together_are_named_together(tmp_path):
    from tsweep.search.sweep import OVERRIDE_FLAGS

    space = _space(tmp_path, "")
    for alone in ({"backbone": "resnet50"}, {"alpha": 0.5}):
        with_overrides(space, alone, OVERRIDE_FLAGS)  # each fits on its own
    with pytest.raises(SweepConfigError) as info:
        with_overrides(space, {"backbone": "resnet50", "alpha": 0.5}, OVERRIDE_FLAGS)
    assert str(info.value) == (
        "--backbone resnet50 with override `alpha=0.5`: `alpha` applies to the MobileNet family only; remove it "
        f"for resnet50 in the space {space.source}; drop --backbone or the `alpha` override or pass a --space "
        "that fits")


def test_prepare_prints_the_override_notice(shapes_dir, tmp_path, monkeypatch):
    from tsweep.search import sweep

    monkeypatch.setattr(sweep, "check_weights", lambda space, progress: None)  # no TensorFlow here
    lines: list[str] = []
    opts = SweepOptions(data=str(shapes_dir), overrides={"epochs": 1}, results_dir=str(tmp_path / "results"),
                        cache_dir=str(tmp_path / "cache"))
    space, _, _ = sweep.prepare(opts, progress=lines.append)
    assert lines[0] == "--max-epochs 1 is shorter than the space's warmup_epochs 2: warm-up shortened to 1 epoch"
    assert space.sample()["warmup_epochs"] == 1 and space.sample()["epochs"] == 1


def test_resources_a_local_ray_can_never_provide_are_refused(monkeypatch):
    from tsweep.trainers import runtime

    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    monkeypatch.setattr(runtime, "visible_gpus", lambda: 0)
    with pytest.raises(SweepConfigError, match="--cpus-per-trial 3 is more than this machine's 2 CPUs"):
        check_options(SweepOptions(data="d", cpus_per_trial=3))
    with pytest.raises(SweepConfigError, match="--gpus-per-trial 0.5 needs more GPUs than this machine's 0"):
        check_options(SweepOptions(data="d", gpus_per_trial=0.5))
    check_options(SweepOptions(data="d", cpus_per_trial=2))  # fits
    check_options(SweepOptions(data="d", gpus_per_trial=3, address="auto"))  # a cluster's nodes may have them
    monkeypatch.setattr(runtime, "visible_gpus", lambda: 1)
    check_options(SweepOptions(data="d", gpus_per_trial=0.5))


@pytest.mark.parametrize("seed", [-1, 2**31])
def test_a_seed_out_of_range_is_refused(seed):
    with pytest.raises(SweepConfigError, match=r"--seed: `seed` must be in \[0, 2147483647\]"):
        check_options(SweepOptions(data="d", seed=seed))


def test_a_name_that_is_a_file_is_refused(tmp_path, shapes_dir):
    from tsweep.search.sweep import prepare

    (tmp_path / "README.md").write_text("not a sweep")
    with pytest.raises(SweepConfigError, match="--name README.md: .*README.md is a file, not a sweep folder"):
        prepare(SweepOptions(data=str(shapes_dir), name="README.md", results_dir=str(tmp_path)),
                progress=lambda _: None)
