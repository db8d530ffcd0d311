"""Small ready-made models: the point-source example that `ilsim demo` runs."""

from __future__ import annotations

import numpy as np

from engine.grid import Grid
from engine.model import Model, Species
from engine.simulation import Simulation
from engine.sources import point_source
from engine.validation import point_source_steady_state


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
    """Distances (um) along the first axis from the source, simulated and analytic c (nM)."""
    sim = Simulation(model, **simulation_options)
    state = sim.advance(sim.initial_state(), t_end)
    c = np.asarray(state.fields["IL2"], dtype=np.float64)
    grid, species = model.grid, model.species[0]
    centre = tuple(n // 2 for n in grid.shape)
    line = c[(slice(None),) + centre[1:]]
    index = np.arange(centre[0] + 1, grid.shape[0])
    r = (index - centre[0]) * grid.spacing[0]
    q = float(np.sum(np.asarray(model.sources[0].rate))) * grid.voxel_volume * 0.602214076
    exact = point_source_steady_state(r, q, species.diffusion, species.decay, grid.ndim, grid.depth)
    return r, line[index], exact
