"""V3: a point source with first-order decay reaches the analytic steady state, in 3D
(q / (4 pi D r) exp(-r / lambda)) and 2D (K0), and the `ilsim demo` command that prints it."""

from __future__ import annotations

import re

import numpy as np
import pytest

from engine import Simulation
from engine.cli.main import main
from engine.model.terms import MOLECULES_PER_UM3_PER_NM
from engine.numerics.analytic import point_source_steady_state
from engine.runs.examples import point_source_model, point_source_profile


def _shell_averages(model, c: np.ndarray, q: float, radii):
    """Simulated and analytic means over the voxels whose centre lies within half a voxel of
    each radius (in voxels) from the source voxel's centre (q molecules/s). The shell mean
    cancels the leading anisotropic term of the lattice Green's function (~6 % high along an
    axis at 3 voxels)."""
    grid, species = model.grid, model.species[0]
    h = grid.spacing[0]
    source = tuple(n // 2 for n in grid.shape)  # the example's secreting voxel
    index = np.indices(grid.shape)
    r = np.sqrt(sum((index[a] - source[a]) ** 2 for a in range(grid.ndim)))  # voxels
    simulated, analytic = [], []
    for radius in radii:
        shell = np.abs(r - radius) <= 0.5
        exact = point_source_steady_state(
            r[shell] * h, q, species.diffusion, species.decay, grid.ndim, grid.depth
        )
        simulated.append(c[shell].mean())
        analytic.append(exact.mean())
    return np.array(simulated), np.array(analytic)


@pytest.mark.parametrize("ndim, size", [(3, 48), (2, 64)], ids=["3d", "2d"])
def test_point_source_reaches_the_analytic_steady_state(ndim, size):
    q = 1e3  # molecules/s
    model = point_source_model(ndim=ndim, size=size, rate=q)
    species = model.species[0]
    total = np.sum(np.asarray(model.sources[0].rate)) * model.grid.voxel_volume
    assert total == pytest.approx(q / MOLECULES_PER_UM3_PER_NM)  # nM um^3/s from one voxel
    assert np.sqrt(species.diffusion / species.decay) == pytest.approx(5 * model.grid.spacing[0])
    sim = Simulation(model, dtype="float32")
    state = sim.advance(sim.initial_state(), 12 / species.decay)  # transient ~ exp(-12)
    c = np.asarray(state.fields["IL2"], dtype=np.float64)
    radii = np.arange(3, 16)
    simulated, analytic = _shell_averages(model, c, q, radii)
    error = simulated / analytic - 1
    worst = int(np.argmax(np.abs(error)))
    assert np.all(np.abs(error) <= 0.02), (
        f"{ndim}D: shell-averaged error {error[worst]:+.2%} at r = {radii[worst]} voxels; "
        f"all: {np.round(error * 100, 2)} %"
    )


def test_demo_prints_the_profile_against_the_analytic_solution(capsys):
    assert main(["demo", "--ndim", "2", "--size", "32"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].startswith("point source in 2D, 32^2 voxels of 10 um")
    assert "t = 300 s" in lines[0]
    assert lines[1].startswith("shell means")
    assert re.split(r"\s{2,}", lines[2].strip()) == [
        "r (um)",
        "simulated (nM)",
        "analytic (nM)",
        "rel. error",
    ]
    rows = [line.split() for line in lines[3:]]
    assert len(rows) == 15 and all(len(row) == 4 for row in rows), lines
    r = np.array([float(row[0]) for row in rows])
    simulated = np.array([float(row[1]) for row in rows])
    analytic = np.array([float(row[2]) for row in rows])
    error = np.array([float(row[3].rstrip("%")) / 100 for row in rows])
    np.testing.assert_allclose(r, 10.0 * np.arange(1, 16))
    model = point_source_model(ndim=2, size=32)
    _, exact = _shell_averages(model, np.zeros(model.grid.shape), 1e3, np.arange(1, 16))
    np.testing.assert_allclose(analytic, exact, rtol=1e-5)  # printed to 6 digits
    np.testing.assert_allclose(error, simulated / analytic - 1, atol=1e-4)
    assert np.all(simulated > 0) and np.all(np.diff(simulated) < 0)
    # shell means, away from the source voxel and from the walls 16 voxels out:
    assert np.all(np.abs(error[:5]) < 0.02), error  # farther out, the walls reflect


def test_the_profile_is_the_shell_means_of_the_run_to_t_end():
    """`point_source_profile` (what `ilsim demo` prints): radii of whole voxels up to the
    nearest wall (3 on 8 voxels from the source at voxel 4), and the shell means of the run to
    t_end, simulated and analytic, as they are worked out independently here."""
    model = point_source_model(ndim=2, size=8)
    r, simulated, analytic = point_source_profile(model, 10.0)
    np.testing.assert_array_equal(r, [10.0, 20.0, 30.0])
    sim = Simulation(model)
    c = np.asarray(sim.advance(sim.initial_state(), 10.0).fields["IL2"], dtype=np.float64)
    expected = _shell_averages(model, c, 1e3, np.arange(1, 4))
    np.testing.assert_allclose(simulated, expected[0], rtol=1e-12)
    np.testing.assert_allclose(analytic, expected[1], rtol=1e-12)
