"""Read a sweep for leaderboards and reports: from a local folder or a URI (s3://, gs://, file://, any scheme
pyarrow.fs knows; pyarrow comes with Ray), while the sweep runs, and while its files are still being copied.

Every file is read through `pyarrow.fs`, local folders too, so the cloud path is the one the tests exercise.
A reader never writes and never needs Ray. What it could not read is listed in `SweepSnapshot.problems`
(shown as warnings) instead of stopping: a trial record cut off mid-write is skipped, and a missing or
half-written `sweep.json` falls back to what the trial records say.
"""

from __future__ import annotations

import json
import posixpath
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tsweep.errors import SweepConfigError
from tsweep.files import is_uri, without_credentials
from tsweep.search.objective import Objective
from tsweep.search.records import SWEEP_FILE, TRIALS_DIR


@dataclass
class SweepSnapshot:
    """What could be read of one sweep at one moment.

    Attributes:
        location: the folder or URI as given.
        name: the sweep's name (sweep.json "name", else the folder's name).
        info: the content of sweep.json; {} when it is missing or unreadable.
        trials: every readable trial record.
        problems: one sentence per thing that could not be read (for warnings and the report).
    """

    location: str
    name: str
    info: dict = field(default_factory=dict)
    trials: list[dict] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def objective(self) -> Objective | None:
        """The sweep's own objective from sweep.json; None when sweep.json could not be read."""
        if not self.info.get("metric"):
            return None
        return Objective(self.info["metric"], self.info.get("mode", ""))

    def params(self) -> list[str]:
        """The sampled hyperparameters: sweep.json "sampled", else the config keys that differ between
        trials (every config key when there are fewer than two trials)."""
        if "sampled" in self.info:
            return list(self.info["sampled"])
        configs = [t.get("config") or {} for t in self.trials]
        keys = list(dict.fromkeys(k for c in configs for k in c))
        if len(configs) < 2:
            return keys
        return [k for k in keys if len({json.dumps(c.get(k), sort_keys=True, default=str) for c in configs}) > 1]


def filesystem(location: str | Path, fs: Any = None) -> tuple[Any, str]:
    """(pyarrow FileSystem, path inside it) for a local folder or a URI.

    Args:
        location: a local path, or a URI such as s3://bucket/results/pets or file:///abs/path.
        fs: use this pyarrow.fs.FileSystem instead (then `location` is a path inside it); default None.
    """
    import pyarrow.fs as pafs

    if fs is not None:
        return fs, str(location).rstrip("/") or "/"
    if is_uri(location):
        try:
            return pafs.FileSystem.from_uri(str(location))
        except Exception as e:  # pyarrow raises ArrowInvalid / OSError subclasses with useful text
            shown = without_credentials(location)
            raise SweepConfigError(f"cannot open {shown}: {str(e).replace(str(location), shown)}. Pass a local "
                                   "sweep folder or a URI pyarrow.fs supports (s3://, gs://, file://) with "
                                   "credentials set up") from None
    return pafs.LocalFileSystem(), str(Path(location).expanduser().resolve())


def check_storage(storage: str | None) -> None:
    """`--storage` before any trial: a local folder that can be created, or a URI pyarrow can open."""
    from tsweep.files import check_folder

    if storage and is_uri(storage):
        try:
            filesystem(storage)
        except SweepConfigError as e:
            raise SweepConfigError(f"--storage: {e}") from None
    check_folder("--storage", storage)


def _read_text(fs: Any, path: str) -> str:
    with fs.open_input_stream(path) as stream:
        return stream.read().decode("utf-8")


def _kind(fs: Any, path: str) -> str:
    """"file", "dir" or "missing"."""
    import pyarrow.fs as pafs

    info = fs.get_file_info(path)
    return {pafs.FileType.File: "file", pafs.FileType.Directory: "dir"}.get(info.type, "missing")


def _children(fs: Any, path: str) -> list[Any]:
    import pyarrow.fs as pafs

    return sorted(fs.get_file_info(pafs.FileSelector(path, allow_not_found=True)), key=lambda i: i.base_name)


def _not_a_sweep(fs: Any, path: str, location: str) -> SweepConfigError:
    inner = [c.base_name for c in _children(fs, path)
             if c.type.name == "Directory" and _kind(fs, posixpath.join(c.path, SWEEP_FILE)) == "file"]
    hint = f" (sweeps inside it: {', '.join(inner[:5])}; pass them all, e.g. {location.rstrip('/')}/*)" if inner else ""
    return SweepConfigError(f"{location} is not a sweep folder: it has no {SWEEP_FILE} and no {TRIALS_DIR}/{hint}. "
                            "Pass results/<name> as written by `tsweep run`.")


def read_snapshot(location: str | Path, fs: Any = None) -> SweepSnapshot:
    """Read sweep.json and every readable trial record of one sweep.

    Args:
        location: results/<name>, or a URI of it (s3://bucket/results/<name>, file:///...).
        fs: a pyarrow.fs.FileSystem to read `location` from instead of resolving it; default None.

    Raises:
        SweepConfigError: the location does not exist, is not a sweep folder, or cannot be listed.
    """
    location = str(location)
    fs, root = filesystem(location, fs)
    location = without_credentials(location)  # from here on only shown (in messages, the report)
    try:
        kind = _kind(fs, root)
        if kind != "dir":
            raise SweepConfigError(f"{location} {'is a file' if kind == 'file' else 'does not exist'}: pass a sweep "
                                   "folder (results/<name>) or its URI")
        has_info = _kind(fs, posixpath.join(root, SWEEP_FILE)) == "file"
        trial_dir = posixpath.join(root, TRIALS_DIR)
        if not has_info and _kind(fs, trial_dir) != "dir":
            raise _not_a_sweep(fs, root, location)
        snap = SweepSnapshot(location=location, name=posixpath.basename(root.rstrip("/")) or location)
        if has_info:
            try:
                snap.info = json.loads(_read_text(fs, posixpath.join(root, SWEEP_FILE)))
                if not isinstance(snap.info, dict):
                    raise ValueError("not a JSON object")
                snap.name = str(snap.info.get("name") or snap.name)
            except (OSError, ValueError) as e:
                snap.info = {}
                snap.problems.append(f"{location}/{SWEEP_FILE} is unreadable (partly written or copied?): {e}; "
                                     "using the trial records alone (metric val_accuracy unless --sort)")
        else:
            snap.problems.append(f"{location} has no {SWEEP_FILE} yet (still being written or copied?): "
                                 "using the trial records alone (metric val_accuracy unless --sort)")
        for child in _children(fs, trial_dir):
            # atomic_write_json's temporary files start with "." and never end in .json
            if child.type.name != "File" or child.base_name.startswith(".") or not child.base_name.endswith(".json"):
                continue
            try:
                record = json.loads(_read_text(fs, child.path))
                if not isinstance(record, dict):
                    raise ValueError("not a JSON object")
                snap.trials.append(record)
            except (OSError, ValueError) as e:
                snap.problems.append(f"skipped unreadable trial record {location}/{TRIALS_DIR}/{child.base_name}: {e}")
        return snap
    except SweepConfigError:
        raise
    except OSError as e:  # listing failed: permissions, credentials, network
        raise SweepConfigError(f"cannot read {location}: {e}. Check that it exists and that you may read it "
                               "(cloud credentials: AWS_* or GOOGLE_APPLICATION_CREDENTIALS)") from None


def read_snapshots(locations: list[str]) -> tuple[list[SweepSnapshot], list[str]]:
    """`read_snapshot` of each location, in order, and the locations skipped.

    A location given twice is read once; sweeps sharing a name (a local copy and its cloud original) are
    told apart by their location. With several locations, one that is no sweep (a stray file or folder
    matched by `results/*`) is skipped with a sentence in the returned list.

    Raises:
        SweepConfigError: a single location that is no sweep, or none of several is.
    """
    unique = list(dict.fromkeys(str(loc) for loc in locations))
    snaps, skipped = [], []
    for loc in unique:
        try:
            snaps.append(read_snapshot(loc))
        except SweepConfigError as e:
            if len(unique) == 1:
                raise
            skipped.append(f"skipped {loc}: {e}")
    if not snaps:
        raise SweepConfigError("none of these is a sweep folder: " + "; ".join(skipped))
    names = [s.name for s in snaps]
    for snap in snaps:
        if names.count(snap.name) > 1:
            snap.name = snap.location
    return snaps, skipped
