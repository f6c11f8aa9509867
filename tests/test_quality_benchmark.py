"""benchmarks/quality.py without running a sweep: its options, the halved validation split, the summary table."""

from __future__ import annotations

import pytest

from tests.bench_scripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("quality")


def test_options(bench):
    full = bench.parse_args([])
    assert (full.datasets, full.seeds, full.trials, full.max_epochs, full.ensembles) == \
        (["flowers12", "hymenoptera"], 3, 16, 8, [3, 5])
    assert bench.parse_args(["--ensembles", "5,3,3"]).ensembles == [3, 5]
    assert (full.first_seed, bench.parse_args(["--first-seed", "1", "--seeds", "2"]).first_seed) == (0, 1)
    for bad in (["--ensembles", "1"], ["--ensembles", "x"], ["--trials", "0"], ["--first-seed", "-1"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def test_val_is_halved_per_class_into_val_and_test(bench, tmp_path):
    source = tmp_path / "src"
    for split, counts in (("train", (3, 2)), ("val", (5, 4))):
        for cls, n in zip(("ants", "bees"), counts):
            (source / split / cls).mkdir(parents=True)
            for i in range(n):
                (source / split / cls / f"{i}.jpg").write_bytes(b"x")
    out = bench.halve_val(source, tmp_path / "out")
    count = {(s, c): len(list((out / s / c).iterdir())) for s in ("train", "val", "test") for c in ("ants", "bees")}
    assert count == {("train", "ants"): 3, ("train", "bees"): 2, ("val", "ants"): 3, ("test", "ants"): 2,
                     ("val", "bees"): 2, ("test", "bees"): 2}
    val = {p.name for p in (out / "val" / "ants").iterdir()}
    assert not val & {p.name for p in (out / "test" / "ants").iterdir()}  # disjoint halves
    assert all(p.is_symlink() for p in (out / "test" / "bees").iterdir())


def test_summary_table(bench):
    runs = [{"dataset": "d", "part": "single", "test_accuracy": a, "test_balanced_accuracy": a, "ms_per_image": 2.0}
            for a in (0.9, 0.8)]
    runs += [{"dataset": "d", "part": "ensemble3", "test_accuracy": 0.95, "test_balanced_accuracy": 0.9,
              "ms_per_image": 3.0, "kept": k} for k in (True, False)]
    rows = bench.summarise(runs)
    assert rows[0]["test_mean"] == pytest.approx(0.85) and rows[1]["kept"] == 1
    text = bench.table(rows)
    assert "| d | single | 2 | 0.8500 ± 0.0707 |" in text and "| 1/2 |" in text
