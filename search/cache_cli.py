"""`tsweep cache`: list what the cache root holds; `tsweep cache clean`: remove least recently used entries.

The subcommand's parser (`add_cache_parser`, called by `search.cli.build_parser`) and handlers; the work is
done by ``trainers.cache_store`` (listing), ``trainers.cache_locks`` (in use) and ``trainers.cache_eviction``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from tsweep.errors import SweepConfigError
from tsweep.search.cache_budget import parse_duration, parse_size


def log(message: str) -> None:
    print(message, flush=True)


def add_cache_parser(sub: argparse._SubParsersAction) -> None:
    """Add `cache` (and its `clean`) to the `tsweep` subcommands `sub`."""
    cache = sub.add_parser("cache", help="list what the cache holds (decoded images, features, views); "
                           "`tsweep cache clean` removes least recently used entries")
    cache_dir_help = "the cache root (default: $TSWEEP_CACHE or ~/.cache/tsweep)"
    cache.add_argument("--cache-dir", help=cache_dir_help)
    cache_sub = cache.add_subparsers(dest="cache_command")
    clean = cache_sub.add_parser("clean", help="remove least recently used entries (never one a process holds)")
    clean.add_argument("--older-than", metavar="AGE", help="remove entries last used more than AGE ago, e.g. 30d, "
                       "12h, 90m, 45s")
    clean.add_argument("--max-size", metavar="SIZE", help="remove least recently used entries until the cache "
                       "holds at most SIZE, e.g. 10GB")
    clean.add_argument("--all", action="store_true", help="remove every entry no process holds")
    clean.add_argument("--dry-run", action="store_true", help="only say what would be removed")
    clean.add_argument("--cache-dir", default=argparse.SUPPRESS, help=cache_dir_help)
    cache.set_defaults(func=cmd_cache)


def cmd_cache(args: argparse.Namespace) -> int:
    """`tsweep cache`: what the cache root holds; `tsweep cache clean`: remove least recently used entries."""
    from tsweep.trainers import cache_eviction, cache_locks, cache_store
    from tsweep.trainers.data import default_cache_dir

    root = Path(args.cache_dir).expanduser() if args.cache_dir else default_cache_dir()
    if getattr(args, "cache_command", None) == "clean":
        return clean_cache(args, root)
    from tsweep.search.leaderboard import render_table

    entries = cache_store.scan(root)
    size = cache_store.format_bytes
    if not entries:
        print(f"the cache {root} is empty" if root.exists() else f"no cache at {root} yet", flush=True)
        return 0
    held = {str(e.path) for e in entries if cache_locks.is_held(e)}
    print(render_table(cache_store.table_rows(entries, held)))
    in_use = f", {len(held)} in use" if held else ""
    print(f"total: {cache_store.count(len(entries))}, {size(cache_store.total_bytes(entries))} in {root}{in_use} "
          "(a sweep start evicts least recently used entries over --cache-disk, default "
          f"{size(cache_eviction.default_budget(root))} here)", flush=True)
    return 0


def clean_cache(args: argparse.Namespace, root: Path) -> int:
    from tsweep.trainers import cache_eviction, cache_store

    # Every argument is checked before anything is removed.
    older = parse_duration(args.older_than, "--older-than") if args.older_than is not None else None
    max_bytes = parse_size(args.max_size, "--max-size") if args.max_size is not None else None
    size = cache_store.format_bytes
    if args.all and (older is not None or max_bytes is not None):
        raise SweepConfigError("`--all` removes every entry not in use: give it without --older-than or --max-size")
    if not args.all and older is None and max_bytes is None:
        max_bytes = cache_eviction.default_budget(root)
        log(f"no --older-than, --max-size or --all: cleaning down to the sweep-start budget, {size(max_bytes)} "
            "(20 GB or 25% of the free disk, whichever is smaller)")
    entries = cache_store.scan(root)
    result = cache_eviction.evict(entries, max_bytes=max_bytes, older_than=older, everything=args.all,
                                  dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    for entry in result.removed:
        log(f"{verb} {entry.describe()}")
    for entry in result.held:
        log(f"kept {entry.describe()}: in use (a process holds it)")
    for entry, error in result.failed:
        log(f"could not remove {entry.path}: {error}")
    left = len(entries) - (0 if args.dry_run else len(result.removed))
    log(f"{verb} {cache_store.count(len(result.removed))} ({size(result.before - result.after)}); {root} "
        f"{'would hold' if args.dry_run else 'holds'} {size(result.after)} in {cache_store.count(left)}")
    return 1 if result.failed else 0
