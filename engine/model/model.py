"""The model: species and populations, their transport, reactions and sources.

A model is a pytree: numeric parameters (diffusion, decay, motility, sensitivities, source
rates) are traced leaves, so sweeps and gradients need no recompilation; names, boundaries, the
grid and the reaction function are static structure.

Each field obeys  d f/dt = transport(f) + production - loss_rate * f  with production >= 0 and
loss_rate >= 0, which lets every stepper treat linear sinks implicitly per voxel and so keep
concentrations and densities non-negative.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from engine.model import terms
from engine.model.cells import CellType, exchange_terms
from engine.model.sources import Source
from engine.numerics.boundary import Boundary
from engine.numerics.grid import Grid

Fields = dict[str, jax.Array]
Reactions = Callable[[Mapping[str, jax.Array], jax.Array], tuple[Fields, Fields]]
"""reactions(fields, t) -> (production, loss_rate): dicts keyed by field name, missing = 0;
production in field units/s (>= 0), loss_rate in 1/s (>= 0)."""


@jax.tree_util.register_dataclass
@dataclass(frozen=True, eq=False)
class Species:
    """A concentration field (nM): diffusion D (um^2/s, scalar or per voxel), decay (1/s)."""

    name: str = field(metadata=dict(static=True))
    diffusion: float | np.ndarray = 0.0
    decay: float | np.ndarray = 0.0
    boundary: Boundary | None = field(default=None, metadata=dict(static=True))
    initial: float | np.ndarray = 0.0


@jax.tree_util.register_dataclass
@dataclass(frozen=True, eq=False)
class Population:
    """A cell density field (cells/um^3): random motility M (um^2/s) and chemotaxis towards
    `chemotaxis_species` with sensitivity `chemotaxis_sensitivity` (um^2/(s nM))."""

    name: str = field(metadata=dict(static=True))
    motility: float | np.ndarray = 0.0
    chemotaxis_species: str | None = field(default=None, metadata=dict(static=True))
    chemotaxis_sensitivity: float = 0.0
    boundary: Boundary | None = field(default=None, metadata=dict(static=True))
    initial: float | np.ndarray = 0.0


@jax.tree_util.register_dataclass
@dataclass(frozen=True, eq=False)
class Model:
    """Species, populations, reactions and sources on a grid.

    Reactions come from `terms` (the term library, rates traced) and from an optional Python
    function `reactions` (static). The explicit stability limit bounds the rate at which
    reactions make a field grow in proportion to itself (`growth_rate`): the model derives it
    from its growth and proliferation terms; `reaction_rate` (1/s) adds a bound for what it
    cannot see (the `reactions` function, custom terms). Linear sinks need no bound: they are
    implicit.
    """

    grid: Grid = field(metadata=dict(static=True))
    species: tuple[Species, ...] = ()
    populations: tuple[Population, ...] = ()
    sources: tuple[Source, ...] = ()
    reactions: Reactions | None = field(default=None, metadata=dict(static=True))
    reaction_rate: float = 0.0
    terms: tuple = ()
    cells: tuple[CellType, ...] = ()

    def __post_init__(self):
        names = [f.name for f in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"model: field names must be unique, got {names}")
        species = {s.name for s in self.species}
        for p in self.populations:
            if p.chemotaxis_species is not None and p.chemotaxis_species not in species:
                raise ValueError(
                    f"populations.{p.name}.chemotaxis.species: unknown species "
                    f"{p.chemotaxis_species!r}; defined: {', '.join(sorted(species))}"
                )
        for s in self.sources:
            if s.species not in species:
                raise ValueError(
                    f"sources: unknown species {s.species!r}; defined: {', '.join(sorted(species))}"
                )
        for f in self.fields:
            if f.boundary is not None and len(f.boundary.faces) != self.grid.ndim:
                raise ValueError(f"{f.name}.boundary: needs {self.grid.ndim} axes of faces")
        self._check_cells(species)

    def _check_cells(self, species: set[str]) -> None:
        """Cell types name known species; their modulators read fields or their own state."""
        types = [c.name for c in self.cells]
        if len(set(types)) != len(types):
            raise ValueError(f"cells: type names must be unique, got {types}")
        defined = ", ".join(sorted(species))
        for c in self.cells:
            clash = set(c.state_names) & (set(self.names) | set(types))
            if clash:
                raise ValueError(
                    f"cells.{c.name}.state: {sorted(clash)[0]!r} is also a field or a cell type; "
                    "rename it"
                )
            named = [("secretion", s.species) for s in c.secretion]
            named += [("uptake", u.species) for u in c.uptake]
            if c.chemotaxis_species is not None:
                named.append(("chemotaxis.species", c.chemotaxis_species))
            for key, name in named:
                if name not in species:
                    raise ValueError(
                        f"cells.{c.name}.{key}: unknown species {name!r}; defined: {defined}"
                    )
            if c.name in self.names:
                raise ValueError(f"cells.{c.name}: {c.name!r} is also a field; rename the type")
            others = {f"{t.name}.{v}" for t in self.cells for v in t.state_names}
            readable = set(self.names) | set(c.state_names) | set(types) | others
            for key, modulators in c.modulated():
                for m in modulators:
                    if m.of not in readable:
                        raise ValueError(
                            f"cells.{c.name}.{key}: a modulator reads {m.of!r}, neither a field, "
                            f"a cell type nor a state variable of {c.name}"
                        )
            for t in c.state_terms:
                if t.variable not in c.state_names:
                    raise ValueError(
                        f"cells.{c.name}.state_terms: unknown state variable {t.variable!r}; "
                        f"add it to cells.{c.name}.state"
                    )

    @property
    def periodic_axes(self) -> tuple[bool, ...]:
        """Axes on which cells wrap: those periodic for every field (else walls reflect)."""
        return tuple(
            bool(self.fields) and all(self.boundary(f).is_periodic(a) for f in self.fields)
            for a in range(self.grid.ndim)
        )

    @property
    def fields(self) -> tuple[Species | Population, ...]:
        return self.species + self.populations

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

    def growth_rate(self):
        """Bound (1/s) on the rate at which reactions make any field grow in proportion to
        itself: the largest sum of growth and proliferation rates of one population (Hill
        factors are at most 1), or `reaction_rate` if larger. Traced with the model."""
        per_population: dict = {}
        for term in self.terms:
            if isinstance(term, terms.Growth | terms.Proliferation):
                terms.accumulate(per_population, term.population, term.rate)
        rate = self.reaction_rate
        for value in per_population.values():
            rate = jnp.maximum(rate, value)
        return rate

    def boundary(self, f: Species | Population) -> Boundary:
        return f.boundary if f.boundary is not None else Boundary.uniform(self.grid.ndim)

    def diffusivity(self, f: Species | Population):
        return f.diffusion if isinstance(f, Species) else f.motility

    def decay(self, f: Species | Population):
        """First-order decay rate (1/s); populations die through reaction terms instead."""
        return f.decay if isinstance(f, Species) else 0.0

    def cast(self, dtype) -> Model:
        """The model with every numeric leaf a device array of `dtype`."""
        return jax.tree.map(lambda x: jnp.asarray(x, dtype=dtype), self)

    def coupled(self, population: Mapping, fields: Mapping, linear_sinks: bool = True) -> Model:
        """The model with its cells' secretion and uptake for the current positions, states
        and fields appended to its terms (`cells.exchange_terms`); itself without cells."""
        if not self.cells:
            return self
        exchange = exchange_terms(self.cells, population, fields, self.grid, linear_sinks)
        return self.with_exchange(exchange)

    def with_exchange(self, exchange: tuple) -> Model:
        """The model with the cells' `exchange` terms appended to its own."""
        return dataclasses.replace(self, terms=self.terms + tuple(exchange)) if exchange else self

    def initial_cells(self, dtype) -> dict:
        """Every cell type's `Cells` at t = 0 (`CellType.initial_cells`)."""
        return {c.name: c.initial_cells(dtype) for c in self.cells}

    def initial_fields(self, dtype) -> Fields:
        """Initial fields as device arrays of the grid's shape."""
        return {  # fresh buffers: `advance` donates them, the model keeps its own
            f.name: jnp.array(
                jnp.broadcast_to(jnp.asarray(f.initial, dtype=dtype), self.grid.shape)
            )
            for f in self.fields
        }
