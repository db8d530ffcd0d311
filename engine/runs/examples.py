"""Small ready-made models: the point-source example that `ilsim demo` runs, and a nonlinear
reaction-diffusion system on which the steppers' orders and costs are measured."""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np

from engine.model.model import Model, Species
from engine.model.sources import point_source
from engine.numerics.analytic import point_source_steady_state
from engine.numerics.boundary import Boundary, Periodic
from engine.numerics.constants import MOLECULES_PER_UM3_PER_NM
from engine.numerics.grid import Grid
from engine.runs.simulation import Simulation


def point_source_model(
    ndim: int = 3,
    size: int = 48,
    spacing: float = 10.0,
    diffusion: float = 100.0,
    decay: float = 4e-2,
    rate: float = 1e3,
) -> Model:
    """IL-2-like cytokine from one secreting voxel at the centre of a cube (or square).

    spacing um, diffusion um^2/s, decay 1/s, rate molecules/s. The screening length
    sqrt(D/k) is 5 voxels by default.
    """
    grid = Grid((size,) * ndim, spacing=spacing)
    centre = tuple(grid.coordinates(a)[size // 2] for a in range(ndim))
    cytokine = Species("IL2", diffusion=diffusion, decay=decay)
    return Model(grid, species=(cytokine,), sources=(point_source(grid, "IL2", centre, rate),))


def point_source_profile(model: Model, t_end: float, **simulation_options):
    """Radii r (um, whole voxels up to the nearest wall), and the simulated and analytic c (nM)
    averaged over the voxels whose centre lies within half a voxel of r: the shell mean cancels
    the anisotropy of the lattice (6% along an axis at 3 voxels in 3D)."""
    sim = Simulation(model, **simulation_options)
    state = sim.advance(sim.initial_state(), t_end)
    c = np.asarray(state.fields["IL2"], dtype=np.float64)
    grid, species = model.grid, model.species[0]
    centre = np.array([n // 2 for n in grid.shape])
    index = np.indices(grid.shape)
    distance = np.sqrt(sum((index[a] - centre[a]) ** 2 for a in range(grid.ndim)))  # voxels
    q = (
        float(np.sum(np.asarray(model.sources[0].rate)))
        * grid.voxel_volume
        * MOLECULES_PER_UM3_PER_NM
    )
    h = grid.spacing[0]
    exact = np.zeros_like(c)
    away = distance > 0
    exact[away] = point_source_steady_state(
        distance[away] * h, q, species.diffusion, species.decay, grid.ndim, grid.depth
    )
    radii = np.arange(1, int(min(min(centre), min(np.array(grid.shape) - 1 - centre))) + 1)
    shells = [np.abs(distance - r) <= 0.5 for r in radii]
    return (
        radii * h,
        np.array([c[shell].mean() for shell in shells]),
        np.array([exact[shell].mean() for shell in shells]),
    )


GRAY_SCOTT_FEED, GRAY_SCOTT_KILL = 0.04, 0.06  # 1/s


def gray_scott_reactions(fields, t):
    """u + 2v -> 3v, u fed at FEED towards 1, v removed at FEED + KILL: production >= 0 and
    loss rates (1/s), as every stepper takes them."""
    u, v = fields["u"], fields["v"]
    production = {"u": GRAY_SCOTT_FEED * jnp.ones_like(u), "v": u * v**2}
    loss = {"u": v**2 + GRAY_SCOTT_FEED, "v": GRAY_SCOTT_FEED + GRAY_SCOTT_KILL + 0 * v}
    return production, loss


def gray_scott_model(shape: tuple[int, ...]) -> Model:
    """The Gray-Scott system on a periodic grid of 1 um voxels, D_u = 0.2 and D_v = 0.1 um^2/s,
    from a smooth bump of v in a bath of u: nonlinear reactions as fast as the diffusion
    (`reaction_rate` 1/s bounds the autocatalysis u v, which stays below 1)."""
    grid = Grid(shape, spacing=1.0)
    bump = np.prod([np.sin(np.pi * x / n) ** 2 for x, n in zip(grid.centres(), shape)], axis=0)
    periodic = Boundary.uniform(len(shape), Periodic())
    u = Species("u", diffusion=0.2, boundary=periodic, initial=1.0 - 0.5 * bump)
    v = Species("v", diffusion=0.1, boundary=periodic, initial=0.25 * bump + 0.01)
    return Model(grid, species=(u, v), reactions=gray_scott_reactions, reaction_rate=1.0)


def niche_radius(c: np.ndarray, centres, spacing: float, threshold: float, reach: int):
    """The radius (um) at which the means of a field `c` over shells of one voxel around the
    voxels `centres`, averaged over the centres, fall below `threshold` (log-linear between
    the shells around the crossing; shells up to `reach` voxels); NaN if they never do."""
    index = np.indices(c.shape)
    radii = np.arange(1, reach + 1)
    means = np.zeros(len(radii))
    for centre in centres:
        distance = np.sqrt(sum((index[a] - centre[a]) ** 2 for a in range(c.ndim)))
        means += [c[np.abs(distance - r) <= 0.5].mean() / len(centres) for r in radii]
    below = np.nonzero(means < threshold)[0]
    if below.size == 0 or below[0] == 0:
        return np.nan
    i = below[0]
    a, b = np.log(means[i - 1]), np.log(means[i])
    return spacing * (radii[i - 1] + (np.log(threshold) - a) / (b - a))


def niche_scaling(config, consumers, threshold: float, per_side: int = 4, overrides=None):
    """IL-2 niche radii in a config's 2D model (`configs/il2_niches_no_treg.toml`):
    per_side^2 secreting Th cells held at the centres of as many equal squares of the grid,
    the responders (Tresp) held still at random positions, IL-2 at steady state
    (quasi_steady). For each (count, receptors) pair in `consumers`: the radius (um) where
    IL-2, averaged over the secreting cells, falls below `threshold` (nM, `niche_radius`).
    Returns (count x receptors, radius) arrays."""
    from engine.config.loading import load_config

    products, radii = [], []
    for count, receptors in consumers:
        cfg = load_config(
            config,
            {
                **(overrides or {}),
                "cells.Th.count": per_side**2,
                "cells.Th.motility": "0 um^2/s",
                "cells.Tresp.count": count,
                "cells.Tresp.capacity": count,
                "cells.Tresp.motility": "0 um^2/s",
                "cells.Tresp.uptake[0].receptors": receptors,
                "time.stepper": "quasi_steady",
                "time.dt": "1 s",
                "time.end": "2 s",
                "time.output_every": "1 s",
            },
        )
        sim = Simulation(cfg)
        state = sim.initial_state()
        grid = sim.model.grid
        square = [n // per_side for n in grid.shape]
        centres = [
            (square[0] * i + square[0] // 2, square[1] * j + square[1] // 2)
            for i in range(per_side)
            for j in range(per_side)
        ]
        at = [[grid.coordinates(a)[i] for a, i in enumerate(centre)] for centre in centres]
        th = state.cells["Th"]
        held = th.position.at[: len(at)].set(jnp.asarray(at, th.position.dtype))
        state = dataclasses.replace(
            state, cells={**state.cells, "Th": dataclasses.replace(th, position=held)}
        )
        state = sim.advance(state, 1.0)
        c = np.asarray(state.fields["IL2"], np.float64)
        products.append(count * receptors)
        radii.append(niche_radius(c, centres, grid.spacing[0], threshold, min(square) // 2))
    return np.array(products, float), np.array(radii)
