"""Least-recently-used eviction of the tsweep cache root (``tsweep cache clean``, sweep starts), and the
default disk budget of a sweep start.

`evict` goes through the entries of ``trainers.cache_store.scan``, least recently used first, and never removes
one a process holds: it takes an exclusive non-blocking lock on the entry's data file and skips the entry when
that fails (``trainers.cache_locks``). A folder is renamed out of the way before it is deleted, so readers see
it gone at once.

Pure functions over a folder: no TensorFlow, no Ray, no numpy. Linux/macOS only (fcntl).
"""

from __future__ import annotations

import os
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Sequence

from tsweep.trainers.cache_locks import is_held, try_exclusive
from tsweep.trainers.cache_store import DECODED, Entry, total_bytes

DEFAULT_DISK_CAP = 20 * 2**30  # a sweep start's budget: 20 GB or DEFAULT_DISK_FRACTION of the free disk
DEFAULT_DISK_FRACTION = 0.25


@dataclass
class Eviction:
    """What `evict` did (or, with dry_run, would do)."""

    removed: list[Entry] = field(default_factory=list)
    held: list[Entry] = field(default_factory=list)  # wanted, but a process holds them
    failed: list[tuple[Entry, str]] = field(default_factory=list)  # (entry, OS error)
    before: int = 0  # bytes before
    after: int = 0  # bytes after (or that would remain)


def default_budget(root: str | os.PathLike) -> int:
    """A sweep start's disk budget for the cache: DEFAULT_DISK_CAP (20 GB) or DEFAULT_DISK_FRACTION (25 %) of
    the free space of the disk holding `root`, whichever is smaller."""
    probe = Path(root).expanduser().absolute()
    while not probe.exists() and probe != probe.parent:
        probe = probe.parent
    try:
        free = shutil.disk_usage(probe).free
    except OSError:
        return DEFAULT_DISK_CAP
    return min(DEFAULT_DISK_CAP, int(free * DEFAULT_DISK_FRACTION))


def _remove_tree(path: Path) -> None:
    """Rename a folder out of the way (readers see it gone at once), then delete it."""
    gone = path.with_name(f".evicted-{path.name}-{os.getpid()}")
    os.rename(path, gone)
    shutil.rmtree(gone, ignore_errors=True)


def remove(entry: Entry) -> bool:
    """Delete one entry unless a process holds it; True when deleted, False when held. Raises OSError."""
    if entry.kind == "partial":
        if is_held(entry):
            return False
        if entry.path.is_dir():
            shutil.rmtree(entry.path)
        else:
            entry.path.unlink(missing_ok=True)
        return True
    if entry.lock_file is None or not entry.lock_file.exists():  # a broken entry: nothing to lock
        handle = None
    else:
        handle = try_exclusive(entry.lock_file)
        if handle is None:
            return False
    try:
        if entry.path.is_dir():
            _remove_tree(entry.path)
        else:
            entry.path.unlink(missing_ok=True)  # first the data file: readers then see the entry gone
            for extra in entry.files:
                if extra.suffix == ".lock":
                    _unlink_lock(extra)
                else:
                    extra.unlink(missing_ok=True)
    finally:
        if handle is not None:
            handle.close()
    return True


def _unlink_lock(path: Path) -> None:
    """Remove a FeatureCache compute lock unless a process is computing (or waiting to compute) the entry."""
    try:
        handle = try_exclusive(path)
    except OSError:
        return
    if handle is not None:
        with handle:
            path.unlink(missing_ok=True)


def evict(entries: Sequence[Entry], *, max_bytes: int | None = None, older_than: float | None = None,
          everything: bool = False, current: Iterable[str] = (), now: float | None = None,
          dry_run: bool = False) -> Eviction:
    """Remove least recently used entries; held ones are skipped (and reported), never removed.

    Args:
        entries: from `cache_store.scan`.
        max_bytes: remove LRU entries until the rest holds at most this many bytes.
        older_than: also remove every entry last used more than this many seconds ago.
        everything: remove every entry (that no process holds). Leftovers of killed processes (kind
            "partial") are always removed.
        current: decoded keys of a sweep about to start: those decoded entries are kept, and features
            computed from them go after every other entry.
        now: the time `older_than` counts from; default now.
        dry_run: only say what would be removed (held entries are still checked).
    """
    now = time.time() if now is None else now
    current = set(current)
    result = Eviction(before=total_bytes(entries))
    remaining = result.before
    order = sorted((e for e in entries if not (e.kind == DECODED and e.key in current)),
                   key=lambda e: (e.dataset_key in current, e.last_used, e.key))
    for entry in order:
        wanted = (everything or entry.kind == "partial"
                  or (older_than is not None and now - entry.last_used > older_than)
                  or (max_bytes is not None and remaining > max_bytes))
        if not wanted:
            continue
        try:
            done = not is_held(entry) if dry_run else remove(entry)
        except OSError as e:
            result.failed.append((entry, str(e)))
            continue
        if done:
            result.removed.append(entry)
            remaining -= entry.bytes
        else:
            result.held.append(entry)
    result.after = remaining
    return result
