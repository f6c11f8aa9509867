"""Local means local: while a local sweep runs, every TCP socket its Ray processes listen on is on loopback,
the cluster runs with token authentication, and its token file is private. Read from /proc (Linux)."""

from __future__ import annotations

import ipaddress
import os
import signal
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.fake_sweeps import TrialGate, tiny_space_yaml

pytestmark = pytest.mark.skipif(not Path("/proc/net/tcp").exists(), reason="reads listening sockets from /proc")

SPACE = tiny_space_yaml("one tiny trial, held after its first epoch")


def descendants(pid: int) -> list[int]:
    """`pid` and every process below it (Ray's GCS, raylet, agents and workers are children of the driver)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                ppid = int((entry / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(entry.name))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += children.get(p, [])
    return out


def listening_sockets() -> dict[str, tuple[str, int]]:
    """Socket inode -> (address, port) of every listening TCP socket of this machine (IPv4 and IPv6)."""
    out = {}
    for family, table in ((socket.AF_INET, "/proc/net/tcp"), (socket.AF_INET6, "/proc/net/tcp6")):
        if not Path(table).exists():
            continue
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] != "0A":  # TCP_LISTEN
                continue
            raw_ip, port = fields[1].split(":")
            raw = bytes.fromhex(raw_ip)
            raw = b"".join(raw[i:i + 4][::-1] for i in range(0, len(raw), 4))  # each 32-bit word is host order
            out[fields[9]] = (socket.inet_ntop(family, raw), int(port, 16))
    return out


def listeners(pid: int) -> list[tuple[int, str, str, int]]:
    """(pid, process name, address, port) of each listening TCP socket held by `pid` or its descendants."""
    table, out = listening_sockets(), set()
    for p in descendants(pid):
        try:
            name = Path(f"/proc/{p}/comm").read_text().strip()
            fds = list(Path(f"/proc/{p}/fd").iterdir())
        except OSError:
            continue
        for fd in fds:
            try:
                link = os.readlink(fd)
            except OSError:
                continue
            if link.startswith("socket:[") and link[8:-1] in table:
                out.add((p, name, *table[link[8:-1]]))
    return sorted(out)


def is_loopback(address: str) -> bool:
    ip = ipaddress.ip_address(address)
    mapped = getattr(ip, "ipv4_mapped", None)  # ::ffff:127.0.0.1 is IPv4 loopback on a dual-stack socket
    return (mapped or ip).is_loopback


def environ(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return dict(item.decode(errors="replace").split("=", 1) for item in raw if b"=" in item)


def test_the_loopback_check_itself_tells_wildcard_from_loopback():
    assert is_loopback("127.0.0.1") and is_loopback("::1") and is_loopback("::ffff:127.0.0.1")
    assert not is_loopback("0.0.0.0") and not is_loopback("::") and not is_loopback("192.0.2.2")
    with socket.socket() as wildcard:  # what Ray did before: a socket on every interface is seen as such
        wildcard.bind(("0.0.0.0", 0))
        wildcard.listen(1)
        mine = [row for row in listeners(os.getpid()) if row[3] == wildcard.getsockname()[1]]
        assert mine and not is_loopback(mine[0][2])


@pytest.mark.slow
def test_a_local_sweep_listens_on_loopback_only_with_token_auth(tmp_path, shapes_dir, cache_dir):
    space = tmp_path / "space.yaml"
    space.write_text(SPACE)
    home = tmp_path / "home"  # Ray's token file goes to ~/.ray: a fresh home shows the one the sweep creates
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH",
                                                             "RAY_ADDRESS")}
    args = ["run", "--data", str(shapes_dir), "--space", str(space), "--name", "lo", "--results-dir",
            str(tmp_path / "results"), "--num-samples", "1", "--no-export", "--no-feature-cache"]
    with TrialGate(lambda gate, trial_id, epoch: True) as gate, open(tmp_path / "out", "w") as out:
        proc = subprocess.Popen([sys.executable, "-m", "tsweep.search.cli", *args], stdout=out,
                                stderr=subprocess.STDOUT, env={**env, **gate.env, "HOME": str(home)},
                                start_new_session=True)
        gate.watch(proc)
        try:
            gate.wait_until(lambda g: g.held, 600, "the trial's first epoch")
            rows = listeners(proc.pid)
            names = {name for _, name, _, _ in rows}
            gcs = [p for p, name, _, _ in rows if name == "gcs_server"]
            gcs_env = environ(gcs[0]) if gcs else {}
            gate.release(next(iter(gate.held)))
            proc.wait(timeout=600)
        finally:
            if proc.poll() is None:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
    log = (tmp_path / "out").read_text()
    assert proc.returncode == 0, log[-3000:]
    assert {"gcs_server", "raylet"} <= names, rows  # Ray's own servers were seen, and the trial's worker
    exposed = [row for row in rows if not is_loopback(row[2])]
    assert not exposed, f"listening beyond loopback: {exposed}"
    assert gcs_env.get("RAY_AUTH_MODE") == "token"
    token = home / ".ray" / "auth_token"
    assert token.is_file() and token.stat().st_mode & 0o077 == 0
