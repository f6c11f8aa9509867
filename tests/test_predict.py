"""`tsweep predict` as people use it: files, folders (recursively) and globs; table, JSON and CSV output;
unreadable images skipped with a warning; --plot writes each photo beside its top-k bars."""

from __future__ import annotations

import csv
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from PIL import Image

from tests.fake_sweeps import tiny_export
from tsweep.errors import SweepConfigError
from tsweep.search.predict import expand_images, predict_files, predict_images, render_predictions

ROWS = [("a/one.jpg", [("squares", 0.75), ("circles", 0.2), ("triangles", 0.05)]),
        ("b/two.png", [("circles", 0.5), ("squares", 0.3), ("triangles", 0.2)])]


def touch_image(path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", (8, 8), "red").save(path)
    return path


def test_expand_files_folders_and_globs(tmp_path):
    a = touch_image(tmp_path / "photos" / "a.jpg")
    b = touch_image(tmp_path / "photos" / "sub" / "deeper" / "b.PNG")
    touch_image(tmp_path / "photos" / ".thumbs" / "hidden.jpg")  # hidden folders and files are not photos
    touch_image(tmp_path / "photos" / ".c.jpg")
    (tmp_path / "photos" / "notes.txt").write_text("not an image")
    c = touch_image(tmp_path / "other" / "c.webp")
    photos = tmp_path / "photos"
    assert expand_images([photos]) == [a, b]
    assert expand_images([str(tmp_path / "photos" / "**" / "*.PNG")]) == [b]
    assert expand_images([str(tmp_path / "*")]) == [c, a, b]  # globbed folders (sorted) are searched too
    assert expand_images([c, photos, a]) == [c, a, b]  # order kept, each file once
    assert expand_images([photos / "notes.txt"]) == [photos / "notes.txt"]  # named explicitly: decoding decides
    (tmp_path / "empty").mkdir()
    for bad, message in ((tmp_path / "missing.jpg", "no such image file or folder"),
                         (tmp_path / "empty", "holds no images"), (str(tmp_path / "*.gif"), "no images match")):
        with pytest.raises(SweepConfigError, match=message):
            expand_images([bad])


def test_render_table_json_csv():
    table = render_predictions(ROWS).splitlines()
    assert table[0] == "a/one.jpg" and len(table) == 8
    assert table[1].split() == ["squares", "###############", "75.00%"]
    assert table[3].split()[-1] == "5.00%"
    parsed = json.loads(render_predictions(ROWS, "json"))
    assert parsed[1] == {"image": "b/two.png", "predictions": [{"class": "circles", "probability": 0.5},
                                                               {"class": "squares", "probability": 0.3},
                                                               {"class": "triangles", "probability": 0.2}]}
    lines = list(csv.DictReader(io.StringIO(render_predictions(ROWS, "csv"))))
    assert len(lines) == 6 and lines[0] == {"image": "a/one.jpg", "rank": "1", "class": "squares",
                                            "probability": "0.750000"}
    with pytest.raises(SweepConfigError, match="`--format` must be table, json or csv"):
        render_predictions(ROWS, "xml")


@pytest.fixture(scope="module")
def export(tmp_path_factory, shapes_dir, cache_dir) -> Path:
    """The tiny export test_report.py builds (built here when this module runs alone)."""
    return tiny_export(tmp_path_factory.getbasetemp() / "tiny-export", shapes_dir, cache_dir) / "export"


@pytest.fixture
def photo_folder(tmp_path, shapes_dir) -> Path:
    folder = tmp_path / "photos"
    for name in ("circles", "squares"):
        for src in sorted((shapes_dir / "test" / name).glob("*.jpg"))[:2]:
            (folder / name).mkdir(parents=True, exist_ok=True)
            shutil.copy(src, folder / name / src.name)
    (folder / "broken.jpg").write_bytes(b"\xff\xd8 not really a jpeg")
    return folder


def test_predict_images_skips_unreadable(export, photo_folder):
    from tsweep.search.predict import load_export
    from tsweep.trainers.images import decode_image

    images = expand_images([photo_folder])
    rows, skipped = predict_images(export, images, k=5, batch_size=2)
    assert [r[0] for r in rows] == [str(p) for p in images if p.name != "broken.jpg"]
    assert skipped == [(str(photo_folder / "broken.jpg"), skipped[0][1])] and skipped[0][1]
    model, classes, size = load_export(export)
    for path, preds in rows:
        assert len(preds) == 3  # k is capped at the number of classes
        probs = [p for _, p in preds]
        assert probs == sorted(probs, reverse=True) and sum(probs) == pytest.approx(1.0, abs=1e-4)
        # what the model says of this image alone (batches of 2 with a broken file: a padded, partial batch)
        alone = model.predict(decode_image(Path(path), size)[None].astype("float32"), verbose=0)[0]
        assert dict(preds) == pytest.approx(dict(zip(classes, alone.tolist())), abs=1e-5), path
    with pytest.raises(SweepConfigError, match="cannot read image .*broken.jpg"):
        predict_files(export, images)


def test_predict_command_folder_json_and_plot(export, photo_folder, tmp_path):
    plot = tmp_path / "plots" / "predictions.png"
    out = subprocess.run([sys.executable, "-m", "tsweep.search.cli", "predict", str(export), str(photo_folder),
                          "--format", "json", "--top", "2", "--plot", str(plot)], capture_output=True, text=True,
                         timeout=300, env={**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"})
    assert out.returncode == 0, out.stderr[-3000:]
    rows = json.loads(out.stdout)  # warnings and the plot's path go to stderr
    assert [Path(r["image"]).parent.name for r in rows] == ["circles", "circles", "squares", "squares"]
    library, _ = predict_images(export, expand_images([photo_folder]), k=2)  # what the CLI prints is this
    assert [r["image"] for r in rows] == [path for path, _ in library]
    for row, (_, preds) in zip(rows, library):
        assert [p["class"] for p in row["predictions"]] == [c for c, _ in preds]
        assert [p["probability"] for p in row["predictions"]] == pytest.approx([p for _, p in preds], abs=1e-6)
    assert "tsweep: warning: skipped 1 unreadable image(s)" in out.stderr and "broken.jpg" in out.stderr
    with Image.open(plot) as image:
        assert image.format == "PNG" and image.width > 600 and image.height > 150
