"""The registry of ``keras.applications`` backbones: how to build and preprocess each, and the block
boundaries where its freezing can stop.

A cutoff ``c`` freezes every layer up to and including ``boundaries[c - 1]``: 0 trains the whole backbone,
``max_cutoff`` freezes all of it (feature extraction). Each boundary is the layer that ends a block, so the
frozen prefix of ``model.layers`` is exactly that layer and its ancestors (``tests/test_backbones.py``
checks this for every backbone).

Declarative: this module imports no Keras, TensorFlow or Ray, so a space checks its cutoffs and image sizes
against it (``spaces.config``) and ``tsweep backbones`` lists it without them. Applying a cutoff to a built
model is ``trainers.backbones.freeze``; building a backbone with its weights is
``trainers.pretrained.build_backbone``.
"""

from __future__ import annotations

from dataclasses import dataclass

from tsweep.errors import SweepConfigError

# How each backbone's keras `preprocess_input` maps RGB pixels in [0, 255] (trainers.layers.Preprocess applies them):
#   tf: x / 127.5 - 1   caffe: RGB->BGR, minus CAFFE_MEAN_BGR   torch: (x / 255 - TORCH_MEAN) / TORCH_STD
#   none: passthrough (the backbone rescales inside itself, e.g. EfficientNet)
PREPROCESS_MODES = ("tf", "caffe", "torch", "none")
CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
TORCH_MEAN = (0.485, 0.456, 0.406)
TORCH_STD = (0.229, 0.224, 0.225)
MAX_IMAGE_SIZE = 2048  # the upper bound of TrialConfig's `image_size` range too


@dataclass(frozen=True)
class BackboneSpec:
    """One backbone: how to build it, how to preprocess for it, and where it can be cut.

    Args:
        name: tsweep's name, e.g. "mobilenet_v2".
        constructor: attribute of ``keras.applications``, e.g. "MobileNetV2" (for from_scratch, a spelling).
        module: the ``keras.applications`` submodule holding its ``preprocess_input`` ("" for from_scratch).
        preprocess: one of PREPROCESS_MODES, what that ``preprocess_input`` does.
        default_size: the input size the ImageNet weights were trained at.
        min_size: the smallest input size Keras accepts.
        boundaries: names of the layers ending each block, in order; the last is the output layer.
        labels: human names of those blocks, same length.
        has_alpha: True when the constructor takes a width multiplier `alpha`. Default False.
        imagenet_alphas: the alphas Keras has ImageNet weights for (when has_alpha). Default ().
        from_scratch: True for a network tsweep builds itself and always trains from random init, all of it
            (`small_cnn`): no weights to load, nothing frozen, nothing cached. Default False.
    """

    name: str
    constructor: str
    module: str
    preprocess: str
    default_size: int
    min_size: int
    boundaries: tuple[str, ...]
    labels: tuple[str, ...]
    has_alpha: bool = False
    imagenet_alphas: tuple[float, ...] = ()
    from_scratch: bool = False

    def __post_init__(self) -> None:
        if self.preprocess not in PREPROCESS_MODES:
            raise ValueError(f"{self.name}: preprocess {self.preprocess!r} not in {PREPROCESS_MODES}")
        if not self.boundaries or len(self.boundaries) != len(self.labels):
            raise ValueError(f"{self.name}: boundaries and labels must be non-empty and of equal length")

    @property
    def max_cutoff(self) -> int:
        """The cutoff that freezes the whole backbone."""
        return len(self.boundaries)


def _blocks(prefix: str, count: int, suffix: str = "") -> tuple[str, ...]:
    return tuple(f"{prefix}{i}{suffix}" for i in range(1, count + 1))


# MobileNetV2 blocks with a residual connection end in their `_add` layer, the others in `_project_BN`.
_MNV2_ADD = {2, 4, 5, 7, 8, 9, 11, 12, 14, 15}
_RESNET_STAGES = ("conv2", "conv3", "conv4", "conv5")

_SPECS = (
    BackboneSpec(
        "mobilenet", "MobileNet", "mobilenet", "tf", 224, 32,
        tuple(f"conv_pw_{i}_relu" for i in range(1, 14)), _blocks("block_", 13),
        has_alpha=True, imagenet_alphas=(0.25, 0.5, 0.75, 1.0)),
    BackboneSpec(
        "mobilenet_v2", "MobileNetV2", "mobilenet_v2", "tf", 224, 32,
        tuple(f"block_{i}_add" if i in _MNV2_ADD else f"block_{i}_project_BN" for i in range(1, 17))
        + ("out_relu",),
        _blocks("block_", 16) + ("top",),
        has_alpha=True, imagenet_alphas=(0.35, 0.5, 0.75, 1.0, 1.3, 1.4)),
    BackboneSpec("vgg16", "VGG16", "vgg16", "caffe", 224, 32,
                 tuple(f"block{i}_pool" for i in range(1, 6)), _blocks("block", 5)),
    BackboneSpec("vgg19", "VGG19", "vgg19", "caffe", 224, 32,
                 tuple(f"block{i}_pool" for i in range(1, 6)), _blocks("block", 5)),
    BackboneSpec("resnet50", "ResNet50", "resnet50", "caffe", 224, 32,
                 ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "conv5_block3_out"),
                 _RESNET_STAGES),
    BackboneSpec("resnet50_v2", "ResNet50V2", "resnet_v2", "tf", 224, 32,
                 ("conv2_block3_out", "conv3_block4_out", "conv4_block6_out", "post_relu"), _RESNET_STAGES),
    BackboneSpec("inception_v3", "InceptionV3", "inception_v3", "tf", 299, 75,
                 tuple(f"mixed{i}" for i in range(11)), tuple(f"mixed{i}" for i in range(11))),
    BackboneSpec("densenet121", "DenseNet121", "densenet", "torch", 224, 32,
                 ("pool2_pool", "pool3_pool", "pool4_pool", "relu"), _RESNET_STAGES),
    BackboneSpec(
        "efficientnet_b0", "EfficientNetB0", "efficientnet", "none", 224, 32,
        ("block1a_project_bn", "block2b_add", "block3b_add", "block4c_add", "block5c_add", "block6d_add",
         "block7a_project_bn", "top_activation"),
        _blocks("block", 7) + ("top",)),
    # The classic first model of the Keras guides, trained from scratch as the baseline transfer should beat
    # (`tsweep run --baseline`): Conv-ReLU-MaxPool blocks, built by trainers.backbones.small_cnn. Its inputs
    # are scaled to [-1, 1] ("tf"), a plain rescaling, no ImageNet statistics.
    BackboneSpec("small_cnn", "SmallCNN", "", "tf", 150, 32, _blocks("block", 3, "_pool"), _blocks("block", 3),
                 from_scratch=True),
)

BACKBONES: dict[str, BackboneSpec] = {spec.name: spec for spec in _SPECS}


def _key(name: str) -> str:
    # "MobileNetV2", "mobilenet_v2" and "mobilenet-v2" all become "mobilenetv2".
    return "".join(ch for ch in name.lower() if ch.isalnum())


_ALIASES = {_key(alias): spec for spec in _SPECS for alias in (spec.name, spec.constructor)}


def get_spec(name: str | BackboneSpec) -> BackboneSpec:
    """The spec of backbone `name`: tsweep's name or the Keras spelling, any case ("MobileNetV2").

    Args:
        name: a backbone name, or a BackboneSpec (returned as is).
    """
    if isinstance(name, BackboneSpec):
        return name
    spec = _ALIASES.get(_key(name)) if isinstance(name, str) else None
    if spec is None:
        raise SweepConfigError(f"unknown backbone {name!r}: choose one of {', '.join(sorted(BACKBONES))} "
                               "(`tsweep backbones` lists them)")
    return spec


def describe() -> list[dict]:
    """One row per backbone for the `tsweep backbones` table.

    Keys: name, constructor, default_size, min_size, preprocess, alpha (width multiplier supported),
    max_cutoff, cut_points (block labels; cutoff c freezes through the c-th), from_scratch.
    """
    return [{"name": s.name, "constructor": s.constructor, "default_size": s.default_size,
             "min_size": s.min_size, "preprocess": s.preprocess, "alpha": s.has_alpha,
             "max_cutoff": s.max_cutoff, "cut_points": list(s.labels), "from_scratch": s.from_scratch}
            for s in BACKBONES.values()]
