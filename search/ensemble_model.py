"""One Keras model of Keras's own layers for an ensemble of trained tsweep models, and flip test-time
augmentation; both export to every format like a single model (raw pixels in, probabilities out).

Sharing the frozen prefix: a layer below a member's freeze cutoff never trains (its BatchNorm statistics
included, see trainers.model.set_cutoff), so members with the same backbone, width, weights and image size
whose frozen layers hold the same numbers compute the same activations there. They form a trunk: the images
are preprocessed once, run through the blocks below the lowest cutoff once, then through each further block
range (trainers.split.bridge_model) once, and each member's own suffix (trainers.split.split_model) starts
from the activations at its cutoff. A trunk of members at cutoffs 10, 13 and 17 costs one backbone pass plus
the members' trained blocks and heads. The weights are compared, not assumed: random-init members (`weights:
none`) differ and get trunks of their own. A member at cutoff 0 (nothing frozen) and members at another image
size each get their own path; an input size other than a member's is resized inside the model (Keras
`Resizing`, bilinear). The members' outputs are averaged with their selection weights (`keras.layers.Average`
over the outputs, a member picked twice given twice).

Flip TTA: the average of the model on the image and on its horizontal mirror. The mirror is a frozen Dense on
the width axis whose kernel is the reversal permutation (products by 0 and 1 are exact), between two Permutes:
built-in layers and operations only, so LiteRT and ONNX convert it and Keras loads it with safe_mode.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np


@dataclass(frozen=True)
class Member:
    """One ensemble member.

    Args:
        model: its trained model (trainers.model.build_model, e.g. loaded from its checkpoint).
        config: its TrialConfig.
        weight: how many times the selection picked it.
        name: what to call its path in the exported model ("member0", ...).
    """

    model: Any
    config: Any
    weight: int = 1
    name: str = "member"


def _compile_like(model: Any, units: int) -> None:
    """Frozen (an export is for inference) and compiled with the loss and accuracy, so `evaluate` works on it;
    the optimizer built on no variables, so the saved file holds no slots and loads without warnings."""
    model.trainable = False
    model.compile(loss="binary_crossentropy" if units == 1 else "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.optimizer.build(model.trainable_variables)


def mirror_model(size: int, name: str = "mirror") -> Any:
    """(N, size, size, 3) -> the same images mirrored left-right, in Keras's own layers (exact)."""
    import keras

    image = keras.Input((size, size, 3), name="image")
    x = keras.layers.Permute((1, 3, 2), name="width_last")(image)  # (H, C, W): Dense acts on the width
    flip = keras.layers.Dense(size, use_bias=False, trainable=False, name="reverse_width")
    x = flip(x)
    flip.set_weights([np.ascontiguousarray(np.eye(size, dtype="float32")[::-1])])
    x = keras.layers.Permute((1, 3, 2), name="width_back")(x)
    return keras.Model(image, x, name=name)


def uncompiled(model: Any, name: str | None = None) -> Any:
    """A functional model over `model`'s own graph (the same layers) with no optimizer: nested in an export,
    a compiled model would save its optimizer's slots, which no longer fit once the export is frozen."""
    import keras

    return keras.Model(model.inputs[0], model.outputs[0], name=name or model.name)


def with_flip_tta(model: Any, name: str | None = None) -> Any:
    """The mean of `model` (a portable model, square input) on the image and on its horizontal mirror."""
    import keras

    size = int(model.inputs[0].shape[1])
    model = uncompiled(model)
    image = keras.Input((size, size, 3), name="image")
    outputs = [model(image), model(mirror_model(size)(image))]
    tta = keras.Model(image, keras.layers.Average(name="tta_flip")(outputs), name=name or f"{model.name}_tta")
    _compile_like(tta, int(tta.outputs[0].shape[-1]))
    return tta


def _prefix_weights(member: Member, cutoff: int) -> list[np.ndarray]:
    from tsweep.trainers.split import split_model

    return split_model(member.model, member.config, cutoff)[0].get_weights()


def _same(a: list[np.ndarray], b: list[np.ndarray]) -> bool:
    return len(a) == len(b) and all(x.shape == y.shape and np.array_equal(x, y) for x, y in zip(a, b))


def trunks(members: Sequence[Member]) -> list[list[int]]:
    """Indices of `members` grouped into trunks that share their frozen prefix; a trunk's first index is its
    owner, the member with the deepest cutoff, whose frozen layers the trunk computes. Members at cutoff 0
    are trunks of their own (with nothing to share)."""
    order = sorted(range(len(members)), key=lambda i: (-members[i].config.cutoff(), i))
    groups: list[list[int]] = []
    for i in order:
        m = members[i]
        key = (m.config.backbone, m.config.alpha, m.config.weights, m.config.image_size)
        cutoff = m.config.cutoff()
        for group in groups:
            owner = members[group[0]]
            okey = (owner.config.backbone, owner.config.alpha, owner.config.weights, owner.config.image_size)
            if cutoff and okey == key and owner.config.cutoff() and \
                    _same(_prefix_weights(owner, cutoff), _prefix_weights(m, cutoff)):
                group.append(i)
                break
        else:
            groups.append([i])
    return groups


def _wrap(layer: Any, shape: tuple, name: str) -> Any:
    """A functional model of its own around `layer` (so paths stay uniquely named), called in inference mode."""
    import keras

    x = keras.Input(shape, name=f"{name}_in")
    return keras.Model(x, layer(x, training=False), name=name)


def _trunk_outputs(members: Sequence[Member], group: list[int], x: Any, tag: str) -> dict[int, Any]:
    """Each member's output tensor for a trunk whose input `x` holds raw pixels at the members' size."""
    from tsweep.search.formats import portable_model
    from tsweep.trainers.layers import builtin_preprocess
    from tsweep.trainers.model import BACKBONE_LAYER
    from tsweep.trainers.split import PREPROCESS_LAYER, bridge_model, split_model

    owner = members[group[0]]
    if owner.config.cutoff() == 0:  # nothing frozen: the member's whole portable model
        return {group[0]: uncompiled(portable_model(owner.model), owner.name)(x)}
    spec_mode = owner.model.get_layer(PREPROCESS_LAYER).mode
    a = builtin_preprocess(spec_mode, name=f"{tag}_preprocess")(x)
    cutoffs = sorted({members[i].config.cutoff() for i in group})
    prefix = split_model(owner.model, owner.config, cutoffs[0])[0]
    inner = prefix.get_layer(f"{BACKBONE_LAYER}_prefix" if f"{BACKBONE_LAYER}_prefix" in
                             [layer.name for layer in prefix.layers] else BACKBONE_LAYER)
    activations = {cutoffs[0]: _wrap(inner, tuple(a.shape[1:]), f"{tag}_to{cutoffs[0]}")(a)}
    for lo, hi in zip(cutoffs, cutoffs[1:]):
        bridge = bridge_model(owner.model, owner.config, lo, hi)
        bridge.name = f"{tag}_{lo}to{hi}"
        activations[hi] = bridge(activations[lo])
    outputs = {}
    for i in group:
        m = members[i]
        suffix = split_model(m.model, m.config, m.config.cutoff())[1]
        suffix.name = m.name
        outputs[i] = suffix(activations[m.config.cutoff()])
    return outputs


def ensemble_model(members: Sequence[Member], name: str = "tsweep_ensemble") -> Any:
    """The weighted average of `members`' probabilities as one model of Keras's own layers, sharing frozen
    prefixes (see the module docstring); input: raw RGB pixels at the largest member's image size.

    Args:
        members: the members, each with a distinct `name`; their outputs must have one shape.

    Returns the compiled (loss and accuracy) model.
    """
    import keras

    size = max(int(m.config.image_size) for m in members)
    image = keras.Input((size, size, 3), name="image")
    resized: dict[int, Any] = {size: image}
    outputs: dict[int, Any] = {}
    for t, group in enumerate(trunks(members)):
        s = int(members[group[0]].config.image_size)
        if s not in resized:
            resized[s] = keras.layers.Resizing(s, s, interpolation="bilinear", name=f"resize{s}")(image)
        outputs.update(_trunk_outputs(members, group, resized[s], f"trunk{t}"))
    listed = [outputs[i] for i, m in enumerate(members) for _ in range(m.weight)]
    out = listed[0] if len(listed) == 1 else keras.layers.Average(name="average")(listed)
    model = keras.Model(image, out, name=name)
    _compile_like(model, int(out.shape[-1]))
    return model


def member_mean(members: Sequence[Member], images: np.ndarray) -> np.ndarray:
    """The weighted mean of the members' own model outputs on a few `images` (resized to each member's size):
    what `ensemble_model` must compute. Through `predict` (graph mode), as the ensemble is run: eager kernels
    round differently (measured here: up to 2e-4 in probability between a model's eager call and its
    `predict` on a random-init MobileNetV2)."""
    import keras

    total, count = None, 0
    for m in members:
        s = int(m.config.image_size)
        x = images if images.shape[1] == s else keras.ops.convert_to_numpy(
            keras.layers.Resizing(s, s, interpolation="bilinear")(images))
        out = m.model.predict(np.asarray(x, dtype="float32"), verbose=0).astype("float64")
        total = out * m.weight if total is None else total + out * m.weight
        count += m.weight
    return total / count
