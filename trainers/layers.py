"""Custom Keras layers of tsweep models, registered so saved models load with ``safe_mode=True``, and their
equivalents in Keras's own layers for exports.

A ``Lambda`` layer would serialize Python bytecode, which ``safe_mode`` refuses to load; a registered
layer serializes as its name and config only, but loading it still needs tsweep imported. Trials and
checkpoints use ``Preprocess``; an export replaces it with ``builtin_preprocess`` (see
``search.formats.portable_model``), so the exported model loads and converts where tsweep is not installed.
"""

from __future__ import annotations

import keras
import numpy as np
from keras import ops

from tsweep.errors import SweepConfigError
from tsweep.spaces.backbones import CAFFE_MEAN_BGR, PREPROCESS_MODES, TORCH_MEAN, TORCH_STD


@keras.saving.register_keras_serializable(package="tsweep")
class Preprocess(keras.layers.Layer):
    """A backbone's input preprocessing inside the model, so exported models take raw RGB pixels.

    Inputs are RGB images in [0, 255], channels last, of any float or integer dtype; the output has the
    layer's compute dtype (float32, or float16 under a mixed_float16 policy). The modes do what
    ``keras.applications.<module>.preprocess_input`` does for channels-last input:

    - "tf": x / 127.5 - 1, to [-1, 1] (MobileNet, MobileNetV2, InceptionV3, ResNetV2).
    - "caffe": RGB -> BGR, then minus the ImageNet means 103.939, 116.779, 123.68 (VGG, ResNet50).
    - "torch": x / 255, minus ImageNet mean 0.485, 0.456, 0.406, divided by std 0.229, 0.224, 0.225
      (DenseNet).
    - "none": passthrough (EfficientNet rescales inside the backbone).

    Args:
        mode: one of "tf", "caffe", "torch", "none".
        **kwargs: keras.layers.Layer arguments (name, dtype, ...).
    """

    def __init__(self, mode: str, **kwargs) -> None:
        super().__init__(**kwargs)
        if mode not in PREPROCESS_MODES:
            raise SweepConfigError(f"unknown preprocessing mode {mode!r}: choose one of "
                                   f"{', '.join(PREPROCESS_MODES)}")
        self.mode = mode

    def call(self, inputs):
        # Integer images (uint8) are not autocast by Keras; cast everything to the compute dtype.
        x = ops.cast(inputs, self.compute_dtype)
        if self.mode == "tf":
            return x / 127.5 - 1.0
        if self.mode == "caffe":
            # Flip the channel axis first: the means are in BGR order, as in Keras.
            return ops.flip(x, axis=-1) - ops.convert_to_tensor(CAFFE_MEAN_BGR, dtype=x.dtype)
        if self.mode == "torch":
            mean = ops.convert_to_tensor(TORCH_MEAN, dtype=x.dtype)
            std = ops.convert_to_tensor(TORCH_STD, dtype=x.dtype)
            return (x / 255.0 - mean) / std
        return x

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self) -> dict:
        config = super().get_config()
        config["mode"] = self.mode
        return config


def builtin_preprocess(mode: str, name: str = "preprocess", dtype: object = None) -> keras.layers.Layer:
    """A layer of Keras's own that computes what ``Preprocess(mode)`` does, for exports that load anywhere.

    A model holding it loads with ``keras.saving.load_model(path, safe_mode=True)`` in a Python without
    tsweep, and converts to LiteRT and ONNX with built-in operations only:

    - "tf": ``Rescaling(1 / 127.5, offset=-1)``.
    - "caffe": a frozen ``Dense(3)`` on the channel axis whose kernel is the RGB -> BGR permutation and whose
      bias is minus CAFFE_MEAN_BGR (products by 0 and 1 are exact: the same numbers as a flip and a subtraction).
    - "torch": ``Rescaling`` with per-channel scale 1 / (255 std) and offset -mean / std.
    - "none": ``Identity``.

    Args:
        mode: one of PREPROCESS_MODES.
        name: the layer's name; default "preprocess", as in trainers.model.build_model.
        dtype: its dtype policy, e.g. the Preprocess layer's own; default None (the global policy).
    """
    if mode not in PREPROCESS_MODES:
        raise SweepConfigError(f"unknown preprocessing mode {mode!r}: choose one of {', '.join(PREPROCESS_MODES)}")
    if mode == "tf":
        return keras.layers.Rescaling(1.0 / 127.5, offset=-1.0, name=name, dtype=dtype)
    if mode == "torch":
        mean, std = np.asarray(TORCH_MEAN, dtype="float64"), np.asarray(TORCH_STD, dtype="float64")
        return keras.layers.Rescaling([float(s) for s in 1.0 / (255.0 * std)],
                                      offset=[float(o) for o in -mean / std], name=name, dtype=dtype)
    if mode == "caffe":
        layer = keras.layers.Dense(3, name=name, dtype=dtype, trainable=False)
        layer.build((None, None, None, 3))
        layer.set_weights([np.ascontiguousarray(np.eye(3, dtype="float32")[::-1]),  # x[2], x[1], x[0]
                           -np.asarray(CAFFE_MEAN_BGR, dtype="float32")])
        return layer
    return keras.layers.Identity(name=name, dtype=dtype)
