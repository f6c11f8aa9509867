"""What every benchmark script shares: where ../shared is, the default weights, progress lines, dataset names."""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2] / "shared"
DEFAULT_WEIGHTS = SHARED / "weights" / "mobilenet_v2_1.0_224_no_top.h5"


def say(msg: str) -> None:
    print(msg, flush=True)


def dataset_dir(name: str) -> Path:
    """A folder path as it is, else the name of a dataset under ../shared/datasets."""
    path = Path(name.strip()).expanduser()
    return (path if path.is_dir() or "/" in name else SHARED / "datasets" / name.strip()).resolve()
