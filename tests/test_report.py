"""`tsweep report`: the numbers (rungs, importance, confusion), the page (valid HTML, every plot an embedded
PNG, also saved beside it), a sweep still running, a real tiny export, a headless Chromium screenshot; and
the TensorBoard scalars Ray writes per trial."""

from __future__ import annotations

import base64
import io
import os
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from tests.fake_sweeps import demo_trials, record, sweep_info, tiny_export, write_fake_sweep
from tsweep.errors import SweepConfigError
from tsweep.search import report_stats as stats
from tsweep.search.objective import Objective
from tsweep.search.report import write_report
from tsweep.search.report_html import Section, figure_html, render_page

SECTIONS = ["summary", "leaderboard", "anytime", "curves", "hyperparameters", "importance", "winner", "evaluation",
            "misclassified"]
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
VOID = {"meta", "img", "br", "hr", "link", "input"}


class Page(HTMLParser):
    """Sections, images, notes and text of a page; fails on tags closed out of order."""

    def __init__(self, text: str) -> None:
        super().__init__()
        self.stack: list[str] = []
        self.sections: list[str] = []
        self.images: list[dict] = []
        self.notes: list[str] = []
        self.text: list[str] = []
        self.doctype = ""
        self._in_note = False
        self.feed(text)
        self.close()
        assert not self.stack, f"unclosed tags: {self.stack}"

    def handle_decl(self, decl):
        self.doctype = decl

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "section":
            self.sections.append(attrs["id"])
        if tag == "img":
            self.images.append(attrs)
        self._in_note = tag == "p" and attrs.get("class") == "note"
        if tag not in VOID:
            self.stack.append(tag)

    def handle_endtag(self, tag):
        assert self.stack and self.stack[-1] == tag, f"</{tag}> closes <{self.stack[-1] if self.stack else None}>"
        self.stack.pop()

    def handle_data(self, data):
        self.text.append(data)
        if self._in_note:
            self.notes.append(data)
            self._in_note = False


def png_bytes(src: str) -> bytes:
    assert src.startswith("data:image/png;base64,"), src[:40]
    data = base64.b64decode(src.split(",", 1)[1], validate=True)
    assert data.startswith(PNG_MAGIC)
    with Image.open(io.BytesIO(data)) as image:
        image.verify()
    with Image.open(io.BytesIO(data)) as image:
        assert image.width > 200 and image.height > 150
    return data


# -- the numbers ------------------------------------------------------------------------------------------
def ray_stop_epochs(grace_period: int, reduction_factor: int, max_t: int) -> list[int]:
    """The epochs below max_t at which Ray's own ASHA, built as tsweep builds it (`tuner.make_scheduler`), stops
    a trial that falls behind. For each epoch e a fresh scheduler sees a leader report 1.0 every epoch and a
    follower tie it until it drops to 0.0 at epoch e: Ray compares trials only at a rung, so the follower is
    stopped at e exactly when e is one (at max_t Ray stops every trial, which is no rung)."""
    from ray.tune.schedulers import TrialScheduler

    from tsweep.search.tuner import make_scheduler

    stops = []
    for drop in range(1, max_t):
        scheduler = make_scheduler(max_t, grace_period, reduction_factor)
        scheduler.set_search_properties("val_accuracy", "max")
        leader, follower = SimpleNamespace(trial_id="leader"), SimpleNamespace(trial_id="follower")
        for trial in (leader, follower):
            scheduler.on_trial_add(None, trial)
        for epoch in range(1, drop + 1):
            ahead = scheduler.on_trial_result(None, leader, {"training_iteration": epoch, "val_accuracy": 1.0})
            assert ahead == TrialScheduler.CONTINUE, (grace_period, reduction_factor, max_t, epoch)
            value = 0.0 if epoch == drop else 1.0
            decision = scheduler.on_trial_result(None, follower, {"training_iteration": epoch, "val_accuracy": value})
        if decision == TrialScheduler.STOP:
            stops.append(drop)
    return stops


@pytest.mark.parametrize("grace_period", [1, 2, 3, 5])
@pytest.mark.parametrize("reduction_factor", [2, 3, 4])
def test_asha_rungs_match_ray(grace_period, reduction_factor):
    # max_t below the grace period too: tsweep clamps the grace period to max_t as make_scheduler does
    for max_t in [*range(1, 19), 24, 25, 27, 32, 36]:
        expected = ray_stop_epochs(grace_period, reduction_factor, max_t)
        assert stats.asha_rungs(grace_period, reduction_factor, max_t) == expected, max_t
    # the probe does find Ray's rungs (the comparison above is not [] == [] throughout)
    assert ray_stop_epochs(grace_period, reduction_factor, grace_period * reduction_factor + 1)[0] == grace_period


def test_asha_rungs_of_settings_ray_refuses():
    # check_options never lets these through to Ray (whose scheduler asserts on them); the report shows no rungs
    assert stats.asha_rungs(0, 3, 9) == [] and stats.asha_rungs(1, 1, 9) == []


def test_spearman():
    x = [1e-5, 1e-4, 1e-3, 1e-2]
    assert stats.spearman(x, [0.1, 0.5, 0.6, 0.99]) == pytest.approx(1.0)  # monotonic, not linear
    assert stats.spearman(x, [4, 3, 2, 1]) == pytest.approx(-1.0)
    assert stats.spearman([1, 2, 2, 3], [1, 2, 2, 3]) == pytest.approx(1.0)  # ties get average ranks
    assert stats.spearman([1, 1, 1], [1, 2, 3]) is None and stats.spearman([1, 2], [1, 2]) is None


def test_importance_ranks_what_moves_the_metric():
    trials = []
    for i, (lr, opt, acc) in enumerate([(1e-5, "adam", 0.30), (1e-4, "sgd", 0.50), (1e-3, "adam", 0.80),
                                        (3e-3, "sgd", 0.90), (2e-5, "sgd", 0.31), (2e-3, "adam", 0.85)]):
        trials.append(record(f"t{i}", "completed", [acc], learning_rate=lr, optimizer=opt, dropout=0.1))
    trials.append(record("f", "failed", [], learning_rate=1.0, optimizer="adam"))  # no metric: left out
    rows = stats.importance(trials, ["optimizer", "learning_rate", "dropout"], Objective("val_accuracy"),
                            {"optimizer": "choice", "learning_rate": "loguniform"})
    assert [r["param"] for r in rows] == ["learning_rate", "optimizer", "dropout"]
    lr, opt, drop = rows
    # 3 equal-count ranges of 2 trials each: means 0.305, 0.65, 0.875
    assert lr["groups"] == 3 and lr["spread"] == pytest.approx(0.875 - 0.305) and lr["n"] == 6
    assert lr["spearman"] == pytest.approx(1.0) and lr["best"] == "0.002..0.003"
    assert opt["best"] == "adam" and opt["spread"] == pytest.approx((0.3 + 0.8 + 0.85 - 0.5 - 0.9 - 0.31) / 3)
    assert opt["spearman"] is None  # text values have no rank correlation
    assert drop["spread"] is None and drop["groups"] == 1  # never varied: nothing to compare


def test_confusion_per_class_and_mistakes():
    y_true = [0, 0, 1, 1, 2]
    probs = np.array([[0.9, 0.1, 0], [0.2, 0.7, 0.1], [0, 1, 0], [0.6, 0.4, 0], [0, 0, 1]])
    cm = stats.confusion_matrix(y_true, probs.argmax(1), 3)
    assert cm.tolist() == [[1, 1, 0], [1, 1, 0], [0, 0, 1]]
    rows = stats.per_class(cm, ["a", "b", "c"])
    assert rows[0] == {"class": "a", "precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 2}
    assert rows[2]["precision"] == 1.0 and rows[2]["recall"] == 1.0
    assert stats.per_class(np.array([[1, 0], [1, 0]]), ["x", "y"])[1]["precision"] is None  # never predicted
    assert stats.misclassified(y_true, probs, 5) == [1, 3]  # 0.7 sure, then 0.6 sure
    assert stats.misclassified(y_true, probs, 1) == [1]


# -- the page ---------------------------------------------------------------------------------------------
def test_render_page_is_valid_self_contained_html():
    image = Image.new("RGB", (300, 200), "teal")
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    sections = [Section("one", "First <part>", ["<p>a</p>", figure_html(buf.getvalue(), "alt <x>", "cap & more")]),
                Section("two", "Second", [])]
    page = Page(render_page("report <of> sweep", sections, "2026-01-01"))
    assert page.doctype.lower() == "doctype html" and page.sections == ["one", "two"]
    assert [png_bytes(img["src"]) for img in page.images] == [buf.getvalue()]
    assert page.images[0]["alt"] == "alt <x>"
    assert "First <part>" in page.text and "report <of> sweep" in page.text


def test_report_of_a_running_sweep_shows_what_exists(tmp_path):
    root = write_fake_sweep(tmp_path / "live", demo_trials(), sweep_info("live", status="running"))
    (root / "trials" / "cut.json").write_text('{"trial_id": "cut", "hist')
    out = write_report(root, out=tmp_path / "out" / "live.html", progress=lambda _m: None)
    assert out == tmp_path / "out" / "live.html"
    page = Page(out.read_text())
    assert page.sections == SECTIONS
    assert len(page.images) == 3  # best so far, curves and hyperparameters; nothing exported yet
    saved = sorted((tmp_path / "out" / "live_files").iterdir())
    assert [p.name for p in saved] == ["anytime.png", "curves.png", "hyperparameters.png"]
    assert {png_bytes(img["src"]) for img in page.images} == {p.read_bytes() for p in saved}
    assert sum("No export yet" in n for n in page.notes) == 3
    assert any("skipped unreadable trial record" in n and "cut.json" in n for n in page.notes)
    # a sweep that has just started: no trial, no sweep.json yet
    empty = tmp_path / "empty"
    (empty / "trials").mkdir(parents=True)
    page = Page(write_report(empty, progress=lambda _m: None).read_text())
    assert page.sections == SECTIONS and page.images == []
    assert any("No trial has reported an epoch yet" in n for n in page.notes)
    assert any("has no sweep.json yet" in n for n in page.notes)
    with pytest.raises(SweepConfigError, match="needs a local sweep folder"):
        write_report("s3://bucket/results/x")


# -- a real export ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def exported(tmp_path_factory, shapes_dir, cache_dir) -> Path:
    """A fake sweep over the generated shapes whose winner is really retrained (32 px, 2 epochs) and exported."""
    return tiny_export(tmp_path_factory.getbasetemp() / "tiny-export", shapes_dir, cache_dir)


@pytest.fixture(scope="module")
def report(exported) -> tuple[Path, subprocess.CompletedProcess]:
    run = subprocess.run([sys.executable, "-m", "tsweep.search.cli", "report", str(exported)], capture_output=True,
                         text=True, timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert run.returncode == 0, run.stdout[-2000:] + run.stderr[-3000:]
    return exported / "report.html", run


def test_report_command_writes_one_self_contained_page(report):
    out, run = report
    assert f"wrote {out}" in run.stdout
    text = out.read_text()
    page = Page(text)
    assert page.sections == SECTIONS
    alts = [img["alt"] for img in page.images]
    assert alts[:6] == ["best so far against wall time", "validation curves", "hyperparameters against the best metric",
                        "winner training curves",
                        "confusion matrices", "misclassified images"]
    embedded = [png_bytes(img["src"]) for img in page.images]
    saved = {p.name: p.read_bytes() for p in (out.parent / "report_files").iterdir()}
    assert sorted(saved) == ["anytime.png", "confusion.png", "curves.png", "hyperparameters.png", "misclassified.png",
                             "winner_training.png"]
    assert sorted(embedded) == sorted(saved.values())
    assert "http://" not in text and "https://" not in text and "<script" not in text  # nothing fetched
    words = " ".join(page.text)
    for needle in ("t1", "t2", "t3", "t4", "circles", "squares", "triangles", "precision", "recall",
                   "spread of mean best val_accuracy", "tensorboard --logdir"):
        assert needle in words, needle
    assert not any("No export yet" in n or "Could not" in n for n in page.notes), page.notes


def find_browser() -> str | None:
    for name in ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable"):
        if shutil.which(name):
            return shutil.which(name)
    return None


def test_report_screenshot_in_headless_chromium(report, tmp_path_factory):
    browser = find_browser()
    if browser is None:
        pytest.skip("no Chromium or Chrome on PATH (Debian: apt-get install -y chromium); .ci/run installs it")
    out, _ = report
    shot = tmp_path_factory.getbasetemp() / "report-screenshot.png"
    run = subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                          "--disable-background-networking", "--disable-component-update", "--disable-sync",
                          f"--user-data-dir={tmp_path_factory.mktemp('chromium-profile')}", f"--screenshot={shot}",
                          "--window-size=1280,4000", out.as_uri()], capture_output=True, text=True, timeout=120)
    assert shot.is_file(), run.stderr[-2000:]
    print(f"report screenshot: {shot}")
    with Image.open(shot) as image:
        assert image.size == (1280, 4000)
        pixels = np.asarray(image.convert("L"), dtype=np.float64)
    assert pixels.std() > 20, "the screenshot is (nearly) one colour: the page did not render"
    top, plots = pixels[:200], pixels[800:2400]  # the title and tables, then the figures
    assert (top < 128).mean() > 0.005 and (plots < 250).mean() > 0.05


# -- TensorBoard ------------------------------------------------------------------------------------------
def test_ray_writes_tensorboard_scalars_per_epoch(tmp_path):
    """Ray Tune's default TBXLoggerCallback writes each trial's reported metrics into its trial folder
    (tags ray/tune/<metric>, step = training_iteration = epoch), so tsweep needs no logger of its own."""
    pytest.importorskip("tensorboardX")
    from ray.tune.logger import TBXLoggerCallback
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    try:
        from ray.tune.utils.callback import _create_default_callbacks
    except ImportError:  # private in Ray; the writer itself is still checked below
        _create_default_callbacks = None
    if _create_default_callbacks is not None and os.environ.get("TUNE_DISABLE_AUTO_CALLBACK_LOGGERS") != "1":
        assert any(isinstance(c, TBXLoggerCallback) for c in _create_default_callbacks([]))

    class FakeTrial:  # what the callback touches of a ray.tune Trial
        local_path, evaluated_params, trial_id = str(tmp_path / "t1"), {"learning_rate": 1e-3}, "t1"

        def init_local_path(self):
            Path(self.local_path).mkdir(parents=True, exist_ok=True)

    trial, callback = FakeTrial(), TBXLoggerCallback()
    for epoch, acc in ((1, 0.5), (2, 0.75)):
        row = record("t1", "running", [acc])["history"][0]  # what trial.py reports: one history row
        callback.log_trial_result(epoch, trial, {**row, "epoch": epoch, "training_iteration": epoch})
    callback.log_trial_end(trial)
    events = EventAccumulator(trial.local_path)
    events.Reload()
    tags = set(events.Tags()["scalars"])
    assert {"ray/tune/loss", "ray/tune/accuracy", "ray/tune/val_loss", "ray/tune/val_accuracy"} <= tags
    assert [(s.step, round(s.value, 4)) for s in events.Scalars("ray/tune/val_accuracy")] == [(1, 0.5), (2, 0.75)]
