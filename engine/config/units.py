"""Unit conversion of config values with pint: numbers are engine units, strings carry a unit.

Engine units: length um, time s, concentration nM, cell density cells/um^3, amounts of
molecules in molecules (pint's `molecule`, 1/N_A mol), cells are counts.
"""

from __future__ import annotations

import math

import pint

registry = pint.UnitRegistry()
registry.define("cell = 1 = cells")

ENGINE_UNITS: dict[str, str] = {
    "length": "um",
    "time": "s",
    "concentration": "nM",
    "density": "1/um^3",
    "diffusivity": "um^2/s",
    "rate": "1/s",
    "molecule_rate": "molecule/s",
    "association": "1/(nM*s)",
    "sensitivity": "um^2/(s*nM)",
    "transfer": "um/s",
    "killing": "um^3/s",
    "density_rate": "1/(um^3*s)",
    "concentration_rate": "nM/s",
    "dimensionless": "",
}
"""Kind of quantity -> the engine unit its numbers are in."""


class UnitError(ValueError):
    """A value that is not a finite quantity of the expected dimension."""


def to_engine(value, kind: str) -> float:
    """`value` (a number in engine units, or a string such as "25 um^2/s") as a float in the
    engine unit of `kind`. Raises UnitError with a one-line reason."""
    unit = ENGINE_UNITS[kind]
    if isinstance(value, bool):
        raise UnitError(f"expected a number or a string with a unit, got {value!r}")
    if isinstance(value, int | float):
        number = float(value)
    elif isinstance(value, str):
        if "," in value:  # pint reads "1,5 h" as 15 h
            raise UnitError(
                f"cannot read {value!r} as a quantity: write decimals with a point, "
                f"{value.replace(',', '.')!r}"
            )
        try:
            quantity = registry.Quantity(value)
        except (
            pint.errors.PintError,
            ValueError,
            TypeError,
            AttributeError,
            AssertionError,
        ) as error:
            raise UnitError(f"cannot read {value!r} as a quantity ({error})") from None
        try:
            number = float(quantity.to(unit).magnitude)
        except pint.errors.DimensionalityError:
            expected = f"in {unit}" if unit else "dimensionless"
            raise UnitError(
                f"{value!r} has dimension {quantity.dimensionality}, expected {kind} ({expected})"
            ) from None
    else:
        raise UnitError(f"expected a number or a string with a unit, got {value!r}")
    if not math.isfinite(number):
        raise UnitError(f"must be finite, got {value!r}")
    return number
