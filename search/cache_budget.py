"""The cache's budgets: sizes and durations as given on the command line, and a sweep start's eviction.

`parse_size` reads `--cache-memory`, `--cache-disk` and `tsweep cache clean --max-size`; `parse_duration` reads
`--older-than`; `evict_cache` brings the cache root under `--cache-disk` before a sweep decodes anything
(``trainers.cache_eviction``). No TensorFlow, no Ray.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

from tsweep.errors import SweepConfigError

if TYPE_CHECKING:
    from tsweep.search.sweep import SweepOptions


def parse_size(text: str, flag: str = "--cache-memory") -> int:
    """Bytes of a size such as "512MB", "4GB", "1.5G" or a plain number of bytes (binary units: 1 GB = 2**30).

    Args:
        text: the size.
        flag: the option it came from, named in the error (default "--cache-memory").
    """
    units = {"": 1, "K": 2**10, "M": 2**20, "G": 2**30, "T": 2**40}
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([KMGT]?)I?B?\s*", str(text).upper())
    if not match:
        raise SweepConfigError(f"`{flag}` must be a size like 512MB or 4GB, got {text!r}")
    return int(float(match.group(1)) * units[match.group(2)])


def parse_duration(text: str, flag: str) -> float:
    """Seconds of a duration such as "30d", "12h", "90m", "45s" or "2w".

    Args:
        text: the duration: a number and one unit (w, d, h, m or s).
        flag: the option it came from, named in the error (e.g. "--older-than").
    """
    units = {"W": 7 * 86400, "D": 86400, "H": 3600, "M": 60, "S": 1}
    match = re.fullmatch(r"\s*([0-9]+(?:\.[0-9]*)?|\.[0-9]+)\s*([WDHMS])\s*", str(text).upper())
    if not match:
        raise SweepConfigError(f"`{flag}` must be a duration like 30d, 12h, 90m or 45s, got {text!r}")
    return float(match.group(1)) * units[match.group(2)]


def evict_cache(cache: Path, opts: SweepOptions, current: list[str],
                progress: Callable[[str], None] = print) -> Any:
    """At a sweep start: evict least recently used cache entries while the cache root exceeds its budget
    (`--cache-disk`, default 20 GB or 25% of the free disk, whichever is smaller), saying what went.

    Entries a process holds (a running sweep's) stay; so do the decoded entries `current` of this sweep, and
    features computed from them go last. Returns the `cache_eviction.Eviction` (None when under budget).
    """
    from tsweep.trainers import cache_eviction, cache_store

    entries = cache_store.scan(cache)
    total = cache_store.total_bytes(entries)
    budget = parse_size(opts.cache_disk, "--cache-disk") if opts.cache_disk else cache_eviction.default_budget(cache)
    if total <= budget:
        return None
    fmt = cache_store.format_bytes
    where = "--cache-disk" if opts.cache_disk else "default: 20 GB or 25% of the free disk; set --cache-disk"
    result = cache_eviction.evict(entries, max_bytes=budget, current=current)
    progress(f"cache {cache} holds {fmt(total)}, over its {fmt(budget)} budget ({where}): evicted "
             f"{cache_store.count(len(result.removed), 'least recently used entry')} "
             f"({fmt(result.before - result.after)})"
             + (":" if result.removed else ""))
    for entry in result.removed:
        progress(f"  evicted {entry.describe()}")
    for entry in result.held:
        progress(f"  kept {entry.describe()}: in use by a running sweep")
    for entry, error in result.failed:
        progress(f"  could not evict {entry.path}: {error}")
    if result.after > budget:
        progress(f"  the cache still holds {fmt(result.after)}: the rest is in use or this sweep's own data")
    return result
