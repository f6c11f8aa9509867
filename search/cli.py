"""The `tsweep` command: one small function per subcommand, each returning an exit code (`tsweep cache`'s are
in ``search.cache_cli``).

Exit codes: 0 success, 1 a run that finished without a usable result, 2 bad input (the message says which
file or key and the fix).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, Sequence

from tsweep.errors import SweepConfigError
from tsweep.search.cache_cli import add_cache_parser
from tsweep.search.options import FORMATS_HELP, add_option_flags


def log(message: str) -> None:
    print(message, flush=True)


def cmd_run(args: argparse.Namespace) -> int:
    from tsweep.search.options import options_from_args
    from tsweep.search.sweep import run_sweep

    opts = options_from_args(args)
    return finish(run_sweep(opts, progress=log), opts.export)


def finish(root: Path, export: bool) -> int:
    """After the trials: the leaderboard, then the retrained and exported winner."""
    show_leaderboard(root, top=10)
    if not export:
        return 0
    from tsweep.search.export import export_winner

    try:
        out = export_winner(root, progress=log)
    except SweepConfigError as e:  # e.g. every trial failed: the sweep's records stay for reading
        log(f"tsweep: nothing exported: {e}")
        return 1
    log(f"exported the winner to {out}\ntry: tsweep predict {out} IMAGE")
    return 0


def cmd_resume(args: argparse.Namespace) -> int:
    from tsweep.search.resume import resume_sweep

    root, export = resume_sweep(Path(args.sweep), address=args.address, progress=log, trust=args.trust)
    return finish(root, export and not args.no_export)


def show_leaderboard(root: Path, top: int | None = None, fmt: str = "table") -> str:
    from tsweep.search.leaderboard import leaderboard_rows, render
    from tsweep.search.objective import Objective
    from tsweep.search.records import read_sweep, read_trials

    info = read_sweep(root)
    from tsweep.search.baseline import gain_sentence, transfer_gain

    trials, objective = read_trials(root), Objective(info["metric"], info["mode"])
    text = render(leaderboard_rows(trials, objective, info["sampled"], top), fmt)
    gain = gain_sentence(transfer_gain(trials, objective))  # --baseline: "transfer: +x points over ..."
    text += f"\n{gain}" if gain else ""
    print(text, flush=True)
    return text


def cmd_leaderboard(args: argparse.Namespace) -> int:
    from tsweep.search.leaderboard import board, parse_statuses, parse_where, render
    from tsweep.search.reader import read_snapshots

    # Every argument is checked before any sweep is read (which may be a slow cloud listing).
    where = [parse_where(w) for w in args.where]
    statuses = parse_statuses(args.status)
    if args.top is not None and args.top < 1:
        raise SweepConfigError(f"`--top` must be at least 1, got {args.top}")
    snaps, skipped = read_snapshots(args.sweeps)
    result = board(snaps, sort=args.sort, mode=args.mode, statuses=statuses, where=where, top=args.top)
    for message in skipped + [p for s in snaps for p in s.problems] + result.notes:  # stdout stays parseable
        print(f"tsweep: warning: {message}", file=sys.stderr, flush=True)
    print(render(result.rows, args.format), flush=True)
    return 0


def cmd_report(args: argparse.Namespace) -> int:
    from tsweep.search.report import write_report

    out = write_report(args.sweep, out=args.out, max_images=args.max_images, progress=log)
    log(f"wrote {out}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from tsweep.search.export import export_winner

    out = export_winner(Path(args.sweep), trial_id=args.trial, retrain=not args.from_trial, progress=log,
                        formats=args.formats, ensemble=args.ensemble, tta=args.tta)
    log(f"exported to {out}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    from tsweep.search.predict import expand_images, predict_images, render_predictions

    if args.top < 1:
        raise SweepConfigError(f"`--top` must be at least 1, got {args.top}")
    # --model names the model: then every positional argument is an image
    model, inputs = (args.model, [args.export, *args.images]) if args.model else (args.export, args.images)
    if not inputs:
        raise SweepConfigError("no IMAGE given: `tsweep predict EXPORT IMAGE...` or `tsweep predict --model FILE "
                               "IMAGE...`")
    images = expand_images(inputs)
    rows, skipped = predict_images(model, images, k=args.top, tta=args.tta)
    if skipped:  # stderr: stdout stays parseable with --format json|csv
        print(f"tsweep: warning: skipped {len(skipped)} unreadable image(s):\n"
              + "\n".join(f"  {p}: {r}" for p, r in skipped), file=sys.stderr, flush=True)
    if not rows:
        raise SweepConfigError(f"none of the {len(images)} image(s) could be read: see the warnings above")
    print(render_predictions(rows, args.format), flush=True)
    if args.plot:
        from tsweep.search.predict import plot_predictions

        shown = plot_predictions(rows, args.plot)
        more = f" (the first {shown} of {len(rows)})" if shown < len(rows) else ""
        print(f"wrote {args.plot}{more}", file=sys.stderr, flush=True)
    return 0


def cmd_backbones(args: argparse.Namespace) -> int:
    from tsweep.search.leaderboard import render_table
    from tsweep.spaces.backbones import describe

    rows = [{k: (", ".join(v) if isinstance(v, (list, tuple)) else v) for k, v in row.items()}
            for row in describe()]
    print(render_table(rows))
    return 0


def cmd_spaces(args: argparse.Namespace) -> int:
    from tsweep.spaces.space import BUNDLED_DIR, bundled_spaces

    for name, description in bundled_spaces():
        print(f"{name:<20} {description}")
    print(f"\n(files in {BUNDLED_DIR}; pass a name or your own YAML path to `tsweep run --space`)")
    return 0


def cmd_demo(args: argparse.Namespace) -> int:
    from tsweep.search.demo import run_demo

    return run_demo(data=args.data, results_dir=args.results_dir, num_samples=args.num_samples, progress=log)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="tsweep", description="Hyperparameter sweeps of Keras transfer "
                                     "models on Ray Tune with ASHA early stopping.")
    sub = parser.add_subparsers(dest="command", required=True)

    run = sub.add_parser("run", help="run a sweep, print its leaderboard, export the winner")
    add_option_flags(run)  # one flag per SweepOptions field (search.options)
    run.set_defaults(func=cmd_run)

    resume = sub.add_parser("resume", help="continue a sweep whose driver was stopped or killed")
    resume.add_argument("sweep", help="results/<name>")
    resume.add_argument("--address", help="Ray cluster to resume on (default: the sweep's own --address)")
    resume.add_argument("--no-export", action="store_true", help="skip retraining and exporting the winner")
    resume.add_argument("--trust", action="store_true", help="resume a sweep whose files another user owns: resume "
                        "unpickles Ray's state from it (tuner.pkl, searcher state), which runs its writer's code")
    resume.set_defaults(func=cmd_resume)

    board = sub.add_parser("leaderboard", help="ranked trials of one or more sweeps (works while they run)")
    board.add_argument("sweeps", nargs="+", metavar="SWEEP",
                       help="results/<name> folders or their URIs (s3://, gs://, file://)")
    board.add_argument("--top", type=int, help="show the best K trials only (after filtering)")
    board.add_argument("--format", choices=("table", "csv", "json", "markdown", "html"), default="table")
    board.add_argument("--status", help="keep these statuses, e.g. completed,pruned (default: all)")
    board.add_argument("--where", action="append", default=[], metavar="COND",
                       help="keep trials matching key=value, key!=value, key<value, <=, >, >= on a column or any "
                            "hyperparameter; repeatable (all must hold), e.g. --where 'learning_rate<1e-3'")
    board.add_argument("--sort", metavar="METRIC", help="rank by this reported metric, e.g. val_loss "
                       "(default: the sweep's own metric)")
    board.add_argument("--mode", choices=("max", "min"), help="direction (default: the sweep's, or from the "
                       "--sort metric's name: min for losses)")
    board.set_defaults(func=cmd_leaderboard)

    report = sub.add_parser("report", help="one self-contained HTML report of a sweep and its exported winner")
    report.add_argument("sweep", nargs="+", metavar="SWEEP", help="results/<name>; more sweeps add their trials "
                        "and best-so-far curves to the first one's report")
    report.add_argument("--out", help="HTML file to write (default: results/<name>/report.html); its plots "
                        "are also saved as PNGs in <out stem>_files/ beside it")
    report.add_argument("--max-images", type=int, default=8, help="misclassified images shown (default: 8)")
    report.set_defaults(func=cmd_report)

    export = sub.add_parser("export", help="export the winner (or --trial): retrained on train + validation for "
                            "its best epoch count, or its best checkpoint as it is (--from-trial)")
    export.add_argument("sweep", help="results/<name>")
    export.add_argument("--trial", help="trial id to export instead of the best")
    export.add_argument("--from-trial", action="store_true",
                        help="export the trial's best checkpoint as it is, with no retraining")
    export.add_argument("--formats", help=FORMATS_HELP + " (default: the sweep's --formats)")
    export.add_argument("--ensemble", type=int, metavar="K", help="the ensemble of up to K top trials' best "
                        "checkpoints, kept when it beats the single winner on validation; 0 = off (default: the "
                        "sweep's --ensemble)")
    export.add_argument("--tta", choices=("none", "flip"), help="flip: bake the mean of the image and its mirror "
                        "into the model (default: the sweep's --tta)")
    export.set_defaults(func=cmd_export)

    predict = sub.add_parser("predict", help="classify images with an export")
    predict.add_argument("export", metavar="EXPORT", help="results/<name>/export (read in the first format present: "
                         "model.keras, model.export/, model.onnx, model.tflite, model_int8.tflite) or one of its "
                         "model files")
    predict.add_argument("images", nargs="*", metavar="IMAGE",
                         help="image files, folders (searched recursively) or quoted globs like 'photos/**/*.jpg'")
    predict.add_argument("--top", type=int, default=3, help="classes per image (default: 3)")
    predict.add_argument("--format", choices=("table", "json", "csv"), default="table",
                         help="table for people, json or csv for scripts (default: table)")
    predict.add_argument("--model", metavar="FILE", help="the model file to use, e.g. results/<name>/export/"
                         "model.tflite (labels.json and config.json beside it); then EXPORT is an image too")
    predict.add_argument("--tta", choices=("none", "flip"), default="none", help="flip: average each image's "
                         "probabilities with its mirror's (skipped for exports with flip TTA inside; default: none)")
    predict.add_argument("--plot", metavar="FILE.png", help="also write an image of each photo with its top-k bars")
    predict.set_defaults(func=cmd_predict)

    sub.add_parser("backbones", help="list backbones and their freeze cut points").set_defaults(func=cmd_backbones)
    sub.add_parser("spaces", help="list the bundled search spaces").set_defaults(func=cmd_spaces)

    add_cache_parser(sub)

    demo = sub.add_parser("demo", help="offline demo: synthetic data, a small sweep, export, predict")
    demo.add_argument("--data", help="use this image folder instead of generated images")
    demo.add_argument("--results-dir", default="results")
    demo.add_argument("--num-samples", type=int, default=8)
    demo.set_defaults(func=cmd_demo)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    func: Callable[[argparse.Namespace], int] = args.func
    try:
        return func(args)
    except SweepConfigError as e:
        print(f"tsweep: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("tsweep: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
