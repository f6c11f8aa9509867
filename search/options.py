"""A sweep's options, declared once: the `SweepOptions` dataclass, and the `tsweep run` flags built from it.

Each field carries its help in ``field(metadata=...)`` (through `opt`); `add_option_flags` turns the fields
into argparse flags (a bool that defaults to True becomes ``--no-<name>``) and `options_from_args` reads them
back, so adding an option touches this file only. `sweep.json` stores ``asdict(options)``; `tsweep resume`
rebuilds the dataclass from it, and keys an older sweep did not have take their defaults here.
"""

from __future__ import annotations

import argparse
import dataclasses
import types
import typing
from dataclasses import dataclass, field
from typing import Any

from tsweep.search.objective import Objective
from tsweep.search.searchers import SEARCHES

# The `tsweep run` flags that fix one key of the space (`overrides`): key -> (flag, type, help).
OVERRIDE_FLAGS: dict[str, tuple[str, type, str]] = {
    "epochs": ("--max-epochs", int, "epochs per trial, overriding the space's `epochs`"),
    "backbone": ("--backbone", str, "fix the backbone, overriding the space"),
    "weights": ("--weights", str, "imagenet, none, or a weights file path (overrides the space)"),
    "image_size": ("--image-size", int, "input size in pixels, overriding the space's (default space: 224; 160 "
                   "sweeps 1.3-2x faster, about 1-2 points less accurate: benchmarks/README.md)"),
}


def opt(default: Any = dataclasses.MISSING, help: str = "", *, cli: bool = True, **argparse_kw: Any) -> Any:
    """A SweepOptions field with its CLI help.

    Args:
        default: the default value (MISSING for a required option).
        help: the flag's help; "(default: X)" is added for non-empty defaults.
        cli: False for options that are not a `tsweep run` flag of their own.
        **argparse_kw: passed to ``add_argument`` (choices, metavar).
    """
    meta = {"help": help, "cli": cli, "argparse": argparse_kw}
    if isinstance(default, (dict, list)):  # mutable defaults: a fresh copy per instance
        return field(default_factory=type(default), metadata=meta)
    return field(default=default, metadata=meta)


FORMATS_HELP = ("export formats, comma-separated: keras (always written), saved_model, litert (float32 .tflite), "
                "litert-int8 (full-integer .tflite), onnx; each is checked with its own runtime against the Keras "
                "model; litert and onnx need pip install \"transfer-sweep[litert]\" or \"transfer-sweep[onnx]\"")


DEFAULT_TRIALS = 16  # trials of a sweep given neither --num-samples nor --time-budget


@dataclass(frozen=True)
class SweepOptions:
    # --- what to search --------------------------------------------------------------------------------
    data: str = opt(help="image folder: DIR/<class>/ or DIR/{train,val|validation[,test]}/<class>/")
    space: str = opt("default", "a bundled space name (tsweep spaces) or a YAML file")
    overrides: dict = opt({}, "fixed keys over the space (--backbone, --weights, --max-epochs)", cli=False)
    num_samples: int = opt(0, "trials at most (default: 16, or no limit with --time-budget)", metavar="N")
    search: str = opt("", "how configs are chosen: random, or tpe (Optuna's TPE, learning from the trials so far; "
                      "ASHA still prunes) (default: the space file's `search:`, else random)", choices=SEARCHES)
    time_budget: str = opt("", "wall-time budget of the trials, e.g. 90s, 20m, 1h: no trial starts after it, running "
                           "trials stop at it (their epochs so far count), then the winner is exported",
                           metavar="DURATION")
    warm_start: list[str] = opt([], "earlier sweeps (results/<name> ...) over a compatible space: their finished "
                                "trials inform the search and their best configs are tried first",
                                nargs="+", metavar="SWEEP")
    # --- where results go ------------------------------------------------------------------------------
    name: str = opt("", "results/<name> (default: sweep-<date>-<time>)")
    results_dir: str = opt("results", "parent folder of sweeps: trial records, leaderboards and the export")
    storage: str | None = opt(None, "Ray's checkpoints and experiment state: a path all nodes share, s3://... or "
                              "gs://... (pyarrow filesystems) (default: --results-dir)")
    # --- objective and ASHA ----------------------------------------------------------------------------
    metric: str = opt("val_accuracy", "metric to optimise")
    mode: str = opt("", "direction (default: from the metric's name: min for losses)", choices=("max", "min"))
    grace_period: int = opt(1, "ASHA: epochs every trial runs before it may be stopped")
    reduction_factor: int = opt(3, "ASHA: keep the top 1/N of trials at each rung")
    # --- resources -------------------------------------------------------------------------------------
    cpus_per_trial: float = opt(1.0, "CPUs each trial reserves")
    gpus_per_trial: float = opt(0.0, "GPUs each trial reserves; fractions share a GPU (0.5 = two trials per GPU)")
    address: str | None = opt(None, "Ray cluster: auto, HOST:PORT or ray://HOST:10001 (default: a local Ray)")
    max_failures: int = opt(3, "restarts of a trial after infrastructure failures (a node dying)")
    mixed_precision: bool = opt(False, "float16 compute on GPU trials")
    reuse_workers: bool = opt(True, "start a fresh worker process for every trial (default: trials reuse worker "
                              "processes, so TensorFlow and the data load once per worker)")
    feature_cache: bool = opt(True, "train every trial end to end (default: configs with a frozen prefix train on "
                              "its cached features, or on cached augmented views)")
    cache_memory: str = opt("", "in-memory feature cache per node, e.g. 4GB (default: 25%% of RAM); spills to disk")
    cache_float16: bool = opt(False, "store cached features as float16 (half the memory and disk)")
    cache_disk: str = opt("", "disk budget of the cache root, e.g. 50GB: a sweep start evicts least recently used "
                          "entries over it (default: 20 GB or 25%% of the free disk, whichever is smaller)",
                          metavar="SIZE")
    # --- data ------------------------------------------------------------------------------------------
    val_fraction: float = opt(0.2, "fraction of train split off as validation when there is no val folder")
    seed: int = opt(0, "data split and trial sampling seed")
    cache_dir: str | None = opt(None, "decoded-image cache (default: $TSWEEP_CACHE or ~/.cache/tsweep)")
    # --- the winner ------------------------------------------------------------------------------------
    export: bool = opt(True, "skip retraining and exporting the winner")
    formats: str = opt("keras,saved_model", FORMATS_HELP)
    # --- what transfer gained ----------------------------------------------------------------------------
    baseline: bool = opt(False, "add one trial of small_cnn trained from scratch with the sweep's epoch budget "
                         "(spared by ASHA), to show what transfer gained over it")
    ensemble: int = opt(0, "export the ensemble of up to K top trials' best checkpoints (greedy selection with "
                        "replacement on validation; one model sharing their frozen prefix) when it beats the single "
                        "winner on validation; 0 = off", metavar="K")
    tta: str = opt("none", "test-time augmentation baked into the exported model: flip averages the image and its "
                   "mirror", choices=("none", "flip"))

    def objective(self) -> Objective:
        return Objective(self.metric, self.mode)

    def trial_limit(self) -> int:
        """Ray's num_samples: --num-samples, else 16, or -1 (no limit) when a time budget bounds the sweep."""
        if self.num_samples:
            return self.num_samples
        return -1 if self.time_budget else DEFAULT_TRIALS


def _flag(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(f: dataclasses.Field, hints: dict[str, Any]) -> type:
    """int, float, str, bool or list of a field, looking through ``X | None``."""
    hint = hints[f.name]
    if hint is list or typing.get_origin(hint) is list:
        return list
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        hint = next(a for a in typing.get_args(hint) if a is not type(None))
    return hint


def add_option_flags(parser: argparse.ArgumentParser, cls: type = SweepOptions) -> None:
    """Add one flag per field of `cls` (and the override flags) to `parser`.

    Args:
        parser: the `tsweep run` subparser.
        cls: the options dataclass.
    """
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta = f.metadata
        if not meta.get("cli", True):
            continue
        kind = _base_type(f, hints)
        helptext = meta.get("help", "")
        if kind is bool:
            if f.default:  # on by default: the flag turns it off
                parser.add_argument(_flag("no_" + f.name), dest=f.name, action="store_false", help=helptext)
            else:
                parser.add_argument(_flag(f.name), dest=f.name, action="store_true", help=helptext)
            continue
        if kind is list:  # nargs="+" (in its argparse metadata): a list of strings, [] when the flag is absent
            parser.add_argument(_flag(f.name), dest=f.name, type=str, default=[], help=helptext,
                                **meta.get("argparse", {}))
            continue
        required = f.default is dataclasses.MISSING
        if not required and f.default not in ("", None) and "(default:" not in helptext:
            helptext += f" (default: {f.default})"
        parser.add_argument(_flag(f.name), dest=f.name, type=kind, required=required,
                            default=None if required else f.default, help=helptext, **meta.get("argparse", {}))
    for key, (flag, kind, helptext) in OVERRIDE_FLAGS.items():
        parser.add_argument(flag, dest=f"override_{key}", type=kind, help=helptext,
                            metavar=flag[2:].upper().replace("-", "_"))


def options_from_args(args: argparse.Namespace, cls: type = SweepOptions) -> Any:
    """The options dataclass from parsed `tsweep run` flags (the inverse of `add_option_flags`)."""
    values = {f.name: getattr(args, f.name) for f in dataclasses.fields(cls)
              if f.metadata.get("cli", True) and hasattr(args, f.name)}
    values["overrides"] = {key: getattr(args, f"override_{key}") for key in OVERRIDE_FLAGS
                           if getattr(args, f"override_{key}", None) is not None}
    return cls(**values)


def options_from_dict(values: dict[str, Any], progress: Any = print) -> SweepOptions:
    """The options of a stored sweep (`sweep.json`'s "options"): keys it lacks take today's defaults; keys this
    version does not know (a newer tsweep wrote them) are named and ignored."""
    known = {f.name for f in dataclasses.fields(SweepOptions)}
    unknown = sorted(set(values) - known)
    if unknown:
        progress(f"ignoring options this tsweep does not know: {', '.join(unknown)}")
    return SweepOptions(**{k: v for k, v in values.items() if k in known})
