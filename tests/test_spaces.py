"""Space files: parsing, validation errors that name file and key, and compiling to Ray and KerasTuner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from tsweep.errors import SweepConfigError
from tsweep.spaces.config import TrialConfig
from tsweep.spaces.space import bundled_spaces, load_space


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "space.yaml"
    path.write_text(text)
    return path


GOOD = """
description: test space
backbone: mobilenet_v2
image_size: 32
epochs: 3
head_size: {choice: [0, 16]}
dropout: {uniform: [0.0, 0.5]}
learning_rate: {loguniform: [1e-5, 1e-2]}
freeze_cutoff: {randint: [10, 17]}
optimizer: {choice: [adam, sgd]}
augmentation: {fixed: light}
"""


def test_every_bundled_space_loads_and_default_is_mobilenet_v2_224():
    names = [n for n, _ in bundled_spaces()]
    assert {"default", "demo", "feature_extraction", "finetune", "backbones"} <= set(names)
    for name in names:
        assert load_space(name).params, name
    fixed = load_space("default").fixed
    assert (fixed["backbone"], fixed["alpha"], fixed["image_size"]) == ("mobilenet_v2", 1.0, 224)


def test_parse_kinds_and_yaml_exponent_strings(tmp_path):
    space = load_space(write(tmp_path, GOOD))
    kinds = {k: d.kind for k, d in space.params.items()}
    assert kinds == {"backbone": "fixed", "image_size": "fixed", "epochs": "fixed", "head_size": "choice",
                     "dropout": "uniform", "learning_rate": "loguniform", "freeze_cutoff": "randint",
                     "optimizer": "choice", "augmentation": "fixed"}
    # PyYAML reads 1e-5 as a string; the loader makes it a float
    assert space.params["learning_rate"].values == (1e-5, 1e-2)
    assert set(space.sampled) == {"head_size", "dropout", "learning_rate", "freeze_cutoff", "optimizer"}


def test_compiles_to_ray_param_space(tmp_path):
    from ray.tune.search.sample import Categorical, Float, Integer

    from tsweep.search.ray_space import to_ray

    ray_space = to_ray(load_space(write(tmp_path, GOOD)))
    assert isinstance(ray_space["head_size"], Categorical) and ray_space["head_size"].categories == [0, 16]
    assert isinstance(ray_space["dropout"], Float)
    assert isinstance(ray_space["learning_rate"], Float)
    assert isinstance(ray_space["learning_rate"].sampler, Float._LogUniform)
    integer = ray_space["freeze_cutoff"]
    assert isinstance(integer, Integer) and (integer.lower, integer.upper) == (10, 18)  # upper exclusive
    assert ray_space["backbone"] == "mobilenet_v2" and ray_space["augmentation"] == "light"
    samples = ray_space["freeze_cutoff"].sample(size=400, random_state=0)  # seeded: the same draws every run
    assert set(samples) == set(range(10, 18))  # both ends reachable, nothing outside [10, 17]
    rates = ray_space["learning_rate"].sample(size=400, random_state=0)
    decades = np.histogram(np.log10(rates), bins=3, range=(-5, -2))[0]  # log-uniform: about a third per decade
    assert min(rates) >= 1e-5 and max(rates) <= 1e-2 and all(90 < n < 180 for n in decades), decades


def test_compiles_to_keras_tuner_hyperparameters(tmp_path):
    import keras_tuner

    from tsweep.trainers.hypermodel import to_keras_tuner

    hp = keras_tuner.HyperParameters()
    config = to_keras_tuner(load_space(write(tmp_path, GOOD)), hp)
    names = {p.name: type(p).__name__ for p in hp.space}
    assert names["head_size"] == "Choice" and names["dropout"] == "Float"
    assert names["freeze_cutoff"] == "Int" and names["backbone"] == "Fixed"
    assert hp.space[[p.name for p in hp.space].index("learning_rate")].sampling == "log"
    TrialConfig.from_dict(config)  # defaults drawn by KerasTuner are a valid trial config


def test_samples_are_valid_configs(tmp_path):
    space = load_space(write(tmp_path, GOOD))
    samples = [space.sample(seed) for seed in range(40)]
    assert space.sample(7) == samples[7]  # a seed gives the same config again
    for sample in samples:
        config = TrialConfig.from_dict(sample)
        assert 10 <= config.freeze_cutoff <= 17 and 1e-5 <= config.learning_rate <= 1e-2
        assert sample["head_size"] in (0, 16) and sample["optimizer"] in ("adam", "sgd")
        assert (sample["backbone"], sample["image_size"], sample["augmentation"]) == ("mobilenet_v2", 32, "light")
    for key in space.sampled:  # every sampled key really varies across seeds
        assert len({sample[key] for sample in samples}) > 1, key


@pytest.mark.parametrize("text, words", [
    ("dropuot: 0.1\n", ["unknown key `dropuot`", "did you mean `dropout`"]),
    ("dropout: {uniform: [0.6, 0.1]}\n", ["`dropout`", "low < high"]),
    ("dropout: {uniform: [0.0, 1.5]}\n", ["`dropout` must be in [0.0, 0.95], got 1.5"]),
    ("learning_rate: {loguniform: [0, 0.1]}\n", ["loguniform", "low > 0"]),
    ("freeze_cutoff: 40\n", ["`freeze_cutoff` must be in [0, 17], got 40", "tsweep backbones"]),
    ("freeze_cutoff: {choice: [3, 18]}\n", ["`freeze_cutoff` must be in [0, 17], got 18"]),
    ("head_size: {normal: [0, 1]}\n", ["`head_size`", "choice, uniform, loguniform, randint, fixed"]),
    ("head_size: [16, 32]\n", ["`head_size` is a list", "choice"]),
    ("optimizer: {choice: [adam, lbfgs]}\n", ["`optimizer` must be one of", "lbfgs"]),
    ("backbone: resnet9000\n", ["unknown backbone 'resnet9000'"]),
    ("image_size: 16\n", ["`image_size`", "16"]),
    ("epochs: 3\nwarmup_epochs: 5\n", ["`warmup_epochs` must be in [0, 3], got 5"]),
    ("dropout: {uniform: [a, b]}\n", ["`dropout` must be a number"]),
    ("head_size: {uniform: [1, 8]}\n", ["`uniform` is for float keys", "randint"]),
    ("key: [unclosed\n", ["not valid YAML"]),
    ("- just\n- a list\n", ["must be a mapping"]),
])
def test_bad_space_files_name_file_key_and_fix(tmp_path, text, words):
    path = write(tmp_path, text)
    with pytest.raises(SweepConfigError) as err:
        load_space(path)
    message = str(err.value)
    assert str(path) in message or "not valid YAML" in message
    for word in words:
        assert word in message, message


def test_missing_space_file_and_unknown_name():
    with pytest.raises(SweepConfigError, match="does not exist"):
        load_space("no/such/space.yaml")
    with pytest.raises(SweepConfigError, match="unknown space 'nope'.*default"):
        load_space("nope")


def test_overrides_replace_space_values_and_are_validated(tmp_path):
    space = load_space(write(tmp_path, GOOD)).with_fixed(weights="none", epochs=2)
    assert space.fixed["weights"] == "none" and space.fixed["epochs"] == 2
    with pytest.raises(SweepConfigError, match="unknown backbone"):
        load_space(write(tmp_path, GOOD)).with_fixed(backbone="alexnet")
    with pytest.raises(SweepConfigError, match="unknown key `colour`"):
        load_space(write(tmp_path, GOOD)).with_fixed(colour="red")


def test_freeze_fraction_with_sampled_backbones():
    space = load_space("backbones")
    assert space.params["backbone"].kind == "choice"
    for backbone in space.params["backbone"].values:
        config = TrialConfig.from_dict({"backbone": backbone, "freeze_fraction": 1.0})
        assert config.is_feature_extraction()
        assert 0 < TrialConfig.from_dict({"backbone": backbone, "freeze_fraction": 0.5}).cutoff()


def test_trial_config_canonical_backbone_and_unknown_keys():
    assert TrialConfig.from_dict({"backbone": "MobileNetV2"}).backbone == "mobilenet_v2"
    with pytest.raises(SweepConfigError, match="give `freeze_cutoff` or `freeze_fraction`, not both"):
        TrialConfig.from_dict({"freeze_cutoff": 3, "freeze_fraction": 0.5})
    with pytest.raises(SweepConfigError, match="`alpha` applies to the MobileNet family"):
        TrialConfig.from_dict({"backbone": "vgg16", "alpha": 0.5})


def test_spaces_package_does_not_import_tensorflow():
    import subprocess
    import sys

    code = ("import sys, tsweep.spaces.space as s; s.load_space('default'); "
            "print('tensorflow' in sys.modules, 'keras' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_weights_paths_become_absolute_for_trials_running_elsewhere(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = TrialConfig.from_dict({"weights": "w/file.h5"})
    assert config.weights == str(tmp_path / "w" / "file.h5")
    assert TrialConfig.from_dict({"weights": "ImageNet"}).weights == "imagenet"
    assert TrialConfig.from_dict({"weights": None}).weights == "none"
