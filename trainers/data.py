"""Image folders -> decoded arrays: layout discovery, validation, seeded stratified splits.

Accepted layouts of ``data_dir`` (split names in any case):

* ``DIR/<class>/<images>``: validation is a stratified split of it, no test split;
* ``DIR/train/<class>/...`` with optional ``DIR/val/`` or ``DIR/validation/`` and optional ``DIR/test/``,
  each ``<class>/<images>``. Without a val folder, validation is a stratified split of train.

Every image of every split is decoded once per (file list, image size) into ``cache_dir/decoded/<key>/``, so
trials and later sweeps only memory-map it (``trainers.decoded_cache``: its keys, locks and meta). No TensorFlow
here.
"""

from __future__ import annotations

import numbers
import os
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np

from tsweep.errors import NodeFileError, SweepConfigError
from tsweep.files import is_uri
from tsweep.trainers import images as imgs
from tsweep.trainers.decoded_cache import cache_key, load_or_decode  # noqa: F401 (cache_key: re-exported)
from tsweep.trainers.remote import local_data_dir

SPLITS = ("train", "val", "test")
_SPLIT_FOLDERS = {"train": "train", "val": "val", "validation": "val", "test": "test"}
_LAYOUT_HELP = "one sub-folder of images per class, or train/ (+ optional val/ or validation/, test/) of such"

Progress = Callable[[str], None]


@dataclass(frozen=True, eq=False)
class Layout:
    """The image files of a data dir, found without decoding anything.

    Attributes:
        root: the data dir.
        class_names: sorted class folder names; labels are indices into it.
        splits: "train" and optionally "val", "test" -> class name -> sorted image files.
        split_dirs: the folder of each split ("train" is `root` itself in the flat layout).
        has_val_folder: True when validation comes from a val/ or validation/ folder.
    """

    root: Path
    class_names: tuple[str, ...]
    splits: dict[str, dict[str, tuple[Path, ...]]]
    split_dirs: dict[str, Path]
    has_val_folder: bool

    def files(self) -> list[tuple[str, int, Path]]:
        """(split, label, path) of every image, split by split, class by class, in sorted file order."""
        return [(split, label, path) for split in SPLITS if split in self.splits
                for label, name in enumerate(self.class_names) for path in self.splits[split][name]]


@dataclass(frozen=True, eq=False)
class Dataset:
    """Decoded images: x uint8 (N, S, S, 3), y int64 (N,) indices into `class_names`."""

    class_names: tuple[str, ...]
    x_train: np.ndarray
    y_train: np.ndarray
    x_val: np.ndarray
    y_val: np.ndarray
    x_test: np.ndarray | None  # None when the data dir has no test/ folder
    y_test: np.ndarray | None
    image_size: int
    source: str  # the data dir
    skipped: tuple[tuple[str, str], ...] = ()  # (path, reason) of files that could not be decoded
    has_val_folder: bool = False

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def full_train(self) -> tuple[np.ndarray, np.ndarray]:
        """Train and validation images together (for the final model), as (x, y)."""
        if len(self.y_val) == 0:
            return self.x_train, self.y_train
        return np.concatenate([self.x_train, self.x_val]), np.concatenate([self.y_train, self.y_val])

    def summary(self) -> str:
        """One line, e.g. "bees: 2 classes (ants, bees), 244 train / 153 val / 0 test images at 160 px"."""
        n, n_test = self.num_classes, 0 if self.y_test is None else len(self.y_test)
        names = ", ".join(self.class_names[:10]) + (f", +{n - 10} more" if n > 10 else "")
        return (f"{Path(self.source).name or self.source}: {n} classes ({names}), {len(self.y_train)} train"
                f" / {len(self.y_val)} val / {n_test} test images at {self.image_size} px")

    def imbalance_warning(self) -> str | None:
        """A warning suggesting class weights when the largest class has over 3x the training images of the
        smallest (`trainers.metrics.imbalance_warning`), else None."""
        from tsweep.trainers.metrics import imbalance_warning

        return imbalance_warning(np.bincount(self.y_train, minlength=self.num_classes), self.class_names)


def default_cache_dir() -> Path:
    """Where decoded images are cached: ``$TSWEEP_CACHE`` if set, else ``~/.cache/tsweep``."""
    env = os.environ.get("TSWEEP_CACHE")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "tsweep"


def _subdirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and not p.name.startswith("."))


def _classes(split_dir: Path) -> dict[str, tuple[Path, ...]]:
    """Class name -> images of one split folder; SweepConfigError when empty or a class has no images."""
    class_dirs = _subdirs(split_dir)
    if not class_dirs:
        loose = any(imgs.is_image_file(p) for p in split_dir.iterdir() if p.is_file())
        what = "contains images but no class folders" if loose else "has no class folders"
        raise SweepConfigError(f"{split_dir} {what}: expected {_LAYOUT_HELP}, e.g. {split_dir}/cats/*.jpg")
    classes = {d.name: tuple(imgs.list_images(d)) for d in class_dirs}
    empty = [str(split_dir / name) for name, files in classes.items() if not files]
    if empty:
        raise SweepConfigError(f"class folder {', '.join(empty)} contains no images "
                               f"({imgs.EXTENSIONS_TEXT}): add images or remove the folder")
    return classes


def discover(data_dir: str | os.PathLike, *, val_fraction: float = 0.2) -> Layout:
    """Find and check the splits, classes and image files of a data dir, without decoding anything.

    Args:
        data_dir: the data folder (see the module docstring for the accepted layouts).
        val_fraction: share of each class carved out of train for validation when there is no val
            folder; default 0.2. Only used to check that each class has at least 2 images to split.

    Returns:
        The Layout.

    Raises:
        SweepConfigError: missing or non-directory data dir, no class folders, a class folder without
            images, fewer than two classes, class folders differing between splits, both val/ and
            validation/, or a class with fewer than 2 images when validation must be carved from train.
    """
    if not 0 <= val_fraction < 1:
        raise SweepConfigError(f"`val_fraction` must be in [0, 1), got {val_fraction}: use e.g. 0.2")
    root = Path(data_dir).expanduser()
    if not root.exists():
        raise NodeFileError(f"data dir {root} does not exist: pass a folder holding {_LAYOUT_HELP}")
    if not root.is_dir():
        raise NodeFileError(f"data dir {root} is not a directory: pass a folder holding {_LAYOUT_HELP}")
    found: dict[str, list[Path]] = {}
    for d in _subdirs(root):
        if d.name.lower() in _SPLIT_FOLDERS:
            found.setdefault(_SPLIT_FOLDERS[d.name.lower()], []).append(d)
    for split, dirs in found.items():
        if len(dirs) > 1:
            names = " and ".join(f"{d.name}/" for d in dirs)
            raise SweepConfigError(f"data dir {root} has both {names}, which is ambiguous: keep one {split} "
                                   "folder (merge or rename the other)")
    if "train" in found:
        others = [d.name for d in _subdirs(root) if d.name.lower() not in _SPLIT_FOLDERS]
        if others:
            raise SweepConfigError(f"data dir {root} has a {found['train'][0].name}/ split folder but also "
                                   f"{', '.join(others)}: move class folders under train/ (val/, test/) or "
                                   "remove them")
        split_dirs = {s: found[s][0] for s in SPLITS if s in found}
    elif any(_subdirs(dirs[0]) for dirs in found.values()):
        names = ", ".join(f"{dirs[0].name}/" for dirs in found.values())
        raise SweepConfigError(f"data dir {root} has {names} but no train/ folder: add {root}/train/<class>/ "
                               "folders with the training images")
    else:
        split_dirs = {"train": root}
    splits = {s: _classes(d) for s, d in split_dirs.items()}
    class_names = tuple(sorted(splits["train"]))
    if len(class_names) < 2:
        raise SweepConfigError(f"{split_dirs['train']} has only one class folder ({class_names[0]}): "
                               "classification needs at least two; add another class folder")
    problems = []
    for s in ("val", "test"):
        if s in splits:
            missing, extra = set(class_names) - set(splits[s]), set(splits[s]) - set(class_names)
            if missing:
                problems.append(f"{split_dirs[s]} is missing class {', '.join(sorted(missing))}")
            if extra:
                problems.append(f"{split_dirs[s]} has extra class {', '.join(sorted(extra))} (not in train)")
    if problems:
        raise SweepConfigError("class folders differ between splits: " + "; ".join(problems)
                               + ". Every split needs the same class folders: add, rename or remove folders")
    layout = Layout(root, class_names, splits, split_dirs, has_val_folder="val" in splits)
    if not layout.has_val_folder and val_fraction > 0:
        few = [str(layout.split_dirs["train"] / c) for c in class_names if len(splits["train"][c]) < 2]
        if few:
            raise SweepConfigError(f"class folder {', '.join(few)} has fewer than 2 images, but validation "
                                   "is split from the training images: add images or a val/ folder")
    return layout


def stratified_split(labels: np.ndarray, val_fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Seeded per-class split of positions into (train, val), both sorted.

    Args:
        labels: class index of each item.
        val_fraction: share of each class going to val, rounded; at least 1 (and at least 1 left for
            train) for classes with 2 or more items when val_fraction > 0.
        seed: the same seed and labels always give the same split.
    """
    train, val = [], []
    for c in np.unique(labels):
        pos = np.flatnonzero(labels == c)
        n_val = int(len(pos) * val_fraction + 0.5)
        if val_fraction > 0 and len(pos) >= 2:
            n_val = min(max(n_val, 1), len(pos) - 1)
        # One generator per class: a class's split does not move when another class changes.
        pos = np.random.default_rng([int(seed) % 2**64, int(c)]).permutation(pos)
        val.append(pos[:n_val])
        train.append(pos[n_val:])
    empty = np.zeros(0, np.int64)
    return tuple(np.sort(np.concatenate(parts)) if parts else empty for parts in (train, val))


def load_dataset(data_dir: str | os.PathLike, image_size: int, *, val_fraction: float = 0.2, seed: int = 0,
                 cache_dir: str | os.PathLike | None = None, progress: Progress | None = None) -> Dataset:
    """Discover, check, decode (or load from the cache) and split an image folder.

    Args:
        data_dir: the data folder (see the module docstring for the accepted layouts), or a URI
            (s3://, gs://, file://) copied once per node into the cache (see `tsweep.trainers.remote`).
        image_size: side S in pixels of the square images (resized without keeping the aspect ratio).
        val_fraction: share of each class split off train for validation when there is no val folder;
            default 0.2 (0 = no validation).
        seed: seed of that split; default 0.
        cache_dir: root of the decoded-image cache; default None = `default_cache_dir()`.
        progress: called with progress lines (decoding, skipped files); default None (silent).

    Raises:
        SweepConfigError: bad layout (see `discover`), or a class left with no usable images (or fewer
            than 2 when validation is split from train) after skipping unreadable files.
    """
    if isinstance(image_size, bool) or not isinstance(image_size, numbers.Integral) or image_size < 1:
        raise SweepConfigError(f"`image_size` must be a positive whole number of pixels, got {image_size!r}")
    image_size = int(image_size)
    cache = Path(cache_dir).expanduser() if cache_dir is not None else default_cache_dir()
    layout = discover(local_data_dir(data_dir, cache, progress), val_fraction=val_fraction)
    source = str(data_dir) if is_uri(data_dir) else str(layout.root.resolve())
    images, meta = load_or_decode(layout, image_size, cache, progress, source)
    split_of = np.array([f["split"] for f in meta["files"]])
    labels = np.array([f["label"] for f in meta["files"]], dtype=np.int64)
    skipped = tuple((str(layout.root / s["path"]), s["reason"]) for s in meta["skipped"])
    if skipped:
        msg = f"skipped {len(skipped)} unreadable image(s):\n" + "\n".join(f"  {p}: {r}" for p, r in skipped)
        warnings.warn(msg, stacklevel=2)
        if progress:
            progress(msg)
    carve = not layout.has_val_folder and val_fraction > 0
    for split in layout.splits:
        need = 2 if carve and split == "train" else 1  # carving validation out of train needs 2 per class
        for label, name in enumerate(layout.class_names):
            if np.count_nonzero((split_of == split) & (labels == label)) < need:
                folder = layout.split_dirs[split] / name
                broken = "\n".join(f"  {p}: {r}" for p, r in skipped if Path(p).parent == folder)
                raise SweepConfigError(f"class folder {folder} has {'fewer than 2' if need == 2 else 'no'} "
                                       f"readable images; these could not be decoded:\n{broken}\n"
                                       "replace or remove the broken files, or add images")
    train_idx = np.flatnonzero(split_of == "train")
    if layout.has_val_folder:
        val_idx = np.flatnonzero(split_of == "val")
    else:
        tr, va = stratified_split(labels[train_idx], val_fraction, seed)
        train_idx, val_idx = train_idx[tr], train_idx[va]
    test_idx = np.flatnonzero(split_of == "test") if "test" in layout.splits else None
    # Fancy indexing copies each split out of the memory map into RAM.
    x_train, x_val = np.asarray(images[train_idx]), np.asarray(images[val_idx])
    x_test = np.asarray(images[test_idx]) if test_idx is not None else None
    y_test = labels[test_idx] if test_idx is not None else None
    return Dataset(layout.class_names, x_train, labels[train_idx], x_val, labels[val_idx], x_test, y_test,
                   image_size, str(layout.root), skipped, layout.has_val_folder)
