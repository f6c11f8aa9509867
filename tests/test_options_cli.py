"""`tsweep run`'s flags are built from SweepOptions' fields: every field is reachable, values round-trip,
and stored sweeps of older versions still load."""

from __future__ import annotations

import dataclasses

import pytest

from tsweep.search.cli import build_parser
from tsweep.search.options import SweepOptions, options_from_args, options_from_dict


def parse(*argv: str) -> SweepOptions:
    return options_from_args(build_parser().parse_args(["run", *argv]))


def test_defaults_of_the_cli_are_the_dataclass_defaults():
    assert parse("--data", "d") == SweepOptions(data="d")


def test_every_field_has_a_flag_that_changes_it():
    base = SweepOptions(data="d")
    changed = {"space": "finetune", "num_samples": 5, "name": "n", "results_dir": "r", "storage": "/s",
               "metric": "val_loss", "mode": "min", "grace_period": 2, "reduction_factor": 4,
               "cpus_per_trial": 0.5, "gpus_per_trial": 0.25, "address": "auto", "max_failures": 1,
               "cache_memory": "4GB", "cache_disk": "9GB", "val_fraction": 0.3, "seed": 7, "cache_dir": "/c",
               "formats": "keras,onnx", "search": "tpe", "time_budget": "20m", "warm_start": ["a", "b"],
               "ensemble": 3, "tta": "flip"}
    argv = ["--data", "d"]
    for key, value in changed.items():
        argv += ["--" + key.replace("_", "-"), *(value if isinstance(value, list) else [str(value)])]
    bools = [f for f in dataclasses.fields(SweepOptions) if isinstance(f.default, bool)]
    for f in bools:
        argv.append(("--no-" if f.default else "--") + f.name.replace("_", "-"))
    argv += ["--backbone", "mobilenet", "--weights", "none", "--max-epochs", "3", "--image-size", "160"]
    opts = parse(*argv)
    for key, value in changed.items():
        assert getattr(opts, key) == value, key
    for f in bools:
        assert getattr(opts, f.name) is (not f.default), f.name
    assert opts.overrides == {"backbone": "mobilenet", "weights": "none", "epochs": 3, "image_size": 160}
    # nothing was left at its default by accident: the test covers every field
    untouched = [f.name for f in dataclasses.fields(SweepOptions) if getattr(opts, f.name) == getattr(base, f.name)]
    assert untouched == ["data"]


def test_data_is_required():
    with pytest.raises(SystemExit):
        build_parser().parse_args(["run"])


def test_an_older_sweep_json_loads_and_unknown_keys_are_named():
    said = []
    opts = options_from_dict({"data": "d", "num_samples": 3, "from_the_future": 1}, said.append)
    assert opts == SweepOptions(data="d", num_samples=3)
    assert "from_the_future" in said[0]
