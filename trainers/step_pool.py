"""Compiled training steps reused across the trials of a worker (`reuse_steps`).

Keras traces a model's train and predict steps (`tf.function`) the first time it fits or predicts: 0.5-0.9 s
for a head on cached features here, more for a fine-tuning suffix, against 0.12-0.2 s for a whole cached
epoch after it. Every trial builds new models, so every phase of every trial paid that trace again. Within
`reuse_steps`, a cached stage (`trainers.stages.Cached`) trains a pooled twin of its suffix instead: a clone
compiled once per structure (the suffix's layers, their trainable flags, the optimizer's class and settings
but its learning rate, the loss), whose Dropout rates live in variables. The trial's weights, Dropout seed
states and optimizer state are copied into the twin when the phase starts and back after every epoch
(`Binding.load` / `Binding.store`), so checkpoints, validation and the export see the trial's own model,
and the losses and weights are those of training the suffix itself, up to float rounding
(tests/test_step_pool.py). The learning rate is already a variable of a Keras optimizer; a Dropout rate is a
Python float baked into the trace, hence `RateDropout`, which only the twin uses (exports keep Keras's
Dropout).

A worker runs one trial at a time (`search.trial`), so one twin per structure is enough; the pool keeps a few
(LRU), each holding its weights, optimizer slots and traced steps.
"""

from __future__ import annotations

import json
import re
from collections import OrderedDict
from contextlib import contextmanager
from typing import Any, Iterator

import keras

MAX_TWINS = 8  # a fine-tuning twin of MobileNetV2's top blocks holds ~25 MB (weights + Adam slots)
_POOL: OrderedDict[str, "Twin"] = OrderedDict()
_REUSE = False
_AUTO_NAME = re.compile(r"keras_tensor_\d+(CLONE)*")
STATS = {"made": 0, "reused": 0}  # twins made and phases that reused one, in this process (benchmarks, tests)


class RateDropout(keras.layers.Layer):
    """`keras.layers.Dropout` with its rate in a variable, so one traced step serves every rate.

    The same outputs as Dropout for the same seed state and rate, bit for bit: the seed draw of Keras's
    TensorFlow backend (keras 3.15) and the ops of `tf.nn.experimental.stateless_dropout` for a Python rate,
    whose scale 1 / (1 - rate) is computed in float64 (`set_rate`), not in the graph.
    """

    def __init__(self, seed: int | None = None, **kwargs) -> None:
        super().__init__(**kwargs)
        self.seed_generator = keras.random.SeedGenerator(seed)
        self.rate = self.add_weight(shape=(), initializer="zeros", trainable=False, name="rate")
        self.scale = self.add_weight(shape=(), initializer="ones", trainable=False, name="scale")

    def set_rate(self, rate: float) -> None:
        self.rate.assign(rate)
        self.scale.assign(1 / (1 - float(rate)))

    def call(self, inputs, training=False):
        if not training:
            return inputs
        import tensorflow as tf
        from keras.src.backend.tensorflow.random import _cast_seed, _get_concrete_noise_shape, draw_seed
        from tensorflow.python.ops import stateless_random_ops

        seed = _cast_seed(draw_seed(self.seed_generator))
        shape = _get_concrete_noise_shape(inputs, None)
        noise = stateless_random_ops.stateless_random_uniform(shape=shape, dtype=inputs.dtype, seed=seed, alg=None)
        kept = noise >= tf.cast(self.rate, inputs.dtype)
        return tf.where(kept, inputs * tf.cast(self.scale, inputs.dtype), tf.zeros((), inputs.dtype))

    def compute_output_shape(self, input_shape):
        return input_shape


class Twin:
    """A compiled clone of a suffix: `model` (Dropout replaced by RateDropout, with its optimizer) and `layers`,
    (index in the suffix's `layers`, clone of that layer) for every layer cloned, so any suffix of the same
    structure pairs with it (`pairs`)."""

    def __init__(self, model: keras.Model, layers: list[tuple[int, Any]]) -> None:
        self.model, self.layers = model, layers

    def pairs(self, suffix: keras.Model) -> list[tuple[Any, Any]]:
        """(layer of `suffix`, its clone) for every cloned layer."""
        return [(suffix.layers[index], clone) for index, clone in self.layers]


class Binding:
    """One phase's use of a Twin for a suffix: `trainer` is what `fit` trains; `load` before the phase's first
    epoch, `store` after each epoch."""

    def __init__(self, twin: Twin, suffix: keras.Model) -> None:
        self.twin, self.suffix, self.trainer = twin, suffix, twin.model
        self.pairs = twin.pairs(suffix)
        self._variables = [(mine, theirs) for ours, clone in self.pairs
                           for mine, theirs in zip(ours.variables, _state(clone))]
        self._slots = list(zip(suffix.optimizer.variables, twin.model.optimizer.variables))

    def load(self) -> None:
        for ours, clone in self.pairs:
            if isinstance(clone, RateDropout):
                clone.set_rate(ours.rate)
        for mine, theirs in self._variables + self._slots:
            theirs.assign(mine)

    def store(self) -> None:
        for mine, theirs in self._variables + self._slots:
            mine.assign(theirs)


@contextmanager
def reuse_steps() -> Iterator[None]:
    """Within this block, `bind` hands cached stages a pooled twin of their suffix (see the module doc).
    For a worker running one trial at a time; outside it, every stage trains its own suffix."""
    global _REUSE
    before, _REUSE = _REUSE, True
    try:
        yield
    finally:
        _REUSE = before


def forget_steps() -> None:
    """Drop every pooled twin (tests; a worker keeps them for its next trials)."""
    _POOL.clear()


def bind(suffix: keras.Model) -> Binding | None:
    """A Binding of `suffix` (compiled, its optimizer built or not) to the pooled twin of its structure, loaded;
    None outside `reuse_steps`, under a mixed-precision policy, or when the suffix cannot be twinned (then it
    trains itself, as before)."""
    if not _REUSE or keras.config.dtype_policy().name != "float32":
        return None
    optimizer = suffix.optimizer
    if not optimizer.built:
        optimizer.build(suffix.trainable_variables)
    key = signature(suffix)
    twin, made = _POOL.get(key), False
    if twin is None:
        twin, made = _make_twin(suffix), True
        if twin is None:
            return None
        while len(_POOL) >= MAX_TWINS:
            _POOL.popitem(last=False)
        _POOL[key] = twin
    _POOL.move_to_end(key)
    binding = Binding(twin, suffix)
    if not _fits(binding):
        del _POOL[key]
        return None
    STATS["made" if made else "reused"] += 1
    binding.load()
    return binding


def signature(suffix: keras.Model) -> str:
    """What a traced step depends on besides variables: the suffix's architecture with Dropout rates and seeds
    left out (they are copied in), its input, the optimizer's class and settings but the learning rate, the loss."""
    optimizer = suffix.optimizer
    settings = {k: v for k, v in optimizer.get_config().items() if k not in ("learning_rate", "name")}
    parts = {"model": _without_rates(suffix.get_config()), "optimizer": [type(optimizer).__name__, settings],
             "loss": str(suffix.loss), "input": [str(suffix.inputs[0].shape), str(suffix.inputs[0].dtype)]}
    text = json.dumps(parts, sort_keys=True, default=str)
    # Keras numbers the symbolic tensors it makes per process (the suffix's input is "keras_tensor_667CLONE"
    # in one trial, "..._834CLONE" in the next): number them by first appearance instead, which keeps the wiring.
    seen: dict[str, str] = {}
    return _AUTO_NAME.sub(lambda m: seen.setdefault(m.group(0), f"keras_tensor#{len(seen)}"), text)


def _without_rates(config: Any) -> Any:
    if isinstance(config, dict):
        if config.get("class_name") == "Dropout" and isinstance(config.get("config"), dict):
            inner = {k: v for k, v in config["config"].items() if k not in ("rate", "seed")}
            return {**config, "config": inner}
        return {k: _without_rates(v) for k, v in config.items()}
    if isinstance(config, list):
        return [_without_rates(v) for v in config]
    return config


def _make_twin(suffix: keras.Model) -> Twin | None:
    pairs: list[tuple[int, Any]] = []
    index = {id(layer): i for i, layer in enumerate(suffix.layers)}

    def clone(layer: Any) -> Any:
        if isinstance(layer, keras.layers.Dropout):
            if layer.noise_shape is not None:
                raise _Untwinnable
            twin = RateDropout(name=layer.name)
        else:
            twin = layer.__class__.from_config(layer.get_config())
        if id(layer) not in index:  # clone_model visits the suffix's own layers only (recursive=False)
            raise _Untwinnable
        pairs.append((index[id(layer)], twin))
        return twin

    try:
        model = keras.models.clone_model(suffix, clone_function=clone)
    except _Untwinnable:
        return None
    optimizer = type(suffix.optimizer).from_config(suffix.optimizer.get_config())
    model.compile(optimizer=optimizer, loss=suffix.loss, metrics=["accuracy"])
    optimizer.build(model.trainable_variables)
    return Twin(model, pairs)


def _fits(binding: Binding) -> bool:
    """The twin's variables and optimizer slots pair one to one, in shape, with the suffix's (slots are made in
    trainable-variable order, so that order must match too)."""
    suffix, twin = binding.suffix, binding.trainer
    pairs = binding._variables
    if any(type(ours) is not type(clone) and not isinstance(clone, RateDropout) for ours, clone in binding.pairs):
        return False
    if len(pairs) != sum(len(layer.variables) for layer, _ in binding.pairs) \
            or len(pairs) != sum(len(_state(clone)) for _, clone in binding.pairs):
        return False
    if [tuple(v.shape) for v in suffix.trainable_variables] != [tuple(v.shape) for v in twin.trainable_variables]:
        return False
    slots = binding._slots
    return (len(slots) == len(suffix.optimizer.variables) == len(twin.optimizer.variables)
            and all(tuple(a.shape) == tuple(b.shape) for a, b in slots + pairs))


def _state(layer: Any) -> list:
    """A clone layer's variables but RateDropout's rate and scale: what pairs with the suffix layer's `variables`."""
    if isinstance(layer, RateDropout):
        return [v for v in layer.variables if v is not layer.rate and v is not layer.scale]
    return list(layer.variables)


class _Untwinnable(Exception):
    pass
