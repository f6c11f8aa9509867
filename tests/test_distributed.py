"""Distributed sweeps without a cloud: multi-node clusters on this machine, fake GPUs, dead nodes, a killed
driver resumed with `tsweep resume`, and a real `ray start` cluster driven through `tsweep run --address`."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest

from tests.fake_sweeps import TrialGate
from tsweep.search.sweep import SweepOptions, experiment_path
from tsweep.search.tuner import SHIP_EXCLUDES, runtime_env_for, storage_path
from tsweep.trainers.runtime import gpu_memory_limit_mb

SPACE = """
description: distributed tests - tiny, slow enough per epoch to kill things mid-trial
backbone: mobilenet_v2
alpha: 0.35
weights: none
image_size: 32
batch_size: 8
epochs: {epochs}
warmup_epochs: 1
head_size: 0
dropout: 0.0
freeze_cutoff: {{choice: [17, 15]}}
optimizer: adam
learning_rate: {{loguniform: [1.0e-4, 1.0e-2]}}
"""


def write_space(tmp: Path, epochs: int) -> Path:
    path = tmp / "space.yaml"
    path.write_text(SPACE.format(epochs=epochs))
    return path


def records(root: Path) -> list[dict]:
    out = []
    for p in sorted((root / "trials").glob("*.json")):
        try:
            out.append(json.loads(p.read_text()))
        except ValueError:
            pass
    return out


# -- pure pieces --------------------------------------------------------------------------------------------
def test_gpu_memory_limit_follows_the_fraction():
    assert gpu_memory_limit_mb(0.5, 24000) == int(24000 * 0.5 * 0.95)
    assert gpu_memory_limit_mb(0.25, 16000) == int(16000 * 0.25 * 0.95)
    assert gpu_memory_limit_mb(1.0, 24000) is None  # a whole GPU: memory growth instead
    assert gpu_memory_limit_mb(0.5, None) is None


def test_cluster_runtime_env_ships_the_checkout_without_results(tmp_path):
    assert "working_dir" not in runtime_env_for(None)
    env = runtime_env_for("auto")
    assert Path(env["working_dir"], "pyproject.toml").is_file()
    assert {"results/", ".venv/", ".git/"} <= set(env["excludes"]) == set(SHIP_EXCLUDES)
    assert env["env_vars"]["TF_CPP_MIN_LOG_LEVEL"] == "2"
    assert runtime_env_for(None)["env_vars"]["MALLOC_ARENA_MAX"] == "2"  # see tests/test_reuse.py


def test_storage_locations(tmp_path):
    root = tmp_path / "results" / "s1"
    local = SweepOptions(data="d")
    assert storage_path(local, root) == str(tmp_path / "results") and experiment_path(local, root) == str(root)
    cloud = SweepOptions(data="d", storage="s3://bucket/sweeps/")
    assert storage_path(cloud, root) == "s3://bucket/sweeps/"
    assert experiment_path(cloud, root) == "s3://bucket/sweeps/s1"
    shared = SweepOptions(data="d", storage=str(tmp_path / "nfs"))
    assert experiment_path(shared, root) == str(tmp_path / "nfs" / "s1")


def test_source_checkout_imports_without_installation(tmp_path):
    """Ray's working_dir gives workers the checkout, not an installed package: tsweep must import from it.
    -I -S: no site-packages, so no editable install can help."""
    root = Path(__file__).resolve().parents[1]
    code = (f"import sys; sys.path.insert(0, {str(root)!r}); "
            "import tsweep.search.cli, tsweep.spaces.space as s; print(s.__file__)")
    out = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == str(root / "spaces" / "space.py")


# -- multi-node clusters on this machine (slow) ------------------------------------------------------------
@pytest.fixture
def cluster():
    """Head (no CPUs: it only schedules) + two worker nodes with 1 CPU and 1 fake GPU each."""
    import ray
    from ray.cluster_utils import Cluster

    ray.shutdown()
    c = Cluster(initialize_head=True, head_node_args={"num_cpus": 0, "include_dashboard": False})
    workers = [c.add_node(num_cpus=1, num_gpus=1) for _ in range(2)]
    c.wait_for_nodes()
    yield c, workers
    ray.shutdown()
    c.shutdown()


@pytest.mark.slow
def test_trials_spread_over_worker_nodes_with_gpu_fractions(cluster, shapes_dir, cache_dir, tmp_path):
    from tsweep.search.sweep import run_sweep

    c, workers = cluster
    opts = SweepOptions(data=str(shapes_dir), space=str(write_space(tmp_path, 2)), num_samples=4, name="multi",
                        results_dir=str(tmp_path / "results"), address=c.address, cpus_per_trial=0.5,
                        gpus_per_trial=0.5, export=False, cache_dir=str(cache_dir))
    root = run_sweep(opts, progress=lambda line: None)
    recs = records(root)
    assert len(recs) == 4 and all(r["status"] in ("completed", "pruned") for r in recs)
    worker_ids = {w.node_id[:12] for w in workers}
    used = {n for r in recs for n in r["nodes"]}
    assert used == worker_ids  # both workers ran trials; the CPU-less head ran none
    for r in recs:
        assert r["resources"]["gpu_fraction"] == 0.5
        assert r["resources"]["cuda_visible_devices"] == "0"  # Ray hands each trial its node's (fake) GPU


@pytest.mark.slow
def test_killed_worker_node_trials_resume_from_checkpoints(cluster, shapes_dir, cache_dir, tmp_path, monkeypatch):
    from tsweep.search.recorder import SweepRecorder
    from tsweep.search.records import trial_path
    from tsweep.search.sweep import run_sweep

    c, workers = cluster
    root = tmp_path / "results" / "failover"
    killed: dict = {}
    record_result = SweepRecorder.on_trial_result

    def kill_its_node_at_epoch_2(self, iteration, trials, trial, result, **info):
        """The driver's recorder, then the kill, triggered by the trial's own record: the first record saved
        with 2 epochs removes the node that ran them. The trial cannot have gone further meanwhile: a function
        trainable's report blocks until the driver asks for the next result, and the driver is here."""
        record_result(self, iteration, trials, trial, result, **info)
        record = json.loads(trial_path(self.root, trial.trial_id).read_text())
        if not killed and record["status"] == "running" and len(record["history"]) == 2:
            killed.update(trial=record["trial_id"], epoch=len(record["history"]), node=record["nodes"][-1])
            c.remove_node(next(w for w in workers if w.node_id[:12] == record["nodes"][-1]))

    monkeypatch.setattr(SweepRecorder, "on_trial_result", kill_its_node_at_epoch_2)
    opts = SweepOptions(data=str(shapes_dir), space=str(write_space(tmp_path, 6)), num_samples=2,
                        name="failover", results_dir=str(tmp_path / "results"), address=c.address,
                        cpus_per_trial=1, export=False, cache_dir=str(cache_dir), grace_period=6, max_failures=3)
    run_sweep(opts, progress=lambda line: None)
    assert killed["epoch"] == 2
    recs = {r["trial_id"]: r for r in records(root)}
    assert len(recs) == 2 and all(r["status"] == "completed" for r in recs.values())
    moved = recs[killed["trial"]]
    assert moved["nodes"][0] == killed["node"] and moved["nodes"][-1] != killed["node"]
    assert moved["restarts"] >= 1
    assert moved["resumed_from"] and moved["resumed_from"][0] >= 1  # from its checkpoint, not epoch 0
    assert [h["epoch"] for h in moved["history"]] == [1, 2, 3, 4, 5, 6]  # no epoch lost or repeated
    other = next(r for t, r in recs.items() if t != killed["trial"])
    assert other["resumed_from"] == [] and other["nodes"] == [other["nodes"][0]] != [killed["node"]]
    print(f"\nmoved trial {killed['trial']} from node {killed['node']} at epoch {killed['epoch']}; "
          f"resumed from epoch {moved['resumed_from'][0]} on node {moved['nodes'][-1]}")


def tsweep_cmd(*args: str) -> list[str]:
    return [sys.executable, "-m", "tsweep.search.cli", *args]


def saved_trials(root: Path) -> dict[str, tuple[str, int | None]]:
    """What `tsweep resume` restores: Ray's newest saved experiment state, as trial id -> (status, epoch of the
    latest checkpoint it names). Read with the private classes tsweep.search.ray_state also reads it with."""
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    states = sorted(root.glob("experiment_state-*.json"))
    try:
        state = json.loads(states[-1].read_text()) if states else {"trial_data": []}
    except ValueError:  # being copied
        return {}
    out = {}
    for trial_json, metadata_json in state["trial_data"]:
        trial = json.loads(trial_json)
        latest = _TrainingRunMetadata.from_json_state(metadata_json).checkpoint_manager.latest_checkpoint_result
        out[trial["trial_id"]] = (trial["status"], latest.metrics.get("epoch") if latest else None)
    return out


def wait_for_saved_state(root: Path, expected: dict[str, tuple[str, int | None]], timeout: float) -> None:
    """Wait (bounded) until Ray's saved state shows `expected`. Ray copies its state from a background thread
    after each step, so the copy can trail the records by a moment; the states waited for are final (a finished
    trial stays finished, a held one cannot move), so this wait has no race to lose."""
    deadline = time.monotonic() + timeout
    while True:
        saved = saved_trials(root)
        if {t: saved.get(t) for t in expected} == expected:
            return
        assert time.monotonic() < deadline, f"Ray's saved state {saved} never showed {expected}"
        time.sleep(0.1)


@pytest.mark.slow
def test_killed_driver_resumes_without_rerunning_finished_trials(shapes_dir, cache_dir, tmp_path):
    """The first trial to report an epoch runs to its end; every other trial is held after its first epoch (its
    record and checkpoint written). With two trials held the driver is killed: then one trial has finished,
    two are mid-way with a checkpoint, and (two trials at a time) the fourth never started."""
    root = tmp_path / "results" / "killed"
    args = ["run", "--data", str(shapes_dir), "--space", str(write_space(tmp_path, 5)), "--name", "killed",
            "--results-dir", str(tmp_path / "results"), "--num-samples", "4", "--cpus-per-trial", "1",
            "--grace-period", "5", "--no-export", "--cache-dir", str(cache_dir)]
    with TrialGate(lambda gate, trial_id, epoch: trial_id != gate.check_ins[0][0]) as gate, \
            open(tmp_path / "driver.log", "w") as log:
        driver = subprocess.Popen(tsweep_cmd(*args), stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                                  env={**os.environ, **gate.env})
        gate.watch(driver, "the driver")
        try:
            gate.wait_until(lambda g: len(g.held) >= 2, 600, "two trials held after their first epoch")
            first, held = gate.check_ins[0][0], dict(gate.held)
            assert set(held.values()) == {1} and first not in held
            wait_for_saved_state(root, {first: ("TERMINATED", 5), **{t: ("RUNNING", 1) for t in held}}, 120)
        finally:
            os.killpg(driver.pid, signal.SIGKILL)  # the driver and the Ray it started, at once
            driver.wait()
    before = {r["trial_id"]: r for r in records(root)}
    finished_before = {t: r for t, r in before.items() if r["status"] in ("completed", "pruned")}
    assert list(finished_before) == [first] and finished_before[first]["status"] == "completed"
    for trial_id in held:
        assert before[trial_id]["status"] == "running" and [h["epoch"] for h in before[trial_id]["history"]] == [1]
    assert json.loads((root / "sweep.json").read_text())["status"] == "running"  # nobody marked it

    out = subprocess.run(tsweep_cmd("resume", str(root), "--no-export"), capture_output=True, text=True,
                         timeout=900)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
    after = {r["trial_id"]: r for r in records(root)}
    assert len(after) == 4 and all(r["status"] == "completed" for r in after.values())
    assert {k: after[first][k] for k in ("history", "ended")} == {k: before[first][k] for k in ("history", "ended")}
    for trial_id in held:  # continued from its epoch-1 checkpoint: epoch 1 kept, no epoch lost or repeated
        assert after[trial_id]["resumed_from"] == [1]
        assert after[trial_id]["history"][0] == before[trial_id]["history"][0]
        assert [h["epoch"] for h in after[trial_id]["history"]] == [1, 2, 3, 4, 5]
    for trial_id in set(after) - set(held) - {first}:  # not held (never started, or on a bigger machine, mid-epoch)
        assert [h["epoch"] for h in after[trial_id]["history"]] == [1, 2, 3, 4, 5]
    assert json.loads((root / "sweep.json").read_text())["status"] == "finished"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.mark.slow
def test_ray_start_cluster_and_tsweep_run_address(shapes_dir, cache_dir, tmp_path):
    """A real cluster from `ray start --head` plus a second `ray start --address`, one RAY_AUTH_MODE for all."""
    ray_bin = Path(sys.executable).with_name("ray")
    port = free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token", "HOME": str(tmp_path / "home")}
    (tmp_path / "home").mkdir()
    subprocess.run([str(ray_bin), "get-auth-token", "--generate"], env=env, check=True, capture_output=True)
    address = f"127.0.0.1:{port}"
    temp = Path(tempfile.mkdtemp(prefix="tsr", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    try:
        for args in (["--head", f"--port={port}", "--num-cpus=1", "--include-dashboard=false", f"--temp-dir={temp}"],
                     [f"--address={address}", "--num-cpus=1"]):
            started = subprocess.run([str(ray_bin), "start", "--node-ip-address=127.0.0.1", *args], env=env,
                                     capture_output=True, text=True, timeout=120)
            assert started.returncode == 0, started.stdout[-2000:] + started.stderr[-2000:]
        out = subprocess.run(tsweep_cmd("run", "--data", str(shapes_dir), "--space", str(write_space(tmp_path, 2)),
                                        "--name", "onray", "--results-dir", str(tmp_path / "results"),
                                        "--num-samples", "2", "--address", address, "--no-export",
                                        "--cache-dir", str(cache_dir)),
                             env=env, capture_output=True, text=True, timeout=600)
        assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-3000:]
        recs = records(tmp_path / "results" / "onray")
        assert len(recs) == 2 and all(r["status"] in ("completed", "pruned") for r in recs)
    finally:
        stop_processes_mentioning(str(temp))
        shutil.rmtree(temp, ignore_errors=True)


def stop_processes_mentioning(text: str) -> None:
    """Kill this test's Ray daemons only (`ray stop` would kill every Ray on the machine)."""
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text in (proc / "cmdline").read_bytes().decode(errors="replace"):
                os.kill(int(proc.name), signal.SIGKILL)
        except (OSError, ProcessLookupError):
            pass


def test_data_uri_is_copied_once_per_node_and_refreshed_when_it_changes(shapes_dir, tmp_path):
    from tsweep.errors import SweepConfigError
    from tsweep.trainers.data import load_dataset
    from tsweep.trainers.remote import local_data_dir

    remote = tmp_path / "bucket" / "shapes"
    shutil.copytree(shapes_dir, remote)
    uri = remote.as_uri()  # file:///...: the same pyarrow code path as s3:// and gs://
    lines: list[str] = []
    first = local_data_dir(uri, tmp_path / "cache", lines.append)
    assert first != remote and (first / "train" / "circles").is_dir() and len(lines) == 1
    assert local_data_dir(uri, tmp_path / "cache", lines.append) == first and len(lines) == 1  # no 2nd copy
    data = load_dataset(uri, 32, cache_dir=tmp_path / "cache")
    assert data.class_names == ("circles", "squares", "triangles") and data.x_test is not None
    sample = next((remote / "test" / "circles").glob("*.jpg"))
    (remote / "train" / "circles" / "extra.jpg").write_bytes(sample.read_bytes())
    assert local_data_dir(uri, tmp_path / "cache") != first  # changed remote data: a fresh copy
    with pytest.raises(SweepConfigError, match="holds no files|cannot list"):
        local_data_dir((tmp_path / "empty").as_uri(), tmp_path / "cache")
