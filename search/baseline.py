"""The from-scratch baseline of a sweep (`tsweep run --baseline`): one more trial, `small_cnn` trained from random
init with the sweep's epoch budget, so the leaderboard, the report and the closing summary say what transfer
gained ("+x points over training from scratch").

How it joins the sweep: its config is the first of Ray Tune's `points_to_evaluate` (the searcher runs it
before sampling, as one more sample), and `baseline_asha.BaselineASHA` never stops it and keeps its results out
of ASHA's rungs, so a from-scratch network, slow to start, is neither cut at the first rung by the transfer
trials' pace nor moves their cuts. Its trial record carries ``"baseline": true``; otherwise it is a trial like
the others: ranked by the same metric and exported only if it really is the best. No Ray import here.
"""

from __future__ import annotations

import logging
from typing import Any, Iterable

from tsweep.search.objective import Objective
from tsweep.spaces.config import TrialConfig
from tsweep.spaces.space import Space

BASELINE_BACKBONE = "small_cnn"
# What the baseline sets whatever the space says: the network, random init, the whole budget, and Adam at its
# usual rate (a space's fine-tuning rates, ~1e-5, would starve a network learning from nothing). small_cnn
# ignores the freeze keys, and the warm-up and alpha (TrialConfig). Every other key keeps the space's fixed value
# or the default.
OWN = {"backbone": BASELINE_BACKBONE, "weights": "none", "alpha": 1.0, "warmup_epochs": 0, "optimizer": "adam",
       "learning_rate": 1e-3}


def baseline_config(space: Space, max_epochs: int) -> dict[str, Any]:
    """The baseline trial's config: `OWN`, `max_epochs` epochs, the space's smallest image size (decoded
    already), the space's fixed values for the other keys it sets and TrialConfig's defaults for sampled ones.

    Args:
        space: the sweep's validated space (overrides applied).
        max_epochs: the sweep's epoch budget (ASHA's max_t).
    """
    from tsweep.search.sweep import candidates

    defaults = TrialConfig().to_dict()
    # A sampled key whose default is None (a freeze key) takes a value of the space: Ray compares presets with
    # the space's bounds, and small_cnn ignores it anyway.
    config = {key: (d.values[0] if d.kind == "fixed" or defaults[key] is None else defaults[key])
              for key, d in space.params.items()}
    config.update(OWN, epochs=int(max_epochs), image_size=int(min(candidates(space, "image_size"))))
    TrialConfig.from_dict(config, "the --baseline trial")
    return config


def param_space(space_params: dict[str, Any], baseline: dict[str, Any] | None) -> dict[str, Any]:
    """Ray's param_space with every key the baseline sets (Ray presets only keys it has): keys the space leaves
    out are added at their defaults, which the other trials would have taken anyway."""
    if baseline is None:
        return space_params
    defaults = TrialConfig().to_dict()
    return {**{k: defaults[k] for k in baseline if k not in space_params}, **space_params}


def is_baseline(config: Any, baseline: dict[str, Any] | None) -> bool:
    """True for the trial whose config is the baseline's."""
    return baseline is not None and dict(config) == baseline


class _PresetNotice(logging.Filter):
    # Ray warns that the preset backbone (small_cnn) lies outside the space's values: that is the point.
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith("Pre-set value")


def quiet_preset_warnings() -> None:
    """Silence Ray's "Pre-set value ... is not within valid values" warnings about the baseline's config."""
    logger = logging.getLogger("ray.tune.search.variant_generator")
    if not any(isinstance(f, _PresetNotice) for f in logger.filters):
        logger.addFilter(_PresetNotice())


def transfer_gain(trials: Iterable[dict], objective: Objective) -> dict | None:
    """What transfer gained over the baseline: the best transfer trial's and the baseline's best values.

    Returns None without a baseline trial or a transfer trial that reported the metric; else a dict with
    metric, best (value), best_trial, baseline (value), baseline_trial and gain (best - baseline, signed).
    """
    trials = list(trials)
    scored = [(objective.best_epoch(t.get("history", []))[1], t) for t in trials if t.get("status") != "failed"]
    scored = [(v, t) for v, t in scored if v is not None]
    base = [(v, t) for v, t in scored if t.get("baseline")]
    other = [(v, t) for v, t in scored if not t.get("baseline")]
    if not base or not other:
        return None
    b_value, b_trial = min(base, key=lambda s: objective.sort_key(s[0]))
    value, trial = min(other, key=lambda s: objective.sort_key(s[0]))
    return {"metric": objective.metric, "best": value, "best_trial": trial.get("trial_id"), "baseline": b_value,
            "baseline_trial": b_trial.get("trial_id"), "gain": value - b_value}


def gain_sentence(gain: dict | None) -> str | None:
    """"transfer: +23.5 points of val_accuracy over training from scratch (0.940, trial a; small_cnn baseline
    0.705, trial b)", or None."""
    if gain is None:
        return None
    metric, diff = gain["metric"], gain["gain"]
    if "accuracy" in metric:  # a fraction: say it in percentage points
        what = f"{100 * diff:+.1f} points of {metric}"
    else:
        what = f"{metric} {diff:+.4g}"
    return (f"transfer: {what} over training from scratch ({gain['best']:.4g}, trial {gain['best_trial']}; "
            f"{BASELINE_BACKBONE} baseline {gain['baseline']:.4g}, trial {gain['baseline_trial']})")
