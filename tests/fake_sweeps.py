"""Sweep folders written the way `tsweep run` writes them (records.write_sweep / atomic_write_json in the
SweepRecorder's record format), without Ray: for leaderboard, report and predict tests. And TrialGate, which
holds real trials of a real sweep at an epoch until a test lets them go.

Not a test module (no test_ prefix): test files import its helpers.
"""

from __future__ import annotations

import shutil
import socket
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable

from tsweep.files import atomic_write_json
from tsweep.search.records import trial_path, write_sweep

# A config that trains in seconds: tiny MobileNetV2, random init, 32 px, 2 epochs.
TINY = {"backbone": "mobilenet_v2", "alpha": 0.35, "weights": "none", "image_size": 32, "batch_size": 16,
        "epochs": 2, "warmup_epochs": 1, "head_size": 0, "dropout": 0.1, "freeze_cutoff": 17, "optimizer": "adam",
        "learning_rate": 3e-3, "augmentation": "none"}
SAMPLED = ["head_size", "dropout", "freeze_cutoff", "optimizer", "learning_rate"]
PARAMS = {"backbone": {"kind": "fixed", "values": ["mobilenet_v2"]}, "head_size": {"kind": "choice", "values": [0, 16]},
          "dropout": {"kind": "uniform", "values": [0.0, 0.3]}, "freeze_cutoff": {"kind": "choice", "values": [17, 14]},
          "optimizer": {"kind": "choice", "values": ["adam", "sgd"]},
          "learning_rate": {"kind": "loguniform", "values": [1e-6, 1e-2]}}


def tiny_space_yaml(description: str, **changes: Any) -> str:
    """TINY as a space file's text (one config), with `changes` (e.g. learning_rate={"choice": [3e-3, 1e-3]})."""
    import yaml

    return yaml.safe_dump({"description": description, **TINY, **changes}, sort_keys=False)


def record(trial_id: str, status: str, accs: list[float], budget: int = 4, **config: Any) -> dict:
    """A trial record as SweepRecorder writes it, with made-up per-epoch metrics."""
    history = [{"epoch": i + 1, "phase": "warmup" if i == 0 else "finetune", "loss": 1.2 - a, "accuracy": a,
                "val_loss": 1.1 - a, "val_accuracy": a, "epoch_time_s": 0.5} for i, a in enumerate(accs)]
    now = time.time()
    return {"trial_id": trial_id, "status": status, "config": {**TINY, "epochs": budget, **config},
            "history": history, "budget": budget, "started": now - 60, "ended": None if status == "running" else now,
            "wall_s": 10.0 * len(accs), "error": "loss became nan" if status == "failed" else None, "node": "127.0.0.1",
            "restarts": 0}


def sweep_info(name: str, data: dict | None = None, metric: str = "val_accuracy", mode: str = "max",
               status: str = "finished", max_epochs: int = 4) -> dict:
    """sweep.json as `run_sweep` writes it."""
    return {"name": name, "created": "2026-01-01T10:00:00", "status": status,
            "options": {"data": (data or {}).get("data_dir", "/data"), "space": "test", "num_samples": 4,
                        "name": name, "metric": metric, "mode": mode, "grace_period": 1, "reduction_factor": 2},
            "data": data or {"data_dir": "/data", "val_fraction": 0.2, "seed": 0, "cache_dir": None},
            "space": "tests/space.yaml", "params": PARAMS, "sampled": SAMPLED, "metric": metric, "mode": mode,
            "max_epochs": max_epochs}


def write_fake_sweep(root: Path, trials: list[dict], info: dict | None = None) -> Path:
    """Write sweep.json (`info`, default `sweep_info(root.name)`) and each trial record; returns root."""
    write_sweep(root, info if info is not None else sweep_info(root.name))
    for t in trials:
        atomic_write_json(trial_path(root, t["trial_id"]), t)
    return root


def demo_trials(prefix: str = "t") -> list[dict]:
    """Four trials: a completed winner, a pruned one (cut at the rung of epoch 1), a running one, a failed one."""
    return [
        record(f"{prefix}1", "completed", [0.5, 0.8], budget=2, learning_rate=3e-3, head_size=0, optimizer="adam"),
        record(f"{prefix}2", "pruned", [0.3], budget=2, learning_rate=1e-6, head_size=16, optimizer="sgd",
               dropout=0.25, freeze_cutoff=14),
        record(f"{prefix}3", "running", [0.4, 0.6], budget=4, learning_rate=5e-4, head_size=16, optimizer="adam",
               dropout=0.05),
        record(f"{prefix}4", "failed", [], budget=2, learning_rate=9e-3, head_size=0, optimizer="sgd"),
    ]


def tiny_export(base: Path, shapes_dir: Path, cache_dir: Path) -> Path:
    """A fake sweep over `shapes_dir` whose winner (TINY) is really retrained and exported; built once per
    `base` (test modules of one session share it). Returns the sweep folder."""
    from tsweep.search.export import export_winner

    root = base / "tiny"
    if (root / "export" / "metrics.json").is_file():
        return root
    data = {"data_dir": str(shapes_dir), "val_fraction": 0.2, "seed": 0, "cache_dir": str(cache_dir)}
    write_fake_sweep(root, demo_trials(), sweep_info("tiny", data=data, max_epochs=4))
    export_winner(root, progress=lambda _line: None)
    return root


class TrialGate:
    """The test side of $TSWEEP_TRIAL_GATE (`tsweep.search.trial.check_in`): a Unix socket every trial of a sweep
    started with `env` checks in with after each epoch but its last, once the driver has recorded that epoch and
    its checkpoint. `hold(gate, trial_id, epoch)` decides, per check-in, whether the trial waits (until
    `release`, or until it is killed) or goes on at once. Tests wait for check-ins (`wait_until`), not for time.

    Args:
        hold: the policy; `gate.check_ins` already ends with this check-in when it is called.
    """

    def __init__(self, hold: Callable[["TrialGate", str, int], bool]) -> None:
        self._hold = hold
        self._dir = Path(tempfile.mkdtemp(prefix="tsg", dir="/tmp"))  # short: a socket path must fit in 107 bytes
        self.path = str(self._dir / "gate")
        self.check_ins: list[tuple[str, int]] = []  # (trial id, epoch), in arrival order
        self.held: dict[str, int] = {}  # trial id -> the epoch it waits at, while it waits
        self._waiting: dict[str, socket.socket] = {}
        self._exited: list[str] = []  # watched processes that ended
        self._changed = threading.Condition()
        self._server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._server.bind(self.path)
        self._server.listen(16)
        self._thread = threading.Thread(target=self._serve, name="trial-gate", daemon=True)
        self._thread.start()

    @property
    def env(self) -> dict[str, str]:
        """The environment a sweep's driver needs (local Ray's workers inherit it)."""
        from tsweep.search.trial import GATE_ENV

        return {GATE_ENV: self.path}

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:  # closed
                return
            data = b""
            while not data.endswith(b"\n"):
                chunk = conn.recv(256)
                if not chunk:
                    break
                data += chunk
            trial_id, epoch = data.decode().split()
            with self._changed:
                self.check_ins.append((trial_id, int(epoch)))
                if self._hold(self, trial_id, int(epoch)):
                    self.held[trial_id] = int(epoch)
                    self._waiting[trial_id] = conn
                else:
                    _answer(conn)
                self._changed.notify_all()

    def watch(self, proc: Any, name: str = "the sweep") -> None:
        """Make `wait_until` fail at once when `proc` (a Popen) ends instead of waiting out its timeout."""
        def wait() -> None:
            proc.wait()
            with self._changed:
                self._exited.append(f"{name} exited with {proc.returncode}")
                self._changed.notify_all()

        threading.Thread(target=wait, name="trial-gate-watch", daemon=True).start()

    def wait_until(self, condition: Callable[["TrialGate"], bool], timeout: float, what: str) -> None:
        """Block until `condition(gate)` holds after a check-in; AssertionError after `timeout` seconds or
        when a watched process ended first."""
        with self._changed:
            if not self._changed.wait_for(lambda: condition(self) or self._exited, timeout):
                raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}; check-ins: {self.check_ins}")
            if not condition(self):
                raise AssertionError(f"{self._exited[0]} before {what}; check-ins: {self.check_ins}")

    def release(self, trial_id: str) -> None:
        """Let a held trial go on."""
        with self._changed:
            self.held.pop(trial_id, None)
            _answer(self._waiting.pop(trial_id))

    def close(self) -> None:
        """Stop accepting check-ins and let every held trial go."""
        try:
            self._server.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self._server.close()
        self._thread.join(timeout=10)
        with self._changed:
            for trial_id in list(self._waiting):
                self.release(trial_id)
        shutil.rmtree(self._dir, ignore_errors=True)

    def __enter__(self) -> "TrialGate":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _answer(conn: socket.socket) -> None:
    try:
        conn.sendall(b"\n")
    except OSError:  # the trial is gone (killed with its node or driver)
        pass
    conn.close()
