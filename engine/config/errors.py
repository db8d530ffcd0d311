"""The config layer's error: one line naming the key, what is wrong and the fix.

Validators raise `fail(message, at)`; pydantic collects it with the location of the table it
was raised in, and `config_error` turns the first collected error into one `ConfigError` line:
`<key path>: <what is wrong>; <the fix>`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from pydantic import ValidationError
from pydantic_core import PydanticCustomError


class ConfigError(ValueError):
    """An invalid config, as one line: `<key path>: <what is wrong>; <the fix>`."""


def fail(message: str, at: str = "") -> PydanticCustomError:
    """A validator's error carrying `message` verbatim and, in `at`, the key path below the
    location pydantic reports (e.g. the unknown key itself)."""
    return PydanticCustomError("ilsim", "{message}", {"message": message, "at": at})


def show(value: Any) -> str:
    """A config value as a message shows it: TOML's true/false, quoted strings, "a table"."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return str(value)


def _natural(name: str) -> list:
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def listing(names: Iterable[str]) -> str:
    """Names in natural order (IL2 before IL10), comma-separated; "none" if there are none."""
    names = list(names)
    return ", ".join(sorted(names, key=_natural)) if names else "none"


def key_part(key: str) -> str:
    """One key of a key path: bare when TOML allows, else a quoted TOML string."""
    if re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return key
    out = []
    for char in key:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def key_path(parts: Iterable[str | int]) -> str:
    """Key path of `parts` (names and list indices): `terms[2].species`."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.startswith("["):
            text += part
        else:
            text += ("." if text else "") + key_part(part)
    return text


def _join(path: str, below: str) -> str:
    """Key path `below` appended to `path`: `a` + `b` -> `a.b`, `a` + `[1]` -> `a[1]`."""
    if not below or not path:
        return path or below
    return path + below if below.startswith("[") else f"{path}.{below}"


def _clean_loc(loc: tuple, tagged: Mapping[str, tuple[str, ...]]) -> list:
    """Pydantic's location without discriminator tags and union member names."""
    parts = []
    for i, part in enumerate(loc):
        if i == 2 and loc[0] in tagged and part in tagged[loc[0]]:
            continue
        if isinstance(part, str) and (part.startswith("function-") or "[" in part):
            continue
        parts.append(part)
    return parts


def _describe(error: dict, tagged: Mapping[str, tuple[str, ...]]) -> tuple[str, str]:
    """(message with fix, key path below the error's location) of one pydantic error."""
    kind = error["type"]
    ctx = error.get("ctx") or {}
    value = error.get("input")
    if kind == "ilsim":
        return ctx["message"], ctx.get("at", "")
    if kind == "missing":
        return "missing; add this required key", ""
    if kind == "extra_forbidden":
        return "unknown key; remove it", ""
    if kind == "literal_error":
        return f"{show(value)} is not allowed; use {ctx.get('expected')}", ""
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a table, got {show(value)}; write a table, e.g. {{ key = value }}", ""
    if kind in ("list_type", "tuple_type"):
        return f"expected an array, got {show(value)}; write an array, e.g. [1, 2]", ""
    if kind in ("string_type", "str_type"):
        return f'expected a string, got {show(value)}; write it in quotes, e.g. "name"', ""
    if kind == "union_tag_invalid":
        expected = ", ".join(re.findall(r"'([^']+)'", str(ctx.get("expected_tags", ""))))
        return f"unknown type {show(ctx.get('tag', value))}; use one of: {expected}", "type"
    if kind == "union_tag_not_found":
        loc = error.get("loc") or ("",)
        types = ", ".join(tagged.get(loc[0], ()))
        return f"missing; add type = one of: {types}", "type"
    reason = error.get("msg", "invalid value")
    return f"{reason} (got {show(value)}); correct the value", ""


def config_error(error: ValidationError, tagged: Mapping[str, tuple[str, ...]]) -> ConfigError:
    """The first error pydantic found, as one ConfigError line.

    **Arguments:**
    - error: what `Config.model_validate` raised.
    - tagged: each array of tables keyed by `type` (`terms`) -> its type names, left out of
      key paths and listed when an entry has no type.
    """
    first = error.errors(include_url=False)[0]
    message, at = _describe(first, tagged)
    path = _join(key_path(_clean_loc(first["loc"], tagged)), at)
    text = f"{path}: {message}" if path else message
    return ConfigError(" ".join(text.splitlines()))


def moved(error: ValidationError, written: Mapping[str, str]) -> PydanticCustomError | None:
    """The first error of a table given in a short TOML form, as a `fail` at the key the user
    wrote; `written` maps each field the form fills to that key, below the table ("" for the
    table itself, `gaussian.sigma`, `robin.h`). None if the error is not in such a field."""
    first = error.errors(include_url=False)[0]
    message, at = _describe(first, {})
    parts = _clean_loc(first["loc"], {})
    if not parts:
        field, _, at = at.partition(".")
        parts = [field]
    if parts[0] not in written:
        return None
    return fail(message, at=_join(_join(written[parts[0]], key_path(parts[1:])), at))
