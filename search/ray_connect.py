"""How a sweep's driver reaches Ray safely: a local Ray that listens on loopback only, with token
authentication; and, on a cluster, a check that some node can ever run one trial.

A local sweep (no --address) starts a private Ray whose GCS, raylet, workers and agents would otherwise listen
on every interface (Ray binds them to the node's IP, which on Linux is the address other machines reach). Ray's
own switch for a machine that is not part of a cluster (what it does on macOS and Windows) makes the node's IP
127.0.0.1, and every one of them listens there only. Ray 2.60 starts a new local cluster with token auth unless
RAY_AUTH_MODE says otherwise; tsweep refuses a local sweep with RAY_AUTH_MODE set to anything else, and keeps
the token Ray creates private (0600, not Ray's default 0644).
"""

from __future__ import annotations

import json
import os
import secrets
import socket
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from tsweep.errors import SweepConfigError

LOCAL_ONLY_ENV = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"  # Ray's "clusters allowed" switch; "0": node IP = loopback
AUTH_MODE_ENV = "RAY_AUTH_MODE"
TOKEN_ENVS = ("RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")  # a token the user gave Ray: used as it is


def check_local_auth() -> None:
    """A local sweep runs Ray with token authentication: refuse an environment that turns it off."""
    mode = os.environ.get(AUTH_MODE_ENV)
    if mode is not None and mode.lower() != "token":
        raise SweepConfigError(f"{AUTH_MODE_ENV}={mode}: a local sweep runs Ray with token authentication (on "
                               f"127.0.0.1 only); unset {AUTH_MODE_ENV} or set it to token")


def ensure_private_token(home: Path | None = None) -> Path | None:
    """Create Ray's default token file (~/.ray/auth_token) readable by its owner only, when no token exists
    yet (Ray would write it world-readable). Returns the file created, or None when a token was there."""
    if any(os.environ.get(name) for name in TOKEN_ENVS):
        return None
    path = (home or Path.home()) / ".ray" / "auth_token"
    if path.exists():
        return None
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:  # another process made it first: theirs is the token
        return None
    with os.fdopen(fd, "w") as handle:
        handle.write(secrets.token_hex(32))
    return path


@contextmanager
def loopback_only() -> Iterator[None]:
    """While Ray starts: the node's IP is 127.0.0.1, in this process and in the Ray processes it spawns
    (they inherit the environment; workers inherit it from the raylet). Restored afterwards, so a later
    connection of this process to a cluster is unaffected."""
    from ray._private import ray_constants  # read at import: set the module's value too

    saved_env, saved = os.environ.get(LOCAL_ONLY_ENV), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[LOCAL_ONLY_ENV] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        yield
    finally:
        ray_constants.ENABLE_RAY_CLUSTER = saved
        if saved_env is None:
            os.environ.pop(LOCAL_ONLY_ENV, None)
        else:
            os.environ[LOCAL_ONLY_ENV] = saved_env


def check_address(address: str, timeout: float = 5.0) -> None:
    """--address HOST:PORT or ray://HOST:PORT must accept connections, checked in seconds before anything else
    (Ray itself retries an unreachable GCS for minutes). "auto" and "local" are left to Ray."""
    if address in ("auto", "local"):
        return
    rest = address[len("ray://"):] if address.startswith("ray://") else address
    host, sep, port = rest.rpartition(":")
    if not sep or not host or not port.isdigit() or "/" in rest:
        raise SweepConfigError(f"--address {address}: expected auto, HOST:PORT (a head node's GCS, port 6379 by "
                               "default) or ray://HOST:10001")
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=timeout).close()
    except OSError as e:
        raise SweepConfigError(f"--address {address}: nothing accepts connections there ({e.strerror or e}): "
                               "check the address, and that the head node runs (`ray start --head` or "
                               "`ray up cluster.yaml`)") from None


def connection_error(address: str, error: Exception) -> SweepConfigError:
    """What `ray.init(address=...)` raising means for the user."""
    return SweepConfigError(f"--address {address}: could not connect to a Ray cluster there ({error}); check the "
                            "address, that the head node runs, and its auth token (RAY_AUTH_TOKEN or "
                            "~/.ray/auth_token)")


def check_cluster_fits(cpus: float, gpus: float, address: str) -> None:
    """After connecting to a cluster: some node (alive now, or of a type its autoscaler can start) must have
    the CPUs and GPUs of one trial, or no trial could ever start and the sweep would wait forever."""
    import ray

    try:
        alive = [n.get("Resources", {}) for n in ray.nodes() if n.get("Alive")]
        if any(_fits(r, cpus, gpus) for r in alive):
            return
        types = _autoscaler_node_types()
    except Exception:  # e.g. Ray Client (ray://) has no cluster state to read: Ray's own warnings remain
        return
    if types is None or any(_fits(r, cpus, gpus) for r in types):
        return  # an autoscaler we cannot read starts nodes on demand; or one of its node types fits
    largest = max(alive + types, key=lambda r: (r.get("GPU", 0), r.get("CPU", 0)), default={})
    raise SweepConfigError(
        f"--cpus-per-trial {cpus:g} --gpus-per-trial {gpus:g}: no node of the cluster at {address} can run one "
        f"trial (the largest has {largest.get('CPU', 0):g} CPUs and {largest.get('GPU', 0):g} GPUs), so no trial "
        "could ever start; pass smaller --cpus-per-trial / --gpus-per-trial, or add a node that large")


def _fits(resources: dict, cpus: float, gpus: float) -> bool:
    return resources.get("CPU", 0) >= cpus and resources.get("GPU", 0) >= gpus


def _autoscaler_node_types() -> list[dict] | None:
    """Resources of each node type an autoscaler may start: [] for a fixed set of nodes (`ray start` by hand,
    or a local Ray), None when an autoscaler runs whose node types are not readable from here."""
    from ray._private import ray_constants
    from ray._private.state import state  # Ray Train and Ray Data read the cluster config the same way
    from ray.autoscaler._private.util import format_readonly_node_type
    from ray.autoscaler.v2.utils import is_autoscaler_v2
    from ray.experimental.internal_kv import _internal_kv_get

    config = state.get_cluster_config()
    if config is not None and config.node_group_configs:
        return [dict(g.resources) for g in config.node_group_configs if g.max_count != 0]
    if is_autoscaler_v2():
        return None
    # The head's autoscaler (v1) reports each node's type; without a cluster config (cluster.yaml), every node
    # has the made-up type of Ray's read-only provider, and no node can ever be added.
    status = json.loads(_internal_kv_get(ray_constants.DEBUG_AUTOSCALING_STATUS) or b"{}")
    types = (status.get("autoscaler_report") or {}).get("node_type_mapping") or {}
    readonly = all(kind == format_readonly_node_type(node) for node, kind in types.items())
    return [] if readonly else None
