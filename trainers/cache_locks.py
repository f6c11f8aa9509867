"""Use records and locks of tsweep cache entries: how a reader keeps an entry from being evicted under it.

Last use is recorded by tsweep itself, not read from atime (often off: noatime, relatime): readers touch the
entry's ``<key>.json`` / ``meta.json`` / ``.complete`` (`touch`). A process using an entry holds a shared
``flock`` on its data file (`hold`: ``<key>.npy``, ``images.npy``, ``.complete``) for as long as it may use it;
eviction (``trainers.cache_eviction``) takes an exclusive non-blocking lock (`try_exclusive`) and skips the
entry when that fails, so an entry a running sweep holds is never removed. (The data file, not ``<key>.lock``:
that one is the compute lock, taken exclusively by a process that waits for another to finish computing the
entry.)

Pure functions over files: no TensorFlow, no Ray, no numpy. Linux/macOS only (fcntl).
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path
from typing import IO, TYPE_CHECKING

if TYPE_CHECKING:
    from tsweep.trainers.cache_store import Entry


def touch(path: Path) -> None:
    """Record a use of an entry (its mtime); silently nothing on read-only caches or vanished entries."""
    try:
        os.utime(path)
    except OSError:
        pass


def _same_file(handle: IO, path: Path) -> bool:
    try:
        a, b = os.fstat(handle.fileno()), os.stat(path)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def hold(path: Path) -> IO | None:
    """A shared lock on an entry's data file, held until the returned file is closed (or the process ends).

    Works on read-only caches (the file is opened read-only). Returns None when the file is missing or was
    removed while waiting (an eviction in progress): the caller then treats the entry as absent.
    """
    try:
        handle = open(path, "rb")
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_SH)  # waits out an eviction that is deleting it right now
        if _same_file(handle, path):
            return handle
    except OSError:
        pass
    handle.close()
    return None


def try_exclusive(path: Path) -> IO | None:
    """An exclusive lock on `path` if nobody holds it, else None. Raises OSError (e.g. a missing file)."""
    try:
        handle = open(path, "r+b")
    except PermissionError:
        handle = open(path, "rb")
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.close()
        return None
    except OSError:
        handle.close()
        raise
    return handle


def is_busy(path: Path) -> bool:
    """True when a process holds a lock on `path` (False too when it cannot be opened)."""
    try:
        handle = try_exclusive(path)
    except OSError:
        return False
    if handle is None:
        return True
    handle.close()
    return False


def is_held(entry: Entry) -> bool:
    """True when a process holds the entry (a shared lock on its data file), or is still writing it."""
    if entry.kind == "partial":
        return entry.lock_file is not None and entry.lock_file.exists() and is_busy(entry.lock_file)
    if entry.lock_file is None or not entry.lock_file.exists():
        return False
    return is_busy(entry.lock_file)
