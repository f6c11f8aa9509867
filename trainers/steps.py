"""A model's train and predict steps, each traced once for every batch size.

Keras's `train_on_batch` and `predict_on_batch` trace their step for the exact shape of the first batch, and
again, relaxed, for the first batch of another size: an epoch of 244 images in steps of 32 ends with a step of
20, a validation of 153 in batches of 64 with one of 25. Without a distribution strategy, `train_on_batch`
also leaves making the metric and optimizer variables to the first trace, and a tf.function whose first trace
makes variables traces again: three traces of every phase's train step. For a suffix that fine-tunes
MobileNetV2's top blocks a trace takes about a second (a first epoch of 5.2 s against 1.5 s steady).
`fit` and `predict` trace with the batch dimension unknown (their tf.data pipeline's shapes); these functions
do the same, once, and compute what those do, bit for bit (tests/test_train_steps.py).

The traced functions live as long as their model and never keep it alive (a pooled twin of
`trainers.step_pool` keeps them for the worker's next trials). Under a distribution strategy other than the
default one (several replicas), Keras's own steps are used.
"""

from __future__ import annotations

import weakref
from typing import Any, Callable

# model -> {"compiled": (optimizer, loss, metrics) traced, "functions": {batch kind: traced step}}
_TRAIN: "weakref.WeakKeyDictionary[Any, dict]" = weakref.WeakKeyDictionary()
_PREDICT: "weakref.WeakKeyDictionary[Any, Callable]" = weakref.WeakKeyDictionary()


def _spec(array: Any) -> Any:
    import tensorflow as tf

    return tf.TensorSpec((None, *array.shape[1:]), tf.as_dtype(array.dtype))


def _ref(obj: Any) -> Callable[[], Any]:
    """A weak reference to `obj`, or a callable returning None for None."""
    return (lambda: None) if obj is None else weakref.ref(obj)


def _traced(model: Any, call: Callable[[Any, tuple], Any], specs: list) -> Callable:
    """One tf.function of `call(model, batch)` for inputs of `specs`, compiled like the model's own steps. It
    holds the model weakly: the dicts here are keyed by the model, weakly, and must not keep it alive."""
    import tensorflow as tf

    owner = weakref.ref(model)

    def step(*batch: Any) -> Any:
        return call(owner(), batch)

    return tf.function(tf.autograph.experimental.do_not_convert(step), input_signature=specs,
                       jit_compile=model.jit_compile)


def _one_replica(model: Any) -> bool:
    import tensorflow as tf

    return model.distribute_strategy is tf.distribute.get_strategy() and not tf.distribute.has_strategy()


def train_function(model: Any, x: Any, y: Any, sample_weight: Any = None) -> Callable | None:
    """`model`'s train step as one traced function of (x, y[, sample_weight]) batches of any size, or None
    under a multi-replica strategy. Builds the model's metrics first, as `train_on_batch` does."""
    if not _one_replica(model):
        return None
    weighted = sample_weight is not None
    # A step traces the compile's optimizer, loss and metrics: a new compile (a new phase) needs new steps.
    compiled = (model.optimizer, model._compile_loss, model._compile_metrics)
    held = _TRAIN.get(model)
    if held is None or any(ref() is not obj for ref, obj in zip(held["compiled"], compiled)):
        held = _TRAIN[model] = {"compiled": tuple(_ref(obj) for obj in compiled), "functions": {}}
    functions = held["functions"]
    key = (weighted, str(x.dtype), tuple(x.shape[1:]), str(y.dtype))
    if key not in functions:
        # Metrics, loss and optimizer variables made now, not in the trace: a tf.function whose first trace
        # creates variables traces a second time (train_on_batch leaves that to the trace without a strategy).
        build = getattr(model, "_symbolic_build", None)  # Keras's private builder: without it, two traces
        if build is not None:
            build(data_batch=(x, y, sample_weight))

        specs = [_spec(x), _spec(y)] + ([_spec(sample_weight)] if weighted else [])
        functions[key] = _traced(model, lambda m, batch: m.train_step(batch if weighted else (*batch, None)),
                                 specs)
    return functions[key]


def predict_function(model: Any, x: Any) -> Callable | None:
    """`model`'s predict step as one traced function of batches of any size, or None under a multi-replica
    strategy."""
    if not _one_replica(model):
        return None
    function = _PREDICT.get(model)
    if function is None or function.input_signature[0] != _spec(x):
        function = _PREDICT[model] = _traced(model, lambda m, batch: m.predict_step((*batch, None, None)),
                                             [_spec(x)])
    return function


def tracing_count(model: Any) -> int:
    """How many times `model`'s step functions here were traced (tests: one phase traces each step once)."""
    functions = list(_TRAIN[model]["functions"].values()) if model in _TRAIN else []
    functions += [_PREDICT[model]] if model in _PREDICT else []
    return sum(f.experimental_get_tracing_count() for f in functions)
