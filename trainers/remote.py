"""Datasets given as URIs (s3://, gs://, file://, ...): copied once per node into the local cache.

Each node of a cluster makes its own copy the first time a trial (or the driver) asks for the dataset; the
copy is keyed by the remote listing (paths, sizes, modification times), so changed data is fetched again
and unchanged data never is. Decoding then works on the local copy like on any folder. A process that used a
copy holds a shared lock on its ``.complete`` marker (which holds the URI) while it lives, so `tsweep cache
clean` and sweep starts never evict it; each use records itself in the marker's mtime.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
import shutil
from pathlib import Path
from typing import IO, Callable

from tsweep.errors import NodeFileError, SweepConfigError
from tsweep.files import is_uri

DONE = ".complete"
_HELD: dict[str, IO] = {}  # copy folder -> its open .complete marker, shared-locked for this process's life


def _hold(target: Path) -> bool:
    """Keep a shared lock on a finished copy (eviction skips it) and record the use; False when it is gone."""
    from tsweep.trainers.cache_locks import hold, touch

    if str(target) not in _HELD:
        handle = hold(target / DONE)
        if handle is None:
            return False
        _HELD[str(target)] = handle
    touch(target / DONE)
    return True


def local_data_dir(data_dir: str | os.PathLike, cache_dir: Path,
                   progress: Callable[[str], None] | None = None) -> Path:
    """A local folder holding `data_dir`: the path itself, or the node's copy of a URI.

    Args:
        data_dir: a local path, or a URI pyarrow can open (s3://bucket/data, gs://..., file:///...).
        cache_dir: the tsweep cache root; copies go to `cache_dir/remote/<key>/`.
        progress: called with a line when a copy is made; default None.
    """
    if not is_uri(data_dir):
        return Path(data_dir).expanduser()
    import pyarrow.fs as pafs

    uri = str(data_dir).rstrip("/")
    try:
        fs, root = pafs.FileSystem.from_uri(uri)
        listing = fs.get_file_info(pafs.FileSelector(root, recursive=True))
    except (OSError, ValueError) as e:
        raise NodeFileError(f"cannot list data URI {uri}: {e}. Check the URI and this node's credentials "
                               "(e.g. an instance profile with read access), or pass a local path") from None
    files = sorted((i.path, i.size, i.mtime_ns or 0) for i in listing if i.type == pafs.FileType.File)
    if not files:
        raise SweepConfigError(f"data URI {uri} holds no files: pass a folder of class folders")
    key = hashlib.sha256(repr((uri, files)).encode()).hexdigest()[:24]
    target = cache_dir / "remote" / key
    if (target / DONE).exists() and _hold(target):
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f"{key}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # one copy per node, even with several trials starting at once
        if not (target / DONE).exists():
            if progress:
                progress(f"copying {len(files)} files from {uri} to {target}")
            tmp = target.with_name(f".{key}.tmp-{os.getpid()}")
            shutil.rmtree(tmp, ignore_errors=True)
            pafs.copy_files(root, str(tmp), source_filesystem=fs, destination_filesystem=pafs.LocalFileSystem())
            shutil.rmtree(target, ignore_errors=True)
            tmp.rename(target)
            (target / DONE).write_text(uri)  # `tsweep cache` shows the dataset's name
    _hold(target)
    return target
