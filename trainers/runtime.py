"""Per-process TensorFlow settings for a trial: CPU threads, GPU memory, mixed precision.

All GPU-only code of tsweep is in this file. Ray assigns GPUs by setting CUDA_VISIBLE_DEVICES for each
trial's process, so TensorFlow here only ever sees the GPUs this trial was given.
"""

from __future__ import annotations

import os
import subprocess


def gpu_memory_limit_mb(gpu_fraction: float, total_mb: int | None) -> int | None:
    """Memory a trial may take on a shared GPU: its fraction of the card, minus 5% headroom for the
    CUDA context; None (use memory growth instead) for a whole GPU or when the card's size is unknown."""
    if not total_mb or not 0 < gpu_fraction < 1:
        return None
    return int(total_mb * gpu_fraction * 0.95)


def gpu_total_memory_mb() -> int | None:
    """Total memory of the first visible GPU from nvidia-smi, or None where there is none."""
    try:
        out = subprocess.run(["nvidia-smi", "--query-gpu=memory.total", "--format=csv,noheader,nounits"],
                             capture_output=True, text=True, timeout=20, check=True).stdout
        return int(out.split()[0])
    except (OSError, subprocess.SubprocessError, ValueError, IndexError):
        return None


def configure_tensorflow(cpus: float | None = None, gpu_fraction: float = 0.0,
                         mixed_precision: bool = False) -> None:
    """Match TensorFlow to the resources Ray gave the trial.

    Must run before TensorFlow executes anything in this process; later calls are ignored (TF refuses to
    change these once initialised, e.g. in a reused worker, where they were already set).

    Args:
        cpus: CPUs assigned to the trial; None leaves TensorFlow's default (all cores).
        gpu_fraction: the trial's share of its GPU (Ray's `--gpus-per-trial`). Below 1, TensorFlow gets a
            memory limit of that share, so trials sharing a card cannot starve each other; a whole GPU
            (or more) uses memory growth instead of grabbing all memory up front. Default 0.
        mixed_precision: compute in float16 on GPUs (the output layer stays float32). Default False.
    """
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import tensorflow as tf

    try:
        if cpus:
            threads = max(1, int(cpus))
            tf.config.threading.set_intra_op_parallelism_threads(threads)
            tf.config.threading.set_inter_op_parallelism_threads(max(1, min(2, threads)))
        gpus = tf.config.list_physical_devices("GPU")
        limit = gpu_memory_limit_mb(gpu_fraction, gpu_total_memory_mb() if gpus else None)
        for gpu in gpus:
            if limit:
                tf.config.set_logical_device_configuration(
                    gpu, [tf.config.LogicalDeviceConfiguration(memory_limit=limit)])
            else:
                tf.config.experimental.set_memory_growth(gpu, True)
        if mixed_precision and gpus:
            import keras

            keras.mixed_precision.set_global_policy("mixed_float16")
    except RuntimeError:
        pass  # already initialised in this process: the first call's settings stand
