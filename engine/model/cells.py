"""Cells as individuals: points that carry a state, exchange molecules with the voxel that
holds their centre, move, divide and die.

A `CellType` is a pytree (rates traced, names and capacity static); `Cells` holds one type's
arrays at a fixed capacity, so births and deaths change `alive`, never a shape, and the
jitted loop never recompiles. Every function here is pure. Units: um, s, nM; secretion and
uptake per cell in molecules/s, k_on in 1/(nM s).

One step of the cells (`step_cells`), after the fields' step with the cells' exchange frozen:
the state variables by the exponential integrator of their frozen rates, the random walk with
chemotactic drift (reflected at walls, wrapped on periodic axes), then death and division with
the probabilities that make the expected count exactly N0 exp((b - d) t) for frozen rates.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from engine.model.terms import Hill, accumulate, modulation
from engine.numerics.constants import MOLECULES_PER_UM3_PER_NM
from engine.numerics.grid import Grid


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class CellSecretion:
    """Each cell adds `rate` molecules/s of `species` to its voxel, times its modulators
    (Hill factors of local fields and of the cell's state)."""

    species: str = field(metadata=dict(static=True))
    rate: float
    modulators: tuple[Hill, ...] = ()


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class CellUptake:
    """Each cell takes up k_on R c (R receptors: a number, or the state variable
    `receptors_state`), or vmax c / (km + c), molecules/s of `species` from its voxel; k_on
    1/(nM s), vmax molecules/s, km nM."""

    species: str = field(metadata=dict(static=True))
    k_on: float | None = None
    receptors: float | None = None
    receptors_state: str | None = field(default=None, metadata=dict(static=True))
    vmax: float | None = None
    km: float | None = None
    modulators: tuple[Hill, ...] = ()

    @property
    def saturable(self) -> bool:
        return self.vmax is not None


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class StateTerm:
    """d variable/dt += (production - decay x variable) x modulation: production in the
    variable's units per s, decay 1/s."""

    variable: str = field(metadata=dict(static=True))
    production: float = 0.0
    decay: float = 0.0
    modulators: tuple[Hill, ...] = ()


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Fate:
    """A division or death rate (1/s) per cell, times its modulators. For division, `halve`
    names the state variables that mother and daughter each get half of (the rest is copied)."""

    rate: float
    modulators: tuple[Hill, ...] = ()
    halve: tuple[str, ...] = field(default=(), metadata=dict(static=True))


@jax.tree_util.register_dataclass
@dataclass(frozen=True, eq=False)
class CellType:
    """A type of cell: up to `capacity` cells alive at once, starting at `initial` positions
    ((count, ndim) um, the grid's axis order), with state variables `state` (name -> initial
    value), random motility (um^2/s), chemotaxis up `chemotaxis_species` with sensitivity
    (um^2/(s nM)), secretion, uptake, state terms, division and death."""

    name: str = field(metadata=dict(static=True))
    capacity: int = field(metadata=dict(static=True))
    initial: np.ndarray | jax.Array
    state: dict = field(default_factory=dict)
    motility: float = 0.0
    chemotaxis_species: str | None = field(default=None, metadata=dict(static=True))
    chemotaxis_sensitivity: float = 0.0
    secretion: tuple[CellSecretion, ...] = ()
    uptake: tuple[CellUptake, ...] = ()
    state_terms: tuple[StateTerm, ...] = ()
    division: Fate | None = None
    death: Fate | None = None

    def __post_init__(self):  # static structure only: leaves may be tracers or axis specs
        for u in self.uptake:
            if u.receptors_state is not None and u.receptors_state not in self.state:
                raise ValueError(
                    f"cells.{self.name}.uptake.receptors: unknown state variable "
                    f"{u.receptors_state!r}; add it to cells.{self.name}.state"
                )

    @property
    def state_names(self) -> tuple[str, ...]:
        return tuple(self.state)

    def modulated(self) -> list[tuple[str, tuple[Hill, ...]]]:
        """(key, modulators) of every term of the type that has them."""
        groups = [("secretion", s.modulators) for s in self.secretion]
        groups += [("uptake", u.modulators) for u in self.uptake]
        groups += [("state_terms", t.modulators) for t in self.state_terms]
        groups += [
            (k, f.modulators)
            for k, f in (("division", self.division), ("death", self.death))
            if f is not None
        ]
        return groups

    def initial_cells(self, dtype) -> Cells:
        """The type's cells at t = 0: the first `count` slots alive, ids 0..count-1."""
        count = np.shape(self.initial)[0]
        if count > self.capacity:
            raise ValueError(
                f"cells.{self.name}.capacity: {self.capacity} is below count {count}; "
                f"raise capacity to at least {count}"
            )
        slots = jnp.arange(self.capacity)
        position = jnp.zeros((self.capacity, np.shape(self.initial)[1]), dtype)
        position = position.at[:count].set(jnp.asarray(self.initial, dtype))
        return Cells(
            position=position,
            alive=slots < count,
            id=jnp.where(slots < count, slots, -1).astype(jnp.int32),
            state={k: jnp.full((self.capacity,), v, dtype) for k, v in self.state.items()},
            next_id=jnp.asarray(count, jnp.int32),
            overflow=jnp.zeros((), jnp.int32),
        )


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Cells:
    """One type's cells: position (capacity, ndim) um, alive (capacity,), id (capacity,)
    (-1 in empty slots; never reused), state {name: (capacity,)}, the next id to give, and
    `overflow`: daughters refused for lack of capacity (a run stops when it is not 0)."""

    position: jax.Array
    alive: jax.Array
    id: jax.Array
    state: dict
    next_id: jax.Array
    overflow: jax.Array

    @property
    def count(self):
        return jnp.sum(self.alive)


# --- where cells sit and what they sense ----------------------------------------------------


def axis_indices(grid: Grid, position) -> list[jax.Array]:
    """Per axis, the index of the voxel holding each position (capacity,); positions on or
    past the upper face count in the last voxel."""
    return [
        jnp.clip(jnp.floor((position[:, a] - o) / h).astype(jnp.int32), 0, n - 1)
        for a, (n, h, o) in enumerate(zip(grid.shape, grid.spacing, grid.origin))
    ]


def flat_index(grid: Grid, indices) -> jax.Array:
    """The flat (row-major) voxel index of per-axis indices."""
    flat = jnp.zeros_like(indices[0])
    for n, i in zip(grid.shape, indices):
        flat = flat * n + i
    return flat


def voxel_index(grid: Grid, position) -> jax.Array:
    """Flat index of the voxel holding each position (capacity,)."""
    return flat_index(grid, axis_indices(grid, position))


def local(fields: Mapping, index) -> dict:
    """Each field's value in each cell's voxel."""
    return {name: value.reshape(-1)[index] for name, value in fields.items()}


def sensed(cells: Cells, fields: Mapping, index) -> dict:
    """What a cell's modulators read: local fields and the cell's own state variables."""
    return {**local(fields, index), **cells.state}


def with_densities(
    cell_types: tuple[CellType, ...], population: Mapping[str, Cells], fields: Mapping, grid
) -> dict:
    """The fields and what cells sense of one another, per voxel, for the names a modulator
    reads: a type's name, its alive cells per um^3; "type.variable", the sum of that state
    variable over the type's alive cells per um^3 (e.g. receptors per um^3)."""
    types = {c.name: c for c in cell_types}
    read = {m.of for c in cell_types for _, group in c.modulated() for m in group}
    out = dict(fields)
    for name in sorted(read):
        kind, _, variable = name.partition(".")
        if kind not in types or (variable and variable not in types[kind].state):
            continue
        cells = population[kind]
        amount = cells.alive.astype(cells.position.dtype)
        if variable:
            amount = amount * cells.state[variable]
        total = jax.ops.segment_sum(
            amount, voxel_index(grid, cells.position), num_segments=grid.size
        )
        out[name] = (total / grid.voxel_volume).reshape(grid.shape)
    return out


def gradient_at(field_values, grid: Grid, position, periodic: tuple[bool, ...]):
    """The central-difference gradient (units/um, (capacity, ndim)) of a field at each cell's
    voxel: one-sided at walls, wrapped on periodic axes, 0 along an axis of one voxel."""
    flat = field_values.reshape(-1)
    indices = axis_indices(grid, position)
    here = flat_index(grid, indices)
    components = []
    stride = grid.size
    for a, (n, h, i) in enumerate(zip(grid.shape, grid.spacing, indices)):
        stride //= n
        if n == 1:
            components.append(jnp.zeros(position.shape[:1], flat.dtype))
            continue
        if periodic[a]:
            up, down = (i + 1) % n, (i - 1) % n
            span = 2 * h
        else:
            up, down = jnp.minimum(i + 1, n - 1), jnp.maximum(i - 1, 0)
            span = (up - down) * h
        plus, minus = flat[here + (up - i) * stride], flat[here + (down - i) * stride]
        components.append((plus - minus) / span)
    return jnp.stack(components, axis=1)


# --- exchange with the fields ---------------------------------------------------------------


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class VoxelExchange:
    """The cells' secretion and uptake of one species per voxel, frozen over a field step:
    production (nM/s), first-order loss rate (1/s), and saturable uptake vmax density
    (nM/s) with its km (nM), giving the loss rate vmax / (km + c). A term of the model, so
    every stepper takes it as it takes the library's (sinks implicit, fields non-negative)."""

    species: str = field(metadata=dict(static=True))
    production: jax.Array | float = 0.0
    loss: jax.Array | float = 0.0
    saturable: tuple[tuple[jax.Array, float], ...] = ()

    def contribute(self, fields, production, loss):
        accumulate(production, self.species, self.production)
        rate = self.loss
        for vmax, km in self.saturable:
            rate = rate + vmax / (km + jnp.maximum(fields[self.species], 0))
        accumulate(loss, self.species, rate)


def per_voxel(values, index, grid: Grid):
    """Per-cell amounts (molecules/s) summed into their voxels, as nM/s."""
    total = jax.ops.segment_sum(values, index, num_segments=grid.size)
    return (total / (grid.voxel_volume * MOLECULES_PER_UM3_PER_NM)).reshape(grid.shape)


def receptors(uptake: CellUptake, cells: Cells):
    """Receptors per cell: the uptake's number or its state variable (clamped at 0)."""
    if uptake.receptors_state is not None:
        return jnp.maximum(cells.state[uptake.receptors_state], 0)
    return uptake.receptors


def exchange_terms(
    cell_types: tuple[CellType, ...],
    population: Mapping[str, Cells],
    fields: Mapping,
    grid,
    linear_sinks: bool = True,
) -> tuple[VoxelExchange, ...]:
    """Every type's secretion and uptake as one `VoxelExchange` per species, from the cells'
    positions and states and the fields at the start of the step; without the first-order
    uptake if not `linear_sinks` (what an accuracy target that solves them exactly omits)."""
    fields = with_densities(cell_types, population, fields, grid)
    production: dict = {}
    loss: dict = {}
    saturable: dict = {}
    for ct in cell_types:
        cells = population[ct.name]
        index = voxel_index(grid, cells.position)
        seen = sensed(cells, fields, index)
        alive = cells.alive.astype(cells.position.dtype)
        for s in ct.secretion:
            amount = alive * s.rate * modulation(s.modulators, seen)
            accumulate(production, s.species, per_voxel(amount, index, grid))
        for u in ct.uptake:
            factor = alive * modulation(u.modulators, seen)
            if u.saturable:
                vmax = per_voxel(factor * u.vmax, index, grid)
                saturable[u.species] = (*saturable.get(u.species, ()), (vmax, u.km))
            elif linear_sinks:
                # k_on R molecules/s per nM in the voxel: as a loss rate, / (V x molecules/nM)
                rate = per_voxel(factor * u.k_on * receptors(u, cells), index, grid)
                accumulate(loss, u.species, rate)
    species = sorted(set(production) | set(loss) | set(saturable))
    return tuple(
        VoxelExchange(s, production.get(s, 0.0), loss.get(s, 0.0), saturable.get(s, ()))
        for s in species
    )


# --- the cells' own step ----------------------------------------------------------------

MOVE_PER_STEP = 0.5
"""The most a cell may move in one step, in voxels (rms random step, or drift): the fields
see each cell where it was at the step's start, so a step must not outrun the grid."""

FATE_PER_STEP = 0.1
"""The largest division or death rate times a cell step: a cell divides at most once per
step, and its modulators are read once per step."""

STATE_PER_STEP = 0.1
"""The most a state variable may change in one cell step, relative to its size
(`state_scale`) by its production, relative to itself by its decay: the fields see the
state as it was at the step's start (receptors that set the uptake, say), and the state's
terms the fields as they were."""


def cells_dt(
    cell_types: tuple[CellType, ...], population: Mapping[str, Cells], fields, grid, periodic
):
    """Largest cell step (s): no cell's rms random step sqrt(2 ndim M dt) nor its chemotactic
    drift |chi grad c| dt exceeds `MOVE_PER_STEP` voxels, no division or death rate (its
    unmodulated bound) exceeds `FATE_PER_STEP` per step, and no state variable's decay or
    production (unmodulated) changes it by more than `STATE_PER_STEP` of its size."""
    h = MOVE_PER_STEP * min(grid.spacing)
    dt = jnp.inf
    for ct in cell_types:
        cells = population[ct.name]
        dt = jnp.minimum(dt, h**2 / (2 * grid.ndim * jnp.maximum(ct.motility, 1e-30)))
        if ct.chemotaxis_species is not None:
            gradient = gradient_at(fields[ct.chemotaxis_species], grid, cells.position, periodic)
            speed = jnp.abs(ct.chemotaxis_sensitivity) * jnp.sqrt(jnp.sum(gradient**2, axis=1))
            speed = jnp.max(jnp.where(cells.alive, speed, 0.0))
            dt = jnp.minimum(dt, h / jnp.maximum(speed, 1e-30))
        for fate in (ct.division, ct.death):
            if fate is not None:
                dt = jnp.minimum(dt, FATE_PER_STEP / jnp.maximum(fate.rate, 1e-30))
        production: dict = {}
        for term in ct.state_terms:
            dt = jnp.minimum(dt, STATE_PER_STEP / jnp.maximum(term.decay, 1e-30))
            accumulate(production, term.variable, jnp.abs(term.production))
        for name, rate in production.items():
            scale = state_scale(ct, name, cells)
            limit = jnp.where(scale > 0, STATE_PER_STEP * scale / jnp.maximum(rate, 1e-30), jnp.inf)
            dt = jnp.minimum(dt, limit)
    return dt


def state_scale(cell_type: CellType, name: str, cells: Cells):
    """The size a state variable's change per step is measured against: the largest of its
    values in alive cells, its initial value and the K of the type's modulators that read it
    (the level at which it matters); 0 for a variable that none of these gives a size."""
    values = jnp.where(cells.alive, jnp.abs(cells.state[name]), 0.0)
    sizes = [jnp.max(values, initial=0.0), jnp.abs(jnp.asarray(cell_type.state[name]))]
    sizes += [m.K for _, group in cell_type.modulated() for m in group if m.of == name]
    return jnp.max(jnp.stack([jnp.asarray(x, values.dtype) for x in sizes]))


def state_change(cell_type: CellType, cells: Cells, seen: Mapping, dt) -> dict:
    """The state variables after dt with their terms' rates frozen: v e^{-k dt} + P (1 -
    e^{-k dt}) / k, exact for constant rates and non-negative for v, P >= 0."""
    production: dict = {}
    decay: dict = {}
    for term in cell_type.state_terms:
        factor = modulation(term.modulators, seen)
        accumulate(production, term.variable, term.production * factor)
        accumulate(decay, term.variable, term.decay * factor)
    state = dict(cells.state)
    for name in set(production) | set(decay):
        v = state[name]
        k = jnp.broadcast_to(decay.get(name, 0.0), v.shape)
        p = production.get(name, 0.0)
        small = k * dt < 1e-6
        phi = jnp.where(small, dt, -jnp.expm1(-k * dt) / jnp.where(small, 1.0, k))
        state[name] = v + (p - k * v) * phi
    return state


def fold_into(position, lower, upper, periodic: tuple[bool, ...]):
    """Positions mapped into [lower, upper) per axis: wrapped on periodic axes, reflected
    (any number of times) at walls."""
    axes = []
    for a, wrap in enumerate(periodic):
        lo, length = lower[a], upper[a] - lower[a]
        x = position[:, a] - lo
        if wrap:
            x = jnp.mod(x, length)
        else:
            x = jnp.mod(x, 2 * length)
            x = jnp.where(x > length, 2 * length - x, x)
        axes.append(lo + jnp.clip(x, 0, length * (1 - 1e-7)))
    return jnp.stack(axes, axis=1)


def move(cell_type: CellType, cells: Cells, fields: Mapping, grid: Grid, periodic, dt, key):
    """Brownian step sqrt(2 M dt) N(0, 1) per axis plus the chemotactic drift chi grad c dt,
    folded back into the grid."""
    position = cells.position
    step = jnp.sqrt(2 * cell_type.motility * dt) * jax.random.normal(
        key, position.shape, position.dtype
    )
    if cell_type.chemotaxis_species is not None:
        gradient = gradient_at(fields[cell_type.chemotaxis_species], grid, position, periodic)
        step = step + cell_type.chemotaxis_sensitivity * gradient * dt
    moved = fold_into(position + step, grid.lower, grid.upper, periodic)
    return jnp.where(cells.alive[:, None], moved, position)


def divide(cell_type: CellType, cells: Cells, dividing) -> Cells:
    """Each dividing cell's daughter in the lowest free slots, in slot order, with a new id,
    the mother's position and state (the `halve` variables halved in both); daughters that
    find no free slot are counted in `overflow`, and their mothers keep their state whole."""
    capacity = cell_type.capacity
    free = jnp.nonzero(~cells.alive, size=capacity, fill_value=capacity)[0]
    n_free = jnp.sum(~cells.alive)
    rank = jnp.cumsum(dividing) - 1
    placed = dividing & (rank < n_free)
    target = jnp.where(placed, free[jnp.clip(rank, 0, capacity - 1)], capacity)  # capacity: drop
    halve = cell_type.division.halve
    state = {k: jnp.where(placed, v / 2, v) if k in halve else v for k, v in cells.state.items()}
    n_placed = jnp.sum(placed).astype(jnp.int32)
    return Cells(
        position=cells.position.at[target].set(cells.position, mode="drop"),
        alive=cells.alive.at[target].set(True, mode="drop"),
        id=cells.id.at[target].set(cells.next_id + rank.astype(jnp.int32), mode="drop"),
        state={k: v.at[target].set(v, mode="drop") for k, v in state.items()},
        next_id=cells.next_id + n_placed,
        overflow=cells.overflow + jnp.sum(dividing).astype(jnp.int32) - n_placed,
    )


def step_cells(
    cell_type: CellType, cells: Cells, fields: Mapping, grid: Grid, periodic, dt, key
) -> Cells:
    """One step of dt for one type's cells, reading the fields at the step's end: state,
    motion, death (probability 1 - e^{-d dt}), division (probability e^{b dt} - 1, so that the
    expected count grows by e^{(b - d) dt})."""
    motion_key, death_key, division_key = jax.random.split(key, 3)
    index = voxel_index(grid, cells.position)
    seen = sensed(cells, fields, index)
    state = state_change(cell_type, cells, seen, dt)
    position = move(cell_type, cells, fields, grid, periodic, dt, motion_key)
    cells = Cells(position, cells.alive, cells.id, state, cells.next_id, cells.overflow)
    alive = cells.alive
    shape, dtype = alive.shape, position.dtype
    if cell_type.death is not None:
        rate = cell_type.death.rate * modulation(cell_type.death.modulators, seen)
        dies = jax.random.uniform(death_key, shape, dtype) < -jnp.expm1(-rate * dt)
        alive = alive & ~dies
    cells = Cells(
        position, alive, jnp.where(alive, cells.id, -1), state, cells.next_id, cells.overflow
    )
    if cell_type.division is not None:
        rate = cell_type.division.rate * modulation(cell_type.division.modulators, seen)
        dividing = alive & (jax.random.uniform(division_key, shape, dtype) < jnp.expm1(rate * dt))
        cells = lax.cond(
            jnp.any(dividing), lambda c: divide(cell_type, c, dividing), lambda c: c, cells
        )
    return cells


def step_population_over(
    cell_types: tuple[CellType, ...],
    population: Mapping[str, Cells],
    fields,
    grid,
    periodic,
    dt,
    key,
    parts=1,
) -> dict[str, Cells]:
    """The cells over `dt` (s) on `fields` frozen, in `parts` equal `step_population` steps
    (a count fixed before the loop, static where reverse mode must go through it): one with
    `key`, several the k-th with `fold_in(key, k)`. A fixed field step beyond `cells_dt` is
    taken in as many parts as bring each within it (`cell_parts`): whole, a cell would
    divide at most once in it (the count fell 46% short of N0 exp(b t) at b dt = 1) or move
    further than the limit's half voxel."""

    def part(k, population):
        part_key = lax.cond(parts > 1, lambda: jax.random.fold_in(key, k), lambda: key)
        return step_population(cell_types, population, fields, grid, periodic, dt / parts, part_key)

    return lax.fori_loop(0, parts, part, dict(population))


def cell_parts(span: float, limit: float) -> int:
    """How many equal parts a cell step of `span` (s) is taken in so that each is within
    `limit` (s, `cells_dt`); one for a span within it or at it up to `LIMIT_SLACK`."""
    return max(math.ceil(span / limit - LIMIT_SLACK), 1)


LIMIT_SLACK = 1e-4
"""How far (a fraction of `cells_dt`) a cell step may exceed the limit before it is split: a
step set to the limit itself, rounded in float32, stays whole."""


def step_population(
    cell_types: tuple[CellType, ...],
    population: Mapping[str, Cells],
    fields,
    grid,
    periodic,
    dt,
    key,
) -> dict[str, Cells]:
    """Every type's `step_cells`, each with its own key folded from `key`, all sensing the
    population as it was at the step's start (`with_densities`)."""
    fields = with_densities(cell_types, population, fields, grid)
    return {
        ct.name: step_cells(
            ct, population[ct.name], fields, grid, periodic, dt, jax.random.fold_in(key, i)
        )
        for i, ct in enumerate(cell_types)
    }
