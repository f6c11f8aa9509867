"""One trial's configuration: every hyperparameter a trainer understands, with grouped defaults.

A search space (``spaces/*.yaml``) samples some of these keys and fixes the others; whatever it leaves out
takes the default below (backbone names, cut points and input sizes are checked against the registry in
``spaces.backbones``). The trainer receives a plain dict and turns it into a ``TrialConfig`` with
``TrialConfig.from_dict``, which rejects unknown keys by name and checks every range, so a typo in a space
file or a bad override fails before any trial starts.
"""

from __future__ import annotations

import dataclasses
import difflib
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping

from tsweep.errors import SweepConfigError, out_of_range
from tsweep.spaces.backbones import MAX_IMAGE_SIZE, get_spec

OPTIMIZERS = ("adam", "adamw", "sgd", "rmsprop")
AUGMENTATIONS = ("none", "light", "strong")
CLASS_WEIGHTS = ("none", "balanced")


@dataclass(frozen=True)
class TrialConfig:
    # --- backbone: which pretrained network, at which input size -----------------------------------
    backbone: str = "mobilenet_v2"  # a name from `tsweep backbones`; small_cnn trains from scratch and ignores
    #                                 alpha, weights, the freeze keys and the warm-up (nothing to keep or freeze)
    alpha: float = 1.0  # width multiplier (MobileNet family only)
    weights: str = "imagenet"  # "imagenet" (downloaded by Keras), "none" (random init) or a file path
    image_size: int = 224  # square input, pixels (the ImageNet weights were trained at 224)
    # --- head: what sits on the pooled backbone features ---------------------------------------------
    head_size: int = 128  # units of the hidden Dense(relu) layer; 0 = linear classifier on the features
    dropout: float = 0.2  # before the output layer
    # --- fine-tuning: how much of the backbone stays frozen ------------------------------------------
    freeze_cutoff: int | None = None  # freeze below this block boundary; None = all frozen
    freeze_fraction: float | None = None  # the same as a fraction of the boundaries (sampled backbones)
    # --- optimisation --------------------------------------------------------------------------------
    optimizer: str = "adam"  # adam, adamw, sgd (with momentum) or rmsprop
    learning_rate: float = 1e-3  # of the main phase (fine-tuning, or the head alone at full freeze)
    momentum: float = 0.9  # sgd (Nesterov)
    weight_decay: float = 1e-4  # adamw
    warmup_epochs: int = 2  # head-only epochs on a fully frozen base before unfreezing above the cutoff
    warmup_learning_rate: float = 1e-3  # Adam's rate during warm-up (the classic recipe's default)
    augmentation: str = "none"  # none, light or strong: Keras preprocessing layers inside the model
    class_weight: str = "none"  # none, or balanced: the loss weights class c by n / (k * n_c), as scikit-learn
    #                             does, so each class counts as much as the others whatever its image count
    augmentation_views: int = 4  # augmented configs with a frozen prefix train on this many fixed augmented
    #                              views per image, cached as features (benchmarks/README.md); 0 = a new random
    #                              view every epoch, end to end
    # --- budget --------------------------------------------------------------------------------------
    epochs: int = 12  # total epochs, warm-up included; ASHA's max_t
    batch_size: int = 32
    seed: int = 0  # per-trial seed for weights init, shuffling and augmentation

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], source: str = "config") -> "TrialConfig":
        """Build and validate a config from a plain dict.

        Args:
            values: hyperparameter name -> value; keys must be fields of TrialConfig.
            source: what to name in error messages (a space file path, "--override", ...).
        """
        check_keys(values, source)
        coerced = {k: coerce(k, v, source) for k, v in values.items()}
        if "backbone" in coerced:  # store the canonical name whatever the spelling ("MobileNetV2")
            try:
                coerced["backbone"] = get_spec(coerced["backbone"]).name
            except SweepConfigError as e:
                raise SweepConfigError(f"{source}: {e}") from None
        config = cls(**coerced)
        config.validate(source)
        return config

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def validate(self, source: str = "config") -> None:
        """Check every range; raise SweepConfigError naming `source`, the key and the fix."""
        spec = get_spec(self.backbone)
        for key, lo, hi in RANGES:
            value = getattr(self, key)
            if value is not None and not lo <= value <= hi:
                raise SweepConfigError(f"{source}: {out_of_range(key, lo, hi, value)}")
        if self.optimizer not in OPTIMIZERS:
            raise SweepConfigError(f"{source}: `optimizer` must be one of {', '.join(OPTIMIZERS)}, "
                                   f"got {self.optimizer!r}")
        for key, allowed in (("augmentation", AUGMENTATIONS), ("class_weight", CLASS_WEIGHTS)):
            if getattr(self, key) not in allowed:
                raise SweepConfigError(f"{source}: `{key}` must be one of {', '.join(allowed)}, "
                                       f"got {getattr(self, key)!r}")
        if self.freeze_cutoff is not None and self.freeze_fraction is not None:
            raise SweepConfigError(f"{source}: give `freeze_cutoff` or `freeze_fraction`, not both")
        if self.freeze_cutoff is not None and not spec.from_scratch and not 0 <= self.freeze_cutoff <= spec.max_cutoff:
            raise SweepConfigError(
                f"{source}: {out_of_range('freeze_cutoff', 0, spec.max_cutoff, self.freeze_cutoff)} "
                f"({spec.name} has {spec.max_cutoff} cut points; `tsweep backbones` lists them)")
        if self.image_size < spec.min_size:
            raise SweepConfigError(
                f"{source}: {out_of_range('image_size', spec.min_size, MAX_IMAGE_SIZE, self.image_size)} "
                f"({spec.name} needs at least {spec.min_size} px)")
        if self.alpha != 1.0 and not spec.has_alpha and not spec.from_scratch:
            raise SweepConfigError(f"{source}: `alpha` applies to the MobileNet family only; "
                                   f"remove it for {spec.name}")
        if self.warmup_epochs > self.epochs:
            raise SweepConfigError(f"{source}: {out_of_range('warmup_epochs', 0, self.epochs, self.warmup_epochs)}"
                                   " (warm-up epochs count within `epochs`)")

    def cutoff(self) -> int:
        """The freeze cutoff in block boundaries of this backbone (fraction and default resolved; 0 from scratch)."""
        if self.from_scratch():
            return 0
        top = get_spec(self.backbone).max_cutoff
        if self.freeze_cutoff is not None:
            return self.freeze_cutoff
        if self.freeze_fraction is not None:
            return round(self.freeze_fraction * top)
        return top

    def from_scratch(self) -> bool:
        """True for a backbone that trains from random init, all of it (`small_cnn`): no warm-up, no cache."""
        return get_spec(self.backbone).from_scratch

    def is_feature_extraction(self) -> bool:
        """True when the whole backbone stays frozen (bottleneck features; no warm-up phase needed)."""
        return self.cutoff() == get_spec(self.backbone).max_cutoff


# (key, low, high): numeric ranges checked for every config and every space distribution bound.
RANGES = (
    ("alpha", 0.1, 2.0),
    ("image_size", 32, MAX_IMAGE_SIZE),
    ("head_size", 0, 16384),
    ("dropout", 0.0, 0.95),
    ("freeze_fraction", 0.0, 1.0),
    ("learning_rate", 1e-8, 1.0),
    ("warmup_learning_rate", 1e-8, 1.0),
    ("momentum", 0.0, 0.999),
    ("weight_decay", 0.0, 1.0),
    ("warmup_epochs", 0, 10000),
    ("epochs", 1, 10000),
    ("batch_size", 1, 65536),
    ("augmentation_views", 0, 1024),
    ("seed", 0, 2**31 - 1),
)

FIELDS = {f.name: f for f in dataclasses.fields(TrialConfig)}
_INT_KEYS = {"image_size", "head_size", "freeze_cutoff", "warmup_epochs", "epochs", "batch_size", "seed",
             "augmentation_views"}
_FLOAT_KEYS = {"alpha", "dropout", "freeze_fraction", "learning_rate", "warmup_learning_rate", "momentum",
               "weight_decay"}


def check_keys(values: Mapping[str, Any], source: str) -> None:
    """Reject unknown keys by name, suggesting the nearest known one."""
    for key in values:
        if key not in FIELDS:
            close = difflib.get_close_matches(str(key), FIELDS, n=1)
            hint = f"did you mean `{close[0]}`? " if close else ""
            raise SweepConfigError(f"{source}: unknown key `{key}`: {hint}known keys are "
                                   f"{', '.join(FIELDS)}")


def coerce(key: str, value: Any, source: str) -> Any:
    """Convert a value read from YAML or the command line to the key's type.

    PyYAML reads `1e-4` (no dot) as a string, so numeric strings are accepted for numeric keys.
    """
    if value is None:
        # `weights: null` in YAML means random init, `class_weight: null` no weighting
        return "none" if key in ("weights", "class_weight") else None
    try:
        if key in _INT_KEYS:
            if isinstance(value, bool) or (isinstance(value, float) and not value.is_integer()):
                raise ValueError
            return int(value)
        if key in _FLOAT_KEYS:
            if isinstance(value, bool):
                raise ValueError
            return float(value)
    except (TypeError, ValueError):
        kind = "an integer" if key in _INT_KEYS else "a number"
        raise SweepConfigError(f"{source}: `{key}` must be {kind}, got {value!r}") from None
    if key in ("weights", "backbone", "optimizer", "augmentation", "class_weight"):
        if not isinstance(value, str):
            raise SweepConfigError(f"{source}: `{key}` must be a string, got {value!r}")
        if key != "weights":
            return value.lower()
        if value.lower() in ("imagenet", "none"):
            return value.lower()
        # A weights file: absolute, because Ray runs each trial in its own working directory.
        return str(Path(value).expanduser().resolve())
    return value
