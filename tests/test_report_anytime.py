"""`tsweep report`'s best-so-far against wall time (one sweep or several) and its search summary."""

from __future__ import annotations

from tests.fake_sweeps import demo_trials, record, sweep_info, write_fake_sweep
from tests.test_report import Page
from tsweep.search.objective import Objective
from tsweep.search.report import search_facts, write_report
from tsweep.search.report_stats import best_so_far, epoch_points


def timed(trial: dict, start: float, at: list[float] | None) -> dict:
    trial["started"] = start
    for i, row in enumerate(trial["history"]):
        row["epoch_time_s"] = 2.0
        if at is not None:
            row["at"] = at[i]
    return trial


def test_best_so_far_steps_at_each_improvement():
    trials = [timed(record("a", "completed", [0.5, 0.8]), 100.0, [110.0, 130.0]),
              timed(record("b", "pruned", [0.6]), 105.0, [115.0]),
              timed(record("c", "completed", [0.7, 0.75]), 120.0, None)]  # written before epochs had "at"
    points = epoch_points(trials, "val_accuracy")
    assert points == [(110.0, 0.5), (115.0, 0.6), (122.0, 0.7), (124.0, 0.75), (130.0, 0.8)]
    assert best_so_far(points, Objective(), start=100.0) == [(10.0, 0.5), (15.0, 0.6), (22.0, 0.7), (24.0, 0.75),
                                                              (30.0, 0.8)]
    losses = [(1.0, 0.9), (2.0, 1.2), (3.0, 0.4)]
    assert best_so_far(losses, Objective("val_loss")) == [(1.0, 0.9), (3.0, 0.4)]  # min: lower is better


def test_search_facts_of_new_and_old_sweeps():
    info = sweep_info("new")
    info["search"] = "tpe"
    info["options"].update(num_samples=0, time_budget="20m", warm_start=["results/old"])
    assert search_facts(info) == [("search", "tpe, ASHA pruning"), ("trials at most", "no limit"),
                                  ("time budget", "20m"), ("warm start", "results/old")]
    assert search_facts(sweep_info("old"))[:3] == [("search", "random, ASHA pruning"), ("trials at most", "4"),
                                                   ("time budget", "none")]


def test_report_of_several_sweeps_compares_them(tmp_path):
    old = write_fake_sweep(tmp_path / "old", [timed(t, 1000.0, None) for t in demo_trials("o")])
    info = sweep_info("new")
    info["search"] = "tpe"
    info["options"]["time_budget"] = "90s"
    new = write_fake_sweep(tmp_path / "new", [timed(t, 2000.0, None) for t in demo_trials("n")], info)
    out = write_report([new, old], out=tmp_path / "both.html", progress=lambda _m: None)
    page = Page(out.read_text())
    assert page.sections[:5] == ["summary", "summary-2", "leaderboard", "anytime", "all"]
    assert "best so far against wall time" in [img["alt"] for img in page.images]
    assert (tmp_path / "both_files" / "anytime.png").stat().st_size > 1000
    words = " ".join(page.text)
    assert "tpe, ASHA pruning" in words and "random, ASHA pruning" in words and "90s" in words
    assert "o1" in words and "n1" in words  # the leaderboard of all the sweeps holds both sweeps' trials
    single = Page(write_report(old, progress=lambda _m: None).read_text())
    assert "anytime" in single.sections and "all" not in single.sections
