"""A Ray Tune function trainable without TensorFlow, for tests of the search machinery (searchers, time
budgets, resume): each epoch reports made-up metrics that depend on the config deterministically, then checks
in with a TrialGate (tests/fake_sweeps.py) at every epoch but the last, so a test holds trials where it wants.

Not a test module (no test_ prefix). `use_fake_trainable` puts it in place of the real trainable.
"""

from __future__ import annotations

import math
import sys
from typing import Any, Callable

import pytest


def score(config: dict) -> float:
    """Final val_accuracy of a config: best at learning_rate 1e-3 with no dropout, in (0, 1]."""
    lr = float(config.get("learning_rate", 1e-3))
    return round(math.exp(-abs(math.log10(lr) + 3)) * (1 - 0.5 * float(config.get("dropout", 0.0))), 6)


def make_fake_trainable(gate_path: str | None) -> Callable[[dict], None]:
    def fake_trial(config: dict) -> None:
        import os

        from ray import tune

        from tsweep.search.trial import GATE_ENV, check_in

        if gate_path:
            os.environ[GATE_ENV] = gate_path
        epochs = int(config.get("epochs", 2))
        final = score(config)
        for epoch in range(1, epochs + 1):
            acc = final * epoch / epochs
            tune.report({"epoch": epoch, "phase": "features", "accuracy": acc, "val_accuracy": acc,
                         "loss": 1 - acc, "val_loss": 1 - acc, "epoch_time_s": 0.0})
            if epoch < epochs:
                check_in(tune.get_context().get_trial_id(), epoch)

    return fake_trial


def use_fake_trainable(monkeypatch: pytest.MonkeyPatch, gate_path: str | None) -> None:
    """Make `search.tuner` run the fake trainable (1 CPU per trial) instead of the real one."""
    import ray
    from ray import tune

    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers need not import tests/
    monkeypatch.setattr("tsweep.search.tuner.trainable_for",
                        lambda opts, data_options, space=None:
                        tune.with_resources(make_fake_trainable(gate_path), {"cpu": 1}))


class FakeClock:
    """A clock for `budget.TimeBudget` that moves only when a test says so."""

    def __init__(self, now: float = 1000.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


def fixed_space(**params: Any) -> Any:
    """A Space from plain values and (kind, values) pairs, without a file."""
    from types import MappingProxyType

    from tsweep.spaces.space import Dist, Space

    dists = {k: Dist(*v) if isinstance(v, tuple) else Dist("fixed", (v,)) for k, v in params.items()}
    return Space(MappingProxyType(dists), "<test space>")
