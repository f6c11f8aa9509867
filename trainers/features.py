"""An on-disk + in-memory cache of frozen-prefix activations ("bottleneck features").

Each entry is one ``.npy`` array under ``directory``, named by the SHA-256 of a canonical JSON of its key
parts (backbone, alpha, weights identity, image size, cutoff, dataset identity, split, format version, ...:
whatever decides the values; see ``trainers.cached_train.feature_key``). An entry is computed once per
node: the first process takes an ``fcntl`` lock on ``<key>.lock`` and computes while the others (processes
or threads) wait on the lock, then read its file. Files are written to a temporary name and renamed, so a
reader never sees half an array. ``dtype="float16"`` stores half the bytes (rounding to ~3 significant
digits).

Loaded arrays stay in a per-process LRU bounded by ``memory_budget_bytes``; the least recently used are
dropped from it first, and an array larger than the whole budget is never loaded into memory but served
memory-mapped from its file (read-only), i.e. it spills to disk. Files are never deleted automatically:
``clear()`` empties the directory. Linux/macOS only (fcntl). No TensorFlow import at module level.
"""

from __future__ import annotations

import fcntl
import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable, Iterator

import numpy as np

FORMAT_VERSION = 1
DTYPES = ("float32", "float16")
DEFAULT_FRACTION = 0.25
FEATURES_SUBDIR = "features"
_FALLBACK_RAM = 8 * 2**30


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
    """The cache in ``<cache_dir>/features`` (default: ``trainers.data.default_cache_dir()``, the decoded-image
    cache's root) with `fraction` of RAM as this process's memory budget."""
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

    Attributes:
        stats: counters "computed", "memory_hits", "disk_loads", "mmap_loads", "evictions".
    """

    def __init__(self, directory: str | os.PathLike, memory_budget_bytes: int | None = None,
                 dtype: str = "float32") -> None:
        if dtype not in DTYPES:
            raise ValueError(f"FeatureCache dtype must be one of {', '.join(DTYPES)}, got {dtype!r}")
        self.directory = Path(directory).expanduser()
        self.directory.mkdir(parents=True, exist_ok=True)
        self.memory_budget_bytes = default_memory_budget() if memory_budget_bytes is None \
            else max(0, int(memory_budget_bytes))
        self.dtype = np.dtype(dtype)
        self._memory: OrderedDict[str, np.ndarray] = OrderedDict()
        self._lock = threading.RLock()
        self.stats = {"computed": 0, "memory_hits": 0, "disk_loads": 0, "mmap_loads": 0, "evictions": 0}

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
                return hit
        target = self.directory / f"{key}.npy"
        if not target.exists():
            with self._file_lock(key):
                if not target.exists():  # nobody stored it while we waited for the lock
                    array = np.ascontiguousarray(np.asarray(compute()), dtype=self.dtype)
                    self._write(target, array, key_parts)
                    with self._lock:
                        self.stats["computed"] += 1
                    if array.nbytes <= self.memory_budget_bytes:
                        array.flags.writeable = False
                        return self._remember(key, array)
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

    def clear(self) -> None:
        """Delete every stored entry and forget the in-memory ones."""
        self.forget()
        for path in self.directory.glob("*"):
            if path.suffix in (".npy", ".json", ".lock", ".tmp"):
                path.unlink(missing_ok=True)

    # ---- internals -----------------------------------------------------------------------------------
    @contextmanager
    def _file_lock(self, key: str) -> Iterator[None]:
        # flock locks belong to an open file description, so two threads of one process block each other too.
        with open(self.directory / f"{key}.lock", "a+b") as handle:
            fcntl.flock(handle, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(handle, fcntl.LOCK_UN)

    def _write(self, target: Path, array: np.ndarray, key_parts: dict) -> None:
        fd, tmp = tempfile.mkstemp(prefix=f".{target.stem}.", suffix=".tmp", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as handle:
                np.save(handle, array, allow_pickle=False)
                handle.flush()
                os.fsync(handle.fileno())
            meta = json.dumps({"key_parts": key_parts, "shape": list(array.shape), "dtype": array.dtype.name},
                              sort_keys=True, indent=1, default=str)
            target.with_suffix(".json").write_text(meta)  # informative only
            os.replace(tmp, target)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise

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


def prefix_features(prefix_model: Any, x: np.ndarray, batch_size: int = 32) -> np.ndarray:
    """The prefix model's outputs for images `x`, in batches of `batch_size`, in inference mode (training=False).

    Every batch has exactly `batch_size` rows (the last one is zero-padded, and the padding dropped), so the
    model is traced once whatever len(x), and each image's activations come out the same whatever the
    dataset's size (CPU convolutions can round differently at different batch sizes).

    Args:
        prefix_model: a keras.Model (e.g. the prefix from ``trainers.split.split_model``).
        x: inputs (N, ...); may be a memory map.
        batch_size: images per forward pass; default 32.
    """
    outputs = []
    for start in range(0, len(x), batch_size):
        chunk = np.asarray(x[start:start + batch_size])
        real = len(chunk)
        if real < batch_size:
            chunk = np.concatenate([chunk, np.zeros((batch_size - real, *chunk.shape[1:]), chunk.dtype)])
        outputs.append(np.asarray(prefix_model.predict_on_batch(chunk))[:real])
    if not outputs:
        return np.zeros((0, *prefix_model.output.shape[1:]), dtype=prefix_model.output.dtype)
    return np.concatenate(outputs)
