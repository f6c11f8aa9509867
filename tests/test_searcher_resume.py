"""`tsweep resume` of a TPE sweep whose driver was killed: the resumed searcher knows every trial that had
finished, including those Ray's last saved searcher state missed, before it suggests the next config."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.fake_sweeps import TrialGate
from tests.fake_trainable import use_fake_trainable
from tsweep.search.records import read_trials

PROJECT = Path(__file__).resolve().parents[1]


def wait_for_experiment_state(root: Path, timeout: float) -> None:
    """Ray writes its experiment state from a background thread after a step; `tsweep resume` needs one. The
    state waited for (a file that exists) stays, so this bounded wait has no race to lose."""
    deadline = time.monotonic() + timeout
    while not (list(root.glob("experiment_state-*.json")) and (root / "tuner.pkl").is_file()):
        assert time.monotonic() < deadline, f"Ray never saved its experiment state in {root}"
        time.sleep(0.2)


@pytest.mark.slow
def test_resumed_tpe_searcher_knows_every_finished_trial(tmp_path, monkeypatch):
    import ray

    from tsweep.search.objective import Objective
    from tsweep.search.options import SweepOptions
    from tsweep.search.optuna_search import TsweepOptunaSearch
    from tsweep.search.tuner import resume_tuner

    root = tmp_path / "results" / "tpe"
    # Trials 1-3 run through; the 4th and 5th are held after epoch 1, so with two CPUs busy the first three
    # have ended (and are recorded) when both are held. Then the driver is killed.
    with TrialGate(lambda gate, trial_id, epoch: len({t for t, _ in gate.check_ins}) > 3) as gate, \
            open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen([sys.executable, "-m", "tests.fake_driver", str(root), gate.path, "tpe", "8"],
                                  cwd=PROJECT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
        gate.watch(driver, "the driver")
        try:
            gate.wait_until(lambda g: len(g.held) == 2, 300, "two trials held after epoch 1")
            wait_for_experiment_state(root, 120)
        finally:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait()
    before = {r["trial_id"]: r for r in read_trials(root)}
    finished = {t for t, r in before.items() if r["status"] == "completed"}
    assert len(finished) == 3 and sum(r["status"] == "running" for r in before.values()) == 2

    seen: list[tuple[str, set[str], int]] = []  # (trial id suggested, trials known then, trials in the study)
    suggest = TsweepOptunaSearch.suggest

    def spy(self, trial_id):
        config = suggest(self, trial_id)
        seen.append((trial_id, self.known_trials(), len(self._ot_study.trials)))
        return config

    monkeypatch.setattr(TsweepOptunaSearch, "suggest", spy)
    ray.shutdown()
    ray.init(num_cpus=2, include_dashboard=False)
    try:
        with TrialGate(lambda gate, trial_id, epoch: False) as gate:
            use_fake_trainable(monkeypatch, gate.path)
            results = resume_tuner(SweepOptions(data="unused"), {}, str(root), root=root, objective=Objective())
    finally:
        ray.shutdown()
    assert seen, "the resumed sweep suggested no config"
    first_id, known, in_study = seen[0]
    assert first_id not in before and finished <= known, (finished, known)
    assert in_study >= len(finished) + 1
    after = {r["trial_id"]: r for r in read_trials(root)}
    ray_trials = {r.metrics["trial_id"] for r in results}
    assert len(ray_trials) == 8 and all(after[t]["status"] == "completed" for t in ray_trials), after
    # Trials started after Ray's last saved state (how many depends on when Ray saved it) cannot continue: their
    # records say so instead of staying "running"; the completed ones stay completed.
    for trial_id in set(after) - ray_trials:
        assert after[trial_id]["status"] == "completed" or (
            after[trial_id]["status"] == "stopped" and after[trial_id]["note"].startswith("lost")), after[trial_id]
    assert set(after) <= seen[-1][1] | {t for t, _, _ in seen}
    assert Objective().metric in after[first_id]["history"][-1]
