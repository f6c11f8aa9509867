"""Every bad `tsweep run` flag is a clear error before any trial: exit code 2, a message naming the flag (or
the file), no traceback. Each test goes through `search.cli.main` as a user would."""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.fake_sweeps import tiny_space_yaml
from tsweep.search import cli

SPACE = tiny_space_yaml("tiny")


@pytest.fixture
def run(tmp_path, shapes_dir, cache_dir, monkeypatch, capsys):
    """`tsweep run` on a tiny space with some bad flags; returns (exit code, stderr). Reaching Ray fails the test
    (the error must come first)."""
    import tsweep.search.tuner as tuner

    def reached(*args, **kwargs):
        pytest.fail("the sweep reached Ray: the bad flag was not caught before any trial")

    monkeypatch.setattr(tuner, "run_tuner", reached)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)

    def go(*flags: str, space_file: Path = space) -> tuple[int, str]:
        code = cli.main(["run", "--data", str(shapes_dir), "--space", str(space_file), "--results-dir",
                         str(tmp_path / "results"), "--no-export", *flags])
        err = capsys.readouterr().err
        assert "Traceback" not in err
        return code, err

    return go


@pytest.mark.parametrize("flag, value", [
    ("--cache-memory", "1.2.3GB"), ("--cache-memory", "-1GB"), ("--cache-disk", "1.2.3GB"), ("--cache-disk", "lots"),
    ("--seed", "-1"), ("--cpus-per-trial", "nan"), ("--gpus-per-trial", "nan"), ("--cpus-per-trial", "0"),
    ("--gpus-per-trial", "-1"), ("--val-fraction", "nan"), ("--num-samples", "-1"), ("--grace-period", "0"),
    ("--reduction-factor", "1"), ("--max-failures", "-1"), ("--metric", "auc"), ("--formats", "bogus"),
    ("--max-epochs", "0"), ("--backbone", "nope"), ("--weights", "/nonexistent/w.h5"),
])
def test_a_bad_value_names_its_flag(run, flag, value):
    code, err = run(f"{flag}={value}")
    assert code == 2 and flag in err, err


def test_more_cpus_or_gpus_than_this_machine_has(run):
    code, err = run("--cpus-per-trial", "1000")
    assert code == 2 and "--cpus-per-trial 1000" in err
    code, err = run("--gpus-per-trial", "64")
    assert code == 2 and "--gpus-per-trial 64" in err


def test_a_binary_space_file_names_the_file(run, tmp_path):
    from PIL import Image

    png = tmp_path / "space.png"
    Image.new("RGB", (8, 8)).save(png)
    code, err = run(space_file=png)
    assert code == 2 and str(png) in err and "not a text (YAML) file" in err and "--space" in err


def test_an_unreadable_space_file_names_the_file(run, tmp_path, monkeypatch):
    locked = tmp_path / "locked.yaml"
    locked.write_text(SPACE)
    real = Path.read_bytes

    def read_bytes(self: Path) -> bytes:  # chmod 000 does not stop root, who runs CI here
        if self == locked:
            raise PermissionError(13, "Permission denied", str(self))
        return real(self)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    code, err = run(space_file=locked)
    assert code == 2 and str(locked) in err and "cannot be read (Permission denied)" in err


def test_a_space_file_that_is_not_yaml_names_the_file(run, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("backbone: [mobilenet_v2\n")
    code, err = run(space_file=bad)
    assert code == 2 and str(bad) in err and "not valid YAML" in err


def test_a_name_that_is_a_file(run, tmp_path):
    (tmp_path / "results").mkdir()
    (tmp_path / "results" / "README.md").write_text("not a sweep")
    code, err = run("--name", "README.md")
    assert code == 2 and "--name README.md" in err and "is a file" in err


@pytest.mark.parametrize("flag", ["--results-dir", "--cache-dir", "--storage"])
def test_a_folder_flag_that_is_a_file(run, tmp_path, flag):
    blocker = tmp_path / "afile"
    blocker.write_text("x")
    for value in (blocker, blocker / "below"):  # the file itself, or a file where a parent folder must go
        code, err = run(flag, str(value))
        assert code == 2 and f"{flag} {value}" in err and f"{blocker} is a file" in err, err


def test_a_local_sweep_refuses_to_run_ray_without_token_auth(run, monkeypatch):
    monkeypatch.setenv("RAY_AUTH_MODE", "disabled")
    code, err = run()
    assert code == 2 and "RAY_AUTH_MODE=disabled" in err and "token" in err


@pytest.mark.parametrize("address", ["garbage", "127.0.0.1:notaport", "127.0.0.1:1"])
def test_an_address_nothing_listens_on_fails_in_seconds(run, address):
    code, err = run("--address", address)  # port 1: refused at once, where Ray would retry for minutes
    assert code == 2 and f"--address {address}" in err, err


@pytest.fixture
def small_cluster():
    """A running Ray of 2 CPUs and no GPU in this process, reached by its address (shut down after each test:
    other tests here expect no Ray in this process)."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("flags, needle", [(["--cpus-per-trial", "3"], "--cpus-per-trial 3"),
                                           (["--gpus-per-trial", "1"], "--gpus-per-trial 1")])
def test_resources_no_node_of_the_cluster_has(small_cluster, tmp_path, shapes_dir, cache_dir, monkeypatch, capsys,
                                              flags, needle):
    import tsweep.search.tuner as tuner

    def reached(*args, **kwargs):
        pytest.fail("a trial was about to be set up on a cluster that can never run it")

    monkeypatch.setattr(tuner, "trainable_for", reached)
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    code = cli.main(["run", "--data", str(shapes_dir), "--space", str(space), "--results-dir",
                     str(tmp_path / "results"), "--name", "big", "--no-export", "--address", small_cluster, *flags])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and "no node of the cluster" in err and "Traceback" not in err, err
    assert not list((tmp_path / "results" / "big").glob("trials/*.json"))  # no trial ever started


def test_a_node_type_the_autoscaler_can_start_is_enough(monkeypatch):
    import ray

    from tsweep.errors import SweepConfigError
    from tsweep.search import ray_connect

    monkeypatch.setattr(ray, "nodes", lambda: [{"Alive": True, "Resources": {"CPU": 2.0}},
                                               {"Alive": False, "Resources": {"CPU": 64.0, "GPU": 8.0}}])
    monkeypatch.setattr(ray_connect, "_autoscaler_node_types", lambda: [])
    ray_connect.check_cluster_fits(2, 0, "head:6379")  # an alive node fits
    with pytest.raises(SweepConfigError, match="largest has 2 CPUs and 0 GPUs"):  # a dead node does not count
        ray_connect.check_cluster_fits(4, 0, "head:6379")
    monkeypatch.setattr(ray_connect, "_autoscaler_node_types", lambda: [{"CPU": 4, "GPU": 1}])
    ray_connect.check_cluster_fits(4, 1, "head:6379")  # none now, but the autoscaler starts a GPU node
    monkeypatch.setattr(ray_connect, "_autoscaler_node_types", lambda: None)
    ray_connect.check_cluster_fits(4, 1, "head:6379")  # an autoscaler whose node types are unknown: not refused
    monkeypatch.setattr(ray_connect, "_autoscaler_node_types", lambda: [{"CPU": 4}])
    with pytest.raises(SweepConfigError, match="largest has 4 CPUs and 0 GPUs"):
        ray_connect.check_cluster_fits(4, 1, "head:6379")


def test_a_storage_uri_nothing_can_open(run):
    code, err = run("--storage", "weird://bucket/x")  # was a pyarrow traceback once Ray had started
    assert code == 2 and "--storage: cannot open weird://bucket/x" in err, err


def test_resume_on_an_address_nothing_listens_on_fails_in_seconds(tmp_path, capsys):
    from tests.fake_sweeps import demo_trials, sweep_info, write_fake_sweep

    root = write_fake_sweep(tmp_path / "s", demo_trials(), sweep_info("s", status="interrupted"))
    code = cli.main(["resume", str(root), "--address", "127.0.0.1:1"])
    err = capsys.readouterr().err
    assert code == 2 and "--address 127.0.0.1:1: nothing accepts connections there" in err and "Traceback" not in err
