"""Build a backbone of the registry (``spaces.backbones``) with its weights: Keras's ImageNet download, a
local weights file, or random init, with errors that name the bad size, alpha or file and the fix.

A process keeps the pretrained weights it has loaded (a few entries, keyed by file path, size and mtime),
so a reused Ray worker reads a weights file once, not once per trial.
"""

from __future__ import annotations

from collections import OrderedDict
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Iterator

from tsweep.errors import NodeFileError, SweepConfigError, out_of_range
from tsweep.spaces.backbones import MAX_IMAGE_SIZE, BackboneSpec, get_spec

if TYPE_CHECKING:
    import keras


def _brief(error: BaseException, limit: int = 300) -> str:
    text = " ".join(str(error).split()) or type(error).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _example_file(spec: BackboneSpec, alpha: float) -> str:
    # The naming of ../shared/weights: mobilenet_v2_1.0_224_no_top.h5
    width = f"_{float(alpha)}" if spec.has_alpha else ""
    return f"{spec.name}{width}_{spec.default_size}_no_top.h5"


def build_backbone(name: str, image_size: int, weights: str | None = "imagenet",
                   alpha: float = 1.0) -> keras.Model:
    """The backbone without its classification top (include_top=False, pooling=None), input (S, S, 3).

    Args:
        name: a backbone name accepted by get_spec.
        image_size: S, the square input size in pixels; at least the backbone's min_size.
        weights: "imagenet" (Keras downloads and caches it), "none" or None (random init), or a path to a
            weights file of the same backbone and alpha (e.g. a ``*_no_top.h5``). Default "imagenet".
        alpha: width multiplier, MobileNet family only. Default 1.0.
        A from-scratch backbone (`small_cnn`) ignores `weights` and `alpha`: it is always random init.

    Raises:
        SweepConfigError: bad size, alpha or weights path; a failed ImageNet download; a weights file
            that does not fit the backbone.
    """
    spec = get_spec(name)
    if isinstance(image_size, bool) or not isinstance(image_size, int) \
            or not spec.min_size <= image_size <= MAX_IMAGE_SIZE:
        raise SweepConfigError(f"{out_of_range('image_size', spec.min_size, MAX_IMAGE_SIZE, image_size)} "
                               f"({spec.name} needs at least {spec.min_size} px)")
    if spec.from_scratch:  # built here, always random init: there are no weights to load (nor an alpha)
        from tsweep.trainers.backbones import small_cnn

        return small_cnn(image_size)
    kwargs: dict = {"include_top": False, "weights": None, "input_shape": (image_size, image_size, 3),
                    "pooling": None}
    if spec.has_alpha:
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or alpha <= 0:
            raise SweepConfigError(f"`alpha` must be a positive number, got {alpha!r}")
        kwargs["alpha"] = float(alpha)
    elif alpha != 1.0:
        raise SweepConfigError(f"`alpha` (width multiplier) applies to the MobileNet family only; "
                               f"remove it for {spec.name}, got {alpha}")

    source = "none" if weights is None else str(weights)
    path = None
    if source.lower() == "imagenet":
        if spec.has_alpha and float(alpha) not in spec.imagenet_alphas:
            raise SweepConfigError(
                f"Keras has ImageNet weights for {spec.name} only at alpha "
                f"{', '.join(str(a) for a in spec.imagenet_alphas)}, got alpha {alpha}: choose one of those, "
                "or pass --weights PATH to a weights file of that alpha, or --weights none")
        kwargs["weights"] = "imagenet"
    elif source.lower() != "none":
        path = Path(source).expanduser()
        if not path.is_file():
            raise NodeFileError(f"weights file '{source}' does not exist: pass an existing .h5 file, "
                                   "\"imagenet\" or \"none\"")

    import keras  # lazily: importing TensorFlow takes seconds

    constructor = getattr(keras.applications, spec.constructor)
    memo_key = _weights_key(spec, image_size, kwargs.get("alpha"), source, path)
    built_key = (memo_key, keras.config.dtype_policy().name)  # a mixed-precision trial builds its own
    if _REUSE and built_key in _BUILT:  # a reused worker's next trial: the same layers, pretrained weights again
        model = _BUILT[built_key]
        model.set_weights(_LOADED_WEIGHTS[memo_key])
        return model
    if memo_key in _LOADED_WEIGHTS:  # a reused worker: build with random init, then copy the weights
        model = constructor(**{**kwargs, "weights": None})
        model.set_weights(_LOADED_WEIGHTS[memo_key])
        _keep_built(built_key, model)
        return model
    try:
        model = constructor(**kwargs)
    except ValueError as e:  # Keras's own argument checks
        raise SweepConfigError(f"keras.applications.{spec.constructor} rejected image_size {image_size}, "
                               f"alpha {alpha}, weights {source!r}: {_brief(e)}") from e
    except Exception as e:  # with "imagenet" the rest is the download (a bare Exception when offline)
        if kwargs["weights"] != "imagenet":
            raise
        raise NodeFileError(
            f"the download of ImageNet weights for {spec.name} failed ({_brief(e)}): pass --weights PATH "
            f"to a local no-top weights file (e.g. {_example_file(spec, alpha)}) or --weights none") from e
    if path is not None:
        # Same as Keras's weights=PATH, but a mismatch can only come from the file, so say so.
        try:
            model.load_weights(str(path))
        except Exception as e:
            raise SweepConfigError(
                f"weights file '{source}' does not fit backbone {spec.name} at alpha {alpha}: {_brief(e)} "
                "(pass a no-top weights file saved from the same backbone and alpha, \"imagenet\" or "
                "\"none\")") from e
    if memo_key is not None:
        while len(_LOADED_WEIGHTS) >= _MAX_LOADED:
            gone = _LOADED_WEIGHTS.popitem(last=False)[0]
            for key in [k for k in _BUILT if k[0] == gone]:
                del _BUILT[key]
        _LOADED_WEIGHTS[memo_key] = model.get_weights()
        _keep_built(built_key, model)
    return model


def _keep_built(built_key: tuple, model: keras.Model) -> None:
    if _REUSE:
        _BUILT[built_key] = model


@contextmanager
def reuse_backbones() -> Iterator[None]:
    """Within this block `build_backbone` hands out the backbone it built before for the same (backbone, image
    size, alpha, weights file), with its pretrained weights put back, instead of building a new one: building
    MobileNetV2's ~260 variables with their initializers takes ~1.5 s on these CPUs, putting weights back
    ~30 ms. For a Ray worker running one trial at a time (`search.trial`): every model built meanwhile shares,
    and resets, the same backbone layers, so two models of one backbone must not be alive together. Random
    init (`weights: none`) is never shared."""
    global _REUSE
    before, _REUSE = _REUSE, True
    try:
        yield
    finally:
        _REUSE = before


# Pretrained weights this process has loaded, so a reused worker reads a weights file (or Keras's download
# cache) once, not once per trial (~0.4 s for MobileNetV2). A few entries: MobileNetV2 1.0 is ~9 MB.
_LOADED_WEIGHTS: OrderedDict[tuple, list] = OrderedDict()
_MAX_LOADED = 4
_BUILT: dict[tuple, keras.Model] = {}  # (_LOADED_WEIGHTS key, dtype policy) -> backbone, within `reuse_backbones`
_REUSE = False


def _weights_key(spec: BackboneSpec, image_size: int, alpha: float | None, source: str,
                 path: Path | None) -> tuple | None:
    """What identifies loaded weights: the file's path, size and mtime (a replaced file is read again)."""
    if source.lower() == "none":
        return None
    if path is None:
        return (spec.name, image_size, alpha, "imagenet")
    st = path.stat()
    return (spec.name, image_size, alpha, str(path.resolve()), st.st_size, st.st_mtime_ns)
