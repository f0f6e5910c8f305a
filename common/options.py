"""Typed options: each script's options are one dataclass (common/config.py), every option declared once.

A field is declared with `option(default, help, ...)`:

    @dataclass
    class TrainConfig:
        rank: int = option(16, "LoRA rank r")
        truncate: bool = option(False, "truncate over-long examples instead of dropping them")

and everything else is derived from it:
  - the argparse parser (`build_parser`): `--rank`, the type from the annotation (`int | None`
    accepts an int; a bool becomes `--truncate/--no-truncate`), the default shown in --help;
  - `--config FILE` (YAML/JSON) defaults, checked against the field names (`parse_config`);
  - the recorded run config (`recorded`: the fields with record=True);
  - the sweep's flag tables in common/study/suites.py (the fields with sweep=True).

Old spellings (`deprecated=("--limit",)`) still work for one release and print a one-line
notice saying the new name. Adding an option is one line in one dataclass.
"""
import argparse
import dataclasses
import json
import sys
import types
import typing
from pathlib import Path
from typing import Any, Callable, TypeVar

from common.errors import UserError

T = TypeVar("T")


@dataclasses.dataclass(frozen=True)
class Option:
    help: str
    choices: tuple[Any, ...] | None = None
    sweep: bool = False          # settable per run in a sweep (`--set key=value`, suite files)
    record: bool = True          # part of the run config stored in the tracker (identity of the run)
    group: str | None = None     # options sharing a group are mutually exclusive
    deprecated: tuple[str, ...] = ()   # old option strings, accepted with a notice for one release
    metavar: str | None = None


def option(default: Any, help: str, *, choices: tuple[Any, ...] | None = None, sweep: bool = False,
           record: bool = True, group: str | None = None, deprecated: tuple[str, ...] = (),
           metavar: str | None = None) -> Any:
    """A dataclass field carrying its command-line description (see the module docstring)."""
    meta = {"option": Option(help, choices, sweep, record, group, deprecated, metavar)}
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def options(cls: type) -> list[tuple[dataclasses.Field, Option, type]]:
    """(field, its Option, its value type without None) for each option of a config class."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        if "option" in f.metadata:
            out.append((f, f.metadata["option"], _base_type(hints[f.name])))
    return out


def flag_name(name: str) -> str:
    return "--" + name.replace("_", "-")


def _base_type(hint: Any) -> type:
    """`int | None` -> int; `list[str]` -> list."""
    if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union:
        (inner,) = [a for a in typing.get_args(hint) if a is not type(None)]
        return _base_type(inner)
    return typing.get_origin(hint) or hint


# ---------------------------------------------------------------------------- value conversion

def to_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in ("1", "true", "yes", "on"):
        return True
    if text in ("0", "false", "no", "off"):
        return False
    raise ValueError(f"not a boolean: {value!r}")


def to_int(value: Any) -> int:
    if isinstance(value, bool):
        raise ValueError(f"not an integer: {value!r}")
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return int(str(value).strip())


def to_float(value: Any) -> float:
    if isinstance(value, bool):
        raise ValueError(f"not a number: {value!r}")
    return float(str(value).strip()) if isinstance(value, str) else float(value)


def to_str(value: Any) -> str:
    if isinstance(value, (list, tuple)):  # benchmark: [humaneval, heldout] -> "humaneval,heldout"
        return ",".join(str(v) for v in value)
    return str(value)


CONVERTERS: dict[type, Callable[[Any], Any]] = {bool: to_bool, int: to_int, float: to_float, str: to_str}


def convert(cls: type, name: str, value: Any) -> Any:
    """`value` (from YAML, JSON or `--set`) as the type of `cls.name`; None and 'null' mean the default."""
    if value is None or (isinstance(value, str) and value.strip().lower() in ("", "none", "null")):
        return None
    kind = {f.name: t for f, _, t in options(cls)}[name]
    if kind is list:
        return [str(v) for v in value] if isinstance(value, (list, tuple)) else [str(value)]
    return CONVERTERS[kind](value)


# ---------------------------------------------------------------------------- argparse

class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`error: ... (see --help)`, exit 2) instead of usage dumps."""

    def __init__(self, *args: Any, removed: dict[str, str] | None = None, **kwargs: Any):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)
        self.removed = removed or {}  # option string -> what to do instead

    def error(self, message: str) -> typing.NoReturn:  # type: ignore[override]
        from common.errors import fail
        for old, instead in self.removed.items():
            if message.startswith("unrecognized arguments") and old in message.split():
                fail(f"{old} was removed: {instead}")
        fail(f"{message} (see {self.prog} --help)")


def _deprecated_action(new: str, base: type[argparse.Action]) -> type[argparse.Action]:
    class Deprecated(base):  # type: ignore[valid-type,misc]
        def __call__(self, parser, namespace, values, option_string=None):
            print(f"note: {option_string} is deprecated and will be removed; use {new}", file=sys.stderr)
            super().__call__(parser, namespace, values, option_string)
    return Deprecated


def build_parser(cls: type, description: str, removed: dict[str, str] | None = None) -> Parser:
    """The argparse parser of a config class: one option per field, plus --config."""
    parser = Parser(description=description, removed=removed)
    parser.add_argument("--config", metavar="FILE", help="YAML/JSON file of option defaults (command line wins)")
    groups: dict[str, Any] = {}
    for f, opt, kind in options(cls):
        target = parser
        if opt.group:
            if opt.group not in groups:      # not setdefault: that would add an empty group per option
                groups[opt.group] = parser.add_mutually_exclusive_group()
            target = groups[opt.group]
        kwargs: dict[str, Any] = {"dest": f.name, "help": opt.help}
        if kind is bool:
            kwargs["action"] = argparse.BooleanOptionalAction
        elif kind is list:  # repeatable, and several values at once (--merge shard-*.db)
            kwargs.update(action="extend", nargs="+", metavar=opt.metavar)
        else:
            # Builtin types on the command line, so argparse says "invalid int value: 'x'".
            kwargs.update(type=kind, choices=opt.choices, metavar=opt.metavar)
        default = f.default if f.default is not dataclasses.MISSING else f.default_factory()  # type: ignore[misc]
        kwargs["default"] = None if kind is list else default
        target.add_argument(flag_name(f.name), **kwargs)
        for old in opt.deprecated:
            base = {argparse.BooleanOptionalAction: argparse._StoreTrueAction,
                    "extend": argparse._ExtendAction}.get(kwargs.get("action"), argparse._StoreAction)
            extra = {k: v for k, v in kwargs.items() if k not in ("action", "help", "default")}
            if base is argparse._StoreTrueAction:
                extra = {"dest": f.name}
            target.add_argument(old, action=_deprecated_action(flag_name(f.name), base), help=argparse.SUPPRESS,
                                default=argparse.SUPPRESS, **extra)
    return parser


def read_config_file(path: str) -> dict[str, Any]:
    """A YAML or JSON mapping, keys normalised to underscores."""
    file = Path(path)
    if not file.is_file():
        raise UserError(f"config file {path} not found")
    text = file.read_text()
    try:
        if file.suffix in (".yaml", ".yml"):
            import yaml
            data = yaml.safe_load(text) or {}
        else:
            data = json.loads(text)
    except Exception as e:
        raise UserError(f"config file {path} is not valid {file.suffix.lstrip('.').upper() or 'JSON'}: "
                        f"{' '.join(str(e).split())[:200]}") from e
    if not isinstance(data, dict):
        raise UserError(f"config file {path} must hold a mapping of option names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def parse_config(cls: type[T], argv: list[str] | None, description: str,
                 removed: dict[str, str] | None = None) -> T:
    """Parse argv into `cls`, taking defaults from `--config FILE` when given (the command line wins)."""
    parser = build_parser(cls, description, removed)
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        values = read_config_file(known.config)
        names = {f.name for f, _, _ in options(cls)}
        unknown = sorted(set(values) - names)
        if unknown:
            raise UserError(f"config file {known.config} sets unknown option(s) {', '.join(unknown)}; "
                            "see --help for the names")
        try:
            parser.set_defaults(**{k: convert(cls, k, v) for k, v in values.items()})
        except (TypeError, ValueError) as e:
            raise UserError(f"config file {known.config}: {e}") from e
    namespace = parser.parse_args(argv)
    values = {f.name: getattr(namespace, f.name) for f, _, _ in options(cls)}
    for f, _, kind in options(cls):  # an unused list option is its dataclass default, not None
        if kind is list and values[f.name] is None and f.default_factory is not dataclasses.MISSING:
            values[f.name] = f.default_factory()
    return cls(**values)


def recorded(cfg: Any) -> dict[str, Any]:
    """The fields of a config that identify a run (record=True), as a plain dict."""
    return {f.name: getattr(cfg, f.name) for f, opt, _ in options(type(cfg)) if opt.record}


def sweepable(cls: type) -> dict[str, tuple[type, Any]]:
    """name -> (type, default) of the options a sweep may set."""
    return {f.name: (kind, f.default) for f, opt, kind in options(cls) if opt.sweep}
