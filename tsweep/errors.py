"""The two kinds of error tsweep raises on purpose.

``SweepConfigError`` stops a sweep before any trial runs (bad data folder, bad space file, unknown backbone,
missing weights; ``NodeFileError`` for files that are missing). ``TrialError`` fails one trial: the sweep records
it and carries on.
"""

from __future__ import annotations


class SweepConfigError(ValueError):
    """Bad input found before any trial starts; the message names the file or key and the fix."""


class NodeFileError(SweepConfigError):
    """A file or folder that cannot be read here: a data dir or weights file that does not exist, a failed
    download. Before the trials, a sweep configuration error; inside a trial (the driver found the file), a
    problem of that node, retried on another (``search.failures``)."""


class TrialError(RuntimeError):
    """One trial failed; the sweep records it and goes on with the others."""


def out_of_range(key: str, lo: object, hi: object, got: object) -> str:
    """The one message template for range checks: "`key` must be in [lo, hi], got X"."""
    return f"`{key}` must be in [{lo}, {hi}], got {got}"
