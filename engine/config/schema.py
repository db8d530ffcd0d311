"""The TOML config: typed, validated, in engine units.

`load_config(path_or_dict, overrides)` reads a config (DESIGN.md section 2), applies dotted-path
overrides to the raw tables, validates every key with pydantic and converts every quantity to a
float in engine units (um, s, nM, cells/um^3, molecules) with `engine.units.to_engine`, then
checks the config as a whole: names and references, faces, geometry against the grid, the
memory the state needs. Any problem is one `ConfigError` line:
`<key path>: <what is wrong>; <the fix>`.

Quantities whose unit depends on the field they belong to (initial values, boundary values,
Hill constants K) are converted with the field's kind: concentration (nM) for a species,
density (cells/um^3) for a population.
"""

from __future__ import annotations

import copy
import math
import os
import re
import tomllib
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

import numpy as np
from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)
from pydantic_core import PydanticCustomError

from engine.config.errors import ConfigError
from engine.config.units import ENGINE_UNITS, UnitError, to_engine
from engine.numerics.grid import AXIS_NAMES
from engine.numerics.memory import state_bytes

_EXAMPLES = {
    "length": '"10 um"',
    "time": '"6 h"',
    "concentration": '"10 pM"',
    "density": '"1e5 1/mm^3"',
    "diffusivity": '"25 um^2/s"',
    "rate": '"1e-4 1/s"',
    "molecule_rate": '"20 molecule/s"',
    "association": '"3.1e7 1/M/s"',
    "sensitivity": '"1e4 um^2/(s nM)"',
    "transfer": '"1 um/s"',
    "killing": '"1e3 um^3/s"',
    "density_rate": '"1e-9 1/(um^3 s)"',
    "concentration_rate": '"5 nM/s"',
    "dimensionless": "2",
}


# ---------------------------------------------------------------------------------------------
# Errors raised inside validators carry the message verbatim and, in `at`, the key path below
# the location pydantic reports (e.g. the unknown key itself).


def _fail(message: str, at: str = "") -> PydanticCustomError:
    return PydanticCustomError("ilsim", "{message}", {"message": message, "at": at})


def _show(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, dict):
        return "a table"
    if isinstance(value, list | tuple):
        return "an array"
    return str(value)


def _toml_key(key: str) -> str:
    if re.fullmatch(r"[A-Za-z0-9_-]+", key):
        return key
    return _toml_string(key)


def _join(parts) -> str:
    """Key path of `parts` (names and list indices): `terms[2].species`."""
    text = ""
    for part in parts:
        if isinstance(part, int):
            text += f"[{part}]"
        elif part.startswith("["):
            text += part
        else:
            text += ("." if text else "") + _toml_key(part)
    return text


def _fix_for(kind: str) -> str:
    if kind == "dimensionless":
        return "give a plain finite number, e.g. 2"
    unit = ENGINE_UNITS[kind]
    return f"give a finite number in {unit} or a string with a unit, e.g. {_EXAMPLES[kind]}"


def _bounds(number: float, shown: str, ge=None, gt=None, le=None, lt=None) -> None:
    if ge is not None and not number >= ge:
        fix = "use a non-negative value" if ge == 0 else f"use a value >= {ge:g}"
        raise _fail(f"must be >= {ge:g}, got {shown}; {fix}")
    if gt is not None and not number > gt:
        fix = "use a positive value" if gt == 0 else f"use a value > {gt:g}"
        raise _fail(f"must be > {gt:g}, got {shown}; {fix}")
    if le is not None and not number <= le:
        raise _fail(f"must be <= {le:g}, got {shown}; use a value <= {le:g}")
    if lt is not None and not number < lt:
        raise _fail(f"must be < {lt:g}, got {shown}; use a value < {lt:g}")


def _number(value: Any, kind: str, ge=None, gt=None, le=None, lt=None) -> float:
    """`value` (a number in engine units or a string with a unit) as a float in the engine unit
    of `kind`, within the bounds."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise _fail(
            f"expected a number or a string with a unit, got {_show(value)}; {_fix_for(kind)}"
        )
    try:
        number = to_engine(value, kind)
    except UnitError as error:
        raise _fail(f"{error}; {_fix_for(kind)}") from None
    except Exception:  # noqa: BLE001 - pint's parser fails with assorted errors on garbage
        raise _fail(f"cannot read {value!r} as a quantity; {_fix_for(kind)}") from None
    shown = _show(value) if isinstance(value, str) else f"{number:g}"
    _bounds(number, shown, ge=ge, gt=gt, le=le, lt=lt)
    return number


def _q(kind: str, ge=None, gt=None, le=None, lt=None) -> BeforeValidator:
    """A float field in the engine unit of `kind`."""
    return BeforeValidator(lambda value: _number(value, kind, ge=ge, gt=gt, le=le, lt=lt))


def _integer(value: Any, ge: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise _fail(f"expected an integer, got {_show(value)}; write a whole number, e.g. 3")
    if ge is not None and value < ge:
        raise _fail(f"must be >= {ge}, got {value}; use a whole number >= {ge}")
    return value


def _int(ge: int | None = None) -> BeforeValidator:
    return BeforeValidator(lambda value: _integer(value, ge))


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise _fail(f"expected true or false, got {_show(value)}; write true or false")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str):
        raise _fail(
            f'expected a name (a string), got {_show(value)}; write it in quotes, e.g. "IL2"'
        )
    return value


Name = Annotated[str, BeforeValidator(_name)]
Length = Annotated[float, _q("length")]
Positive = Annotated[float, _q("length", gt=0)]
Duration = Annotated[float, _q("time", gt=0)]


def _resolve_file(value: Any, info: ValidationInfo, suffixes: tuple[str, ...]) -> str:
    """An existing file, relative to the config file's folder (or the working directory)."""
    if not isinstance(value, str) or not value:
        raise _fail(f"expected a file path (a string), got {_show(value)}; write it in quotes")
    path = Path(value).expanduser()
    if not path.is_absolute():
        base = (info.context or {}).get("base_dir") or Path.cwd()
        path = Path(base) / path
    path = Path(os.path.abspath(path))
    if path.suffix.lower() not in suffixes:
        raise _fail(
            f"{str(path)!r} is not a {' or '.join(suffixes)} file; give a {suffixes[0]} file"
        )
    if not path.is_file():
        raise _fail(
            f"no such file {str(path)!r}; give a path relative to the config file's folder "
            "or an absolute one"
        )
    return str(path)


class _Model(BaseModel):
    """Strict tables: unknown keys are errors that list the valid ones."""

    model_config = ConfigDict(extra="forbid", populate_by_name=True)

    @classmethod
    def _normalize(cls, data: Any) -> Any:
        """Short TOML forms -> the table of fields (overridden by subclasses)."""
        return data

    @model_validator(mode="before")
    @classmethod
    def _known_keys(cls, data: Any) -> Any:
        data = cls._normalize(data)
        if isinstance(data, dict):
            valid = [field.alias or name for name, field in cls.model_fields.items()]
            for key in data:
                if key not in valid and key not in cls.model_fields:
                    raise _fail(f"unknown key; valid keys: {', '.join(valid)}", at=str(key))
        return data


# ---------------------------------------------------------------------------------------------
# Field values (boundary values, initial values): concentration for species, density for
# populations, plain numbers where the field is not known (the grid's default face).


def _field_value(value: Any, kind: str | None) -> float | None:
    if value is None:
        return None
    if kind is None:
        if isinstance(value, str):
            raise _fail(
                f"a unit is ambiguous in the default face of every species (nM) and population "
                f"(cells/um^3), got {value!r}; give a plain number, or set the face per field"
            )
        kind = "dimensionless"
    return _number(value, kind, ge=0)


_FACE_KINDS = ("neumann", "dirichlet", "periodic", "robin")


class Face(_Model):
    """One face's boundary condition. value: dirichlet value, h: robin transfer coefficient
    (um/s), outside: robin outside value; values in the field's units."""

    unit_kind: ClassVar[str | None] = None

    kind: Literal["neumann", "dirichlet", "periodic", "robin"] = "neumann"
    value: float = 0.0
    h: Annotated[float, _q("transfer", ge=0)] = 0.0
    outside: float = 0.0

    @classmethod
    def _normalize(cls, data):
        forms = '"neumann", "periodic", { dirichlet = 0 } or { robin = { h = 1, outside = 0 } }'
        if isinstance(data, str):
            if data not in _FACE_KINDS:
                raise _fail(f"unknown boundary {data!r}; use {forms}")
            return {"kind": data}
        if not isinstance(data, dict) or "kind" in data or not data:
            return data
        if len(data) != 1:
            raise _fail(f"expected one boundary kind, got keys {', '.join(data)}; use {forms}")
        ((kind, arg),) = data.items()
        if kind not in _FACE_KINDS:
            raise _fail(f"unknown boundary kind; use {forms}", at=str(kind))
        if kind == "dirichlet":
            if isinstance(arg, dict):
                if set(arg) - {"value"}:
                    raise _fail("unknown key; valid keys: value", at=f"dirichlet.{next(iter(arg))}")
                return {"kind": kind, **arg}
            return {"kind": kind, "value": arg}
        if kind == "robin":
            if not isinstance(arg, dict):
                raise _fail(
                    f"expected a table, got {_show(arg)}; use {forms}",
                    at="robin",
                )
            for key in arg:
                if key not in ("h", "outside"):
                    raise _fail("unknown key; valid keys: h, outside", at=f"robin.{key}")
            return {"kind": kind, **arg}
        if arg not in ({}, True):
            raise _fail(
                f"{kind} takes no parameters; write {kind!r} or {{ {kind} = {{}} }}", at=kind
            )
        return {"kind": kind}

    @field_validator("value", "outside", mode="before")
    @classmethod
    def _field_units(cls, value):
        return _field_value(value, cls.unit_kind)

    def __eq__(self, other):
        # species and population faces equal the plain face with the same values
        if isinstance(other, Face):
            return self.model_dump() == other.model_dump()
        return NotImplemented

    __hash__ = None


class SpeciesFace(Face):
    """A species' face: values in nM."""

    unit_kind: ClassVar[str | None] = "concentration"


class PopulationFace(Face):
    """A population's face: values in cells/um^3."""

    unit_kind: ClassVar[str | None] = "density"


_INITIAL_FORMS = {
    "gaussian": ("center", "sigma", "amplitude"),
    "random": ("mean", "std", "seed"),
}
_INITIAL_NEEDS = {
    "value": (),
    "gaussian": ("center", "sigma", "amplitude"),
    "region": ("region",),
    "random": ("mean", "std"),
    "file": ("path",),
}
_INITIAL_OPTIONAL = ("center", "sigma", "amplitude", "region", "mean", "std", "path")


class Initial(_Model):
    """An initial condition: a value, a Gaussian, a value inside a region, seeded random
    values, or a .npy/.h5 file. value, amplitude, mean and std are in the field's units."""

    unit_kind: ClassVar[str | None] = None

    kind: Literal["value", "gaussian", "region", "random", "file"] = "value"
    value: float = 0.0
    center: tuple[Length, ...] | None = None
    sigma: Annotated[float, _q("length", gt=0)] | None = None
    amplitude: float | None = None
    region: Name | None = None
    mean: float | None = None
    std: float | None = None
    seed: Annotated[int, _int(ge=0)] = 0
    path: str | None = None

    @classmethod
    def _normalize(cls, data):
        hint = (
            'use a number, { gaussian = { center, sigma, amplitude } }, { region = "NAME", '
            "value = 1 }, { random = { mean, std, seed } } or { file = PATH }"
        )
        if isinstance(data, bool):
            raise _fail(f"expected a number or a table, got {_show(data)}; {hint}")
        if isinstance(data, int | float | str):
            return {"kind": "value", "value": data}
        if not isinstance(data, dict) or "kind" in data or not data:
            return data
        forms = [form for form in ("gaussian", "region", "random", "file") if form in data]
        if len(forms) != 1:
            raise _fail(f"expected exactly one of gaussian, region, random, file; {hint}")
        form = forms[0]
        allowed = {"region": ("region", "value")}.get(form, (form,))
        for key in data:
            if key not in allowed:
                raise _fail(f"unknown key; valid keys: {', '.join(allowed)}", at=str(key))
        if form == "region":
            if "value" not in data:
                raise _fail("missing; add value = the value inside the region", at="value")
            return {"kind": "region", **data}
        if form == "file":
            return {"kind": "file", "path": data["file"]}
        inner = data[form]
        if not isinstance(inner, dict):
            raise _fail(f"expected a table, got {_show(inner)}; {hint}", at=form)
        for key in inner:
            if key not in _INITIAL_FORMS[form]:
                valid = ", ".join(_INITIAL_FORMS[form])
                raise _fail(f"unknown key; valid keys: {valid}", at=f"{form}.{key}")
        return {"kind": form, **inner}

    @field_validator("value", "amplitude", "mean", "std", mode="before")
    @classmethod
    def _field_units(cls, value):
        return _field_value(value, cls.unit_kind)

    @field_validator("path", mode="before")
    @classmethod
    def _file(cls, value, info: ValidationInfo):
        return None if value is None else _resolve_file(value, info, (".npy", ".h5", ".hdf5"))

    @model_validator(mode="after")
    def _complete(self):
        for key in _INITIAL_NEEDS[self.kind]:
            if getattr(self, key) is None:
                raise _fail(f"missing; a {self.kind} initial condition needs {key}", at=key)
        for key in _INITIAL_OPTIONAL:
            if key not in _INITIAL_NEEDS[self.kind] and getattr(self, key) is not None:
                raise _fail(f"does not apply to a {self.kind} initial condition; remove it", at=key)
        return self

    def __eq__(self, other):
        if isinstance(other, Initial):
            return self.model_dump() == other.model_dump()
        return NotImplemented

    __hash__ = None


class SpeciesInitial(Initial):
    """A species' initial condition: values in nM."""

    unit_kind: ClassVar[str | None] = "concentration"


class PopulationInitial(Initial):
    """A population's initial condition: values in cells/um^3."""

    unit_kind: ClassVar[str | None] = "density"


class Coefficient(_Model):
    """A diffusivity (um^2/s): `value` everywhere, `regions` values inside named regions
    (later entries win)."""

    value: Annotated[float, _q("diffusivity", ge=0)]
    regions: dict[str, Annotated[float, _q("diffusivity", ge=0)]] = {}

    @classmethod
    def _normalize(cls, data):
        if isinstance(data, dict):
            return data
        return {"value": _number(data, "diffusivity", ge=0)}


# ---------------------------------------------------------------------------------------------
# Grid, time, regions


def _shape(value: Any) -> tuple[int, ...]:
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    if not isinstance(value, list | tuple):
        raise _fail(
            f"expected an array of 1 to 3 voxel counts, got {_show(value)}; e.g. [128, 128]"
        )
    if not 1 <= len(value) <= 3:
        raise _fail(
            f"expected 1 to 3 axes, got {len(value)}; give the voxel counts (nz, ny, nx), "
            "(ny, nx) or (nx,), e.g. [128, 128]"
        )
    for axis, count in enumerate(value):
        if isinstance(count, bool) or not isinstance(count, int):
            raise _fail(
                f"expected a voxel count, got {_show(count)}; write a whole number", at=f"[{axis}]"
            )
        if count < 1:
            raise _fail(
                f"must be >= 1, got {count}; every axis needs at least one voxel", at=f"[{axis}]"
            )
    return tuple(value)


class GridConfig(_Model):
    """Voxels per axis (nz, ny, nx) / (ny, nx) / (nx,); spacing and origin per axis (um);
    depth of a 2D slab or 1D rod (um); the default face of every field."""

    shape: Annotated[tuple[int, ...], BeforeValidator(_shape)]
    spacing: tuple[Annotated[float, _q("length", gt=0)], ...]
    origin: tuple[Length, ...] = ()
    depth: Annotated[float, _q("length", gt=0)] | None = None
    boundary: Face = Field(default_factory=Face)

    @classmethod
    def _normalize(cls, data):
        if not isinstance(data, dict):
            return data
        data = dict(data)
        shape = data.get("shape")
        ndim = 1 if isinstance(shape, int) else len(shape) if isinstance(shape, list | tuple) else 1
        for key in ("spacing", "origin"):
            if key in data and not isinstance(data[key], list | tuple):
                data[key] = [data[key]] * max(ndim, 1)
        data.setdefault("origin", [0.0] * max(ndim, 1))
        return data

    @model_validator(mode="after")
    def _per_axis(self):
        for key in ("spacing", "origin"):
            got = len(getattr(self, key))
            if got != self.ndim:
                raise _fail(
                    f"has {got} entries, the grid has {self.ndim} axes ({', '.join(self.axes)}); "
                    "give one number or one per axis",
                    at=key,
                )
        return self

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def axes(self) -> tuple[str, ...]:
        """Axis names in array order, x last."""
        return AXIS_NAMES[self.ndim]

    @property
    def lower(self) -> tuple[float, ...]:
        return self.origin

    @property
    def upper(self) -> tuple[float, ...]:
        return tuple(o + n * h for o, n, h in zip(self.origin, self.shape, self.spacing))

    @property
    def faces(self) -> tuple[str, ...]:
        """Face names: x_min, x_max, ... for the grid's axes."""
        return tuple(f"{axis}_{end}" for axis in self.axes for end in ("min", "max"))

    def extent(self) -> str:
        """The grid's box as text: `[0, 640] um x [0, 640] um`."""
        return " x ".join(f"[{lo:g}, {up:g}] um" for lo, up in zip(self.lower, self.upper))


def _dt(value: Any) -> float | str:
    if isinstance(value, str) and value.strip() == "auto":
        return "auto"
    try:
        return _number(value, "time", gt=0)
    except PydanticCustomError as error:
        reason = error.context["message"].split(";")[0]
        raise _fail(
            f'expected "auto" or a time step, {reason}; write "auto" or e.g. "1 s"'
        ) from None


class TimeConfig(_Model):
    """end, dt, output_every in s; dt "auto" is safety times the stepper's stability limit."""

    end: Duration
    dt: Annotated[float | Literal["auto"], BeforeValidator(_dt)] = "auto"
    stepper: Literal["explicit", "imex", "quasi_steady"] = "imex"
    scheme: Literal["euler", "ssprk2", "ssprk3"] = "ssprk3"
    output_every: Duration | None = None
    dtype: Literal["float32", "float64"] = "float32"
    seed: Annotated[int, _int(ge=0)] = 0
    adaptive: Annotated[bool, BeforeValidator(_boolean)] = False
    tolerance: Annotated[float, _q("dimensionless", gt=0, lt=1)] = 1e-3
    safety: Annotated[float, _q("dimensionless", gt=0, le=1)] = 0.9
    compensated: Annotated[bool, BeforeValidator(_boolean)] = True

    @model_validator(mode="after")
    def _within_end(self):
        if self.dt != "auto" and not self.dt < self.end:
            raise _fail(
                f'dt = {self.dt:g} s is not below end = {self.end:g} s; use a smaller dt or "auto"',
                at="dt",
            )
        if self.output_every is not None and self.output_every > self.end:
            raise _fail(
                f"output_every = {self.output_every:g} s exceeds end = {self.end:g} s; "
                "use output_every <= end",
                at="output_every",
            )
        return self


class Sphere(_Model):
    """A ball (a disc in 2D): center (um, one per axis), radius (um)."""

    center: tuple[Length, ...]
    radius: Positive


class Box(_Model):
    """A box between two corners (um, one per axis)."""

    lower: tuple[Length, ...]
    upper: tuple[Length, ...]


class Cylinder(_Model):
    """Voxels within radius of the line through center along axis."""

    center: tuple[Length, ...]
    radius: Positive
    axis: Literal["x", "y", "z"]


class Spots(_Model):
    """count balls of radius (um) centred at seeded random positions."""

    count: Annotated[int, _int(ge=1)]
    radius: Positive
    seed: Annotated[int, _int(ge=0)] = 0


_REGION_KINDS = ("sphere", "box", "cylinder", "spots", "file")


class RegionConfig(_Model):
    """A named mask: exactly one of sphere, box, cylinder, spots, file (.npy, absolute path)."""

    sphere: Sphere | None = None
    box: Box | None = None
    cylinder: Cylinder | None = None
    spots: Spots | None = None
    file: str | None = None

    @field_validator("file", mode="before")
    @classmethod
    def _file(cls, value, info: ValidationInfo):
        return None if value is None else _resolve_file(value, info, (".npy",))

    @model_validator(mode="after")
    def _one_shape(self):
        given = [kind for kind in _REGION_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            got = ", ".join(given) if given else "none"
            raise _fail(f"needs exactly one of {', '.join(_REGION_KINDS)}, got {got}; keep one")
        return self

    @property
    def kind(self) -> str:
        """Which shape is set: sphere, box, cylinder, spots or file."""
        return next(kind for kind in _REGION_KINDS if getattr(self, kind) is not None)


# ---------------------------------------------------------------------------------------------
# Species and populations


class SpeciesConfig(_Model):
    """A concentration field (nM): diffusion (um^2/s), first-order decay (1/s), initial
    condition, face overrides keyed x_min, x_max, ..."""

    diffusion: Coefficient
    decay: Annotated[float, _q("rate", ge=0)] = 0.0
    initial: SpeciesInitial = Field(default_factory=SpeciesInitial)
    boundary: dict[str, SpeciesFace] = {}


class Chemotaxis(_Model):
    """Drift up the gradient of `species` with sensitivity um^2/(s nM) (negative: away)."""

    species: Name
    sensitivity: Annotated[float, _q("sensitivity")]


class PopulationConfig(_Model):
    """A cell density field (cells/um^3): random motility (um^2/s), chemotaxis, initial
    condition, face overrides."""

    motility: Coefficient = Field(default_factory=lambda: Coefficient(value=0.0))
    chemotaxis: Chemotaxis | None = None
    initial: PopulationInitial = Field(default_factory=PopulationInitial)
    boundary: dict[str, PopulationFace] = {}


# ---------------------------------------------------------------------------------------------
# Terms


def _hill_constant(value: Any) -> float:
    if isinstance(value, str):
        raise _fail(
            f"{value!r}: K with a unit is converted by the config that defines `of`; "
            "give a number in the units of `of`, or load the whole config"
        )
    return _number(value, "dimensionless", gt=0)


class Modulator(_Model):
    """A Hill factor of field `of`: activator c^h/(K^h + c^h), inhibitor K^h/(K^h + c^h).
    K in the units of `of` (nM for a species, cells/um^3 for a population)."""

    of: Name
    K: Annotated[float, BeforeValidator(_hill_constant)]
    hill: Annotated[float, _q("dimensionless", gt=0)] = 1.0


class _Term(_Model):
    activators: list[Modulator] = []
    inhibitors: list[Modulator] = []


class Secretion(_Term):
    """species += rate (molecules/cell/s) * n_by."""

    type: Literal["secretion"] = "secretion"
    species: Name
    by: Name
    rate: Annotated[float, _q("molecule_rate", ge=0)]


class Uptake(_Term):
    """species -= n_by * (vmax c/(km + c), or k_on receptors c) per cell."""

    type: Literal["uptake"] = "uptake"
    species: Name
    by: Name
    vmax: Annotated[float, _q("molecule_rate", ge=0)] | None = None
    km: Annotated[float, _q("concentration", gt=0)] | None = None
    k_on: Annotated[float, _q("association", ge=0)] | None = None
    receptors: Annotated[float, _q("dimensionless", ge=0)] | None = None

    @model_validator(mode="after")
    def _one_pair(self):
        saturable = self.vmax is not None or self.km is not None
        linear = self.k_on is not None or self.receptors is not None
        if saturable and linear:
            raise _fail("gives both vmax/km and k_on/receptors; keep one pair")
        if not saturable and not linear:
            raise _fail("needs vmax and km, or k_on and receptors; add one pair")
        for first, second in (
            ("vmax", "km"),
            ("km", "vmax"),
            ("k_on", "receptors"),
            ("receptors", "k_on"),
        ):
            if getattr(self, first) is not None and getattr(self, second) is None:
                raise _fail(
                    f"missing ({first} is given); add {second}, or use the other pair", at=second
                )
        return self


class Growth(_Term):
    """population += rate n (1 - sum(crowding) / capacity); crowding default: itself."""

    type: Literal["growth"] = "growth"
    population: Name
    rate: Annotated[float, _q("rate", ge=0)]
    capacity: Annotated[float, _q("density", gt=0)]
    crowding: list[Name] | None = None


class Death(_Term):
    """population -= rate n."""

    type: Literal["death"] = "death"
    population: Name
    rate: Annotated[float, _q("rate", ge=0)]


class Proliferation(_Term):
    """population += rate n (modulated)."""

    type: Literal["proliferation"] = "proliferation"
    population: Name
    rate: Annotated[float, _q("rate", ge=0)]


class Killing(_Term):
    """target -= rate (um^3/s) n_by n_target."""

    type: Literal["killing"] = "killing"
    target: Name
    by: Name
    rate: Annotated[float, _q("killing", ge=0)]


class Conversion(_Term):
    """n_from -> n_to at rate n_from (TOML key `from`)."""

    type: Literal["conversion"] = "conversion"
    from_: Name = Field(alias="from")
    to: Name
    rate: Annotated[float, _q("rate", ge=0)]


class Recruitment(_Term):
    """population += rate (cells/um^3/s) inside region."""

    type: Literal["recruitment"] = "recruitment"
    population: Name
    region: Name
    rate: Annotated[float, _q("density_rate", ge=0)]


class Custom(_Term):
    """A term registered from Python (`engine.terms.register_term`), its parameters numbers."""

    type: Literal["custom"] = "custom"
    name: Name
    params: dict[str, Annotated[float, _q("dimensionless")]] = {}

    @field_validator("name")
    @classmethod
    def _identifier(cls, value):
        if not value.isidentifier():
            raise _fail(f"{value!r} is not a valid term name; use letters, digits and _")
        return value


Term = Annotated[
    Union[  # noqa: UP007 - a discriminated union needs the Union form under Annotated
        Secretion, Uptake, Growth, Death, Proliferation, Killing, Conversion, Recruitment, Custom
    ],
    Field(discriminator="type"),
]
TERM_TYPES = (
    "secretion",
    "uptake",
    "growth",
    "death",
    "proliferation",
    "killing",
    "conversion",
    "recruitment",
    "custom",
)


# ---------------------------------------------------------------------------------------------
# Sources


class Schedule(_Model):
    """When a source is on (s): from start, for duration (None: forever), repeated every
    `every` for count doses (None: unbounded)."""

    start: Annotated[float, _q("time", ge=0)] = 0.0
    duration: Duration | None = None
    every: Duration | None = None
    count: Annotated[int, _int(ge=1)] | None = None

    @classmethod
    def _normalize(cls, data):
        return {} if data == "always" else data

    @model_validator(mode="after")
    def _doses(self):
        if self.every is not None:
            if self.duration is None:
                raise _fail(
                    "missing; repeated doses (every) need a duration <= every", at="duration"
                )
            if self.duration > self.every:
                raise _fail(
                    f"{self.duration:g} s is longer than every = {self.every:g} s; "
                    "make each dose's duration <= every",
                    at="duration",
                )
        elif self.count is not None:
            raise _fail(
                "applies to repeated doses only; add every = ... or remove count", at="count"
            )
        return self


class PointSource(_Model):
    """rate molecules/s into the voxel containing position (um, one per axis)."""

    type: Literal["point"] = "point"
    species: Name
    position: tuple[Length, ...]
    rate: Annotated[float, _q("molecule_rate", ge=0)]
    schedule: Schedule = Field(default_factory=Schedule)


class RegionSource(_Model):
    """rate nM/s inside region."""

    type: Literal["region"] = "region"
    species: Name
    region: Name
    rate: Annotated[float, _q("concentration_rate", ge=0)]
    schedule: Schedule = Field(default_factory=Schedule)


Source = Annotated[Union[PointSource, RegionSource], Field(discriminator="type")]  # noqa: UP007
SOURCE_TYPES = ("point", "region")


def _mesh(value: Any):
    if value is None or value == "auto":
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    counts = value if isinstance(value, list | tuple) else None
    if not counts or not all(isinstance(n, int) and not isinstance(n, bool) for n in counts):
        raise _fail(
            f'expected "auto" or devices per leading grid axis, got {_show(value)}; e.g. [2, 2]'
        )
    if any(n < 1 for n in counts):
        raise _fail(f"devices per axis must be >= 1, got {list(counts)}; e.g. [2, 2]")
    return tuple(counts)


class ParallelConfig(_Model):
    """Domain decomposition over devices: mesh = "auto" (every device, slabs where they fit)
    or devices per leading grid axis ([2, 2]: z over 2, y over 2 in 3D); absent: one device.
    distributed = true joins a multi-process run (engine.parallel.initialize_distributed);
    heartbeat_timeout (s): how long its processes wait for a silent one before all abort."""

    mesh: Annotated[Literal["auto"] | tuple[int, ...] | None, BeforeValidator(_mesh)] = None
    distributed: Annotated[bool, BeforeValidator(_boolean)] = False
    heartbeat_timeout: Duration = 100.0


class OutputConfig(_Model):
    """Fields written (None: all), compression, checkpoint interval (s)."""

    fields: list[Name] | None = None
    compression: Literal["gzip", "lzf", "none"] = "gzip"
    checkpoint_every: Duration | None = None


# ---------------------------------------------------------------------------------------------
# The config


def _natural(name: str):
    return [int(part) if part.isdigit() else part for part in re.split(r"(\d+)", name)]


def _listing(names) -> str:
    return ", ".join(sorted(names, key=_natural)) if names else "none"


class Config(_Model):
    """A validated config, every quantity a float in engine units."""

    grid: GridConfig
    time: TimeConfig
    regions: dict[str, RegionConfig] = {}
    species: dict[str, SpeciesConfig] = {}
    populations: dict[str, PopulationConfig] = {}
    terms: list[Term] = []
    sources: list[Source] = []
    output: OutputConfig = Field(default_factory=OutputConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)

    @classmethod
    def _normalize(cls, data):
        """Hill constants K given with a unit: converted in the units of `of`, which needs the
        names of species and populations."""
        if not isinstance(data, dict) or not isinstance(data.get("terms"), list):
            return data
        species = data.get("species") if isinstance(data.get("species"), dict) else {}
        populations = data.get("populations") if isinstance(data.get("populations"), dict) else {}
        data = copy.deepcopy(data)
        for i, term in enumerate(data["terms"]):
            if not isinstance(term, dict):
                continue
            for group in ("activators", "inhibitors"):
                modulators = term.get(group)
                if not isinstance(modulators, list):
                    continue
                for j, modulator in enumerate(modulators):
                    if not isinstance(modulator, dict) or not isinstance(modulator.get("K"), str):
                        continue
                    here = f"terms[{i}].{group}[{j}]"
                    of = modulator.get("of")
                    if of in species:
                        kind = "concentration"
                    elif of in populations:
                        kind = "density"
                    elif isinstance(of, str):
                        defined = _listing(list(species) + list(populations))
                        raise _fail(
                            f'unknown species or population "{of}"; defined: {defined}',
                            at=f"{here}.of",
                        )
                    else:
                        continue
                    try:
                        modulator["K"] = _number(modulator["K"], kind, gt=0)
                    except PydanticCustomError as error:
                        field = "a species" if kind == "concentration" else "a population"
                        message = error.context["message"]
                        raise _fail(f"{message} (of = {of!r} is {field})", at=f"{here}.K") from None
        return data

    @model_validator(mode="after")
    def _whole(self):
        _Checker(self).run()
        return self

    def memory_bytes(self) -> int:
        """Estimated bytes of the state while stepping (`numerics.memory.state_bytes`)."""
        per_value = 8 if self.time.dtype == "float64" else 4
        return state_bytes(len(self.field_names), math.prod(self.grid.shape), per_value)

    @property
    def field_names(self) -> tuple[str, ...]:
        """Species then populations, in config order."""
        return tuple(self.species) + tuple(self.populations)


class _Checker:
    """Whole-config checks: names, references, faces, geometry, memory."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.grid = cfg.grid

    def run(self) -> None:
        self.names()
        self.faces()
        self.regions()
        self.fields()
        self.terms()
        self.sources()
        for i, name in enumerate(self.cfg.output.fields or ()):
            self.ref(name, "field", f"output.fields[{i}]")

    # names --------------------------------------------------------------------------------
    def names(self) -> None:
        for table in ("species", "populations"):
            for name in getattr(self.cfg, table):
                if not name.isidentifier():
                    raise _fail(
                        f"{name!r} is not a valid name; use letters, digits and _, "
                        "not starting with a digit",
                        at=f"{table}.{_toml_key(name)}",
                    )
        for name in self.cfg.populations:
            if name in self.cfg.species:
                raise _fail(
                    f'"{name}" is also a species; give every species and population its own name',
                    at=f"populations.{name}",
                )

    def ref(self, name: str, want: str, at: str) -> None:
        species, populations = self.cfg.species, self.cfg.populations
        if want == "region":
            if name not in self.cfg.regions:
                raise _fail(
                    f'unknown region "{name}"; defined: {_listing(self.cfg.regions)}', at=at
                )
            return
        if want == "field":
            if name not in species and name not in populations:
                defined = _listing(list(species) + list(populations))
                raise _fail(f'unknown species or population "{name}"; defined: {defined}', at=at)
            return
        own, other, other_kind = (
            (species, populations, "population")
            if want == "species"
            else (populations, species, "species")
        )
        if name in own:
            return
        if name in other:
            plural = "species" if want == "species" else "populations"
            raise _fail(
                f'"{name}" is a {other_kind}, not a {want}; {plural} defined: {_listing(own)}',
                at=at,
            )
        raise _fail(f'unknown {want} "{name}"; defined: {_listing(own)}', at=at)

    # faces --------------------------------------------------------------------------------
    def faces(self) -> None:
        valid = self.grid.faces
        for table in ("species", "populations"):
            for name, field in getattr(self.cfg, table).items():
                for face in field.boundary:
                    if face not in valid:
                        raise _fail(
                            f"not a face of a {self.grid.ndim}D grid; valid faces: "
                            f"{', '.join(valid)}",
                            at=f"{table}.{name}.boundary.{_toml_key(face)}",
                        )
                for axis in self.grid.axes:
                    ends = (f"{axis}_min", f"{axis}_max")
                    kinds = [field.boundary.get(end, self.grid.boundary).kind for end in ends]
                    periodic = [kind == "periodic" for kind in kinds]
                    if periodic[0] != periodic[1]:
                        lonely = ends[0] if periodic[0] else ends[1]
                        other = ends[1] if periodic[0] else ends[0]
                        at = ends[0] if ends[0] in field.boundary else ends[1]
                        raise _fail(
                            f"periodic on {lonely} but not on {other}; periodic applies to both "
                            f'faces of an axis, set {other} = "periodic" too or neither',
                            at=f"{table}.{name}.boundary.{at}",
                        )

    # geometry -----------------------------------------------------------------------------
    def coordinates(self, values, at: str) -> None:
        if len(values) != self.grid.ndim:
            raise _fail(
                f"has {len(values)} coordinate{'s' * (len(values) != 1)}, the grid has "
                f"{self.grid.ndim} axes "
                f"({', '.join(self.grid.axes)}); give one per axis",
                at=at,
            )

    def nearest_centre(self, axis: int, x: float) -> float:
        o, h, n = self.grid.origin[axis], self.grid.spacing[axis], self.grid.shape[axis]
        k = min(max(round((x - o) / h - 0.5), 0), n - 1)
        return o + (k + 0.5) * h

    def centre_range(self, axis: int, lo: float, up: float) -> bool:
        """Whether some voxel centre on `axis` lies in [lo, up]."""
        o, h, n = self.grid.origin[axis], self.grid.spacing[axis], self.grid.shape[axis]
        first = max(math.ceil((lo - o) / h - 0.5), 0)
        last = min(math.floor((up - o) / h - 0.5), n - 1)
        return first <= last

    def ball(self, name: str, shape: str, center, radius: float, axes) -> None:
        lower, upper = self.grid.lower, self.grid.upper
        box_distance = math.sqrt(
            sum(max(lower[a] - center[a], 0.0, center[a] - upper[a]) ** 2 for a in axes)
        )
        if box_distance > radius:
            raise _fail(
                f"the {shape} lies outside the grid {self.grid.extent()}; move its center "
                "inside or enlarge the grid",
                at=f"regions.{name}",
            )
        nearest = sum((self.nearest_centre(a, center[a]) - center[a]) ** 2 for a in axes)
        if nearest > radius**2:
            raise _fail(
                f"the {shape} (radius {radius:g} um) contains no voxel centre; enlarge its radius "
                f"(spacing {', '.join(f'{h:g}' for h in self.grid.spacing)} um)",
                at=f"regions.{name}.{shape}.radius",
            )

    def regions(self) -> None:
        for name, region in self.cfg.regions.items():
            here = f"regions.{_toml_key(name)}"
            if region.sphere is not None:
                self.coordinates(region.sphere.center, f"{here}.sphere.center")
                shape = region.sphere
                self.ball(name, "sphere", shape.center, shape.radius, range(self.grid.ndim))
            elif region.cylinder is not None:
                shape = region.cylinder
                if shape.axis not in self.grid.axes:
                    raise _fail(
                        f'"{shape.axis}" is not an axis of a {self.grid.ndim}D grid; '
                        f"use one of {', '.join(self.grid.axes)}",
                        at=f"{here}.cylinder.axis",
                    )
                self.coordinates(shape.center, f"{here}.cylinder.center")
                along = self.grid.axes.index(shape.axis)
                across = [a for a in range(self.grid.ndim) if a != along]
                self.ball(name, "cylinder", shape.center, shape.radius, across)
            elif region.box is not None:
                box = region.box
                self.coordinates(box.lower, f"{here}.box.lower")
                self.coordinates(box.upper, f"{here}.box.upper")
                for a, axis in enumerate(self.grid.axes):
                    if box.lower[a] > box.upper[a]:
                        raise _fail(
                            f"lower {box.lower[a]:g} exceeds upper {box.upper[a]:g} on axis "
                            f"{axis}; swap them",
                            at=f"{here}.box.lower",
                        )
                lower, upper = self.grid.lower, self.grid.upper
                if any(
                    box.upper[a] < lower[a] or box.lower[a] > upper[a]
                    for a in range(self.grid.ndim)
                ):
                    raise _fail(
                        f"the box lies outside the grid {self.grid.extent()}; move it inside",
                        at=here,
                    )
                if not all(
                    self.centre_range(a, box.lower[a], box.upper[a]) for a in range(self.grid.ndim)
                ):
                    raise _fail(
                        "the box contains no voxel centre; enlarge it to span a voxel centre",
                        at=here,
                    )
            elif region.file is not None:
                try:
                    shape = np.load(region.file, mmap_mode="r", allow_pickle=False).shape
                except (OSError, ValueError) as error:
                    raise _fail(
                        f"cannot read {region.file!r} as a .npy array ({error}); give a .npy mask",
                        at=f"{here}.file",
                    ) from None
                if tuple(shape) != tuple(self.grid.shape):
                    raise _fail(
                        f"the mask has shape {tuple(shape)}, the grid {tuple(self.grid.shape)}; "
                        "give a mask of the grid's shape",
                        at=f"{here}.file",
                    )

    def initial(self, initial: Initial, at: str) -> None:
        if initial.kind == "region":
            self.ref(initial.region, "region", f"{at}.region")
        if initial.kind == "gaussian":
            self.coordinates(initial.center, f"{at}.center")

    def coefficient(self, coefficient: Coefficient, at: str) -> None:
        for region in coefficient.regions:
            self.ref(region, "region", f"{at}.regions.{_toml_key(region)}")

    def fields(self) -> None:
        for name, species in self.cfg.species.items():
            self.coefficient(species.diffusion, f"species.{name}.diffusion")
            self.initial(species.initial, f"species.{name}.initial")
        for name, population in self.cfg.populations.items():
            here = f"populations.{name}"
            self.coefficient(population.motility, f"{here}.motility")
            if population.chemotaxis is not None:
                self.ref(population.chemotaxis.species, "species", f"{here}.chemotaxis.species")
            self.initial(population.initial, f"{here}.initial")

    def terms(self) -> None:
        references = {
            "species": "species",
            "by": "population",
            "population": "population",
            "target": "population",
            "from_": "population",
            "to": "population",
            "region": "region",
        }
        for i, term in enumerate(self.cfg.terms):
            here = f"terms[{i}]"
            for key, want in references.items():
                if key in type(term).model_fields:
                    alias = type(term).model_fields[key].alias or key
                    self.ref(getattr(term, key), want, f"{here}.{alias}")
            for k, name in enumerate(getattr(term, "crowding", None) or ()):
                self.ref(name, "population", f"{here}.crowding[{k}]")
            for group in ("activators", "inhibitors"):
                for j, modulator in enumerate(getattr(term, group)):
                    self.ref(modulator.of, "field", f"{here}.{group}[{j}].of")

    def sources(self) -> None:
        for i, source in enumerate(self.cfg.sources):
            here = f"sources[{i}]"
            self.ref(source.species, "species", f"{here}.species")
            if isinstance(source, RegionSource):
                self.ref(source.region, "region", f"{here}.region")
            else:
                self.coordinates(source.position, f"{here}.position")
                lower, upper = self.grid.lower, self.grid.upper
                if not all(lo <= p < up for p, lo, up in zip(source.position, lower, upper)):
                    where = ", ".join(f"{p:g}" for p in source.position)
                    extent = " x ".join(f"[{lo:g}, {up:g})" for lo, up in zip(lower, upper))
                    raise _fail(
                        f"({where}) um lies outside the grid {extent} um (upper faces "
                        "excluded); give a position inside it",
                        at=f"{here}.position",
                    )


# ---------------------------------------------------------------------------------------------
# Errors: pydantic's -> one ConfigError line


_TAGGED_LISTS = {"terms": TERM_TYPES, "sources": SOURCE_TYPES}


def _clean_loc(loc) -> list:
    """Pydantic's location without discriminator tags and union member names."""
    parts = []
    for i, part in enumerate(loc):
        if i == 2 and loc[0] in _TAGGED_LISTS and part in _TAGGED_LISTS[loc[0]]:
            continue
        if isinstance(part, str) and (part.startswith("function-") or "[" in part):
            continue
        parts.append(part)
    return parts


def _describe(error: dict) -> tuple[str, str]:
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
        return f"{_show(value)} is not allowed; use {ctx.get('expected')}", ""
    if kind in ("model_type", "model_attributes_type", "dict_type"):
        return f"expected a table, got {_show(value)}; write a table, e.g. {{ key = value }}", ""
    if kind in ("list_type", "tuple_type"):
        return f"expected an array, got {_show(value)}; write an array, e.g. [1, 2]", ""
    if kind in ("string_type", "str_type"):
        return f'expected a string, got {_show(value)}; write it in quotes, e.g. "name"', ""
    if kind == "union_tag_invalid":
        expected = ", ".join(re.findall(r"'([^']+)'", str(ctx.get("expected_tags", ""))))
        return f"unknown type {_show(ctx.get('tag', value))}; use one of: {expected}", "type"
    if kind == "union_tag_not_found":
        loc = error.get("loc") or ("",)
        types = ", ".join(_TAGGED_LISTS.get(loc[0], ()))
        return f"missing; add type = one of: {types}", "type"
    reason = error.get("msg", "invalid value")
    return f"{reason} (got {_show(value)}); correct the value", ""


def _config_error(error: ValidationError) -> ConfigError:
    first = error.errors(include_url=False)[0]
    message, at = _describe(first)
    path = _join(_clean_loc(first["loc"]))
    if at:
        path = path + at if at.startswith("[") or not path else f"{path}.{at}"
    text = f"{path}: {message}" if path else message
    return ConfigError(" ".join(text.splitlines()))


# ---------------------------------------------------------------------------------------------
# Loading, overrides, dumping


def _read_toml(path: Path) -> dict:
    if not path.is_file():
        raise ConfigError(f"{path}: no such config file; check the path")
    try:
        text = path.read_text(encoding="utf-8")
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as error:
        # Python < 3.14 gives the position only in the message: "... (at line 3, column 7)"
        message = str(error)
        match = re.search(r"\s*\(at (?:line (\d+), column (\d+)|end of document)\)\s*$", message)
        reason = message[: match.start()] if match else message
        if match and match.group(1):
            where = f"line {match.group(1)}, column {match.group(2)}"
        else:
            where = f"line {max(len(text.rstrip().splitlines()), 1)} (end of file)"
        raise ConfigError(
            f"{path}: invalid TOML at {where}: {reason}; fix the syntax there"
        ) from None
    except UnicodeDecodeError as error:
        raise ConfigError(f"{path}: not UTF-8 text ({error}); save it as UTF-8") from None
    except OSError as error:
        raise ConfigError(f"{path}: cannot read ({error.strerror}); check the path") from None


def split_path(path: str) -> list:
    """`terms[0].activators[1].K` -> ["terms", 0, "activators", 1, "K"]."""
    tokens: list = []
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
    tokens = split_path(path)
    node: Any = raw
    for depth, token in enumerate(tokens):
        last = depth == len(tokens) - 1
        above = _join(tokens[:depth]) or "config"
        if isinstance(token, int):
            if not isinstance(node, list):
                raise ConfigError(f"{above}: not an array, cannot take [{token}]; check {path}")
            if token >= len(node):
                raise ConfigError(
                    f"{_join(tokens[: depth + 1])}: index out of range, {above} has {len(node)} "
                    f"entries; use an index below {len(node)}"
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
        raw = _read_toml(path)
        base_dir = path.absolute().parent
    else:
        raise ConfigError(
            f"config: expected a path to a .toml file or a table, got {type(source).__name__}; "
            "pass a path or a dict"
        )
    for key, value in (overrides or {}).items():
        set_path(raw, key, copy.deepcopy(value))
    try:
        return Config.model_validate(raw, context={"base_dir": base_dir})
    except ValidationError as error:
        raise _config_error(error) from None


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
        return key, value
    return key, parsed["v"] if list(parsed) == ["v"] else value


_LEADING = ("type",)
_TRAILING = ("activators", "inhibitors", "schedule")


def to_raw(cfg: Config) -> dict:
    """The config as plain tables (engine units), None values left out."""
    raw = cfg.model_dump(by_alias=True, exclude_none=True)
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


def _toml_string(text: str) -> str:
    out = []
    for char in text:
        if char in '"\\':
            out.append("\\" + char)
        elif ord(char) < 0x20 or ord(char) == 0x7F:
            out.append(f"\\u{ord(char):04x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'


def _toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        return (
            repr(value)
            if math.isfinite(value)
            else ("nan" if value != value else ("inf" if value > 0 else "-inf"))
        )
    if isinstance(value, str):
        return _toml_string(value)
    if isinstance(value, list | tuple):
        return "[" + ", ".join(_toml_value(item) for item in value) + "]"
    if isinstance(value, dict):
        if not value:
            return "{}"
        items = ", ".join(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in value.items())
        return "{ " + items + " }"
    raise TypeError(f"dump_toml: cannot write {type(value).__name__}")


def dump_toml(cfg: Config) -> str:
    """The resolved config (engine units, every default filled) as TOML text;
    `load_config(tomllib.loads(dump_toml(cfg))) == cfg`."""
    lines: list[str] = []

    def table(header: str, entries: dict) -> None:
        lines.append(header)
        lines.extend(f"{_toml_key(k)} = {_toml_value(v)}" for k, v in entries.items())
        lines.append("")

    for key, value in to_raw(cfg).items():
        if key in ("regions", "species", "populations"):
            for name, entries in value.items():
                table(f"[{key}.{_toml_key(name)}]", entries)
        elif isinstance(value, list):
            for entries in value:
                table(f"[[{key}]]", entries)
        else:
            table(f"[{key}]", value)
    return "\n".join(lines)


__all__ = [
    "Box",
    "Chemotaxis",
    "Coefficient",
    "Config",
    "ConfigError",
    "Conversion",
    "Custom",
    "Cylinder",
    "Death",
    "Face",
    "GridConfig",
    "Growth",
    "Initial",
    "Killing",
    "Modulator",
    "OutputConfig",
    "PointSource",
    "PopulationConfig",
    "PopulationFace",
    "PopulationInitial",
    "Proliferation",
    "Recruitment",
    "RegionConfig",
    "RegionSource",
    "Schedule",
    "Secretion",
    "Source",
    "SpeciesConfig",
    "SpeciesFace",
    "SpeciesInitial",
    "Sphere",
    "Spots",
    "Term",
    "TimeConfig",
    "Uptake",
    "dump_toml",
    "load_config",
    "parse_override",
]
