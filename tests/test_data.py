"""Image folders -> Dataset: layouts, splits, decoding of every mode, broken files, the on-disk cache."""

from __future__ import annotations

import os
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tsweep.errors import SweepConfigError
from tsweep.trainers import data, images
from tsweep.trainers.data import default_cache_dir, discover, load_dataset, stratified_split
from tsweep.trainers.decoded_cache import cache_key
from tsweep.trainers.images import BadImageError, decode_image, decode_many, list_images

SHARED = Path(__file__).resolve().parents[1].parent / "shared"
COLORS = [(255, 0, 0), (0, 255, 0), (0, 0, 255), (255, 255, 0)]


def write_image(path: Path, color=(255, 0, 0), size=(12, 10), mode="RGB", fmt=None) -> Path:
    """A solid image of `color` saved in `mode` (PIL picks the format from the suffix unless `fmt`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, color).convert(mode).save(path, fmt)
    return path


def make_classes(folder: Path, counts: dict[str, int], ext=".png") -> Path:
    """One sub-folder per class, each of solid images of its own color (class i -> COLORS[i])."""
    for i, (name, n) in enumerate(sorted(counts.items())):
        for j in range(n):
            write_image(folder / name / f"{j:03d}{ext}", COLORS[i % len(COLORS)])
    return folder


def labels_match_colors(x: np.ndarray, y: np.ndarray) -> bool:
    """Each image's center pixel is its class's color, so labels and pixels travel together."""
    return all(np.abs(x[k, 4, 4].astype(int) - COLORS[y[k]]).max() <= 8 for k in range(len(y)))


@pytest.fixture(autouse=True)
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A private cache per test; TSWEEP_CACHE points there too so nothing lands in ~/.cache."""
    path = tmp_path / "cache"
    monkeypatch.setenv("TSWEEP_CACHE", str(path))
    return path


# ---- images.py -------------------------------------------------------------------------------------------

def test_list_images_filters_sorts_and_ignores_hidden_and_subfolders(tmp_path: Path) -> None:
    for name in ["b.JPG", "a.png", "c.jpeg", "d.bmp", "e.gif", "f.webp", "notes.txt", ".hidden.jpg", "g"]:
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "sub.jpg").mkdir()  # a folder with an image-like name is not a file
    assert [p.name for p in list_images(tmp_path)] == ["a.png", "b.JPG", "c.jpeg", "d.bmp", "e.gif", "f.webp"]


def _palette_with_transparency(path: Path) -> Path:
    img = Image.new("P", (10, 10), 0)
    img.putpalette([255, 0, 0, 0, 0, 255] + [0] * 762)
    img.paste(1, (5, 0, 10, 10))
    img.save(path, transparency=bytes([128, 0]))  # per-entry alpha: Pillow warns on a direct P -> RGB
    return path


@pytest.mark.parametrize("name, mode, color, expected", [
    ("rgb.jpg", "RGB", (255, 0, 0), (255, 0, 0)),
    ("upper.JPG", "RGB", (0, 0, 255), (0, 0, 255)),
    ("gray.png", "L", (128, 128, 128), (128, 128, 128)),
    ("gray.jpg", "L", (128, 128, 128), (128, 128, 128)),
    ("rgba.png", "RGBA", (0, 255, 0), (0, 255, 0)),
    ("la.png", "LA", (200, 200, 200), (200, 200, 200)),
    ("cmyk.jpg", "CMYK", (255, 0, 0), (255, 0, 0)),
    ("bw.bmp", "1", (255, 255, 255), (255, 255, 255)),
    ("pal.gif", "P", (255, 0, 0), (255, 0, 0)),
    ("img.webp", "RGB", (0, 255, 0), (0, 255, 0)),
    ("img.bmp", "RGB", (0, 0, 255), (0, 0, 255)),
])
def test_decode_image_converts_every_mode_to_rgb(tmp_path: Path, name, mode, color, expected) -> None:
    path = write_image(tmp_path / name, color, mode=mode)
    with Image.open(path) as img:
        assert img.mode == mode
    out = decode_image(path, 8)
    assert out.shape == (8, 8, 3) and out.dtype == np.uint8
    assert np.abs(out.astype(int) - expected).max() <= 12, out[0, 0]


def test_decode_image_palette_with_transparency_and_16_bit(tmp_path: Path) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # converting P+transparency straight to RGB would warn
        out = decode_image(_palette_with_transparency(tmp_path / "pal.png"), 10)
    assert out.shape == (10, 10, 3)
    assert tuple(out[5, 1]) == (255, 0, 0) and tuple(out[5, 8]) == (0, 0, 255)
    sixteen = Image.fromarray(np.full((6, 6), 65535, np.uint16))
    sixteen.save(tmp_path / "deep.png")
    with Image.open(tmp_path / "deep.png") as img:
        assert img.mode.startswith("I")
    assert (decode_image(tmp_path / "deep.png", 6) == 255).all()  # scaled, not clipped to 255 by chance
    Image.fromarray(np.full((6, 6), 32896, np.uint16)).save(tmp_path / "mid.png")
    assert abs(int(decode_image(tmp_path / "mid.png", 6)[0, 0, 0]) - 128) <= 1


def test_decode_image_resizes_without_keeping_aspect(tmp_path: Path) -> None:
    img = Image.new("RGB", (40, 10), (255, 0, 0))
    img.paste((0, 0, 255), (20, 0, 40, 10))  # left half red, right half blue
    img.save(tmp_path / "wide.png")
    out = decode_image(tmp_path / "wide.png", 16)
    assert out.shape == (16, 16, 3)
    assert tuple(out[8, 1]) == (255, 0, 0) and tuple(out[8, 14]) == (0, 0, 255)
    big = write_image(tmp_path / "big.jpg", (0, 255, 0), size=(640, 480))  # the JPEG draft path
    assert decode_image(big, 20).shape == (20, 20, 3)


def _bad_files(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "text.jpg").write_text("this is not a JPEG")
    good = write_image(folder / "full.jpg", size=(64, 64))
    truncated = folder / "truncated.jpg"
    truncated.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    good.unlink()
    return {"empty": folder / "empty.jpg", "text": folder / "text.jpg", "truncated": truncated}


def test_decode_image_rejects_broken_files(tmp_path: Path) -> None:
    bad = _bad_files(tmp_path)
    reasons = {}
    for kind, path in bad.items():
        with pytest.raises(BadImageError) as info:
            decode_image(path, 8)
        assert info.value.path == str(path)
        reasons[kind] = info.value.reason
    assert "empty" in reasons["empty"] and "not an image" in reasons["text"]
    assert "truncated" in reasons["truncated"]
    with pytest.raises(BadImageError, match="cannot read"):
        decode_image(tmp_path / "gone.jpg", 8)


def test_decode_image_rejects_decompression_bombs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = write_image(tmp_path / "bomb.png", size=(40, 40))
    for limit in (1000, 100):  # over the limit (Pillow warns) and over twice it (Pillow raises)
        monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
        with pytest.raises(BadImageError, match="decompression bomb"):
            decode_image(path, 8)


def test_decode_many_keeps_order_and_reports(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(images, "PROGRESS_MIN_IMAGES", 5)
    paths = [write_image(tmp_path / f"{i}.png", COLORS[i % 4]) for i in range(10)]
    paths.insert(3, _bad_files(tmp_path / "bad")["text"])
    lines: list[str] = []
    x, skipped, kept = decode_many(paths, 8, progress=lines.append)
    assert x.shape == (10, 8, 8, 3) and kept == [0, 1, 2, 4, 5, 6, 7, 8, 9, 10]
    assert skipped == [(str(paths[3]), "not an image Pillow can read")]
    assert [tuple(x[k, 0, 0]) for k in range(4)] == [COLORS[0], COLORS[1], COLORS[2], COLORS[3]]
    assert lines and all("/11 images" in line for line in lines)
    before = len(lines)
    assert decode_many(paths[:2], 8, progress=lines.append)[0].shape == (2, 8, 8, 3)
    assert len(lines) == before  # short lists stay silent


# ---- layouts and splits ----------------------------------------------------------------------------------

def test_flat_layout_gets_a_stratified_val_split(tmp_path: Path, cache: Path) -> None:
    root = make_classes(tmp_path / "flat", {"cats": 10, "dogs": 5, "owls": 2})
    make_classes(root / ".ipynb_checkpoints", {"junk": 1})  # hidden folders and files are not classes
    write_image(root / "dogs" / ".hidden.png")
    (root / "cats" / "Thumbs.db").write_bytes(b"x")
    ds = load_dataset(root, 8, cache_dir=cache)
    assert ds.class_names == ("cats", "dogs", "owls") and ds.num_classes == 3
    assert np.bincount(ds.y_val).tolist() == [2, 1, 1] and np.bincount(ds.y_train).tolist() == [8, 4, 1]
    assert ds.x_train.dtype == np.uint8 and ds.y_train.dtype == np.int64 and ds.x_val.shape == (4, 8, 8, 3)
    assert ds.x_test is None and ds.y_test is None and not ds.has_val_folder and ds.skipped == ()
    assert labels_match_colors(ds.x_train, ds.y_train) and labels_match_colors(ds.x_val, ds.y_val)
    x, y = ds.full_train()
    assert len(y) == 17 and labels_match_colors(x, y)
    assert ds.summary() == "flat: 3 classes (cats, dogs, owls), 13 train / 4 val / 0 test images at 8 px"


@pytest.mark.parametrize("val_name", ["val", "validation", "Validation"])
def test_split_layout_with_val_folder_and_test(tmp_path: Path, cache: Path, val_name: str) -> None:
    root = tmp_path / "ds"
    make_classes(root / "Train", {"ants": 4, "bees": 3}, ext=".JPG")
    make_classes(root / val_name, {"ants": 2, "bees": 1}, ext=".jpg")
    make_classes(root / "test", {"ants": 1, "bees": 2}, ext=".png")
    layout = discover(root)
    assert layout.has_val_folder and set(layout.splits) == {"train", "val", "test"}
    assert layout.split_dirs["val"] == root / val_name and len(layout.files()) == 13
    ds = load_dataset(root, 8, cache_dir=cache)
    assert ds.y_train.tolist() == [0, 0, 0, 0, 1, 1, 1]
    assert (ds.y_val.tolist(), ds.y_test.tolist()) == ([0, 0, 1], [0, 1, 1])
    assert labels_match_colors(ds.x_test, ds.y_test) and ds.has_val_folder
    assert ds.summary().endswith("7 train / 3 val / 3 test images at 8 px")
    assert len(ds.full_train()[1]) == 10


@pytest.mark.parametrize("splits", [("train",), ("train", "test")])
def test_train_only_or_train_test_carves_val_from_train(tmp_path: Path, cache: Path, splits) -> None:
    for split in splits:
        make_classes(tmp_path / split, {"a": 5, "b": 5, "c": 5, "d": 5})
    ds = load_dataset(tmp_path, 8, val_fraction=0.2, seed=3, cache_dir=cache)
    assert np.bincount(ds.y_val).tolist() == [1, 1, 1, 1] and len(ds.y_train) == 16 and not ds.has_val_folder
    assert (ds.y_test is not None) == ("test" in splits)


def test_stratified_split_is_seeded_stratified_disjoint_and_complete() -> None:
    labels = np.array([0] * 50 + [1] * 30 + [2] * 2 + [3] * 1)
    tr, va = stratified_split(labels, 0.2, seed=7)
    assert np.array_equal(np.sort(np.concatenate([tr, va])), np.arange(len(labels)))
    assert not set(tr) & set(va)
    assert np.bincount(labels[va], minlength=4).tolist() == [10, 6, 1, 0]
    tr2, va2 = stratified_split(labels, 0.2, seed=7)
    assert np.array_equal(tr, tr2) and np.array_equal(va, va2)
    assert not np.array_equal(va, stratified_split(labels, 0.2, seed=8)[1])
    assert len(stratified_split(labels, 0.0, seed=7)[1]) == 0


def test_seed_changes_the_split_without_decoding_again(tmp_path: Path, cache: Path, monkeypatch) -> None:
    root = make_classes(tmp_path / "ds", {"a": 10, "b": 10})
    first = load_dataset(root, 8, seed=0, cache_dir=cache)
    monkeypatch.setattr(images, "decode_many", _must_not_decode)
    again = load_dataset(root, 8, seed=0, cache_dir=cache)
    other = load_dataset(root, 8, seed=1, cache_dir=cache)
    assert np.array_equal(first.x_val, again.x_val) and np.array_equal(first.y_train, again.y_train)
    assert len(other.y_val) == 4 and labels_match_colors(other.x_val, other.y_val)


# ---- cache -----------------------------------------------------------------------------------------------

def _must_not_decode(*args, **kwargs):
    raise AssertionError("decoded again although the cache should have been hit")


def test_cache_hit_does_not_decode_and_returns_equal_arrays(tmp_path: Path, cache: Path, monkeypatch) -> None:
    root = tmp_path / "ds"
    make_classes(root / "train", {"a": 3, "b": 3}, ext=".jpg")
    make_classes(root / "test", {"a": 1, "b": 1}, ext=".jpg")
    lines: list[str] = []
    first = load_dataset(root, 16, cache_dir=cache, progress=lines.append)
    assert any(line.startswith("decoding 8 images at 16 px (cached in ") for line in lines)
    (entry,) = (cache / "decoded").iterdir()
    assert sorted(p.name for p in entry.iterdir()) == ["images.npy", "meta.json"]
    assert np.load(entry / "images.npy").shape == (8, 16, 16, 3)
    monkeypatch.setattr(images, "decode_many", _must_not_decode)
    lines.clear()
    second = load_dataset(root, 16, cache_dir=cache, progress=lines.append)
    assert lines == []  # quiet on a hit
    for name in ("x_train", "y_train", "x_val", "y_val", "x_test", "y_test"):
        a, b = getattr(first, name), getattr(second, name)
        assert type(b) is np.ndarray and np.array_equal(a, b), name
    assert second.x_train.flags.writeable  # in-memory copies, not the read-only memory map
    assert default_cache_dir() == cache and load_dataset(root, 16).num_classes == 2  # $TSWEEP_CACHE


def test_cache_key_follows_files_and_size(tmp_path: Path) -> None:
    root = make_classes(tmp_path / "ds", {"a": 3, "b": 2})
    key = cache_key(discover(root), 8)
    assert cache_key(discover(root), 8) == key and cache_key(discover(root), 9) != key
    first = root / "a" / "000.png"
    st = first.stat()
    os.utime(first, ns=(st.st_atime_ns, st.st_mtime_ns + 5_000_000_000))  # touched
    touched = cache_key(discover(root), 8)
    write_image(first, (1, 2, 3), size=(13, 10))  # changed content and size
    changed = cache_key(discover(root), 8)
    write_image(root / "b" / "new.png")  # added
    added = cache_key(discover(root), 8)
    (root / "a" / "001.png").unlink()  # removed
    removed = cache_key(discover(root), 8)
    assert len({key, touched, changed, added, removed}) == 5


def test_changed_file_gets_a_new_cache_entry(tmp_path: Path, cache: Path) -> None:
    root = make_classes(tmp_path / "ds", {"a": 2, "b": 2})
    load_dataset(root, 8, cache_dir=cache)
    write_image(root / "a" / "000.png", (9, 9, 9), size=(30, 30))
    ds = load_dataset(root, 8, cache_dir=cache)
    assert len(list((cache / "decoded").iterdir())) == 2
    assert any(tuple(x[0, 0]) == (9, 9, 9) for x in np.concatenate([ds.x_train, ds.x_val]))


def test_write_decoded_is_atomic_and_keeps_the_race_winner(tmp_path: Path) -> None:
    target = tmp_path / "decoded" / "key"
    meta = {"format": images.DECODED_FORMAT, "image_size": 2, "files": ["a"]}
    images.write_decoded(target, np.ones((1, 2, 2, 3), np.uint8), meta)
    images.write_decoded(target, np.zeros((1, 2, 2, 3), np.uint8), meta)  # loses the race: keeps the first
    x, got = images.read_decoded(target, 2)
    assert x.max() == 1 and got == meta and images.read_decoded(target, 3) is None
    (target / "images.npy").write_bytes(b"garbage")  # an unreadable leftover is replaced
    assert images.read_decoded(target, 2) is None
    images.write_decoded(target, np.zeros((1, 2, 2, 3), np.uint8), meta)
    assert images.read_decoded(target, 2)[0].max() == 0
    assert [p.name for p in target.parent.iterdir()] == ["key"]  # no temp dirs left behind


def test_processes_loading_at_once_share_one_complete_cache(tmp_path: Path, cache: Path) -> None:
    root = make_classes(tmp_path / "ds", {"a": 30, "b": 30}, ext=".jpg")
    code = ("import sys; from tsweep.trainers.data import load_dataset; "
            "ds = load_dataset(sys.argv[1], 24, cache_dir=sys.argv[2]); print(int(ds.x_train.sum()))")
    procs = [subprocess.Popen([sys.executable, "-c", code, str(root), str(cache)], stdout=subprocess.PIPE,
                              text=True) for _ in range(3)]
    sums = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs) and len(sums) == 1
    assert [p.name for p in (cache / "decoded").iterdir()] == [cache_key(discover(root), 24)]


def test_unwritable_cache_warns_and_still_loads(tmp_path: Path) -> None:
    root = make_classes(tmp_path / "ds", {"a": 2, "b": 2})
    blocker = tmp_path / "not_a_dir"
    blocker.write_text("x")
    with pytest.warns(UserWarning, match="could not write the decoded-image cache"):
        assert len(load_dataset(root, 8, cache_dir=blocker).y_train) == 2


# ---- bad input -------------------------------------------------------------------------------------------

def _bad_layouts(tmp_path: Path) -> list[tuple[Path, str]]:
    """(data dir, text the error must contain) for every layout mistake."""
    cases = [(tmp_path / "missing", "missing")]
    afile = tmp_path / "afile"
    afile.write_text("x")
    cases.append((afile, "not a directory"))
    (tmp_path / "empty").mkdir()
    cases.append((tmp_path / "empty", "no class folders"))
    write_image(tmp_path / "loose2" / "x.jpg")
    cases.append((tmp_path / "loose2", "contains images but no class folders"))
    make_classes(tmp_path / "noimg", {"a": 2, "b": 2})
    (tmp_path / "noimg" / "c").mkdir()
    (tmp_path / "noimg" / "c" / "readme.txt").write_text("x")
    cases.append((tmp_path / "noimg", str(tmp_path / "noimg" / "c") + " contains no images (jpg, jpeg"))
    make_classes(tmp_path / "one", {"only": 3})
    cases.append((tmp_path / "one", "(only)"))
    for name, extra in [("valmiss", {"a": 1}), ("testextra", {"a": 1, "b": 1, "zz": 1})]:
        make_classes(tmp_path / name / "train", {"a": 2, "b": 2})
        make_classes(tmp_path / name / ("val" if name == "valmiss" else "test"), extra)
    cases.append((tmp_path / "valmiss", str(tmp_path / "valmiss" / "val") + " is missing class b"))
    cases.append((tmp_path / "testextra", str(tmp_path / "testextra" / "test") + " has extra class zz"))
    for split in ("train", "val", "validation"):
        make_classes(tmp_path / "both" / split, {"a": 2, "b": 2})
    cases.append((tmp_path / "both", "val/ and validation/"))
    make_classes(tmp_path / "single", {"a": 5, "b": 1})
    cases.append((tmp_path / "single", str(tmp_path / "single" / "b") + " has fewer than 2 images"))
    make_classes(tmp_path / "notrain" / "val", {"a": 1, "b": 1})
    cases.append((tmp_path / "notrain", "no train/ folder"))
    make_classes(tmp_path / "stray" / "train", {"a": 1, "b": 1})
    make_classes(tmp_path / "stray", {"cats": 1})
    cases.append((tmp_path / "stray", "cats"))
    return cases


def test_every_bad_layout_raises_before_decoding(tmp_path: Path, cache: Path, monkeypatch) -> None:
    monkeypatch.setattr(images, "decode_many", _must_not_decode)
    for root, expected in _bad_layouts(tmp_path):
        for call in (lambda: discover(root), lambda: load_dataset(root, 8, cache_dir=cache)):
            with pytest.raises(SweepConfigError) as info:
                call()
            assert expected in str(info.value), (root, str(info.value))
    assert not cache.exists()


def test_bad_arguments(tmp_path: Path) -> None:
    root = make_classes(tmp_path / "ds", {"a": 2, "b": 2})
    for kwargs, text in [({"image_size": 0}, "image_size"), ({"image_size": 8.5}, "image_size"),
                         ({"image_size": 8, "val_fraction": 1.0}, "val_fraction")]:
        with pytest.raises(SweepConfigError, match=text):
            load_dataset(root, **kwargs)
    assert len(load_dataset(root, np.int64(8), val_fraction=0).y_val) == 0


def test_broken_files_are_skipped_with_one_warning(tmp_path: Path, cache: Path) -> None:
    root = make_classes(tmp_path / "ds", {"a": 3, "b": 3}, ext=".jpg")
    bad = _bad_files(root / "b")
    lines: list[str] = []
    with pytest.warns(UserWarning) as record:
        ds = load_dataset(root, 8, cache_dir=cache, progress=lines.append)
    assert len(record) == 1
    message = str(record[0].message)
    assert all(str(path) in message for path in bad.values()) and "skipped 3" in message
    assert {p for p, _ in ds.skipped} == {str(p) for p in bad.values()}
    assert any(str(bad["truncated"]) in line for line in lines)
    assert len(ds.y_train) + len(ds.y_val) == 6


def test_class_left_without_images_names_folder_and_files(tmp_path: Path, cache: Path) -> None:
    root = tmp_path / "ds"
    make_classes(root / "train", {"a": 2, "b": 2})
    make_classes(root / "val", {"a": 1})
    bad = _bad_files(root / "val" / "b")
    with pytest.warns(UserWarning), pytest.raises(SweepConfigError) as info:
        load_dataset(root, 8, cache_dir=cache)
    text = str(info.value)
    assert str(root / "val" / "b") in text and all(str(p) in text for p in bad.values())


def test_decompression_bomb_is_skipped_and_named(tmp_path: Path, cache: Path, monkeypatch) -> None:
    root = make_classes(tmp_path / "ds", {"a": 3, "b": 3})
    bomb = write_image(root / "a" / "bomb.png", size=(40, 40))
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # 40x40 is over, the 12x10 images are not
    with pytest.warns(UserWarning, match="bomb.png"):
        ds = load_dataset(root, 8, cache_dir=cache)
    assert ds.skipped == ((str(bomb), ds.skipped[0][1]),) and "decompression bomb" in ds.skipped[0][1]


# ---- the real corel5 folder ------------------------------------------------------------------------------

@pytest.mark.shared
def test_corel5_at_32_px(cache: Path) -> None:
    root = SHARED / "datasets" / "corel5"
    if not root.is_dir():
        pytest.skip(f"{root} is absent: this test needs the ../shared datasets beside the project")
    ds = load_dataset(root, 32, cache_dir=cache)
    assert ds.class_names == ("bus", "dinosaur", "elephant", "flower", "horse")
    assert (len(ds.y_train), len(ds.y_val), len(ds.y_test)) == (320, 80, 100)
    assert np.bincount(ds.y_val).tolist() == [16] * 5 and np.bincount(ds.y_test).tolist() == [20] * 5
    assert ds.x_train.shape == (320, 32, 32, 3) and ds.x_test.dtype == np.uint8 and ds.skipped == ()
    assert ds.summary().startswith("corel5: 5 classes (bus, dinosaur, elephant, flower, horse), 320 train")
    assert data.discover(root).split_dirs["test"] == root / "test"
