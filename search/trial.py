"""The Ray Tune trainable: one sampled config -> `tsweep.trainers.train.train`, one report per epoch.

Each report carries a checkpoint (model with optimizer state, plus the history), so a trial moved to
another node or resumed by `tsweep resume` continues from its last epoch.
"""

from __future__ import annotations

import tempfile
from contextlib import nullcontext
from typing import Any, Callable

ERROR_KEY = "tsweep_error"  # set in a trial's last report when it failed on its own (e.g. NaN loss)


def make_trainable(data_options: dict[str, Any]) -> Callable[[dict], None]:
    """A Ray Tune function trainable reading the dataset described by `data_options`.

    Args:
        data_options: keyword arguments of `tsweep.trainers.data.load_dataset` except image_size
            (data_dir as an absolute path, val_fraction, seed, cache_dir); decoded arrays come from the
            on-disk cache, so trials never decode images themselves on a node that has them.
    """

    def tsweep_trial(config: dict) -> None:
        import ray
        from ray import tune

        from tsweep.errors import SweepConfigError, TrialError
        from tsweep.trainers.checkpoint import save_checkpoint
        from tsweep.trainers.runtime import configure_tensorflow

        cpus = ray.get_runtime_context().get_assigned_resources().get("CPU")
        configure_tensorflow(cpus)

        from tsweep.trainers.data import load_dataset
        from tsweep.trainers.train import as_config, train

        cfg = as_config(config)
        data = load_dataset(image_size=cfg.image_size, **data_options)

        def report(history: list, model: Any) -> None:
            with tempfile.TemporaryDirectory(prefix="tsweep-ckpt-") as tmp:
                save_checkpoint(tmp, model, history)
                tune.report(dict(history[-1]), checkpoint=tune.Checkpoint.from_directory(tmp))

        checkpoint = tune.get_checkpoint()
        with checkpoint.as_directory() if checkpoint else nullcontext(None) as resume_dir:
            try:
                train(cfg, data, on_epoch=report, resume_from=resume_dir)
            except (TrialError, SweepConfigError) as e:
                # A failure of the config itself (NaN loss, weights missing on this node): record it and end
                # the trial; Ray's retries are for infrastructure failures (a dead node) and would repeat it.
                tune.report({ERROR_KEY: str(e)})

    return tsweep_trial
