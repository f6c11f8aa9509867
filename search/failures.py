"""What a trial's failure means, decided once, here: retried elsewhere, failed at once, or restored otherwise.

Three kinds (`classify`):

* infrastructure: the node, not the config: a file or folder this node cannot read (data, weights, an ImageNet
  download: `tsweep.errors.NodeFileError`, any `OSError`), a lost connection, and anything unexpected. The
  trainable raises `NodeFault` naming its node, Ray's `FailureConfig(max_failures)` restarts the trial from its
  last checkpoint, and the driver (`avoid_nodes`, from the recorder) keeps that attempt off the nodes it failed on
  while another alive node could run it (a node lost or a worker killed is Ray's own failure, retried alike).
* deterministic: the config itself: out of memory at this config (`MemoryError`, TensorFlow's
  `ResourceExhaustedError`, "OOM when allocating"), a `TrialError` (NaN loss), a bad config (`SweepConfigError`).
  The trainable reports the reason as its last result (`trial.ERROR_KEY`) and returns, so the trial ends "failed"
  at once: Ray would repeat the same failure up to --max-failures times.
* checkpoint: a checkpoint that cannot be read (`trainers.checkpoint.CorruptCheckpoint`). `resume_chain` checks
  the checkpoint Ray restores before training from it, then the trial's other kept checkpoint (Ray keeps the best
  and the latest), then restarts from epoch 0, and says which in a note.

Why report-and-return rather than a distinct exception Ray would not retry: Ray 2.x's FailureConfig retries every
exception alike (`fail_fast` stops the whole sweep), so a deterministic failure must not reach Ray as one.

Pure: no Ray or TensorFlow import (TensorFlow errors are recognised by their class names).
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import PurePosixPath
from typing import Any, Callable, Iterable, TypeVar

from tsweep.errors import NodeFileError, SweepConfigError, TrialError
from tsweep.trainers.checkpoint import CorruptCheckpoint, verify_checkpoint

INFRASTRUCTURE, DETERMINISTIC, CHECKPOINT = "infrastructure", "deterministic", "checkpoint"
OOM_TYPES = ("ResourceExhaustedError", "OutOfMemoryError")  # tf.errors.ResourceExhaustedError, CUDA OOMs
OOM_TEXT = ("oom when allocating", "out of memory", "cuda_error_out_of_memory")
NODE_RE = re.compile(r"on node ([0-9a-f]{56})\b")  # how NodeFault names its node (Ray's 56-hex-digit id)
T = TypeVar("T")


class NodeFault(RuntimeError):
    """An infrastructure failure inside a trial: raised so that Ray retries the trial (on any node with room)."""


@dataclass(frozen=True)
class Failure:
    """Attributes:
        kind: INFRASTRUCTURE, DETERMINISTIC or CHECKPOINT.
        reason: one line for the trial's record: what failed and what it means.
    """

    kind: str
    reason: str

    @property
    def retried(self) -> bool:
        """True when Ray should restart the trial (an infrastructure failure)."""
        return self.kind == INFRASTRUCTURE


def brief(error: BaseException, limit: int = 400) -> str:
    """"TypeName: first line of the message", at most `limit` characters."""
    text = " ".join(str(error).split())
    line = f"{type(error).__name__}: {text}" if text else type(error).__name__
    return line if len(line) <= limit else line[: limit - 3] + "..."


def classify(error: BaseException) -> Failure:
    """The kind of a failure raised inside a trial, with its reason (see the module docstring)."""
    names = {cls.__name__ for cls in type(error).__mro__}
    text = str(error).lower()
    if isinstance(error, CorruptCheckpoint):
        return Failure(CHECKPOINT, f"unreadable checkpoint: {brief(error)}")
    if isinstance(error, NodeFault):
        return Failure(INFRASTRUCTURE, str(error))
    if isinstance(error, MemoryError) or names & set(OOM_TYPES) or any(t in text for t in OOM_TEXT):
        return Failure(DETERMINISTIC, f"out of memory at this config (not retried: it would run out again; lower "
                                      f"`batch_size` or `image_size`, or give trials more memory): {brief(error)}")
    if isinstance(error, NodeFileError):  # before SweepConfigError, its base: the driver found the file
        return Failure(INFRASTRUCTURE, f"missing on this node (retried on another): {brief(error)}")
    if isinstance(error, TrialError):
        return Failure(DETERMINISTIC, str(error))
    if isinstance(error, SweepConfigError):
        return Failure(DETERMINISTIC, f"bad config: {error}")
    if isinstance(error, (OSError, ConnectionError, TimeoutError)):
        return Failure(INFRASTRUCTURE, f"node or storage failure (retried): {brief(error)}")
    return Failure(INFRASTRUCTURE, f"unexpected error (retried up to --max-failures): {brief(error)}")


def faulty_node(error_text: str) -> str | None:
    """The full id of the node a `NodeFault` names in a trial's error text, else None."""
    found = NODE_RE.search(error_text or "")
    return found.group(1) if found else None


def avoid_nodes(trial: Any, nodes: list[str], alive: list[dict] | None = None) -> bool:
    """Keep the next attempts of a Ray Tune trial (waiting to be retried) off `nodes`: a label selector
    `ray.io/node-id: !in(...)` on every bundle of its placement group. Only when another alive node (`ray.nodes()`
    rows; default asked of Ray) has the resources of the whole group, so a trial is never left unplaceable.
    Returns whether it did."""
    from ray.tune.execution.placement_groups import PlacementGroupFactory

    if alive is None:
        import ray

        alive = [n for n in ray.nodes() if n.get("Alive")]
    factory = trial.placement_group_factory
    need = factory.required_resources
    if not any(n["NodeID"] not in nodes and all(n.get("Resources", {}).get(k, 0.0) >= v for k, v in need.items())
               for n in alive):
        return False
    selector = {"ray.io/node-id": f"!in({', '.join(sorted(set(nodes)))})"}
    head = [{}] if factory.head_bundle_is_empty else []  # (an empty head bundle is dropped again, as before)
    trial.update_resources(PlacementGroupFactory(head + factory.bundles, factory.strategy,
                                                 bundle_label_selector=[selector] * len(factory.bundles)))
    return True


def kept_checkpoints(checkpoint: Any) -> list[Any]:
    """`checkpoint` (a `ray.tune.Checkpoint`, the one Ray restores) first, then the trial's other kept checkpoints
    beside it (its `checkpoint_*` siblings on the same filesystem, local or cloud), newest first."""
    if checkpoint is None:
        return []
    from pyarrow import fs as pafs
    from ray.tune import Checkpoint

    parent = str(PurePosixPath(checkpoint.path).parent)
    try:
        infos = checkpoint.filesystem.get_file_info(pafs.FileSelector(parent))
    except OSError:
        return [checkpoint]
    own = PurePosixPath(checkpoint.path).name
    others = sorted((i.path for i in infos if i.type == pafs.FileType.Directory
                     and PurePosixPath(i.path).name.startswith("checkpoint_")
                     and PurePosixPath(i.path).name != own), reverse=True)
    return [checkpoint] + [Checkpoint(path, filesystem=checkpoint.filesystem) for path in others]


def resume_chain(checkpoints: Iterable[Any], run: Callable[[Any], T], note: Callable[[str], None],
                 verify: Callable[[Any], None] = verify_checkpoint) -> T:
    """`run(directory)` from the first checkpoint that reads back whole, else `run(None)` (from epoch 0), saying
    which checkpoints it skipped and where training continues from.

    Args:
        checkpoints: objects with `.path` and `.as_directory()` (`ray.tune.Checkpoint`), best candidate first.
        run: trains from a checkpoint directory, or from scratch given None.
        note: told one line per skipped checkpoint and where training continues from.
        verify: raises CorruptCheckpoint for a directory that cannot be read; default
            `trainers.checkpoint.verify_checkpoint`.
    """
    skipped: list[str] = []
    for checkpoint in checkpoints:
        name = PurePosixPath(str(checkpoint.path)).name
        with checkpoint.as_directory() as directory:
            try:
                verify(directory)
            except CorruptCheckpoint as e:
                skipped.append(name)
                note(f"checkpoint {name} is unusable ({e})")
                continue
            if skipped:
                note(f"continuing from the other kept checkpoint, {name}")
            return run(directory)
    if skipped:
        note(f"no kept checkpoint reads back ({', '.join(skipped)}): restarting from epoch 0")
    return run(None)
