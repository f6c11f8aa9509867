"""A sweep owns its folder and its storage: one name, one sweep; resume under the driver lock, after the owner
check; atomic writes are durable and all have one mode. No Ray here (run_tuner is replaced where a sweep would
start), so these run in seconds."""

from __future__ import annotations

import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.fake_sweeps import demo_trials, sweep_info, write_fake_sweep
from tsweep.errors import SweepConfigError
from tsweep.files import atomic_write_json
from tsweep.search import ownership, sweep
from tsweep.search.ownership import LOCK, MARKER, claim_folder, read_marker
from tsweep.search.resume import resume_sweep
from tsweep.search.sweep import SweepOptions, claim_name, prepare, run_sweep

QUIET = dict(progress=lambda _line: None)


def opts_for(tmp_path: Path, **kw) -> SweepOptions:
    return SweepOptions(data=str(tmp_path / "data"), results_dir=str(tmp_path / "results"), **kw)


@pytest.fixture
def no_weights(monkeypatch):
    monkeypatch.setattr(sweep, "check_weights", lambda space, progress: None)  # no TensorFlow here


# -- one name, one sweep ------------------------------------------------------------------------------------
def test_a_second_run_with_one_name_is_refused_before_anything_slow(tmp_path, shapes_dir, cache_dir, no_weights,
                                                                    monkeypatch):
    first = SweepOptions(data=str(shapes_dir), name="same", results_dir=str(tmp_path / "results"))
    _, _, root = prepare(first, **QUIET)  # holds results/same until its run ends
    assert read_marker(root)["id"] and (root / LOCK).is_file()
    loaded = []
    monkeypatch.setattr(sweep, "load_space", lambda *a: loaded.append(a))
    with pytest.raises(SweepConfigError, match=rf"{root} is in use: its driver \(pid {os.getpid()} on host .*"
                                               "pass another --name"):
        prepare(first, **QUIET)
    assert loaded == []  # refused at once: not after the space, the decoding or the weights check
    sweep.CLAIMS.pop(root).release()


def test_two_claims_racing_for_one_name_exactly_one_wins(tmp_path):
    root = tmp_path / "results" / "same"
    start = threading.Barrier(8)
    won, refused = [], []

    def claim() -> None:
        start.wait()
        try:
            won.append(claim_folder(root, default_name=False, progress=lambda _line: None))
        except SweepConfigError as e:
            refused.append(str(e))

    threads = [threading.Thread(target=claim) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(won) == 1 and len(refused) == 7, refused
    assert read_marker(root)["id"] == won[0].marker["id"]
    won[0].release()


def test_a_folder_with_trials_is_refused_and_named(tmp_path):
    root = write_fake_sweep(tmp_path / "results" / "done", demo_trials())
    ownership.write_exclusive(root / MARKER, ownership.new_marker(root))
    with pytest.raises(SweepConfigError, match=rf"{root} already holds a sweep: pass another --name, or continue it "
                                               rf"with `tsweep resume {root}`"):
        claim_name(opts_for(tmp_path, name="done"), **QUIET)


def test_default_names_never_collide(tmp_path, monkeypatch):
    monkeypatch.setattr(sweep.time, "strftime", lambda fmt, *a: fmt.replace("%Y%m%d-%H%M%S", "20260101-100000"))
    draws = iter(["aaaa", "aaaa", "bbbb", "aaaa", "bbbb", "cccc"])  # the second and third draws collide first
    monkeypatch.setattr(sweep.secrets, "token_hex", lambda n: next(draws))
    claims = [claim_name(opts_for(tmp_path), **QUIET) for _ in range(3)]
    assert [c.root.name for c in claims] == ["sweep-20260101-100000-aaaa", "sweep-20260101-100000-bbbb",
                                             "sweep-20260101-100000-cccc"]
    assert len({c.marker["id"] for c in claims}) == 3


@pytest.mark.parametrize("uri", [False, True])
def test_one_storage_experiment_per_sweep(tmp_path, uri):
    storage = f"file://{tmp_path / 'shared'}" if uri else str(tmp_path / "shared")
    first = claim_name(SweepOptions(data="d", name="s", results_dir=str(tmp_path / "a"), storage=storage), **QUIET)
    assert read_marker(f"{storage}/s") == {"id": first.marker["id"], "results": str(tmp_path / "a" / "s"),
                                           "host": first.marker["host"]}
    with pytest.raises(SweepConfigError, match=rf"--storage: {storage}/s belongs to the sweep in {tmp_path}/a/s: "
                                               "pass another --name or --storage"):
        claim_name(SweepOptions(data="d", name="s", results_dir=str(tmp_path / "b"), storage=storage), **QUIET)
    assert not (tmp_path / "b" / "s").exists()  # the refused run leaves no folder behind
    first.release()


def test_a_bad_flag_found_after_the_claim_leaves_nothing(tmp_path, no_weights):
    opts = opts_for(tmp_path, name="typo", storage=str(tmp_path / "shared"))  # data folder missing
    with pytest.raises(SweepConfigError, match="data"):
        prepare(opts, **QUIET)
    assert not (tmp_path / "results" / "typo").exists() and read_marker(tmp_path / "shared" / "typo") is None


# -- a sweep that failed before Ray's first state ------------------------------------------------------------
@pytest.fixture
def failed_before_ray(tmp_path, shapes_dir, cache_dir, no_weights, monkeypatch):
    """`tsweep run` whose Ray never saved a state: sweep.json says failed, no trials, no experiment state."""
    from tsweep.search import tuner

    def broken(*args, **kw):
        raise RuntimeError("Ray could not start")

    monkeypatch.setattr(tuner, "run_tuner", broken)
    opts = SweepOptions(data=str(shapes_dir), name="early", results_dir=str(tmp_path / "results"),
                        storage=str(tmp_path / "shared"), num_samples=2)
    with pytest.raises(RuntimeError, match="Ray could not start"):
        run_sweep(opts, **QUIET)
    root = tmp_path / "results" / "early"
    assert json.loads((root / "sweep.json").read_text())["status"] == "failed"
    calls = []
    monkeypatch.setattr(tuner, "run_tuner", lambda *args, **kw: calls.append(args))
    return opts, root, calls


def test_a_sweep_failed_before_ray_state_can_be_rerun(failed_before_ray):
    opts, root, calls = failed_before_ray
    sweep_id = read_marker(root)["id"]
    lines = []
    assert run_sweep(opts, progress=lines.append) == root
    assert f"{root} holds a sweep that stopped before Ray saved any state (no trial records): running it again " \
           "under the same name" in lines
    assert len(calls) == 1 and calls[0][3] == root and read_marker(root)["id"] == sweep_id
    assert json.loads((root / "sweep.json").read_text())["status"] == "finished"


def test_a_sweep_failed_before_ray_state_can_be_resumed(failed_before_ray):
    _, root, calls = failed_before_ray
    lines = []
    assert resume_sweep(root, progress=lines.append) == (root, True)
    assert "early stopped before Ray saved its first experiment state: starting it afresh from its sweep.json" \
           in lines
    recorded = json.loads((root / "sweep.json").read_text())
    assert len(calls) == 1 and calls[0][3] == root and calls[0][5] == recorded["max_epochs"]  # from sweep.json
    assert json.loads((root / "sweep.json").read_text())["status"] == "finished"


# -- resume: the driver lock and the owner check ----------------------------------------------------------------
HOLD = "import sys; from pathlib import Path; from tsweep.search.ownership import lock_sweep; " \
       "lock_sweep(Path(sys.argv[1]), ''); print('locked', flush=True); sys.stdin.read()"


def test_resume_is_refused_while_the_driver_runs(tmp_path):
    root = write_fake_sweep(tmp_path / "s", demo_trials(), sweep_info("s", status="running"))
    driver = subprocess.Popen([sys.executable, "-c", HOLD, str(root)], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                              text=True)
    try:
        assert driver.stdout.readline() == "locked\n"
        with pytest.raises(SweepConfigError, match=rf"{root} is in use: its driver \(pid {driver.pid} on host "
                                                   r".*\) is still running this sweep; wait for it to end"):
            resume_sweep(root, **QUIET)
        with pytest.raises(SweepConfigError, match=f"pid {driver.pid}"):
            claim_folder(root, default_name=False, progress=print)
    finally:
        driver.stdin.close()
        driver.wait(timeout=60)
    assert resume_sweep(write_fake_sweep(root, [], sweep_info("s")), **QUIET) == (root, False)  # lock gone: finished


def test_resume_refuses_a_folder_another_user_owns(tmp_path, monkeypatch):
    root = write_fake_sweep(tmp_path / "s", demo_trials())
    monkeypatch.setattr(os, "getuid", lambda: os.stat(root).st_uid + 1)
    with pytest.raises(SweepConfigError, match=rf"{root} is owned by .*, not by you .*: `tsweep resume` loads Ray's "
                                               r"pickled state from the sweep \(tuner.pkl, .*pass --trust"):
        resume_sweep(root, **QUIET)
    assert not (root / LOCK).exists()  # refused before writing anything there
    assert resume_sweep(root, trust=True, **QUIET) == (root, False)  # finished: nothing to do, but not refused


@pytest.mark.skipif(os.getuid() != 0, reason="needs root to give a file to another user")
def test_resume_refuses_ray_state_another_user_wrote(tmp_path):
    root = write_fake_sweep(tmp_path / "s", demo_trials(), sweep_info("s", status="running"))
    pickled = root / "tuner.pkl"
    pickled.write_bytes(b"not really a pickle")
    os.chown(pickled, 65534, 65534)
    with pytest.raises(SweepConfigError, match=rf"{pickled} is owned by .*uid 65534.*pass --trust"):
        resume_sweep(root, **QUIET)


# -- durable writes, one mode ----------------------------------------------------------------------------------
def test_atomic_writes_fsync_the_file_then_the_folder(tmp_path, monkeypatch):
    events = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(os, "fsync", lambda fd: (events.append(("fsync", stat.S_ISDIR(os.fstat(fd).st_mode))),
                                                 real_fsync(fd)))
    monkeypatch.setattr(os, "replace", lambda a, b: (events.append(("replace", Path(b).name)), real_replace(a, b)))
    atomic_write_json(tmp_path / "sweep.json", {"status": "running"})
    assert events == [("fsync", False), ("replace", "sweep.json"), ("fsync", True)]


def test_everything_a_sweep_writes_has_one_mode(tmp_path):
    old = os.umask(0o027)
    try:
        root = write_fake_sweep(tmp_path / "s", demo_trials())  # sweep.json and records, as the driver writes them
        atomic_write_json(root / "export" / "metrics.json", {"val_accuracy": 0.9})
        (root / "plain.txt").write_text("as open() writes it")
        claim = claim_folder(tmp_path / "t", default_name=False, progress=print)
        claim.release()
    finally:
        os.umask(old)
    files = [root / "sweep.json", *root.glob("trials/*.json"), root / "export" / "metrics.json", root / "plain.txt",
             tmp_path / "t" / MARKER, tmp_path / "t" / LOCK]
    modes = {f.name: stat.S_IMODE(f.stat().st_mode) for f in files}
    assert set(modes.values()) == {0o640}, modes


# -- resume with --storage: the experiment folder follows the results folder -------------------------------------
@pytest.fixture
def stored(tmp_path):
    """results/orig, whose Ray state (a stand-in experiment_state file) is in shared/orig."""
    from tsweep.search.sweep import experiment_path

    opts = SweepOptions(data="d", name="orig", results_dir=str(tmp_path / "results"), storage=str(tmp_path / "shared"))
    claim = claim_name(opts, **QUIET)
    claim.release()
    experiment = experiment_path(opts, claim.root)
    (Path(experiment) / "experiment_state-2026-01-01_10-00-00.json").write_text("{}")
    info = {**sweep_info("orig", status="running"), "options": {"data": "d", "storage": opts.storage},
            "experiment": experiment}
    write_fake_sweep(claim.root, demo_trials(), info)
    return claim.root, info, tmp_path / "shared"


def test_a_copy_is_refused_the_storage_of_its_original(stored):
    from tsweep.search.resume import resume_experiment

    orig, info, shared = stored
    copy = orig.with_name("copy")
    shutil.copytree(orig, copy)
    with pytest.raises(SweepConfigError, match=rf"{copy} is a copy of {orig}, whose Ray state in {shared}/orig it "
                                               rf"would advance: resume {orig} instead, or copy {shared}/orig to "
                                               rf"{shared}/copy and resume again"):
        resume_experiment(copy, SweepOptions(**info["options"]), info, **QUIET)
    shutil.copytree(shared / "orig", shared / "copy")  # the fix the message gives
    assert resume_experiment(copy, SweepOptions(**info["options"]), info, **QUIET) == str(shared / "copy")
    assert read_marker(shared / "copy")["results"] == str(copy)
    assert read_marker(shared / "orig")["results"] == str(orig)  # the original's storage still its own


def test_a_moved_sweep_keeps_its_storage(stored):
    from tsweep.search.resume import resume_experiment

    orig, info, shared = stored
    moved = orig.parent.parent / "elsewhere" / "renamed"
    moved.parent.mkdir()
    shutil.move(orig, moved)
    lines = []
    opts = SweepOptions(**info["options"])
    assert resume_experiment(moved, opts, info, progress=lines.append) == str(shared / "orig")
    assert read_marker(shared / "orig")["results"] == str(moved)
    assert lines == [f"{shared}/orig now belongs to {moved} (it was {orig}'s)"]


def test_the_cli_refuses_without_trust_and_accepts_with_it(tmp_path, monkeypatch, capsys):
    from tsweep.search.cli import main

    root = write_fake_sweep(tmp_path / "s", demo_trials())
    monkeypatch.setattr(os, "getuid", lambda: os.stat(root).st_uid + 1)
    assert main(["resume", str(root), "--no-export"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"tsweep: error: {root} is owned by") and "pass --trust" in err and "Traceback" not in err
    assert main(["resume", str(root), "--no-export", "--trust"]) == 0  # finished: prints its leaderboard
    assert "already finished: nothing to resume" in capsys.readouterr().out
