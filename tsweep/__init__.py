"""transfer-sweep: hyperparameter sweeps of Keras transfer models on Ray Tune.

The code lives in three subpackages, mapped from the repository's top-level folders:
``tsweep.spaces`` (what may vary), ``tsweep.trainers`` (one config -> one trained model) and
``tsweep.search`` (Ray Tune wiring, CLI, results and export). ``tsweep.spaces`` imports nothing from the
other two (nor TensorFlow or Ray); the three share ``tsweep.errors`` and ``tsweep.files``.
"""

__version__ = "0.1.0"

# Run from a source checkout that is not installed (Ray's working_dir on a cluster's nodes): the subpackages
# are the checkout's top-level folders (search/, spaces/, trainers/), so look for them there too.
from pathlib import Path as _Path

_root = _Path(__file__).resolve().parent.parent
if (_root / "pyproject.toml").is_file() and (_root / "search" / "__init__.py").is_file():
    __path__.append(str(_root))  # noqa: F821 (a package's own __path__)
