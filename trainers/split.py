"""Split a transfer model at a freeze cutoff into a frozen prefix and a trainable suffix sharing its layers.

A model from ``trainers.model.build_model`` is the linear chain
``image -> [augmentation] -> preprocess -> backbone -> pool -> [hidden] -> [dropout] -> probabilities``, with
the backbone a nested functional model (layer "backbone"). Cutting it at boundary ``cutoff`` (the layer
``BackboneSpec.boundaries[cutoff - 1]``, see ``spaces.backbones``) gives

* ``prefix``: image -> preprocess -> the backbone's layers up to and including the boundary. Augmentation
  layers are left out: the prefix is meant for inference (cached features), where they are the identity.
* ``suffix``: an input shaped like the boundary activation -> the backbone's later layers -> pool -> head.

Both are new ``keras.Model`` objects around the SAME layer objects (no copies, no new weights): training
the suffix trains the full model, which can be saved and exported unchanged afterwards.

How it is built: Keras 3 (checked on 3.15) builds a functional model from an intermediate symbolic
tensor: ``keras.Model(boundary_layer.output, backbone.output)`` clones the graph nodes between the two onto
a fresh ``Input`` (``keras.src.models.functional.clone_graph_nodes``) and rejects the cut with "Graph
disconnected" when some later layer also reads an earlier tensor (a residual or concatenation crossing
the boundary). That check is what makes a cut "clean"; ``split_model`` turns it into a ValueError naming
the boundary. The outer layers (pool, head) are re-called on the new tensors, which only adds call nodes
to them. The ``training=False`` of the backbone call is kept, as in ``build_model``.

Cutoff 0 freezes nothing, so there is no prefix: ``split_model`` raises ValueError for it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tsweep.spaces.backbones import get_spec
from tsweep.trainers.backbones import cut_index
from tsweep.trainers.model import BACKBONE_LAYER

if TYPE_CHECKING:
    import keras

    from tsweep.spaces.config import TrialConfig

POOL_LAYER = "pool"
PREPROCESS_LAYER = "preprocess"


def outer_chain(model: keras.Model) -> list:
    """The layers of `model` after its input, in call order; ValueError unless it is a build_model chain."""
    import keras

    layers = [layer for layer in model.layers if not isinstance(layer, keras.layers.InputLayer)]
    names = [layer.name for layer in layers]
    for needed in (PREPROCESS_LAYER, BACKBONE_LAYER, POOL_LAYER):
        if needed not in names:
            raise ValueError(f"model '{model.name}' has no layer '{needed}': split_model needs a model built "
                             "by tsweep.trainers.model.build_model")
    if not names.index(PREPROCESS_LAYER) < names.index(BACKBONE_LAYER) < names.index(POOL_LAYER):
        raise ValueError(f"model '{model.name}': layers out of order ({', '.join(names)})")
    return layers


def boundary_layer(model: keras.Model, config: TrialConfig, cutoff: int) -> keras.layers.Layer:
    """The backbone layer ending block `cutoff` (1 to max_cutoff) of `model`."""
    spec = get_spec(config.backbone)
    base = model.get_layer(BACKBONE_LAYER)
    cut_index(base, spec, cutoff)  # validates the range and the layer names (SweepConfigError)
    if cutoff == 0:
        raise ValueError("freeze cutoff 0 freezes nothing: there is no frozen prefix to split off "
                         "(train such a config end to end)")
    return base.get_layer(spec.boundaries[cutoff - 1])


def split_model(model: keras.Model, config: TrialConfig, cutoff: int, *,
                pooled: bool = False) -> tuple[keras.Model, keras.Model]:
    """(prefix, suffix) of `model` cut after boundary `cutoff`, sharing the model's layers and weights.

    ``suffix(prefix(x))`` equals ``model(x)`` in inference (up to float rounding; augmentation aside).

    Args:
        model: a model built by ``trainers.model.build_model`` for `config` (or loaded from its checkpoint).
        config: its TrialConfig (gives the backbone and so the boundaries).
        cutoff: 1 to the backbone's max_cutoff; at max_cutoff the prefix is the whole backbone.
        pooled: only at max_cutoff: put the (weightless) global pooling in the prefix too, so the prefix
            outputs (N, C) pooled features and the suffix is the head alone. Default False.

    Raises:
        ValueError: cutoff 0 (nothing frozen), `pooled` below max_cutoff, a model not built by
            build_model, or a boundary that is not a clean cut of the backbone graph.
        SweepConfigError: cutoff out of range for the backbone.
    """
    import keras

    spec = get_spec(config.backbone)
    layers = outer_chain(model)
    boundary = boundary_layer(model, config, cutoff)
    base = model.get_layer(BACKBONE_LAYER)
    whole = cutoff == spec.max_cutoff
    if pooled and not whole:
        raise ValueError(f"pooled=True needs the whole backbone in the prefix (cutoff {spec.max_cutoff}), "
                         f"got cutoff {cutoff}")
    names = [layer.name for layer in layers]
    after = layers[names.index(BACKBONE_LAYER) + 1:]
    if pooled:
        after = after[1:]  # the pool moves into the prefix

    if whole:
        inner_prefix = inner_suffix = None
    else:
        inner_prefix = keras.Model(base.inputs, boundary.output, name=f"{BACKBONE_LAYER}_prefix")
        try:
            inner_suffix = keras.Model(boundary.output, base.output, name=f"{BACKBONE_LAYER}_suffix")
        except ValueError as e:
            raise ValueError(f"{spec.name}: boundary {boundary.name!r} (cutoff {cutoff}) is not a clean cut: a "
                             f"later layer reads an earlier tensor past it ({str(e)[:300]})") from e

    image = keras.Input(model.inputs[0].shape[1:], dtype=model.inputs[0].dtype, name="image")
    x = model.get_layer(PREPROCESS_LAYER)(image)
    x = (base if whole else inner_prefix)(x, training=False)
    if pooled:
        x = model.get_layer(POOL_LAYER)(x)
    prefix = keras.Model(image, x, name=f"{model.name}_prefix{cutoff}")

    features = keras.Input(x.shape[1:], dtype=x.dtype, name="features")
    y = features if whole else inner_suffix(features, training=False)
    for layer in after:
        y = layer(y)
    suffix = keras.Model(features, y, name=f"{model.name}_suffix{cutoff}")
    return prefix, suffix


def bridge_model(model: keras.Model, config: TrialConfig, lo: int, hi: int, *,
                 pooled: bool = False) -> keras.Model:
    """The backbone's layers after boundary `lo` up to boundary `hi`: `lo`'s activations in, `hi`'s out.

    ``bridge(prefix_lo(x))`` equals ``prefix_hi(x)`` (up to float rounding), so activations cached at a
    shallower cutoff give those of a deeper one without the images going through the blocks below `lo`
    again. Shares the model's layers, like `split_model`.

    Args:
        model: a model built by ``trainers.model.build_model`` for `config`.
        config: its TrialConfig.
        lo: the shallower cutoff, 1 to max_cutoff - 1 (a clean cut).
        hi: the deeper cutoff, lo + 1 to max_cutoff.
        pooled: only at hi = max_cutoff: end with the global pooling, as `split_model(pooled=True)`'s prefix.

    Raises:
        ValueError: lo >= hi, `pooled` below max_cutoff, or a cut that is not clean.
    """
    import keras

    spec = get_spec(config.backbone)
    if not 0 < lo < hi:
        raise ValueError(f"bridge_model needs 0 < lo < hi, got lo {lo} and hi {hi}")
    if pooled and hi != spec.max_cutoff:
        raise ValueError(f"pooled=True needs hi = {spec.max_cutoff} (the whole backbone), got {hi}")
    start, end = boundary_layer(model, config, lo), boundary_layer(model, config, hi)
    try:
        inner = keras.Model(start.output, end.output, name=f"{BACKBONE_LAYER}_{lo}_to_{hi}")
    except ValueError as e:
        raise ValueError(f"{spec.name}: boundary {start.name!r} (cutoff {lo}) is not a clean cut ({str(e)[:300]})") \
            from e
    features = keras.Input(start.output.shape[1:], dtype=start.output.dtype, name="features")
    y = inner(features, training=False)
    if pooled:
        y = model.get_layer(POOL_LAYER)(y)
    return keras.Model(features, y, name=f"{model.name}_bridge{lo}_{hi}")
