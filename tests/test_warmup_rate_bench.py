"""benchmarks/warmup_rate.py without running a sweep: its options and its mean +- sd."""

from __future__ import annotations

import pytest

from tests.bench_scripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("warmup_rate")


def test_options_default_to_the_measured_grid(bench):
    args = bench.parse_args([])
    assert (args.datasets, args.rates, args.seeds, args.trials, args.max_epochs) == \
        ("hymenoptera,flowers12", "1e-3,3e-3,1e-2", 3, 24, 12)
    assert bench.parse_args(["--seeds", "1", "--rates", "1e-2"]).rates == "1e-2"


def test_mean_and_sample_sd(bench):
    assert bench.mean_sd([0.915, 0.9216, 0.9085]) == "0.9150 +- 0.0066"
    assert bench.mean_sd([0.5]) == "0.5000 +- 0.0000"  # one seed: no spread to show
