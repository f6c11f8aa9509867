"""Per-process TensorFlow settings for a trial: CPU threads and GPU memory. GPU-only code stays here."""

from __future__ import annotations

import os


def configure_tensorflow(cpus: float | None = None, memory_growth: bool = True) -> None:
    """Match TensorFlow's thread pools to the CPUs Ray gave the trial and let GPU memory grow on demand.

    Must run before TensorFlow executes anything in this process; later calls are ignored (TF refuses to
    change these once initialised, e.g. in a reused worker, where they were already set).

    Args:
        cpus: CPUs assigned to the trial; None leaves TensorFlow's default (all cores).
        memory_growth: allocate GPU memory as needed, so trials sharing a GPU (fractional
            --gpus-per-trial) do not each grab all of it. Default True.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        if cpus:
            threads = max(1, int(cpus))
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
        if memory_growth:
            for gpu in tf.config.list_physical_devices("GPU"):
                tf.config.experimental.set_memory_growth(gpu, True)
    except RuntimeError:
        pass  # already initialised in this process: the first call's settings stand
