"""Sweep options checked before Ray starts: names, sizes, the feature cache's budget."""

from __future__ import annotations

import os

import pytest

from tsweep.errors import SweepConfigError
from tsweep.search.sweep import SweepOptions, check_name, check_options, feature_settings, parse_size


def test_sizes():
    assert parse_size("512MB") == 512 * 2**20 and parse_size("4GB") == 4 * 2**30
    assert parse_size("1.5g") == int(1.5 * 2**30) and parse_size("1000") == 1000 and parse_size("2GiB") == 2**31
    with pytest.raises(SweepConfigError, match="`--cache-memory` must be a size like 512MB or 4GB, got 'lots'"):
        parse_size("lots")


def test_feature_cache_budget_is_split_over_concurrent_trials():
    per_node = max(1, int((os.cpu_count() or 1) / 0.5))
    settings = feature_settings(SweepOptions(data="d", cache_memory="8GB", cpus_per_trial=0.5, cache_float16=True))
    assert settings == {"memory_bytes": 8 * 2**30 // per_node, "dtype": "float16"}
    assert feature_settings(SweepOptions(data="d", feature_cache=False)) is None


@pytest.mark.parametrize("name", ["../up", "a/b", "..", "/abs", "", ".hidden"])
def test_names_that_escape_results_are_refused(name):
    with pytest.raises(SweepConfigError, match="`--name` must be a plain folder name"):
        check_name(name)


@pytest.mark.parametrize("changes, needle", [
    ({"num_samples": 0}, "--num-samples"), ({"reduction_factor": 1}, "--reduction-factor"),
    ({"val_fraction": 1.5}, "--val-fraction"), ({"metric": "auc"}, "--metric"),
    ({"cache_memory": "big"}, "--cache-memory"), ({"cpus_per_trial": 0}, "--cpus-per-trial"),
])
def test_bad_options_are_named(changes, needle):
    with pytest.raises(SweepConfigError, match=needle):
        check_options(SweepOptions(data="d", **changes))
