"""Sweep suites: which train/eval flags each run of a study gets, and how suites expand into runs.

A suite is a YAML/JSON mapping: a user's `--suite-file`, or a built-in one, data/suites/builtin/<name>.yaml
(`--suite NAME`), each read by `read_suite`:

    name: lr-vs-rank                  # recorded as the runs' suite label
    base:                             # flags every run gets
      quant: 16bit
      max_steps: 200
      eval_limit: 40
    axes:                             # list-valued flags: the cartesian product of them
      rank: [8, 16]
      lr: [1e-4, 2e-4]
    groups:                           # optional; each group is a list of alternatives, and one
      - - {quant: 4bit, optim: paged_adamw_8bit}     # alternative sets several flags together
        - {quant: 16bit, optim: adamw}

    # or, instead of base/axes/groups, a composite of built-in suites:
    # parts: [rank, modules, quant]

expands to |rank| x |lr| x (alternatives of group 1) x (group 2) ... runs, in that order
(axes in file order, the last axis varying fastest, then the groups). A flag may appear
in `base` and be overridden by an axis or a group, but not in two axes/groups at once.

Keys are the options marked sweep=True in common/config.py (dashes or underscores), each the
name of the script's own option (`eval_limit` is evaluate.py's `--eval-limit`). Options of
both scripts (model, quant, dataset, seed) go to both; a trained run's evaluation inherits
them from its train run. Values are converted to each option's type, so `lr: 2e-4` (a string
to YAML) and `rank: "16"` both work; a value of null leaves the script's default.

Every run has a deterministic name, `r16-qkvo-16bit-s0-<hash>`, where the hash covers the
train flags that differ from train.py's defaults. The name does not contain the suite: the
same config in two suites (rank 16, qkvo, 16bit is in `rank`, `modules` and `quant`) is one
run, trained and evaluated once, and recorded as a member of each suite (see sweep.py).
The evaluation's name is `<run name>-eval-<hash of the eval flags>`, so changing only the
evaluation settings re-evaluates without retraining.
"""
import itertools
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from common.config import EvalConfig, TrainConfig
from common.errors import UserError
from common.options import CONVERTERS, flag_name, read_config_file, sweepable
from common.tracker import config_hash

# name -> (type, default) of the options a sweep may set, straight from the config classes.
TRAIN_FLAGS: dict[str, tuple[type, Any]] = sweepable(TrainConfig)
_EVAL_OPTIONS = sweepable(EvalConfig)
# Options of both scripts whose evaluate.py default is None ("the adapter's"): a trained run's
# evaluation inherits them from its train run; the base-model evaluation gets them explicitly.
SHARED_FLAGS = tuple(k for k, (_, default) in _EVAL_OPTIONS.items() if k in TRAIN_FLAGS and default is None)
EVAL_FLAGS: dict[str, tuple[type, Any]] = {k: v for k, v in _EVAL_OPTIONS.items() if k not in SHARED_FLAGS}

KNOWN_KEYS = tuple(sorted(set(TRAIN_FLAGS) | set(EVAL_FLAGS)))


def flag_type(key: str) -> type:
    return (TRAIN_FLAGS[key] if key in TRAIN_FLAGS else EVAL_FLAGS[key])[0]


def normalize_key(key: Any, where: str) -> str:
    name = str(key).strip().replace("-", "_")
    if name not in TRAIN_FLAGS and name not in EVAL_FLAGS:
        raise UserError(f"{where}: unknown key {key!r}; known keys: {', '.join(KNOWN_KEYS)}")
    return name


def coerce(key: str, value: Any, where: str) -> Any:
    """`value` as the flag's type; None means 'the script's default'."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    try:
        return CONVERTERS[flag_type(key)](value)
    except (TypeError, ValueError) as e:
        raise UserError(f"{where}: bad value {value!r} for {key} ({e})") from e


def normalize_flags(values: dict[Any, Any], where: str) -> dict[str, Any]:
    if not isinstance(values, dict):
        raise UserError(f"{where} must be a mapping of flag names to values, got {type(values).__name__}")
    out = {}
    for key, value in values.items():
        name = normalize_key(key, where)
        out[name] = coerce(name, value, f"{where}.{name}")
    return out


def parse_set(items: list[str] | None) -> dict[str, Any]:
    """`--set key=value` strings as typed flags (last one wins)."""
    out: dict[str, Any] = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise UserError(f"--set {item!r}: expected key=value, e.g. --set max_steps=50; "
                            f"known keys: {', '.join(KNOWN_KEYS)}")
        name = normalize_key(key, f"--set {item}")
        out[name] = coerce(name, value, f"--set {item}")
    return out


# The central configuration every other one is compared with (report.py): the study's one-axis
# suites vary a single flag around it. A user suite without this config is compared with the base model only.
CENTRAL = {"rank": 16, "modules": "qkvo", "quant": "16bit", "seed": 0}


@dataclass(frozen=True)
class Suite:
    name: str
    base: dict[str, Any] = field(default_factory=dict)
    axes: dict[str, list[Any]] = field(default_factory=dict)
    groups: list[list[dict[str, Any]]] = field(default_factory=list)
    parts: tuple[str, ...] = ()     # a composite suite (like `all`) is the union of these built-in suites


# The built-in suites, one YAML file each, read by the same code as a user's --suite-file.
BUILTIN_DIR = Path(__file__).resolve().parents[2] / "data" / "suites" / "builtin"
SECTIONS = ("name", "base", "axes", "groups", "parts")


def builtin_names() -> list[str]:
    return sorted(path.stem for path in BUILTIN_DIR.glob("*.yaml"))


def builtin_suite(name: str) -> Suite:
    """The built-in suite `name` (data/suites/builtin/<name>.yaml); an unknown name lists the valid ones."""
    if name not in builtin_names():
        raise UserError(f"no built-in suite {name!r}; valid names: {', '.join(builtin_names())} "
                        "(or pass --suite-file FILE)")
    return read_suite(str(BUILTIN_DIR / f"{name}.yaml"))


def load_suite_file(path: str) -> Suite:
    """A user's suite file: a built-in suite's name would make its runs' suite label ambiguous."""
    suite = read_suite(path)
    if suite.name in builtin_names():
        raise UserError(f"suite file {path}: name {suite.name!r} is a built-in suite (run it with --suite "
                        f"{suite.name}); choose another name")
    return suite


def suite_parts(suite: Suite) -> list[Suite]:
    """The suites a sweep of `suite` runs: itself, or for a composite its parts' (flattened)."""
    return [leaf for part in suite.parts for leaf in suite_parts(builtin_suite(part))] if suite.parts else [suite]


def read_suite(path: str) -> Suite:
    data = read_config_file(path)
    where = Path(path).name
    unknown = sorted(set(data) - set(SECTIONS))
    if unknown:
        raise UserError(f"suite file {path}: unknown section(s) {', '.join(unknown)}; expected {', '.join(SECTIONS)}")
    name = str(data.get("name") or Path(path).stem).strip()
    if not name or any(c.isspace() for c in name) or "," in name:
        raise UserError(f"suite file {path}: name {name!r} must be non-empty, without spaces or commas")
    if "parts" in data:
        return read_composite(path, name, data)
    base = normalize_flags(data.get("base") or {}, f"{where}: base")
    suite = Suite(name, base, read_axes(path, data.get("axes") or {}), read_groups(path, data.get("groups") or []))
    expand(suite)  # reject conflicts now, with the file's name in the message
    return suite


def read_composite(path: str, name: str, data: dict[str, Any]) -> Suite:
    parts = data["parts"]
    if set(data) - {"name", "parts"} or not isinstance(parts, list) or not parts:
        raise UserError(f"suite file {path}: parts must be a non-empty list of built-in suite names, and a suite "
                        "with parts has no base, axes or groups")
    for part in parts:
        builtin_suite(str(part))  # an unknown part is an error now, listing the valid names
    return Suite(name, parts=tuple(str(p) for p in parts))


def read_axes(path: str, axes_raw: Any) -> dict[str, list[Any]]:
    where = Path(path).name
    if not isinstance(axes_raw, dict):
        raise UserError(f"suite file {path}: axes must map flag names to lists of values")
    axes = {}
    for key, values in axes_raw.items():
        name = normalize_key(key, f"{where}: axes")
        if not isinstance(values, list) or not values:
            raise UserError(f"suite file {path}: axes.{key} must be a non-empty list of values")
        axes[name] = [coerce(name, v, f"{where}: axes.{name}") for v in values]
    return axes


def read_groups(path: str, groups_raw: Any) -> list[list[dict[str, Any]]]:
    if not isinstance(groups_raw, list) or not all(isinstance(g, list) and g for g in groups_raw):
        raise UserError(f"suite file {path}: groups must be a list of groups, each a non-empty list of "
                        "mappings, e.g. groups: [[{quant: 4bit, optim: paged_adamw_8bit}, {quant: 16bit}]]")
    return [[normalize_flags(alt, f"{Path(path).name}: groups[{i}][{j}]") for j, alt in enumerate(g)]
            for i, g in enumerate(groups_raw)]


def expand(suite: Suite) -> list[dict[str, Any]]:
    """The flag sets of a (non-composite) suite: base + each combination of axes and group alternatives."""
    owners: dict[str, str] = {}
    for key in suite.axes:
        owners[key] = f"axes.{key}"
    for i, group in enumerate(suite.groups):
        for key in sorted({k for alt in group for k in alt}):
            if key in owners:
                raise UserError(f"suite {suite.name}: {key} is set by both {owners[key]} and groups[{i}]; "
                                "a flag may vary in only one place")
            owners[key] = f"groups[{i}]"
    axis_items = [[(key, v) for v in values] for key, values in suite.axes.items()]
    runs = []
    for combo in itertools.product(*axis_items, *suite.groups):
        flags = dict(suite.base)
        for part in combo:
            flags.update(part if isinstance(part, dict) else [part])
        runs.append(flags)
    return runs


def canonical(flags: dict[str, Any], table: dict[str, tuple[type, Any]]) -> dict[str, Any]:
    """The flags of `table` that differ from the script's default (None = default), sorted."""
    return {k: flags[k] for k in sorted(flags)
            if k in table and flags[k] is not None and flags[k] != table[k][1]}


def train_name(flags: dict[str, Any]) -> str:
    """`r16-qkvo-16bit-s0-<hash of the non-default train flags>`: same config, same name."""
    def get(key: str) -> Any:
        return flags[key] if flags.get(key) is not None else TRAIN_FLAGS[key][1]

    modules = str(get("modules")).replace(",", "+").replace("_proj", "")
    # LoRA variants show in the name (r16-qkvo-16bit-dora-lp16-s0-...); plain LoRA's names are unchanged
    variant = "".join(f"-{tag}" for tag, on in (("rslora", get("rslora")), ("dora", get("dora")),
                                                (get("init"), get("init") != "gaussian")) if on)
    variant += f"-lp{get('lora_plus_ratio'):g}" if get("lora_plus_ratio") else ""
    return (f"r{get('rank')}-{modules}-{get('quant')}{variant}-s{get('seed')}-"
            f"{config_hash(canonical(flags, TRAIN_FLAGS))[:6]}")


def eval_name(prefix: str, flags: dict[str, Any]) -> str:
    return f"{prefix}-eval-{config_hash(canonical(flags, EVAL_FLAGS))[:6]}"


def base_eval_flags(flags: dict[str, Any]) -> dict[str, Any]:
    """The flags of a base-model evaluation: eval flags plus the shared ones (model, quant, ...).

    `--protocol auto` means the adapters' protocol (their training format), so the suite's base model is
    scored under the protocol its adapters are, and their evaluations pair with this one.
    """
    out = {k: v for k, v in flags.items() if k in EVAL_FLAGS or k in SHARED_FLAGS}
    # --format auto (the default) picks by the chat template, as evaluate.py's --protocol auto does for a base
    # model: left auto, the base is scored as its adapters were trained
    if out.get("protocol") in (None, "auto") and flags.get("format") in ("completion", "instruct"):
        out["protocol"] = flags["format"]
    return out


def base_eval_name(flags: dict[str, Any]) -> str:
    shared = {k: flags[k] for k in SHARED_FLAGS if flags.get(k) is not None}
    quant = shared.get("quant", TRAIN_FLAGS["quant"][1])
    digest = config_hash({"shared": canonical(shared, TRAIN_FLAGS), "eval": canonical(flags, EVAL_FLAGS)})[:6]
    return f"base-{quant}-eval-{digest}"


def to_argv(flags: dict[str, Any], table: dict[str, tuple[type, Any]]) -> list[str]:
    """Command-line arguments for the flags of `table` that are set (booleans as --x / --no-x)."""
    argv = []
    for key in sorted(flags):
        value = flags[key]
        if key not in table or value is None:
            continue
        option = flag_name(key)
        if isinstance(value, bool):
            if value or table[key][1]:  # --no-x only where x defaults to on
                argv.append(option if value else "--no-" + option[2:])
        else:
            argv += [option, format_value(value)]
    return argv


def format_value(value: Any) -> str:
    if isinstance(value, float):
        return repr(value)
    return str(value)


def describe(flags: dict[str, Any], base: dict[str, Any]) -> str:
    """The flags that differ from `base`, as `rank=16 quant=4bit` (or `base` when none)."""
    diff = [f"{k}={format_value(flags[k])}" for k in sorted(flags) if flags[k] != base.get(k)]
    return " ".join(diff) or "base"
