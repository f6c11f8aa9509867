"""Mend Ray Tune's experiment state before `tsweep resume` restores it.

Ray saves its experiment state at most every 10 s, while a trial saves a checkpoint every epoch and
retention (best + latest) deletes the one before. A driver killed between two state saves leaves a state
naming a latest checkpoint that no longer exists; Ray 2.x then errors that trial on resume ("Could not
recover from checkpoint as it does not exist on storage anymore") instead of continuing it. Before
restoring, each such trial is pointed at its newest checkpoint that is still on storage and has its
result row in the trial's result.json (so the checkpoint was fully written and reported).

This reads and rewrites Ray's private state format (`_TrainingRunMetadata`); anything unexpected leaves
the state as it was, with a warning, and Ray's own behaviour applies.
"""

from __future__ import annotations

import json
import posixpath
import warnings
from typing import Any, Callable

STATE_PREFIX = "experiment_state-"


def newest_checkpointed_row(rows: list[dict[str, Any]], exists: Callable[[str], bool]) -> dict[str, Any] | None:
    """The last result row whose checkpoint directory still exists, or None.

    Args:
        rows: a trial's result.json rows, oldest first (Ray names each row's checkpoint in
            `checkpoint_dir_name`).
        exists: whether a checkpoint directory name exists in the trial folder.
    """
    for row in reversed(rows):
        name = row.get("checkpoint_dir_name")
        if name and exists(name):
            return row
    return None


def read_rows(text: str) -> list[dict[str, Any]]:
    """result.json rows (one JSON object per line); a line cut off mid-write ends the list."""
    rows = []
    for line in text.splitlines():
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            break
    return rows


def repair_stale_checkpoints(experiment: str, progress: Callable[[str], None] = print) -> list[str]:
    """Point trials whose recorded latest checkpoint is gone at their newest surviving one.

    Args:
        experiment: the Ray experiment folder (local path or URI).
        progress: where a line per mended trial goes; default print.

    Returns the ids of the mended trials.
    """
    import pyarrow.fs

    from tsweep.files import is_uri

    try:
        if is_uri(experiment):
            fs, root = pyarrow.fs.FileSystem.from_uri(experiment)
        else:
            fs, root = pyarrow.fs.LocalFileSystem(), experiment
        states = sorted(info.path for info in fs.get_file_info(pyarrow.fs.FileSelector(root))
                        if posixpath.basename(info.path).startswith(STATE_PREFIX))
        if not states:
            return []
        state_path = states[-1]  # Ray restores the newest (its names carry the time)
        with fs.open_input_stream(state_path) as f:
            state = json.loads(f.read().decode())
        mended = []
        for entry in state.get("trial_data", []):
            trial_id = _mend_trial(entry, fs, root)
            if trial_id:
                mended.append(trial_id)
        if mended:
            with fs.open_output_stream(state_path + ".tmp") as f:
                f.write(json.dumps(state, indent=2).encode())
            fs.move(state_path + ".tmp", state_path)
            for trial_id in mended:
                progress(f"{trial_id}: Ray's saved state named a checkpoint retention had deleted; "
                         "it continues from its newest checkpoint on storage instead")
        return mended
    except Exception as e:  # never block a resume on this: Ray's own handling applies
        warnings.warn(f"could not check {experiment}'s experiment state for stale checkpoints "
                      f"({type(e).__name__}: {e}); resuming with it as it is", stacklevel=2)
        return []


def relocate(path: str, root: str) -> str:
    """A checkpoint path saved by Ray (under the experiment folder where the sweep ran) under `root`, the
    experiment folder being resumed: a copied or moved sweep is checked against its own files."""
    trial_dir = posixpath.dirname(path)
    return posixpath.join(root, posixpath.basename(trial_dir), posixpath.basename(path))


def _mend_trial(entry: list, fs: Any, root: str) -> str | None:
    """Mend one [trial json, run metadata json] entry in place; the trial id if it was changed.

    Paths are checked under `root` (see `relocate`); Ray rewrites the kept ones the same way on restore
    (`Trial.set_storage`)."""
    from ray.train import Checkpoint
    from ray.train._internal.session import _TrainingResult
    from ray.tune.trainable.metadata import _TrainingRunMetadata

    metadata = _TrainingRunMetadata.from_json_state(entry[1])
    manager = metadata.checkpoint_manager
    latest = manager.latest_checkpoint_result if manager else None
    if latest is None or latest.checkpoint is None:
        return None
    path = relocate(latest.checkpoint.path, root)
    if _exists(fs, path):
        return None
    trial_dir = posixpath.dirname(path)
    with fs.open_input_stream(posixpath.join(trial_dir, "result.json")) as f:
        rows = read_rows(f.read().decode())
    row = newest_checkpointed_row(rows, lambda name: _exists(fs, posixpath.join(trial_dir, name)))
    if row is None:
        return None  # nothing to continue from: Ray restarts or errors the trial as usual
    # Keep only checkpoints that still exist, then register the surviving one as the latest (Ray's
    # retention then applies as it would have).
    manager._checkpoint_results = [r for r in manager._checkpoint_results
                                   if r.checkpoint is not None and _exists(fs, relocate(r.checkpoint.path, root))]
    manager._latest_checkpoint_result = None
    checkpoint = Checkpoint(posixpath.join(trial_dir, row["checkpoint_dir_name"]), filesystem=fs)
    manager.register_checkpoint(_TrainingResult(checkpoint=checkpoint, metrics=row))
    metadata.invalidate_cache()
    entry[1] = metadata.get_json_state()
    return str(row.get("trial_id") or posixpath.basename(trial_dir))


def _exists(fs: Any, path: str) -> bool:
    import pyarrow.fs

    return fs.get_file_info(path).type != pyarrow.fs.FileType.NotFound
