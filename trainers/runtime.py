"""Per-process TensorFlow settings for a trial (CPU threads, GPU memory, mixed precision), and a clean
slate between the trials of a reused worker (`fresh_session`, which also reaches into TensorFlow's
gradient registry).

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


def visible_gpus() -> int:
    """GPUs this process could use, from nvidia-smi (no TensorFlow import): 0 where there is none."""
    try:
        out = subprocess.run(["nvidia-smi", "--list-gpus"], capture_output=True, text=True, timeout=20, check=True)
    except (OSError, subprocess.SubprocessError):
        return 0
    return sum(1 for line in out.stdout.splitlines() if line.startswith("GPU "))


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


def fresh_session() -> None:
    """Drop what the previous trial of a reused worker left behind (Keras graphs, layers, optimizers),
    so memory levels off instead of growing trial after trial."""
    import gc
    import sys

    if "keras" in sys.modules:  # its own gc.collect would be a second full collection (~0.2 s a trial)
        sys.modules["keras"].backend.clear_session(free_memory=False)
    _forget_custom_gradients()
    gc.collect()


def _forget_custom_gradients() -> None:
    """Unregister the gradient functions TensorFlow registered for `tf.custom_gradient` calls in traced graphs.

    Keras 3's TensorFlow optimizer sums gradients with `ReplicaContext.all_reduce` (also under the default
    strategy), which is a `tf.custom_gradient`; in a traced train step that registers a function named
    "CustomGradient-<uid>" in TF's global gradient registry, and nothing ever removes it (TF 2.21). Its
    closure holds the traced train-step graph, so every trial kept its whole train function alive (graph,
    ops, cond-branch functions in the eager context): ~4.5 MB a trial on cached features, ~28 MB end to end.
    The previous trials' graphs are never differentiated again, so their entries can go; call this only
    between trials (a graph traced before it cannot be differentiated symbolically after it).
    """
    import sys

    ops = sys.modules.get("tensorflow.python.framework.ops")
    entries = getattr(getattr(ops, "_gradient_registry", None), "_registry", None)
    if isinstance(entries, dict):  # a private TF structure: do nothing if it ever changes shape
        for name in [name for name in entries if str(name).startswith("CustomGradient-")]:
            entries.pop(name, None)
