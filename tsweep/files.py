"""Small file helpers every layer shares: telling a URI from a local path, and writing a file atomically.

Here (beside ``tsweep.errors``) rather than in a subpackage, so ``tsweep.search`` and ``tsweep.trainers``
both use the same one without importing each other. Nothing here imports TensorFlow, Ray or pyarrow.
"""

from __future__ import annotations

import json
import os
import re
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any, Iterator


def is_uri(location: str | os.PathLike) -> bool:
    """True for a URI (s3://bucket/x, gs://..., file:///abs/path), False for a local path."""
    return "://" in str(location)


# Query parameters that carry secrets in storage URIs (pyarrow's s3://...?access_key=...&secret_key=..., signed
# URLs' signatures, tokens): matched as parts of the lower-cased name.
SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")
USERINFO = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*://)(?:[^@/?#:]*:[^@?#]*@|[^@/?#]*@)")
SECRET_PARAMS = ("key", "secret", "token", "password", "passwd", "credential", "signature", "sig", "auth")


def without_credentials(location: str | os.PathLike) -> str:
    """`location` safe to store or show: a URI loses its user:password@ part and the values of query parameters
    that carry secrets (REDACTED); anything else, and a local path, is returned as it is.

    E.g. s3://AKIA:SECRET@bucket/x?region=eu-west-1&secret_key=S -> s3://bucket/x?region=eu-west-1&secret_key=REDACTED
    """
    text = str(location)
    if not SCHEME.match(text):  # a local path, or text that only mentions a URI
        return text
    # user:password@ (a password may hold "/", as AWS secret keys do) or user@, right after the scheme
    text = USERINFO.sub(r"\1", text, count=1)
    base, sep, query = text.partition("?")
    fragment = ""
    if "#" in query:
        query, fragment = query.split("#", 1)
        fragment = "#" + fragment
    pairs = []
    for pair in query.split("&") if sep else []:
        name, eq, _value = pair.partition("=")
        secret = eq and any(word in name.lower() for word in SECRET_PARAMS)
        pairs.append(f"{name}=REDACTED" if secret else pair)
    return base + sep + "&".join(pairs) + fragment


def join_location(base: str | os.PathLike, name: str) -> str:
    """`base`/`name` for a path or a URI; a URI's ?query (e.g. pyarrow's ?region=...) stays at the end."""
    text = str(base)
    head, sep, query = text.partition("?") if SCHEME.match(text) else (text, "", "")
    return f"{head.rstrip('/')}/{name}{sep}{query}"


def has_credentials(location: str | os.PathLike | None) -> bool:
    """True when `without_credentials` would change `location`."""
    return location is not None and without_credentials(location) != str(location)


def check_folder(flag: str, folder: str | os.PathLike | None) -> None:
    """A local folder given with `flag` must be creatable: no file at it or at one of its parents. URIs pass."""
    from tsweep.errors import SweepConfigError

    if not folder or is_uri(folder):
        return
    for path in (Path(folder).expanduser(), *Path(folder).expanduser().parents):
        if path.exists():
            if not path.is_dir():
                raise SweepConfigError(f"{flag} {folder}: {path} is a file, not a folder: pass a folder (it is "
                                       "created if missing)")
            return


@contextmanager
def atomic_open(path: str | os.PathLike, *, text: bool = False, suffix: str = "", fsync: bool = True,
                shared: bool = True) -> Iterator[IO]:
    """Write `path` so that readers see the old file or the new one, never a partial one.

    Yields a file open for writing on a temporary file beside `path` (named ``.<name>.<random><suffix>``, so
    readers that skip dotfiles never pick it up); a clean exit renames it over `path`, an error deletes it.
    The parent folder is created if missing.

    Args:
        path: the file to (re)write.
        text: open in text mode (UTF-8) instead of binary. Default False.
        suffix: ends the temporary file's name (e.g. ".tmp", which cache cleaning looks for). Default "".
        fsync: flush the data to disk before the rename, and the folder after it (a power loss then leaves
            the old or the new file, never an empty one). Default True.
        shared: give the file the permissions a plain ``open`` would (umask applied, 0644 under the usual 022)
            instead of the 0600 of temporary files, so everything a sweep writes has one mode. Default True.
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
    if fsync:
        fsync_dir(path.parent)


def fsync_dir(folder: str | os.PathLike) -> None:
    """Flush a folder's entries (a rename or a new file in it) to disk; a no-op where the OS cannot."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:  # some file systems refuse fsync on a directory
        pass
    finally:
        os.close(fd)


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
