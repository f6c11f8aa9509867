"""A small, learnable image dataset generated on the spot, for the offline demo and the tests.

Each class is a shape in its own colour family (red circles, green squares, blue triangles, ...) at a
random place and size on a noisy background, written as JPEG files in the tsweep folder layout.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

SHAPES = (("circles", (200, 40, 40)), ("squares", (40, 170, 40)), ("triangles", (40, 60, 210)),
          ("crosses", (210, 180, 30)), ("rings", (160, 40, 190)))


def draw(shape: str, colour: tuple[int, int, int], size: int, rng: np.random.Generator) -> Image.Image:
    """One image of `shape`, its colour jittered, on a noisy background tinted with the class colour."""
    # The background leans towards the class colour too, so that even a random-init backbone's pooled
    # features separate the classes (the demo and the tests run offline, without ImageNet weights).
    noise = rng.integers(70, 130, (size, size, 3)).astype(np.float32)
    background = 0.6 * noise + 0.4 * np.asarray(colour, dtype=np.float32)
    image = Image.fromarray(background.clip(0, 255).astype(np.uint8))
    pen = ImageDraw.Draw(image)
    tint = tuple(int(np.clip(c + rng.integers(-30, 31), 0, 255)) for c in colour)
    r = int(size * rng.uniform(0.2, 0.35))
    cx, cy = (int(v) for v in rng.integers(r, size - r, 2))
    box = (cx - r, cy - r, cx + r, cy + r)
    if shape == "circles":
        pen.ellipse(box, fill=tint)
    elif shape == "squares":
        pen.rectangle(box, fill=tint)
    elif shape == "triangles":
        pen.polygon([(cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)], fill=tint)
    elif shape == "crosses":
        w = max(2, r // 3)
        pen.rectangle((cx - r, cy - w, cx + r, cy + w), fill=tint)
        pen.rectangle((cx - w, cy - r, cx + w, cy + r), fill=tint)
    else:
        pen.ellipse(box, outline=tint, width=max(2, r // 3))
    return image


def make_synthetic_dataset(root: str | Path, num_classes: int = 3, train_per_class: int = 40,
                           test_per_class: int = 10, size: int = 64, seed: int = 0) -> Path:
    """Write `root/train/<class>/*.jpg` and `root/test/<class>/*.jpg`; returns `root`.

    Args:
        root: output folder (created; existing files with the same names are overwritten).
        num_classes: 2 to 5 (default 3).
        train_per_class, test_per_class: images per class (defaults 40 and 10).
        size: image side in pixels (default 64).
        seed: the same seed writes the same images.
    """
    if not 2 <= num_classes <= len(SHAPES):
        raise ValueError(f"`num_classes` must be in [2, {len(SHAPES)}], got {num_classes}")
    root = Path(root)
    rng = np.random.default_rng(seed)
    for split, count in (("train", train_per_class), ("test", test_per_class)):
        for shape, colour in SHAPES[:num_classes]:
            folder = root / split / shape
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(count):
                draw(shape, colour, size, rng).save(folder / f"{shape}_{i:03d}.jpg", quality=90)
    return root
