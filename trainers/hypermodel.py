"""The transfer model as a `keras_tuner.HyperModel`, so a tsweep space also runs under KerasTuner's tuners.

`to_keras_tuner` declares a space's keys on KerasTuner's HyperParameters; `build` samples a config from
the space through them; `fit` follows the same warm-up-then-fine-tune recipe as
`tsweep.trainers.train.train`.
"""

from __future__ import annotations

from typing import Any

import keras_tuner

from tsweep.spaces.config import TrialConfig
from tsweep.spaces.space import Space
from tsweep.trainers.model import build_model, compile_model, set_cutoff


def to_keras_tuner(space: Space, hp: keras_tuner.HyperParameters) -> dict[str, Any]:
    """Declare every key of `space` on `hp` and return the config dict it yields."""
    out: dict[str, Any] = {}
    for key, d in space.params.items():
        if d.kind == "choice":
            out[key] = hp.Choice(key, list(d.values))
        elif d.kind in ("uniform", "loguniform"):
            out[key] = hp.Float(key, d.values[0], d.values[1],
                                sampling="log" if d.kind == "loguniform" else "linear")
        elif d.kind == "randint":
            out[key] = hp.Int(key, d.values[0], d.values[1])
        else:
            out[key] = hp.Fixed(key, d.values[0])
    return out


class TransferHyperModel(keras_tuner.HyperModel):
    """Args:
        space: the tsweep Space to sample from.
        num_classes: classes of the dataset (2 = sigmoid output).
    """

    def __init__(self, space: Space, num_classes: int, **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.space = space
        self.num_classes = num_classes

    def config(self, hp: keras_tuner.HyperParameters) -> TrialConfig:
        return TrialConfig.from_dict(to_keras_tuner(self.space, hp), self.space.source)

    def build(self, hp: keras_tuner.HyperParameters) -> Any:
        cfg = self.config(hp)
        model = build_model(cfg, self.num_classes)  # fully frozen: the warm-up state
        compile_model(model, cfg, self.num_classes, warmup=not cfg.is_feature_extraction())
        return model

    def fit(self, hp: keras_tuner.HyperParameters, model: Any, *args: Any, epochs: int = 1,
            initial_epoch: int = 0, **kwargs: Any) -> Any:
        cfg = self.config(hp)
        y = kwargs.get("y", args[1] if len(args) > 1 else None)
        if cfg.class_weight == "balanced" and y is not None and "class_weight" not in kwargs:
            from tsweep.trainers.metrics import class_weights

            kwargs["class_weight"] = class_weights(y)
        no_warmup = cfg.is_feature_extraction() or cfg.from_scratch()
        warm = 0 if no_warmup else max(0, min(cfg.warmup_epochs, epochs) - initial_epoch)
        first = None
        if warm:
            first = model.fit(*args, epochs=initial_epoch + warm, initial_epoch=initial_epoch, **kwargs)
        if initial_epoch + warm >= epochs:
            return first
        if not cfg.is_feature_extraction():
            set_cutoff(model, cfg, cfg.cutoff())
            compile_model(model, cfg, self.num_classes, warmup=False)
        history = model.fit(*args, epochs=epochs, initial_epoch=initial_epoch + warm, **kwargs)
        if first is not None:  # KerasTuner scores the whole run: hand it every epoch
            history.history = {k: first.history.get(k, []) + v for k, v in history.history.items()}
        return history


