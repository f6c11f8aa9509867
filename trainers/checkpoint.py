"""Epoch checkpoints: the whole model (weights and optimizer state) plus the metric history so far.

A trial restarted from one (on another node, or by `tsweep resume`) continues after the saved epoch.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

MODEL_FILE = "model.keras"
STATE_FILE = "state.json"


def save_checkpoint(directory: str | Path, model: Any, history: list[dict]) -> Path:
    """Write `model.keras` and `state.json` (epoch and history) into `directory`; returns it."""
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    model.save(directory / MODEL_FILE)
    state = {"epoch": history[-1]["epoch"] if history else 0, "history": history}
    (directory / STATE_FILE).write_text(json.dumps(state))
    return directory


def load_checkpoint(directory: str | Path) -> tuple[Any, list[dict]]:
    """The compiled model (optimizer state included) and the history saved in `directory`."""
    import keras

    import tsweep.trainers.layers  # noqa: F401  (registers the Preprocess layer for deserialization)

    directory = Path(directory)
    model = keras.models.load_model(directory / MODEL_FILE, safe_mode=True)
    history = json.loads((directory / STATE_FILE).read_text())["history"]
    return model, history


def checkpoint_epoch(directory: str | Path) -> int:
    """The last completed epoch saved in a checkpoint directory."""
    return int(json.loads((Path(directory) / STATE_FILE).read_text())["epoch"])
