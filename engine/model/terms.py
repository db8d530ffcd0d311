"""The reaction term library: each term a rate that Hill activators and inhibitors multiply.

A term is a small pytree: its rates are traced leaves (so sweeps and gradients need no
recompilation), the names it acts on are static. `contribute(fields, production, loss)` adds
its effect in the form every stepper uses, d f/dt = production - loss_rate * f with both
non-negative, so that sinks can be implicit and fields stay non-negative. Units: species nM,
populations cells/um^3, time s; rates of secretion and uptake per cell in molecules/s.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp

from engine.numerics.constants import MOLECULES_PER_UM3_PER_NM


def accumulate(table: dict, name: str, value) -> None:
    """table[name] += value, creating the entry (rates keyed by field name)."""
    table[name] = table[name] + value if name in table else value


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Hill:
    """Activator c^h / (K^h + c^h) or inhibitor K^h / (K^h + c^h) of field `of` (K in its units)."""

    of: str = field(metadata=dict(static=True))
    K: float
    hill: float = 1.0
    inhibits: bool = field(default=False, metadata=dict(static=True))

    def __call__(self, fields: Mapping):
        c = jnp.maximum(fields[self.of], 0)
        ratio = (c / self.K) ** self.hill
        return 1 / (1 + ratio) if self.inhibits else ratio / (1 + ratio)


def modulation(modulators: tuple[Hill, ...], fields: Mapping):
    """The product of a term's Hill factors (1 without any)."""
    factor = 1.0
    for m in modulators:
        factor = factor * m(fields)
    return factor


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Secretion:
    """species += rate [molecules/cell/s] * n_by, in nM/s."""

    species: str = field(metadata=dict(static=True))
    by: str = field(metadata=dict(static=True))
    rate: float
    modulators: tuple[Hill, ...] = ()

    def contribute(self, fields, production, loss):
        amount = self.rate * fields[self.by] / MOLECULES_PER_UM3_PER_NM
        accumulate(production, self.species, amount * modulation(self.modulators, fields))


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Uptake:
    """species -= (per cell) vmax c / (km + c), or k_on receptors c, times n_by; as an
    implicit loss rate (1/s). vmax molecules/cell/s, km nM, k_on 1/(nM s), receptors/cell."""

    species: str = field(metadata=dict(static=True))
    by: str = field(metadata=dict(static=True))
    vmax: float | None = None
    km: float | None = None
    k_on: float | None = None
    receptors: float | None = None
    modulators: tuple[Hill, ...] = ()

    def contribute(self, fields, production, loss):
        if self.vmax is not None:
            per_cell = self.vmax / (self.km + jnp.maximum(fields[self.species], 0))
        else:
            per_cell = self.k_on * self.receptors
        rate = per_cell * fields[self.by] / MOLECULES_PER_UM3_PER_NM
        accumulate(loss, self.species, rate * modulation(self.modulators, fields))


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Growth:
    """population += rate n (1 - sum(crowding) / capacity); capacity cells/um^3."""

    population: str = field(metadata=dict(static=True))
    rate: float
    capacity: float
    crowding: tuple[str, ...] = field(default=(), metadata=dict(static=True))
    modulators: tuple[Hill, ...] = ()

    def contribute(self, fields, production, loss):
        factor = self.rate * modulation(self.modulators, fields)
        crowd = sum(fields[name] for name in (self.crowding or (self.population,)))
        accumulate(production, self.population, factor * fields[self.population])
        accumulate(loss, self.population, factor * crowd / self.capacity)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Death:
    """population -= rate n."""

    population: str = field(metadata=dict(static=True))
    rate: float
    modulators: tuple[Hill, ...] = ()

    def contribute(self, fields, production, loss):
        accumulate(loss, self.population, self.rate * modulation(self.modulators, fields))


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Proliferation:
    """population += rate n."""

    population: str = field(metadata=dict(static=True))
    rate: float
    modulators: tuple[Hill, ...] = ()

    def contribute(self, fields, production, loss):
        amount = self.rate * fields[self.population]
        accumulate(production, self.population, amount * modulation(self.modulators, fields))


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Killing:
    """target -= rate n_by n_target; rate um^3/s."""

    target: str = field(metadata=dict(static=True))
    by: str = field(metadata=dict(static=True))
    rate: float
    modulators: tuple[Hill, ...] = ()

    def contribute(self, fields, production, loss):
        rate = self.rate * fields[self.by] * modulation(self.modulators, fields)
        accumulate(loss, self.target, rate)


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Conversion:
    """n_from -> n_to at rate k n_from (activation, differentiation, exhaustion)."""

    source: str = field(metadata=dict(static=True))
    to: str = field(metadata=dict(static=True))
    rate: float
    modulators: tuple[Hill, ...] = ()

    def contribute(self, fields, production, loss):
        rate = self.rate * modulation(self.modulators, fields)
        accumulate(loss, self.source, rate)
        accumulate(production, self.to, rate * fields[self.source])


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Recruitment:
    """population += rate [cells/um^3/s] inside a region (its mask, 0/1 per voxel)."""

    population: str = field(metadata=dict(static=True))
    mask: jax.Array
    rate: float
    modulators: tuple[Hill, ...] = ()

    def contribute(self, fields, production, loss):
        amount = self.rate * self.mask * modulation(self.modulators, fields)
        accumulate(production, self.population, amount)


CustomFunction = Callable[[Mapping[str, jax.Array], Mapping[str, jax.Array]], tuple[dict, dict]]
"""function(fields, params) -> (production, loss_rate), both keyed by field name; production
(field units/s) and loss_rate (1/s) non-negative."""


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Custom:
    """A Python term `function` (a `CustomFunction`, static: carried in the model, so that a
    model built with another function compiles anew), its parameters traced."""

    name: str = field(metadata=dict(static=True))
    function: CustomFunction = field(metadata=dict(static=True))
    params: dict = field(default_factory=dict)
    modulators: tuple[Hill, ...] = ()

    def contribute(self, fields, production, loss):
        gained, lost = self.function(fields, self.params)
        factor = modulation(self.modulators, fields)
        for name, value in gained.items():
            accumulate(production, name, value * factor)
        for name, value in lost.items():
            accumulate(loss, name, value * factor)


Term = (
    Secretion
    | Uptake
    | Growth
    | Death
    | Proliferation
    | Killing
    | Conversion
    | Recruitment
    | Custom
)


def evaluate(terms: tuple, fields: Mapping) -> tuple[dict, dict]:
    """(production, loss_rate) of all terms, keyed by field name (absent = 0)."""
    production: dict = {}
    loss: dict = {}
    for term in terms:
        term.contribute(fields, production, loss)
    return production, loss
