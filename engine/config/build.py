"""From a validated config to the engine's model: grid, region masks, fields, terms, sources,
cell types."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.config.errors import ConfigError
from engine.config.schema import Config
from engine.model import array_files, cells, regions, terms
from engine.model.model import Model, Population, Species
from engine.model.sources import Schedule, point_source, region_source
from engine.numerics.boundary import Boundary, Dirichlet, Neumann, Periodic, Robin
from engine.numerics.grid import Grid

INF = float("inf")

CUSTOM_TERMS: dict[str, terms.CustomFunction] = {}
"""Python terms a config may name as `{ type = "custom", name = NAME }`, by name; resolved when
a model is built (the model carries the function itself)."""


def register_term(name: str, function: terms.CustomFunction) -> None:
    """Make `function(fields, params) -> (production, loss_rate)` usable from a config as
    `{ type = "custom", name = NAME, params = {...} }`. Both returned dicts are keyed by field
    name; production (field units/s) and loss_rate (1/s) must be non-negative. Models built
    afterwards use the function registered then."""
    if not name.isidentifier():
        raise ValueError(f"register_term: {name!r} is not a valid name")
    CUSTOM_TERMS[name] = function


def build_grid(cfg: Config) -> Grid:
    g = cfg.grid
    return Grid(g.shape, g.spacing, g.origin or 0.0, g.depth)


def region_mask(grid: Grid, region, name: str) -> np.ndarray:
    """The boolean mask of one configured region."""
    try:
        if region.kind == "sphere":
            return regions.sphere(grid, region.sphere.center, region.sphere.radius)
        if region.kind == "box":
            return regions.box(grid, region.box.lower, region.box.upper)
        if region.kind == "cylinder":
            c = region.cylinder
            return regions.cylinder(grid, c.center, c.radius, c.axis)
        if region.kind == "spots":
            s = region.spots
            return regions.spots(grid, s.count, s.radius, s.seed)
        return regions.from_file(grid, region.file, name)
    except ValueError as error:
        raise ConfigError(f"regions.{name}: {error}") from None


def _face(face):
    if face.kind == "dirichlet":
        return Dirichlet(face.value)
    if face.kind == "robin":
        return Robin(face.h, face.outside)
    return Periodic() if face.kind == "periodic" else Neumann()


def _boundary(cfg: Config, overrides: dict, key: str) -> Boundary:
    try:
        return Boundary.from_faces(
            len(cfg.grid.shape),
            _face(cfg.grid.boundary),
            **{name: _face(face) for name, face in overrides.items()},
        )
    except ValueError as error:
        raise ConfigError(f"{key}.boundary: {error}") from None


def _coefficient(coefficient, masks: dict[str, np.ndarray]):
    """A scalar, or a per-voxel array where regions override the default value."""
    if not coefficient.regions:
        return coefficient.value
    value = np.full(next(iter(masks.values())).shape, coefficient.value)
    for region, inside in coefficient.regions.items():
        value[masks[region]] = inside
    return value


def _initial(initial, grid: Grid, masks: dict, name: str, key: str):
    """The initial field: a number, or an array of the grid's shape."""
    if initial.kind == "value":
        return initial.value
    if initial.kind == "gaussian":
        r2 = sum((x - c) ** 2 for x, c in zip(grid.centres(), initial.center))
        return initial.amplitude * np.exp(-r2 / (2 * initial.sigma**2))
    if initial.kind == "region":
        return np.where(masks[initial.region], initial.value, 0.0)
    if initial.kind == "random":
        rng = np.random.default_rng(initial.seed)
        return np.maximum(rng.normal(initial.mean, initial.std, grid.shape), 0.0)
    return _initial_from_file(Path(initial.path), grid, name, key)


def _initial_from_file(path: Path, grid: Grid, name: str, key: str) -> np.ndarray:
    """A .npy array of the grid's shape, or the last frame of field `name` in an ilsim .h5
    output; finite numbers >= 0. ConfigError naming `key`.initial.file otherwise."""
    at = f"{key}.initial.file"
    try:
        if array_files.is_npy(path):
            value = array_files.check_real(array_files.load_npy(path))
        else:
            value = array_files.check_real(_last_frame(path, name, grid.shape))
    except ValueError as error:
        raise ConfigError(
            f"{at}: cannot read {path} as an initial field: {error}; give a .npy array of "
            f"shape {grid.shape} or an ilsim output of this grid holding field {name}, of finite "
            "numbers >= 0"
        ) from None
    if value.shape != grid.shape:
        raise ConfigError(
            f"{at}: {path} holds shape {value.shape}, the grid is {grid.shape}; "
            f"save an array of shape {grid.shape}"
        )
    if value.min() < 0:
        raise ConfigError(f"{at}: {path} has negative values; save values >= 0")
    return value.astype(float)


def _last_frame(path: Path, name: str, shape: tuple[int, ...]) -> np.ndarray:
    """The last frame of dataset fields/`name` (frames x `shape`) of an HDF5 file; ValueError
    saying why where it holds none."""
    import h5py

    with array_files.open_hdf5(path) as f:
        frames = f.get(f"fields/{name}")
        if not isinstance(frames, h5py.Dataset):
            raise ValueError(f"has no dataset fields/{name}")
        if frames.shape[1:] != shape or len(frames) == 0:
            raise ValueError(
                f"dataset fields/{name} has shape {frames.shape}, not frames of shape {shape}"
            )
        return frames[-1]


def _modulators(term) -> tuple[terms.Hill, ...]:
    activators = [terms.Hill(m.of, m.K, m.hill) for m in term.activators]
    inhibitors = [terms.Hill(m.of, m.K, m.hill, inhibits=True) for m in term.inhibitors]
    return tuple(activators + inhibitors)


def build_term(term, masks: dict, index: int):
    """The engine term of one configured term."""
    mods = _modulators(term)
    kind = term.type
    if kind == "secretion":
        return terms.Secretion(term.species, term.by, term.rate, mods)
    if kind == "uptake":
        return terms.Uptake(
            term.species, term.by, term.vmax, term.km, term.k_on, term.receptors, mods
        )
    if kind == "growth":
        return terms.Growth(
            term.population, term.rate, term.capacity, tuple(term.crowding or ()), mods
        )
    if kind == "death":
        return terms.Death(term.population, term.rate, mods)
    if kind == "proliferation":
        return terms.Proliferation(term.population, term.rate, mods)
    if kind == "killing":
        return terms.Killing(term.target, term.by, term.rate, mods)
    if kind == "conversion":
        return terms.Conversion(term.from_, term.to, term.rate, mods)
    if kind == "recruitment":
        return terms.Recruitment(term.population, masks[term.region].astype(float), term.rate, mods)
    if term.name not in CUSTOM_TERMS:
        known = ", ".join(sorted(CUSTOM_TERMS)) or "none"
        raise ConfigError(
            f"terms[{index}].name: unknown custom term {term.name!r}; registered: {known} "
            "(register one with engine.register_term)"
        )
    return terms.Custom(term.name, CUSTOM_TERMS[term.name], dict(term.params), mods)


def _schedule(schedule) -> Schedule:
    return Schedule(
        schedule.start,
        INF if schedule.duration is None else schedule.duration,
        INF if schedule.every is None else schedule.every,
        INF if schedule.count is None else float(schedule.count),
    )


def _fate(fate) -> cells.Fate | None:
    """A [cells] division or death table as a `Fate` (None when absent)."""
    if fate is None:
        return None
    return cells.Fate(fate.rate, _modulators(fate), tuple(getattr(fate, "halve", ())))


def cell_positions(cfg: Config, index: int, grid: Grid, masks: dict) -> np.ndarray:
    """The (count, ndim) float64 start positions (um) of the `index`-th cell type: the
    positions file, or uniform at random (generator `np.random.default_rng([time.seed,
    index])`) in the region (a voxel of its mask drawn uniformly with replacement, then a
    uniform offset within it) or in the whole grid [lower, upper)."""
    name, cell_type = list(cfg.cells.items())[index]
    count, place = cell_type.count, cell_type.place
    if place is not None and place.kind == "file":
        return np.asarray(array_files.load_npy(place.file), dtype=np.float64)
    rng = np.random.default_rng([cfg.time.seed, index])
    lower = np.asarray(grid.lower, dtype=np.float64)
    if place is None:
        upper = np.asarray(grid.upper, dtype=np.float64)
        return rng.uniform(lower, upper, size=(count, grid.ndim))
    voxels = np.flatnonzero(masks[place.region])
    if voxels.size == 0 and count > 0:
        raise ConfigError(
            f"cells.{name}.place.region: region {place.region!r} holds no voxel; place the "
            "cells in a region that does"
        )
    chosen = voxels[rng.integers(0, max(voxels.size, 1), size=count)] if count else voxels[:0]
    corner = np.stack(np.unravel_index(chosen, grid.shape), axis=1).astype(np.float64)
    spacing = np.asarray(grid.spacing, dtype=np.float64)
    return lower + (corner + rng.random((count, grid.ndim))) * spacing


def build_cell_type(cfg: Config, index: int, grid: Grid, masks: dict) -> cells.CellType:
    """The engine's `CellType` of the `index`-th [cells] table."""
    name, c = list(cfg.cells.items())[index]
    uptake = []
    for u in c.uptake:
        by_state = isinstance(u.receptors, str)
        uptake.append(
            cells.CellUptake(
                u.species,
                k_on=u.k_on,
                receptors=None if by_state else u.receptors,
                receptors_state=u.receptors if by_state else None,
                vmax=u.vmax,
                km=u.km,
                modulators=_modulators(u),
            )
        )
    return cells.CellType(
        name,
        capacity=c.capacity,
        initial=cell_positions(cfg, index, grid, masks),
        state=dict(c.state),
        motility=c.motility,
        chemotaxis_species=c.chemotaxis.species if c.chemotaxis else None,
        chemotaxis_sensitivity=c.chemotaxis.sensitivity if c.chemotaxis else 0.0,
        secretion=tuple(
            cells.CellSecretion(s.species, s.rate, _modulators(s)) for s in c.secretion
        ),
        uptake=tuple(uptake),
        state_terms=tuple(
            cells.StateTerm(t.variable, t.production, t.decay, _modulators(t))
            for t in c.state_terms
        ),
        division=_fate(c.division),
        death=_fate(c.death),
    )


def build_model(cfg: Config) -> Model:
    """The engine model of a validated config."""
    grid = build_grid(cfg)
    masks = {name: region_mask(grid, region, name) for name, region in cfg.regions.items()}
    species = tuple(
        Species(
            name,
            diffusion=_coefficient(s.diffusion, masks),
            decay=s.decay,
            boundary=_boundary(cfg, s.boundary, f"species.{name}"),
            initial=_initial(s.initial, grid, masks, name, f"species.{name}"),
        )
        for name, s in cfg.species.items()
    )
    populations = tuple(
        Population(
            name,
            motility=_coefficient(p.motility, masks),
            chemotaxis_species=p.chemotaxis.species if p.chemotaxis else None,
            chemotaxis_sensitivity=p.chemotaxis.sensitivity if p.chemotaxis else 0.0,
            boundary=_boundary(cfg, p.boundary, f"populations.{name}"),
            initial=_initial(p.initial, grid, masks, name, f"populations.{name}"),
        )
        for name, p in cfg.populations.items()
    )
    sources = []
    for s in cfg.sources:
        if s.type == "point":
            sources.append(point_source(grid, s.species, s.position, s.rate, _schedule(s.schedule)))
        else:
            mask = masks[s.region]
            sources.append(region_source(s.species, mask, s.rate, _schedule(s.schedule)))
    return Model(
        grid,
        species=species,
        populations=populations,
        sources=tuple(sources),
        terms=tuple(build_term(t, masks, i) for i, t in enumerate(cfg.terms)),
        cells=tuple(build_cell_type(cfg, i, grid, masks) for i in range(len(cfg.cells))),
    )


def time_options(cfg: Config) -> dict:
    """The options of `stepping.Simulation` that a config's [time] and [parallel] tables set."""
    t = cfg.time
    return dict(
        stepper=t.stepper,
        scheme=t.scheme,
        dt=t.dt,
        dtype=t.dtype,
        safety=t.safety,
        tolerance=t.tolerance,
        adaptive=t.adaptive,
        compensated=t.compensated,
        mesh=cfg.parallel.mesh,
        seed=t.seed,
    )
