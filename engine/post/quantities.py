"""Numbers with a unit in requests about a file ("12 h", "z=30um", "10 pM"), read without pint:
reading a file must not load the config layer's unit library. The units are the common ones
of each kind of quantity that post-processing takes; the value comes out in engine units
(s, um, nM, cells/um^3)."""

from __future__ import annotations

import math
import re

_TIME = {"ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0}
_LENGTH = {"nm": 1e-3, "um": 1.0, "mm": 1e3, "cm": 1e4, "m": 1e6}
_CONCENTRATION = {"fM": 1e-6, "pM": 1e-3, "nM": 1.0, "uM": 1e3, "mM": 1e6, "M": 1e9}
_DENSITY = {
    f"{count}/{name}{power}": 1.0 / scale**3
    for count in ("", "1", "cell", "cells")
    for name, scale in _LENGTH.items()
    for power in ("^3", "**3")
}
SCALES = {"time": _TIME, "length": _LENGTH, "concentration": _CONCENTRATION, "density": _DENSITY}
"""Kind -> unit -> engine units per unit."""

ALIASES = {
    **dict.fromkeys(("sec", "second", "seconds"), "s"),
    **dict.fromkeys(("minute", "minutes"), "min"),
    **dict.fromkeys(("hr", "hour", "hours"), "h"),
    **dict.fromkeys(("day", "days"), "d"),
    **dict.fromkeys(("µm", "μm", "micrometer", "micrometers", "micron", "microns"), "um"),
    **dict.fromkeys(("µM", "μM"), "uM"),
}
"""Other spellings of the units above."""

_EXAMPLES = {
    "time": "s, min, h or d",
    "length": "nm, um, mm, cm or m",
    "concentration": "fM, pM, nM, uM, mM or M",
    "density": "cells/um^3 or cells/mm^3",
}

_QUANTITY = re.compile(r"^\s*([+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)\s*(.*?)\s*$")


class UnitError(ValueError):
    """A value that is not a finite quantity of the expected kind; one line."""


def read_quantity(value, kind: str) -> float:
    """`value` (a number in engine units, or a string such as "30 min") as a float in the
    engine unit of `kind` ("time", "length", "concentration" or "density"). Raises UnitError
    with a one-line reason."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise UnitError(f"expected a number or a string with a unit, got {value!r}")
    number = _from_text(value, kind) if isinstance(value, str) else float(value)
    if not math.isfinite(number):
        raise UnitError(f"must be finite, got {value!r}")
    return number


def _from_text(text: str, kind: str) -> float:
    """A number followed by a unit of `kind`, in engine units."""
    match = _QUANTITY.match(text)
    if not match:
        raise UnitError(f"cannot read {text!r} as a number with a unit")
    number, unit = float(match.group(1)), "".join(match.group(2).split())
    scale = SCALES[kind].get(ALIASES.get(unit, unit))
    if scale is None:
        raise UnitError(
            f"{text!r} does not have the dimension of a {kind}; expected a number with a unit "
            f"of {kind} ({_EXAMPLES[kind]})"
        )
    return number * scale
