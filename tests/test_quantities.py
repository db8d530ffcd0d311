"""Post-processing reads "12 h", "30um", "10 pM" without pint: every unit and spelling it
accepts agrees with the config layer's pint conversion, and anything else is refused."""

from __future__ import annotations

import pytest

from engine.config.units import UnitError as ConfigUnitError
from engine.config.units import to_engine
from engine.post.quantities import ALIASES, SCALES, UnitError, read_quantity

SPELLINGS = [(kind, unit) for kind, units in SCALES.items() for unit in units] + [
    (kind, alias) for alias, unit in ALIASES.items() for kind in SCALES if unit in SCALES[kind]
]


@pytest.mark.parametrize(("kind", "unit"), SPELLINGS)
def test_every_unit_agrees_with_pint(kind, unit):
    for text in (f"2.5 {unit}", f"2.5{unit}", f" 1e-2  {unit} "):
        assert read_quantity(text, kind) == pytest.approx(to_engine(text, kind), rel=1e-12)


@pytest.mark.parametrize(
    ("value", "kind"),
    [
        ("3 nM", "time"),
        ("3 h", "length"),
        ("h", "time"),
        ("3 furlongs", "length"),
        (True, "time"),
        ("inf h", "time"),
        ("1e400 h", "time"),
        (float("nan"), "time"),
    ],
)
def test_other_values_are_refused_in_one_line(value, kind):
    with pytest.raises(UnitError) as error:
        read_quantity(value, kind)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize(
    ("text", "kind"),
    [
        ("1e5 1/mm^3", "density"),
        ("-30 min", "time"),
        (".5 h", "time"),
        ("-4.5um", "length"),
        ("2 cells / mm^3", "density"),
    ],
)
def test_config_examples_signs_fractions_and_spaced_units_agree_with_pint(text, kind):
    """DESIGN's density example, negative numbers (a position below the origin), a leading
    decimal point and a unit with spaces read as the config layer reads them."""
    assert read_quantity(text, kind) == pytest.approx(to_engine(text, kind), rel=1e-12)


def test_numbers_are_engine_units():
    assert read_quantity(7, "time") == 7.0 and read_quantity(0.5, "concentration") == 0.5


@pytest.mark.parametrize("text, kind", [("1,5 h", "time"), ("5,5 um^2/s", "diffusivity")])
def test_a_decimal_comma_is_refused_by_the_config_and_the_commands(text, kind):
    """pint read "1,5 h" as 15 h and "5,5 um^2/s" as 55: a tenfold error, silently."""
    with pytest.raises(ConfigUnitError, match=r"write decimals with a point, '\d\.5 "):
        to_engine(text, kind)
    if kind in SCALES:
        with pytest.raises(UnitError):
            read_quantity(text, kind)
