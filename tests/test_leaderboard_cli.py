"""Reading sweeps: several sweeps in one table, --status/--where filters, --sort, URIs through pyarrow.fs,
and sweeps still being written (a record cut off mid-write, sweep.json missing or half written)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import pytest

from tests.fake_sweeps import PARAMS, record, sweep_info, write_fake_sweep
from tsweep.errors import SweepConfigError
from tsweep.search.leaderboard import Condition, board, parse_statuses, parse_where, render_html
from tsweep.search.reader import read_snapshot, read_snapshots


@pytest.fixture
def two_sweeps(tmp_path: Path) -> tuple[Path, Path]:
    a = write_fake_sweep(tmp_path / "a", [
        record("a1", "completed", [0.5, 0.9], learning_rate=1e-3, optimizer="adam", head_size=0),
        record("a2", "pruned", [0.4], learning_rate=1e-5, optimizer="sgd", head_size=16),
        record("a3", "running", [0.6, 0.7], learning_rate=5e-4, optimizer="adam", head_size=16),
    ])
    b1 = record("b1", "completed", [0.85, 0.95], backbone="vgg16", learning_rate=2e-4, optimizer="adamw")
    for h in b1["history"]:
        h["val_loss"] = 2.0  # the most accurate trial has the worst loss: --sort val_loss must reorder
    info = sweep_info("b")
    info.update(sampled=["backbone", "learning_rate", "optimizer"],
                params={**PARAMS, "backbone": {"kind": "choice", "values": ["vgg16", "resnet50"]}})
    b = write_fake_sweep(tmp_path / "b", [b1, record("b2", "failed", [], backbone="vgg16", learning_rate=1e-2)], info)
    return a, b


def trials_of(result) -> list[str]:
    return [r["trial"] for r in result.rows]


def test_parse_where_operators_and_errors():
    assert parse_where("learning_rate<1e-3") == Condition("learning_rate", "<", "1e-3")
    assert parse_where(" head_size >= 16 ") == Condition("head_size", ">=", "16")
    assert parse_where("optimizer==adam") == Condition("optimizer", "=", "adam")
    assert parse_where("backbone!=vgg16") == Condition("backbone", "!=", "vgg16")
    for bad in ("lr", "=3", "<1e-3"):
        with pytest.raises(SweepConfigError, match=r"`--where` must look like key=value or key<value"):
            parse_where(bad)
    with pytest.raises(SweepConfigError, match="needs a value after the operator"):
        parse_where("lr=")


def test_conditions_compare_numbers_as_numbers_and_text_as_text():
    assert Condition("lr", "<", "1e-3").test(5e-4) and not Condition("lr", "<", "1e-3").test(2e-3)
    assert Condition("lr", "<", "1e-3").test("5e-4")  # a number written as text is still a number
    assert not Condition("head_size", "<", "9").test(16)  # as text "16" < "9" would hold
    assert Condition("optimizer", "=", "adam").test("adam") and not Condition("optimizer", "=", "adam").test("sgd")
    assert Condition("optimizer", "<", "b").test("adam")
    assert Condition("flag", "=", "true").test(True)
    assert not Condition("lr", "<", "1").test(None) and Condition("lr", "!=", "1").test(None)
    assert not Condition("lr", ">", "0").test(float("nan"))


def test_parse_statuses():
    assert parse_statuses("completed, Pruned") == ("completed", "pruned")
    assert parse_statuses(None) == () and parse_statuses("") == ()
    with pytest.raises(SweepConfigError, match="`--status` must be a comma-separated list of running.*'done'"):
        parse_statuses("completed,done")


def test_several_sweeps_in_one_ranked_table(two_sweeps):
    result = board(read_snapshots([str(p) for p in two_sweeps])[0])
    assert trials_of(result) == ["b1", "a1", "a3", "a2", "b2"]
    assert [r["rank"] for r in result.rows] == [1, 2, 3, 4, 5]
    assert [r["sweep"] for r in result.rows] == ["b", "a", "a", "a", "b"]
    assert list(result.rows[0])[:7] == ["rank", "sweep", "trial", "status", "epochs", "val_accuracy", "best_epoch"]
    # backbone is sampled in b and fixed in a: the column shows each trial's own backbone
    assert [r["backbone"] for r in result.rows] == ["vgg16", "mobilenet_v2", "mobilenet_v2", "mobilenet_v2", "vgg16"]
    assert result.rows[-1]["val_accuracy"] is None and result.rows[-1]["status"] == "failed"
    single = board(read_snapshots([str(two_sweeps[0])])[0])
    assert "sweep" not in single.rows[0]  # one sweep: the classic columns


def test_filters_by_status_and_where(two_sweeps):
    snaps = read_snapshots([str(p) for p in two_sweeps])[0]
    assert trials_of(board(snaps, statuses=("completed", "pruned"))) == ["b1", "a1", "a2"]
    assert trials_of(board(snaps, where=[parse_where("backbone=vgg16")])) == ["b1", "b2"]
    assert trials_of(board(snaps, where=[parse_where("learning_rate<1e-3")])) == ["b1", "a3", "a2"]
    both = board(snaps, statuses=("completed",), where=[parse_where("learning_rate<1e-3")])
    assert trials_of(both) == ["b1"] and both.rows[0]["rank"] == 1
    assert trials_of(board(snaps, where=[parse_where("val_accuracy>=0.9")])) == ["b1", "a1"]
    assert trials_of(board(snaps, where=[parse_where("sweep=a"), parse_where("head_size>0")])) == ["a3", "a2"]
    assert trials_of(board(snaps, where=[parse_where("optimizer!=adam")], top=2)) == ["b1", "a2"]
    with pytest.raises(SweepConfigError, match="`--where` key 'lr' is no column or hyperparameter.*learning_rate"):
        board(snaps, where=[parse_where("lr<1")])


def test_sort_by_any_reported_metric(two_sweeps):
    snaps = read_snapshots([str(p) for p in two_sweeps])[0]
    by_loss = board(snaps, sort="val_loss")
    assert by_loss.objective.mode == "min"  # from the metric's name
    assert trials_of(by_loss) == ["a1", "a3", "a2", "b1", "b2"]
    assert by_loss.rows[0]["val_loss"] == pytest.approx(0.2) and "val_accuracy" not in by_loss.rows[0]
    assert trials_of(board(snaps, sort="val_loss", mode="max"))[:2] == ["b1", "a2"]
    assert trials_of(board(snaps, sort="accuracy")) == ["b1", "a1", "a3", "a2", "b2"]
    with pytest.raises(SweepConfigError, match="`--sort` must be a reported metric .*val_accuracy.*got 'val_auc'"):
        board(snaps, sort="val_auc")


def test_sweeps_with_different_metrics_say_which_one_ranks(two_sweeps, tmp_path):
    info = sweep_info("c", metric="val_loss", mode="min")
    c = write_fake_sweep(tmp_path / "c", [record("c1", "completed", [0.99])], info)
    result = board(read_snapshots([str(two_sweeps[0]), str(c)])[0])
    assert result.objective.metric == "val_accuracy" and trials_of(result)[0] == "c1"
    assert "different metrics (a: val_accuracy, c: val_loss)" in result.notes[0] and "--sort" in result.notes[0]


def test_sweep_being_written(tmp_path):
    root = write_fake_sweep(tmp_path / "live", [record("ok", "running", [0.5]), record("ok2", "running", [0.6],
                                                                                     learning_rate=1e-4)])
    (root / "trials" / "cut.json").write_text('{"trial_id": "cut", "status": "runn')  # cut off mid-write
    (root / "trials" / ".ok.json.tmp123").write_text("{")  # atomic_write_json's temp file, mid-flight
    (root / "sweep.json").write_text('{"name": "live", "metric": "val_')  # e.g. a non-atomic copy
    snap = read_snapshot(root)
    assert sorted(t["trial_id"] for t in snap.trials) == ["ok", "ok2"]
    assert len(snap.problems) == 2
    assert "sweep.json is unreadable (partly written or copied?)" in snap.problems[0]
    assert "skipped unreadable trial record" in snap.problems[1] and "cut.json" in snap.problems[1]
    assert snap.info == {} and snap.params() == ["learning_rate"]  # inferred: the config key that differs
    result = board([snap])
    assert result.objective.metric == "val_accuracy" and trials_of(result) == ["ok2", "ok"]
    (root / "sweep.json").unlink()
    assert "has no sweep.json yet" in read_snapshot(root).problems[0]


def test_not_a_sweep_folder(tmp_path):
    s1 = write_fake_sweep(tmp_path / "results" / "s1", [])
    with pytest.raises(SweepConfigError, match=r"is not a sweep folder.*sweeps inside it: s1; pass them all"):
        read_snapshot(tmp_path / "results")
    stray = tmp_path / "results" / "notes.txt"
    stray.write_text("a stray file matched by results/*")
    snaps, skipped = read_snapshots([str(s1), str(stray), str(s1)])
    assert [s.name for s in snaps] == ["s1"] and len(skipped) == 1 and "notes.txt is a file" in skipped[0]
    with pytest.raises(SweepConfigError, match="notes.txt is a file"):
        read_snapshots([str(stray)])
    with pytest.raises(SweepConfigError, match="none of these is a sweep folder"):
        read_snapshots([str(stray), str(tmp_path / "nope")])
    copy = write_fake_sweep(tmp_path / "copy" / "s1", [])  # the same sweep name twice: told apart by location
    assert [s.name for s in read_snapshots([str(s1), str(copy)])[0]] == [str(s1), str(copy)]
    with pytest.raises(SweepConfigError, match="does not exist"):
        read_snapshot(tmp_path / "nope")
    with pytest.raises(SweepConfigError, match="does not exist"):
        read_snapshot("mock:///results/nope")  # a URI goes through pyarrow.fs (its in-memory mock here)
    with pytest.raises(SweepConfigError, match="cannot open nosuchscheme://x"):
        read_snapshot("nosuchscheme://x")


def test_uris_read_through_pyarrow_fs(two_sweeps):
    a, _ = two_sweeps
    local = read_snapshot(a)
    uri = read_snapshot(a.as_uri())  # file:///...
    assert uri.trials == local.trials and uri.info == local.info and uri.name == "a"
    # A filesystem that is not the local disk at all (fsspec's in-memory one behind pyarrow's adapter),
    # standing in for s3:// or gs://.
    pafs = pytest.importorskip("pyarrow.fs")
    memory = pytest.importorskip("fsspec.implementations.memory")
    mem = memory.MemoryFileSystem()
    for path in a.rglob("*.json"):
        mem.pipe(f"/bucket/results/a/{path.relative_to(a).as_posix()}", path.read_bytes())
    remote = read_snapshot("/bucket/results/a", fs=pafs.PyFileSystem(pafs.FSSpecHandler(mem)))
    assert sorted(t["trial_id"] for t in remote.trials) == ["a1", "a2", "a3"] and remote.info == local.info


def test_render_html_escapes_and_marks_status():
    rows = [{"rank": 1, "trial": "<t1>", "status": "pruned", "val_accuracy": 0.5}]

    class Cells(HTMLParser):
        def __init__(self):
            super().__init__()
            self.cells, self.classes = [], []

        def handle_starttag(self, tag, attrs):
            if tag == "td":
                self.classes.append(dict(attrs).get("class"))

        def handle_data(self, data):
            if data.strip():
                self.cells.append(data)

    parser = Cells()
    parser.feed(render_html(rows))
    assert parser.cells == ["rank", "trial", "status", "val_accuracy", "1", "<t1>", "pruned", "0.5"]
    assert parser.classes == ["num", "text", "text status-pruned", "num"]
    assert "<t1>" not in render_html(rows)


def tsweep(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "tsweep.search.cli", *args], capture_output=True, text=True,
                          timeout=120, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})


def test_leaderboard_command_several_sweeps(two_sweeps, tmp_path):
    a, b = two_sweeps
    (b / "trials" / "cut.json").write_text('{"trial_id": "cut"')
    out = tsweep("leaderboard", str(a), b.as_uri(), "--status", "completed,pruned,running",
                 "--where", "learning_rate<1e-3", "--sort", "val_loss", "--format", "json")
    assert out.returncode == 0, out.stderr
    rows = json.loads(out.stdout)  # warnings go to stderr: stdout stays JSON
    assert [(r["sweep"], r["trial"]) for r in rows] == [("a", "a3"), ("a", "a2"), ("b", "b1")]
    assert "tsweep: warning: skipped unreadable trial record" in out.stderr and "cut.json" in out.stderr
    table = tsweep("leaderboard", str(a), str(b), "--top", "2")
    assert table.returncode == 0 and len(table.stdout.strip().splitlines()) == 4
    assert table.stdout.split()[:3] == ["rank", "sweep", "trial"]
    bad = tsweep("leaderboard", str(a), "--where", "lr")
    assert bad.returncode == 2 and bad.stderr.startswith("tsweep: error: `--where` must look like key=value")
