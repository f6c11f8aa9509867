"""ASHA that spares the `--baseline` trial (`search.baseline`): it runs its whole epoch budget and its results
stay out of ASHA's rungs, so it neither is cut by the transfer trials' pace nor moves their cuts."""

from __future__ import annotations

from typing import Any

from ray.tune.schedulers import ASHAScheduler, TrialScheduler

from tsweep.search.baseline import is_baseline


class BaselineASHA(ASHAScheduler):
    """ASHA that lets the baseline trial run its whole budget and keeps its results out of the rungs.

    Args:
        baseline: the baseline's config (`baseline_config`); the other keyword arguments are ASHAScheduler's.
    """

    def __init__(self, baseline: dict[str, Any], **kwargs: Any) -> None:
        super().__init__(**kwargs)
        self.baseline = dict(baseline)

    def on_trial_result(self, tune_controller: Any, trial: Any, result: dict) -> str:
        if is_baseline(trial.config, self.baseline):
            return TrialScheduler.CONTINUE
        return super().on_trial_result(tune_controller, trial, result)

    def on_trial_complete(self, tune_controller: Any, trial: Any, result: dict) -> None:
        if is_baseline(trial.config, self.baseline):
            self._trial_info.pop(trial.trial_id, None)  # ASHA's bracket of the trial (assigned in on_trial_add)
            return
        super().on_trial_complete(tune_controller, trial, result)
