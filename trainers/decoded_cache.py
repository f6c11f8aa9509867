"""The decoded-image cache: every image of a data dir decoded once per (file list, image size), on disk.

An entry is ``cache_dir/decoded/<key>/`` (``images.npy`` + ``meta.json``, written by
``trainers.images.write_decoded``), keyed by `cache_key`, so trials and later sweeps only memory-map it. A
process that loaded an entry holds a shared lock on its ``images.npy`` (up to _MAX_HELD entries, the oldest let
go first; `let_go` lets them go) until it ends, so `tsweep cache clean` and sweep starts never evict it
(``trainers.cache_locks``, ``trainers.cache_eviction``); each load records a use in the mtime of ``meta.json``.
No TensorFlow here.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
import warnings
from pathlib import Path
from typing import IO, TYPE_CHECKING

from tsweep.trainers import images as imgs
from tsweep.trainers.cache_locks import hold, touch

if TYPE_CHECKING:
    from tsweep.trainers.data import Layout

_MAX_HELD = 16  # decoded entries a process keeps a shared lock on (the oldest let go first)
_HELD: dict[str, IO] = {}  # entry folder -> its open images.npy, shared-locked for this process's life


def cache_key(layout: Layout, image_size: int) -> str:
    """Hash of the cache format, the image size and (relative path, bytes, mtime_ns) of every image."""
    entries = sorted((p.relative_to(layout.root).as_posix(), st.st_size, st.st_mtime_ns)
                     for _, _, p in layout.files() for st in [p.stat()])
    blob = json.dumps({"format": imgs.DECODED_FORMAT, "image_size": image_size, "files": entries})
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def _hold(target: Path) -> bool:
    """Keep a shared lock on a decoded entry while this process lives (eviction skips it); False if absent."""
    if str(target) in _HELD:
        return True
    handle = hold(target / "images.npy")
    if handle is None:
        return False
    _HELD[str(target)] = handle
    while len(_HELD) > _MAX_HELD:
        _HELD.pop(next(iter(_HELD))).close()
    return True


def let_go(cache_dir: str | os.PathLike | None = None) -> None:
    """Release this process's shared locks on decoded entries (under `cache_dir`; default all), so that
    `tsweep cache clean` may evict them while the process goes on (its loaded datasets stay usable)."""
    root = None if cache_dir is None else str(Path(cache_dir).expanduser())
    for folder in [f for f in _HELD if root is None or f.startswith(root.rstrip("/") + "/")]:
        _HELD.pop(folder).close()


def load_or_decode(layout: Layout, image_size: int, cache_dir: Path, progress: imgs.Progress | None,
                   source: str | None = None) -> tuple:
    """All images of the layout plus their meta, from the cache or decoded (and then cached).

    `source` (default the layout's folder) is recorded in the meta for `tsweep cache`: the data dir as given.
    """
    target = cache_dir / "decoded" / cache_key(layout, image_size)
    held = _hold(target)  # before reading: an eviction cannot remove it between the check and the load
    hit = imgs.read_decoded(target, image_size)
    if hit is not None:
        touch(target / "meta.json")
        return hit
    if held:  # a stale or unreadable entry: let it go, it gets replaced
        _HELD.pop(str(target)).close()
    files = layout.files()
    say = progress or (lambda _msg: None)
    say(f"decoding {len(files)} images at {image_size} px (cached in {target})")
    start = time.monotonic()
    images, skipped, kept = imgs.decode_many([p for _, _, p in files], image_size, progress)
    say(f"decoded {len(kept)} images in {time.monotonic() - start:.1f} s")
    rel = {str(p): p.relative_to(layout.root).as_posix() for _, _, p in files}
    meta = {"format": imgs.DECODED_FORMAT, "image_size": image_size, "source": source or str(layout.root),
            "class_names": list(layout.class_names),
            "files": [{"path": rel[str(p)], "split": s, "label": c} for s, c, p in (files[i] for i in kept)],
            "skipped": [{"path": rel[p], "reason": reason} for p, reason in skipped]}
    try:
        imgs.write_decoded(target, images, meta)
        _hold(target)
    except OSError as e:
        warnings.warn(f"could not write the decoded-image cache {target} ({e}): set TSWEEP_CACHE to a "
                      "writable folder; going on without the cache", stacklevel=3)
    return images, meta
