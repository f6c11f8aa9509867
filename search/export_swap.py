"""Crash-safe replacement of `results/<name>/export/`: a kill at any moment leaves the old export or the new one
complete, never neither, and concurrent exporters never delete each other's files.

How (all in the sweep folder, one filesystem, so every step is a `rename`):

1. `staging(root)` makes a folder of its own, `.export.tmp-<pid>-<random>`, holding an exclusive `flock` on its
   `.owner` file while the export is written into it (concurrent exporters each get their own; a later exporter
   removes only folders whose owner holds no lock, i.e. is dead).
2. `publish(root, staged)` fsyncs every file, writes the completion marker `EXPORT_COMPLETE` last, then, under the
   sweep's `.export.lock` (`flock`, so swaps never interleave): `recover` first, then `export/` ->
   `export.previous/` (the one before that goes to a `.export.trash-*` folder, deleted after the swap), then the
   staged folder -> `export/`.

A kill between those two renames leaves `export.previous/` complete and no `export/`: `recover` (run by the next
export) renames it back, and readers (`current_export`) read it meanwhile. A folder is only ever renamed into
`export/` or `export.previous/` once complete, so whatever holds those names is a whole export.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import secrets
import shutil
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Iterator

from tsweep.search.records import EXPORT_DIR

PREVIOUS_DIR = f"{EXPORT_DIR}.previous"
EXPORT_COMPLETE = ".complete"  # written last into a finished export: {"written": ..., "pid": ...}
LOCK_FILE = f".{EXPORT_DIR}.lock"
STAGING_PREFIX = f".{EXPORT_DIR}.tmp-"
TRASH_PREFIX = f".{EXPORT_DIR}.trash-"
LEGACY_OLD = f".{EXPORT_DIR}.old"  # where exports before this module parked the old export mid-swap
LEGACY_TMP = f".{EXPORT_DIR}.tmp"  # and the one temporary folder they all shared
OWNER_FILE = ".owner"


def is_complete(folder: Path) -> bool:
    """True when `folder` holds a finished export: its completion marker, or (an export written before the marker
    existed) its labels.json and config.json."""
    if (folder / EXPORT_COMPLETE).is_file():
        return True
    return (folder / "labels.json").is_file() and (folder / "config.json").is_file()


def current_export(root: Path) -> Path:
    """The export readers should use: `export/`, or `export.previous/` while a killed swap left only that (until
    the next export restores it). Returns `root/export` when neither exists (the caller's "no export" message)."""
    final, previous = root / EXPORT_DIR, root / PREVIOUS_DIR
    if not final.exists() and previous.is_dir() and is_complete(previous):
        return previous
    return final


@contextmanager
def swap_lock(root: Path) -> Iterator[None]:
    """Hold the sweep's export lock: swaps (and recoveries) of one sweep never interleave."""
    with open(root / LOCK_FILE, "a+b") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def recover(root: Path, progress: Callable[[str], None] = print) -> None:
    """Repair what a killed swap left; call with `swap_lock` held. No `export/` but a complete `export.previous/`
    (or the `.export.old` of an older tsweep): rename it back. Then delete trash and dead exporters' folders
    (and an older tsweep's `.export.tmp`)."""
    final = root / EXPORT_DIR
    if not final.exists():
        for name in (PREVIOUS_DIR, LEGACY_OLD):
            parked = root / name
            if parked.is_dir() and is_complete(parked):
                os.rename(parked, final)
                _fsync_dir(root)
                progress(f"restored {final} from {parked} (an earlier export was interrupted between its renames)")
                break
    for leftover in [*root.glob(f"{TRASH_PREFIX}*"), root / LEGACY_TMP]:
        shutil.rmtree(leftover, ignore_errors=True)
    for staged in root.glob(f"{STAGING_PREFIX}*"):
        if not _owner_alive(staged):
            shutil.rmtree(staged, ignore_errors=True)


@contextmanager
def staging(root: Path) -> Iterator[Path]:
    """A new folder of this exporter's own to write an export into, locked for as long as the block runs; it is
    deleted when the block ends unless `publish` moved it into place."""
    root.mkdir(parents=True, exist_ok=True)
    folder = root / f"{STAGING_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    folder.mkdir()
    with open(folder / OWNER_FILE, "a+b") as owner:
        fcntl.flock(owner, fcntl.LOCK_EX)
        try:
            yield folder
        finally:
            shutil.rmtree(folder, ignore_errors=True)  # gone already when published (renamed to export/)


def publish(root: Path, staged: Path, progress: Callable[[str], None] = print, what: str = "") -> Path:
    """Make the finished export in `staged` the sweep's `export/`, keeping the one it replaces as
    `export.previous/` (and saying so). `what` describes the new export in the marker (e.g. its trial)."""
    _fsync_tree(staged)
    marker = {"written": time.strftime("%Y-%m-%dT%H:%M:%S"), "pid": os.getpid(), "what": what}
    with open(staged / EXPORT_COMPLETE, "w") as handle:  # last: the marker vouches for every file before it
        json.dump(marker, handle)
        handle.flush()
        os.fsync(handle.fileno())
    _fsync_dir(staged)
    final, previous = root / EXPORT_DIR, root / PREVIOUS_DIR
    with swap_lock(root):
        recover(root, progress)
        replaced = final.exists()
        if replaced:
            if previous.exists():  # out of the way in one rename; deleted once the swap is done
                os.rename(previous, root / f"{TRASH_PREFIX}{os.getpid()}-{secrets.token_hex(4)}")
            os.rename(final, previous)
        os.rename(staged, final)
        (final / OWNER_FILE).unlink(missing_ok=True)  # its flock ends with `staging`; the name is no use now
        _fsync_dir(root)
        for trash in root.glob(f"{TRASH_PREFIX}*"):
            shutil.rmtree(trash, ignore_errors=True)
    if replaced:
        progress(f"kept the export it replaced as {previous}")
    return final


def _owner_alive(folder: Path) -> bool:
    """True while the exporter that made a staging folder runs: it holds an exclusive flock on the folder's
    owner file. A folder without one counts as alive for a minute (its exporter is between mkdir and lock)."""
    try:
        handle = open(folder / OWNER_FILE, "r+b")
    except FileNotFoundError:
        try:
            return time.time() - folder.stat().st_mtime < 60
        except OSError:
            return False
    except OSError:
        return True  # unreadable: not ours to judge, leave it
    with handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                return True
            raise
        return False


def _fsync_tree(folder: Path) -> None:
    """Flush every file and folder under `folder` to disk, so the marker cannot outlive a power loss of them."""
    for dirpath, _, names in os.walk(folder):
        for name in names:
            with open(os.path.join(dirpath, name), "rb") as handle:
                os.fsync(handle.fileno())
        _fsync_dir(Path(dirpath))


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
