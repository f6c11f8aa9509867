"""benchmarks/anytime.py without running a sweep: its options, the table's figures, the targets and the plot."""

from __future__ import annotations

import pytest

from tests.bench_scripts import load_benchmark


@pytest.fixture(scope="module")
def bench():
    return load_benchmark("anytime")


def test_options(bench, tmp_path):
    args = bench.parse_args([])
    assert (args.budget_s, args.seeds, args.methods) == (600, 3, ["random", "tpe", "naive", "hyperband"])
    assert [d.name for d in args.datasets] == ["hymenoptera", "flowers12"]
    args = bench.parse_args(["--datasets", str(tmp_path), "--budget", "20s", "--methods", "tpe,naive"])
    assert (args.datasets, args.budget_s, args.methods) == ([tmp_path.resolve()], 20, ["tpe", "naive"])
    for bad in (["--methods", "grid"], ["--budget", "soon"], ["--seeds", "0"]):
        with pytest.raises(SystemExit):
            bench.parse_args(bad)


def run(method: str, seed: int, curve: list[tuple[float, float]]) -> dict:
    return {"dataset": "d", "method": method, "seed": seed, "trials": 3, "epochs": 9, "wall_s": 100, "curve": curve}


def test_figures_targets_and_plot(bench, tmp_path):
    runs = [run("random", 0, [(10, 0.5), (15, 0.8), (90, 0.85)]), run("tpe", 0, [(30, 0.6), (70, 0.9)]),
            run("naive", 0, [(40, 0.5), (95, 0.7)]), run("hyperband", 0, [(60, 0.75)])]
    rows = {r["method"]: r for r in bench.summarize(runs, 100)}
    assert (rows["random"]["best_25%"], rows["random"]["best_50%"], rows["random"]["best_100%"]) == (0.8, 0.8, 0.85)
    assert rows["tpe"]["best_25%"] is None and rows["hyperband"]["best_100%"] == 0.75
    assert rows["random"]["naive_final"] == 0.7 and rows["random"]["to_naive_s"] == 15
    assert rows["tpe"]["to_naive_s"] == 70 and rows["naive"]["to_naive_s"] == 95
    lines = bench.targets(list(rows.values()))
    assert lines[0] == "PASS d: every tsweep run's best (0.8500 at the worst) >= naive's and Hyperband's (0.7500)"
    assert lines[1] == "FAIL d: tsweep reaches the naive final best within 1/5 of the budget (15%, 70%)"
    text = bench.table(list(rows.values()))
    assert "15 s (15%)" in text and "random" in text.splitlines()[1]
    bench.plot(runs, tmp_path / "p.png", 100)
    assert (tmp_path / "p.png").read_bytes()[:4] == b"\x89PNG"


def test_the_json_keeps_every_run_so_far_and_says_whether_it_is_complete(bench, tmp_path):
    import json

    args = bench.parse_args(["--datasets", str(tmp_path), "--budget", "100s", "--json", str(tmp_path / "a.json")])
    runs = [{**run("random", 0, [(10, 0.5)]), "dataset": tmp_path.name}]
    bench.write_json(args, {"cpus": 2}, runs, complete=False)
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["complete"] is False and [r["method"] for r in doc["runs"]] == ["random"]
    assert doc["rows"][0]["best_100%"] == 0.5
    runs.append({**run("naive", 0, [(50, 0.4)]), "dataset": tmp_path.name})
    rows = bench.write_json(args, {"cpus": 2}, runs, complete=True)
    doc = json.loads((tmp_path / "a.json").read_text())
    assert doc["complete"] is True and doc["rows"] == rows and len(rows) == 2
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]  # no temporary file left beside it
