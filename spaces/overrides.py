"""Command-line overrides over a search space (`tsweep run --backbone`, `--weights`, `--image-size`,
`--max-epochs`).

`with_overrides` fixes keys over a `Space` like `Space.with_fixed`, but fits the warm-up to a shorter fixed
`epochs` (with a notice) and names the override that breaks the space in its errors. Nothing here imports
TensorFlow or Ray.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from tsweep.errors import SweepConfigError
from tsweep.spaces.config import TrialConfig, check_keys, coerce
from tsweep.spaces.space import Dist, Space, validated


def with_overrides(space: Space, overrides: Mapping[str, Any],
                   flags: Mapping[str, str] | None = None) -> tuple[Space, list[str]]:
    """`Space.with_fixed` for command-line overrides, reporting in the override's own terms.

    A fixed `epochs` shorter than the space's (or the default) `warmup_epochs` shortens the warm-up to
    fit instead of failing: warmup_epochs = min(value, epochs), choices and `randint` bounds clipped; a
    notice says so. Any other inconsistency raises a SweepConfigError naming the override that causes it
    (e.g. "--backbone resnet50: `freeze_cutoff` must be in [0, 12], got 17 ...").

    Args:
        space: the space to fix the keys over.
        overrides: key -> value fixed over the space.
        flags: key -> the option it came from (e.g. {"epochs": "--max-epochs"}); other keys are named
            as "override `key=value`".

    Returns:
        The space and the notices (one line each) to show the user.
    """
    flags = flags or {}

    def label(key: str) -> str:
        return f"{flags[key]} {overrides[key]}" if key in flags else f"override `{key}={overrides[key]}`"

    check_keys(overrides, "command-line override")
    fixed = {key: coerce(key, value, label(key)) for key, value in overrides.items()}
    weights = fixed.get("weights")
    if isinstance(weights, str) and weights.lower() not in ("imagenet", "none") \
            and not Path(weights).expanduser().is_file():  # found now, not after minutes of decoding
        raise SweepConfigError(f"{label('weights')}: no such weights file: pass an existing .h5 file, "
                               "\"imagenet\" or \"none\"")
    notices: list[str] = []
    params = dict(space.params)
    params.update({key: Dist("fixed", (value,)) for key, value in fixed.items()})
    epochs = fixed.get("epochs")
    if isinstance(epochs, int) and epochs >= 1 and "warmup_epochs" not in fixed:
        fit = _fit_warmup(space.params.get("warmup_epochs"), epochs)
        if fit is not None:
            params["warmup_epochs"], notice = fit
            notices.append(f"{label('epochs')} is shorter than {notice}")
    source = f"{space.source} (with overrides {', '.join(overrides)})" if overrides else space.source
    try:
        return validated(replace(space, params=MappingProxyType(params), source=source)), notices
    except SweepConfigError:
        pass
    # Which override breaks it? Each one on its own (a bad value), then each over the space, then all.
    for key, value in fixed.items():
        alone = {key: Dist("fixed", (value,))}
        if key == "epochs":
            alone["warmup_epochs"] = Dist("fixed", (0,))
        validated(Space(MappingProxyType(alone), label(key)))  # raises "--flag value: ..."
    for keys in [[key] for key in fixed] + [list(fixed)]:
        trial = dict(space.params)
        trial.update({k: params[k] for k in keys})
        if "epochs" in keys and "warmup_epochs" in params:
            trial["warmup_epochs"] = params["warmup_epochs"]  # shortened to fit, as above
        try:
            validated(replace(space, params=MappingProxyType(trial)))
        except SweepConfigError as e:
            message, prefix = str(e), f"{space.source}: "
            message = message[len(prefix):] if message.startswith(prefix) else message
            names = " with ".join(label(k) for k in keys)
            drops = " or ".join(flags.get(k, f"the `{k}` override") for k in keys)
            raise SweepConfigError(f"{names}: {message} in the space {space.source}; drop {drops} or pass a "
                                   "--space that fits") from None
    raise AssertionError("unreachable: the overrides together failed validation")


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _show(d: Dist) -> str:
    """A Dist as written in a space file: `2`, `{choice: [0, 1, 2]}`, `{randint: [1, 4]}`."""
    if d.kind == "fixed":
        return str(d.values[0])
    return f"{{{d.kind}: [{', '.join(str(v) for v in d.values)}]}}"


def _fit_warmup(dist: Dist | None, epochs: int) -> tuple[Dist, str] | None:
    """warmup_epochs = min(value, epochs) over a fixed value, choice or randint; None when it fits already.

    Returns the clipped Dist and the end of the notice ("the space's warmup_epochs 2: warm-up shortened to
    1 epoch").
    """
    whose = "the space's"
    if dist is None:
        dist, whose = Dist("fixed", (TrialConfig.warmup_epochs,)), "the default"
    if dist.kind == "fixed":
        if dist.values[0] <= epochs:
            return None
        clipped = Dist("fixed", (epochs,))
    elif dist.kind == "choice":
        if all(v <= epochs for v in dist.values):
            return None
        values = tuple(dict.fromkeys(min(v, epochs) for v in dist.values))
        clipped = Dist("choice", values) if len(values) > 1 else Dist("fixed", values)
    elif dist.kind == "randint":
        lo, hi = dist.values
        if hi <= epochs:
            return None
        clipped = Dist("randint", (lo, epochs)) if lo < epochs else Dist("fixed", (epochs,))
    else:  # warmup_epochs is an integer key: parse_dist allows no other kind
        return None
    if clipped.kind == "fixed":
        result = f"warm-up shortened to {_plural(clipped.values[0], 'epoch')}"
    else:
        result = f"warm-up shortened to at most {_plural(epochs, 'epoch')} (warmup_epochs {_show(clipped)})"
    return clipped, f"{whose} warmup_epochs {_show(dist)}: {result}"
