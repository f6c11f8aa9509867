"""Search spaces: which hyperparameters vary, declared in YAML, parsed and validated here.

A space file is a flat mapping of TrialConfig keys (see ``config.py``) to either a fixed value or one
distribution::

    description: MobileNetV2 at 224 px, from feature extraction to fine-tuning the top blocks
    backbone: mobilenet_v2                      # fixed
    head_size: {choice: [0, 128, 256]}          # one of the values
    dropout: {uniform: [0.0, 0.5]}              # float in [low, high]
    learning_rate: {loguniform: [1.0e-5, 1.0e-2]}
    freeze_cutoff: {randint: [12, 17]}          # integer in [low, high], both included
    class_weight: {choice: [none, balanced]}    # any key, strings too: balanced weights classes n / (k * n_c)
    epochs: {fixed: 12}                         # the same as `epochs: 12`
    search: tpe                                 # optional: the search algorithm (`tsweep run --search`)

Nothing here imports TensorFlow, Ray or the other subpackages: a space is validated (unknown keys, bad
distributions, out-of-range values) before any trial starts. Command-line overrides over a space (`tsweep
run --backbone ...`) are ``spaces.overrides``; compiling a space to Ray Tune's `param_space` is
``search.ray_space.to_ray``, to KerasTuner's HyperParameters ``trainers.hypermodel.to_keras_tuner``.
"""

from __future__ import annotations

import itertools
import random
from dataclasses import dataclass, replace
from pathlib import Path
from types import MappingProxyType
from typing import Any, Mapping

from tsweep.errors import SweepConfigError
from tsweep.spaces.config import FIELDS, TrialConfig, check_keys, coerce

BUNDLED_DIR = Path(__file__).resolve().parent
KINDS = ("choice", "uniform", "loguniform", "randint", "fixed")


@dataclass(frozen=True)
class Dist:
    """One hyperparameter's distribution. `values` holds the choices, the (low, high) bounds or the value."""

    kind: str
    values: tuple

    def candidates(self) -> list:
        """Values worth checking against the key's range: every choice, both bounds, or the fixed value."""
        return list(self.values)

    def sample(self, rng: random.Random) -> Any:
        if self.kind == "choice":
            return rng.choice(self.values)
        if self.kind == "uniform":
            return rng.uniform(*self.values)
        if self.kind == "loguniform":
            lo, hi = self.values
            return lo * (hi / lo) ** rng.random()
        if self.kind == "randint":
            return rng.randint(*self.values)
        return self.values[0]


@dataclass(frozen=True)
class Space:
    """A validated search space.

    Args:
        params: key -> Dist for every key the file sets; other keys keep TrialConfig defaults.
        source: the file it came from (named in errors).
        description: one line shown by `tsweep spaces`.
        search: the file's `search:` key ("" when absent); `search.searchers` checks the name.
    """

    params: Mapping[str, Dist]
    source: str = "<space>"
    description: str = ""
    search: str = ""

    @property
    def sampled(self) -> dict[str, Dist]:
        return {k: d for k, d in self.params.items() if d.kind != "fixed"}

    @property
    def fixed(self) -> dict[str, Any]:
        return {k: d.values[0] for k, d in self.params.items() if d.kind == "fixed"}

    def with_fixed(self, **overrides: Any) -> "Space":
        """A copy with some keys fixed (CLI overrides such as --backbone, --weights, --max-epochs)."""
        source = f"{self.source} (with overrides {', '.join(overrides)})" if overrides else self.source
        params = dict(self.params)
        check_keys(overrides, "command-line override")
        for key, value in overrides.items():
            params[key] = Dist("fixed", (coerce(key, value, f"override `{key}`"),))
        return validated(replace(self, params=MappingProxyType(params), source=source))

    def sample(self, seed: int = 0) -> dict[str, Any]:
        """One config dict drawn without Ray (tests, previews)."""
        rng = random.Random(seed)
        return {k: d.sample(rng) for k, d in self.params.items()}


def parse_dist(key: str, raw: Any, source: str) -> Dist:
    """Parse one entry of a space file into a Dist (values coerced to the key's type)."""
    where = f"{source}: `{key}`"
    if not isinstance(raw, Mapping):
        if isinstance(raw, (list, tuple)):
            raise SweepConfigError(f"{where} is a list; write `{key}: {{choice: [...]}}` to sample from it")
        return Dist("fixed", (coerce(key, raw, source),))
    if len(raw) != 1 or next(iter(raw)) not in KINDS:
        raise SweepConfigError(f"{where} must be a value or a mapping with one of {', '.join(KINDS)}, "
                               f"got {dict(raw)!r}")
    kind, args = next(iter(raw.items()))
    if kind == "fixed":
        return Dist("fixed", (coerce(key, args, source),))
    if kind == "choice":
        if not isinstance(args, list) or not args:
            raise SweepConfigError(f"{where}: `choice` needs a non-empty list, got {args!r}")
        return Dist("choice", tuple(coerce(key, v, source) for v in args))
    if not isinstance(args, list) or len(args) != 2:
        raise SweepConfigError(f"{where}: `{kind}` needs [low, high], got {args!r}")
    if key not in _NUMERIC:
        raise SweepConfigError(f"{where}: `{kind}` needs a numeric key; use `choice` for {key}")
    lo, hi = (coerce(key, v, source) for v in args)
    if kind == "randint" and key not in _INTS:
        raise SweepConfigError(f"{where}: `randint` is for integer keys; use `uniform` for {key}")
    if kind in ("uniform", "loguniform") and key in _INTS:
        raise SweepConfigError(f"{where}: `{kind}` is for float keys; use `randint` for {key}")
    if not lo < hi:
        raise SweepConfigError(f"{where}: `{kind}` needs low < high, got [{lo}, {hi}]")
    if kind == "loguniform" and lo <= 0:
        raise SweepConfigError(f"{where}: `loguniform` needs low > 0, got {lo}")
    return Dist(kind, (lo, hi))


_INTS = {k for k, f in FIELDS.items() if "int" in str(f.type)}
_NUMERIC = _INTS | {k for k, f in FIELDS.items() if "float" in str(f.type)}


def validated(space: Space) -> Space:
    """Check every value a trial could get against TrialConfig's rules; raise naming the file and key.

    Choices are checked exhaustively when their product is small, else each choice against the fixed
    and first values of the others; continuous bounds are checked at both ends.
    """
    keys = list(space.params)
    options = [space.params[k].candidates() for k in keys]
    combos = 1
    for o in options:
        combos *= len(o)
    if combos <= 4096:
        for combo in itertools.product(*options):
            TrialConfig.from_dict(dict(zip(keys, combo)), space.source)
    else:
        base = [o[0] for o in options]
        for i, o in enumerate(options):
            for value in o:
                TrialConfig.from_dict(dict(zip(keys, base[:i] + [value] + base[i + 1:])), space.source)
    return space


def resolve_path(name_or_path: str | Path) -> Path:
    """A space file path, or the name of a bundled space ("default" -> spaces/default.yaml)."""
    path = Path(name_or_path)
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise SweepConfigError(f"space file {path} does not exist: pass a YAML file or one of "
                                   f"{', '.join(n for n, _ in bundled_spaces())} (`tsweep spaces` lists them)")
        return path
    bundled = BUNDLED_DIR / f"{name_or_path}.yaml"
    if not bundled.is_file():
        raise SweepConfigError(f"unknown space {name_or_path!r}: pass a YAML file or one of "
                               f"{', '.join(n for n, _ in bundled_spaces())}")
    return bundled


def read_space_text(path: Path) -> str:
    """A space file's text; an unreadable or binary file is a clear error naming it, not an OSError or a
    UnicodeDecodeError."""
    try:
        data = path.read_bytes()
    except OSError as e:
        raise SweepConfigError(f"space file {path} cannot be read ({e.strerror or e}): check its permissions, "
                               "or pass another --space") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError:
        text = None
    if text is None or "\0" in text:  # an image, an archive, a model file...
        raise SweepConfigError(f"space file {path} is not a text (YAML) file: pass a YAML file or a bundled "
                               "space's name to --space (`tsweep spaces` lists them)")
    return text


def load_space(name_or_path: str | Path = "default") -> Space:
    """Read, parse and validate a space file.

    Args:
        name_or_path: a YAML path, or a bundled space's name (default "default").
    """
    import yaml

    path = resolve_path(name_or_path)
    try:
        raw = yaml.safe_load(read_space_text(path)) or {}
    except yaml.YAMLError as e:
        raise SweepConfigError(f"{path}: not valid YAML ({e})") from None
    if not isinstance(raw, Mapping):
        raise SweepConfigError(f"{path}: a space file must be a mapping of keys to values or distributions")
    description = str(raw.pop("description", ""))
    source = str(path)
    search = raw.pop("search", "")
    if not isinstance(search, str):
        raise SweepConfigError(f"{source}: `search` must be the name of a search algorithm, got {search!r}")
    check_keys(raw, source)
    params = {key: parse_dist(key, value, source) for key, value in raw.items()}
    return validated(Space(MappingProxyType(params), source, description, search.strip().lower()))


def bundled_spaces() -> list[tuple[str, str]]:
    """(name, description) of the space files shipped in spaces/."""
    import yaml

    out = []
    for path in sorted(BUNDLED_DIR.glob("*.yaml")):
        raw = yaml.safe_load(path.read_text()) or {}
        out.append((path.stem, str(raw.get("description", ""))))
    return out
