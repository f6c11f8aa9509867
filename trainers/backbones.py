"""Freezing a built backbone at one of its cut points (the cut points themselves are ``spaces.backbones``).

``freeze(base, spec, c)`` freezes every layer of ``base.layers`` up to and including the spec's boundary
``c`` and trains the rest; ``cut_index`` says where that is in a given model.

BatchNormalization: the model builder calls ``base(x, training=False)``, so BN layers run in inference mode
(frozen moving statistics) in the frozen and the fine-tuned parts alike, as in the Keras fine-tuning guide;
an unfrozen BN layer still trains its gamma and beta. Nothing here changes that.

``small_cnn`` builds the one backbone that is no ``keras.applications`` model: the classic guides' first
model, trained from scratch (the `--baseline` of a sweep).

This module imports no TensorFlow or Keras at module level: it works on the model it is given.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from tsweep.errors import SweepConfigError, out_of_range
from tsweep.spaces.backbones import BackboneSpec, get_spec

if TYPE_CHECKING:
    import keras


def boundary_indices(base: keras.Model, spec_or_name: str | BackboneSpec) -> list[int]:
    """Index in ``base.layers`` of each boundary layer of the spec, in boundary order.

    Args:
        base: a model built by build_backbone.
        spec_or_name: its BackboneSpec or backbone name.
    """
    spec = get_spec(spec_or_name)
    index = {layer.name: i for i, layer in enumerate(base.layers)}
    missing = [b for b in spec.boundaries if b not in index]
    if missing:
        raise SweepConfigError(f"model '{base.name}' has no layer {missing[0]!r}: "
                               f"is it a {spec.name} backbone built by build_backbone?")
    return [index[b] for b in spec.boundaries]


def cut_index(base: keras.Model, spec_or_name: str | BackboneSpec, cutoff: int) -> int:
    """Index of the first trainable layer of ``base.layers`` at `cutoff` (len(base.layers) at the maximum).

    Args:
        base: a model built by build_backbone.
        spec_or_name: its BackboneSpec or backbone name.
        cutoff: 0 (train everything) to spec.max_cutoff (freeze everything).
    """
    spec = get_spec(spec_or_name)
    if isinstance(cutoff, bool) or not isinstance(cutoff, int) or not 0 <= cutoff <= spec.max_cutoff:
        raise SweepConfigError(f"{out_of_range('freeze_cutoff', 0, spec.max_cutoff, cutoff)} ({spec.name} "
                               f"has {spec.max_cutoff} cut points; `tsweep backbones` lists them)")
    if cutoff == 0:
        return 0
    return boundary_indices(base, spec)[cutoff - 1] + 1


def freeze(base: keras.Model, spec_or_name: str | BackboneSpec, cutoff: int) -> int:
    """Freeze the layers of `base` up to and including boundary `cutoff`; train the rest.

    Sets ``trainable`` on every layer, so it also undoes an earlier call. BatchNormalization stays in
    inference mode either way (the builder calls the base with training=False).

    Args:
        base: a model built by build_backbone.
        spec_or_name: its BackboneSpec or backbone name.
        cutoff: 0 trains everything, spec.max_cutoff freezes everything (feature extraction).

    Returns:
        The number of frozen layers.
    """
    first_trainable = cut_index(base, spec_or_name, cutoff)
    # A model with trainable=False hides its layers' weights whatever their own flags, so reset it first.
    base.trainable = True
    for i, layer in enumerate(base.layers):
        layer.trainable = i >= first_trainable
    if first_trainable >= len(base.layers):
        base.trainable = False  # the same state, stated on the model too (summary, trainable_weights)
    return first_trainable


SMALL_CNN_FILTERS = (32, 64, 128)  # one Conv(3x3)-ReLU-MaxPool(2x2) block each, as in the Keras guides' first model


def small_cnn(image_size: int) -> keras.Model:
    """The from-scratch backbone `small_cnn`: Conv-ReLU-MaxPool blocks on inputs already scaled to [-1, 1].

    Its layers are named like the registry's boundaries (block1_conv, block1_pool, ...), so the freeze
    machinery works on it like on any backbone; the trainer never freezes it (cutoff 0).

    Args:
        image_size: S, the square input size (at least 32: three poolings halve it to S / 8).
    """
    import keras

    inputs = keras.Input((image_size, image_size, 3), name="input")
    x = inputs
    for i, filters in enumerate(SMALL_CNN_FILTERS, 1):
        x = keras.layers.Conv2D(filters, 3, padding="same", activation="relu", name=f"block{i}_conv")(x)
        x = keras.layers.MaxPooling2D(2, name=f"block{i}_pool")(x)
    return keras.Model(inputs, x, name="small_cnn")
