"""Explicit steppers and the `Simulation` run loop: accuracy against analytic and exact
semi-discrete solutions (V1), conservation (V2), float32 against float64 (V6), positivity,
the automatic time step, one compilation per run without host round trips, and input errors."""

from __future__ import annotations

import math
import re
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from children.sharded import diffusing_model

from engine import (
    Boundary,
    Dirichlet,
    Grid,
    Model,
    Periodic,
    Population,
    Robin,
    Simulation,
    Source,
    Species,
    load_config,
    point_source,
)
from engine.numerics import operators
from engine.numerics.analytic import heat_kernel
from engine.stepping.steppers import SSP_ORDER, Explicit, advance_fields, make_stepper

SCHEMES = tuple(SSP_ORDER)
# the default scheme by default, every scheme with -m slow
DEFAULT_SCHEME = [s if s == "ssprk3" else pytest.param(s, marks=pytest.mark.slow) for s in SCHEMES]


def _host(array) -> np.ndarray:
    """A float64 host copy (input states are donated by `advance`)."""
    return np.array(array, dtype=np.float64, copy=True)


# --- V1: Gaussian diffusion against the heat kernel, second order in space ----------------


def _gaussian_error(ndim: int, n: int, dtype: str) -> float:
    """Max-norm error, relative to the peak, of a Gaussian spread on a fixed domain [0, 1]^ndim
    with n voxels per axis. Width L/12 at the start and L/9 at the end: the neumann walls are
    4.5 widths away, so their reflection (~exp(-10)) is far below the discretisation error."""
    length, D = 1.0, 1.0
    h = length / n
    grid = Grid((n,) * ndim, spacing=h)
    r2 = sum((x - length / 2) ** 2 for x in grid.centres())
    t0 = length**2 / (288 * D)  # sigma^2 = 2 D t0 = (L/12)^2
    t_end = length**2 / (162 * D) - t0  # sigma^2 = (L/9)^2 at t_end
    initial = heat_kernel(r2, 0.0, D, ndim, t0=t0)
    model = Model(grid, species=(Species("c", diffusion=D, initial=initial),))
    # A quarter of the stable step, ~h^2: the ssprk3 time error (~dt^3) is negligible.
    sim = Simulation(model, dtype=dtype, dt=0.25 * h**2 / (2 * ndim * D))
    state = sim.advance(sim.initial_state(), t_end)
    exact = heat_kernel(r2, t_end, D, ndim, t0=t0)
    return float(np.max(np.abs(_host(state.fields["c"]) - exact)) / np.max(exact))


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_the_heat_kernel_holds_its_mass_with_variance_2_d_t(ndim):
    """The V1 reference: a Gaussian of total `mass` whose variance per axis is 2 D (t + t0),
    summed over voxels of a quarter of the standard deviation (1 um) out to 8 of them (the
    midpoint rule is spectrally accurate for it)."""
    D, t, t0, mass = 0.5, 0.75, 0.25, 3.0
    grid = Grid((64,) * ndim, spacing=0.25, origin=-8.0)
    r2 = sum(x**2 for x in grid.centres())
    c = heat_kernel(r2, t, D, ndim, mass=mass, t0=t0)
    h = 0.25**ndim
    assert np.sum(c) * h == pytest.approx(mass, rel=1e-12)
    assert np.sum(r2 * c) * h / mass == pytest.approx(ndim * 2 * D * (t + t0), rel=1e-10)


@pytest.mark.parametrize(
    "ndim, sizes",
    [(1, (32, 64, 128, 256)), (2, (16, 32, 64, 128)), (3, (16, 24, 32, 48))],
    ids=["1d", "2d", "3d"],
)
def test_gaussian_diffusion_converges_second_order_in_space(
    ndim, sizes, float64, convergence_order
):
    errors = [_gaussian_error(ndim, n, float64) for n in sizes]
    h = [1.0 / n for n in sizes]
    order = convergence_order(h, errors)
    assert all(a > b for a, b in zip(errors, errors[1:])), errors
    assert errors[-1] < 1e-2, errors
    assert abs(order - 2) <= 0.2, f"order {order:.3f}, errors {errors}"


# --- order in time against the exact semi-discrete solution (periodic grid, FFT) ---------

_PERIODIC_SHAPE = (16, 12)
_PERIODIC_SPACING = (1.0, 1.5)
_PERIODIC_D = 0.7


def _periodic_problem():
    grid = Grid(_PERIODIC_SHAPE, spacing=_PERIODIC_SPACING)
    y, x = grid.centres()
    ly, lx = grid.upper
    u0 = (
        1
        + np.cos(2 * np.pi * x / lx)
        + 0.5 * np.sin(4 * np.pi * y / ly)
        + 0.3 * np.cos(2 * np.pi * (x / lx + y / ly))
    )
    supply = 0.2 * (1 + np.sin(2 * np.pi * x / lx))
    return grid, u0, supply


def _semi_discrete_exact(u0, supply, t: float) -> np.ndarray:
    """Exact solution of du/dt = L u + s for the periodic 5-point Laplacian L: mode k decays
    at lambda_k = sum over axes 4 D / h^2 sin^2(pi k / N)."""
    k = np.meshgrid(*(np.arange(n) for n in _PERIODIC_SHAPE), indexing="ij")
    lam = sum(
        4 * _PERIODIC_D / h**2 * np.sin(np.pi * ka / n) ** 2
        for h, n, ka in zip(_PERIODIC_SPACING, _PERIODIC_SHAPE, k)
    )
    safe = np.where(lam > 0, lam, 1.0)
    growth = np.where(lam > 0, -np.expm1(-lam * t) / safe, t)  # int_0^t exp(-lam s) ds
    u_hat = np.fft.fftn(u0) * np.exp(-lam * t) + np.fft.fftn(supply) * growth
    return np.real(np.fft.ifftn(u_hat))


@pytest.mark.parametrize(  # the source case adds to the free one: the free one with -m slow
    "with_source", [pytest.param(False, marks=pytest.mark.slow), True], ids=["free", "source"]
)
@pytest.mark.parametrize("scheme", SCHEMES)
def test_explicit_scheme_has_its_claimed_order_in_time(
    scheme, with_source, float64, convergence_order
):
    grid, u0, supply = _periodic_problem()
    if not with_source:
        supply = np.zeros_like(u0)
    periodic = Boundary.uniform(2, Periodic())
    species = Species("c", diffusion=_PERIODIC_D, initial=u0, boundary=periodic)
    sources = (Source("c", supply),) if with_source else ()
    model = Model(grid, species=(species,), sources=sources)
    t_end = 2.0
    exact = _semi_discrete_exact(u0, supply, t_end)
    steps = (0.2, 0.1, 0.05, 0.025)  # stable limit 1 / (2 D sum 1/h^2) = 0.31
    errors = []
    for dt in steps:
        sim = Simulation(model, scheme=scheme, dt=dt, dtype=float64)
        state = sim.advance(sim.initial_state(), t_end)
        assert state.step == round(t_end / dt)
        errors.append(float(np.max(np.abs(_host(state.fields["c"]) - exact))))
    order = convergence_order(steps, errors)
    assert abs(order - SSP_ORDER[scheme]) <= 0.2, f"order {order:.3f}, errors {errors}"


# --- V2: conservation with zero-flux walls ------------------------------------------------


def _conservation_model() -> Model:
    rng = np.random.default_rng(0)
    grid = Grid((64, 64), spacing=(2.0, 3.0))
    initial = rng.uniform(0.0, 10.0, grid.shape)
    diffusion = rng.uniform(1.0, 50.0, grid.shape)
    return Model(grid, species=(Species("c", diffusion=diffusion, initial=initial),))


def _relative_drift(scheme: str, dtype: str, n_steps: int) -> float:
    sim = Simulation(_conservation_model(), scheme=scheme, dtype=dtype)
    state = sim.initial_state()
    total = np.sum(_host(state.fields["c"]))
    state = sim.advance(state, n_steps * sim.time_step(state))
    assert state.step == n_steps
    return float(np.sum(_host(state.fields["c"])) / total - 1)


@pytest.mark.parametrize("scheme", DEFAULT_SCHEME)
def test_zero_flux_walls_conserve_the_total_in_float32(scheme):
    drift = _relative_drift(scheme, "float32", 10_000)
    assert abs(drift) <= 1e-6, f"relative drift {drift:.3e} after 10,000 float32 steps"


@pytest.mark.parametrize("scheme", DEFAULT_SCHEME)
def test_zero_flux_walls_conserve_the_total_in_float64(scheme, float64):
    drift = _relative_drift(scheme, float64, 10_000)
    assert abs(drift) <= 1e-12, f"relative drift {drift:.3e} after 10,000 float64 steps"


@pytest.mark.parametrize(  # quasi_steady (the same imex step) on periodic axes by default
    ("stepper", "transport"),
    [
        pytest.param(
            s, t, marks=pytest.mark.slow if s == "quasi_steady" and t != "periodic" else ()
        )
        for s in ("imex", "quasi_steady")
        for t in ("spectral", "periodic", "cg")
    ],
)
def test_implicit_steppers_conserve_the_total_in_float32(stepper, transport):
    """1,000 steps of 20 s (dt D/h^2 up to 16): the spectral transforms and CG solves form
    each step's change rather than the new field, and the loop adds it compensated. Formed as
    the new field, the total drifted by -1.5e-6 (transforms) and 2.0e-6 (CG) in these steps."""
    model, name = diffusing_model(stepper, transport, (12, 10, 14))
    sim = Simulation(model, stepper=stepper, dt=20.0, dtype="float32")
    state = sim.initial_state()
    total = np.sum(_host(state.fields[name]))
    state = sim.advance(state, 1000 * 20.0)
    assert state.step == 1000
    drift = np.sum(_host(state.fields[name])) / total - 1
    assert abs(drift) <= 1e-6, f"relative drift {drift:.3e} after 1,000 float32 steps"


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_zero_right_hand_side_leaves_the_state_unchanged(scheme, dtype, request):
    """No transport, no reactions: every stage equals the input, so each Runge-Kutta
    combination must return it bit for bit (a convex combination of equal values)."""
    if dtype == "float64":
        request.getfixturevalue("float64")
    grid = Grid((4096,))
    initial = np.random.default_rng(1).uniform(0.1, 10.0, grid.shape)
    sim = Simulation(
        Model(grid, species=(Species("c", initial=initial),)), scheme=scheme, dt=1.0, dtype=dtype
    )
    state = sim.initial_state()
    before = np.array(state.fields["c"], copy=True)
    after = np.asarray(sim.advance(state, 10.0).fields["c"])
    changed = np.flatnonzero(after != before)
    assert changed.size == 0, (
        f"{changed.size} of {before.size} values changed, e.g. {before[changed[0]]!r} -> "
        f"{after[changed[0]]!r}"
    )


# --- V6: float32 against float64 -------------------------------------------------------------


def _mixed_model() -> Model:
    rng = np.random.default_rng(2)
    grid = Grid((48, 48), spacing=10.0)
    species = Species(
        "c",
        diffusion=rng.uniform(50.0, 150.0, grid.shape),
        decay=0.02,
        initial=rng.uniform(0.0, 2.0, grid.shape),
    )
    source = point_source(grid, "c", (240.0, 240.0), 1e3)
    return Model(grid, species=(species,), sources=(source,))


@pytest.mark.parametrize("scheme", DEFAULT_SCHEME)
def test_float32_agrees_with_float64(scheme, float64):
    model, dt, t_end = _mixed_model(), 0.15, 150.0  # 1000 steps, stable limit 0.167 s
    results = {}
    for dtype in ("float32", float64):
        sim = Simulation(model, scheme=scheme, dt=dt, dtype=dtype)
        state = sim.advance(sim.initial_state(), t_end)
        assert state.fields["c"].dtype == jnp.dtype(dtype)
        results[dtype] = _host(state.fields["c"])
    single, double = results["float32"], results[float64]
    error = np.max(np.abs(single - double)) / np.max(np.abs(double))
    assert error <= 1e-5, f"float32 vs float64: {error:.2e} relative"


# --- one compilation per run, no host round trips inside it -------------------------------


def _diffusion_model() -> Model:
    """16 x 16 voxels of 2 um, D = 5 um^2/s: the stable step is 0.2 s."""
    grid = Grid((16, 16), spacing=2.0)
    initial = np.random.default_rng(3).uniform(0.0, 1.0, grid.shape)
    return Model(grid, species=(Species("c", diffusion=5.0, initial=initial),))


def test_run_loop_is_traced_once():
    sim = Simulation(_diffusion_model())
    state = sim.initial_state()
    for t_end in (0.3, 1.0, 7.5, 7.6, 40.0):  # different step counts and step lengths
        state = sim.advance(state, t_end)
    fields = state.fields
    for dt, n in ((0.01, 5), (0.02, 50), (0.005, 1)):
        fields = sim.advance_steps(fields, 40.0, dt, n)
    assert np.all(np.isfinite(np.asarray(fields["c"])))
    assert sim.trace_count == 1
    fixed = Simulation(_diffusion_model(), dt=0.1)
    state = fixed.initial_state()
    for t_end in (0.05, 1.0, 3.33):
        state = fixed.advance(state, t_end)
    assert fixed.trace_count == 1


def test_many_steps_run_without_host_transfers():
    sim = Simulation(_diffusion_model())
    fields = sim.initial_state().fields
    reference = _host(fields["c"])
    fields = sim.advance_steps(fields, 0.0, 0.01, 1)  # compile outside the guards
    t0, dt, n = (jax.device_put(v) for v in (np.float32(0.01), np.float32(0.01), np.int32(999)))
    with jax.transfer_guard_device_to_host("disallow"):
        fields = sim.advance_steps(fields, 0.0, 0.01, 1000)
    # Device-resident times and counts: the call itself needs no transfer either way, so the
    # guard on both directions (enforced on every backend for host to device) must pass.
    with jax.transfer_guard("disallow"):
        fields = sim.advance_steps(fields, t0, dt, n)
    assert sim.trace_count == 1
    c = np.asarray(fields["c"])
    assert np.all(np.isfinite(c)) and np.ptp(c) < np.ptp(reference)
    # The whole loop is one device while-loop with no host callback inside.
    jaxpr = jax.make_jaxpr(lambda f, t, h, k: advance_fields(sim.stepper, sim.model, f, t, h, k))(
        fields, t0, dt, n
    )
    assert [e.primitive.name for e in jaxpr.jaxpr.eqns].count("while") == 1
    assert "callback" not in str(jaxpr)


def test_the_transfer_guards_catch_transfers():
    """The checks above can fail: the guard rejects an implicit transfer, and a host callback
    in a loop shows up in its jaxpr."""
    with pytest.raises(Exception, match="[Dd]isallowed host-to-device"):
        with jax.transfer_guard("disallow"):
            jnp.asarray(0.5, jnp.float32)

    def body(i, x):
        jax.debug.callback(lambda v: None, x)
        return x + 1.0

    jaxpr = jax.make_jaxpr(lambda x: jax.lax.fori_loop(0, 3, body, x))(jnp.zeros(2))
    assert "callback" in str(jaxpr)


@pytest.mark.skipif(
    jax.default_backend() == "cpu",
    reason="CPU arrays live in host memory: JAX does not enforce the device-to-host guard there",
)
def test_device_to_host_guard_catches_float():
    x = jnp.arange(3.0) * 2.0
    with pytest.raises(Exception, match="[Dd]isallowed device-to-host"):
        with jax.transfer_guard_device_to_host("disallow"):
            float(x[1])


# --- positivity ------------------------------------------------------------------------------


@pytest.mark.parametrize("scheme", SCHEMES)
def test_huge_per_voxel_decay_keeps_values_non_negative(scheme):
    grid = Grid((32, 32), spacing=2.0)
    D = 5.0
    explicit_rate = 2 * grid.ndim * D / grid.spacing[0] ** 2
    decay = np.zeros(grid.shape)
    decay[:, 16:] = 1000 * explicit_rate
    initial = np.random.default_rng(4).uniform(0.0, 1.0, grid.shape)
    initial[::3, ::5] = 0.0
    model = Model(grid, species=(Species("c", diffusion=D, decay=decay, initial=initial),))
    sim = Simulation(model, scheme=scheme)
    state = sim.initial_state()
    dt = sim.time_step(state)
    # the positivity limit counts the sink with the transport (safety 0.9)
    assert dt == pytest.approx(0.9 / (1001 * explicit_rate), rel=1e-5)
    state = sim.advance(state, 50 * dt)
    c = _host(state.fields["c"])
    assert np.all(np.isfinite(c)) and c.min() >= 0.0, c.min()
    assert c[:, 20:].max() < 1e-3 * c[:, :12].mean()  # the sink did act


@pytest.mark.parametrize("scheme", SCHEMES)
def test_uptake_by_a_population_keeps_both_fields_non_negative(scheme):
    grid = Grid((32, 32), spacing=2.0)
    D, M, chi = 5.0, 0.5, 2.0
    explicit_rate = 2 * grid.ndim * D / grid.spacing[0] ** 2
    y, x = grid.centres()
    cells = np.where((x > 20) & (x < 44) & (y > 20) & (y < 44), 1.0, 0.0)
    cytokine = np.random.default_rng(5).uniform(0.0, 1.0, grid.shape)
    uptake = 1000 * explicit_rate  # per unit cell density, 1/s
    growth = 0.1  # 1/s per nM

    def reactions(fields, t):
        c, n = fields["IL2"], fields["T"]
        production = {"T": growth * c * n, "IL2": 0.05 * n}
        loss = {"IL2": uptake * n, "T": 0.2 + 0.0 * n}
        return production, loss

    model = Model(
        grid,
        species=(Species("IL2", diffusion=D, initial=cytokine),),
        populations=(
            Population(
                "T",
                motility=M,
                chemotaxis_species="IL2",
                chemotaxis_sensitivity=chi,
                initial=cells,
            ),
        ),
        reactions=reactions,
        reaction_rate=growth * 1.0,  # bounds growth * c: c stays below ~1 nM
    )
    sim = Simulation(model, scheme=scheme)
    state = sim.initial_state()
    for t_end in (0.5, 1.0, 2.0):  # dt re-evaluated per advance
        state = sim.advance(state, t_end)
        fields = state.numpy()
        for name, value in fields.items():
            assert np.all(np.isfinite(value)) and value.min() >= 0.0, (name, value.min())
    c = fields["IL2"]
    inside = cells > 0
    assert c[inside].max() < 1e-2 * c[~inside].mean()  # uptake emptied the populated square


@pytest.mark.parametrize("wall", [Dirichlet(0.0), Robin(h=1e3)], ids=["dirichlet", "robin"])
@pytest.mark.parametrize("scheme", SCHEMES)
def test_absorbing_walls_keep_values_non_negative(scheme, wall):
    """Absorbing walls (outside value 0): the exact solution stays >= 0, and `stable_dt` is
    documented as the forward-Euler positivity limit. A spike in a corner voxel is the hardest
    case: it loses solute through two half-voxel wall resistances as well as to its
    neighbours."""
    grid = Grid((8, 8), spacing=1.0)
    initial = np.zeros(grid.shape)
    initial[0, 0] = 1.0
    walls = Boundary.uniform(2, wall)
    model = Model(grid, species=(Species("c", diffusion=1.0, initial=initial, boundary=walls),))
    sim = Simulation(model, scheme=scheme)
    state = sim.initial_state()
    for _ in range(3):  # one automatic step at a time
        state = sim.advance(state, state.t + sim.time_step(state))
        c = _host(state.fields["c"])
        assert state.step >= 1 and c.min() >= 0.0, (
            f"step {state.step}: min {c.min():.3g} at {np.unravel_index(np.argmin(c), c.shape)}"
        )


# --- dt = "auto" and landing on t_end -----------------------------------------------------


def test_auto_step_for_pure_diffusion():
    grid = Grid((12, 10, 8), spacing=(1.0, 2.0, 0.5))
    species = (
        Species("a", diffusion=3.0, initial=1.0),
        Species("b", diffusion=np.full(grid.shape, 7.0), initial=1.0),
    )
    model = Model(grid, species=species)
    inverse_h2 = 1 / 1.0**2 + 1 / 2.0**2 + 1 / 0.5**2
    sim = Simulation(model, safety=0.7)
    state = sim.initial_state()
    assert sim.stable_dt(state) == pytest.approx(1 / (2 * 7.0 * inverse_h2), rel=1e-6)
    assert sim.time_step(state) == pytest.approx(0.7 / (2 * 7.0 * inverse_h2), rel=1e-6)
    bounded = Model(grid, species=species, reaction_rate=5.0)
    sim = Simulation(bounded, safety=0.7)
    expected = 0.7 / (2 * 7.0 * inverse_h2 + 5.0)
    assert sim.time_step(sim.initial_state()) == pytest.approx(expected, rel=1e-6)
    assert Simulation(model, dt=0.125).time_step(state) == 0.125


def _drift_rate(c: np.ndarray, chi: float, spacing) -> float:
    return sum(
        2 * abs(chi) * np.max(np.abs(np.diff(c, axis=axis))) / h**2
        for axis, h in enumerate(spacing)
    )


def test_auto_step_includes_the_chemotactic_drift():
    spacing = (2.0, 3.0)
    grid = Grid((20, 16), spacing=spacing)
    y, x = grid.centres()
    c0 = 10 * np.exp(-((x - 20) ** 2 + (y - 18) ** 2) / 50) + 0.1 * x
    D, M, chi = 2.0, 1.0, 5.0
    model = Model(
        grid,
        species=(Species("c", diffusion=D, initial=c0),),
        populations=(
            Population("n", motility=M, chemotaxis_species="c", chemotaxis_sensitivity=chi),
        ),
    )
    inverse_h2 = sum(1 / h**2 for h in spacing)
    sim = Simulation(model, safety=0.8)
    state = sim.initial_state()
    for _ in range(2):
        c = _host(state.fields["c"])
        drift = _drift_rate(c, chi, spacing)
        rate = max(2 * D * inverse_h2, 2 * M * inverse_h2 + drift)
        assert drift > 2 * D * inverse_h2  # the drift decides the step
        dt = sim.time_step(state)
        assert dt == pytest.approx(0.8 / rate, rel=1e-5)
        span = 1.7
        before = state.step
        state = sim.advance(state, state.t + span)
        assert state.step - before == math.ceil(span / dt)
    # the gradients flattened, so the second step was longer than the first
    assert sim.time_step(state) > 0.8 / (2 * M * inverse_h2 + _drift_rate(c0, chi, spacing))


def test_advance_lands_exactly_on_t_end(float64):
    model = _diffusion_model()
    sim = Simulation(model, dtype=float64)
    state = sim.initial_state()
    dt_max = sim.time_step(state)
    # dt_max = 0.18 s: spans of 2.06, exactly 7 and 59.5 steps
    t1 = 0.37
    t2 = t1 + 7 * dt_max
    t3 = 12.345
    expected = (math.ceil(t1 / dt_max), 7, math.ceil((t3 - t2) / dt_max))
    total = 0
    for t_end, n in zip((t1, t2, t3), expected):
        state = sim.advance(state, t_end)
        total += n
        assert state.t == t_end
        assert state.step == total
    assert sim.advance(state, state.t) is state  # zero span: nothing to do
    # a fixed dt: whole multiples are not rounded up to an extra step
    for dt, t_end, n in ((0.25, 1.0, 4), (0.1, 0.3, 3), (0.1, 1.0, 10), (0.3, 1.0, 4)):
        fixed = Simulation(model, dt=dt, dtype=float64)
        start = fixed.initial_state()
        reference = fixed.advance_steps(
            {k: jnp.array(v, copy=True) for k, v in start.fields.items()}, 0.0, t_end / n, n
        )
        state = fixed.advance(start, t_end)
        assert (state.t, state.step) == (t_end, n)
        np.testing.assert_array_equal(np.asarray(state.fields["c"]), np.asarray(reference["c"]))


# --- input errors ------------------------------------------------------------------------------


def test_unknown_scheme_and_stepper_are_rejected():
    model = _diffusion_model()
    with pytest.raises(ValueError, match="time.scheme"):
        Simulation(model, scheme="rk4")
    with pytest.raises(ValueError, match="time.scheme"):
        Explicit(scheme="midpoint")
    with pytest.raises(ValueError, match="time.stepper"):
        Simulation(model, stepper="magic")
    with pytest.raises(ValueError, match="time.stepper"):
        make_stepper("magic")


@pytest.mark.parametrize("dt", [0, 0.0, -1.0, float("nan"), float("inf"), "fast", None])
def test_bad_dt_is_rejected(dt):
    with pytest.raises(ValueError, match="time.dt"):
        Simulation(_diffusion_model(), dt=dt)


def test_bad_safety_and_dtype_are_rejected():
    model = _diffusion_model()
    for safety in (0.0, -0.5, 1.5):
        with pytest.raises(ValueError, match="time.safety"):
            Simulation(model, safety=safety)
    with pytest.raises(ValueError, match="time.dtype"):
        Simulation(model, dtype="float16")


def test_advancing_backwards_is_rejected():
    sim = Simulation(_diffusion_model(), dt=0.1)
    state = sim.advance(sim.initial_state(), 1.0)
    with pytest.raises(ValueError, match="advance: t_end 0.5"):
        sim.advance(state, 0.5)
    assert sim.advance(state, 1.5).t == 1.5  # the state was not consumed by the failed call


# --- no grid-sized constants in the compiled loop --------------------------------------------


@pytest.mark.parametrize("stepper", ["explicit", "imex", "quasi_steady"])
def test_the_stepping_loop_captures_no_grid_sized_constant(stepper):
    """A grid-sized array built while tracing is captured into the program as a constant,
    which XLA may evaluate while compiling: the spectral multipliers did so, and a seed
    scenario's imex loop took 46 s to compile at 128^3 on a GPU. Only splats and per-axis
    vectors may appear."""
    cfg = load_config(_SCENARIO, {"grid.shape": [16, 16, 16], "grid.spacing": "80 um"})
    sim = Simulation(cfg, stepper=stepper)
    state = sim.initial_state()
    args = (
        sim.model,
        state.fields,
        {},
        jnp.float32(0),
        jnp.float32(1),
        jnp.int32(1),
        jnp.int32(0),
        jnp.int32(1),
        jnp.int32(1),
    )
    text = sim._advance.lower(*args).as_text()
    constants = re.findall(r"stablehlo\.constant dense<(.)[^>]*> : tensor<([0-9x]+)x\w+>", text)
    assert constants
    shapes = {shape for first, shape in constants if first in '"['}  # not a splat
    sizes = {shape: math.prod(int(n) for n in shape.split("x")) for shape in shapes}
    assert max(sizes.values(), default=0) <= 16 * 16, sizes


# --- ghosts fused into the stencil, two steps per loop iteration (the accelerator path) ----

_SCENARIO = Path(__file__).parent.parent / "configs" / "infection_resolution_3d.toml"
SLOW = pytest.mark.slow


@pytest.mark.parametrize(  # the default explicit scheme by default, every stepper with -m slow
    "options",
    [
        pytest.param(dict(stepper="explicit", scheme="euler", compensated=False), marks=SLOW),
        pytest.param(dict(stepper="explicit", scheme="ssprk3", compensated=False), marks=SLOW),
        dict(stepper="explicit", scheme="ssprk3", compensated=True),
        pytest.param(dict(stepper="imex"), marks=SLOW),
        pytest.param(dict(stepper="quasi_steady"), marks=SLOW),
    ],
    ids=["euler", "ssprk3", "ssprk3-compensated", "imex", "quasi_steady"],
)
def test_fused_ghosts_and_paired_steps_compute_the_stored_path(options, float64, monkeypatch):
    """Accelerators fuse the ghost padding into the stencil and run two steps per loop
    iteration (`operators.stored_ghosts`); the tests run on CPU, which stores the padded
    copies, so the accelerator path is checked here against it: every term of a seed
    scenario (chemotaxis, secretion, uptake, killing, sources); 11 steps, so that a block of
    pairs, a pair after it and the last single step all run."""
    cfg = load_config(_SCENARIO, {"grid.shape": [16, 16, 16], "grid.spacing": "80 um"})

    def run():
        sim = Simulation(cfg, dtype=float64, **options)
        state = sim.initial_state()
        rng = np.random.default_rng(4)  # every field non-zero, so that every term acts
        fields = {k: jnp.asarray(rng.uniform(0.5, 1.5, v.shape)) for k, v in state.fields.items()}
        dt = float(sim.time_step(state, 3600.0))
        return {k: _host(v) for k, v in sim.advance_steps(fields, 0.0, dt, 11).items()}

    stored = run()
    monkeypatch.setattr(operators, "stored_ghosts", lambda: False)
    fused = run()
    for name, expected in stored.items():
        np.testing.assert_allclose(fused[name], expected, rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("accelerator", [False, True])
def test_the_stepping_loop_runs_every_step_in_order(accelerator, monkeypatch):
    """`steppers._loop` (in pairs and blocks of pairs on accelerators) is lax.fori_loop: the
    same steps in the same order for every count, also with a count per batch member."""
    from engine.stepping.steppers import PAIRS_PER_BLOCK, _loop

    monkeypatch.setattr(operators, "stored_ghosts", lambda: not accelerator)

    def body(i, c):  # exact and order-sensitive: a step skipped, repeated or swapped shows
        return (c * 31 + i.astype(c.dtype) + 1) % 1_000_003

    start = jnp.asarray(7, jnp.int32)
    counts = np.arange(4 * PAIRS_PER_BLOCK + 4)
    looped = jax.jit(jax.vmap(lambda n: _loop(n, body, start)))(jnp.asarray(counts, jnp.int32))
    for n, value in zip(counts, np.asarray(looped)):
        expected = 7
        for i in range(n):
            expected = (expected * 31 + i + 1) % 1_000_003
        assert value == expected, n


def _loop_equations(jaxpr, inside: bool = False):
    """The equations of `jaxpr` that run inside a loop (`while`), nested jaxprs included."""
    for eqn in jaxpr.eqns:
        if inside:
            yield eqn
        for param in eqn.params.values():
            for sub in param if isinstance(param, (list, tuple)) else [param]:
                sub = getattr(sub, "jaxpr", sub)
                if hasattr(sub, "eqns"):
                    yield from _loop_equations(sub, inside or eqn.primitive.name == "while")


@pytest.mark.parametrize("accelerator", [False, True])
@pytest.mark.parametrize("scheme", ["euler", "ssprk3"])
def test_the_explicit_loop_builds_its_face_couplings_once(scheme, accelerator, monkeypatch):
    """The face couplings (a vector along each axis per field) are loop-invariant: built by
    `prepare`, not in every step, where each was a small device kernel per step on a GPU."""
    monkeypatch.setattr(operators, "stored_ghosts", lambda: not accelerator)
    cfg = load_config(_SCENARIO, {"grid.shape": [8, 10, 12], "grid.spacing": "80 um"})
    sim = Simulation(cfg, stepper="explicit", scheme=scheme)
    state = sim.initial_state()
    args = (
        sim.model,
        state.fields,
        {},
        jnp.float32(0),
        jnp.float32(1),
        jnp.int32(5),
        jnp.int32(0),
        jnp.int32(1),
        jnp.int32(1),
    )
    jaxpr = jax.make_jaxpr(sim._advance_traced)(*args).jaxpr
    axis_vectors = {(8, 1, 1), (1, 10, 1), (1, 1, 12)}
    built = [
        eqn.primitive.name
        for eqn in _loop_equations(jaxpr)
        if any(getattr(v.aval, "shape", None) in axis_vectors for v in eqn.outvars)
    ]
    assert built == []


@pytest.mark.parametrize(
    "species, steady",
    [
        (dict(decay=0.0), False),
        (dict(decay=1e-3), True),
        (dict(decay=0.0, boundary=Boundary.from_faces(2, x_min=Dirichlet(0.0))), True),
    ],
)
def test_quasi_steady_refuses_a_species_that_nothing_removes(species, steady):
    """Without decay, uptake or an absorbing face a species has no steady state (its total
    grows under any supply): quasi_steady returned NaN; now it names the species."""
    grid = Grid((6, 6), spacing=10.0)
    model = Model(
        grid,
        species=(Species("IL2", diffusion=10.0, **species),),
        sources=(point_source(grid, "IL2", (30.0, 30.0), 70.0),),
    )
    if steady:
        sim = Simulation(model, stepper="quasi_steady", dtype="float64")
        assert np.all(np.isfinite(sim.advance(sim.initial_state(), 60.0).fields["IL2"]))
    else:
        with pytest.raises(ValueError, match=r"IL2 has none without a loss; give species.IL2"):
            Simulation(model, stepper="quasi_steady")


@pytest.mark.parametrize("scheme", SCHEMES)
def test_explicit_schemes_keep_their_order_with_time_dependent_production(scheme, float64):
    """Production that varies in time, p(t) = 1 + sin(t), with a first-order loss: each stage
    evaluates the reactions at its own time t + c_k dt (ssprk2: 0, 1; ssprk3: 0, 1, 1/2), and
    the error against the exact solution falls as dt^order. A stage at the wrong time keeps
    every time-independent test passing and drops the order (ssprk3 with c = 1 at its last
    stage: 2)."""
    grid = Grid((4,), spacing=10.0)
    k, c0 = 0.2, 0.5
    model = Model(
        grid,
        species=(Species("c", diffusion=0.0, initial=c0),),
        reactions=lambda fields, t: ({"c": 1.0 + jnp.sin(t)}, {"c": k}),
    )
    fields = model.initial_fields(jnp.float64)
    stepper = Explicit(scheme=scheme)
    advance = jax.jit(lambda dt, n: advance_fields(stepper, model, fields, 0.0, dt, n)["c"])
    t_end = 10.0
    decay = math.exp(-k * t_end)
    exact = (
        c0 * decay + (1 - decay) / k + (k * math.sin(t_end) - math.cos(t_end) + decay) / (k**2 + 1)
    )
    counts = np.array([20, 40, 80])
    errors = [abs(float(advance(t_end / n, n)[0]) - exact) / exact for n in counts]
    slope = -np.polyfit(np.log(counts), np.log(errors), 1)[0]
    assert slope == pytest.approx(SSP_ORDER[scheme], abs=0.15), errors
