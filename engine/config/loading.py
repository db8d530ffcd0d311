"""Loading a config: from a TOML file, a dict or a Config, with overrides at dotted key paths
(`time.end`, `terms[0].rate`, `terms[0].activators[1].K`) applied to the raw tables before
validation (DESIGN.md sections 2 and 5)."""

from __future__ import annotations

import copy
import os
import re
import tomllib
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from engine.config.errors import ConfigError, config_error, key_path, listing
from engine.config.schema import TAGGED, Config
from engine.config.toml import read_toml, to_raw


def load_config(source, overrides: dict | None = None) -> Config:
    """A validated Config from a TOML file (str or Path), a parsed dict or a Config, with
    `overrides` ({dotted path: value}) applied to the raw tables first.

    Relative file paths in the config are resolved against the config file's folder (the
    working directory for a dict). Raises ConfigError (one line, key path first)."""
    base_dir = None
    if isinstance(source, Config):
        raw = to_raw(source)
    elif isinstance(source, dict):
        raw = copy.deepcopy(source)
    elif isinstance(source, str | os.PathLike):
        path = Path(source)
        raw = read_toml(path)
        base_dir = path.absolute().parent
    else:
        raise ConfigError(
            f"config: expected a path to a .toml file or a table, got {type(source).__name__}; "
            "pass a path or a dict"
        )
    for key, value in (overrides or {}).items():
        _check_named(raw, key)
        set_path(raw, key, copy.deepcopy(value))
    try:
        return Config.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as error:
        raise config_error(error, TAGGED) from None


_NAMED = {
    "species": "species",
    "populations": "population",
    "regions": "region",
    "cells": "cell type",
}
"""Tables of named entries -> what an entry is: an override below a name they lack is a typo
(it would define a new entry with nothing else set), not a way to define one."""


def _check_named(raw: dict, path: str) -> None:
    """ConfigError if override `path` goes below an entry of a named table (`species.IL22.x`)
    that `raw` does not define; setting a whole entry (`species.IL22 = {...}`) defines it."""
    tokens = split_path(path)
    if len(tokens) < 3 or tokens[0] not in _NAMED or not isinstance(tokens[1], str):
        return
    table = raw.get(tokens[0], {})
    if isinstance(table, dict) and tokens[1] not in table:
        raise ConfigError(
            f'{key_path(tokens[:2])}: unknown {_NAMED[tokens[0]]} "{tokens[1]}"; defined: '
            f"{listing(table)}; define it in the config file"
        )


def parse_override(text: str) -> tuple[str, object]:
    """`"time.end=2 h"` -> ("time.end", "2 h"): the value parsed as TOML when it is a TOML
    value (3, 1e-3, true, [1, 2], "2 h"), else the raw string."""
    if "=" not in text:
        raise ConfigError(
            f'{text}: not an override; write KEY=VALUE, e.g. time.end="2 h" or terms[0].rate=3'
        )
    key, value = (part.strip() for part in text.split("=", 1))
    if not key:
        raise ConfigError(f"{text}: no key before '='; write KEY=VALUE, e.g. time.end=\"2 h\"")
    split_path(key)
    try:
        parsed = tomllib.loads(f"v = {value}")
    except tomllib.TOMLDecodeError:
        if value[:1] in "\"'[{" and value:  # meant as TOML, but broken
            raise ConfigError(
                f"{key}: {value} is not a TOML value (a quote or bracket unclosed?); "
                f'write e.g. {key}="2 h" or {key}=[1, 2]'
            ) from None
        return key, value
    return key, parsed["v"] if list(parsed) == ["v"] else value


def split_path(path: str) -> list[str | int]:
    """`terms[0].activators[1].K` -> ["terms", 0, "activators", 1, "K"]."""
    tokens: list[str | int] = []
    for part in path.split("."):
        match = re.fullmatch(r"\s*([^.\[\]\s]+)\s*((?:\[\d+\])*)\s*", part)
        if match is None:
            raise ConfigError(
                f"{path}: not a key path; write names joined by dots with [i] for array entries, "
                "e.g. time.end or terms[0].rate"
            )
        tokens.append(match.group(1))
        tokens.extend(int(index) for index in re.findall(r"\[(\d+)\]", match.group(2)))
    return tokens


def set_path(raw: dict, path: str, value: Any) -> None:
    """Set the key at dotted `path` in the raw tables `raw`, making missing tables on the way;
    ConfigError if the path goes through a value that is not a table or array, or past an
    array's end."""
    tokens = split_path(path)
    node: Any = raw
    for depth, token in enumerate(tokens):
        last = depth == len(tokens) - 1
        above = key_path(tokens[:depth]) or "config"
        if isinstance(token, int):
            if not isinstance(node, list):
                raise ConfigError(f"{above}: not an array, cannot take [{token}]; check {path}")
            if token >= len(node):
                raise ConfigError(
                    f"{key_path(tokens[: depth + 1])}: index out of range, {above} has "
                    f"{len(node)} entries; use an index below {len(node)}"
                )
        else:
            if not isinstance(node, dict):
                raise ConfigError(f"{above}: not a table, cannot set {token}; check {path}")
            if not last and token not in node:
                node[token] = [] if isinstance(tokens[depth + 1], int) else {}
        if last:
            node[token] = value
        else:
            node = node[token]
