"""The model: species and populations, their transport, reactions and sources.

A model is a pytree: numeric parameters (diffusion, decay, motility, sensitivities, source
rates) are traced leaves, so sweeps and gradients need no recompilation; names, boundaries, the
grid and the reaction function are static structure.

Each field obeys  d f/dt = transport(f) + production - loss_rate * f  with production >= 0 and
loss_rate >= 0, which lets every stepper treat linear sinks implicitly per voxel and so keep
concentrations and densities non-negative.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from engine import operators, terms
from engine.boundary import Boundary
from engine.grid import Grid
from engine.sources import Source

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
    function `reactions` (static). `reaction_rate` (1/s) bounds the rates of the explicit
    (production) part of both; the explicit stability limit uses it. Linear sinks need no
    bound: they are implicit.
    """

    grid: Grid = field(metadata=dict(static=True))
    species: tuple[Species, ...] = ()
    populations: tuple[Population, ...] = ()
    sources: tuple[Source, ...] = ()
    reactions: Reactions | None = field(default=None, metadata=dict(static=True))
    reaction_rate: float = 0.0
    terms: tuple = ()

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

    @property
    def fields(self) -> tuple[Species | Population, ...]:
        return self.species + self.populations

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(f.name for f in self.fields)

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

    def initial_fields(self, dtype) -> Fields:
        """Initial fields as device arrays of the grid's shape."""
        return {  # fresh buffers: `advance` donates them, the model keeps its own
            f.name: jnp.array(
                jnp.broadcast_to(jnp.asarray(f.initial, dtype=dtype), self.grid.shape)
            )
            for f in self.fields
        }


# --- the pieces of the right-hand side, shared by every stepper ---------------------------


def face_diffusivities(model: Model) -> dict:
    """Loop-invariant face coefficients of every field's diffusion/motility."""
    return {
        f.name: operators.face_diffusivity(model.diffusivity(f), model.grid, model.boundary(f))
        for f in model.fields
    }


def field_couplings(model: Model) -> dict:
    """`operators.face_couplings` of every field (face coefficients and outside values, in its
    diffusivity's dtype): what the explicit terms apply, built once before a stepping loop."""
    faces = face_diffusivities(model)
    return {
        f.name: operators.face_couplings(
            faces[f.name], model.grid, model.boundary(f), jnp.result_type(model.diffusivity(f))
        )
        for f in model.fields
    }


def diffusion_terms(model: Model, couplings: Mapping, fields: Mapping, padded=None) -> Fields:
    """div(D grad f) for every field from its `field_couplings`; `padded`: the fields with
    their ghosts, if at hand."""
    return {
        f.name: operators.coupled_diffusion(
            fields[f.name],
            couplings[f.name],
            model.grid,
            None if padded is None else padded[f.name],
        )
        for f in model.fields
    }


def chemotaxis_terms(model: Model, fields: Mapping) -> Fields:
    """-div(chi n grad c) for each chemotactic population (others absent)."""
    return {
        p.name: operators.chemotaxis(
            fields[p.name],
            fields[p.chemotaxis_species],
            p.chemotaxis_sensitivity,
            model.grid,
            model.boundary(p),
        )
        for p in model.populations
        if p.chemotaxis_species is not None
    }


def reaction_terms(model: Model, fields: Mapping, t, decay: bool = True) -> tuple[Fields, Fields]:
    """(production, loss_rate) of every field at time t, sources excluded; species decay is
    included unless `decay` is False (steppers that solve it with diffusion)."""
    production, loss = terms.evaluate(model.terms, fields)
    if model.reactions is not None:
        extra_production, extra_loss = model.reactions(fields, t)
        for table, extra in ((production, extra_production), (loss, extra_loss)):
            for name, value in extra.items():
                terms.accumulate(table, name, value)
    if decay:
        for s in model.species:
            loss[s.name] = loss.get(s.name, 0.0) + s.decay
    return dict(production), loss


def euler_change(names, fields: Mapping, gain, production, supply, loss, dt) -> Fields:
    """dt (gain + production + supply - loss f) / (1 + dt loss) for each field in `names`:
    the forward-Euler change with the linear sinks implicit per voxel (`gain`: transport)."""
    out = {}
    for name in names:
        rate = gain[name] + production.get(name, 0.0) + supply.get(name, 0.0)
        if name in loss:
            out[name] = dt * (rate - loss[name] * fields[name]) / (1 + dt * loss[name])
        else:
            out[name] = dt * rate
    return out


def source_terms(model: Model, t, dt) -> Fields:
    """Mean supply rate of each species over [t, t + dt] (nM/s)."""
    supply: Fields = {}
    for s in model.sources:
        terms.accumulate(supply, s.species, s.mean_rate(t, dt))
    return supply


def transport_rate(model: Model, fields: Mapping):
    """Largest explicit transport rate (1/s) of any voxel: its diffusive self-coupling (the
    operator's diagonal, which includes dirichlet and robin faces) plus, for chemotactic
    populations, the drift outflow."""
    faces = face_diffusivities(model)
    rate = 0.0
    for f in model.fields:
        dtype = fields[f.name].dtype
        coupling = -operators.diffusion_diagonal(
            faces[f.name], model.grid, model.boundary(f), dtype
        )
        if isinstance(f, Population) and f.chemotaxis_species is not None:
            drift = operators.chemotaxis_rate(
                fields[f.chemotaxis_species],
                f.chemotaxis_sensitivity,
                model.grid,
                model.boundary(f),
            )
            coupling = coupling + drift
        rate = jnp.maximum(rate, jnp.max(coupling))
    return rate
