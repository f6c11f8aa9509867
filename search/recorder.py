"""A Ray Tune callback on the driver that keeps `trials/<id>.json` up to date and prints progress."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any, Callable

from ray.tune import Callback

from tsweep.files import atomic_write_json
from tsweep.search.failures import avoid_nodes, faulty_node
from tsweep.search.leaderboard import status_counts
from tsweep.search.objective import Objective
from tsweep.search.records import final_status, read_trials, trial_path
from tsweep.search.trial import ERROR_KEY, NOTE_KEY
from tsweep.spaces.config import TrialConfig

# Per-epoch keys kept in a trial record (Ray adds many bookkeeping fields we do not need).
KEPT = ("epoch", "phase", "loss", "accuracy", "val_loss", "val_accuracy", "val_balanced_accuracy", "epoch_time_s",
        "stage_s", "rss_mb")


class SweepRecorder(Callback):
    """Args:
        root: the sweep folder (results/<name>).
        objective: metric and direction, for the "best so far" in progress lines.
        total: trials the sweep will run at most, for progress lines (<= 0: no limit).
        printer: where progress lines go, default print.
        interval: seconds between progress lines triggered by epoch results, default 10.
        budget: the sweep's `budget.TimeBudget` (progress lines show the time left), default None.
        baseline: the config of the sweep's from-scratch baseline trial (`--baseline`), whose record is marked
            ``"baseline": true``; default None.
        resumed: this driver continues an interrupted sweep (`tsweep resume`): at its first step, records of
            running trials that Ray's restored state does not hold are marked lost (`mark_lost`). Default False.
    """

    def __init__(self, root: Path, objective: Objective, total: int, printer: Callable[[str], None] = print,
                 interval: float = 10.0, budget: Any = None, baseline: dict | None = None,
                 resumed: bool = False) -> None:
        self.resumed = resumed
        self.root = root
        self.objective = objective
        self.total = total
        self.printer = printer
        self.interval = interval
        self.budget = budget
        self.records: dict[str, dict] = {}
        self.started = time.time()
        self.last_print = 0.0
        self.baseline = baseline

    # -- Ray Tune events --------------------------------------------------------------------------------
    def on_step_begin(self, iteration: int, trials: list, **info: Any) -> None:
        if self.resumed:  # once: the restored trials are all there before the first step
            self.resumed = False
            self.mark_lost({t.trial_id for t in trials})

    def mark_lost(self, known: set[str]) -> list[str]:
        """Mark stopped, saying why, the records of running trials Ray does not hold (`known`: its trial ids):
        trials started after Ray last saved its state, before the driver was killed. Ray cannot continue them
        (it starts new trials instead), so they would stay "running" forever. Returns their ids."""
        lost = []
        for record in read_trials(self.root):
            if record.get("status") != "running" or record.get("trial_id") in known:
                continue
            record.update(status="stopped", note="lost: started after Ray last saved the sweep's state, before the "
                          "driver stopped, so `tsweep resume` could not continue it (its epochs so far are kept)")
            record["ended"] = time.time()  # wall_s stays the time it ran, not the time the driver was away
            self.records[record["trial_id"]] = record
            self._save(record)
            lost.append(record["trial_id"])
        if lost:
            self.printer(f"{len(lost)} trial(s) started after Ray last saved the sweep's state cannot continue and are "
                         f"marked stopped: {', '.join(lost)}; Ray starts new trials in their place")
        return lost

    def on_trial_start(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        if record is None:
            config = dict(trial.config)
            record = {"trial_id": trial.trial_id, "status": "running", "config": config, "history": [],
                      "budget": int(config.get("epochs", TrialConfig.epochs)), "started": time.time(), "ended": None,
                      "wall_s": 0.0, "error": None, "nodes": [], "resumed_from": [], "restarts": 0}
            if self.baseline is not None and config == self.baseline:
                record["baseline"] = True
            self.records[trial.trial_id] = record
        else:  # restarted after a failure: keep the history, it continues from the checkpoint
            if record.get("error"):  # a new run: its own outcome decides the status (an earlier OOM is history)
                record.setdefault("earlier_errors", []).append(record["error"])
            record.update(status="running", ended=None, error=None)
        self._save(record)
        self._progress(force=True)

    def on_trial_recover(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        if record is not None:
            record["restarts"] += 1
            record.setdefault("retried_after", []).append(_error_text(trial))  # what Ray retried (search.failures)
            node = faulty_node(_error_text(trial, whole=True))
            if node is not None:  # a file missing there: the next attempt goes elsewhere when it can
                avoided = record.setdefault("avoided_nodes", [])
                if avoid_nodes(trial, avoided + [node]):
                    avoided.append(node)
            record["status"] = "running"
            self._save(record)

    def on_trial_result(self, iteration: int, trials: list, trial: Any, result: dict, **info: Any) -> None:
        record = self._record(trial)
        if result.get("node_id") and result["node_id"] not in record["nodes"][-1:]:
            record["nodes"].append(result["node_id"])  # where each stretch of epochs ran
        if "gpu_fraction" in result:
            record["resources"] = {"gpu_fraction": result["gpu_fraction"], "pid": result.get("pid"),
                                   "cuda_visible_devices": result.get("cuda_visible_devices", "")}
        if "resumed_from" in result:
            record["resumed_from"].append(result["resumed_from"])
        if NOTE_KEY in result:  # e.g. an unreadable checkpoint skipped on restore
            record.setdefault("notes", []).append(result[NOTE_KEY])
            self.printer(f"trial {trial.trial_id}: {result[NOTE_KEY]}")
        if ERROR_KEY in result:
            record["error"] = result[ERROR_KEY]
        else:
            row = {k: result[k] for k in KEPT if k in result}
            row["at"] = round(time.time(), 2)  # when the epoch was recorded: best-so-far against wall time
            # A restored trial reports again from its checkpoint epoch: replace, never duplicate.
            record["history"] = [h for h in record["history"] if h.get("epoch", 0) < row.get("epoch", 0)]
            record["history"].append(row)
        record["wall_s"] = round(time.time() - record["started"], 2)
        self._save(record)
        self._progress()

    def on_trial_complete(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        record["status"] = final_status(len(record["history"]), record["budget"], record["error"] is not None)
        self._end(record)

    def on_trial_error(self, iteration: int, trials: list, trial: Any, **info: Any) -> None:
        record = self._record(trial)
        error = _error_text(trial)
        if record["error"] is None and len(record["history"]) >= record["budget"]:
            # Every epoch was already reported: the trial finished, and only Ray's bookkeeping of it failed
            # (e.g. a resumed sweep whose stale state names a checkpoint since replaced). Keep the result.
            record["status"], record["note"] = "completed", f"finished; Ray then reported: {error}"
        else:
            record["status"], record["error"] = "failed", error
        self._end(record)

    def on_step_end(self, iteration: int, trials: list, **info: Any) -> None:
        """With a time budget, a line at least every minute, so the time left shows during long epochs too."""
        if self.budget is not None and time.time() - self.last_print >= max(60.0, self.interval):
            self._progress(force=True)

    def on_experiment_end(self, trials: list, **info: Any) -> None:
        """A spent time budget ends the experiment without trial-complete events: mark those trials."""
        if self.budget is None or not self.budget.exhausted():
            return  # e.g. Ctrl-C: running trials stay "running", for `tsweep resume`
        for trial in trials:  # a resumed driver has not read every record yet: `_record` reads it from disk
            record = self._record(trial)
            if record is not None and record["status"] == "running":
                done = len(record["history"]) >= record["budget"]
                record["status"] = "completed" if done else "stopped"
                record["note"] = "stopped by the time budget"
                self._end(record)

    # -- helpers --------------------------------------------------------------------------------------
    def _record(self, trial: Any) -> dict | None:
        """The trial's record: in memory, or on disk when this driver resumed someone else's sweep."""
        record = self.records.get(trial.trial_id)
        if record is None:
            path = trial_path(self.root, trial.trial_id)
            if path.is_file():
                record = self.records[trial.trial_id] = json.loads(path.read_text())
        return record

    def _end(self, record: dict) -> None:
        record["ended"] = time.time()
        record["wall_s"] = round(record["ended"] - record["started"], 2)
        self._save(record)
        self._progress(force=True)

    def _save(self, record: dict) -> None:
        atomic_write_json(trial_path(self.root, record["trial_id"]), record)

    def _progress(self, force: bool = False) -> None:
        now = time.time()
        if not force and now - self.last_print < self.interval:
            return
        self.last_print = now
        left = None if self.budget is None else self.budget.remaining()
        self.printer(progress_line(list(self.records.values()), self.objective, self.total,
                                   now - self.started, left))


def progress_line(records: list[dict], objective: Objective, total: int, elapsed: float,
                  left: float | None = None) -> str:
    """"[tsweep 01:23] 2 running, 1 pruned, 3 completed, 0 failed of 8; best val_accuracy 0.91 (id, ep 5)";
    with a time budget (`left` seconds), "; 08:37 left" at the end; `total` <= 0 (no limit) drops "of N"."""
    counts = status_counts(records)
    shown = ("running", "pruned", "completed", "failed") + (("stopped",) if counts.get("stopped") else ())
    parts = ", ".join(f"{counts.get(s, 0)} {s}" for s in shown) + (f" of {total}" if total > 0 else "")
    best_id, best_epoch, best = None, None, None
    for r in records:
        epoch, value = objective.best_epoch(r["history"])
        if value is not None and (best is None or objective.better(value, best)):
            best_id, best_epoch, best = r["trial_id"], epoch, value
    tail = f"; best {objective.metric} {best:.4g} ({best_id}, epoch {best_epoch})" if best is not None else ""
    if left is not None:
        from tsweep.search.budget import format_left

        tail += "; " + format_left(left)
    minutes, seconds = divmod(int(elapsed), 60)
    return f"[tsweep {minutes:02d}:{seconds:02d}] {parts}{tail}"


def _error_text(trial: Any, whole: bool = False) -> str:
    """The last line of a failed trial's traceback (the exception; `whole`: all of it), or a pointer to its
    error file."""
    try:
        text = Path(trial.error_file).read_text().strip().splitlines()
        if whole:
            return "\n".join(text)
        return text[-1] if text else "failed (no error text)"
    except (OSError, TypeError):
        return f"failed (see {getattr(trial, 'path', 'the trial folder')})"
