"""A config's TOML form: reading a file into tables, a `Config` as tables and as TOML text.

The text `dump_toml` writes (engine units, every default filled) is what a run stores in its
output's `config` attribute; `load_config` reads it back to an equal `Config`.
"""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import tomli_w

from engine.config.errors import ConfigError
from engine.config.schema import Config

_LEADING = ("type",)
_TRAILING = ("activators", "inhibitors", "schedule")


def read_toml(path: Path) -> dict:
    """The tables of the TOML file at `path` (a UTF-8 byte order mark at its start is
    skipped); ConfigError (one line) if it is missing, unreadable or not valid TOML."""
    if path.is_dir():
        raise ConfigError(f"{path}: is a folder; give the config's .toml file")
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file; check the path")
    try:
        text = path.read_text(encoding="utf-8-sig")
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        raise ConfigError(
            f"{path}: invalid TOML at {_where(error, text)}; fix the syntax there"
        ) from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error}); save it as UTF-8") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror}); check the path") from None


def _where(error: tomllib.TOMLDecodeError, text: str) -> str:
    """`line L, column C: <reason>` of a syntax error (the end of file when tomllib says "end
    of document"); Python < 3.14 gives the position only in the message."""
    message = str(error)
    match = re.search(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$", message)
    reason = message[: match.start()] if match else message
    if match and match.group(1):
        return f"line {match.group(1)}, column {match.group(2)}: {reason}"
    return f"line {max(len(text.rstrip().splitlines()), 1)} (end of file): {reason}"


def to_raw(cfg: Config) -> dict:
    """The config as plain tables, as a TOML file reads (engine units, TOML keys such as
    `from`, arrays as lists, so that an override can set one entry: `grid.spacing[1]`), None
    values left out; in each term and source, `type` first and modulators and schedule last."""
    raw = _as_lists(cfg.model_dump(by_alias=True, exclude_none=True))
    for key in ("terms", "sources"):
        raw[key] = [
            {
                **{k: v for k, v in entry.items() if k in _LEADING},
                **{k: v for k, v in entry.items() if k not in _LEADING + _TRAILING},
                **{k: v for k, v in entry.items() if k in _TRAILING},
            }
            for entry in raw[key]
        ]
    return raw


def _as_lists(node):
    """`node` with every tuple (a Config's arrays of numbers) a list, at any depth."""
    if isinstance(node, dict):
        return {key: _as_lists(value) for key, value in node.items()}
    if isinstance(node, list | tuple):
        return [_as_lists(value) for value in node]
    return node


def dump_toml(cfg: Config) -> str:
    """The resolved config (engine units, every default filled) as TOML text;
    `load_config(tomllib.loads(dump_toml(cfg))) == cfg`."""
    return tomli_w.dumps(to_raw(cfg))
