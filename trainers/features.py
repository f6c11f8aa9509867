"""An on-disk + in-memory cache of frozen-prefix activations ("bottleneck features").

Each entry is one ``.npy`` array under ``directory``, named by the SHA-256 of a canonical JSON of its key
parts (backbone, alpha, weights identity, image size, cutoff, dataset identity, split, format version, ...:
whatever decides the values; see ``trainers.cached_train.feature_key``). An entry is computed once per
node: the first process takes an ``fcntl`` lock on ``<key>.lock`` and computes while the others (processes
or threads) wait on the lock, then read its file. Files are written to a temporary name and renamed, so a
reader never sees half an array. ``dtype="float16"`` stores half the bytes (~3 significant digits).

Loaded arrays stay in a per-process LRU bounded by ``memory_budget_bytes``; the least recently used are
dropped from it first, and an array larger than the whole budget is never loaded into memory but served
memory-mapped from its file (read-only), i.e. it spills to disk. ``clear()`` empties the directory. When the
directory cannot be written (full, read-only), the cache warns once and keeps what it computes in memory only.

Entries are deleted by ``tsweep cache clean`` and by a sweep start over its disk budget, least recently used
first (``trainers.cache_eviction``), never one a process holds (``trainers.cache_locks``): a cache holds a
shared ``flock`` on the ``.npy`` of every entry it served (up to MAX_HELD, then the least recently served are
let go; ``close()`` lets all go), and records each use in the mtime of ``<key>.json`` (at most every
TOUCH_EVERY_S per entry), not in atime. Arrays come from ``activations.prefix_features`` (re-exported here).
Linux/macOS only (fcntl). No TensorFlow import at module level.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import threading
import time
import warnings
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterable, Iterator

import numpy as np

from tsweep.files import atomic_open
from tsweep.trainers.activations import prefix_features  # noqa: F401 (re-exported)
from tsweep.trainers.cache_locks import hold, touch

FORMAT_VERSION = 1
DTYPES = ("float32", "float16")
DEFAULT_FRACTION = 0.25
FEATURES_SUBDIR = "features"
_FALLBACK_RAM = 8 * 2**30
MAX_HELD = 64  # entries a cache keeps a shared lock on (open files), least recently served let go first
TOUCH_EVERY_S = 60.0  # memory hits record a use in <key>.json's mtime at most this often per entry


def default_memory_budget(fraction: float = DEFAULT_FRACTION) -> int:
    """`fraction` (default 25%) of this machine's physical RAM, in bytes (of 8 GiB when unknown).

    The budget is per process: with several trials per node, pass e.g. ``fraction / trials_per_node``.
    """
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        total = _FALLBACK_RAM
    return int(max(total, 0) * fraction)


def default_feature_cache(cache_dir: str | os.PathLike | None = None, fraction: float = DEFAULT_FRACTION,
                          dtype: str = "float32") -> FeatureCache:
    """The cache in ``<cache_dir>/features`` (default `data.default_cache_dir()`), `fraction` of RAM its budget."""
    from tsweep.trainers.data import default_cache_dir

    root = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    return FeatureCache(root / FEATURES_SUBDIR, default_memory_budget(fraction), dtype)


def key_of(key_parts: dict) -> str:
    """SHA-256 hex of the canonical JSON (sorted keys, no spaces) of `key_parts` plus the format version."""
    blob = json.dumps({"feature_format": FORMAT_VERSION, **key_parts}, sort_keys=True, separators=(",", ":"),
                      default=str)
    return hashlib.sha256(blob.encode()).hexdigest()


class FeatureCache:
    """Arrays computed once per key and node, kept on disk and (within a memory budget) in memory.

    Args:
        directory: where the ``<key>.npy`` files (and ``<key>.json`` key parts, ``<key>.lock``) live;
            created if missing.
        memory_budget_bytes: bound of this process's in-memory LRU; None = ``default_memory_budget()``.
            0 serves everything memory-mapped from disk.
        dtype: "float32" (default) or "float16", the stored and returned dtype.
        waypoints: freeze cutoffs later trials may fine-tune from (the space's): a pass through one of them keeps
            its activations too (`cached_train.PrefixFeatures`), so no block runs twice for them. Default none.

    Attributes:
        stats: counters "computed", "memory_hits", "disk_loads", "mmap_loads", "evictions".
    """

    def __init__(self, directory: str | os.PathLike, memory_budget_bytes: int | None = None,
                 dtype: str = "float32", waypoints: Iterable[int] = ()) -> None:
        if dtype not in DTYPES:
            raise ValueError(f"FeatureCache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.directory, self.waypoints = Path(directory).expanduser(), frozenset(int(w) for w in waypoints)
        self.disk_error: str | None = None  # set when the directory cannot be written: memory only from then on
        try:
            self.directory.mkdir(parents=True, exist_ok=True)
        except OSError as e:
            self._disk_failed(e)
        self.memory_budget_bytes = default_memory_budget() if memory_budget_bytes is None \
            else max(0, int(memory_budget_bytes))
        self.dtype = np.dtype(dtype)
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.RLock()
        self.stats = {"computed": 0, "memory_hits": 0, "disk_loads": 0, "mmap_loads": 0, "evictions": 0}
        self._held: OrderedDict[str, Any] = OrderedDict()  # key -> open .npy with a shared flock on it
        self._touched: dict[str, float] = {}  # key -> time.monotonic() of the last recorded use

    # ---- the public API ------------------------------------------------------------------------------
    def key(self, key_parts: dict) -> str:
        """The entry key of `key_parts` in this cache (its storage dtype is part of the key)."""
        return key_of({**key_parts, "stored_dtype": self.dtype.name})

    def path(self, key_parts: dict) -> Path:
        return self.directory / f"{self.key(key_parts)}.npy"

    def get_or_compute(self, key_parts: dict, compute: Callable[[], np.ndarray]) -> np.ndarray:
        """The array of `key_parts`: from memory, from disk, or `compute()`d (once per node) and stored.

        The result has the cache's dtype and must be treated as read-only (it may be shared or mapped).

        Args:
            key_parts: JSON-serialisable dict of everything that determines the array.
            compute: makes the array when no process has stored it yet.
        """
        key = self.key(key_parts)
        with self._lock:
            hit = self._memory.get(key)
            if hit is not None:
                self._memory.move_to_end(key)
                self.stats["memory_hits"] += 1
        if hit is not None:
            self._used(key)
            return hit
        target = self.directory / f"{key}.npy"
        for _ in range(3):  # again when an eviction removed the entry between two steps
            if target.exists() and self._hold(key, target):
                self._used(key)
                return self._load(key, target)
            self._release(key)
            fresh = None
            with self._file_lock(key):
                if not target.exists():  # nobody stored it while we waited for the lock
                    array = np.ascontiguousarray(np.asarray(compute()), dtype=self.dtype)
                    if self.disk_error is None:
                        self._write(target, array, key_parts)
                    with self._lock:
                        self.stats["computed"] += 1
                    if array.nbytes <= self.memory_budget_bytes or self.disk_error is not None:
                        fresh = array
            if fresh is not None:  # (the shared lock only now: a waiter for the compute lock comes next)
                self._hold(key, target)
                fresh.flags.writeable = False
                return self._remember(key, fresh)
        return self._load(key, target)

    def in_memory_bytes(self) -> int:
        with self._lock:
            return sum(a.nbytes for a in self._memory.values())

    def in_memory_keys(self) -> list[str]:
        """Keys held in memory, least recently used first."""
        with self._lock:
            return list(self._memory)

    def forget(self) -> None:
        """Drop the in-memory arrays of this process (files stay)."""
        with self._lock:
            self._memory.clear()

    def close(self) -> None:
        """Let go of the shared locks on the entries this cache served: eviction may then remove them."""
        with self._lock:
            held, self._held = list(self._held.values()), OrderedDict()
        for handle in held:
            handle.close()

    def held_keys(self) -> list[str]:
        """Keys of the entries this cache holds a shared lock on, least recently served first."""
        with self._lock:
            return list(self._held)

    def clear(self) -> None:
        """Delete every stored entry and forget the in-memory ones."""
        self.forget()
        self.close()
        for path in self.directory.glob("*"):
            if path.suffix in (".npy", ".json", ".lock", ".tmp"):
                path.unlink(missing_ok=True)

    # ---- internals -----------------------------------------------------------------------------------
    @contextmanager
    def _file_lock(self, key: str) -> Iterator[None]:
        # flock locks belong to an open file description, so two threads of one process block each other too.
        path = self.directory / f"{key}.lock"
        while True:
            try:
                handle = open(path, "a+b") if self.disk_error is None else None
            except OSError as e:
                self._disk_failed(e)
                handle = None
            if handle is None:  # memory only: no file to lock, and this process computes for itself
                yield
                return
            with handle:
                fcntl.flock(handle, fcntl.LOCK_EX)
                try:
                    st, now = os.fstat(handle.fileno()), os.stat(path)
                except FileNotFoundError:
                    continue  # an eviction unlinked the lock file while we waited: lock the new one
                if (st.st_dev, st.st_ino) != (now.st_dev, now.st_ino):
                    continue
                try:
                    yield
                finally:
                    fcntl.flock(handle, fcntl.LOCK_UN)
                return

    def _disk_failed(self, error: OSError) -> None:
        """Go on in memory only (once per cache, with a warning), as the decoded-image cache does."""
        if self.disk_error is not None:
            return
        self.disk_error = f"{type(error).__name__}: {error}"
        warnings.warn(f"could not write the feature cache {self.directory} ({self.disk_error}): keeping features in "
                      "this process's memory only (each trial process computes its own); set --cache-dir or "
                      "TSWEEP_CACHE to a writable folder with free space", stacklevel=3)

    def _hold(self, key: str, target: Path) -> bool:
        """Keep a shared lock on the entry's file (eviction skips it); False when it is gone (evicted)."""
        with self._lock:
            if key in self._held:
                self._held.move_to_end(key)
                return True
        handle = hold(target)
        if handle is None:
            return False
        with self._lock:
            if key in self._held:  # another thread got there first
                handle.close()
                self._held.move_to_end(key)
                return True
            self._held[key] = handle
            while len(self._held) > MAX_HELD:
                self._held.popitem(last=False)[1].close()
        return True

    def _release(self, key: str) -> None:
        with self._lock:
            handle = self._held.pop(key, None)
        if handle is not None:
            handle.close()

    def _used(self, key: str) -> None:
        """Record a use in the mtime of <key>.json (what `tsweep cache` shows and eviction orders by)."""
        now = time.monotonic()
        with self._lock:
            if now - self._touched.get(key, -TOUCH_EVERY_S) < TOUCH_EVERY_S:
                return
            self._touched[key] = now
        touch(self.directory / f"{key}.json")

    def _write(self, target: Path, array: np.ndarray, key_parts: dict) -> None:
        meta = json.dumps({"key_parts": key_parts, "shape": list(array.shape), "dtype": array.dtype.name},
                          sort_keys=True, indent=1, default=str)
        try:
            with atomic_open(target, suffix=".tmp", fsync=True) as handle:  # .<key>.npy.<random>.tmp meanwhile
                np.save(handle, array, allow_pickle=False)
                target.with_suffix(".json").write_text(meta)  # informative only
        except OSError as e:  # a full or read-only disk: the caller keeps the array in memory instead
            self._disk_failed(e)

    def _load(self, key: str, target: Path) -> np.ndarray:
        mapped = np.load(target, mmap_mode="r", allow_pickle=False)
        if mapped.nbytes > self.memory_budget_bytes:
            with self._lock:
                self.stats["mmap_loads"] += 1
            return mapped  # spills to disk: pages come from the file (and the OS page cache)
        array = np.array(mapped)  # read into memory
        array.flags.writeable = False
        with self._lock:
            self.stats["disk_loads"] += 1
        return self._remember(key, array)

    def _remember(self, key: str, array: np.ndarray) -> np.ndarray:
        with self._lock:
            self._memory[key] = array
            self._memory.move_to_end(key)
            used = sum(a.nbytes for a in self._memory.values())
            while used > self.memory_budget_bytes and len(self._memory) > 1:
                _, dropped = self._memory.popitem(last=False)
                used -= dropped.nbytes
                self.stats["evictions"] += 1
        return array

