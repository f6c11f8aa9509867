"""Layering: each layer loads only what it needs, checked in a fresh interpreter.

`tsweep.spaces` is declarative: it loads neither TensorFlow, Keras nor Ray, and nothing of `tsweep.trainers`
or `tsweep.search`, even when it loads and validates spaces (backbone cutoffs included). Reading a sweep and
ranking its trials (`search.reader`, `search.leaderboard`) loads neither TensorFlow nor Ray, nor the trainers.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from tests.fake_sweeps import demo_trials, write_fake_sweep

ROOT = Path(__file__).resolve().parents[1]
FRAMEWORKS = ("tensorflow", "keras", "keras_tuner", "ray")


def modules_after(code: str) -> set[str]:
    """The names in sys.modules once `code` has run in a new interpreter (this venv's python)."""
    script = f"{code}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert run.returncode == 0, run.stderr
    return set(json.loads(run.stdout.splitlines()[-1]))


def frameworks(modules: set[str]) -> list[str]:
    return sorted(m for m in modules if m.split(".")[0] in FRAMEWORKS)


def within(modules: set[str], package: str) -> list[str]:
    return sorted(m for m in modules if m == package or m.startswith(package + "."))


def test_spaces_load_no_framework_and_no_other_layer():
    loaded = modules_after(
        "import tsweep.spaces, tsweep.spaces.backbones, tsweep.spaces.config, tsweep.spaces.overrides\n"
        "import tsweep.spaces.space as s\n"
        "from tsweep.errors import SweepConfigError\n"
        "from tsweep.spaces.config import TrialConfig\n"
        "for name, _ in s.bundled_spaces():\n"
        "    s.load_space(name).sample(0)\n"
        "s.load_space('default').with_fixed(backbone='resnet50', freeze_cutoff=4)\n"
        "try:\n"
        "    s.load_space('default').with_fixed(backbone='resnet50', freeze_cutoff=5)\n"
        "    raise AssertionError('resnet50 has 4 cut points, cutoff 5 was accepted')\n"
        "except SweepConfigError:\n"
        "    pass\n"
        "config = TrialConfig.from_dict({'backbone': 'MobileNetV2', 'freeze_fraction': 0.5})\n"
        "assert (config.backbone, config.cutoff(), config.is_feature_extraction()) == ('mobilenet_v2', 8, False)")
    assert "tsweep.spaces.backbones" in loaded
    assert frameworks(loaded) == []
    assert within(loaded, "tsweep.trainers") == [] and within(loaded, "tsweep.search") == []


def test_leaderboard_and_reader_load_neither_tensorflow_nor_ray(tmp_path):
    root = write_fake_sweep(tmp_path / "sweep", demo_trials())
    loaded = modules_after(
        "from tsweep.search.leaderboard import board, render\n"
        "from tsweep.search.reader import read_snapshots\n"
        f"snaps, problems = read_snapshots([{str(root)!r}])\n"
        "rows = board(snaps).rows\n"
        "assert not problems and [r['trial'] for r in rows][:1] == ['t1'], rows\n"
        "render(rows, 'html')")
    assert {"tsweep.search.leaderboard", "tsweep.search.reader"} <= loaded
    assert frameworks(loaded) == []
    assert within(loaded, "tsweep.trainers") == []
