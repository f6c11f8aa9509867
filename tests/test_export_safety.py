"""Crash-safe exports: a kill between the renames, two exports at once, export.previous kept, clean errors."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from tests.fake_sweeps import TINY, record, sweep_info, write_fake_sweep
from tsweep.errors import SweepConfigError
from tsweep.search.export_swap import EXPORT_COMPLETE, PREVIOUS_DIR, current_export, publish, staging

REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def trained(shapes_dir, cache_dir):
    """A built (untrained) tiny model and the shapes dataset: what write_export needs, in seconds."""
    from tsweep.spaces.config import TrialConfig
    from tsweep.trainers.data import load_dataset
    from tsweep.trainers.model import build_model
    from tsweep.trainers.train import TrainResult

    data = load_dataset(image_size=32, data_dir=str(shapes_dir), val_fraction=0.2, seed=0, cache_dir=str(cache_dir))
    config = TrialConfig.from_dict(TINY)
    return TrainResult(build_model(config, data.num_classes), config, data.class_names, []), data


@pytest.fixture
def quick(monkeypatch):
    """write_export without its per-format parity check (TensorFlow tracing, ~40 s a call on a busy 2-core
    machine): these tests are about the files and the swap, which stay as they are."""
    import tsweep.search.formats as formats
    import tsweep.search.runtimes as runtimes

    monkeypatch.setattr(formats, "portable_model", lambda model, check_images=None: model)
    monkeypatch.setattr(runtimes, "parity", lambda *args: {})
    monkeypatch.setattr(runtimes, "check_parity", lambda figures: None)


def export(root: Path, trained, trial_id: str, lines: list | None = None) -> Path:
    from tsweep.search.export import write_export

    result, data = trained
    metrics = {"trial_id": trial_id, "sweep_best": {"val_accuracy": 0.5, "epoch": 1}, "retrained": False,
               "kept_epoch": 1, "history": []}
    say = lines.append if lines is not None else (lambda _line: None)
    return write_export(root, result, data, metrics, sweep_info(root.name), formats="keras", progress=say)


def exported_trial(folder: Path) -> str:
    return json.loads((folder / "metrics.json").read_text())["trial_id"]


def leftovers(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir() if p.name.startswith(".export.") and p.name != ".export.lock")


def test_a_kill_between_the_renames_leaves_a_complete_export_that_readers_and_the_next_export_find(
        tmp_path, trained, quick, monkeypatch):
    from tsweep.search.predict import open_export

    root = tmp_path / "sweep"
    export(root, trained, "first")
    real_rename = os.rename

    def killed_at_the_second_step(src, dst):
        if Path(dst).name == "export":  # the new export moving in: the old one has just moved out
            raise KeyboardInterrupt("killed")
        return real_rename(src, dst)

    monkeypatch.setattr(os, "rename", killed_at_the_second_step)
    with pytest.raises(KeyboardInterrupt):
        export(root, trained, "second")
    monkeypatch.setattr(os, "rename", real_rename)
    assert not (root / "export").exists()  # the moment of the kill: only the old export, under its parked name
    kept = current_export(root)
    assert kept == root / PREVIOUS_DIR and exported_trial(kept) == "first" and (kept / EXPORT_COMPLETE).is_file()
    _, classes, size = open_export(root / "export")  # `tsweep predict results/<name>/export` still works
    assert len(classes) == 3 and size == 32
    lines: list[str] = []
    export(root, trained, "third", lines)
    assert exported_trial(root / "export") == "third" and exported_trial(root / PREVIOUS_DIR) == "first"
    assert any("restored" in line for line in lines) and any("kept the export it replaced" in line for line in lines)
    assert leftovers(root) == []


def test_two_concurrent_exports_both_finish_and_neither_deletes_the_other(tmp_path, trained, quick, monkeypatch):
    """Both exporters are held inside their format writing at the same time (a barrier), the moment where a
    shared temporary folder would be emptied by the other."""
    import tsweep.search.formats as formats

    root = tmp_path / "sweep"
    both_writing = threading.Barrier(2, timeout=120)
    real_write = formats.write_formats

    def write_together(*args, **kwargs):
        both_writing.wait()
        real_write(*args, **kwargs)
        both_writing.wait()  # both have written their model files before either goes on

    monkeypatch.setattr(formats, "write_formats", write_together)
    errors: list[BaseException] = []

    def run(trial_id: str) -> None:
        try:
            export(root, trained, trial_id)
        except BaseException as e:  # reported below, with the other thread's outcome
            errors.append(e)

    threads = [threading.Thread(target=run, args=(t,)) for t in ("a", "b")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
    assert errors == []
    assert {exported_trial(root / "export"), exported_trial(root / PREVIOUS_DIR)} == {"a", "b"}
    for folder in (root / "export", root / PREVIOUS_DIR):
        assert (folder / EXPORT_COMPLETE).is_file() and (folder / "model.keras").is_file()
    assert leftovers(root) == []


KILL_SCRIPT = """
import os, sys
from pathlib import Path
from tsweep.search.export_swap import publish, staging
root, step = Path(sys.argv[1]), int(sys.argv[2])
calls = [0]
real = os.rename
def rename(src, dst):
    calls[0] += 1
    if calls[0] == step:
        os._exit(9)  # killed: no cleanup of any kind runs
    real(src, dst)
os.rename = rename
with staging(root) as folder:
    (folder / "labels.json").write_text('["new"]')
    (folder / "config.json").write_text("{}")
    publish(root, folder, progress=lambda _line: None)
"""


def fake_export(root: Path, label: str) -> None:
    with staging(root) as folder:
        (folder / "labels.json").write_text(json.dumps([label]))
        (folder / "config.json").write_text("{}")
        publish(root, folder, progress=lambda _line: None)


@pytest.mark.parametrize("step", [1, 2, 3])
def test_a_real_kill_at_each_rename_leaves_the_old_or_the_new_export(tmp_path, step):
    """A process killed (os._exit) at its 1st, 2nd or 3rd rename (previous -> trash, export -> previous,
    new -> export): a reader finds a complete export, and the next export repairs and replaces it."""
    root = tmp_path / "sweep"
    fake_export(root, "oldest")
    fake_export(root, "old")  # so that an export.previous exists and the swap has all three renames
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(root), str(step)], env=env, cwd=REPO)
    assert done.returncode == 9
    labels = json.loads((current_export(root) / "labels.json").read_text())
    assert labels == ["old"]  # the kill came before the new one moved in
    fake_export(root, "next")
    assert json.loads((root / "export" / "labels.json").read_text()) == ["next"]
    assert json.loads((root / PREVIOUS_DIR / "labels.json").read_text()) == ["old"]
    assert leftovers(root) == []  # the dead exporter's staging folder and trash are gone


def test_an_export_of_an_older_tsweep_killed_mid_swap_is_restored(tmp_path):
    """Before this, a kill between the renames left `.export.old` (complete), `.export.tmp` and no `export/`."""
    root = tmp_path / "sweep"
    for folder in (".export.old", ".export.tmp"):
        (root / folder).mkdir(parents=True)
        for name, text in (("labels.json", '["legacy"]'), ("config.json", "{}")):
            (root / folder / name).write_text(text)
    fake_export(root, "new")
    assert json.loads((root / PREVIOUS_DIR / "labels.json").read_text()) == ["legacy"]
    assert leftovers(root) == []


def test_a_staging_folder_of_a_live_exporter_is_never_removed(tmp_path):
    root = tmp_path / "sweep"
    with staging(root) as mine:
        (mine / "model.keras").write_text("being written")
        fake_export(root, "other")  # another exporter swaps (and cleans up) meanwhile
        assert (mine / "model.keras").read_text() == "being written"
    assert not mine.exists()  # the block ended without publishing: its own folder is removed


def test_export_errors_are_clean_and_lose_nothing(tmp_path, trained, quick, monkeypatch):
    from tsweep.search.cli import main

    root = tmp_path / "sweep"
    data = {"data_dir": str(tmp_path / "gone"), "val_fraction": 0.2, "seed": 0, "cache_dir": str(tmp_path)}
    trials = [record("t1", "completed", [0.5, 0.8], budget=2), record("t2", "failed", [], budget=2)]
    trials[1]["history"] = None  # a record holding something else than rows
    write_fake_sweep(root, trials, sweep_info("sweep", data=data, max_epochs=2))
    export(root, trained, "before")
    before = {p.name: p.read_bytes() for p in (root / "trials").iterdir()}
    assert main(["export", str(root), "--trial", "t2"]) == 2  # no metric: a clear error, not a TypeError
    import tsweep.trainers.data as data_module

    def broken(**_kwargs):
        raise RuntimeError("disk on fire")

    monkeypatch.setattr(data_module, "load_dataset", broken)  # any failure in the middle of an export
    with pytest.raises(SweepConfigError, match="exporting .* failed: RuntimeError: disk on fire.*unchanged"):
        from tsweep.search.export import export_winner

        export_winner(root, progress=lambda _line: None)
    assert main(["export", str(root)]) == 2
    assert {p.name: p.read_bytes() for p in (root / "trials").iterdir()} == before
    assert exported_trial(root / "export") == "before"


def test_from_trial_skips_an_unreadable_checkpoint_and_says_so(tmp_path, trained):
    from tsweep.search.export import best_checkpoint
    from tsweep.search.objective import Objective
    from tsweep.trainers.checkpoint import save_checkpoint

    result, _ = trained
    trial_dir = tmp_path / "ray" / "t1"
    rows = [{"epoch": 1, "val_accuracy": 0.6}, {"epoch": 2, "val_accuracy": 0.9}]
    for epoch in (1, 2):
        save_checkpoint(trial_dir / f"checkpoint_{epoch - 1:06d}", result.model, rows[:epoch])
    (trial_dir / "checkpoint_000001" / "weights.npz").write_bytes(b"PK\x03\x04 cut")  # the best one, truncated
    lines: list[str] = []
    chosen = best_checkpoint({"experiment": str(tmp_path / "ray")}, {"trial_id": "t1"}, Objective(), lines.append)
    assert chosen.name == "checkpoint_000000" and "skipping checkpoint checkpoint_000001" in lines[0]
