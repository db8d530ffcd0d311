"""Cells as individuals against theory: a secreting cell's steady state (3D and 2D), exact
secretion totals for every stepper, the random walk's mean squared displacement, chemotactic
drift, exponential growth by division and death, screening by many consuming cells, state
ODEs, equivalence with a density field, reproducibility and the capacity guard."""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import engine
from engine.model.cells import (
    CellSecretion,
    CellType,
    CellUptake,
    Fate,
    StateTerm,
    cells_dt,
    divide,
    exchange_terms,
    fold_into,
    gradient_at,
    step_cells,
    voxel_index,
    with_densities,
)
from engine.model.model import Model, Population, Species
from engine.model.terms import Hill, Secretion, Uptake
from engine.numerics.analytic import point_source_steady_state
from engine.numerics.boundary import Boundary, Dirichlet, Periodic
from engine.numerics.constants import MOLECULES_PER_UM3_PER_NM
from engine.numerics.grid import Grid
from engine.stepping.simulation import CapacityExceeded, Simulation, State, check_capacity


def SLOW(value):
    return pytest.param(value, marks=pytest.mark.slow)


def one_type(grid, positions, capacity=None, **kwargs) -> CellType:
    positions = np.asarray(positions, dtype=np.float64).reshape(-1, grid.ndim)
    return CellType("T", capacity=capacity or max(len(positions), 1), initial=positions, **kwargs)


def at_centres(grid, voxels) -> np.ndarray:
    """The centres (um) of the voxels with the given index tuples."""
    return np.array([[grid.coordinates(a)[i[a]] for a in range(grid.ndim)] for i in voxels])


# --- secretion, uptake and the steady state -----------------------------------------------


@pytest.mark.parametrize(
    "ndim, size", [pytest.param(3, 48, marks=pytest.mark.slow), (2, 64)], ids=["3d", "2d"]
)
def test_one_secreting_cell_reaches_the_analytic_steady_state(ndim, size):
    q, D, k, h = 1e3, 100.0, 4e-2, 10.0  # screening length 5 voxels
    grid = Grid((size,) * ndim, spacing=h)
    centre = (size // 2,) * ndim
    cell = one_type(grid, at_centres(grid, [centre]), secretion=(CellSecretion("IL2", q),))
    model = Model(grid, species=(Species("IL2", diffusion=D, decay=k),), cells=(cell,))
    sim = Simulation(model, stepper="quasi_steady", dt=100.0)
    c = np.asarray(sim.advance(sim.initial_state(), 100.0).fields["IL2"], np.float64)
    index = np.indices(grid.shape)
    r = np.sqrt(sum((index[a] - centre[a]) ** 2 for a in range(ndim)))
    errors = []
    for radius in range(3, 16):
        shell = np.abs(r - radius) <= 0.5
        exact = point_source_steady_state(r[shell] * h, q, D, k, ndim, grid.depth)
        errors.append(c[shell].mean() / exact.mean() - 1)
    assert np.max(np.abs(errors)) <= 0.02, np.round(np.array(errors) * 100, 2)


@pytest.mark.parametrize("stepper", ["explicit", "imex"])
def test_secreted_molecules_are_exactly_what_the_field_gains(stepper):
    grid = Grid((12, 10, 8), spacing=(10.0, 8.0, 12.0))
    rng = np.random.default_rng(1)
    positions = rng.uniform(grid.lower, grid.upper, (40, 3))
    rates = (3.0, 11.0)
    cell = one_type(
        grid,
        positions,
        motility=2.0,
        secretion=tuple(CellSecretion("IL2", r) for r in rates),
    )
    model = Model(grid, species=(Species("IL2", diffusion=25.0),), cells=(cell,))
    sim = Simulation(model, stepper=stepper, dt=5.0 if stepper == "imex" else "auto")
    t = 600.0
    state = sim.advance(sim.initial_state(), t)
    gained = float(np.sum(np.asarray(state.fields["IL2"], np.float64)))
    gained *= grid.voxel_volume * MOLECULES_PER_UM3_PER_NM
    assert gained == pytest.approx(sum(rates) * 40 * t, rel=2e-6)


@pytest.mark.parametrize("stepper", [SLOW("explicit"), "imex", SLOW("quasi_steady")])
def test_cells_one_per_voxel_act_as_the_equivalent_density(stepper):
    """Cells at the centres of every voxel of a region are the density field 1/V there: the
    same secretion, first-order and saturable uptake, to rounding."""
    grid = Grid((10, 12), spacing=10.0, depth=10.0)
    voxels = [(i, j) for i in range(2, 8) for j in range(3, 9)]
    density = np.zeros(grid.shape)
    density[tuple(np.array(voxels).T)] = 1 / grid.voxel_volume
    il2 = Species("IL2", diffusion=50.0, decay=1e-3, initial=0.5)
    secretion, k_on, receptors, vmax, km = 20.0, 1e-3, 800.0, 30.0, 0.2
    cell = one_type(
        grid,
        at_centres(grid, voxels),
        secretion=(CellSecretion("IL2", secretion),),
        uptake=(
            CellUptake("IL2", k_on=k_on, receptors=receptors),
            CellUptake("IL2", vmax=vmax, km=km),
        ),
    )
    with_cells = Model(grid, species=(il2,), cells=(cell,))
    as_density = Model(
        grid,
        species=(il2,),
        populations=(Population("T", initial=density),),
        terms=(
            Secretion("IL2", "T", secretion),
            Uptake("IL2", "T", k_on=k_on, receptors=receptors),
            Uptake("IL2", "T", vmax=vmax, km=km),
        ),
    )
    dt = 20.0 if stepper != "explicit" else 0.2
    ends = []
    for model in (with_cells, as_density):
        sim = Simulation(model, stepper=stepper, dt=dt, dtype="float64")
        ends.append(np.asarray(sim.advance(sim.initial_state(), 200.0).fields["IL2"]))
    np.testing.assert_allclose(ends[0], ends[1], rtol=1e-9, atol=1e-12)
    assert ends[0].min() > 0


@pytest.mark.parametrize("stepper", ["explicit", "imex", SLOW("quasi_steady")])
def test_uptake_far_faster_than_diffusion_keeps_the_field_non_negative(stepper):
    grid = Grid((16, 16), spacing=10.0)
    rng = np.random.default_rng(3)
    cell = one_type(
        grid,
        rng.uniform(grid.lower, grid.upper, (60, 2)),
        uptake=(CellUptake("IL2", k_on=1.0, receptors=1e4),),  # ~1e3 1/s per cell and voxel
    )
    il2 = Species("IL2", diffusion=100.0, decay=1e-4, initial=1.0)
    model = Model(grid, species=(il2,), cells=(cell,))
    sim = Simulation(model, stepper=stepper, dt="auto" if stepper == "explicit" else 30.0)
    c = np.asarray(sim.advance(sim.initial_state(), 60.0).fields["IL2"])
    assert np.all(np.isfinite(c)) and c.min() >= 0


def test_many_consuming_cells_screen_a_source_with_the_density_length():
    """A dirichlet face at x = 0 into a bar of uniformly spread consumers: the profile
    decays as exp(-x / L) with L = sqrt(D / (k_on R rho))."""
    n, h = 160, 5.0
    grid = Grid((n,), spacing=h, depth=10.0)
    D, k_on, receptors, per_voxel = 100.0, 1e-3, 400.0, 200
    rng = np.random.default_rng(4)
    count = n * per_voxel
    cell = one_type(
        grid,
        rng.uniform(0, n * h, (count, 1)),
        uptake=(CellUptake("IL2", k_on=k_on, receptors=receptors),),
    )
    face = Boundary.from_faces(1, x_min=Dirichlet(1.0))
    model = Model(grid, species=(Species("IL2", diffusion=D, boundary=face),), cells=(cell,))
    sim = Simulation(model, stepper="quasi_steady", dt=10.0, dtype="float64")
    c = np.asarray(sim.advance(sim.initial_state(), 10.0).fields["IL2"])
    rho = count / (n * h * grid.depth**2) / MOLECULES_PER_UM3_PER_NM  # nM-equivalents
    length = np.sqrt(D / (k_on * receptors * rho))
    x = grid.coordinates(0)
    window = (x > length) & (x < 4 * length)
    slope = np.polyfit(x[window], np.log(c[window]), 1)[0]
    assert -1 / slope == pytest.approx(length, rel=0.03)


# --- motion --------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [SLOW(1), 2, SLOW(3)])
def test_random_walk_has_mean_squared_displacement_2_ndim_M_t(ndim):
    grid = Grid((8,) * ndim, spacing=250.0)  # walls ~40 rms steps away
    motility, t, count = 0.5, 400.0, 10_000
    start = np.full((count, ndim), 1000.0)
    cell = one_type(grid, start, motility=motility)
    model = Model(grid, species=(Species("IL2"),), cells=(cell,))
    sim = Simulation(model, stepper="imex", dt=20.0, seed=7)
    end = np.asarray(sim.advance(sim.initial_state(), t).cells["T"].position, np.float64)
    msd = np.mean(np.sum((end - start) ** 2, axis=1))
    assert msd == pytest.approx(2 * ndim * motility * t, rel=0.05)


def test_chemotaxis_drifts_at_chi_grad_c_in_a_fixed_linear_gradient():
    grid = Grid((20, 40), spacing=10.0)
    slope = 1e-3  # nM/um along x
    ramp = np.broadcast_to(slope * grid.coordinates(1), grid.shape)
    chi, motility, t, count = 200.0, 0.2, 300.0, 10_000
    start = np.tile([100.0, 150.0], (count, 1))
    cell = one_type(
        grid, start, motility=motility, chemotaxis_species="C", chemotaxis_sensitivity=chi
    )
    model = Model(grid, species=(Species("C", initial=ramp),), cells=(cell,))
    sim = Simulation(model, stepper="imex", dt=10.0, seed=2)
    end = np.asarray(sim.advance(sim.initial_state(), t).cells["T"].position, np.float64)
    velocity = np.mean(end - start, axis=0) / t
    assert velocity[1] == pytest.approx(chi * slope, rel=0.05)
    assert abs(velocity[0]) < 0.05 * chi * slope


def test_positions_reflect_at_walls_and_wrap_on_periodic_axes():
    lower, upper = (0.0, 0.0), (10.0, 10.0)
    x = jnp.array([[-3.0, -3.0], [12.0, 12.0], [25.0, 25.0], [4.0, 4.0]])
    folded = np.asarray(fold_into(x, lower, upper, (False, True)))
    np.testing.assert_allclose(folded[:, 0], [3.0, 8.0, 5.0, 4.0], atol=1e-5)
    np.testing.assert_allclose(folded[:, 1], [7.0, 2.0, 5.0, 4.0], atol=1e-5)
    periodic = Boundary.uniform(2, Periodic())
    grid = Grid((4, 5), spacing=2.0)
    model = Model(grid, species=(Species("C", boundary=periodic),))
    assert model.periodic_axes == (True, True)
    index = voxel_index(grid, jnp.array([[0.1, 0.1], [7.9, 9.9], [3.0, 5.0], [8.0, 10.0]]))
    np.testing.assert_array_equal(np.asarray(index), [0, 19, 7, 19])


# --- state, division, death ---------------------------------------------------------------


def test_receptors_follow_their_state_ode_exactly_at_a_fixed_field():
    grid = Grid((4, 4), spacing=10.0)
    P, k, K = 50.0, 2e-3, 0.1  # receptors/s, 1/s, nM
    il2 = 0.3
    term = StateTerm("R", production=P, decay=k, modulators=(Hill("IL2", K, 1.0),))
    cell = one_type(grid, [[5.0, 5.0], [25.0, 35.0]], state={"R": 100.0}, state_terms=(term,))
    model = Model(grid, species=(Species("IL2", initial=il2),), cells=(cell,))
    sim = Simulation(model, stepper="imex", dt=50.0, dtype="float64")
    t = 1000.0
    R = np.asarray(sim.advance(sim.initial_state(), t).cells["T"].state["R"])[:2]
    f = il2 / (K + il2)
    exact = P / k + (100.0 - P / k) * np.exp(-k * f * t)
    np.testing.assert_allclose(R, exact, rtol=1e-12)


def receptor_growth_model() -> Model:
    """20 cells that secrete IL-2 and take it up through receptors R that grow without decay,
    1000 to 1e6 over 1000 s: the uptake the field sees grows 1000x within the run."""
    grid = Grid((8, 8), spacing=10.0)
    rng = np.random.default_rng(0)
    cell = one_type(
        grid,
        rng.uniform(grid.lower, grid.upper, (20, 2)),
        state={"R": 1000.0},
        secretion=(CellSecretion("IL2", 100.0),),
        uptake=(CellUptake("IL2", k_on=1.0, receptors_state="R"),),
        state_terms=(StateTerm("R", production=1000.0),),
    )
    return Model(grid, species=(Species("IL2", diffusion=10.0, initial=1.0),), cells=(cell,))


@pytest.mark.parametrize(
    "stepper, dt",
    [
        pytest.param("explicit", "auto", marks=pytest.mark.slow),
        ("imex", "auto"),
        pytest.param("imex", 0.3, marks=pytest.mark.slow),
    ],
)
def test_a_growing_cell_state_reaches_the_field_however_the_run_is_cut(stepper, dt, monkeypatch):
    """The fields see a cell's state as it was at the cell step's start, so the cell step
    bounds the state's relative growth (`cells.STATE_PER_STEP`): the run in one call, in
    25 calls, and with a tenth of that growth per step agree within 6% (first order in
    the cell step; 1.0e-4 nM at the end). Without the bound, receptors growing without
    decay were still for a whole call: 0.1 nM in one call against 1e-4 in 100. The explicit
    stepper sets its step afresh at each cell step: with the step of the call's start, the
    growing uptake made it unstable (4e5 nM by 20 s)."""
    import engine.model.cells as cells_module

    def mean_il2(calls):
        sim = Simulation(receptor_growth_model(), stepper=stepper, dt=dt, dtype="float64")
        state = sim.initial_state()
        for t in np.linspace(0.0, 1000.0, calls + 1)[1:]:
            state = sim.advance(state, t)
        il2 = np.asarray(state.fields["IL2"])
        assert np.all(np.isfinite(il2)) and il2.min() >= 0
        return il2.mean()

    one, many = mean_il2(1), mean_il2(25)
    monkeypatch.setattr(cells_module, "STATE_PER_STEP", cells_module.STATE_PER_STEP / 10)
    finer = mean_il2(1)
    assert 0.9e-4 < finer < 1.1e-4
    np.testing.assert_allclose([one, many], finer, rtol=0.06)


def test_the_explicit_step_follows_the_uptake_of_growing_receptors_within_a_call():
    """The explicit stepper at dt = "auto" sets its step afresh at each cell step: with the
    step of the call's start, receptors growing 30x within one call of 30 s made the uptake
    beyond its stability limit (1e15 nM by 30 s, from 1 nM)."""
    sim = Simulation(receptor_growth_model(), stepper="explicit", dtype="float64")
    il2 = np.asarray(sim.advance(sim.initial_state(), 30.0).fields["IL2"])
    assert np.all(np.isfinite(il2)) and 0 <= il2.min() and il2.max() < 1.0


def test_advance_leaves_its_input_state_as_it_is_unless_donated():
    """`advance` is pure: twice from one state, the same result; `donate=True` (the run
    driver's, for the least memory) gives the input's buffers to the computation."""
    model = receptor_growth_model()
    sim = Simulation(model, stepper="imex", dt=5.0, dtype="float64")
    start = sim.initial_state()
    first, second = sim.advance(start, 50.0), sim.advance(start, 50.0)
    np.testing.assert_array_equal(first.fields["IL2"], second.fields["IL2"])
    np.testing.assert_array_equal(first.cells["T"].state["R"], second.cells["T"].state["R"])
    np.testing.assert_array_equal(start.fields["IL2"], 1.0)
    sim.advance(start, 50.0, donate=True)
    assert start.fields["IL2"].is_deleted()


@pytest.mark.parametrize("stepper", ["explicit", "imex", "quasi_steady"])
def test_a_model_of_cells_only_steps_with_every_stepper(stepper):
    grid = Grid((6, 6), spacing=10.0)
    cell = one_type(grid, at_centres(grid, [(1, 1), (4, 2)]), motility=1.0)
    sim = Simulation(Model(grid, cells=(cell,)), stepper=stepper, seed=3)
    state = sim.advance(sim.initial_state(), 60.0)
    moved = np.asarray(state.cells["T"].position)[:2] - at_centres(grid, [(1, 1), (4, 2)])
    assert state.fields == {} and 0 < np.abs(moved).max() < 30.0


@pytest.mark.parametrize("dt", [50.0, 5000.0])
def test_division_and_death_grow_the_count_as_n0_exp_b_minus_d_t(dt):
    """Also at a fixed field step of the whole run, b dt = 1: the cells take it in the steps
    `cells_dt` allows (a cell divided at most once in it: the count fell 11 standard errors
    short)."""
    grid = Grid((10, 10), spacing=10.0)
    rng = np.random.default_rng(5)
    n0, b, d, t = 2000, 2e-4, 1e-4, 5000.0
    cell = one_type(
        grid,
        rng.uniform(0, 100, (n0, 2)),
        capacity=8000,
        state={"R": 1.0},
        division=Fate(b, halve=("R",)),
        death=Fate(d),
    )
    model = Model(grid, species=(Species("IL2"),), cells=(cell,))
    sim = Simulation(model, stepper="imex", dt=dt, seed=11)
    cells = sim.advance(sim.initial_state(), t).cells["T"]
    count = int(cells.count)
    growth = np.exp((b - d) * t)
    mean = n0 * growth
    standard_error = np.sqrt(n0 * (b + d) / (b - d) * growth * (growth - 1))
    assert abs(count - mean) <= 3 * standard_error, (count, mean, standard_error)
    alive = np.asarray(cells.alive)
    ids = np.asarray(cells.id)[alive]
    assert len(np.unique(ids)) == count and ids.max() < int(cells.next_id)
    assert np.all(np.asarray(cells.id)[~alive] == -1)
    R = np.asarray(cells.state["R"])[alive]
    assert set(np.unique(R)) <= {2.0**-g for g in range(20)} and R.min() < 1


def test_division_halves_the_named_state_in_mother_and_daughter_and_copies_the_rest():
    """`Fate.halve`: a dividing cell's daughter takes the lowest free slot (in slot order),
    a new id and the mother's position; the `halve` variables are halved in both mother and
    daughter (what a cell holds is shared), every other variable is copied unchanged."""
    grid = Grid((4, 4), spacing=10.0)
    positions = [[5.0, 5.0], [15.0, 25.0], [35.0, 32.0]]
    cell = one_type(
        grid, positions, capacity=5, state={"R": 0.0, "S": 0.0}, division=Fate(1e-3, halve=("R",))
    )
    cells = cell.initial_cells(jnp.float32)
    state = {"R": jnp.array([8.0, 4.0, 2.0, 0.0, 0.0]), "S": jnp.array([1.0, 3.0, 5.0, 0.0, 0.0])}
    cells = dataclasses.replace(cells, state=state)
    dividing = jnp.array([True, False, True, False, False])
    out = jax.jit(divide, static_argnums=0)(cell, cells, dividing)
    np.testing.assert_array_equal(np.asarray(out.alive), [True] * 5)
    np.testing.assert_array_equal(np.asarray(out.id), [0, 1, 2, 3, 4])
    assert int(out.next_id) == 5 and int(out.overflow) == 0
    np.testing.assert_array_equal(np.asarray(out.state["R"]), [4.0, 4.0, 1.0, 4.0, 1.0])
    np.testing.assert_array_equal(np.asarray(out.state["S"]), [1.0, 3.0, 5.0, 1.0, 5.0])
    np.testing.assert_array_equal(
        np.asarray(out.position), np.asarray(positions + [positions[0], positions[2]], np.float32)
    )
    # the halved variable's total over the cells is conserved by division
    assert float(out.state["R"].sum()) == float(cells.state["R"].sum())
    # a full population: the first mother's daughter takes the last slot, the second's finds
    # none (counted in overflow) and that mother keeps her state whole
    cells = dataclasses.replace(
        cells, alive=jnp.array([True, True, True, True, False]), next_id=jnp.int32(4)
    )
    out = jax.jit(divide, static_argnums=0)(cell, cells, dividing)
    assert int(out.overflow) == 1 and int(out.next_id) == 5 and bool(out.alive.all())
    np.testing.assert_array_equal(np.asarray(out.state["R"]), [4.0, 4.0, 2.0, 0.0, 4.0])


def test_the_gradient_a_cell_senses_is_exact_for_a_linear_field_up_to_the_walls():
    """`gradient_at`: central differences inside, one-sided in the first and last voxel of
    an axis (span one voxel, not two), 0 along an axis of one voxel: a linear field's gradient
    is exact in every voxel, so a cell against a wall drifts at chi grad c like any other."""
    grid = Grid((5, 6, 1), spacing=(2.0, 3.0, 4.0))
    a, b = 0.7, -0.25  # nM/um along z and y
    field = jnp.asarray(a * grid.centres()[0] + b * grid.centres()[1] + 1.0)
    voxels = [(i, j, 0) for i in range(5) for j in range(6)]
    gradient = np.asarray(
        gradient_at(field, grid, jnp.asarray(at_centres(grid, voxels)), (False, False, False))
    )
    np.testing.assert_allclose(gradient, np.tile([a, b, 0.0], (len(voxels), 1)), atol=1e-5)


def test_dead_cells_and_empty_slots_neither_exchange_nor_are_sensed():
    """Only alive cells secrete, take up and count in what other cells sense: a dead cell
    keeps its slot's position and state, and empty slots sit at the origin voxel, yet the
    exchange (nM/s, loss rate 1/s, saturable vmax density) and the sensed density and summed
    state per um^3 are those of the alive cells alone."""
    grid = Grid((4, 4), spacing=(10.0, 8.0), depth=5.0)
    per_nM = grid.voxel_volume * MOLECULES_PER_UM3_PER_NM
    secreting = one_type(
        grid,
        at_centres(grid, [(1, 1), (1, 1), (2, 3)]),
        capacity=5,
        state={"R": 0.0},
        secretion=(CellSecretion("A", 30.0),),
        uptake=(CellUptake("A", k_on=0.5, receptors=100.0), CellUptake("B", vmax=7.0, km=0.2)),
    )
    reader = dataclasses.replace(
        one_type(grid, at_centres(grid, [(3, 3)]), secretion=(CellSecretion("A", 1.0),)),
        name="S",
        secretion=(CellSecretion("A", 1.0, (Hill("T", 1.0), Hill("T.R", 1.0))),),
    )
    cells = secreting.initial_cells(jnp.float32)
    cells = dataclasses.replace(  # the second cell has died
        cells,
        alive=jnp.array([True, False, True, False, False]),
        id=jnp.array([0, -1, 2, -1, -1], jnp.int32),
        state={"R": jnp.array([10.0, 20.0, 40.0, 80.0, 160.0])},
    )
    population = {"T": cells}
    fields = {"A": jnp.zeros(grid.shape), "B": jnp.zeros(grid.shape)}
    occupied = np.zeros(grid.shape)
    occupied[1, 1] = occupied[2, 3] = 1.0
    exchange = {e.species: e for e in exchange_terms((secreting,), population, fields, grid)}
    np.testing.assert_allclose(exchange["A"].production, 30.0 / per_nM * occupied, rtol=1e-6)
    np.testing.assert_allclose(exchange["A"].loss, 0.5 * 100.0 / per_nM * occupied, rtol=1e-6)
    ((vmax, km),) = exchange["B"].saturable
    np.testing.assert_allclose(vmax, 7.0 / per_nM * occupied, rtol=1e-6)
    population["S"] = reader.initial_cells(jnp.float32)
    sensed = with_densities((secreting, reader), population, fields, grid)
    np.testing.assert_allclose(sensed["T"], occupied / grid.voxel_volume, rtol=1e-6)
    summed = np.zeros(grid.shape)
    summed[1, 1], summed[2, 3] = 10.0, 40.0
    np.testing.assert_allclose(sensed["T.R"], summed / grid.voxel_volume, rtol=1e-6)


@pytest.mark.parametrize("fate", ["death", "division"])
def test_death_and_division_rates_are_scaled_by_their_modulators(fate):
    """A fate's rate times its Hill factors of the field in the cell's voxel: in one cell step
    of dt, each of N cells dies with probability 1 - exp(-d f dt) or divides with exp(b f dt)
    - 1, f = 1/(1 + (c/K)^h), here f = 0.2 where c = 2 K (h = 2) and 1 where c = 0. The
    counts of each half of the grid are binomial: within 5 standard deviations of N p."""
    grid = Grid((2, 2), spacing=10.0)
    n, rate, dt, K = 4000, 0.05, 2.0, 0.1
    c = np.zeros(grid.shape)
    c[0, :] = 2 * K
    positions = np.concatenate([at_centres(grid, [(0, 0)] * n), at_centres(grid, [(1, 1)] * n)])
    modulators = (Hill("C", K, 2.0, inhibits=True),)
    cell = one_type(grid, positions, capacity=4 * n, **{fate: Fate(rate, modulators)})
    cells = cell.initial_cells(jnp.float32)
    step = jax.jit(step_cells, static_argnums=(0, 3, 4))  # one compilation, not one per op
    out = step(cell, cells, {"C": jnp.asarray(c)}, grid, (False, False), dt, jax.random.key(4))
    alive = np.asarray(out.alive)
    if fate == "death":  # the dead give up their ids (-1), the living keep theirs
        np.testing.assert_array_equal(np.asarray(out.id), np.where(alive, cells.id, -1))
        assert 0 < alive[: 2 * n].sum() < 2 * n
    for rows, f in ((slice(0, n), 0.2), (slice(n, 2 * n), 1.0)):
        if fate == "death":
            p, events = -np.expm1(-rate * f * dt), n - alive[rows].sum()
        else:
            p = np.expm1(rate * f * dt)
            daughters = np.asarray(out.position)[2 * n :][alive[2 * n :]]
            events = np.sum(daughters[:, 0] < 10.0) if f < 1 else np.sum(daughters[:, 0] > 10.0)
        assert abs(events - n * p) <= 5 * np.sqrt(n * p * (1 - p)), (fate, f, events, n * p)


def test_the_cell_step_bounds_each_move_and_fate_per_step():
    """`cells_dt`: the rms random step sqrt(2 ndim M dt) is `MOVE_PER_STEP` voxels (all ndim
    axes move), the chemotactic drift |chi grad c| dt at most that, attracted or repelled
    (chi < 0), and a fate's rate times the step at most `FATE_PER_STEP`."""
    import engine.model.cells as cells_module

    for ndim in (1, 2, 3):
        grid = Grid((6,) * ndim, spacing=4.0)
        cell = one_type(grid, at_centres(grid, [(2,) * ndim]), motility=0.3)
        population = {"T": cell.initial_cells(jnp.float32)}
        dt = float(cells_dt((cell,), population, {}, grid, (False,) * ndim))
        rms = np.sqrt(2 * ndim * 0.3 * dt)
        assert rms == pytest.approx(cells_module.MOVE_PER_STEP * 4.0, rel=1e-6)
    grid = Grid((6, 6), spacing=4.0)
    ramp = jnp.asarray(0.02 * grid.centres()[1])  # nM/um along x
    for chi in (100.0, -100.0):
        cell = one_type(
            grid, at_centres(grid, [(2, 2)]), chemotaxis_species="C", chemotaxis_sensitivity=chi
        )
        population = {"T": cell.initial_cells(jnp.float32)}
        dt = float(cells_dt((cell,), population, {"C": ramp}, grid, (False, False)))
        assert 100.0 * 0.02 * dt == pytest.approx(cells_module.MOVE_PER_STEP * 4.0, rel=1e-5)
    cell = one_type(grid, at_centres(grid, [(2, 2)]), division=Fate(2e-3), death=Fate(5e-3))
    population = {"T": cell.initial_cells(jnp.float32)}
    dt = float(cells_dt((cell,), population, {}, grid, (False, False)))
    assert 5e-3 * dt == pytest.approx(cells_module.FATE_PER_STEP, rel=1e-6)


def test_a_run_beyond_capacity_stops_with_the_key_to_raise():
    """advance counts the refused daughters; check_capacity (public, as `run` uses it) raises
    on them naming the key."""
    grid = Grid((4, 4), spacing=10.0)
    cell = one_type(grid, [[5.0, 5.0]] * 4, capacity=8, division=Fate(1e-2))
    model = Model(grid, species=(Species("IL2"),), cells=(cell,))
    sim = Simulation(model, stepper="imex", dt=10.0)
    state = sim.advance(sim.initial_state(), 1000.0)
    assert int(state.cells["T"].count) == 8 and int(state.cells["T"].overflow) > 0
    assert (engine.check_capacity, engine.CapacityExceeded) == (check_capacity, CapacityExceeded)
    with pytest.raises(CapacityExceeded, match=r"cells\.T\.capacity: .*raise cells\.T\.capacity"):
        check_capacity(state)


@pytest.mark.slow  # tests/test_run_cells.py resumes a run bitwise in the default run
def test_cells_reproduce_from_the_seed_and_resume_bitwise():
    grid = Grid((8, 8), spacing=10.0)
    rng = np.random.default_rng(6)
    cell = one_type(
        grid,
        rng.uniform(0, 80, (50, 2)),
        capacity=400,
        motility=1.0,
        secretion=(CellSecretion("IL2", 5.0),),
        division=Fate(5e-3),
        death=Fate(2e-3),
    )
    model = Model(grid, species=(Species("IL2", diffusion=20.0, decay=1e-3),), cells=(cell,))

    def run(seed, cuts, state=None):
        sim = Simulation(model, stepper="imex", dt=10.0, seed=seed)
        state = sim.initial_state() if state is None else state
        for t in cuts:
            state = sim.advance(state, t)
        return sim, state

    _, whole = run(1, [300.0])
    _, cut = run(1, [120.0, 300.0])
    _, other = run(1 + 1, [300.0])
    sim, half = run(1, [120.0])
    resumed = State(  # as from a checkpoint: host arrays into a new simulation
        t=half.t,
        fields=sim.load_fields(half.numpy()),
        step=half.step,
        cells=sim.load_cells(half.cells_numpy()),
    )
    _, resumed = run(1, [300.0], resumed)
    for name in ("position", "alive", "id"):
        for state in (cut, resumed):
            np.testing.assert_array_equal(
                np.asarray(getattr(whole.cells["T"], name)),
                np.asarray(getattr(state.cells["T"], name)),
            )
    np.testing.assert_array_equal(np.asarray(cut.fields["IL2"]), np.asarray(resumed.fields["IL2"]))
    # an uncut run differs from a cut one only in its rounding (drawn by each loop's start)
    np.testing.assert_allclose(whole.fields["IL2"], cut.fields["IL2"], rtol=1e-6)
    assert not np.array_equal(
        np.asarray(whole.cells["T"].position), np.asarray(other.cells["T"].position)
    )


def test_models_with_cells_refuse_what_they_do_not_support():
    grid = Grid((4, 4), spacing=10.0)
    model = Model(grid, species=(Species("IL2"),), cells=(one_type(grid, [[5.0, 5.0]]),))
    with pytest.raises(ValueError, match="time.adaptive"):
        Simulation(model, stepper="imex", adaptive=True)
    with pytest.raises(ValueError, match="parallel.mesh"):
        Simulation(model, stepper="imex", mesh=[2, 1])
    bad = one_type(grid, [[5.0, 5.0]], secretion=(CellSecretion("IL6", 1.0),))
    with pytest.raises(ValueError, match=r"cells\.T\.secretion: unknown species 'IL6'"):
        Model(grid, species=(Species("IL2"),), cells=(bad,))
    reads = dataclasses.replace(bad, secretion=(CellSecretion("IL2", 1.0, (Hill("S", 1.0),)),))
    with pytest.raises(ValueError, match="reads 'S'"):
        Model(grid, species=(Species("IL2"),), cells=(reads,))


def test_cells_sense_the_local_density_of_another_type():
    """A modulator that names a cell type reads its alive cells per um^3 in the reader's
    voxel: two secreting cells, one sharing its voxel with four inhibitors, secrete
    rate x K / (K + density) and rate (exact totals, no decay)."""
    grid = Grid((4, 4), spacing=10.0, depth=10.0)
    density = 4 / grid.voxel_volume
    K, rate, t = 2 / grid.voxel_volume, 30.0, 100.0
    inhibitors = one_type(grid, at_centres(grid, [(1, 1)] * 4))
    inhibitors = dataclasses.replace(inhibitors, name="I")
    secreting = one_type(
        grid,
        at_centres(grid, [(1, 1), (3, 2)]),
        secretion=(CellSecretion("IL2", rate, (Hill("I", K, 1.0, inhibits=True),)),),
    )
    model = Model(grid, species=(Species("IL2"),), cells=(inhibitors, secreting))
    sim = Simulation(model, stepper="imex", dt=10.0, dtype="float64")
    c = np.asarray(sim.advance(sim.initial_state(), t).fields["IL2"])
    per_nM = grid.voxel_volume * MOLECULES_PER_UM3_PER_NM
    assert c[1, 1] * per_nM == pytest.approx(rate * t * K / (K + density), rel=1e-12)
    assert c[3, 2] * per_nM == pytest.approx(rate * t, rel=1e-12)
    clash = dataclasses.replace(secreting, state={"I": 1.0})
    with pytest.raises(ValueError, match="also a field or a cell type"):
        Model(grid, species=(Species("IL2"),), cells=(inhibitors, clash))


def test_cells_sense_the_summed_state_of_another_type_per_volume():
    """`of = "I.R"` reads the sum of type I's R over its alive cells in the voxel per um^3."""
    grid = Grid((4, 4), spacing=10.0, depth=10.0)
    receptors = [100.0, 300.0]
    inhibitors = one_type(grid, at_centres(grid, [(1, 1)] * 2), state={"R": 0.0})
    inhibitors = dataclasses.replace(inhibitors, name="I")
    K, rate, t = 200 / grid.voxel_volume, 30.0, 100.0
    secreting = one_type(
        grid,
        at_centres(grid, [(1, 1)]),
        secretion=(CellSecretion("IL2", rate, (Hill("I.R", K, 1.0, inhibits=True),)),),
    )
    model = Model(grid, species=(Species("IL2"),), cells=(inhibitors, secreting))
    sim = Simulation(model, stepper="imex", dt=10.0, dtype="float64")
    state = sim.initial_state()
    arrays = state.cells_numpy()
    arrays["I"]["R"] = np.array(arrays["I"]["R"])
    arrays["I"]["R"][:2] = receptors
    state = State(t=0.0, fields=state.fields, cells=sim.load_cells(arrays))
    c = np.asarray(sim.advance(state, t).fields["IL2"])
    summed = sum(receptors) / grid.voxel_volume
    per_nM = grid.voxel_volume * MOLECULES_PER_UM3_PER_NM
    assert c[1, 1] * per_nM == pytest.approx(rate * t * K / (K + summed), rel=1e-12)
