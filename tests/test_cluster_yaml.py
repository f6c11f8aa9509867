"""cluster.yaml: Ray's own schema and checks, plus what tsweep sweeps need from it. Offline: no cloud, no network.

Validation uses Ray's ``validate_config`` (jsonschema against ray/autoscaler/ray-schema.json, then its checks on
head_node_type and min_workers). It needs no provider import: ``ray up`` runs ``prepare_config`` (merge with the
provider's defaults.yaml, also offline), then imports the provider (boto3, cloud API calls: skipped here), then
``validate_config``. So ``prepare_config`` + ``validate_config`` is what ``ray up`` checks, minus the cloud.
"""

from __future__ import annotations

import copy
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_YAML = ROOT / "cluster.yaml"
GCP_BEGIN = "# --- BEGIN GCP VARIANT ---"
GCP_END = "# --- END GCP VARIANT ---"


def load() -> dict[str, Any]:
    return yaml.safe_load(CLUSTER_YAML.read_text())


def ray_validate(config: dict[str, Any]) -> None:
    """Ray's checks on the file as written, then what ``ray up`` checks before it contacts the cloud."""
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(copy.deepcopy(config))
    validate_config(prepare_config(copy.deepcopy(config)))


def head_and_workers(config: dict[str, Any]) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    types = config["available_node_types"]
    head = config["head_node_type"]
    return types[head], {name: t for name, t in types.items() if name != head}


def gpu_workers(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {name: t for name, t in head_and_workers(config)[1].items() if t["resources"].get("GPU", 0) >= 1}


def gcp_variant() -> dict[str, Any]:
    """The commented GCP block at the end of cluster.yaml, uncommented and parsed."""
    text = CLUSTER_YAML.read_text()
    assert GCP_BEGIN in text and GCP_END in text, "the GCP variant markers are missing"
    block = text.split(GCP_BEGIN, 1)[1].split(GCP_END, 1)[0]
    lines = []
    for line in block.strip("\n").splitlines():
        assert line == "#" or line.startswith("# "), f"GCP variant line not commented as '# ...': {line!r}"
        lines.append(line[2:])
    return yaml.safe_load("\n".join(lines))


# --- Ray's schema and checks ---------------------------------------------------------------------------------

def test_file_as_written_passes_rays_validate_config():
    from ray.autoscaler._private.util import validate_config

    validate_config(load())


def test_file_passes_the_validation_ray_up_does():
    from ray.autoscaler._private.util import prepare_config, validate_config

    validate_config(prepare_config(load()))


@pytest.mark.parametrize(
    "corrupt",
    [
        pytest.param(lambda c: c.update(max_worker=4), id="unknown-top-level-key"),
        pytest.param(lambda c: c.update(max_workers="many"), id="max_workers-not-an-integer"),
        pytest.param(lambda c: c["provider"].pop("type"), id="provider-without-type"),
        pytest.param(lambda c: gpu_workers(c).popitem()[1]["resources"].update(GPU="one"), id="gpu-not-an-integer"),
        pytest.param(lambda c: gpu_workers(c).popitem()[1].update(min_worker=0), id="unknown-node-type-key"),
        pytest.param(lambda c: c.update(head_node_type="no_such_type"), id="head-type-not-declared"),
        pytest.param(lambda c: gpu_workers(c).popitem()[1].update(min_workers=99), id="min_workers-over-the-cap"),
    ],
)
def test_a_corrupted_copy_fails_validation(corrupt):
    config = load()
    corrupt(config)
    with pytest.raises((jsonschema.ValidationError, ValueError)):
        ray_validate(config)


# --- node types ----------------------------------------------------------------------------------------------

def test_head_node_type_is_declared():
    config = load()
    assert config["head_node_type"] in config["available_node_types"]


def test_a_gpu_worker_type_declares_its_gpu_within_the_worker_caps():
    config = load()
    workers = gpu_workers(config)
    assert workers, "no worker node type declares a GPU in `resources`: the autoscaler would never add GPUs"
    for name, node_type in workers.items():
        assert isinstance(node_type["resources"]["GPU"], int), name
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"], name
        assert node_type["resources"].get("CPU", 1) >= 1, f"{name}: trials also need CPUs"


def test_every_node_type_names_an_ami():
    # Without ImageId (or with `latest_dlami`) Ray's AWS provider falls back to an Ubuntu 18.04 DLAMI whose
    # Python cannot install TensorFlow 2.21.
    for name, node_type in load()["available_node_types"].items():
        image = str(node_type["node_config"].get("ImageId", ""))
        assert image.startswith("ami-") and image.lower() != "latest_dlami", name


def test_workers_get_a_bigger_root_volume_than_the_default():
    for name, node_type in gpu_workers(load()).items():
        sizes = [m["Ebs"]["VolumeSize"] for m in node_type["node_config"]["BlockDeviceMappings"] if "Ebs" in m]
        assert sizes and max(sizes) >= 100, name


# --- setup and start commands --------------------------------------------------------------------------------

def test_setup_installs_the_project_with_its_gpu_extra():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    extras = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]
    assert "gpu" in extras
    installs = [c for c in load()["setup_commands"] if "pip install" in c and "transfer-sweep[gpu]" in c]
    assert installs, "no setup command installs the project's gpu extra"
    for command in installs:
        assert "-e" in command.split()
        # Inside quotes neither the shell nor pip expands ~: pip then rejects "~/transfer-sweep[gpu]".
        assert not re.search(r"""["']~""", command), command


def test_setup_pins_the_ray_version_installed_here():
    import ray

    pins = {m for c in load()["setup_commands"] for m in re.findall(r"ray\[[^\]]*\]==([\w.]+)", c)}
    assert pins == {ray.__version__}, "the cluster's Ray must equal the laptop's for `ray up` and `ray job submit`"


@pytest.mark.skipif(shutil.which("bash") is None, reason="bash is not installed")
def test_every_command_is_valid_shell():
    config = load()
    keys = ("initialization_commands", "setup_commands", "head_setup_commands", "worker_setup_commands",
            "head_start_ray_commands", "worker_start_ray_commands")
    for command in (c for key in keys for c in config.get(key, [])):
        result = subprocess.run(["bash", "-n", "-c", command], capture_output=True, text=True)
        assert result.returncode == 0, f"{command!r}: {result.stderr}"


def auth_modes(command: str) -> list[str]:
    return re.findall(r"\bRAY_AUTH_MODE=([A-Za-z]+)", command)


def test_ray_auth_mode_is_the_same_in_head_and_worker_start_commands():
    config = load()
    modes = {}
    for key in ("head_start_ray_commands", "worker_start_ray_commands"):
        starts = [c for c in config[key] if "ray start" in c]
        assert len(starts) == 1, key
        start = starts[0]
        found = auth_modes(start)
        assert found, f"{key}: `ray start` runs without RAY_AUTH_MODE"
        assert start.index("RAY_AUTH_MODE") < start.index("ray start"), f"{key}: set it before `ray start`"
        modes[key] = set(found)
    assert modes["head_start_ray_commands"] == modes["worker_start_ray_commands"] == {"token"}
    # Shells on the nodes (ray attach / ray exec) get the same mode from ~/.bashrc.
    in_setup = {m for c in config["setup_commands"] for m in auth_modes(c)}
    assert in_setup == {"token"}, "no setup command puts RAY_AUTH_MODE=token in the nodes' ~/.bashrc"


def test_start_commands_keep_rays_standard_flags():
    config = load()
    head = " ".join(config["head_start_ray_commands"])
    for flag in ("--head", "--port=6379", "--object-manager-port=8076",
                 "--autoscaling-config=~/ray_bootstrap_config.yaml", "--dashboard-host=0.0.0.0"):
        assert flag in head.split(), flag
    assert "--address=$RAY_HEAD_IP:6379" in " ".join(config["worker_start_ray_commands"]).split()
    assert config["head_start_ray_commands"][0] == config["worker_start_ray_commands"][0] == "ray stop"


def test_the_auth_token_is_copied_to_the_nodes():
    # ray start reads the token from ~/.ray/auth_token; every node needs the one the laptop's driver uses.
    assert load()["file_mounts"].get("~/.ray/auth_token") == "~/.ray/auth_token"


# --- file sync -----------------------------------------------------------------------------------------------

def test_the_project_is_mounted_and_results_venv_and_caches_stay_out():
    config = load()
    assert config["file_mounts"]["~/transfer-sweep"] == "."
    excluded = set(config["rsync_exclude"])
    assert {"results/*", ".venv"} <= excluded
    assert any("cache" in pattern for pattern in excluded)
    assert ".gitignore" in config["rsync_filter"]


@pytest.mark.skipif(shutil.which("rsync") is None, reason="rsync is not installed")
def test_rsync_with_rays_own_filter_arguments_skips_results_and_venv(tmp_path):
    from ray.autoscaler._private.command_runner import SSHCommandRunner

    config = load()
    src, dst = tmp_path / "src", tmp_path / "dst"
    for rel in ("search/cli.py", "results/sweep-1/trial/checkpoint.bin", ".venv/bin/python",
                "search/__pycache__/cli.cpython-311.pyc", "build/lib/x.py", "pyproject.toml"):
        (src / rel).parent.mkdir(parents=True, exist_ok=True)
        (src / rel).write_text("x")
    (src / ".gitignore").write_text("build/\n")
    # The arguments Ray adds to its `rsync -avz` for file mounts (the method does not use `self`), then a local
    # copy instead of one over SSH.
    args = SSHCommandRunner._create_rsync_filter_args(None, {"rsync_exclude": config["rsync_exclude"],
                                                              "rsync_filter": config["rsync_filter"]})
    subprocess.run(["rsync", "-a", *args, f"{src}/", f"{dst}/"], check=True, capture_output=True)
    copied = {p.relative_to(dst).as_posix() for p in dst.rglob("*") if p.is_file()}
    assert {"search/cli.py", "pyproject.toml"} <= copied
    assert not {p for p in copied if p.startswith(("results/", ".venv/", "build/")) or "__pycache__" in p}


# --- comments ------------------------------------------------------------------------------------------------

def active_lines() -> list[str]:
    """cluster.yaml up to the commented-out GCP variant."""
    return CLUSTER_YAML.read_text().split(GCP_BEGIN, 1)[0].splitlines()


def is_commented(lines: list[str], index: int) -> bool:
    """The line carries a `#` comment, or the line right above it is a comment."""
    return " #" in lines[index] or (index > 0 and lines[index - 1].lstrip().startswith("#"))


def test_every_top_level_key_is_commented():
    lines = active_lines()
    keys = [(i, line) for i, line in enumerate(lines) if re.match(r"[A-Za-z_][\w-]*\s*:", line)]
    assert {line.split(":")[0] for _, line in keys} >= {"cluster_name", "provider", "available_node_types"}
    missing = [line for i, line in keys if not is_commented(lines, i)]
    assert not missing, f"top-level keys without a comment: {missing}"


def test_every_block_key_is_commented():
    # Keys that start their line (not keys inside {...} or inside a command's text), found with YAML's scanner.
    lines = active_lines()
    missing, after_key = [], False
    for token in yaml.scan("\n".join(lines)):
        if after_key and isinstance(token, yaml.ScalarToken):
            line, column = token.start_mark.line, token.start_mark.column
            if lines[line][:column].strip() in ("", "-") and not is_commented(lines, line):
                missing.append(lines[line].strip())
        after_key = isinstance(token, yaml.KeyToken)
    assert not missing, f"keys without a comment on or above their line: {missing}"


# --- the GCP variant -----------------------------------------------------------------------------------------

def test_the_gcp_variant_replaces_the_provider_sections_and_validates():
    variant = gcp_variant()
    assert set(variant) == {"provider", "available_node_types", "head_node_type"}
    config = {**load(), **variant}
    ray_validate(config)
    assert config["provider"]["type"] == "gcp" and config["provider"].get("project_id")
    workers = gpu_workers(config)
    assert workers, "the GCP variant has no GPU worker type"
    for name, node_type in workers.items():
        node = node_type["node_config"]
        assert node["guestAccelerators"][0]["acceleratorType"] == "nvidia-tesla-t4", name
        assert {"onHostMaintenance": "TERMINATE"} in node["scheduling"], name
        assert 0 <= node_type["min_workers"] <= node_type["max_workers"] <= config["max_workers"], name
