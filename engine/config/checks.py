"""Checks of a config as a whole, run by `Config`'s validator once every table is valid:
names, numbers that fit the run's dtype, references between tables, faces, and geometry
against the grid (coordinates per axis, regions and point sources inside it, each region
holding a voxel centre, no more spots than voxels, mask and position files). Lengths in um."""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
from pydantic import BaseModel

from engine.config.errors import fail, key_part, key_path, listing
from engine.model.array_files import load_npy
from engine.model.regions import read_mask

if TYPE_CHECKING:
    from engine.config.schema import CellTypeConfig, Coefficient, Config, Initial

MOST_DOSES = 10**6
"""Most doses one source's schedule may give before time.end (`_Checker.doses`)."""

CELL_ARRAYS = ("position", "alive", "id", "next_id", "overflow", "cell", "axis")
"""Every cell type's own arrays: no state variable may take these names."""


def check_config(cfg: Config) -> None:
    """Raise the first whole-config problem as a `fail` error, its key path in `at` (the
    checks run inside `Config`'s validator, so pydantic collects it)."""
    _Checker(cfg).run()


def _numbers(node, parts: tuple = ()):
    """(key path parts, number) of every float in `node`, a config table; a `value` (of a
    coefficient, initial condition or face, often in short form: `diffusion = 50`) at the key
    of its table."""
    if isinstance(node, BaseModel):
        for name, field in type(node).model_fields.items():
            below = parts if name == "value" else (*parts, field.alias or name)
            yield from _numbers(getattr(node, name), below)
    elif isinstance(node, dict):
        for key, value in node.items():
            yield from _numbers(value, (*parts, key))
    elif isinstance(node, list | tuple):
        for index, value in enumerate(node):
            yield from _numbers(value, (*parts, index))
    elif isinstance(node, float):
        yield parts, node


class _Checker:
    """Whole-config checks: names, numbers, references, faces, geometry."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.grid = cfg.grid

    def run(self) -> None:
        self.names()
        self.numbers()
        self.faces()
        self.regions()
        self.fields()
        self.terms()
        self.sources()
        self.cells()
        fields = self.cfg.output.fields or ()
        for i, name in enumerate(fields):
            self.ref(name, "field", f"output.fields[{i}]")
            if name in fields[:i]:
                raise fail(
                    f'"{name}" is listed twice; list each field once', at=f"output.fields[{i}]"
                )

    # names --------------------------------------------------------------------------------
    def names(self) -> None:
        if not (self.cfg.species or self.cfg.populations or self.cfg.cells):
            raise fail(
                "the config defines no species, population or cell type: nothing to simulate; "
                "add a [species.NAME], [populations.NAME] or [cells.NAME] table",
                at="species",
            )
        for table in ("species", "populations"):
            for name in getattr(self.cfg, table):
                if not name.isidentifier():
                    raise fail(
                        f"{name!r} is not a valid name; use letters, digits and _, "
                        "not starting with a digit",
                        at=f"{table}.{key_part(name)}",
                    )

    def numbers(self) -> None:
        """Every number fits the run's dtype (a float32 run holds none beyond 3.4e38)."""
        dtype = self.cfg.time.dtype
        largest = float(np.finfo(dtype).max)
        for parts, number in _numbers(self.cfg):
            if abs(number) > largest:
                raise fail(
                    f"{number:g} does not fit the run's {dtype} (largest {largest:.3g}); use a "
                    'smaller value, or time.dtype = "float64"',
                    at=key_path(parts),
                )

    def ref(self, name: str, want: str, at: str) -> None:
        species, populations = self.cfg.species, self.cfg.populations
        if want == "region":
            if name not in self.cfg.regions:
                raise fail(f'unknown region "{name}"; defined: {listing(self.cfg.regions)}', at=at)
            return
        if want == "field":
            if name not in species and name not in populations:
                defined = listing(list(species) + list(populations))
                raise fail(f'unknown species or population "{name}"; defined: {defined}', at=at)
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
            raise fail(
                f'"{name}" is a {other_kind}, not a {want}; {plural} defined: {listing(own)}',
                at=at,
            )
        raise fail(f'unknown {want} "{name}"; defined: {listing(own)}', at=at)

    # faces --------------------------------------------------------------------------------
    def faces(self) -> None:
        valid = self.grid.faces
        for table in ("species", "populations"):
            for name, field in getattr(self.cfg, table).items():
                for face in field.boundary:
                    if face not in valid:
                        raise fail(
                            f"not a face of a {self.grid.ndim}D grid; valid faces: "
                            f"{', '.join(valid)}",
                            at=f"{table}.{name}.boundary.{key_part(face)}",
                        )
                for axis in self.grid.axes:
                    ends = (f"{axis}_min", f"{axis}_max")
                    kinds = [field.boundary.get(end, self.grid.boundary).kind for end in ends]
                    periodic = [kind == "periodic" for kind in kinds]
                    if periodic[0] != periodic[1]:
                        lonely = ends[0] if periodic[0] else ends[1]
                        other = ends[1] if periodic[0] else ends[0]
                        at = ends[0] if ends[0] in field.boundary else ends[1]
                        raise fail(
                            f"periodic on {lonely} but not on {other}; periodic applies to both "
                            f'faces of an axis, set {other} = "periodic" too or neither',
                            at=f"{table}.{name}.boundary.{at}",
                        )

    # geometry -----------------------------------------------------------------------------
    def coordinates(self, values, at: str) -> None:
        if len(values) != self.grid.ndim:
            raise fail(
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
        # squares as d * d, not d ** 2: a huge (float64) length squares to inf, not an error
        gaps = [max(lower[a] - center[a], 0.0, center[a] - upper[a]) for a in axes]
        if math.sqrt(sum(gap * gap for gap in gaps)) > radius:
            raise fail(
                f"the {shape} lies outside the grid {self.grid.extent()}; move its center "
                "inside or enlarge the grid",
                at=f"regions.{name}",
            )
        offsets = [self.nearest_centre(a, center[a]) - center[a] for a in axes]
        if sum(d * d for d in offsets) > radius * radius:
            raise fail(
                f"the {shape} (radius {radius:g} um) contains no voxel centre; enlarge its radius "
                f"(spacing {', '.join(f'{h:g}' for h in self.grid.spacing)} um)",
                at=f"regions.{name}.{shape}.radius",
            )

    def regions(self) -> None:
        for name, region in self.cfg.regions.items():
            here = f"regions.{key_part(name)}"
            if region.sphere is not None:
                self.coordinates(region.sphere.center, f"{here}.sphere.center")
                shape = region.sphere
                self.ball(name, "sphere", shape.center, shape.radius, range(self.grid.ndim))
            elif region.cylinder is not None:
                shape = region.cylinder
                if shape.axis not in self.grid.axes:
                    raise fail(
                        f'"{shape.axis}" is not an axis of a {self.grid.ndim}D grid; '
                        f"use one of {', '.join(self.grid.axes)}",
                        at=f"{here}.cylinder.axis",
                    )
                self.coordinates(shape.center, f"{here}.cylinder.center")
                along = self.grid.axes.index(shape.axis)
                across = [a for a in range(self.grid.ndim) if a != along]
                self.ball(name, "cylinder", shape.center, shape.radius, across)
            elif region.spots is not None:
                voxels = math.prod(self.grid.shape)
                if region.spots.count > voxels:
                    raise fail(
                        f"{region.spots.count} spots on a grid of {voxels} voxels, more than "
                        f"one a voxel; use at most {voxels}",
                        at=f"{here}.spots.count",
                    )
            elif region.box is not None:
                box = region.box
                self.coordinates(box.lower, f"{here}.box.lower")
                self.coordinates(box.upper, f"{here}.box.upper")
                for a, axis in enumerate(self.grid.axes):
                    if box.lower[a] > box.upper[a]:
                        raise fail(
                            f"lower {box.lower[a]:g} exceeds upper {box.upper[a]:g} on axis "
                            f"{axis}; swap them",
                            at=f"{here}.box.lower",
                        )
                lower, upper = self.grid.lower, self.grid.upper
                if any(
                    box.upper[a] < lower[a] or box.lower[a] > upper[a]
                    for a in range(self.grid.ndim)
                ):
                    raise fail(
                        f"the box lies outside the grid {self.grid.extent()}; move it inside",
                        at=here,
                    )
                if not all(
                    self.centre_range(a, box.lower[a], box.upper[a]) for a in range(self.grid.ndim)
                ):
                    raise fail(
                        "the box contains no voxel centre; enlarge it to span a voxel centre",
                        at=here,
                    )
            elif region.file is not None:
                try:
                    shape = read_mask(region.file, name).shape
                except ValueError as error:
                    raise fail(
                        f"cannot read {region.file!r} as a mask: {error}; give a .npy array or "
                        f"an HDF5 file with the mask as regions/{name} or its only dataset, of "
                        "booleans or finite numbers (nonzero = inside)",
                        at=f"{here}.file",
                    ) from None
                if tuple(shape) != tuple(self.grid.shape):
                    raise fail(
                        f"the mask has shape {tuple(shape)}, the grid {tuple(self.grid.shape)}; "
                        "give a mask of the grid's shape",
                        at=f"{here}.file",
                    )

    def initial(self, initial: Initial, at: str) -> None:
        if initial.kind == "region":
            self.ref(initial.region, "region", f"{at}.region")
        if initial.kind == "gaussian":
            self.coordinates(initial.center, f"{at}.gaussian.center")

    def coefficient(self, coefficient: Coefficient, at: str) -> None:
        for region in coefficient.regions:
            self.ref(region, "region", f"{at}.regions.{key_part(region)}")

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
            if term.type == "conversion" and term.from_ == term.to:
                raise fail(
                    f'converts "{term.to}" into itself, which changes nothing; name another '
                    "population, or use a death term for a loss",
                    at=f"{here}.to",
                )
            for k, name in enumerate(getattr(term, "crowding", None) or ()):
                self.ref(name, "population", f"{here}.crowding[{k}]")
            for group in ("activators", "inhibitors"):
                for j, modulator in enumerate(getattr(term, group)):
                    self.ref(modulator.of, "field", f"{here}.{group}[{j}].of")

    def sources(self) -> None:
        for i, source in enumerate(self.cfg.sources):
            here = f"sources[{i}]"
            self.ref(source.species, "species", f"{here}.species")
            if source.type == "region":
                self.ref(source.region, "region", f"{here}.region")
            else:
                self.coordinates(source.position, f"{here}.position")
                lower, upper = self.grid.lower, self.grid.upper
                if not all(lo <= p < up for p, lo, up in zip(source.position, lower, upper)):
                    where = ", ".join(f"{p:g}" for p in source.position)
                    extent = " x ".join(f"[{lo:g}, {up:g})" for lo, up in zip(lower, upper))
                    raise fail(
                        f"({where}) um lies outside the grid {extent} um (upper faces "
                        "excluded); give a position inside it",
                        at=f"{here}.position",
                    )
            self.doses(source.schedule, f"{here}.schedule")

    def doses(self, schedule, at: str) -> None:
        """At most `MOST_DOSES` doses before time.end: each dose's start and end cut the
        steps, so that a dose every nanosecond made validate count 5e12 steps and the run
        step through its doses without end."""
        if schedule.every is None or schedule.start >= self.cfg.time.end:
            return
        doses = math.floor((self.cfg.time.end - schedule.start) / schedule.every) + 1
        if schedule.count is not None:
            doses = min(doses, schedule.count)
        if doses > MOST_DOSES:
            raise fail(
                f"{schedule.every:g} s gives {doses:.3g} doses by time.end, more than "
                f"{MOST_DOSES:g} (each dose's start and end cut the steps); lengthen every "
                "or set count",
                at=f"{at}.every",
            )

    # cells --------------------------------------------------------------------------------
    def cells(self) -> None:
        for name, cell_type in self.cfg.cells.items():
            here = f"cells.{key_part(name)}"
            if not name.isidentifier():
                raise fail(
                    f"{name!r} is not a valid cell type name; use letters, digits and _, "
                    "not starting with a digit",
                    at=here,
                )
            self.cell_state(name, cell_type, here)
            if cell_type.place is not None:
                if cell_type.place.region is not None:
                    self.ref(cell_type.place.region, "region", f"{here}.place.region")
                else:
                    self.cell_file(cell_type, f"{here}.place.file")
            if cell_type.chemotaxis is not None:
                self.ref(cell_type.chemotaxis.species, "species", f"{here}.chemotaxis.species")
            for key in ("secretion", "uptake"):
                for i, entry in enumerate(getattr(cell_type, key)):
                    self.ref(entry.species, "species", f"{here}.{key}[{i}].species")
            for i, uptake in enumerate(cell_type.uptake):
                if isinstance(uptake.receptors, str):
                    self.state_ref(
                        uptake.receptors, cell_type, here, f"{here}.uptake[{i}].receptors"
                    )
            for i, term in enumerate(cell_type.state_terms):
                self.state_ref(term.variable, cell_type, here, f"{here}.state_terms[{i}].variable")
            if cell_type.division is not None:
                halve = cell_type.division.halve
                for k, variable in enumerate(halve):
                    at = f"{here}.division.halve[{k}]"
                    self.state_ref(variable, cell_type, here, at)
                    if variable in halve[:k]:
                        raise fail(f'"{variable}" is listed twice; list it once', at=at)
            readable = list(self.cfg.species) + list(self.cfg.populations)
            readable += list(self.cfg.cells) + list(cell_type.state)
            readable += [f"{t}.{v}" for t, other in self.cfg.cells.items() for v in other.state]
            for key, table in cell_type.modulated():
                for group in ("activators", "inhibitors"):
                    for j, modulator in enumerate(getattr(table, group)):
                        if modulator.of not in readable:
                            raise fail(
                                f"unknown species, population, cell type or state variable "
                                f'"{modulator.of}";'
                                f" defined: {listing(readable)}",
                                at=f"{here}.{key}.{group}[{j}].of",
                            )

    def cell_state(self, name: str, cell_type: CellTypeConfig, here: str) -> None:
        """State variable names: identifiers, neither a field nor one of the cells' arrays."""
        for variable in cell_type.state:
            at = f"{here}.state.{key_part(variable)}"
            if not variable.isidentifier():
                raise fail(
                    f"{variable!r} is not a valid state variable name; use letters, digits "
                    "and _, not starting with a digit",
                    at=at,
                )
            if variable in self.cfg.species or variable in self.cfg.populations:
                kind = "species" if variable in self.cfg.species else "population"
            elif variable in self.cfg.cells:
                kind = "cell type"
            else:
                kind = None
            if kind is not None:
                raise fail(
                    f'"{variable}" is also a {kind}, which modulators read by that name; '
                    "give the state variable another name",
                    at=at,
                )
            if variable in CELL_ARRAYS:
                raise fail(
                    f'"{variable}" names an array every cell type has ({", ".join(CELL_ARRAYS)});'
                    " give the state variable another name",
                    at=at,
                )

    def state_ref(self, variable: str, cell_type: CellTypeConfig, here: str, at: str) -> None:
        if variable in cell_type.state:
            return
        if cell_type.state:
            fix = f"defined: {listing(cell_type.state)}"
        else:
            fix = f"defined: none; add it to {here}.state"
        raise fail(f'unknown state variable "{variable}"; {fix}', at=at)

    def cell_file(self, cell_type: CellTypeConfig, at: str) -> None:
        """A positions file: (count, ndim) finite numbers inside the grid (upper faces
        excluded)."""
        path = cell_type.place.file
        try:
            positions = load_npy(path)
        except ValueError as error:
            raise fail(
                f"cannot read {path!r} as a .npy array: {error}; give a .npy array of positions",
                at=at,
            ) from None
        want = (cell_type.count, self.grid.ndim)
        if positions.shape != want:
            raise fail(
                f"the file holds shape {positions.shape}, count = {cell_type.count} cells in "
                f"{self.grid.ndim}D need {want}; give one row of {self.grid.ndim} coordinates "
                f"(um, axes {', '.join(self.grid.axes)}) per cell, or set count to the rows",
                at=at,
            )
        if positions.dtype.kind not in "iuf":
            raise fail(f"the file holds {positions.dtype} values; give numbers (um)", at=at)
        if not np.all(np.isfinite(positions)):
            raise fail("the file holds non-finite positions; give finite positions (um)", at=at)
        lower, upper = np.asarray(self.grid.lower), np.asarray(self.grid.upper)
        outside = ~np.all((positions >= lower) & (positions < upper), axis=1)
        if np.any(outside):
            row = int(np.flatnonzero(outside)[0])
            where = ", ".join(f"{p:g}" for p in positions[row])
            extent = " x ".join(f"[{lo:g}, {up:g})" for lo, up in zip(lower, upper))
            more = int(outside.sum()) - 1
            others = f" (and {more} more rows)" if more else ""
            raise fail(
                f"row {row} ({where}) um lies outside the grid {extent} um (upper faces "
                f"excluded){others}; give positions inside it",
                at=at,
            )
