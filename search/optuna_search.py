"""TPE through Ray Tune's OptunaSearch, as tsweep needs it (built by `searchers.make_searcher`).

Three changes to OptunaSearch: a trial tells its best epoch's metric (as the leaderboard ranks it) rather than
its last one; a trial it never suggested (one from before a restore) is learned from its result's config
instead of raising KeyError; and after a restore it reads tsweep's own trial records. Ray's restore gives the
searcher back the state it last checkpointed (since ray-project/ray#30861 it loads at all), which misses the
trials that ended after that checkpoint, e.g. when the driver was killed; the records are written at every
event, so the resumed study knows every finished trial.
"""

from __future__ import annotations

import logging
import math
from pathlib import Path

from optuna.trial import TrialState
from ray.tune.search.optuna import OptunaSearch

from tsweep.search.objective import Objective, is_number
from tsweep.search.trial import ERROR_KEY

FINISHED = ("completed", "pruned", "stopped", "failed")  # record statuses the searcher learns from
log = logging.getLogger(__name__)


class TsweepOptunaSearch(OptunaSearch):
    """Args (beyond OptunaSearch's):
        root: the sweep folder whose `trials/*.json` a restored searcher reads; None for none.
    """

    def __init__(self, *args, root: Path | None = None, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        self._root = str(root) if root is not None else None
        self._best: dict[str, float] = {}  # trial id -> best metric value so far
        self._synced = True  # a new sweep has no records yet; `restore` turns this off
        self._snapshot: list[dict] = []  # finished records read at a resume's start (`remember_records`)

    # -- Ray Tune events ----------------------------------------------------------------------------------
    def suggest(self, trial_id: str) -> dict | None:
        if not self._synced:
            self.sync_records()
        return super().suggest(trial_id)

    def on_trial_result(self, trial_id: str, result: dict) -> None:
        # No intermediate values for Optuna (its pruner is off: ASHA prunes); a trial's failure report
        # (trial.ERROR_KEY) has no metric at all.
        value = result.get(self._metric)
        best = self._best.get(trial_id)
        if is_number(value) and (best is None or Objective(self._metric, self._mode).better(value, best)):
            self._best[trial_id] = float(value)

    def on_trial_complete(self, trial_id: str, result: dict | None = None, error: bool = False) -> None:
        if trial_id in self._completed_trials:
            return
        if result:
            self.on_trial_result(trial_id, result)
        failed = error or bool(result and result.get(ERROR_KEY))
        self._tell(trial_id, config_of(result or {}), self._best.pop(trial_id, None), failed)

    def restore(self, checkpoint_path: str) -> None:
        # Ray's restore replaces __dict__ with the state saved before the driver stopped; the folder and record
        # snapshot `remember_records` set for this resume must outlive it.
        root, snapshot = self._root, getattr(self, "_snapshot", [])
        super().restore(checkpoint_path)
        self._root, self._snapshot = root, snapshot
        self.mark_restored()

    def __setstate__(self, state: dict) -> None:
        # Unpickled from the Tuner's own state (tuner.pkl, written when the sweep started): a restore too.
        self.__dict__.update(state)
        self.mark_restored()

    # -- the sweep's own records ----------------------------------------------------------------------------
    def mark_restored(self) -> None:
        """The records will be read before the next suggestion (what ended after the saved state is there)."""
        self._synced = self._root is None

    def remember_records(self, root: Path) -> None:
        """Point the searcher at `root` and read its finished trials now, before the resumed sweep runs: Ray
        re-runs a trial its last saved state had as running, and the recorder then marks that trial's record
        running again, so by the first suggestion the record may no longer say that the trial had finished."""
        self._root = str(root)
        self._snapshot = finished_records(root)
        self.mark_restored()

    def sync_records(self) -> int:
        """Tell the study every finished trial of the sweep's records (and of the snapshot `remember_records`
        took) it does not know yet; returns how many."""
        self._synced = True
        if self._root is None:
            return 0
        records = {r["trial_id"]: r for r in finished_records(Path(self._root))}
        for record in getattr(self, "_snapshot", []):
            records.setdefault(record["trial_id"], record)
        self._snapshot = []
        objective = Objective(self._metric, self._mode)
        told = 0
        for trial_id, record in sorted(records.items()):
            if trial_id in self._completed_trials:
                continue
            value = objective.best_epoch(record.get("history") or [])[1]
            told += self._tell(trial_id, record.get("config") or {}, value, record["status"] == "failed")
        if told:
            log.info("TPE searcher: learned %d finished trials from %s", told, self._root)
        return told

    def known_trials(self) -> set[str]:
        """Ids of this sweep's trials whose outcome the study holds."""
        return set(self._completed_trials)

    def _tell(self, trial_id: str, config: dict, value: float | None, failed: bool) -> int:
        state = TrialState.FAIL if failed else TrialState.COMPLETE if value is not None else TrialState.PRUNED
        ot_trial = self._ot_trials.get(trial_id)
        if ot_trial is None and not config:  # a restored trial removed before it ran: nothing to learn
            return 0
        try:
            if ot_trial is not None:  # suggested by this searcher: still running in its study
                self._ot_study.tell(ot_trial, value if state == TrialState.COMPLETE else None, state=state)
            else:  # from before a restore whose state never saw it
                params = {k: config[k] for k in self._space}
                self.add_evaluated_point(params, value if value is not None else math.nan, error=failed,
                                         pruned=state == TrialState.PRUNED)
        except (KeyError, ValueError, RuntimeError) as e:  # a config outside the space, a NaN value...
            log.warning("the TPE searcher could not learn trial %s: %s", trial_id, e)
            return 0
        self._completed_trials.add(trial_id)
        return 1


def finished_records(root: Path) -> list[dict]:
    """The readable records under `root`/trials whose status is one the searcher learns from (a record half-written
    when a driver was killed is skipped: that trial runs again)."""
    from tsweep.search.records import read_trials

    return [r for r in read_trials(root) if r.get("status") in FINISHED and r.get("trial_id")]


def config_of(result: dict) -> dict:
    """A trial's config from a Ray result, nested ("config": {...}) or flattened ("config/key")."""
    if isinstance(result.get("config"), dict):
        return result["config"]
    return {k.split("/", 1)[1]: v for k, v in result.items() if k.startswith("config/")}
