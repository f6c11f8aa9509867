"""`tsweep demo` (what `make demo` runs): a complete sweep on a generated dataset, offline, in minutes.

It tries ImageNet weights first (users with internet get the real thing) and falls back to random init
with a notice; then a small ASHA sweep, the leaderboard, the exported winner and a few predictions.
"""

from __future__ import annotations

import os
import secrets
import time
from pathlib import Path
from typing import Callable

from tsweep.errors import SweepConfigError

DEMO_SPACE = "demo"


# Real ImageNet weights that may lie beside the project (the ../shared folder of its workplace) or where
# $TSWEEP_DEMO_WEIGHTS points: used when the download fails, before falling back to random init.
LOCAL_WEIGHTS = "mobilenet_v2_0.35_224_no_top.h5"


def local_weights() -> Path | None:
    candidates = [os.environ.get("TSWEEP_DEMO_WEIGHTS", ""),
                  str(Path(__file__).resolve().parents[2] / "shared" / "weights" / LOCAL_WEIGHTS)]
    return next((Path(c) for c in candidates if c and Path(c).is_file()), None)


def demo_weights(progress: Callable[[str], None]) -> str:
    """"imagenet" if Keras can download them, else a local copy of the same weights, else "none"."""
    from tsweep.spaces.space import load_space
    from tsweep.trainers.pretrained import build_backbone

    fixed = load_space(DEMO_SPACE).fixed
    try:
        build_backbone(fixed["backbone"], fixed["image_size"], weights="imagenet", alpha=fixed["alpha"])
        return "imagenet"
    except SweepConfigError as e:
        reason = str(e).splitlines()[0][:160]
    local = local_weights()
    if local is not None:
        progress(f"NOTICE: ImageNet weights could not be downloaded ({reason}...).\n"
                 f"NOTICE: using the same weights from a local file instead: {local}")
        return str(local)
    progress(f"NOTICE: ImageNet weights are not available here ({reason}...).\n"
             "NOTICE: the demo goes on with random init (--weights none): the sweep, pruning, export and "
             "prediction work the same, but accuracy stays near chance without pretrained features.")
    return "none"


def run_demo(data: str | None = None, results_dir: str = "results", num_samples: int = 8,
             progress: Callable[[str], None] = print) -> int:
    """Run the demo; returns an exit code.

    Args:
        data: an image folder to use instead of the generated one; default None.
        results_dir: where the sweep (and the generated data) go; default "results".
        num_samples: trials in the sweep; default 8.
        progress: where output goes.
    """
    from tsweep.search.cli import show_leaderboard
    from tsweep.search.export import export_winner
    from tsweep.search.predict import predict_files, render_predictions
    from tsweep.search.sweep import SweepOptions, run_sweep
    from tsweep.trainers.synthetic import make_synthetic_dataset

    if data is None:
        data = str(make_synthetic_dataset(Path(results_dir) / "demo-data", num_classes=3))
        progress(f"generated a 3-class dataset of shapes in {data}")
    weights = demo_weights(progress)
    opts = SweepOptions(data=data, space=DEMO_SPACE, overrides={"weights": weights}, num_samples=num_samples,
                        name=time.strftime("demo-%Y%m%d-%H%M%S-") + secrets.token_hex(2), results_dir=results_dir,
                        grace_period=1, reduction_factor=2)
    root = run_sweep(opts, progress)
    progress("\nleaderboard:")
    show_leaderboard(root)
    export = export_winner(root, progress=progress)
    progress(f"\nexported to {export}; predictions on a few images:")
    samples = sorted(p for p in Path(data).rglob("*") if p.suffix.lower() in (".jpg", ".png"))[::37][:4]
    progress(render_predictions(predict_files(export, samples, k=2)))
    progress(f"\ndone. Read it again with: tsweep leaderboard {root}")
    return 0
