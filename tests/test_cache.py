"""`tsweep cache`: listing the cache root, LRU cleaning, entries held by running processes, sweep-start eviction."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from tsweep.errors import SweepConfigError
from tsweep.search import sweep
from tsweep.search.cache_budget import evict_cache, parse_duration, parse_size
from tsweep.search.cli import main
from tsweep.search.sweep import SweepOptions, check_options
from tsweep.spaces.space import load_space
from tsweep.trainers import cache_eviction, cache_locks, cache_store, decoded_cache
from tsweep.trainers.data import discover, load_dataset
from tsweep.trainers.decoded_cache import cache_key
from tsweep.trainers.features import FeatureCache

DAY = 86400.0


def put(root: Path, n: int, when: float, what: str = "prefix_features", dataset: str | None = None,
        **parts) -> cache_store.Entry:
    """One real FeatureCache entry of n float32 values, last used at `when`; the cache lets go of it."""
    cache = FeatureCache(root / "features", 10**8)
    key_parts = {"what": what, "n": n, "dataset": dataset, **parts}
    cache.get_or_compute(key_parts, lambda: np.zeros(n, "float32"))
    cache.close()
    path = cache.path(key_parts)
    os.utime(path.with_suffix(".json"), (when, when))
    (entry,) = [e for e in cache_store.scan(root) if e.path == path]
    return entry


def decoded(root: Path, folder: Path, size: int, when: float) -> cache_store.Entry:
    """The decoded entry of `folder` at `size`, last used at `when`; this process lets go of it."""
    load_dataset(folder, size, cache_dir=root)
    decoded_cache.let_go(root)
    key = cache_key(discover(folder), size)
    os.utime(root / "decoded" / key / "meta.json", (when, when))
    (entry,) = [e for e in cache_store.scan(root) if e.key == key]
    return entry


def keys(root: Path) -> set[str]:
    return {e.key for e in cache_store.scan(root)}


# ---- listing -----------------------------------------------------------------------------------------------
def test_listing_shows_kinds_datasets_and_bytes(shapes_dir, tmp_path, capsys):
    root, now = tmp_path / "cache", time.time()
    dec = decoded(root, shapes_dir, 32, now - 4 * DAY)
    features = put(root, 1000, now - 3 * DAY, dataset=dec.key, backbone="mobilenet_v2", image_size=32,
                   cutoff=13, split="train")
    views = put(root, 2000, now - 2 * DAY, what="view_features", dataset=dec.key, backbone="mobilenet_v2",
                image_size=32, cutoff=10, split="train", view=3, augmentation="light",
                policy='["light", [["RandomFlip", {"mode": "horizontal"}]]]')
    other = put(root, 10, now - DAY, what="mystery")
    entries = cache_store.scan(root)
    assert [e.kind for e in entries] == ["mystery", "views", "features", "decoded"]  # most recent first
    assert dec.dataset == features.dataset == views.dataset == shapes_dir.name and other.dataset == "?"
    assert (dec.image_size, dec.backbone, dec.cutoff) == (32, None, None)
    assert (features.image_size, features.backbone, features.cutoff) == (32, "mobilenet_v2", 13)
    assert views.detail == "train view 3 light" and views.cutoff == 10
    stored = root / "decoded" / dec.key
    assert dec.bytes == sum(p.stat().st_size for p in stored.iterdir()) > 75 * 32 * 32 * 3
    assert features.bytes == features.path.stat().st_size + features.path.with_suffix(".json").stat().st_size
    assert 4000 < features.bytes < views.bytes

    assert main(["cache", "--cache-dir", str(root)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["last", "used", "kind", "dataset", "image", "size", "backbone", "cutoff", "detail",
                              "bytes", "in", "use"]
    assert [line.split()[2] for line in out[2:6]] == ["mystery", "views", "features", "decoded"]
    assert out[6].startswith(f"total: 4 entries, {cache_store.format_bytes(cache_store.total_bytes(entries))} "
                             f"in {root}")
    assert main(["cache", "--cache-dir", str(tmp_path / "none")]) == 0
    assert "no cache at" in capsys.readouterr().out


def test_uses_are_recorded_without_atime(shapes_dir, tmp_path):
    root, old = tmp_path / "cache", time.time() - 10 * DAY
    entry = put(root, 100, old)
    cache = FeatureCache(root / "features", 10**8)
    cache.get_or_compute({"what": "prefix_features", "n": 100, "dataset": None}, lambda: 1 / 0)  # from disk
    assert time.time() - entry.path.with_suffix(".json").stat().st_mtime < 60
    dec = decoded(root, shapes_dir, 32, old)
    load_dataset(shapes_dir, 32, cache_dir=root)  # a cache hit
    assert time.time() - (dec.path / "meta.json").stat().st_mtime < 60
    assert cache_locks.is_held(dec) and cache_locks.is_held(entry)  # this process holds both now
    cache.close()
    decoded_cache.let_go(root)
    assert not cache_locks.is_held(dec) and not cache_locks.is_held(entry)


def test_a_remote_copy_is_listed_with_its_uri(shapes_dir, tmp_path):
    pytest.importorskip("pyarrow")
    from tsweep.trainers.remote import local_data_dir

    remote = tmp_path / "bucket" / "pets"
    shutil.copytree(shapes_dir, remote)
    local_data_dir(remote.as_uri(), tmp_path / "cache")
    (entry,) = cache_store.scan(tmp_path / "cache")
    assert (entry.kind, entry.dataset, entry.detail) == ("remote", "pets", remote.as_uri())
    assert cache_locks.is_held(entry)  # the process that copied it keeps using it
    assert entry.bytes == sum(p.stat().st_size for p in remote.rglob("*") if p.is_file()) + len(remote.as_uri())


# ---- cleaning ----------------------------------------------------------------------------------------------
def test_clean_by_age_removes_entries_last_used_before_it(tmp_path, capsys):
    root, now = tmp_path / "cache", time.time()
    old, recent = put(root, 100, now - 40 * DAY), put(root, 101, now - 10 * DAY)
    leftover = root / "features" / f".{old.key}.abc.tmp"  # a write a killed process left behind
    leftover.write_bytes(b"x" * 50)
    os.utime(leftover, (now - 2 * 3600, now - 2 * 3600))
    assert main(["cache", "clean", "--older-than", "30d", "--cache-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.count("removed features") == 1 and "removed partial" in out and "removed 2 entries" in out
    assert keys(root) == {recent.key} and not old.path.exists() and not old.path.with_suffix(".json").exists()
    assert not old.path.with_suffix(".lock").exists() and not leftover.exists()


def test_clean_by_size_removes_least_recently_used_first(shapes_dir, tmp_path, capsys):
    root, now = tmp_path / "cache", time.time()
    dec = decoded(root, shapes_dir, 32, now - 5 * DAY)
    a, b, c = (put(root, 5000, now - d * DAY, i=d) for d in (3, 1, 2))  # LRU order: dec, a, c, b
    total = cache_store.total_bytes(cache_store.scan(root))
    assert main(["cache", "clean", "--max-size", str(total - 1), "--dry-run", "--cache-dir", str(root)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("would remove decoded") and "would remove 1 entry" in out and len(keys(root)) == 4
    result = cache_eviction.evict(cache_store.scan(root), max_bytes=b.bytes + c.bytes + 10)
    assert [e.key for e in result.removed] == [dec.key, a.key] and keys(root) == {b.key, c.key}
    assert (result.before, result.after) == (total, b.bytes + c.bytes)
    assert main(["cache", "clean", "--max-size", "10GB", "--cache-dir", str(root)]) == 0
    assert keys(root) == {b.key, c.key} and "removed 0 entries" in capsys.readouterr().out


def test_clean_all_keeps_entries_held_by_this_or_another_process(shapes_dir, tmp_path, capsys):
    root, now = tmp_path / "cache", time.time()
    free, mine = put(root, 100, now - DAY), put(root, 200, now - DAY)
    holder = FeatureCache(root / "features", 10**8)  # an open cache that served `mine`
    holder.get_or_compute({"what": "prefix_features", "n": 200, "dataset": None}, lambda: 1 / 0)
    code = ("import sys, numpy as np\n"
            "from tsweep.trainers.features import FeatureCache\n"
            "from tsweep.trainers.data import load_dataset\n"
            "c = FeatureCache(sys.argv[1] + '/features', 10**6)\n"
            "c.get_or_compute({'what': 'prefix_features', 'n': 300}, lambda: np.zeros(300, 'float32'))\n"
            "load_dataset(sys.argv[2], 32, cache_dir=sys.argv[1])\n"
            "print('ready', flush=True)\n"
            "sys.stdin.read()\n")
    proc = subprocess.Popen([sys.executable, "-c", code, str(root), str(shapes_dir)], stdin=subprocess.PIPE,
                            stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "ready"
        theirs = {e.key for e in cache_store.scan(root)} - {free.key, mine.key}
        assert len(theirs) == 2  # their features and decoded images
        assert main(["cache", "clean", "--all", "--cache-dir", str(root)]) == 0
        out = capsys.readouterr().out
        assert out.count("in use (a process holds it)") == 3 and "removed 1 entry (" in out
        assert keys(root) == theirs | {mine.key}
        assert main(["cache", "--cache-dir", str(root)]) == 0
        assert "3 in use" in capsys.readouterr().out
    finally:
        proc.communicate("", timeout=60)
    holder.close()
    assert main(["cache", "clean", "--all", "--cache-dir", str(root)]) == 0
    assert keys(root) == set() and not list((root / "decoded").iterdir())


def test_an_entry_evicted_while_a_cache_is_open_is_computed_again(tmp_path):
    root = tmp_path / "cache"
    cache = FeatureCache(root / "features", 0)  # memory-mapped only: every get reads the file
    parts = {"what": "prefix_features", "n": 7}
    cache.get_or_compute(parts, lambda: np.ones(7, "float32"))
    cache.close()
    assert cache_eviction.evict(cache_store.scan(root), everything=True).removed
    assert cache.get_or_compute(parts, lambda: np.full(7, 2, "float32"))[0] == 2 and cache.stats["computed"] == 2


# ---- the sweep start ---------------------------------------------------------------------------------------
def test_sweep_start_evicts_down_to_the_budget_and_says_what(shapes_dir, tmp_path, monkeypatch):
    root, now = tmp_path / "cache", time.time()
    size = load_space("default").fixed["image_size"]  # the sweep below runs the default space
    ours = decoded(root, shapes_dir, size, now - 9 * DAY)  # this sweep's images
    theirs = "0" * 32  # features of a dataset whose decoded images are gone
    f1, f2, f3 = (put(root, 20_000, now - d * DAY, dataset=theirs, backbone="vgg16", i=d) for d in (7, 6, 5))
    f_ours = put(root, 20_000, now - 8 * DAY, dataset=ours.key, backbone="mobilenet_v2")
    holder = FeatureCache(root / "features", 10**8)  # f1 is in use by another sweep
    holder.get_or_compute({"what": "prefix_features", "n": 20_000, "dataset": theirs, "backbone": "vgg16", "i": 7},
                          lambda: 1 / 0)
    os.utime(f1.path.with_suffix(".json"), (f1.last_used, f1.last_used))
    budget = cache_store.total_bytes(cache_store.scan(root)) - f2.bytes - f3.bytes
    monkeypatch.setattr(sweep, "check_weights", lambda space, progress: None)  # no TensorFlow here
    lines: list[str] = []
    opts = SweepOptions(data=str(shapes_dir), results_dir=str(tmp_path / "results"), cache_dir=str(root),
                        cache_disk=str(budget))
    sweep.prepare(opts, progress=lines.append)
    assert keys(root) == {ours.key, f_ours.key, f1.key}
    assert lines[0].startswith(f"cache {root} holds ") and "over its" in lines[0] and "(--cache-disk)" in lines[0]
    assert "evicted 2 least recently used entries" in lines[0]
    assert [line.split(",")[0] for line in lines[1:4]] == [
        "  evicted features #00000000 vgg16", "  evicted features #00000000 vgg16", "  kept features #00000000 vgg16"]
    assert lines[3].endswith("in use by a running sweep") and f"{f2.bytes} B" not in lines[0]
    holder.close()
    decoded_cache.let_go(root)
    lines.clear()
    result = evict_cache(root, opts, [ours.key], lines.append)  # under budget now: silent
    assert result is None and lines == []


def test_default_budget_is_20gb_or_a_quarter_of_the_free_disk(tmp_path):
    free = shutil.disk_usage(tmp_path).free
    assert cache_eviction.default_budget(tmp_path / "not" / "yet") == min(20 * 2**30, int(free * 0.25))


# ---- bad values --------------------------------------------------------------------------------------------
def test_durations_and_sizes_parse_or_name_their_flag(tmp_path, capsys):
    assert parse_duration("30d", "--older-than") == 30 * DAY and parse_duration("12h", "-") == 12 * 3600
    assert parse_duration("90m", "-") == 5400 and parse_duration("45s", "-") == 45
    assert parse_duration("1.5H", "-") == 5400 and parse_duration("2w", "-") == 14 * DAY
    for bad in ("soon", "30", "-1d", "1.2.3d", ""):
        with pytest.raises(SweepConfigError, match=r"`--older-than` must be a duration like 30d, 12h, 90m or 45s"):
            parse_duration(bad, "--older-than")
    with pytest.raises(SweepConfigError, match="`--max-size` must be a size like 512MB or 4GB, got '1.2.3GB'"):
        parse_size("1.2.3GB", "--max-size")
    with pytest.raises(SweepConfigError, match="`--cache-disk` must be a size"):
        check_options(SweepOptions(data="d", cache_disk="huge"))
    check_options(SweepOptions(data="d", cache_disk="50GB"))
    cache = str(tmp_path / "cache")
    for argv, flag in ((["cache", "clean", "--older-than", "soon", "--cache-dir", cache], "--older-than"),
                       (["cache", "clean", "--max-size", "lots", "--cache-dir", cache], "--max-size"),
                       (["run", "--data", str(tmp_path), "--cache-disk", "huge"], "--cache-disk")):
        assert main(argv) == 2
        assert f"tsweep: error: `{flag}` must be a " in capsys.readouterr().err
    assert main(["cache", "clean", "--all", "--max-size", "1GB", "--cache-dir", cache]) == 2
    assert "`--all` removes every entry" in capsys.readouterr().err
