"""The implicit steppers (imex, quasi_steady) against the explicit one and exact solutions."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy.linalg import expm

import engine
import engine.stepping.steppers
from engine.model import regions
from engine.model.rhs import face_diffusivities
from engine.model.terms import MOLECULES_PER_UM3_PER_NM
from engine.numerics import compilation, operators, solvers, spectral
from engine.stepping.simulation import difference_norm, field_sizes, precision
from engine.stepping.steppers import accurate_step, error_norm, local_error_target

pytestmark = pytest.mark.usefixtures("x64_module")
SLOW = pytest.mark.slow


def coupled_model(size=48):
    """V5: IL-2 secreted by a disc of secretor cells, taken up by responders everywhere
    (k_on 3.1e7 /M/s, 1000 receptors/cell), which expand slowly with IL-2."""
    grid = engine.Grid((size, size), spacing=10.0)
    centre = (size * 5.0, size * 5.0)
    secretor = np.where(regions.sphere(grid, centre, 60.0), 1e-3, 0.0)

    def reactions(f, t):
        c = f["IL2"]
        production = {
            "IL2": 10.0 * f["secretor"] / MOLECULES_PER_UM3_PER_NM,
            "responder": 1e-4 * f["responder"] * c / (0.01 + c),
        }
        return production, {"IL2": 3.1e-2 * 1e3 * f["responder"]}

    return engine.Model(
        grid,
        species=(engine.Species("IL2", diffusion=100.0, decay=1e-3),),
        populations=(
            engine.Population("secretor", initial=secretor),
            engine.Population("responder", motility=1.0, initial=np.full(grid.shape, 5e-4)),
        ),
        reactions=reactions,
        reaction_rate=1e-4,
    )


def run(model, t_end, **options):
    sim = engine.Simulation(model, dtype="float64", **options)
    return sim.advance(sim.initial_state(), t_end).numpy()


def relative_error(a, b):
    return max(np.linalg.norm(a[k] - b[k]) / np.linalg.norm(b[k]) for k in b)


@pytest.fixture(scope="module")
def v5_reference():
    model = coupled_model()
    explicit = engine.Simulation(model, dtype="float64")
    dt_explicit = explicit.time_step(explicit.initial_state())
    return model, dt_explicit, run(model, 1800.0)


def test_v5_steppers_agree_and_imex_at_50x_explicit_step_within_1_percent(v5_reference):
    model, dt_explicit, reference = v5_reference
    finer = run(model, 1800.0, dt=dt_explicit / 4)
    assert relative_error(finer, reference) < 1e-4  # the explicit reference's own error
    imex = run(model, 1800.0, stepper="imex", dt=50 * dt_explicit)
    assert relative_error(imex, reference) < 0.01
    quasi = run(model, 1800.0, stepper="quasi_steady", dt=50 * dt_explicit)
    assert relative_error(quasi, reference) < 0.01
    auto = run(model, 1800.0, stepper="imex")
    assert relative_error(auto, reference) < 1e-3


@pytest.mark.parametrize("stepper", ["imex", "quasi_steady"])
def test_bounded_and_positive_at_1000x_the_explicit_limit(v5_reference, stepper):
    model, dt_explicit, reference = v5_reference
    result = run(model, 1800.0, stepper=stepper, dt=1000 * dt_explicit)
    for name, value in result.items():
        assert np.all(np.isfinite(value)) and value.min() >= 0, name
        assert value.max() <= 2 * reference[name].max(), name


def semi_discrete_matrix(grid, D, boundary):
    """The diffusion operator as (matrix, affine part) on the flattened grid, float64."""
    faces = operators.face_diffusivity(np.asarray(D, float), grid, boundary)
    size = int(np.prod(grid.shape))

    def apply(c):
        return np.asarray(operators.diffusion(c.reshape(grid.shape), faces, grid, boundary)).ravel()

    affine = apply(np.zeros(size))
    columns = [apply(np.eye(size)[j]) - affine for j in range(size)]
    return np.stack(columns, axis=1), affine


@pytest.mark.parametrize(  # a spectral linear part by default, every one with -m slow
    "boundary, D",
    [
        pytest.param("periodic", 50.0, marks=SLOW),  # spectral (FFT) linear part
        ("neumann", 50.0),  # spectral (DCT) linear part
        pytest.param("dirichlet", 50.0, marks=SLOW),  # spectral (sine basis) linear part
        pytest.param("dirichlet", "varying", marks=SLOW),  # TR-BDF2 with conjugate gradients
    ],
)
def test_imex_is_second_order_in_time(boundary, D):
    """Diffusion + decay + a known source + a spatially varying sink (split from diffusion),
    against the exact solution expm of the semi-discrete system."""
    grid = engine.Grid((64,), spacing=5.0)
    x = grid.coordinates(0)
    faces = {
        "periodic": engine.Boundary.uniform(1, engine.Periodic()),
        "neumann": engine.Boundary.uniform(1),
        # a non-zero dirichlet value with a split sink loses order near the face (the classic
        # boundary-induced order reduction of splitting: measured 1.4 -> 1.8 on refinement)
        "dirichlet": engine.Boundary.from_faces(1, x_min=engine.Dirichlet(0.0)),
    }[boundary]
    D = 20.0 + 60.0 * (x > 160) if D == "varying" else D
    sink = 0.02 * (1 + np.sin(2 * np.pi * x / 320.0))
    source = 0.05 * np.exp(-(((x - 100) / 20) ** 2))
    initial = 1.0 + np.cos(2 * np.pi * x / 320.0) if boundary != "dirichlet" else np.sin(x / 200)
    decay = 1e-3
    species = engine.Species("c", diffusion=D, decay=decay, boundary=faces, initial=initial)
    model = engine.Model(
        grid,
        species=(species,),
        sources=(engine.Source("c", source),),
        reactions=lambda f, t: ({}, {"c": sink}),
    )
    t_end = 100.0
    matrix, affine = semi_discrete_matrix(grid, D, faces)
    system = matrix - np.diag(sink + decay)
    forcing = affine + source
    propagator = expm(system * t_end)
    exact = propagator @ initial + np.linalg.solve(system, (propagator - np.eye(64)) @ forcing)

    steps = np.array([16, 32, 64, 128])
    errors = []
    for n in steps:
        c = run(model, t_end, stepper="imex", dt=t_end / n)["c"]
        errors.append(np.max(np.abs(c - exact)) / np.max(exact))
    order = -np.polyfit(np.log(steps), np.log(errors), 1)[0]
    assert abs(order - 2) < 0.2, (order, errors)


def steady_cases():
    """A 24 x 24 grid, a spot in it, and the faces and D of each case, by name."""
    grid = engine.Grid((24, 24), spacing=10.0)
    spot = regions.sphere(grid, (80.0, 150.0), 35.0)
    slow = regions.box(grid, (120.0, 0.0), (240.0, 240.0))
    B = engine.Boundary
    return (
        grid,
        spot,
        {
            "neumann": (B.uniform(2), 100.0),
            "dirichlet": (B.from_faces(2, x_min=engine.Dirichlet(0.5)), 100.0),
            "periodic": (B.uniform(2, engine.Periodic()), 100.0),
            "robin": (B.from_faces(2, y_max=engine.Robin(1.0, 0.2)), 100.0),
            "varying D": (
                B.from_faces(2, x_max=engine.Dirichlet(0.1)),
                np.where(slow, 10.0, 100.0),
            ),
        },
    )


CASES = list(steady_cases()[2])


@SLOW  # by default the CG solves are checked against the operator (test_cg_solves_...)
@pytest.mark.parametrize("case", CASES)
def test_implicit_steady_state_matches_long_explicit_run(case):
    grid, spot, cases = steady_cases()
    boundary, D = cases[case]
    species = engine.Species("c", diffusion=D, decay=1e-2, boundary=boundary)
    model = engine.Model(grid, species=(species,), sources=(engine.region_source("c", spot, 0.05),))
    t_end = 2500.0  # 25 decay times: steady to ~1e-11
    explicit = run(model, t_end)["c"]
    imex = run(model, t_end, stepper="imex", dt=250.0)["c"]
    quasi = run(model, t_end, stepper="quasi_steady")["c"]
    assert np.max(np.abs(imex - explicit)) / explicit.max() < 1e-6
    assert np.max(np.abs(quasi - explicit)) / explicit.max() < 1e-6


@pytest.mark.parametrize("stepper", ["imex", pytest.param("quasi_steady", marks=SLOW)])
def test_auto_dt_of_implicit_steppers_is_the_longest_step_within_the_tolerance(stepper):
    """dt = "auto" is the step whose step-doubling difference meets the local error target
    (`local_error_target` of `time.tolerance`, relative to each field's maximum), within the
    factor (at most 5) of its last shrink."""
    model = coupled_model(size=16)
    tolerance, span = 1e-4, 3600.0
    sim = engine.Simulation(model, stepper=stepper, tolerance=tolerance, dtype="float64")
    state = sim.initial_state()
    dt = sim.time_step(state, span)
    prepared = sim.stepper.prepare(sim.model)

    @jax.jit
    def difference(fields, h):
        """As `Simulation.time_step` measures it (`difference_norm`): against each field's
        size now, after the half steps, or one step to the span's end."""
        stepper, model = sim.stepper, sim.model
        full = stepper.step(model, prepared, fields, 0.0, h)
        half = stepper.step(model, prepared, fields, 0.0, h / 2)
        half = stepper.step(model, prepared, half, h / 2, h / 2)
        ahead = stepper.step(model, prepared, fields, 0.0, span)
        local = local_error_target(tolerance, stepper.order, sim.dtype)
        return difference_norm(full, half, local, ahead, field_sizes(fields))

    def error(h):
        with precision(sim.dtype):
            return float(difference(state.fields, h))

    assert 0 < dt < span
    assert error(dt) <= 1 < error(5 * dt)


def test_an_exact_step_is_limited_only_by_the_span():
    """Pure diffusion, solved exactly in spectral space, takes the whole span in one step."""
    grid = engine.Grid((16, 16), spacing=10.0)
    pure = engine.Model(grid, species=(engine.Species("c", diffusion=100.0),))
    sim = engine.Simulation(pure, stepper="imex")
    state = sim.initial_state()
    assert sim.step_bound(state) == np.inf
    assert sim.time_step(state, 3600.0) == 3600.0
    assert sim.advance(state, 3600.0).step == 1


def _cg_cases():
    """By default long steps (scale 30) with robin faces and varying D (where imex solves by CG
    too, not only quasi_steady), each preconditioner, and without a shift; all with -m slow."""
    cases = [(c, 1.0, scale) for c in CASES for scale in (0.5, 30.0)]
    cases += [("robin", 0.0, 30.0), ("dirichlet", 0.0, 30.0)]
    for spectrally in (False, True):
        for case, shift, scale in cases:
            imex_cg = case in ("robin", "varying D") or not shift
            default = scale == 30.0 and imex_cg and spectrally
            marks = () if default else SLOW
            yield pytest.param(case, shift, scale, spectrally, marks=marks)


@pytest.mark.parametrize("case, shift, scale, spectrally", list(_cg_cases()))
def test_cg_solves_invert_the_explicit_operator(case, shift, scale, spectrally):
    """The CG solve inverts exactly the explicit operator: (shift - a A) x = b checked by A, on
    every kind of face, with varying D, preconditioned by the diagonal or spectrally, and
    without a shift where faces absorb (the spectral preconditioner then has no decay on its
    neumann stand-in for the robin face)."""
    grid, spot, cases = steady_cases()
    boundary, D = cases[case]
    species = engine.Species("c", diffusion=D, boundary=boundary)
    model = engine.Model(grid, species=(species,)).cast("float64")
    faces = face_diffusivities(model)["c"]
    rhs = np.where(spot, 1.0, 0.0)
    preconditioner = None
    if spectrally:
        D = model.species[0].diffusion
        preconditioner = spectral.preconditioner(D, grid, boundary, "float64")
    x = solvers.solve_shifted(shift, scale, rhs, faces, grid, boundary, rhs, preconditioner)
    residual = shift * x - scale * operators.diffusion(x, faces, grid, boundary) - rhs
    assert np.max(np.abs(residual)) < 1e-8 * np.max(rhs)
    # started at its solution (to rounding), a solve returns it as it is
    exact_rhs = rhs + residual
    again = solvers.solve_shifted(shift, scale, exact_rhs, faces, grid, boundary, x, preconditioner)
    np.testing.assert_array_equal(again, x)


def test_quasi_steady_preconditions_spectrally_on_grids_of_any_size():
    """Long axes are transformed by FFTs, so the spectral preconditioner pays on large grids
    too (in float64 the diagonal alone took about 150x longer at 1024^2)."""
    grid = engine.Grid((1024, 1024), spacing=10.0)
    species = engine.Species("c", diffusion=10.0, decay=1e-3)
    model = engine.Model(grid, species=(species,))
    _, preconditioners, _ = engine.stepping.steppers.QuasiSteady().prepare(model)
    assert isinstance(preconditioners["c"], spectral.Preconditioner)


@pytest.mark.parametrize(
    "faces",
    [
        {"x_min": "dirichlet"},
        {"x_max": "dirichlet", "y_min": "dirichlet", "y_max": "dirichlet"},
        {"y_min": "periodic", "y_max": "periodic", "x_min": "dirichlet"},
        {},
    ],
)
@pytest.mark.parametrize("fft_min_length", [1024, 10])
def test_the_spectral_preconditioner_is_the_exact_inverse_for_constant_coefficients(
    faces, fft_min_length, monkeypatch
):
    """With every axis transformed by matrix products, or the long one (12) by FFTs."""
    monkeypatch.setattr(spectral, "FFT_MIN_LENGTH", fft_min_length)
    grid = engine.Grid((12, 9), spacing=(4.0, 7.0))
    kinds = {"dirichlet": engine.Dirichlet(), "periodic": engine.Periodic()}
    boundary = engine.Boundary.from_faces(2, **{k: kinds[v] for k, v in faces.items()})
    D, shift, scale = 30.0, 0.7, 2.0
    r = np.random.default_rng(3).standard_normal(grid.shape)
    preconditioner = spectral.preconditioner(D, grid, boundary, "float64")
    x = spectral.apply_shifted_inverse(r, shift, scale, preconditioner)
    D_faces = operators.face_diffusivity(np.float64(D), grid, boundary)
    applied = shift * x - scale * operators.diffusion(x, D_faces, grid, boundary)
    np.testing.assert_allclose(applied, r, atol=1e-12 * np.abs(r).max())


def test_the_spectral_preconditioner_has_the_mean_d_and_neumann_for_robin_faces():
    """Its operator takes D's mean and makes robin faces neumann; without a shift, its constant
    mode (left undetermined) is scaled as the slowest decaying one, at D 4/h^2 sin^2(pi / 2n):
    a uniform r comes back uniform, r / (scale x that rate)."""
    grid = engine.Grid((8,), spacing=2.0)
    D = np.linspace(1.0, 3.0, 8)  # mean 2
    boundary = engine.Boundary(((engine.Robin(0.5), engine.Neumann()),))
    slowest = 2.0 * 4 / 2.0**2 * np.sin(np.pi / 16) ** 2

    @jax.jit  # compiled whole: op by op, its many small operations take a second
    def inverse(r):
        preconditioner = spectral.preconditioner(D, grid, boundary, "float64")
        return spectral.apply_shifted_inverse(r, 0.0, 3.0, preconditioner)

    x = inverse(jnp.ones(8))
    np.testing.assert_allclose(np.asarray(x), 1 / (3.0 * slowest), rtol=1e-12)


def test_ffts_transform_the_non_periodic_axes_from_fft_min_length_on(monkeypatch):
    """Non-periodic axes at least `fft_min_length()` long (1024 on a CPU, 2048 on accelerators)
    are transformed by FFTs, shorter ones by matrix products, periodic ones by FFTs always."""
    faces = [(engine.Neumann(),) * 2, (engine.Dirichlet(), engine.Neumann())]
    boundary = engine.Boundary((*faces, (engine.Periodic(),) * 2))
    for backend, n in (("cpu", 1024), ("gpu", 2048)):
        monkeypatch.setattr(jax, "default_backend", lambda backend=backend: backend)
        assert spectral.fft_min_length() == n
        assert spectral._axes(boundary, (n, n - 1, 4)) == ([1], [0], [2])


@SLOW  # adaptive stepping runs by default in test_adaptive_stepping_rejects_and_counts_...
def test_adaptive_stepping_keeps_the_error_near_the_tolerance(v5_reference):
    model, _, reference = v5_reference
    errors = []
    for tolerance in (1e-2, 1e-3):
        sim = engine.Simulation(
            model, stepper="imex", adaptive=True, tolerance=tolerance, dtype="float64"
        )
        state = sim.advance(sim.initial_state(), 900.0)
        state = sim.advance(state, 1800.0)  # continues from the proposed step
        assert state.t == 1800.0 and state.dt > 0 and sim.trace_count == 1
        errors.append(relative_error(state.numpy(), reference))
        assert errors[-1] < tolerance
    assert errors[1] < errors[0] / 3


def test_adaptive_stepping_rejects_and_counts_a_first_step_far_beyond_the_tolerance(v5_reference):
    """A state proposing the whole span as its step: that step's error estimate exceeds the
    tolerance, so it is rejected (counted in `rejected_steps`) and the result still meets it."""
    model, _, reference = v5_reference
    sim = engine.Simulation(model, stepper="imex", adaptive=True, tolerance=1e-3, dtype="float64")
    start = sim.initial_state()
    state = sim.advance(engine.State(t=0.0, fields=start.fields, dt=1800.0), 1800.0)
    assert sim.rejected_steps >= 1 and state.step > 1
    assert relative_error(state.numpy(), reference) < 1e-3


@pytest.mark.parametrize(
    "shape, axes", [((17,), (0,)), ((6, 9), (0, 1)), ((5, 8, 7), (0, 2)), ((4, 6, 10), (0, 1, 2))]
)
def test_the_cosine_transform_is_scipys_orthonormal_dct(shape, axes, float64):
    """The matrix-product DCT-II of the spectral solves equals SciPy's, and DCT-III inverts it."""
    import scipy.fft

    from engine.numerics.spectral import basis_transform

    x = np.random.default_rng(4).standard_normal(shape)
    forward = np.asarray(basis_transform(jax.numpy.asarray(x), axes))
    expected = scipy.fft.dctn(x, type=2, axes=axes, norm="ortho")
    np.testing.assert_allclose(forward, expected, rtol=0, atol=1e-13 * np.abs(x).max())
    back = np.asarray(basis_transform(jax.numpy.asarray(forward), axes, inverse=True))
    np.testing.assert_allclose(back, x, rtol=0, atol=1e-13 * np.abs(x).max())


@pytest.mark.parametrize(
    "faces",
    [
        {"x_min": 1.0},
        {"x_max": 2.0, "y_min": 0.5},
        {"x_min": 1.0, "x_max": 0.3, "y_min": 0.0, "y_max": 0.8},
        {"y_max": 0.4, "x_min": "periodic", "x_max": "periodic"},
    ],
)
@pytest.mark.parametrize(  # all axes by products by default; by FFTs or mixed with -m slow
    "fft_min_length", [1024, pytest.param(8, marks=SLOW), pytest.param(1, marks=SLOW)]
)
def test_spectral_imex_is_exact_with_dirichlet_faces(faces, fft_min_length, monkeypatch):
    """Diffusion, decay and a source with non-zero dirichlet values on any mix of faces: one
    imex step of any length is the exact solution (expm) of the semi-discrete system, with
    the axes transformed by matrix products, the long one by FFTs, or both by FFTs."""
    monkeypatch.setattr(spectral, "FFT_MIN_LENGTH", fft_min_length)
    fft_axes = []
    transform = spectral.fft_basis_transform
    monkeypatch.setattr(
        spectral,
        "fft_basis_transform",
        lambda x, axis, *args, **kw: fft_axes.append(axis) or transform(x, axis, *args, **kw),
    )
    grid = engine.Grid((10, 7), spacing=(5.0, 8.0))
    kinds = {
        name: engine.Periodic() if value == "periodic" else engine.Dirichlet(value)
        for name, value in faces.items()
    }
    boundary = engine.Boundary.from_faces(2, **kinds)
    rng = np.random.default_rng(5)
    initial, source = rng.random(grid.shape), 0.01 * rng.random(grid.shape)
    D, decay, t_end = 40.0, 2e-3, 400.0
    species = engine.Species("c", diffusion=D, decay=decay, boundary=boundary, initial=initial)
    model = engine.Model(grid, species=(species,), sources=(engine.Source("c", source),))
    matrix, affine = semi_discrete_matrix(grid, D, boundary)
    size = initial.size
    system = matrix - decay * np.eye(size)
    propagator = expm(system * t_end)
    forcing = affine + source.ravel()
    exact = propagator @ initial.ravel() + np.linalg.solve(
        system, (propagator - np.eye(size)) @ forcing
    )
    c = run(model, t_end, stepper="imex", dt=t_end)["c"].ravel()
    np.testing.assert_allclose(c, exact, rtol=0, atol=1e-12 * np.abs(exact).max())
    periodic = {axis for axis in (0, 1) if boundary.is_periodic(axis)}
    long = {axis for axis in (0, 1) if grid.shape[axis] >= fft_min_length} - periodic
    assert set(fft_axes) == long


def _phi(z):
    """exp(-z), phi1(-z) and phi2(-z) of a symmetric positive matrix z, by its eigenvectors."""
    w, v = np.linalg.eigh(z)
    functions = (np.exp(-w), -np.expm1(-w) / w, (np.expm1(-w) + w) / w**2)
    return [(v * f) @ v.T for f in functions]


@pytest.mark.parametrize("faces", ["neumann", "periodic", "dirichlet"])
@pytest.mark.parametrize(  # the longest steps by default, every length with -m slow
    "sink_steps", [pytest.param(0.5, marks=SLOW), pytest.param(30.0, marks=SLOW), 3000.0]
)
def test_the_implicit_end_value_solves_its_system_at_any_step(faces, sink_steps):
    """One exponential trapezoidal step with sinks that differ from voxel to voxel (none in
    some voxels, up to 2e-2 1/s in others, a block of them): the end value that conjugate
    gradients find is the dense solution of its system, (1 - dt phi2(dt A) (k - sink)) x =
    ..., at steps of 0.5 to 3000 times the largest sink's time, where a fixed-point
    iteration of it diverges (its factor is about |k - sink| dt / 2)."""
    grid = engine.Grid((9, 7), spacing=(5.0, 8.0))
    kind = {"neumann": engine.Neumann(), "periodic": engine.Periodic()}.get(faces)
    boundary = engine.Boundary.uniform(2, kind or engine.Dirichlet(0.0))
    rng = np.random.default_rng(3)
    c = 0.1 + rng.random(grid.shape)
    forcing = 0.01 * rng.random(grid.shape)
    sink = np.where(rng.random(grid.shape) < 0.3, 1e-2 * (0.1 + rng.random(grid.shape)), 0.0)
    sink[:4] += 1e-2  # and a block of them: diffusion (0.1 1/s over a voxel) mixes less
    D, decay, dt = 4.0, 2e-4, sink_steps / sink.max()
    p = spectral.propagation(D, decay, grid, boundary, np.float64)
    change = spectral.reaction_change(c, forcing, sink, dt, p, boundary, implicit=True)

    k = float(spectral.exact_sink_rate(sink, c))
    matrix, _ = semi_discrete_matrix(grid, D, boundary)
    np.testing.assert_allclose(matrix, matrix.T, atol=1e-12)
    exact, phi1, phi2 = _phi(dt * ((decay + k) * np.eye(c.size) - matrix))
    excess = np.diag(k - sink.ravel())
    rhs = (exact - np.eye(c.size)) @ c.ravel() + dt * phi1 @ forcing.ravel()
    rhs += dt * phi1 @ excess @ c.ravel()
    expected = np.linalg.solve(np.eye(c.size) - dt * phi2 @ excess, rhs)
    np.testing.assert_allclose(np.ravel(change), expected, rtol=0, atol=1e-11 * c.max())


def test_the_end_values_conjugate_gradients_converge_within_as_many_iterations_as_unknowns():
    """Six voxels, half of them sinks, weakly coupled: within six iterations the end value is
    the dense solution of its system to rounding (the search directions are conjugate), where
    steepest descent (dropping the previous direction) is still off by 5% of the field."""
    grid = engine.Grid((6,), spacing=10.0)
    boundary = engine.Boundary.uniform(1, engine.Neumann())
    c = 0.1 + np.random.default_rng(3).random(6)
    sink = np.where(np.arange(6) % 2 == 0, 1e-2, 0.0)
    D, decay, dt = 0.1, 1e-4, 3e5

    @jax.jit  # compiled whole: op by op, its many small operations take seconds
    def change(c):
        p = spectral.propagation(D, decay, grid, boundary, np.float64)
        return spectral.reaction_change(c, None, sink, dt, p, boundary, True, max_iterations=6)

    laplacian = np.eye(6, k=1) + np.eye(6, k=-1) - np.diag([1, 2, 2, 2, 2, 1])  # neumann
    k = np.sum(sink * c) / np.sum(c)  # `exact_sink_rate`
    exact, phi1, phi2 = _phi(dt * ((decay + k) * np.eye(6) - D / 10.0**2 * laplacian))
    excess = np.diag(k - sink)
    rhs = (exact - np.eye(6)) @ c + dt * phi1 @ excess @ c
    expected = np.linalg.solve(np.eye(6) - dt * phi2 @ excess, rhs)
    np.testing.assert_allclose(change(c), expected, rtol=0, atol=1e-13 * c.max())


def test_a_uniform_sink_decays_with_diffusion_exactly():
    """A sink of one rate everywhere, given as a number or as a field of that number, is taken
    with diffusion and decay in the eigenbasis: the change over dt is (exp(dt A) - 1) c with
    A = D lap - decay - sink, exact at any step."""
    grid = engine.Grid((6,), spacing=10.0)
    boundary = engine.Boundary.uniform(1, engine.Neumann())
    c = 0.1 + np.random.default_rng(4).random(6)
    D, decay, sink, dt = 0.1, 1e-4, 2e-3, 600.0

    @jax.jit  # compiled whole: op by op, its many small operations take a second
    def change(c, sink):
        p = spectral.propagation(D, decay, grid, boundary, np.float64)
        return spectral.reaction_change(c, None, sink, dt, p, boundary, True)

    laplacian = np.eye(6, k=1) + np.eye(6, k=-1) - np.diag([1, 2, 2, 2, 2, 1])  # neumann
    exact, _, _ = _phi(dt * ((decay + sink) * np.eye(6) - D / 10.0**2 * laplacian))
    for given in (sink, np.full(6, sink)):
        got = change(jnp.asarray(c), jnp.asarray(given))
        np.testing.assert_allclose(got, (exact - np.eye(6)) @ c, rtol=0, atol=1e-13)


@pytest.mark.parametrize("size", [1e-19, 1e-30, 1e15])
def test_the_implicit_end_value_scales_with_the_field_in_float32(size):
    """The step is linear in the field and its forcing: a float32 field of any size (IL-2
    hours after a dose is near 1e-19 nM) changes as the same field of size 1 does, scaled.
    The conjugate gradients' dot products of a field near 1e-19 underflowed, which stopped
    the iteration at its first step (errors of 10%)."""
    grid = engine.Grid((12, 10), spacing=10.0)
    boundary = engine.Boundary.uniform(2, engine.Neumann())
    rng = np.random.default_rng(5)
    c = (0.1 + rng.random(grid.shape)).astype(np.float32)
    forcing = (1e-3 * rng.random(grid.shape)).astype(np.float32)
    sink = np.where(rng.random(grid.shape) < 0.3, 2e-2, 1e-4).astype(np.float32)
    p = spectral.propagation(10.0, 1e-4, grid, boundary, np.float32)

    def change(scale):
        x, f = np.float32(scale) * c, np.float32(scale) * forcing
        return np.asarray(spectral.reaction_change(x, f, sink, 600.0, p, boundary, True))

    unit = change(1.0)
    np.testing.assert_allclose(change(size) / size, unit, rtol=0, atol=1e-5 * np.abs(unit).max())


def test_the_exact_sink_rate_is_the_field_weighted_mean_sink():
    """k = sum(sink c) / sum(c): the remainder (k - sink) c adds nothing to the total; within
    the sink's range; the plain mean for a field that is 0 everywhere."""
    rng = np.random.default_rng(4)
    sink = np.where(rng.random((12, 10)) < 0.2, 1e-3, 0.0) + 1e-5
    c = rng.random((12, 10)) * (1 + 50 * (sink > 1e-4))  # more where the sink is
    k = float(spectral.exact_sink_rate(sink, c))
    assert abs(np.sum((k - sink) * c)) < 1e-12 * np.sum(sink * c)
    assert sink.mean() < k < sink.max()  # weighted towards the sinks, where c is
    zero = float(spectral.exact_sink_rate(sink, np.zeros_like(c)))
    assert zero == pytest.approx(sink.mean(), rel=1e-12)


BASES = [
    ("neumann", "neumann"),
    ("dirichlet", "dirichlet"),
    ("dirichlet", "neumann"),
    ("neumann", "dirichlet"),
]


@pytest.mark.parametrize("low, high", BASES)
@pytest.mark.parametrize(  # an odd length by default; lengths 1, 3 and 16 with -m slow
    "shape, axis",
    [
        pytest.param((1,), 0, marks=SLOW),
        pytest.param((2, 3), 1, marks=SLOW),
        ((7, 4, 3), 0),
        pytest.param((3, 16, 5), 1, marks=SLOW),
    ],
)
def test_fft_transforms_equal_the_basis_matrix_products(low, high, shape, axis, float64):
    """`fft_basis_transform` (long axes) is the product with `basis_matrix` along its axis,
    forward and back, for every pair of face kinds and odd and even lengths; its gradient
    is the transpose product."""
    x = np.random.default_rng(8).standard_normal(shape)
    matrix = spectral.basis_matrix(shape[axis], low, high)
    expected = np.moveaxis(np.moveaxis(x, axis, -1) @ matrix.T, -1, axis)
    forward = np.asarray(spectral.fft_basis_transform(jax.numpy.asarray(x), axis, low, high))
    np.testing.assert_allclose(forward, expected, rtol=0, atol=1e-13 * np.abs(x).max())
    back = spectral.fft_basis_transform(jax.numpy.asarray(expected), axis, low, high, inverse=True)
    np.testing.assert_allclose(np.asarray(back), x, rtol=0, atol=1e-13 * np.abs(x).max())
    _, pullback = jax.vjp(lambda y: spectral.fft_basis_transform(y, axis, low, high), x)
    (gradient,) = pullback(jax.numpy.asarray(expected))  # orthonormal: M^T M x = x
    np.testing.assert_allclose(np.asarray(gradient), x, rtol=0, atol=1e-13 * np.abs(x).max())


@pytest.mark.parametrize("n", [1, 2, 7, 16])
@pytest.mark.parametrize("low, high", BASES)
def test_each_axis_basis_is_orthonormal_and_diagonalises_the_laplacian(n, low, high):
    """Rows of `basis_matrix` are orthonormal eigenvectors of the 3-point Laplacian with ghost
    values mirrored (neumann) or negated (dirichlet, value 0) about each face, with the
    eigenvalues `laplacian_eigenvalues` gives; DCT-II and DST-II where both faces agree."""
    import scipy.fft

    matrix = spectral.basis_matrix(n, low, high)
    np.testing.assert_allclose(matrix @ matrix.T, np.eye(n), atol=1e-13)
    laplacian = -2 * np.eye(n) + np.eye(n, k=1) + np.eye(n, k=-1)
    laplacian[0, 0] += 1 if low == "neumann" else -1
    laplacian[-1, -1] += 1 if high == "neumann" else -1
    faces = {"neumann": engine.Neumann(), "dirichlet": engine.Dirichlet()}
    boundary = engine.Boundary(((faces[low], faces[high]),))
    eigenvalues = spectral.laplacian_eigenvalues(engine.Grid((n,), spacing=1.0), boundary)[0]
    np.testing.assert_allclose(matrix @ laplacian @ matrix.T, np.diag(eigenvalues), atol=1e-12)
    if low == high:
        transform = scipy.fft.dct if low == "neumann" else scipy.fft.dst
        expected = transform(np.eye(n), type=2, norm="ortho", axis=0)
        np.testing.assert_allclose(matrix, expected, atol=1e-13)


def test_on_a_gpu_the_transforms_products_compile_for_cublas():
    """Autotuning XLA's Triton matrix products made compiling a 128^3 imex loop take 42 s on
    a GPU; the stepping programs ask for cuBLAS there. XLA knows the option on any backend."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(jax, "default_backend", lambda: "gpu")
        options = compilation.compiler_options()
    assert options == {**compilation.NO_HOISTING, "xla_gpu_enable_triton_gemm": False}
    assert compilation.compiler_options() == compilation.NO_HOISTING  # on this CPU
    jax.jit(lambda x: 2 * x, compiler_options=options).lower(1.0).compile()


@pytest.mark.parametrize(
    ("stepper", "copies", "hoisted"), [("imex", 3.7, 7.2), ("explicit", 3.3, 3.45)]
)
def test_a_step_of_six_fields_holds_few_copies_of_them(stepper, copies, hoisted):
    """XLA's peak of the compiled loop of six coupled float32 fields (`ilsim bench`'s model)
    is at most `copies` x the fields: loop invariants are not hoisted into grid-sized arrays
    per field (`compilation.NO_HOISTING`) and mode rates are formed where read. Hoisted, the
    same loop holds `hoisted` x them; compiled with the default options it does again."""
    from engine.runs import bench

    n, fields = 24, 6
    state_bytes = fields * n**3 * 4
    peak = bench.compiled_peak_bytes(stepper, (n,) * 3, fields, "float32")
    assert peak <= copies * state_bytes
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(compilation, "compiler_options", dict)
        assert (
            bench.compiled_peak_bytes(stepper, (n,) * 3, fields, "float32")
            > (hoisted - 0.1) * state_bytes
        )


def test_every_stepping_program_compiles_with_the_loop_options(monkeypatch, float64):
    """An option XLA does not know fails each program that passes the options on: single
    runs (fixed and adaptive steps), sweeps, gradients and fits."""
    from engine.config.loading import load_config
    from engine.runs.gradients import fit, value_and_gradient

    cfg = load_config(
        {
            "grid": {"shape": [8, 6], "spacing": "10 um"},
            "time": {"end": "2 min", "output_every": "1 min", "stepper": "imex", "dtype": float64},
            "species": {"IL2": {"diffusion": "20 um^2/s", "decay": "1e-3 1/s", "initial": 1.0}},
        }
    )
    monkeypatch.setattr(compilation, "compiler_options", lambda: {"xla_no_such_option": True})

    def refused():
        return pytest.raises(Exception, match="xla_no_such_option")

    for adaptive in (False, True):
        sim = engine.Simulation(cfg, stepper="imex", adaptive=adaptive)
        with refused():
            sim.advance(sim.initial_state(), 60.0)
    with refused():
        engine.sweep(cfg, {"species.IL2.decay": [1e-3, 2e-3]})
    with refused():
        value_and_gradient(cfg, lambda f: f["IL2"][-1].sum(), ["species.IL2.decay"])
    with refused():
        observed = {"time": np.array([60.0, 120.0]), "IL2": np.ones((2, 8, 6))}
        fit(cfg, observed, ["species.IL2.decay"], max_iterations=1)


def trajectory_errors(model, tolerances, **options):
    """Per tolerance, the largest over fields of the largest deviation of imex at that
    `time.tolerance` from a converged reference (ssprk3 at a twentieth of its positivity
    limit) over 2 h in frames of 10 min, relative to the field's largest size."""
    reference = engine.Simulation(model, stepper="explicit", safety=0.05, dtype="float64")
    exact, frames = reference.initial_state(), []
    for t in np.arange(1, 13) * 600.0:
        exact = reference.advance(exact, t)
        frames.append((t, exact.numpy()))
    errors = []
    for tolerance in tolerances:
        sim = engine.Simulation(model, stepper="imex", tolerance=tolerance, **options)
        state, largest, size = sim.initial_state(), {}, {}
        for t, fields in frames:
            state = sim.advance(state, t)
            for name, value in fields.items():
                deviation = np.max(np.abs(state.numpy()[name] - value))
                largest[name] = max(largest.get(name, 0.0), deviation)
                size[name] = max(size.get(name, 0.0), np.max(np.abs(value)))
        errors.append(max(largest[name] / size[name] for name in size))
    return np.array(errors)


@pytest.mark.parametrize(  # 1e-2 by default, every one with -m slow
    "tolerance", [1e-2, pytest.param(1e-3, marks=SLOW), pytest.param(1e-4, marks=SLOW)]
)
def test_imex_at_auto_dt_stays_within_its_tolerance_over_the_trajectory(tolerance):
    """V5 over 2 h in frames of 10 min: each field's largest deviation from a converged
    reference, relative to its largest size over the frames, is within `time.tolerance`
    (measured 0.44, 0.19 and 0.14 of it) and not far below (`trajectory_errors`)."""
    (error,) = trajectory_errors(coupled_model(size=16), [tolerance], dtype="float64")
    assert error <= tolerance
    assert error > tolerance / 20  # not resolved far beyond it


@pytest.mark.parametrize(  # dt = "auto" at two tolerances by default, the rest with -m slow
    "tolerances, adaptive",
    [
        ((1e-3, 1e-5), False),
        pytest.param((1e-3, 1e-5), True, marks=SLOW),
        pytest.param((1e-3, 1e-4, 1e-5, 1e-6), False, marks=SLOW),
        pytest.param((1e-3, 1e-4, 1e-5, 1e-6), True, marks=SLOW),
    ],
)
def test_the_trajectory_error_is_in_proportion_to_the_tolerance(tolerances, adaptive):
    """Tolerance proportionality: V5's error over the run divided by `time.tolerance` stays
    within a factor of 2 from 1e-3 to 1e-6 (measured 0.13-0.19 at dt = "auto", 0.04-0.07
    adaptive). A step error in fixed proportion to the tolerance would give errors that fall
    as tolerance^(2/3), 0.19 to 1.33 of it over these tolerances (`per_step_tolerance`)."""
    ratios = trajectory_errors(
        coupled_model(size=16), tolerances, adaptive=adaptive, dtype="float64"
    ) / np.array(tolerances)
    assert np.all(ratios <= 1), ratios
    assert ratios.max() / ratios.min() < 2, ratios


def test_a_tolerance_below_float32s_resolution_runs_at_the_least_resolved_target():
    """In float32 the step-doubling difference carries 1-1.5 eps of rounding noise: tolerances
    whose local target lies below it (1e-6, 1e-8) run at the least target error control
    resolves (`RESOLVED_ULPS`), alike, in a few more steps than 1e-4 takes, not at the
    shortest steps that chasing the noise would force."""
    model = coupled_model(size=16)
    runs = {}
    for tolerance in (1e-4, 1e-6, 1e-8):
        sim = engine.Simulation(model, stepper="imex", tolerance=tolerance, dtype="float32")
        runs[tolerance] = sim.advance(sim.initial_state(), 1800.0)
    assert runs[1e-6].step == runs[1e-8].step
    for name, value in runs[1e-6].numpy().items():
        np.testing.assert_array_equal(value, runs[1e-8].numpy()[name])
    assert runs[1e-4].step < runs[1e-6].step < 2 * runs[1e-4].step


def test_error_control_holds_its_estimate_across_outputs(monkeypatch):
    """An estimate of imex's step holds for `STEPS_PER_ESTIMATE` steps (or to the next
    schedule edge) whether or not an output falls in between: V5 advanced in frames of 10 min
    (a few estimates' reach each) estimates as often as in one advance over the 2 h (15 times;
    24 when every frame estimated afresh), frames of 2 min (about 5 steps) 22 times against
    61, and every run ends within the tolerance of the one advance."""
    model = coupled_model(size=16)
    estimates = []
    accurate_step = engine.Simulation._accurate_step

    def counted(sim, *args):
        estimates.append(args[0].t)
        return accurate_step(sim, *args)

    monkeypatch.setattr(engine.Simulation, "_accurate_step", counted)
    ends = {}
    for frame in (7200.0, 600.0, 120.0):
        estimates.clear()
        sim = engine.Simulation(model, stepper="imex", dtype="float64", tolerance=1e-3)
        state = sim.initial_state()
        for t in np.arange(frame, 7200.0 + 1, frame):
            state = sim.advance(state, float(t))
        ends[frame] = (len(estimates), state.numpy())
    once = ends[7200.0][0]
    assert ends[600.0][0] <= once + 1 and ends[120.0][0] <= 1.5 * once, ends
    for frame in (600.0, 120.0):
        assert relative_error(ends[frame][1], ends[7200.0][1]) < 1e-3


def test_error_control_measures_errors_against_each_fields_largest_size_in_the_run():
    """Errors are relative to each field's largest size so far in the run (`State.scale`), not
    to its size now, so that a field decayed far below its peak is not resolved to its own
    vanishing size: a run carries on each field's largest size met at its estimates, and told
    that V5's fields were once 10x and 100x their size now, error control proposes steps
    longer by 10^(1/3) and 100^(1/3) (imex's local error grows as step^3)."""
    model = coupled_model(size=16)
    sim = engine.Simulation(model, stepper="imex", dtype="float64", tolerance=1e-3)
    first = sim.initial_state()
    largest = {k: float(np.max(np.abs(v))) for k, v in first.numpy().items()}
    state = sim.advance(first, 600.0)
    sizes = {k: float(np.max(np.abs(v))) for k, v in state.numpy().items()}
    for name, size in largest.items():  # met at the first estimate
        assert state.scale[name] >= size
    proposals = {}
    for factor in (1, 10, 100):
        told = dataclasses.replace(state, scale={k: factor * v for k, v in sizes.items()})
        proposals[factor] = sim._accurate_step(told, 1e5)[1]
    for factor in (10, 100):
        assert proposals[factor] / proposals[1] == pytest.approx(factor ** (1 / 3), rel=0.1)
    # adaptive stepping alike, its scale carried on through its device loop
    options = dict(stepper="imex", dtype="float64", tolerance=1e-3, adaptive=True)
    adaptive = engine.Simulation(model, **options)
    steps = {}
    for factor in (1, 100):
        scale = {k: factor * v for k, v in sizes.items()}
        fields = {k: jnp.copy(v) for k, v in state.fields.items()}  # donated
        told = dataclasses.replace(state, fields=fields, scale=scale, dt=None)
        end = adaptive.advance(told, 1800.0)
        steps[factor] = end.step - state.step
        assert all(end.scale[k] >= v for k, v in scale.items())
    assert steps[100] < steps[1] / 2, steps


@pytest.mark.parametrize("power", [1.0, 2.0, 3.0])
def test_the_step_search_follows_the_power_its_errors_show(power):
    """`accurate_step` from a proposal 100x too long, on an error that grows as step^power
    (order + 1 = 3 where the scheme has reached its order, down to 1 at a schedule edge or a
    transient it does not resolve): within 1 after at most 5 trials, and within 25% of the
    longest such step; an array of members at once, each on its own."""
    order, longest = 2, 1000.0
    fits = np.array([5.0, 50.0])  # the step whose error is 1, per member

    trials = []

    def error_at(h):
        trials.append(h)
        return (np.asarray(h) / fits) ** power

    step, _ = accurate_step(error_at, np.full(2, longest), np.array([500.0, 5000.0]), order)
    assert len(trials) <= 5
    assert np.all(step <= fits * (1 + 1e-12)) and np.all(step >= 0.75 * fits)
    single, _ = accurate_step(lambda h: (h / fits[0]) ** power, longest, 500.0, order)
    assert single == pytest.approx(step[0])


# --- what the default run would otherwise leave unchecked -------------------------------------


def _steps_of(stepper, model):
    """`n` steps of dt from the model's initial fields, float64, compiled once for every dt."""
    fields = model.initial_fields(jnp.float64)
    advance = jax.jit(
        lambda dt, n: engine.stepping.steppers.advance_fields(stepper, model, fields, 0.0, dt, n)
    )
    return lambda t_end, n: {k: np.asarray(v) for k, v in advance(t_end / n, n).items()}


def test_tr_bdf2_is_second_order_in_time(convergence_order):
    """The linear part on robin faces (not diagonalised by the transforms) is one TR-BDF2 step
    per imex step: against the exact solution expm of the semi-discrete system, its error
    falls as dt^2. Its stage fraction 2 - sqrt(2) is what lets both stages solve the same
    matrix; any other fraction with that matrix is first order. (The slow variant of
    test_imex_is_second_order_in_time checks this with reactions.)"""
    grid = engine.Grid((16,), spacing=15.0)
    x = grid.coordinates(0)
    boundary = engine.Boundary.from_faces(1, x_min=engine.Robin(0.5, 2.0))
    D, decay = 20.0, 1e-3
    initial = 1.0 + np.cos(np.pi * x / 240.0)
    model = engine.Model(
        grid,
        species=(
            engine.Species("c", diffusion=D, decay=decay, boundary=boundary, initial=initial),
        ),
    )
    assert not spectral.eligible(D, decay, boundary)  # TR-BDF2 with CG
    t_end = 300.0
    matrix, affine = semi_discrete_matrix(grid, D, boundary)
    system = matrix - decay * np.eye(grid.size)
    propagator = expm(system * t_end)
    exact = propagator @ initial + np.linalg.solve(
        system, (propagator - np.eye(grid.size)) @ affine
    )

    steps = _steps_of(engine.stepping.steppers.Imex(), model)
    counts = np.array([8, 16, 32])
    errors = [np.abs(steps(t_end, n)["c"] - exact).max() / exact.max() for n in counts]
    assert errors[-1] < 1e-3
    assert convergence_order(t_end / counts, errors) == pytest.approx(2.0, abs=0.2), errors


def test_imex_is_second_order_in_time_with_chemotaxis(convergence_order):
    """The drift half steps (upwind, sub-cycled within its CFL limit) around the linear part
    keep imex second order (docs/numerics.md: imex, order 2) for a population that climbs a
    gradient, against ssprk3 at a step 1/100 of the finest; and keep it non-negative. Each
    half step must advance dt / 2, and each sub-cycle be second order itself: forward-Euler
    sub-cycles made it first order (errors 0.2 of the field at dt = 12.5 s)."""
    grid = engine.Grid((32,), spacing=10.0)
    x = grid.coordinates(0)
    chemokine = engine.Species("c", diffusion=0.0, initial=np.exp(-(((x - 200) / 60) ** 2)))
    cells = engine.Population(
        "n",
        motility=1.0,
        chemotaxis_species="c",
        chemotaxis_sensitivity=100.0,
        initial=1.0 + 0.5 * np.cos(2 * np.pi * x / 320),
    )
    model = engine.Model(grid, species=(chemokine,), populations=(cells,))
    t_end = 100.0
    reference = _steps_of(engine.stepping.steppers.Explicit(), model)(t_end, 10000)["n"]
    imex = _steps_of(engine.stepping.steppers.Imex(), model)
    counts = np.array([16, 32, 64])
    results = [imex(t_end, n)["n"] for n in counts]
    errors = [np.abs(n - reference).max() / reference.max() for n in results]
    assert min(n.min() for n in results) >= 0
    assert errors[-1] < 1e-3
    assert convergence_order(t_end / counts, errors) == pytest.approx(2.0, abs=0.25), errors


@pytest.mark.parametrize("dt", [100.0, 1000.0])
def test_imex_drift_far_beyond_its_cfl_limit_conserves_and_stays_non_negative(dt):
    """Cells flee a minimum of the chemokine on both sides (the upwind outflow of that voxel
    is the largest the CFL limit allows for): one imex step of 14 and 140 times the limit,
    sub-cycled within it, keeps the population non-negative and its total exact between
    zero-flux faces. Sub-cycles beyond the limit overshoot below zero, and the clip at zero
    then creates cells (a total of 50 for 32 with sub-cycles of 4x the limit)."""
    grid = engine.Grid((32,), spacing=10.0)
    x = grid.coordinates(0)
    chemokine = engine.Species("c", diffusion=0.0, initial=np.abs(x - 160.0) / 160.0)
    cells = engine.Population(
        "n", chemotaxis_species="c", chemotaxis_sensitivity=100.0, initial=1.0
    )
    model = engine.Model(grid, species=(chemokine,), populations=(cells,))
    n = _steps_of(engine.stepping.steppers.Imex(), model)(dt, 1)["n"]
    assert n.min() >= 0
    assert n.sum() == pytest.approx(grid.size, rel=1e-12)
    assert n[15:17].max() < 0.01  # they have left the minimum


def test_cg_converges_within_as_many_iterations_as_unknowns():
    """Conjugate gradients on an n-unknown SPD system reach the solution within n iterations
    (in exact arithmetic; here to 1e-9 in float64), with either preconditioner: their search
    directions are conjugate. A steepest-descent update (dropping the previous direction)
    still converges in the iterations `maxiter` allows, but needs many more."""
    rng = np.random.default_rng(6)
    basis, _ = np.linalg.qr(rng.normal(size=(12, 12)))
    b = rng.normal(size=12)
    diagonal = None
    # four distinct eigenvalues (condition number 1e3): four iterations, without a
    # preconditioner; twelve distinct ones, well conditioned: twelve, with the diagonal
    for spectrum, iterations, jacobi in (
        (np.repeat([1.0, 10.0, 100.0, 1000.0], 3), 4, False),
        (np.geomspace(1.0, 10.0, 12), 12, True),
    ):
        matrix = (basis * spectrum) @ basis.T
        exact = np.linalg.solve(matrix, b)
        A, diagonal = jnp.asarray(matrix), jnp.asarray(np.diag(matrix))

        def precondition(r, jacobi=jacobi, diagonal=diagonal):
            return r / diagonal if jacobi else r

        x = solvers.conjugate_gradients(
            lambda v, A=A: A @ v, jnp.asarray(b), 0.0, iterations, precondition
        )
        np.testing.assert_allclose(np.asarray(x), exact, rtol=0, atol=1e-9 * np.abs(exact).max())


@pytest.mark.parametrize("implicit", [False, True], ids=["predictor", "end value"])
def test_the_linear_part_never_takes_a_field_below_zero(implicit):
    """With sinks that differ from voxel to voxel, the exponential trapezoidal change is not
    non-negative by construction (the remainder (k - sink) c is a forcing, and a strong sink
    in a voxel takes more than the voxel holds: the predictor to -2.7, the end value to
    -0.26 here); `linear_change` clips it at -c, so that the predictor that the reactions
    are evaluated at, and the step, stay non-negative."""
    grid = engine.Grid((16,), spacing=10.0)
    x = np.arange(16)
    model = engine.Model(grid, species=(engine.Species("c", diffusion=1.0, initial=1.0),))
    prepared = engine.stepping.steppers.prepare_diffusion(model, ("c",))
    fields = {"c": jnp.ones(grid.shape)}
    sink = {"c": jnp.asarray(np.where(x % 4 == 0, 10.0, 0.0))}
    change = engine.stepping.steppers.linear_change(
        model, prepared, fields, {}, sink, 1.0, implicit
    )["c"]
    new = np.asarray(fields["c"] + change)
    assert new.min() >= 0
    assert new[x % 4 == 0].max() < 0.1 and new[x % 4 != 0].min() > 0.5  # the sinks still act


def test_the_exact_sink_rate_stays_within_the_sinks_range():
    """k is clipped to [min sink, max sink]: where a field (rounding, a negative change not yet
    clipped) has values of both signs, sum(sink c) / sum(c) can lie far outside the range,
    and a k above every sink would make 1 - dt phi2 (k - sink) lose its positive
    definiteness."""
    sink = np.array([1e-3, 2e-3, 3e-3, 4e-3])
    c = np.array([1.0, -0.9, 0.2, 0.05])  # sums to 0.35: the weighted mean is negative
    assert np.sum(sink * c) / np.sum(c) < sink.min()
    k = float(spectral.exact_sink_rate(sink, c))
    assert sink.min() <= k <= sink.max()
    flipped = float(spectral.exact_sink_rate(sink[::-1], c))
    assert sink.min() <= flipped <= sink.max()


def test_the_error_norm_is_the_largest_voxel_error_relative_to_each_fields_size():
    """Error control measures the step-doubling difference in the max norm, per field,
    relative to tolerance x the field's size: an error confined to one voxel (next to a point
    source, a voxel-scale sink) counts in full, where a mean over the grid would dilute it by
    the voxel count and let the step grow until that voxel is wrong by far more than the
    tolerance. The worst field decides."""
    shape = (16, 16)
    local = np.zeros(shape)
    local[3, 5] = -2e-4  # one voxel
    spread = np.full(shape, 1e-6)
    fields = {"a": np.full(shape, 2.0), "b": 0.5 + np.zeros(shape)}
    norm = float(error_norm([{"a": jnp.asarray(local), "b": jnp.asarray(spread)}], fields, 1e-3))
    assert norm == pytest.approx(max(2e-4 / (1e-3 * 2.0), 1e-6 / (1e-3 * 0.5)), rel=1e-12)
    sizes = {"a": jnp.asarray(2.0), "b": jnp.asarray(0.5)}  # each field's size as a 0-d array
    assert float(error_norm([{"a": jnp.asarray(local)}], sizes, 1e-3)) == pytest.approx(0.1)
