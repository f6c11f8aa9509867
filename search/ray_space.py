"""Compile a tsweep search space (``spaces.space.Space``) to a Ray Tune ``param_space``.

Ray's import stays here, out of ``tsweep.spaces``: a space is loaded and validated without Ray, and only
the sweep (``search.tuner``) and the naive benchmark compile it.
"""

from __future__ import annotations

from typing import Any

from tsweep.spaces.space import Space


def to_ray(space: Space) -> dict[str, Any]:
    """Ray Tune `param_space`: tune.choice / uniform / loguniform / randint, or the plain fixed value."""
    from ray import tune

    out: dict[str, Any] = {}
    for key, d in space.params.items():
        if d.kind == "choice":
            out[key] = tune.choice(list(d.values))
        elif d.kind == "uniform":
            out[key] = tune.uniform(*d.values)
        elif d.kind == "loguniform":
            out[key] = tune.loguniform(*d.values)
        elif d.kind == "randint":
            out[key] = tune.randint(d.values[0], d.values[1] + 1)  # Ray's upper bound is exclusive
        else:
            out[key] = d.values[0]
    return out
