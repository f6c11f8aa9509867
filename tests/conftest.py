"""Shared fixtures: paths to ../shared, a generated dataset and a private decoded-image cache."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

SHARED = Path(__file__).resolve().parents[1].parent / "shared"


def shared_path(*parts: str) -> Path:
    """A path under ../shared, skipping the test with the reason when it is absent."""
    path = SHARED.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"{path} is absent: these tests need the ../shared datasets and weights beside the project")
    return path


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated 3-class dataset with train/ and test/ splits (32 px)."""
    from tsweep.trainers.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(tmp_path_factory.mktemp("shapes"), num_classes=3, train_per_class=20,
                                  test_per_class=5, size=32)


@pytest.fixture(scope="session")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A decoded-image cache private to the test session (never the user's ~/.cache)."""
    path = tmp_path_factory.mktemp("cache")
    os.environ["TSWEEP_CACHE"] = str(path)
    return path
