"""Resume acts on the folder it is given: a copied sweep resumes in the copy (the original untouched), a moved
one where it now is. A real sweep through the CLI, interrupted by killing its driver while every trial is held
after its first epoch (tests.fake_sweeps.TrialGate), then resumed from the copy and from the moved original."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from pathlib import Path

import pytest

from tests.fake_sweeps import TrialGate
from tests.test_distributed import records, tsweep_cmd, wait_for_saved_state, write_space


def snapshot(root: Path) -> dict[str, bytes]:
    """Every file tsweep and Ray keep at the top of a sweep folder and in trials/, by name."""
    files = [*root.glob("trials/*.json"), *root.glob("experiment_state-*.json"), root / "sweep.json"]
    return {str(p.relative_to(root)): p.read_bytes() for p in files}


@pytest.mark.slow
def test_a_copied_and_a_moved_sweep_resume_in_place(shapes_dir, cache_dir, tmp_path):
    results = tmp_path / "results"
    orig, copy, moved = results / "orig", results / "copy", results / "moved"
    args = ["run", "--data", str(shapes_dir), "--space", str(write_space(tmp_path, 3)), "--name", "orig",
            "--results-dir", str(results), "--num-samples", "2", "--cpus-per-trial", "1", "--grace-period", "3",
            "--no-export", "--cache-dir", str(cache_dir)]
    with TrialGate(lambda gate, trial_id, epoch: True) as gate, open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(tsweep_cmd(*args), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, **gate.env})
        gate.watch(driver, "the driver")
        try:
            gate.wait_until(lambda g: len(g.held) == 2, 600, "both trials held after their first epoch")
            wait_for_saved_state(orig, {t: ("RUNNING", 1) for t in gate.held}, 120)
        finally:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and its Ray
            driver.wait()
    subprocess.run(["cp", "-a", str(orig), str(copy)], check=True)
    before = snapshot(orig)
    assert all(r["status"] == "running" for r in records(orig))

    out = subprocess.run(tsweep_cmd("resume", str(copy), "--no-export"), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert snapshot(orig) == before  # not one record, state file or sweep.json of the original changed
    advanced = records(copy)
    assert len(advanced) == 2 and all(r["status"] == "completed" for r in advanced), advanced
    for r in advanced:  # continued from the copy's epoch-1 checkpoint
        assert r["resumed_from"] == [1] and [h["epoch"] for h in r["history"]] == [1, 2, 3]
    info = json.loads((copy / "sweep.json").read_text())
    assert info["status"] == "finished" and info["experiment"] == str(copy)

    copied = snapshot(copy)
    shutil.move(orig, moved)
    out = subprocess.run(tsweep_cmd("resume", str(moved), "--no-export"), capture_output=True, text=True, timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    assert all(r["status"] == "completed" and len(r["history"]) == 3 for r in records(moved))
    assert json.loads((moved / "sweep.json").read_text())["experiment"] == str(moved)
    assert snapshot(copy) == copied and not orig.exists()


def test_stale_checkpoints_of_a_copy_are_checked_in_the_copy(tmp_path):
    """The copy's saved state names the original's checkpoint paths: whether they still exist is asked of the
    copy's files (here the copy lost its latest checkpoint, the original did not)."""
    from tests.test_ray_state import _latest, _state
    from tsweep.search.ray_state import repair_stale_checkpoints

    _state(tmp_path, latest_epoch=3)  # tmp/exp: best checkpoint_000001, latest checkpoint_000002
    copy = tmp_path / "copy"
    shutil.copytree(tmp_path / "exp", copy)
    shutil.rmtree(copy / "tsweep_trial_abc_00000" / "checkpoint_000002")
    original = (tmp_path / "exp" / "experiment_state-2026-11-23_12-00-00.json").read_bytes()
    assert repair_stale_checkpoints(str(copy), progress=lambda _line: None) == ["abc_00000"]
    latest = _latest(copy / "experiment_state-2026-11-23_12-00-00.json")
    assert latest.checkpoint.path == str(copy / "tsweep_trial_abc_00000" / "checkpoint_000001")
    assert (tmp_path / "exp" / "experiment_state-2026-11-23_12-00-00.json").read_bytes() == original
