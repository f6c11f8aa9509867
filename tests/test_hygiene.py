"""Hygiene: `report` removes only the plots it wrote, credentials inside URIs are never stored or shown, the
Keras pin, the model card's escaping of class names, and a report of a 600-class winner."""

from __future__ import annotations

import json
import re
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from tests.fake_sweeps import demo_trials, sweep_info, write_fake_sweep
from tsweep.files import has_credentials, without_credentials
from tsweep.search.report import write_report

ROOT = Path(__file__).resolve().parents[1]
SECRET = "wJalrXUtnFEMI/K7MDENG+bPxRfiCY"  # AWS secret keys hold "/" and "+"


# -- report files ---------------------------------------------------------------------------------------------
def test_report_removes_only_the_plots_it_wrote(tmp_path):
    root = write_fake_sweep(tmp_path / "s", demo_trials())
    out = tmp_path / "shared" / "index.html"
    files = tmp_path / "shared" / "index_files"
    files.mkdir(parents=True)
    (files / "holiday.png").write_bytes(b"someone else's photo")
    write_report(root, out=out, progress=lambda _m: None)
    wrote = {p.name for p in files.glob("*.png")} - {"holiday.png"}
    assert {"curves.png", "hyperparameters.png"} <= wrote  # its plots (the anytime plot too, when there is one)
    for path in (root / "trials").glob("*.json"):  # the next report has no plot at all
        path.unlink()
    write_report(root, out=out, progress=lambda _m: None)
    assert {p.name for p in files.glob("*.png")} == {"holiday.png"}  # its own stale plots went, nothing else
    assert (files / "holiday.png").read_bytes() == b"someone else's photo"


def test_a_page_names_only_plain_png_files_it_wrote():
    from tsweep.search.report_html import files_written, render_page

    page = render_page("t", [], files=["curves.png", "b.png"])
    assert files_written(page) == ["b.png", "curves.png"]
    forged = page.replace("b.png curves.png", "../x.png .hidden.png a/b.png notes.txt ok.png")
    assert files_written(forged) == ["ok.png"]  # never a path outside the folder, never another kind of file
    assert files_written("<html>someone's page</html>") == []


# -- credentials --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("uri, shown", [
    (f"s3://AKIAEXAMPLE:{SECRET}@bucket/results", "s3://bucket/results"),
    ("s3://bucket/x?region=eu-west-1&access_key=AKIA&secret_key=S&session_token=T",
     "s3://bucket/x?region=eu-west-1&access_key=REDACTED&secret_key=REDACTED&session_token=REDACTED"),
    ("gs://b/x?endpoint_override=http://h:9000&scheme=http", "gs://b/x?endpoint_override=http://h:9000&scheme=http"),
    ("https://u:p@host/f?X-Amz-Signature=zz#top", "https://host/f?X-Amz-Signature=REDACTED#top"),
    ("s3://bucket/a:b@c", "s3://bucket/a:b@c"), ("/local/dir@2", "/local/dir@2"), ("file:///tmp/x", "file:///tmp/x"),
])
def test_credentials_are_stripped_from_uris(uri, shown):
    assert without_credentials(uri) == shown
    assert has_credentials(uri) == (uri != shown)


def test_sweep_json_never_holds_credentials_but_ray_gets_the_full_uri(tmp_path, shapes_dir, cache_dir, monkeypatch):
    import tsweep.search.sweep as sweep
    import tsweep.search.tuner as tuner
    from tsweep.search.sweep import SweepOptions, run_sweep

    storage = f"s3://AKIAEXAMPLE:{SECRET}@bucket/ray?region=us-east-1&secret_key={SECRET}"
    given = {}

    def fake_tuner(opts, space, data_options, root, objective, max_epochs, progress, *rest):
        given.update(storage=tuner.storage_path(opts, root), on_disk=(root / "sweep.json").read_text())

    monkeypatch.setattr(tuner, "run_tuner", fake_tuner)
    monkeypatch.setattr(sweep, "check_storage", lambda storage: None)  # no S3 here: only where it goes matters
    monkeypatch.setattr(sweep, "claim_storage", lambda *args: None)  # nor a bucket to put the claim marker in
    space = tmp_path / "space.yaml"
    space.write_text("backbone: mobilenet_v2\nalpha: 0.35\nweights: none\nimage_size: 32\nepochs: 1\n"
                     "warmup_epochs: 0\nhead_size: 0\naugmentation: none\n")
    root = run_sweep(SweepOptions(data=str(shapes_dir), space=str(space), name="creds", num_samples=1,
                                  results_dir=str(tmp_path / "results"), storage=storage, export=False),
                     progress=lambda _m: None)
    assert given["storage"] == storage  # Ray runs with the credentials it was given
    for text in (given["on_disk"], (root / "sweep.json").read_text()):  # while running, and once finished
        assert SECRET not in text and "AKIAEXAMPLE" not in text
    info = json.loads((root / "sweep.json").read_text())
    assert info["options"]["storage"] == "s3://bucket/ray?region=us-east-1&secret_key=REDACTED"
    assert info["experiment"] == "s3://bucket/ray/creds?region=us-east-1&secret_key=REDACTED"


def test_the_report_and_the_leaderboard_never_show_credentials(tmp_path, capsys):
    from tsweep.errors import SweepConfigError
    from tsweep.search.reader import read_snapshot

    data = {"data_dir": f"s3://AKIAEXAMPLE:{SECRET}@bucket/images", "val_fraction": 0.2, "seed": 0, "cache_dir": None}
    root = write_fake_sweep(tmp_path / "s", demo_trials(), sweep_info("s", data=data))
    page = write_report(root, progress=lambda _m: None).read_text()
    assert SECRET not in page and "s3://bucket/images" in page
    with pytest.raises(SweepConfigError) as caught:  # a URI that cannot be read: the error is shown, not the key
        read_snapshot(f"s3://AKIAEXAMPLE:{SECRET}@tsweep-no-such-bucket-x/results/s?secret_key={SECRET}")
    assert SECRET not in str(caught.value) and "AKIAEXAMPLE" not in str(caught.value)


# -- dependencies -------------------------------------------------------------------------------------------
def test_keras_is_pinned_past_the_safe_mode_bypasses():
    import keras

    (pin,) = re.findall(r'^\s*"(keras\s*[<>=!~][^"]*)"', (ROOT / "pyproject.toml").read_text(), re.MULTILINE)
    assert re.fullmatch(r"keras>=3\.(1[4-9]|[2-9]\d)(\.\d+)?", pin.replace(" ", "")), pin
    assert tuple(int(p) for p in keras.__version__.split(".")[:2]) >= (3, 14)


# -- model card ---------------------------------------------------------------------------------------------
NASTY = ["a|b", "*bold*", "<script>alert(1)</script>", "two\nlines", "[link](http://x)", "# heading", "under_score",
         "`code`"]


def card(class_names: list[str]) -> str:
    from tsweep.search.model_card import model_card

    config = SimpleNamespace(to_dict=lambda: {"backbone": "mobilenet_v2", "image_size": 32, "weights": "w|x.h5"})
    data = SimpleNamespace(source="/data", class_names=class_names, summary=lambda: "3 classes")
    metrics = {"trial_id": "t1", "kept_epoch": 2, "test": {"accuracy": 0.9}, "sweep_best": {"val_accuracy": 0.8}}
    return model_card(SimpleNamespace(config=config), data, metrics, {"name": "s"})


def test_the_model_card_shows_class_names_as_text():
    markdown_it = pytest.importorskip("markdown_it")
    text = card(NASTY)
    rendered = markdown_it.MarkdownIt("commonmark").enable("table").render(text)
    assert "<script>" not in rendered and "<em>" not in rendered and "<a href" not in rendered
    assert rendered.count("<h1>") == 1 and "<h1>heading" not in rendered  # one title, no heading from a class
    line = next(ln for ln in text.splitlines() if ln.startswith("- classes"))
    plain = markdown_it.MarkdownIt("commonmark").renderInline(line)
    for name in NASTY:  # each name reads back as itself (the newline as a space)
        assert name.replace("\n", " ").replace("<", "&lt;").replace(">", "&gt;") in plain, (name, plain)
    assert "<td>w|x.h5</td>" in rendered  # a "|" in a value stays inside its table cell


def test_the_model_card_code_stays_code_whatever_the_class_names():
    from tsweep.search.model_card import snippet

    code = snippet("keras", 32, ["cat", "dog\nimport os; os.system('x')"])
    compile(code, "snippet", "exec")
    assert "\nimport os;" not in code  # a newline in a class name cannot start a line of code


# -- 600 classes --------------------------------------------------------------------------------------------
def test_a_report_of_600_classes_shows_its_top_confusions(tmp_path):
    from tsweep.search.report_html import Figures, Section, render_page
    from tsweep.search.report_winner import MAX_DRAWN_CLASSES, Evaluation, evaluation_blocks, mistake_blocks

    rng = np.random.default_rng(0)
    n, images = 600, 1800
    y = rng.integers(0, n, images)
    probs = rng.dirichlet(np.full(n, 0.05), images).astype("float32")
    probs[np.arange(images // 2), y[: images // 2]] += 1.0  # half right, half wherever the noise says
    probs[0:30, 7] += 3.0  # a confusion that stands out: 30 images predicted as class 7
    y[0:30] = 3
    probs /= probs.sum(axis=1, keepdims=True)
    names = [f"class <{i}>" for i in range(n)]
    ev = Evaluation(names, {"test": (np.zeros((images, 8, 8, 3), np.uint8), y, probs)})
    figures = Figures()
    start = time.perf_counter()
    blocks = evaluation_blocks(ev, figures, full_data=False) + mistake_blocks(ev, figures, 4)
    page = render_page("600", [Section("evaluation", "Evaluation", blocks)])
    assert time.perf_counter() - start < 60
    assert n > MAX_DRAWN_CLASSES and "confusion.png" not in figures.items and "misclassified.png" in figures.items
    assert "the 20 most frequent confusions of 600 classes" in page
    first = re.search(r'<table class="confusions"><thead>.*?</thead><tbody><tr>(.*?)</tr>', page).group(1)
    assert "class &lt;3&gt;" in first and "class &lt;7&gt;" in first and ">30<" in first  # the largest cell first
    assert page.count("<tr>") > 600  # per-class precision and recall of every class
