"""Listing and decoding image files with Pillow, into uint8 RGB arrays of one fixed size.

Decoding follows ``keras.utils.image_dataset_from_directory``: every mode becomes 3-channel RGB (alpha is
dropped), and images are resized to S x S with bilinear interpolation without keeping the aspect ratio.
No TensorFlow here: the CLI imports this module and must stay fast.
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile
import time
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import IO, Callable, Sequence

import numpy as np
from PIL import Image

from tsweep.files import fsync_dir

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".bmp", ".gif", ".webp"})
# The same list, for error messages.
EXTENSIONS_TEXT = "jpg, jpeg, png, bmp, gif, webp"

# decode_many reports progress only on lists at least this long, every 10% or every few seconds.
PROGRESS_MIN_IMAGES = 100
PROGRESS_EVERY_S = 5.0

# Modes whose values are wider than 8 bits: Image.convert("RGB") clips them instead of scaling.
_WIDE_MODES = {"I", "F", "I;16", "I;16L", "I;16B", "I;16N"}

# Version of the images.npy + meta.json store written by write_decoded; bump it to invalidate old caches.
DECODED_FORMAT = 1

Progress = Callable[[str], None]


class BadImageError(Exception):
    """A file that cannot be decoded: empty, truncated, not an image, or a decompression bomb.

    Attributes:
        path: the file.
        reason: a short human-readable cause, e.g. "empty file (0 bytes)".
    """

    def __init__(self, path: str | os.PathLike, reason: str) -> None:
        super().__init__(f"{path}: {reason}")
        self.path = str(path)
        self.reason = reason


def is_image_file(path: Path) -> bool:
    """True for a non-hidden file name with one of IMAGE_EXTENSIONS (any case)."""
    return not path.name.startswith(".") and path.suffix.lower() in IMAGE_EXTENSIONS


def list_images(folder: Path) -> list[Path]:
    """The image files directly inside `folder` (not its sub-folders), sorted by name.

    Args:
        folder: a class folder.

    Returns:
        Paths of the non-hidden regular files whose extension (any case) is in IMAGE_EXTENSIONS.
    """
    with os.scandir(folder) as entries:
        found = [Path(e.path) for e in entries if e.is_file() and is_image_file(Path(e.name))]
    return sorted(found)


def _to_rgb(img: Image.Image) -> Image.Image:
    """Any Pillow mode -> RGB, scaling (not clipping) 16/32-bit and float pixels to 0..255."""
    if img.mode == "RGB":
        return img
    if img.mode in _WIDE_MODES:
        a = np.asarray(img, dtype=np.float64)
        if img.mode.startswith("I;16"):
            a = a / 257.0  # 65535 -> 255
        elif a.size and (a.min() < 0 or a.max() > 255):
            lo, hi = float(a.min()), float(a.max())
            a = (a - lo) * (255.0 / (hi - lo)) if hi > lo else np.zeros_like(a)
        gray = np.clip(np.rint(a), 0, 255).astype(np.uint8)
        return Image.fromarray(np.repeat(gray[..., None], 3, axis=2), "RGB")
    if (img.mode == "P" and "transparency" in img.info) or img.mode in ("PA", "LA"):
        # Palette transparency must go through RGBA; converting P straight to RGB warns.
        img = img.convert("RGBA")
    try:
        return img.convert("RGB")
    except ValueError:  # modes with no direct RGB conversion (LAB, HSV...) go through RGBA
        return img.convert("RGBA").convert("RGB")


def _decode(path: Path, image_size: int) -> np.ndarray:
    """decode_image without touching the (process-wide) warning filters; see decode_image."""
    try:
        if os.stat(path).st_size == 0:
            raise BadImageError(path, "empty file (0 bytes)")
        with Image.open(path) as img:
            # Image.open only warns between MAX_IMAGE_PIXELS and twice that; refuse both here.
            limit = Image.MAX_IMAGE_PIXELS
            if limit and img.size[0] * img.size[1] > limit:
                raise BadImageError(path, f"decompression bomb: {img.size[0]}x{img.size[1]} pixels is over "
                                          f"Pillow's limit of {limit}")
            if img.format == "JPEG":
                img.draft("RGB", (image_size, image_size))  # DCT scaling: large photos decode much faster
            img.load()  # the pixels are read lazily: this is where truncation shows
            rgb = _to_rgb(img)
            if rgb.size != (image_size, image_size):
                rgb = rgb.resize((image_size, image_size), Image.Resampling.BILINEAR)
            out = np.asarray(rgb, dtype=np.uint8)
    except BadImageError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise BadImageError(path, f"decompression bomb: {e}") from e
    except Image.UnidentifiedImageError as e:
        raise BadImageError(path, "not an image Pillow can read") from e
    except MemoryError:
        raise
    except Exception as e:  # Pillow plugins raise many exception types on corrupt data
        msg = str(e) or type(e).__name__
        kind = "truncated" if "truncated" in msg.lower() else "corrupt"
        if isinstance(e, OSError) and e.errno is not None:  # missing, unreadable: not the content's fault
            kind = "cannot read"
        raise BadImageError(path, f"{kind}: {msg}") from e
    return out.reshape(image_size, image_size, 3)


def decode_image(path: str | os.PathLike, image_size: int) -> np.ndarray:
    """Decode one image file into a uint8 RGB array of shape (image_size, image_size, 3).

    Args:
        path: the image file.
        image_size: side S of the square output, in pixels.

    Returns:
        The pixels, resized to S x S (bilinear, aspect ratio not kept).

    Raises:
        BadImageError: empty, truncated or corrupt file, not an image, or more pixels than
            ``PIL.Image.MAX_IMAGE_PIXELS`` (decompression bomb).
    """
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        return _decode(Path(path), image_size)


def _try_decode(path: Path, image_size: int) -> np.ndarray | BadImageError:
    try:
        return _decode(path, image_size)
    except BadImageError as e:
        return e


def decode_many(paths: Sequence[str | os.PathLike], image_size: int, progress: Progress | None = None,
                ) -> tuple[np.ndarray, list[tuple[str, str]], list[int]]:
    """Decode many files with a few threads (Pillow releases the GIL while decoding).

    Args:
        paths: the image files.
        image_size: side S of the square output, in pixels.
        progress: called with a line like "decoded 300/1000 images" every 10% or every few seconds on
            lists of PROGRESS_MIN_IMAGES or more; default None (silent).

    Returns:
        ``(images, skipped, kept)``: uint8 array (N, S, S, 3) of the decodable files in input order,
        ``(path, reason)`` of each file that could not be decoded, and the input indices of the N rows.
    """
    paths = [Path(p) for p in paths]
    n = len(paths)
    out = np.empty((n, image_size, image_size, 3), dtype=np.uint8)
    skipped: list[tuple[str, str]] = []
    kept: list[int] = []
    report = progress if progress is not None and n >= PROGRESS_MIN_IMAGES else None
    step = max(1, n // 10)
    last = time.monotonic()
    workers = max(2, min(4, os.cpu_count() or 2))
    # catch_warnings is not thread-safe, so the filter is set once here, around all worker threads.
    with warnings.catch_warnings():
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        with ThreadPoolExecutor(max_workers=workers, thread_name_prefix="tsweep-decode") as pool:
            for i, result in enumerate(pool.map(lambda p: _try_decode(p, image_size), paths)):
                if isinstance(result, BadImageError):
                    skipped.append((result.path, result.reason))
                else:
                    out[len(kept)] = result  # compact as we go: no second copy when files are skipped
                    kept.append(i)
                done = i + 1
                if report and done < n and (done % step == 0 or time.monotonic() - last >= PROGRESS_EVERY_S):
                    report(f"decoded {done}/{n} images")
                    last = time.monotonic()
    if len(kept) < n:
        out = out[: len(kept)]
    return out, skipped, kept


def read_decoded(folder: Path, image_size: int) -> tuple[np.ndarray, dict] | None:
    """A store written by `write_decoded`, memory-mapped read-only, or None if absent, stale or unreadable.

    Args:
        folder: the store folder (holding images.npy and meta.json).
        image_size: the expected side S; a store of another size or DECODED_FORMAT counts as absent.

    Returns:
        ``(images, meta)``: uint8 memory map (N, S, S, 3) and the meta dict (N = ``len(meta["files"])``).
    """
    try:
        meta = json.loads((folder / "meta.json").read_text())
        if meta.get("format") != DECODED_FORMAT or meta.get("image_size") != image_size:
            return None
        images = np.load(folder / "images.npy", mmap_mode="r")
        ok = images.dtype == np.uint8 and images.shape == (len(meta["files"]), image_size, image_size, 3)
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return (images, meta) if ok else None


def write_decoded(folder: Path, images: np.ndarray, meta: dict) -> None:
    """Store decoded images atomically: readers (other processes) never see a half-written folder.

    Args:
        folder: the store folder to create; its parent is created if needed.
        images: uint8 (N, S, S, 3).
        meta: JSON-able dict with "format" (DECODED_FORMAT), "image_size" (S) and "files" (N entries).

    Raises:
        OSError: the folder could not be written.
    """
    folder.parent.mkdir(parents=True, exist_ok=True)
    # A temp dir in the same parent, renamed at the end: rename is atomic within one filesystem.
    tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{folder.name}-", dir=folder.parent))
    try:
        with open(tmp / "images.npy", "wb") as f:
            np.save(f, images)
            _durable(f)
        with open(tmp / "meta.json", "w") as f:
            f.write(json.dumps(meta, indent=1))
            _durable(f)
        for _ in range(2):
            try:
                os.rename(tmp, folder)
                fsync_dir(folder.parent)
                return
            except OSError:
                if not folder.exists():
                    raise
                if read_decoded(folder, meta["image_size"]) is not None:
                    return  # another process (a parallel trial) won the race: use its copy
                stale = Path(tempfile.mkdtemp(prefix=f".stale-{folder.name}-", dir=folder.parent))
                os.rename(folder, stale / "old")  # an unreadable leftover: move it away, then retry
                shutil.rmtree(stale, ignore_errors=True)
        raise OSError(f"could not rename {tmp} to {folder}")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)  # already gone after a successful rename


def _durable(f: IO) -> None:
    """Flush a file to disk before the folder holding it is renamed into place (a power loss then leaves no
    renamed folder with empty files)."""
    f.flush()
    os.fsync(f.fileno())
