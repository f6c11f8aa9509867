"""A sweep owns its folder and its storage: claim markers, the driver's lock, and the owner check of resume.

- ``results/<name>/.tsweep-sweep`` (JSON: the sweep's id, host, results folder) is created with O_EXCL while the
  folder's lock is held, before anything slow runs, so two runs with one name cannot both proceed.
- ``results/<name>/.tsweep-lock`` is flock'ed by the driver (`tsweep run` or `tsweep resume`) for the sweep's
  lifetime and names its pid and host; the kernel releases it when the driver dies, however it dies.
- A ``--storage`` experiment folder gets a ``.tsweep-sweep`` too, naming the sweep id and results folder that own
  it (O_EXCL on a local path; on a URI a check-then-write, see `claim_storage`).
"""

from __future__ import annotations

import fcntl
import json
import os
import posixpath
import socket
import time
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

from tsweep.errors import SweepConfigError
from tsweep.files import fsync_dir, is_uri, join_location

MARKER = ".tsweep-sweep"
LOCK = ".tsweep-lock"
STATE_PREFIX = "experiment_state-"  # Ray's saved experiment state: what `tsweep resume` continues from


@dataclass
class Claim:
    """A results folder this process owns: its marker, and the open lock file (None once released)."""
    root: Path
    marker: dict
    created: bool  # the folder did not exist before this claim
    lock: int | None
    storage: str | None = None  # the --storage marker this claim wrote (removed again by `abandon`)

    def release(self) -> None:
        if self.lock is not None:
            os.close(self.lock)  # closing the last descriptor drops the flock
            self.lock = None


def lock_sweep(root: Path, fix: str) -> int:
    """Take `root`'s driver lock (non-blocking); returns the open lock file.

    Raises:
        SweepConfigError: another driver holds it; the message names its pid and host, then `fix`.
    """
    fd = os.open(root / LOCK, os.O_RDWR | os.O_CREAT, 0o666)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "unknown pid"
        os.close(fd)
        raise SweepConfigError(f"{root} is in use: its driver ({holder}) is still running this sweep; {fix}") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode(), 0)
    return fd


def read_marker(folder: str | Path) -> dict | None:
    """A folder's .tsweep-sweep (local path or URI), or None when it has none."""
    text = _read_text(join_location(folder, MARKER))
    return json.loads(text) if text is not None else None


def new_marker(root: Path) -> dict:
    return {"id": uuid.uuid4().hex, "created": time.strftime("%Y-%m-%dT%H:%M:%S"), "host": socket.gethostname(),
            "results": str(root)}


def claim_folder(root: Path, default_name: bool, progress: Callable[[str], None]) -> Claim | None:
    """Create (or take over) the results folder `root` and lock it, before any slow check.

    A folder is taken over only when it is empty, or holds a sweep that stopped before Ray saved any state and
    wrote no trial record (then it runs again under its id, and says so).

    Args:
        root: results/<name>.
        default_name: the name was generated: return None when it exists (the caller picks another).
        progress: where the rerun notice goes.

    Raises:
        SweepConfigError: the folder is a file, is in use, or holds a sweep or other files.
    """
    if root.exists() and not root.is_dir():
        raise SweepConfigError(f"--name {root.name}: {root} is a file, not a sweep folder: pass another --name")
    root.parent.mkdir(parents=True, exist_ok=True)
    try:
        root.mkdir()
        created = True
    except FileExistsError:
        if default_name:
            return None
        created = False
    fd = lock_sweep(root, f"pass another --name (or wait for it and `tsweep resume {root}`)")
    claim = Claim(root, {}, created, fd)
    try:
        marker = read_marker(root)
        if marker is None:
            others = sorted(p.name for p in root.iterdir() if p.name != LOCK)
            if others:
                raise SweepConfigError(f"{root} already holds files ({', '.join(others[:3])}): pass another --name, "
                                       f"`tsweep resume {root}` if it is a sweep, or remove the folder")
            marker = new_marker(root)
            write_exclusive(root / MARKER, marker)
        elif has_ray_state(str(root)) or any((root / "trials").glob("*.json")):
            raise SweepConfigError(f"{root} already holds a sweep: pass another --name, or continue it with "
                                   f"`tsweep resume {root}`")
        else:
            progress(f"{root} holds a sweep that stopped before Ray saved any state (no trial records): running "
                     "it again under the same name")
        claim.marker = marker
        return claim
    except BaseException:
        claim.release()
        raise


def abandon(claim: Claim) -> None:
    """Undo a claim whose sweep never started (a bad flag found later): the folder goes if this run made it."""
    if claim.storage:
        _delete(claim.storage)
    if claim.created:
        for name in (MARKER, LOCK):
            (claim.root / name).unlink(missing_ok=True)
        try:
            claim.root.rmdir()
        except OSError:  # something else was written into it meanwhile: leave it
            pass
    claim.release()


def write_exclusive(path: Path, data: dict) -> None:
    """Create `path` with `data` as JSON, failing with FileExistsError if it exists (O_EXCL), durably."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(path.parent)


def claim_storage(experiment: str, root: Path, marker: dict) -> str | None:
    """Mark the --storage experiment folder as this sweep's, refusing one that belongs to another sweep.

    Returns the marker's location when this call wrote it, None when the sweep (a rerun) already had it.

    On a local (or shared-mount) path the marker is created with O_EXCL: of two drivers claiming one experiment
    folder exactly one wins. On a URI, object stores offer no create-if-absent through pyarrow: the marker is
    read, then written, so a second sweep started later is refused but two started within the same moment may
    both pass.
    """
    owner = read_marker(experiment)
    if owner is None:
        if has_ray_state(experiment):
            raise SweepConfigError(f"--storage: {experiment} already holds another Ray experiment: pass another "
                                   "--name or --storage")
        claim = {"id": marker["id"], "results": str(root), "host": socket.gethostname()}
        location = join_location(experiment, MARKER)
        if is_uri(experiment):
            _write_text(location, json.dumps(claim))
            return location
        Path(experiment).mkdir(parents=True, exist_ok=True)
        try:
            write_exclusive(Path(location), claim)
            return location
        except FileExistsError:
            owner = read_marker(experiment)
    if owner.get("id") != marker["id"]:
        raise SweepConfigError(f"--storage: {experiment} belongs to the sweep in {owner.get('results')}: pass "
                               "another --name or --storage")
    if has_ray_state(experiment):
        raise SweepConfigError(f"--storage: {experiment} already holds this sweep's Ray state: continue it with "
                               f"`tsweep resume {root}`")
    return None


def has_ray_state(experiment: str) -> bool:
    """Whether an experiment folder (local path or URI) holds a saved Ray experiment state."""
    return any(posixpath.basename(p).startswith(STATE_PREFIX) for p in list_files(experiment))


def list_files(folder: str) -> list[str]:
    """Paths of the files directly in a folder (local path or URI); [] when it does not exist."""
    if not is_uri(folder):
        path = Path(folder)
        return sorted(str(p) for p in path.iterdir() if p.is_file()) if path.is_dir() else []
    import pyarrow.fs

    fs, base = pyarrow.fs.FileSystem.from_uri(folder)
    infos = fs.get_file_info(pyarrow.fs.FileSelector(base, allow_not_found=True))
    return sorted(i.path for i in infos if i.type == pyarrow.fs.FileType.File)


def check_owner(root: Path, experiment: str, trust: bool) -> None:
    """Refuse to resume a sweep whose files someone else wrote, unless `trust`.

    Checked: the results folder, its sweep.json and marker, and the local experiment folder with the files in
    it (tuner.pkl, experiment_state-*, searcher and callback state). A URI has no owner to compare: its access
    rules decide who could have written it.
    """
    if trust:
        return
    paths = [root, *(root / name for name in ("sweep.json", MARKER) if (root / name).exists())]
    if not is_uri(experiment) and Path(experiment).is_dir():
        paths += [Path(experiment), *(Path(p) for p in list_files(experiment))]
    me = os.getuid()
    for path in paths:
        uid = path.stat().st_uid
        if uid != me:
            raise SweepConfigError(
                f"{path} is owned by {_user(uid)}, not by you ({_user(me)}): `tsweep resume` loads Ray's pickled "
                "state from the sweep (tuner.pkl, the searcher's and callbacks' state), and unpickling runs "
                f"whatever code its writer put there. If you trust whoever can write {path}, pass --trust")


def _user(uid: int) -> str:
    import pwd

    try:
        return f"{pwd.getpwuid(uid).pw_name} (uid {uid})"
    except KeyError:
        return f"uid {uid}"


def _read_text(location: str) -> str | None:
    if not is_uri(location):
        try:
            return Path(location).read_text()
        except (FileNotFoundError, NotADirectoryError):
            return None
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(location)
    if fs.get_file_info(path).type == pyarrow.fs.FileType.NotFound:
        return None
    with fs.open_input_stream(path) as f:
        return f.read().decode()


def _delete(location: str) -> None:
    if not is_uri(location):
        Path(location).unlink(missing_ok=True)
        return
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(location)
    fs.delete_file(path)


def _write_text(location: str, text: str) -> None:
    """Write a small file at a URI (a local path goes through `write_exclusive` instead)."""
    import pyarrow.fs

    fs, path = pyarrow.fs.FileSystem.from_uri(location)
    fs.create_dir(posixpath.dirname(path), recursive=True)
    with fs.open_output_stream(path) as f:
        f.write(text.encode())


def update_storage_owner(experiment: str, root: Path, marker: dict[str, Any]) -> None:
    """Point a storage experiment's marker at the results folder that now owns it (a moved sweep)."""
    claim = {"id": marker["id"], "results": str(root), "host": socket.gethostname()}
    if is_uri(experiment):
        _write_text(join_location(experiment, MARKER), json.dumps(claim))
    else:
        from tsweep.files import atomic_write_json

        atomic_write_json(Path(experiment) / MARKER, claim)
