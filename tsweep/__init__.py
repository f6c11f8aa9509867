"""transfer-sweep: hyperparameter sweeps of Keras transfer models on Ray Tune.

The code lives in three subpackages, mapped from the repository's top-level folders:
``tsweep.spaces`` (what may vary), ``tsweep.trainers`` (one config -> one trained model) and
``tsweep.search`` (Ray Tune wiring, CLI, results and export).
"""

__version__ = "0.1.0"
