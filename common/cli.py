"""Command-line plumbing shared by the scripts: `--config` files that supply flag defaults.

A YAML or JSON file maps flag names (either `max_seq_len` or `max-seq-len`) to
values; anything given on the command line wins. The resolved namespace is
what gets recorded with the run.
"""
import argparse
import json
from pathlib import Path
from typing import Any

from common.errors import UserError


def read_config_file(path: str) -> dict[str, Any]:
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
        raise UserError(f"config file {path} must hold a mapping of flag names to values")
    return {str(k).replace("-", "_"): v for k, v in data.items()}


def parse_args(parser: argparse.ArgumentParser, argv: list[str] | None = None) -> argparse.Namespace:
    """Parse argv, taking defaults from `--config FILE` when given."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config")
    known, _ = pre.parse_known_args(argv)
    if known.config:
        values = read_config_file(known.config)
        flags = {a.dest for a in parser._actions}
        unknown = sorted(set(values) - flags)
        if unknown:
            raise UserError(f"config file {known.config} sets unknown option(s) {', '.join(unknown)}; "
                            f"see --help for the names")
        parser.set_defaults(**values)
    return parser.parse_args(argv)


class Parser(argparse.ArgumentParser):
    """argparse with one-line errors (`error: ... (see --help)`, exit 2) instead of usage dumps."""

    def __init__(self, *args: Any, **kwargs: Any):
        kwargs.setdefault("formatter_class", argparse.ArgumentDefaultsHelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # type: ignore[override]
        from common.errors import fail
        fail(f"{message} (see {self.prog} --help)")
