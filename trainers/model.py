"""Build one transfer model from a TrialConfig: pretrained backbone + pooling + optional hidden layer + output.

The model takes raw RGB pixels in [0, 255]; augmentation and the backbone's own preprocessing are layers
inside it, so an exported model needs no Python preprocessing and loads with Keras ``safe_mode``.
"""

from __future__ import annotations

from typing import Any

import keras

from tsweep.spaces.backbones import get_spec
from tsweep.spaces.config import TrialConfig
from tsweep.trainers.backbones import freeze
from tsweep.trainers.layers import Preprocess
from tsweep.trainers.pretrained import build_backbone

BACKBONE_LAYER = "backbone"


def augmentation_layers(kind: str, seed: int) -> list[keras.layers.Layer]:
    """The Keras preprocessing layers of an augmentation level; active in training only.

    Args:
        kind: "none", "light" (flips, small rotation and zoom) or "strong" (plus shifts and contrast).
        seed: makes each trial's augmentation reproducible.
    """
    if kind == "none":
        return []
    if kind == "light":
        return [keras.layers.RandomFlip("horizontal", seed=seed),
                keras.layers.RandomRotation(0.05, seed=seed + 1),
                keras.layers.RandomZoom(0.1, seed=seed + 2)]
    return [keras.layers.RandomFlip("horizontal", seed=seed),
            keras.layers.RandomRotation(0.15, seed=seed + 1),
            keras.layers.RandomZoom(0.2, seed=seed + 2),
            keras.layers.RandomTranslation(0.1, 0.1, seed=seed + 3),
            keras.layers.RandomContrast(0.2, seed=seed + 4)]


def build_model(config: TrialConfig, num_classes: int) -> keras.Model:
    """The uncompiled transfer model for `config`, backbone fully frozen (the warm-up state).

    Args:
        config: a validated TrialConfig.
        num_classes: 2 gives one sigmoid unit; more give a softmax.
    """
    keras.utils.set_random_seed(config.seed)
    spec = get_spec(config.backbone)
    size = config.image_size
    inputs = keras.Input((size, size, 3), name="image")
    x = inputs
    for layer in augmentation_layers(config.augmentation, config.seed):
        x = layer(x)
    x = Preprocess(spec.preprocess, name="preprocess")(x)
    base = build_backbone(spec.name, size, weights=config.weights, alpha=config.alpha)
    base.name = BACKBONE_LAYER
    # Seeded again: the head's initial weights must not depend on how many random draws the backbone took (a
    # reused worker's backbone, `pretrained.reuse_backbones`, takes none).
    keras.utils.set_random_seed(config.seed + 1)
    # BatchNormalization must stay in inference mode even once layers are unfrozen: updating its statistics
    # on a small dataset would wreck what the pretrained layers learned. training=False says so (the classic
    # recipe); set_cutoff also keeps BN layers frozen, which is what makes Keras 3 honour it inside fit.
    x = base(x, training=False)
    x = keras.layers.GlobalAveragePooling2D(name="pool")(x)
    if config.head_size:
        x = keras.layers.Dense(config.head_size, activation="relu", name="hidden")(x)
    if config.dropout:
        x = keras.layers.Dropout(config.dropout, seed=config.seed, name="dropout")(x)
    if num_classes == 2:
        outputs = keras.layers.Dense(1, activation="sigmoid", name="probabilities", dtype="float32")(x)
    else:
        outputs = keras.layers.Dense(num_classes, activation="softmax", name="probabilities",
                                     dtype="float32")(x)  # float32 even under mixed precision
    model = keras.Model(inputs, outputs, name=f"tsweep_{spec.name}")
    set_cutoff(model, config, spec.max_cutoff)
    return model


def backbone_of(model: keras.Model) -> keras.Model:
    return model.get_layer(BACKBONE_LAYER)


def set_cutoff(model: keras.Model, config: TrialConfig, cutoff: int) -> int:
    """Freeze the backbone below block boundary `cutoff` (max = all frozen); returns frozen layer count.

    BatchNormalization layers stay frozen above the cutoff too: in Keras 3 a frozen BN layer runs in
    inference mode, while `base(x, training=False)` alone is overridden by `fit`'s training=True.
    """
    base = backbone_of(model)
    frozen = freeze(base, config.backbone, cutoff)
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    return frozen


def make_optimizer(config: TrialConfig, warmup: bool = False) -> keras.optimizers.Optimizer:
    """The sampled optimizer at the sampled rate, or Adam at `warmup_learning_rate` for the warm-up."""
    if warmup:
        return keras.optimizers.Adam(config.warmup_learning_rate)
    lr = config.learning_rate
    if config.optimizer == "adam":
        return keras.optimizers.Adam(lr)
    if config.optimizer == "adamw":
        return keras.optimizers.AdamW(lr, weight_decay=config.weight_decay)
    if config.optimizer == "sgd":
        return keras.optimizers.SGD(lr, momentum=config.momentum, nesterov=True)
    return keras.optimizers.RMSprop(lr)


def compile_model(model: keras.Model, config: TrialConfig, num_classes: int, warmup: bool = False,
                  optimizer: keras.optimizers.Optimizer | None = None) -> None:
    """Compile with the phase's loss and accuracy; `optimizer` (e.g. a resumed one) or a new `make_optimizer`."""
    loss = "binary_crossentropy" if num_classes == 2 else "sparse_categorical_crossentropy"
    model.compile(optimizer=optimizer or make_optimizer(config, warmup), loss=loss, metrics=["accuracy"])


def calibrate_batchnorm(model: keras.Model, images: Any, max_images: int = 64) -> None:
    """Set a random-init backbone's BatchNorm statistics from a batch of training images.

    Pretrained backbones keep their ImageNet statistics (BatchNorm runs in inference mode). A random-init
    backbone (`weights: none`) has none worth keeping: its moving mean 0 and variance 1 shrink activations
    block after block until the pooled features are ~1e-11 and nothing can learn. One forward pass in
    training mode with momentum 0 replaces them with the statistics of real inputs.

    Args:
        model: a model from `build_model`.
        images: training images (N, S, S, 3), raw pixels; the first `max_images` (default 64) are used.
    """
    base = backbone_of(model)
    norms = [layer for layer in base.layers if isinstance(layer, keras.layers.BatchNormalization)]
    saved = [(layer.trainable, layer.momentum) for layer in norms]
    for layer in norms:
        layer.trainable, layer.momentum = True, 0.0
    x = model.get_layer("preprocess")(keras.ops.convert_to_tensor(images[:max_images], dtype="float32"))
    base(x, training=True)
    for layer, (trainable, momentum) in zip(norms, saved):
        layer.trainable, layer.momentum = trainable, momentum
