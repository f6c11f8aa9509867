"""What the tsweep cache root holds: its entries, found and described for ``tsweep cache`` and eviction.

The cache root (``$TSWEEP_CACHE``, ``~/.cache/tsweep`` or ``--cache-dir``) holds:

* ``decoded/<key>/`` (``images.npy`` + ``meta.json``): a dataset's images decoded at one size
  (``trainers.decoded_cache``); kind "decoded";
* ``features/<key>.npy`` (+ ``<key>.json`` key parts, ``<key>.lock``): a `FeatureCache` entry; its kind
  comes from the key parts' "what": "prefix_features" = "features", "view_features" = "views", any other
  value is listed as its own kind;
* ``remote/<key>/``: a node's copy of a dataset given as a URI (``trainers.remote``); kind "remote";
* temporary files and folders that a killed process left behind (untouched for an hour); kind "partial".

An entry's last use is the mtime its readers touch, and the file they hold a shared lock on is its
`Entry.lock_file` (``trainers.cache_locks``); ``trainers.cache_eviction`` removes least recently used entries.

Pure functions over a folder: no TensorFlow, no Ray, no numpy.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Sequence

DECODED, FEATURES, REMOTE = "decoded", "features", "remote"
REMOTE_DONE = ".complete"  # trainers.remote's marker of a finished copy
KIND_OF_WHAT = {"prefix_features": "features", "view_features": "views"}
PARTIAL_AGE_S = 3600.0  # a temporary file untouched this long belongs to a process that died
_UNITS = ("B", "KB", "MB", "GB", "TB")


@dataclass
class Entry:
    """One removable thing in the cache root.

    Attributes:
        kind: "decoded", "features", "views", "remote", "partial" or another FeatureCache "what".
        path: the entry's data file (``<key>.npy``) or folder.
        key: its cache key (the file stem or folder name).
        bytes: apparent size of everything eviction removes.
        last_used: seconds since the epoch of the last recorded use (or of its writing).
        lock_file: the file users hold a shared lock on (None: nothing to lock, e.g. partial files).
        files: what eviction removes besides `path` (a FeatureCache entry's .json and .lock).
        dataset: the dataset's folder or URI name; "#<hash>" for features whose decoded entry is gone, "?" when
            unknown, "-" when not applicable.
        dataset_key: for features, the key of the decoded entry they were computed from (None if unknown).
        image_size, backbone, cutoff: what the entry was made for, None when not applicable.
        detail: split, view, augmentation, image counts: whatever else tells entries apart.
    """

    kind: str
    path: Path
    key: str
    bytes: int
    last_used: float
    lock_file: Path | None = None
    files: tuple[Path, ...] = ()
    dataset: str = "-"
    dataset_key: str | None = None
    image_size: int | None = None
    backbone: str | None = None
    cutoff: int | None = None
    detail: str = ""

    def describe(self) -> str:
        """One line for messages, e.g. "features bees 160 px mobilenet_v2 cutoff 13 train, 1.2 GB, last used
        2025-01-31 12:00"."""
        parts = [self.kind, self.dataset if self.dataset not in ("-", "?") else ""]
        if self.image_size is not None:
            parts.append(f"{self.image_size} px")
        if self.backbone:
            parts.append(self.backbone)
        if self.cutoff is not None:
            parts.append(f"cutoff {self.cutoff}")
        if self.detail:
            parts.append(f"({self.detail})")
        return (f"{' '.join(p for p in parts if p)}, {format_bytes(self.bytes)}, last used "
                f"{format_time(self.last_used)}")


# ---- formatting --------------------------------------------------------------------------------------------
def format_bytes(n: int | float) -> str:
    """ "512 B", "3.4 MB", "1.2 GB" (binary units, like `tsweep run --cache-memory`)."""
    value = float(n)
    for unit in _UNITS:
        if abs(value) < 1024 or unit == _UNITS[-1]:
            return f"{int(value)} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def count(n: int, what: str = "entry") -> str:
    """ "1 entry", "3 entries" ("least recently used entry" -> "... entries")."""
    if n == 1:
        return f"{n} {what}"
    return f"{n} {what[:-1]}ies" if what.endswith("y") else f"{n} {what}s"


def format_time(t: float) -> str:
    return time.strftime("%Y-%m-%d %H:%M", time.localtime(t))


def display_name(source: str) -> str:
    """A dataset's short name: the last component of its folder or URI ("s3://b/pets/" -> "pets")."""
    text = str(source).rstrip("/")
    return text.rsplit("/", 1)[-1] or text or "?"


# ---- listing -----------------------------------------------------------------------------------------------
def _mtime(path: Path, default: float = 0.0) -> float:
    try:
        return path.stat().st_mtime
    except OSError:
        return default


def _size(path: Path) -> int:
    """Apparent bytes of a file or of everything under a folder (symlinks not followed)."""
    try:
        if not path.is_dir() or path.is_symlink():
            return path.lstat().st_size
    except OSError:
        return 0
    total = 0
    for folder, _, names in os.walk(path):
        for name in names:
            try:
                total += os.lstat(os.path.join(folder, name)).st_size
            except OSError:
                pass
    return total


def _read_json(path: Path) -> dict | None:
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _int_or_none(value: object) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _decoded_entries(folder: Path) -> list[Entry]:
    out = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.name.startswith(".") or not path.is_dir():
            continue
        meta = _read_json(path / "meta.json") or {}
        source = meta.get("source")
        files, classes = meta.get("files"), meta.get("class_names")
        detail = ", ".join(x for x in (f"{len(files)} images" if isinstance(files, list) else "",
                                       f"{len(classes)} classes" if isinstance(classes, list) else "") if x)
        out.append(Entry(DECODED, path, path.name, _size(path), _mtime(path / "meta.json", _mtime(path)),
                         lock_file=path / "images.npy", dataset=display_name(source) if source else "?",
                         dataset_key=path.name, image_size=_int_or_none(meta.get("image_size")), detail=detail))
    return out


def _feature_entries(folder: Path, datasets: dict[str, str]) -> list[Entry]:
    out = []
    for path in sorted(folder.glob("*.npy")) if folder.is_dir() else []:
        if path.name.startswith("."):
            continue
        meta_file, lock = path.with_suffix(".json"), path.with_suffix(".lock")
        meta = _read_json(meta_file) or {}
        parts = meta.get("key_parts") if isinstance(meta.get("key_parts"), dict) else {}
        what = parts.get("what")
        kind = KIND_OF_WHAT.get(what, str(what)) if what else "unknown"
        dataset_key = parts.get("dataset") if isinstance(parts.get("dataset"), str) else None
        if dataset_key is None:
            dataset = "?"
        else:
            dataset = datasets.get(dataset_key, f"#{dataset_key[:8]}")
        bits = [str(parts["split"])] if parts.get("split") else []
        if parts.get("pooled"):
            bits.append("pooled")
        if "view" in parts:
            bits.append(f"view {parts['view']}")
        policy = parts.get("augmentation") or parts.get("policy")  # the name; "policy" may be a long JSON
        if policy:
            bits.append(str(policy) if len(str(policy)) <= 24 else f"{str(policy)[:21]}...")
        if parts.get("stored_dtype") == "float16" or meta.get("dtype") == "float16":
            bits.append("float16")
        size = sum(_size(p) for p in (path, meta_file) if p.exists())
        out.append(Entry(kind, path, path.stem, size, _mtime(meta_file, _mtime(path)), lock_file=path,
                         files=(meta_file, lock), dataset=dataset, dataset_key=dataset_key,
                         image_size=_int_or_none(parts.get("image_size")),
                         backbone=str(parts["backbone"]) if parts.get("backbone") else None,
                         cutoff=_int_or_none(parts.get("cutoff")), detail=" ".join(bits)))
    return out


def _remote_entries(folder: Path, now: float) -> list[Entry]:
    out = []
    for path in sorted(folder.iterdir()) if folder.is_dir() else []:
        if path.name.startswith(".") or not path.is_dir():
            continue
        done = path / REMOTE_DONE
        if not done.exists():  # renamed into place, marker not yet written; or left by a dead process
            if now - _mtime(path, now) >= PARTIAL_AGE_S:
                out.append(Entry("partial", path, path.name, _size(path), _mtime(path),
                                 lock_file=folder / f"{path.name}.lock", detail="unfinished copy"))
            continue
        try:
            uri = done.read_text().strip()
        except OSError:
            uri = ""
        out.append(Entry(REMOTE, path, path.name, _size(path), _mtime(done), lock_file=done,
                         dataset=display_name(uri) if uri else "?", detail=uri))
    return out


def _partial_entries(root: Path, now: float) -> list[Entry]:
    """Temporary files and folders a killed process left: features/.<key>.*.tmp, decoded/.tmp-*,
    decoded/.stale-*, decoded/.evicted-*, remote/.<key>.tmp-<pid>, untouched for PARTIAL_AGE_S."""
    found: list[tuple[Path, Path | None]] = []
    features, decoded, remote = root / FEATURES, root / DECODED, root / REMOTE
    if features.is_dir():
        found += [(p, None) for p in features.glob(".*.tmp")]
    if decoded.is_dir():
        found += [(p, None) for p in decoded.iterdir()
                  if p.name.startswith((".tmp-", ".stale-", ".evicted-")) and p.is_dir()]
    if remote.is_dir():
        for p in remote.glob(".*.tmp-*"):  # the copier holds remote/<key>.lock while it copies
            found.append((p, remote / f"{p.name[1:].split('.tmp-', 1)[0]}.lock"))
    out = []
    for path, lock in found:
        mtime = _mtime(path, now)
        if now - mtime >= PARTIAL_AGE_S:
            out.append(Entry("partial", path, path.name, _size(path), mtime, lock_file=lock,
                             detail=f"left in {path.parent.name}/"))
    return out


def scan(root: str | os.PathLike, now: float | None = None) -> list[Entry]:
    """Every entry under the cache root, most recently used first (empty when the root does not exist)."""
    root = Path(root).expanduser()
    now = time.time() if now is None else now
    decoded = _decoded_entries(root / DECODED)
    names = {e.key: e.dataset for e in decoded if e.dataset != "?"}
    entries = decoded + _feature_entries(root / FEATURES, names) + _remote_entries(root / REMOTE, now)
    entries += _partial_entries(root, now)
    return sorted(entries, key=lambda e: (-e.last_used, e.kind, e.key))


def total_bytes(entries: Iterable[Entry]) -> int:
    return sum(e.bytes for e in entries)


def table_rows(entries: Sequence[Entry], held: set[str] | None = None) -> list[dict]:
    """Rows for `search.leaderboard.render_table`, in the given order; `held` = paths of held entries."""
    rows, width = [], max((len(format_bytes(e.bytes)) for e in entries), default=0)
    for e in entries:
        row = {"last used": format_time(e.last_used), "kind": e.kind, "dataset": e.dataset,
               "image size": e.image_size, "backbone": e.backbone, "cutoff": e.cutoff, "detail": e.detail or None,
               "bytes": format_bytes(e.bytes).rjust(width)}
        if held is not None:
            row["in use"] = "yes" if str(e.path) in held else ""
        rows.append(row)
    return rows
