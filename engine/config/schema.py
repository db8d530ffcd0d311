"""The TOML config's tables as pydantic models: typed, validated, in engine units.

Every key is validated and every quantity converted to a float in engine units (um, s, nM,
cells/um^3, molecules) with `engine.config.units.to_engine`; `Config`'s validator then checks the
config as a whole (`engine.config.checks`). Validators raise `errors.fail`, which
`errors.config_error` turns into one `ConfigError` line: `<key path>: <what is wrong>; <the fix>`.
`engine.config.loading.load_config` is the entry point (DESIGN.md section 2).

Quantities whose unit depends on the field they belong to (initial values, boundary values,
Hill constants K) are converted with the field's kind: concentration (nM) for a species,
density (cells/um^3) for a population. A cell's state variables ([cells.NAME].state) are plain
numbers, and so is the K of a modulator that reads one.
"""

from __future__ import annotations

import copy
import math
import os
from pathlib import Path
from typing import Annotated, Any, ClassVar, Literal, Union

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

from engine.config.checks import check_config
from engine.config.errors import fail, key_part, listing, moved, show
from engine.config.units import ENGINE_UNITS, UnitError, to_engine
from engine.model.array_files import SUFFIXES
from engine.numerics.grid import AXIS_NAMES
from engine.numerics.memory import cells_bytes, state_bytes

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


def _fix_for(kind: str) -> str:
    if kind == "dimensionless":
        return "give a plain finite number, e.g. 2"
    unit = ENGINE_UNITS[kind]
    return f"give a finite number in {unit} or a string with a unit, e.g. {_EXAMPLES[kind]}"


def _bounds(number: float, shown: str, ge=None, gt=None, le=None, lt=None) -> None:
    if ge is not None and not number >= ge:
        fix = "use a non-negative value" if ge == 0 else f"use a value >= {ge:g}"
        raise fail(f"must be >= {ge:g}, got {shown}; {fix}")
    if gt is not None and not number > gt:
        fix = "use a positive value" if gt == 0 else f"use a value > {gt:g}"
        raise fail(f"must be > {gt:g}, got {shown}; {fix}")
    if le is not None and not number <= le:
        raise fail(f"must be <= {le:g}, got {shown}; use a value <= {le:g}")
    if lt is not None and not number < lt:
        raise fail(f"must be < {lt:g}, got {shown}; use a value < {lt:g}")


def _number(value: Any, kind: str, ge=None, gt=None, le=None, lt=None) -> float:
    """`value` (a number in engine units or a string with a unit) as a float in the engine unit
    of `kind`, within the bounds."""
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise fail(
            f"expected a number or a string with a unit, got {show(value)}; {_fix_for(kind)}"
        )
    try:
        number = to_engine(value, kind)
    except UnitError as error:
        raise fail(f"{error}; {_fix_for(kind)}") from None
    except Exception:  # noqa: BLE001 - pint's parser fails with assorted errors on garbage
        raise fail(f"cannot read {value!r} as a quantity; {_fix_for(kind)}") from None
    shown = show(value) if isinstance(value, str) else f"{number:g}"
    _bounds(number, shown, ge=ge, gt=gt, le=le, lt=lt)
    return number


def _q(kind: str, ge=None, gt=None, le=None, lt=None) -> BeforeValidator:
    """A float field in the engine unit of `kind`."""
    return BeforeValidator(lambda value: _number(value, kind, ge=ge, gt=gt, le=le, lt=lt))


def _integer(value: Any, ge: int | None = None) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise fail(f"expected an integer, got {show(value)}; write a whole number, e.g. 3")
    if ge is not None and value < ge:
        raise fail(f"must be >= {ge}, got {value}; use a whole number >= {ge}")
    return value


def _int(ge: int | None = None) -> BeforeValidator:
    return BeforeValidator(lambda value: _integer(value, ge))


def _boolean(value: Any) -> bool:
    if not isinstance(value, bool):
        raise fail(f"expected true or false, got {show(value)}; write true or false")
    return value


def _name(value: Any) -> str:
    if not isinstance(value, str):
        raise fail(f'expected a name (a string), got {show(value)}; write it in quotes, e.g. "IL2"')
    return value


Name = Annotated[str, BeforeValidator(_name)]
Length = Annotated[float, _q("length")]
Positive = Annotated[float, _q("length", gt=0)]
Duration = Annotated[float, _q("time", gt=0)]


def _resolve_file(value: Any, info: ValidationInfo, suffixes: tuple[str, ...]) -> str:
    """An existing file, relative to the config file's folder (or the working directory)."""
    if not isinstance(value, str) or not value:
        raise fail(f"expected a file path (a string), got {show(value)}; write it in quotes")
    path = Path(value).expanduser()
    if not path.is_absolute():
        base = (info.context or {}).get("base_dir") or Path.cwd()
        path = Path(base) / path
    path = Path(os.path.abspath(path))
    if path.suffix.lower() not in suffixes:
        raise fail(
            f"{str(path)!r} is not a {' or '.join(suffixes)} file; give a {suffixes[0]} file"
        )
    if not path.is_file():
        raise fail(
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
                    raise fail(f"unknown key; valid keys: {', '.join(valid)}", at=str(key))
        return data

    @classmethod
    def _written(cls, data: Any) -> dict[str, str]:
        """Field -> the key below the table where a short TOML form `data` wrote its value
        (overridden by subclasses that have short forms)."""
        return {}

    @model_validator(mode="wrap")
    @classmethod
    def _at_written_keys(cls, data: Any, handler):
        """Errors in the values of a short form at the keys the user wrote (defined after
        `_known_keys`, so it sees `data` before `_normalize`)."""
        written = cls._written(data)
        try:
            return handler(data)
        except ValidationError as error:
            raise moved(error, written) or error from None


# ---------------------------------------------------------------------------------------------
# Field values (boundary values, initial values): concentration for species, density for
# populations, plain numbers where the field is not known (the grid's default face).


def _field_value(value: Any, kind: str | None) -> float | None:
    if value is None:
        return None
    if kind is None:
        if isinstance(value, str):
            raise fail(
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
                raise fail(f"unknown boundary {data!r}; use {forms}")
            return {"kind": data}
        if not isinstance(data, dict) or "kind" in data or not data:
            return data
        if len(data) != 1:
            raise fail(f"expected one boundary kind, got keys {', '.join(data)}; use {forms}")
        ((kind, arg),) = data.items()
        if kind not in _FACE_KINDS:
            raise fail(f"unknown boundary kind; use {forms}", at=str(kind))
        if kind == "dirichlet":
            if isinstance(arg, dict):
                if set(arg) - {"value"}:
                    raise fail("unknown key; valid keys: value", at=f"dirichlet.{next(iter(arg))}")
                return {"kind": kind, **arg}
            return {"kind": kind, "value": arg}
        if kind == "robin":
            if not isinstance(arg, dict):
                raise fail(
                    f"expected a table, got {show(arg)}; use {forms}",
                    at="robin",
                )
            for key in arg:
                if key not in ("h", "outside"):
                    raise fail("unknown key; valid keys: h, outside", at=f"robin.{key}")
            return {"kind": kind, **arg}
        if arg not in ({}, True):
            raise fail(
                f"{kind} takes no parameters; write {kind!r} or {{ {kind} = {{}} }}", at=kind
            )
        return {"kind": kind}

    @classmethod
    def _written(cls, data):
        if not isinstance(data, dict) or len(data) != 1:
            return {}
        ((kind, arg),) = data.items()
        if kind == "dirichlet":
            return {"value": "dirichlet.value" if isinstance(arg, dict) else "dirichlet"}
        return {"h": "robin.h", "outside": "robin.outside"} if kind == "robin" else {}

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
            raise fail(f"expected a number or a table, got {show(data)}; {hint}")
        if isinstance(data, int | float | str):
            return {"kind": "value", "value": data}
        if not isinstance(data, dict) or "kind" in data or not data:
            return data
        forms = [form for form in ("gaussian", "region", "random", "file") if form in data]
        if len(forms) != 1:
            raise fail(f"expected exactly one of gaussian, region, random, file; {hint}")
        form = forms[0]
        allowed = {"region": ("region", "value")}.get(form, (form,))
        for key in data:
            if key not in allowed:
                raise fail(f"unknown key; valid keys: {', '.join(allowed)}", at=str(key))
        if form == "region":
            if "value" not in data:
                raise fail("missing; add value = the value inside the region", at="value")
            return {"kind": "region", **data}
        if form == "file":
            return {"kind": "file", "path": data["file"]}
        inner = data[form]
        if not isinstance(inner, dict):
            raise fail(f"expected a table, got {show(inner)}; {hint}", at=form)
        for key in inner:
            if key not in _INITIAL_FORMS[form]:
                valid = ", ".join(_INITIAL_FORMS[form])
                raise fail(f"unknown key; valid keys: {valid}", at=f"{form}.{key}")
        for key in _INITIAL_NEEDS[form]:  # as `_complete`, but naming the key as written
            if key not in inner:
                raise fail(f"missing; a {form} initial condition needs {key}", at=f"{form}.{key}")
        return {"kind": form, **inner}

    @classmethod
    def _written(cls, data):
        if isinstance(data, int | float | str) and not isinstance(data, bool):
            return {"value": ""}
        if not isinstance(data, dict) or "kind" in data:
            return {}
        if "file" in data:
            return {"path": "file"}
        form = next((form for form in _INITIAL_FORMS if form in data), None)
        return {key: f"{form}.{key}" for key in _INITIAL_FORMS[form]} if form else {}

    @field_validator("value", "amplitude", "mean", "std", mode="before")
    @classmethod
    def _field_units(cls, value):
        return _field_value(value, cls.unit_kind)

    @field_validator("path", mode="before")
    @classmethod
    def _file(cls, value, info: ValidationInfo):
        return None if value is None else _resolve_file(value, info, SUFFIXES)

    @model_validator(mode="after")
    def _complete(self):
        for key in _INITIAL_NEEDS[self.kind]:
            if getattr(self, key) is None:
                raise fail(f"missing; a {self.kind} initial condition needs {key}", at=key)
        for key in _INITIAL_OPTIONAL:
            if key not in _INITIAL_NEEDS[self.kind] and getattr(self, key) is not None:
                raise fail(f"does not apply to a {self.kind} initial condition; remove it", at=key)
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
        raise fail(f"expected an array of 1 to 3 voxel counts, got {show(value)}; e.g. [128, 128]")
    if not 1 <= len(value) <= 3:
        raise fail(
            f"expected 1 to 3 axes, got {len(value)}; give the voxel counts (nz, ny, nx), "
            "(ny, nx) or (nx,), e.g. [128, 128]"
        )
    for axis, count in enumerate(value):
        if isinstance(count, bool) or not isinstance(count, int):
            raise fail(
                f"expected a voxel count, got {show(count)}; write a whole number", at=f"[{axis}]"
            )
        if count < 1:
            raise fail(
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
                raise fail(
                    f"has {got} entries, the grid has {self.ndim} axes ({', '.join(self.axes)}); "
                    "give one number or one per axis",
                    at=key,
                )
        if self.depth is not None and self.ndim == 3:
            raise fail("a 3D grid has no depth (its z axis is resolved); remove it", at="depth")
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
        raise fail(
            f'expected "auto" or a time step, {reason}; write "auto" or e.g. "1 s"'
        ) from None


def _key_seed(value: Any) -> int:
    """A seed of JAX's random keys: 0 <= seed < 2^32 (a larger one would be cut to 32 bits
    outside float64 runs, or overflow)."""
    seed = _integer(value, ge=0)
    if seed >= 2**32:
        raise fail(f"must be below 2^32, got {seed}; use a whole number from 0 to {2**32 - 1}")
    return seed


class TimeConfig(_Model):
    """end, dt, output_every in s (frames at 0, every output_every and at end, also when
    output_every > end); dt "auto" is safety times the stepper's stability limit."""

    end: Duration
    dt: Annotated[float | Literal["auto"], BeforeValidator(_dt)] = "auto"
    stepper: Literal["explicit", "imex", "quasi_steady"] = "imex"
    scheme: Literal["euler", "ssprk2", "ssprk3"] = "ssprk3"
    output_every: Duration | None = None
    dtype: Literal["float32", "float64"] = "float32"
    seed: Annotated[int, BeforeValidator(_key_seed)] = 0
    adaptive: Annotated[bool, BeforeValidator(_boolean)] = False
    tolerance: Annotated[float, _q("dimensionless", gt=0, lt=1)] = 1e-3
    safety: Annotated[float, _q("dimensionless", gt=0, le=1)] = 0.9
    compensated: Annotated[bool, BeforeValidator(_boolean)] = True

    @model_validator(mode="after")
    def _within_end(self):
        if self.dt != "auto" and not self.dt < self.end:
            raise fail(
                f'dt = {self.dt:g} s is not below end = {self.end:g} s; use a smaller dt or "auto"',
                at="dt",
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
    """A named mask: exactly one of sphere, box, cylinder, spots, file (.npy or HDF5,
    `regions.read_mask`; an absolute path)."""

    sphere: Sphere | None = None
    box: Box | None = None
    cylinder: Cylinder | None = None
    spots: Spots | None = None
    file: str | None = None

    @field_validator("file", mode="before")
    @classmethod
    def _file(cls, value, info: ValidationInfo):
        return None if value is None else _resolve_file(value, info, SUFFIXES)

    @model_validator(mode="after")
    def _one_shape(self):
        given = [kind for kind in _REGION_KINDS if getattr(self, kind) is not None]
        if len(given) != 1:
            got = ", ".join(given) if given else "none"
            raise fail(f"needs exactly one of {', '.join(_REGION_KINDS)}, got {got}; keep one")
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
        raise fail(
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
        _one_uptake_pair(self)
        return self


def _one_uptake_pair(uptake) -> None:
    """An uptake (term or cells') gives exactly one pair: vmax and km, or k_on and receptors."""
    saturable = uptake.vmax is not None or uptake.km is not None
    linear = uptake.k_on is not None or uptake.receptors is not None
    if saturable and linear:
        raise fail("gives both vmax/km and k_on/receptors; keep one pair")
    if not saturable and not linear:
        raise fail("needs vmax and km, or k_on and receptors; add one pair")
    for first, second in (
        ("vmax", "km"),
        ("km", "vmax"),
        ("k_on", "receptors"),
        ("receptors", "k_on"),
    ):
        if getattr(uptake, first) is not None and getattr(uptake, second) is None:
            raise fail(
                f"missing ({first} is given); add {second}, or use the other pair", at=second
            )


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
            raise fail(f"{value!r} is not a valid term name; use letters, digits and _")
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
                raise fail(
                    "missing; repeated doses (every) need a duration <= every", at="duration"
                )
            if self.duration > self.every:
                raise fail(
                    f"{self.duration:g} s is longer than every = {self.every:g} s; "
                    "make each dose's duration <= every",
                    at="duration",
                )
        elif self.count is not None:
            raise fail(
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

TAGGED = {"terms": TERM_TYPES, "sources": SOURCE_TYPES}
"""Arrays of tables whose entries are told apart by `type` -> the type names."""


# ---------------------------------------------------------------------------------------------
# Cells (DESIGN.md section 7): individual cells of named types, each type one [cells.NAME]


def _molecule_rate(value: Any) -> float:
    """Molecules per cell per second: a number, "20 molecule/s", or "20 1/s" (molecules
    counted as a plain number)."""
    kind = "molecule_rate"
    if isinstance(value, str):
        try:
            to_engine(value, "rate")
            kind = "rate"  # a count per second
        except UnitError as error:
            if "must be finite" in str(error):
                kind = "rate"
        except Exception:  # noqa: BLE001, S110 - unreadable: `_number` below says why
            pass
    try:
        return _number(value, kind, ge=0)
    except PydanticCustomError as error:
        reason = error.context["message"].split(";")[0]
        raise fail(
            f"{reason}; give molecules per cell per second, a number or a string with a unit, "
            'e.g. "20 molecule/s" or "20 1/s"'
        ) from None


MoleculeRate = Annotated[float, BeforeValidator(_molecule_rate)]


def _receptors(value: Any) -> float | str:
    """Receptors per cell: a number, or the name of a state variable of the cell type."""
    if isinstance(value, str) and value.isidentifier():
        return value
    try:
        return _number(value, "dimensionless", ge=0)
    except PydanticCustomError as error:
        reason = error.context["message"].split(";")[0]
        raise fail(
            f"{reason}; give a number of receptors per cell or the name of a state variable, "
            'e.g. "R"'
        ) from None


class CellPlace(_Model):
    """Where a type's cells start: uniformly at random in the named `region`, or at the
    positions in `file` (.npy, (count, ndim) um, the grid's axis order z, y, x; relative to
    the config's folder). A type without `place` starts uniformly in the whole grid."""

    region: Name | None = None
    file: str | None = None

    @field_validator("file", mode="before")
    @classmethod
    def _file(cls, value, info: ValidationInfo):
        return None if value is None else _resolve_file(value, info, (".npy",))

    @model_validator(mode="after")
    def _one_form(self):
        given = [key for key in ("region", "file") if getattr(self, key) is not None]
        if len(given) != 1:
            got = ", ".join(given) if given else "none"
            raise fail(
                f"needs exactly one of region, file, got {got}; keep one, or leave place out "
                "to place the cells in the whole grid"
            )
        return self

    @property
    def kind(self) -> str:
        """region or file."""
        return "region" if self.region is not None else "file"


class CellSecretion(_Model):
    """Each cell adds rate molecules/s of species to its voxel (modulated)."""

    species: Name
    rate: MoleculeRate
    activators: list[Modulator] = []
    inhibitors: list[Modulator] = []


class CellUptake(_Model):
    """Each cell takes up vmax c/(km + c), or k_on receptors c, molecules/s of species from
    its voxel; receptors a number or the name of a state variable of the type."""

    species: Name
    vmax: MoleculeRate | None = None
    km: Annotated[float, _q("concentration", gt=0)] | None = None
    k_on: Annotated[float, _q("association", ge=0)] | None = None
    receptors: Annotated[float | str, BeforeValidator(_receptors)] | None = None
    activators: list[Modulator] = []
    inhibitors: list[Modulator] = []

    @model_validator(mode="after")
    def _one_pair(self):
        _one_uptake_pair(self)
        return self


class StateTerm(_Model):
    """d variable/dt += (production - decay variable) x modulation: production in the
    variable's units per s (the variables are plain numbers: 1/s), decay 1/s."""

    variable: Name
    production: Annotated[float, _q("rate", ge=0)] = 0.0
    decay: Annotated[float, _q("rate", ge=0)] = 0.0
    activators: list[Modulator] = []
    inhibitors: list[Modulator] = []


class CellFate(_Model):
    """A per-cell death rate (1/s), modulated."""

    rate: Annotated[float, _q("rate", ge=0)]
    activators: list[Modulator] = []
    inhibitors: list[Modulator] = []


class CellDivision(_Model):
    """A per-cell division rate (1/s), modulated; `halve`: the state variables mother and
    daughter each get half of (the others are copied)."""

    rate: Annotated[float, _q("rate", ge=0)]
    halve: list[Name] = []
    activators: list[Modulator] = []
    inhibitors: list[Modulator] = []


class CellTypeConfig(_Model):
    """One type of cell: `count` cells at t = 0, placed by `place` (default: uniformly in the
    whole grid, seeded by time.seed), at most `capacity` alive at once (default 4 x count, at
    least 1), random motility (um^2/s), chemotaxis, state variables (name -> initial value,
    plain numbers >= 0), secretion, uptake, state terms, division and death."""

    count: Annotated[int, _int(ge=0)]
    place: CellPlace | None = None
    capacity: Annotated[int, _int(ge=1)] | None = None
    motility: Annotated[float, _q("diffusivity", ge=0)] = 0.0
    chemotaxis: Chemotaxis | None = None
    state: dict[str, Annotated[float, _q("dimensionless", ge=0)]] = {}
    secretion: list[CellSecretion] = []
    uptake: list[CellUptake] = []
    state_terms: list[StateTerm] = []
    division: CellDivision | None = None
    death: CellFate | None = None

    @model_validator(mode="after")
    def _capacity(self):
        if self.capacity is None:
            self.capacity = max(4 * self.count, 1)
        elif self.capacity < self.count:
            raise fail(
                f"{self.capacity} is below count = {self.count}; raise capacity to at least "
                f"{self.count} or lower count",
                at="capacity",
            )
        return self

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(self.state)

    def modulated(self) -> list[tuple[str, Any]]:
        """(key path below the type, table) of every table of the type that takes
        activators and inhibitors, in config order."""
        tables: list[tuple[str, Any]] = []
        for key in ("secretion", "uptake", "state_terms"):
            tables += [(f"{key}[{i}]", entry) for i, entry in enumerate(getattr(self, key))]
        tables += [
            (key, fate)
            for key, fate in (("division", self.division), ("death", self.death))
            if fate is not None
        ]
        return tables

    def values_per_cell(self, ndim: int) -> int:
        """Numbers each slot holds: position (ndim), alive, id and the state variables."""
        return ndim + 2 + len(self.state)


def _mesh(value: Any):
    if value is None or value == "auto":
        return value
    if isinstance(value, int) and not isinstance(value, bool):
        value = [value]
    counts = value if isinstance(value, list | tuple) else None
    if not counts or not all(isinstance(n, int) and not isinstance(n, bool) for n in counts):
        raise fail(
            f'expected "auto" or devices per leading grid axis, got {show(value)}; e.g. [2, 2]'
        )
    if any(n < 1 for n in counts):
        raise fail(f"devices per axis must be >= 1, got {list(counts)}; e.g. [2, 2]")
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


def _modulator_tables(data: dict):
    """(key path, modulator table, the state variables `of` may also name (None in
    [[terms]])) of every activator and inhibitor of the raw config `data`."""
    tables: list[tuple[str, dict, dict | None]] = []
    terms = data.get("terms")
    for i, term in enumerate(terms if isinstance(terms, list) else ()):
        tables.append((f"terms[{i}]", term, None))
    cells = data.get("cells")
    for name, cell_type in (cells if isinstance(cells, dict) else {}).items():
        if not isinstance(cell_type, dict):
            continue
        here = f"cells.{key_part(str(name))}"
        state = cell_type.get("state") if isinstance(cell_type.get("state"), dict) else {}
        for key in ("secretion", "uptake", "state_terms"):
            entries = cell_type.get(key)
            for i, entry in enumerate(entries if isinstance(entries, list) else ()):
                tables.append((f"{here}.{key}[{i}]", entry, state))
        for key in ("division", "death"):
            tables.append((f"{here}.{key}", cell_type.get(key), state))
    for here, table, state in tables:
        if not isinstance(table, dict):
            continue
        for group in ("activators", "inhibitors"):
            modulators = table.get(group)
            for j, modulator in enumerate(modulators if isinstance(modulators, list) else ()):
                if isinstance(modulator, dict):
                    yield f"{here}.{group}[{j}]", modulator, state


def _hill_in_units(
    modulator: dict, here: str, species: dict, populations: dict, state: dict | None, types=()
) -> float:
    """A modulator's K given as a string with a unit, in the engine unit of what `of` names:
    nM for a species, cells/um^3 for a population or (cells' modulators) the local density of
    a cell type; a cell's state variable takes numbers."""
    of = modulator.get("of")
    if of in species:
        kind = "concentration"
    elif of in populations or (state is not None and of in types):
        kind = "density"
    elif state is not None and (
        of in state or (isinstance(of, str) and of.partition(".")[0] in types)
    ):
        raise fail(
            f"{modulator['K']!r}: {of!r} is a state variable"
            + (" summed per um^3 over a type's cells" if of not in state else "")
            + ", a plain number; give K as a number in its units, e.g. K = 0.5",
            at=f"{here}.K",
        )
    elif isinstance(of, str):
        defined = list(species) + list(populations)
        what = "species or population"
        if state is not None:
            defined += list(types) + list(state)
            what = "species, population, cell type or state variable"
        raise fail(f'unknown {what} "{of}"; defined: {listing(defined)}', at=f"{here}.of")
    else:
        return modulator["K"]  # `of` itself is wrong: its own validator says so
    try:
        return _number(modulator["K"], kind, gt=0)
    except PydanticCustomError as error:
        field = "a species" if kind == "concentration" else "a population"
        message = error.context["message"]
        raise fail(f"{message} (of = {of!r} is {field})", at=f"{here}.K") from None


class Config(_Model):
    """A validated config, every quantity a float in engine units."""

    grid: GridConfig
    time: TimeConfig
    regions: dict[str, RegionConfig] = {}
    species: dict[str, SpeciesConfig] = {}
    populations: dict[str, PopulationConfig] = {}
    terms: list[Term] = []
    sources: list[Source] = []
    cells: dict[str, CellTypeConfig] = {}
    output: OutputConfig = Field(default_factory=OutputConfig)
    parallel: ParallelConfig = Field(default_factory=ParallelConfig)

    @classmethod
    def _normalize(cls, data):
        """Hill constants K given with a unit, in [[terms]] and in the tables of [cells]:
        converted in the units of `of` (concentration for a species, density for a
        population or a cell type's local density), which needs the names of species,
        populations and cell types, so a name that is both a species and a population is
        refused first. A cell's state variables are plain numbers: their K must be one too."""
        if not isinstance(data, dict):
            return data
        data = copy.deepcopy(data)
        species = data.get("species") if isinstance(data.get("species"), dict) else {}
        populations = data.get("populations") if isinstance(data.get("populations"), dict) else {}
        for name in populations:
            if name in species:
                raise fail(
                    f'"{name}" is also a species; give every species and population its own name',
                    at=f"populations.{key_part(str(name))}",
                )
        types = list(data["cells"]) if isinstance(data.get("cells"), dict) else []
        for here, modulator, state in _modulator_tables(data):
            if isinstance(modulator.get("K"), str):
                modulator["K"] = _hill_in_units(modulator, here, species, populations, state, types)
        return data

    @model_validator(mode="after")
    def _whole(self):
        check_config(self)
        return self

    def memory_bytes(self) -> int:
        """Estimated bytes of the state while stepping: the fields
        (`numerics.memory.state_bytes`) plus the cells (`numerics.memory.cells_bytes`: every
        type's capacity x (ndim position + alive + id + state variables) values, at the
        fields' bytes per value and with the same STATE_COPIES copies the loop holds)."""
        per_value = self.bytes_per_value
        fields = state_bytes(len(self.field_names), math.prod(self.grid.shape), per_value)
        return fields + cells_bytes(self.cell_values(), per_value)

    @property
    def bytes_per_value(self) -> int:
        return 8 if self.time.dtype == "float64" else 4

    def cell_values(self) -> int:
        """Numbers the cells' arrays hold: per type capacity x (ndim + 2 + state variables)."""
        ndim = self.grid.ndim
        return sum(c.capacity * c.values_per_cell(ndim) for c in self.cells.values())

    @property
    def field_names(self) -> tuple[str, ...]:
        """Species then populations, in config order."""
        return tuple(self.species) + tuple(self.populations)


__all__ = [
    "Box",
    "CellDivision",
    "CellFate",
    "CellPlace",
    "CellSecretion",
    "CellTypeConfig",
    "CellUptake",
    "Chemotaxis",
    "Coefficient",
    "Config",
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
    "ParallelConfig",
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
    "StateTerm",
    "Term",
    "TimeConfig",
    "Uptake",
]
