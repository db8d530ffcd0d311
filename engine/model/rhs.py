"""The right-hand side every stepper evaluates, in pieces: transport (diffusion, chemotaxis),
reactions split into production >= 0 and a loss rate >= 0, and sources."""

from __future__ import annotations

from collections.abc import Mapping

import jax.numpy as jnp

from engine.model import terms
from engine.model.model import Fields, Model, Population
from engine.numerics import operators


def face_diffusivities(model: Model) -> dict:
    """Loop-invariant face coefficients of every field's diffusion/motility."""
    return {
        f.name: operators.face_diffusivity(model.diffusivity(f), model.grid, model.boundary(f))
        for f in model.fields
    }


def field_couplings(model: Model) -> dict:
    """`operators.face_couplings` of every field (face rates, 1/s, and outside values, in its
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
    """dt (gain + production + supply - loss f) for each field in `names`: the forward-Euler
    change (`gain`: transport). Non-negative f + change wherever dt (transport self-coupling
    + loss rate) <= 1 (`positivity_rate`)."""
    out = {}
    for name in names:
        rate = gain[name] + production.get(name, 0.0) + supply.get(name, 0.0)
        if name in loss:
            rate = rate - loss[name] * fields[name]
        out[name] = dt * rate
    return out


def source_terms(model: Model, t, dt) -> Fields:
    """Mean supply rate of each species over [t, t + dt] (nM/s)."""
    supply: Fields = {}
    for s in model.sources:
        terms.accumulate(supply, s.species, s.mean_rate(t, dt))
    return supply


def draining_loss_rates(model: Model, fields: Mapping, t) -> Fields:
    """Each field's reaction loss rate (1/s, decay included), the larger of its values at the
    field's level and with that field alone set to 0."""
    _, loss = reaction_terms(model, fields, t)
    for name in loss:
        _, emptied = reaction_terms(model, {**fields, name: jnp.zeros_like(fields[name])}, t)
        loss[name] = jnp.maximum(loss[name], emptied[name])
    return loss


def positivity_rate(model: Model, fields: Mapping, t=0.0):
    """Largest rate (1/s) at which any voxel of any field loses its own content: its
    diffusive self-coupling (the operator's diagonal, which includes dirichlet and robin
    faces), for chemotactic populations the drift outflow, and its reaction loss rate (decay
    and sinks). A forward-Euler step of at most 1 / this rate keeps every field
    non-negative. A loss rate counts at the larger of its values at the field's level and
    with the field emptied: a saturable sink (vmax / (km + c)) is fastest as its field runs
    out, which it does within the steps that this rate sets."""
    loss = draining_loss_rates(model, fields, t)
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
        if f.name in loss:
            coupling = coupling + loss[f.name]
        rate = jnp.maximum(rate, jnp.max(coupling))
    return rate
