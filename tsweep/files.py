"""Small file helpers every layer shares: telling a URI from a local path, and writing a file atomically.

Here (beside ``tsweep.errors``) rather than in a subpackage, so ``tsweep.search`` and ``tsweep.trainers``
both use the same one without importing each other. Nothing here imports TensorFlow, Ray or pyarrow.
"""

from __future__ import annotations

import json
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


def is_uri(location: str | os.PathLike) -> bool:
    """True for a URI (s3://bucket/x, gs://..., file:///abs/path), False for a local path."""
    return "://" in str(location)


def file_in_the_way(folder: Path) -> Path | None:
    """The file at `folder` or at one of its parents, which would stop the folder from being created."""
    for path in (folder, *folder.parents):
        if path.exists():
            return None if path.is_dir() else path
    return None


@contextmanager
def atomic_open(path: str | os.PathLike, *, text: bool = False, suffix: str = "", fsync: bool = False,
                shared: bool = False) -> Iterator[IO]:
    """Write `path` so that readers see the old file or the new one, never a partial one.

    Yields a file open for writing on a temporary file beside `path` (named ``.<name>.<random><suffix>``, so
    readers that skip dotfiles never pick it up); a clean exit renames it over `path`, an error deletes it.
    The parent folder is created if missing.

    Args:
        path: the file to (re)write.
        text: open in text mode (UTF-8) instead of binary. Default False.
        suffix: ends the temporary file's name (e.g. ".tmp", which cache cleaning looks for). Default "".
        fsync: flush the data to disk before the rename (a crash then leaves the old or the new file, not
            an empty one). Default False.
        shared: give the file the permissions a plain ``open`` would (umask applied) instead of the 0600 of
            temporary files: for files meant to be shared or served. Default False.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=suffix, dir=path.parent)
    try:
        with os.fdopen(fd, "w" if text else "wb", **({"encoding": "utf-8"} if text else {})) as handle:
            yield handle
            if fsync:
                handle.flush()
                os.fsync(handle.fileno())
        if shared:
            os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_json(path: str | os.PathLike, data: Any) -> None:
    """`atomic_open` for JSON (indented by 1; values JSON does not know are written as their str)."""
    with atomic_open(path, text=True) as handle:
        json.dump(data, handle, indent=1, default=str)


def _umask() -> int:
    """This process's umask, read without changing it where Linux says it (setting it is process-wide)."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    umask = os.umask(0)
    os.umask(umask)
    return umask
