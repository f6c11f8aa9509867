"""A sweep driver running the fake trainable (tests/fake_trainable.py) on a local 2-CPU Ray, for tests that
kill a driver: `python -m tests.fake_driver ROOT GATE_SOCKET SEARCH NUM_SAMPLES`. Not a test module."""

from __future__ import annotations

import sys
from pathlib import Path

from tests.fake_trainable import fixed_space, make_fake_trainable

SPACE = dict(epochs=2, learning_rate=("loguniform", (1e-5, 1e-1)), dropout=("uniform", (0.0, 0.5)),
             head_size=("choice", (0, 16)))


def main(argv: list[str]) -> int:
    import ray
    from ray import tune

    from tsweep.search import tuner
    from tsweep.search.objective import Objective
    from tsweep.search.options import SweepOptions

    root, gate, search, samples = Path(argv[0]), argv[1], argv[2], int(argv[3])
    ray.cloudpickle.register_pickle_by_value(sys.modules["tests.fake_trainable"])
    ray.init(num_cpus=2, include_dashboard=False)
    tuner.trainable_for = lambda opts, data, space=None: tune.with_resources(make_fake_trainable(gate), {"cpu": 1})
    opts = SweepOptions(data="unused", search=search, num_samples=samples, grace_period=2, seed=5)
    root.mkdir(parents=True, exist_ok=True)
    tuner.run_tuner(opts, fixed_space(**SPACE), {}, root, Objective(), 2, print)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
