"""The mathematics of engine.numerics.operators, in float64: accuracy, conservation, face
coefficients, boundary conditions against analytic steady states, periodic diffusion against
its exact semi-discrete (Fourier) solution, and upwind chemotaxis against the Boltzmann
equilibrium."""

from functools import partial

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from engine.model.model import Model, Population, Species
from engine.numerics import operators
from engine.numerics.boundary import Boundary, Dirichlet, Neumann, Periodic, Robin
from engine.numerics.grid import Grid
from engine.runs.simulation import Simulation

pytestmark = pytest.mark.usefixtures("x64_module")


SLOW = pytest.mark.slow


def f64(x):
    return jnp.asarray(x, dtype=jnp.float64)


@partial(jax.jit, static_argnums=(2, 3))
def _diffusion(c, D, grid, boundary):
    return operators.diffusion(c, operators.face_diffusivity(D, grid, boundary), grid, boundary)


def apply_diffusion(c, D, grid, boundary):
    """div(D grad c) (jitted: one compilation per grid and boundary, not one per primitive)."""
    out = _diffusion(f64(c), f64(D), grid, boundary)
    assert out.dtype == jnp.float64
    return np.asarray(out)


def order(ns, errors):
    """Least-squares slope of log(error) against log(h) ~ -log(n)."""
    return -np.polyfit(np.log(ns), np.log(errors), 1)[0]


LENGTHS = (2.0, 3.0, 1.5)
ORIGINS = (0.3, -1.0, 2.0)


# --- second-order accuracy of div(D grad c) ------------------------------------------------


def smooth_problem(grid, kinds, variable_D):
    """A smooth c and D compatible with the boundaries, and the exact div(D grad c) at the voxel
    centres. Neumann axes: cos modes (all odd derivatives vanish at the walls); periodic axes:
    phase-shifted sin modes of the period."""
    X = grid.centres()
    cf, dcf, d2cf, Df, dDf = [], [], [], [], []
    for a, kind in enumerate(kinds):
        L, o, x = LENGTHS[a], ORIGINS[a], X[a]
        if kind == "neumann":
            k = np.pi / L
            cf.append(np.cos(k * (x - o)))
            dcf.append(-k * np.sin(k * (x - o)))
            d2cf.append(-(k**2) * np.cos(k * (x - o)))
            Df.append(np.cos(k * (x - o) + 0.4))
            dDf.append(-k * np.sin(k * (x - o) + 0.4))
        else:
            k = 2 * np.pi / L
            phase = 0.3 + a
            cf.append(np.sin(k * (x - o) + phase))
            dcf.append(k * np.cos(k * (x - o) + phase))
            d2cf.append(-(k**2) * np.sin(k * (x - o) + phase))
            Df.append(np.cos(k * (x - o) + 0.7 * a))
            dDf.append(-k * np.sin(k * (x - o) + 0.7 * a))

    def product(factors, replace=None, by=None):
        out = np.ones(grid.shape)
        for a, f in enumerate(factors):
            out = out * (by if a == replace else f)
        return out

    c = product(cf)
    grad_c = [product(cf, a, dcf[a]) for a in range(grid.ndim)]
    lap_c = sum(product(cf, a, d2cf[a]) for a in range(grid.ndim))
    if variable_D:
        D = 1.0 + 0.5 * product(Df)
        grad_D = [0.5 * product(Df, a, dDf[a]) for a in range(grid.ndim)]
        exact = D * lap_c + sum(gD * gc for gD, gc in zip(grad_D, grad_c))
    else:
        D = 1.7
        exact = D * lap_c
    return c, D, exact


BOUNDARY_KINDS = {
    (1, "neumann"): ("neumann",),
    (1, "periodic"): ("periodic",),
    (2, "neumann"): ("neumann", "neumann"),
    (2, "periodic"): ("periodic", "periodic"),
    (2, "mixed"): ("neumann", "periodic"),
    (3, "neumann"): ("neumann",) * 3,
    (3, "periodic"): ("periodic",) * 3,
    (3, "mixed"): ("periodic", "neumann", "periodic"),
}


@pytest.mark.parametrize(  # varying D in 2D by default, in 1D and 3D with -m slow
    ("ndim", "bc", "variable_D"),
    [
        pytest.param(ndim, bc, variable_D, marks=SLOW if ndim != 2 and variable_D else ())
        for variable_D in (False, True)
        for ndim, bc in BOUNDARY_KINDS
    ],
    ids=[
        f"{ndim}-{bc}-{'variableD' if variable_D else 'constD'}"
        for variable_D in (False, True)
        for ndim, bc in BOUNDARY_KINDS
    ],
)
def test_diffusion_is_second_order(ndim, bc, variable_D):
    kinds = BOUNDARY_KINDS[ndim, bc]
    boundary = Boundary(
        tuple(
            (Periodic(), Periodic()) if k == "periodic" else (Neumann(), Neumann()) for k in kinds
        )
    )
    ns = (12, 24, 48, 96) if ndim < 3 else (12, 24, 48)
    errors = []
    for n in ns:
        grid = Grid((n,) * ndim, [L / n for L in LENGTHS[:ndim]], ORIGINS[:ndim])
        c, D, exact = smooth_problem(grid, kinds, variable_D)
        out = apply_diffusion(c, D, grid, boundary)
        errors.append(np.abs(out - exact).max() / np.abs(exact).max())  # global max norm
    p = order(ns, errors)
    assert abs(p - 2) < 0.2, (errors, p)
    assert errors[-1] < 0.005


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_periodic_fourier_modes_are_exact_eigenvectors(ndim):
    # cos(2 pi k (x - x0) / L) is an eigenvector of the periodic scheme with eigenvalue
    # -4 D / h^2 sin^2(pi k / n): the dispersion relation the spectral test below relies on
    shape = (12, 10, 9)[:ndim]
    spacing = (0.5, 0.8, 1.1)[:ndim]
    grid = Grid(shape, spacing, ORIGINS[:ndim])
    boundary = Boundary.uniform(ndim, Periodic())
    D = 1.3
    for k in [(1, 2, 4), (5, 3, 0), (6, 5, 4)]:
        c, lam = np.ones(shape), 0.0
        for a, x in enumerate(grid.centres()):
            n, h = shape[a], spacing[a]
            c = c * np.cos(2 * np.pi * k[a] * (x - ORIGINS[a]) / (n * h) + 0.2)
            lam += 4 * D / h**2 * np.sin(np.pi * k[a] / n) ** 2
        out = apply_diffusion(c, D, grid, boundary)
        np.testing.assert_allclose(out, -lam * c, rtol=0, atol=1e-12 * lam)


# --- conservation --------------------------------------------------------------------------


def random_D(shape, rng, zero_fraction=0.2):
    D = rng.uniform(0.1, 5.0, shape)
    D[rng.random(shape) < zero_fraction] = 0.0
    return D


CONSERVATION_CASES = [
    (1, ("neumann",)),
    (1, ("periodic",)),
    (2, ("neumann", "neumann")),
    (2, ("periodic", "periodic")),
    (2, ("periodic", "neumann")),
    (3, ("neumann", "neumann", "neumann")),
    (3, ("periodic", "periodic", "periodic")),
    (3, ("neumann", "periodic", "neumann")),
]


def closed_boundary(kinds):
    return Boundary(
        tuple(
            (Periodic(), Periodic()) if k == "periodic" else (Neumann(), Neumann()) for k in kinds
        )
    )


@pytest.mark.parametrize(("ndim", "kinds"), CONSERVATION_CASES)
def test_diffusion_conserves_total(ndim, kinds):
    rng = np.random.default_rng(ndim)
    grid = Grid((7, 6, 5)[:ndim], spacing=(0.7, 1.3, 2.0)[:ndim])
    boundary = closed_boundary(kinds)
    for D in (random_D(grid.shape, rng), 2.5):
        c = rng.uniform(0, 10, grid.shape)
        rate = apply_diffusion(c, D, grid, boundary) * grid.voxel_volume
        assert np.abs(rate).max() > 1e-3  # a nontrivial flow
        assert abs(rate.sum()) <= 1e-14 * np.abs(rate).sum() * grid.size


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_diffusion_total_change_equals_boundary_fluxes(ndim):
    # the divergence telescopes: d/dt of the total equals the sum over the open faces of
    # (flux into the domain) x (face area), with the dirichlet and robin face fluxes
    rng = np.random.default_rng(10 + ndim)
    grid = Grid((6, 5, 8)[-ndim:], spacing=(0.9, 1.2, 0.5)[-ndim:], depth=3.0)
    D = rng.uniform(0.5, 2.0, grid.shape)
    c = rng.uniform(0, 4, grid.shape)
    a, h, out = 1.5, 0.8, 6.0
    boundary = Boundary.from_faces(ndim, x_min=Dirichlet(a), x_max=Robin(h, out))
    rate = apply_diffusion(c, D, grid, boundary)
    hx = grid.spacing[-1]
    face_area = grid.voxel_volume / hx
    into_low = 2 * D[..., 0] * (a - c[..., 0]) / hx
    conductance = h * D[..., -1] / (D[..., -1] + h * hx / 2)
    into_high = conductance * (out - c[..., -1])
    expected = (into_low.sum() + into_high.sum()) * face_area
    assert rate.sum() * grid.voxel_volume == pytest.approx(expected, rel=1e-12)


# --- harmonic-mean face coefficients ---------------------------------------------------------


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_face_diffusivity_harmonic_mean(ndim):
    rng = np.random.default_rng(20 + ndim)
    shape = (5, 4, 6)[:ndim]
    grid = Grid(shape)
    D = random_D(shape, rng, zero_fraction=0.25)
    kinds = ("neumann", "periodic", "neumann")[:ndim]
    boundary = Boundary(
        tuple(
            (Periodic(), Periodic()) if k == "periodic" else (Dirichlet(1.0), Robin(2.0))
            for k in kinds
        )
    )
    faces = jax.jit(operators.face_diffusivity, static_argnums=(1, 2))(f64(D), grid, boundary)
    assert len(faces) == ndim
    for axis, (interior, low, high) in enumerate(faces):
        a = np.take(D, range(shape[axis] - 1), axis=axis)
        b = np.take(D, range(1, shape[axis]), axis=axis)
        with np.errstate(invalid="ignore", divide="ignore"):
            expected = np.where(a + b > 0, 2 * a * b / (a + b), 0.0)
        np.testing.assert_allclose(np.asarray(interior), expected, rtol=1e-15, atol=0)
        # a face next to a D = 0 voxel is impermeable, and never NaN
        assert np.all(np.asarray(interior)[(a == 0) | (b == 0)] == 0)
        assert np.all(np.isfinite(np.asarray(interior)))
        first = np.take(D, [0], axis=axis)
        last = np.take(D, [shape[axis] - 1], axis=axis)
        if kinds[axis] == "periodic":
            with np.errstate(invalid="ignore", divide="ignore"):
                wrap = np.where(first + last > 0, 2 * first * last / (first + last), 0.0)
            np.testing.assert_allclose(np.asarray(low), wrap, rtol=1e-15, atol=0)
            np.testing.assert_allclose(np.asarray(high), wrap, rtol=1e-15, atol=0)
        else:
            np.testing.assert_array_equal(np.asarray(low), first)
            np.testing.assert_array_equal(np.asarray(high), last)


def test_face_diffusivity_scalar_stays_scalar():
    grid = Grid((4, 5))
    faces = operators.face_diffusivity(f64(2.5), grid, Boundary.uniform(2))
    for axis_faces in faces:
        assert all(np.ndim(f) == 0 and float(f) == 2.5 for f in axis_faces)


def test_harmonic_mean_values():
    a = f64([1.0, 2.0, 0.0, 0.0, 3.0, 1e-300])
    b = f64([1.0, 6.0, 5.0, 0.0, 0.0, 1.0])
    np.testing.assert_allclose(
        np.asarray(operators.harmonic_mean(a, b)), [1.0, 3.0, 0.0, 0.0, 0.0, 2e-300], rtol=1e-15
    )
    # symmetric, and between the smaller value and the arithmetic mean
    rng = np.random.default_rng(0)
    x, y = rng.uniform(0, 10, 100), rng.uniform(0, 10, 100)
    H = np.asarray(operators.harmonic_mean(f64(x), f64(y)))
    np.testing.assert_allclose(H, np.asarray(operators.harmonic_mean(f64(y), f64(x))), rtol=1e-15)
    assert np.all(H >= np.minimum(x, y) * (1 - 1e-15))
    assert np.all(H <= (x + y) / 2 * (1 + 1e-15))


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_zero_diffusivity_wall_blocks_all_flux(ndim):
    rng = np.random.default_rng(30 + ndim)
    shape = (4, 5, 12)[-ndim:]
    grid = Grid(shape, spacing=0.5)
    D = rng.uniform(0.5, 3.0, shape)
    wall = 5
    D[..., wall] = 0.0  # a D = 0 sheet across the whole domain
    left = np.zeros(shape, dtype=bool)
    left[..., :wall] = True
    c = np.where(left, rng.uniform(1, 2, shape), 0.0)
    boundary = Boundary.uniform(ndim)

    # the operator: nothing reaches the wall or the far side, whatever c is on the near side
    rate = apply_diffusion(c, D, grid, boundary)
    assert np.all(rate[~left] == 0)
    # the near side does not see the far side either
    c_far = c + np.where(left, 0.0, rng.uniform(0, 100, shape))
    np.testing.assert_array_equal(apply_diffusion(c_far, D, grid, boundary)[left], rate[left])

    # time-marched: the far side and the wall stay exactly zero, the near side keeps its total
    model = Model(grid, species=(Species("c", diffusion=D, initial=c),))
    sim = Simulation(model, dtype="float64")
    state = sim.advance(sim.initial_state(), 5.0)
    final = np.asarray(state.fields["c"])
    assert np.all(final[~left] == 0)
    assert final[left].sum() == pytest.approx(c[left].sum(), rel=1e-12)
    # and diffusion did act on the near side (it flattened)
    assert np.ptp(final[left]) < 0.1 * np.ptp(c[left])


# --- dirichlet and robin: analytic steady states ---------------------------------------------


@partial(jax.jit, static_argnums=(1, 2))
def _affine_diffusion(D, grid, boundary):
    """(A, b) with diffusion(c) = A c + b: A's columns are the operator applied to unit vectors
    minus its value at c = 0."""
    faces = operators.face_diffusivity(D, grid, boundary)

    def apply(c):
        return operators.diffusion(c.reshape(grid.shape), faces, grid, boundary).ravel()

    b = apply(jnp.zeros(grid.size, D.dtype))
    return jax.vmap(apply)(jnp.eye(grid.size, dtype=D.dtype)).T - b[:, None], b


def steady_state(grid, boundary, D):
    """The discrete steady state: the solution of A c + b = 0."""
    A, b = _affine_diffusion(f64(D), grid, boundary)
    return np.linalg.solve(np.asarray(A), -np.asarray(b)).reshape(grid.shape)


def analytic_1d_steady(x, origin, length, D_layers, h_layer, low, high):
    """Exact steady state of d/dx(D dc/dx) = 0 on [origin, origin + length] with D piecewise
    constant on layers of width h_layer and dirichlet/robin ends: the flux q = -D c' is uniform
    and the drop from the outside value at the low end to the outside value at the high end is
    q times the series resistance (1/h per robin end, integral of dx/D across the domain)."""

    def end(face):
        if isinstance(face, Dirichlet):
            return face.value, 0.0
        return face.outside, 1.0 / face.h

    u_low, r_low = end(low)
    u_high, r_high = end(high)
    resistance_to_face = np.concatenate([[0.0], np.cumsum(h_layer / np.asarray(D_layers))])
    assert resistance_to_face[-1] > 0
    q = (u_low - u_high) / (r_low + resistance_to_face[-1] + r_high)
    # resistance from the low face to each x: full layers below plus the part of x's layer
    layer = np.minimum(((x - origin) // h_layer).astype(int), len(D_layers) - 1)
    partial = (x - origin - layer * h_layer) / np.asarray(D_layers)[layer]
    return u_low - q * (r_low + resistance_to_face[layer] + partial)


STEADY_CASES = {
    "dirichlet-dirichlet": (Dirichlet(2.0), Dirichlet(-1.0)),
    "robin-dirichlet": (Robin(h=0.7, outside=5.0), Dirichlet(1.0)),
    "dirichlet-robin": (Dirichlet(3.0), Robin(h=2.5, outside=-2.0)),
    "robin-robin": (Robin(h=0.4, outside=4.0), Robin(h=3.0, outside=1.0)),
    "insulated-dirichlet": (Robin(h=0.0, outside=9.0), Dirichlet(1.5)),
}


@pytest.mark.parametrize(  # in 3D only robin-robin by default, every case with -m slow
    ("ndim", "case"),
    [
        pytest.param(ndim, case, marks=SLOW if ndim == 3 and case != "robin-robin" else ())
        for ndim in (1, 2, 3)
        for case in STEADY_CASES
    ],
    ids=[f"{ndim}-{case}" for ndim in (1, 2, 3) for case in STEADY_CASES],
)
def test_steady_linear_profile(ndim, case):
    low, high = STEADY_CASES[case]
    nx, length, D = 12, 6.0, 1.7
    shape = (3, 4, nx)[-ndim:]
    grid = Grid(shape, spacing=(0.8, 1.1, length / nx)[-ndim:], origin=(0.0, 2.0, -1.0)[-ndim:])
    boundary = Boundary.from_faces(ndim, x_min=low, x_max=high)
    c = steady_state(grid, boundary, D)
    x = grid.centres()[-1]
    x0 = grid.origin[-1]

    # the linear profile c = c0 + s (x - x0), from the two end conditions
    rows, rhs = [], []
    for face, at, side in ((low, 0.0, -1), (high, length, +1)):
        if isinstance(face, Dirichlet):  # c(at) = value
            rows.append([1.0, at])
            rhs.append(face.value)
        else:  # flux into the domain h (outside - c(at)) = side * D c'
            rows.append([face.h, face.h * at + side * D])
            rhs.append(face.h * face.outside)
    c0, s = np.linalg.solve(rows, rhs)
    exact = c0 + s * (x - x0)
    np.testing.assert_allclose(c, exact, rtol=0, atol=1e-10)
    if case != "insulated-dirichlet":  # the same as the layered formula (one layer)
        layered = analytic_1d_steady(x, x0, length, [D], length, low, high)
        np.testing.assert_allclose(exact, layered, atol=1e-12)
    if case == "robin-dirichlet":  # the closed form, for the record
        h, out, b = low.h, low.outside, high.value
        slope = h * (b - out) / (D + h * length)
        np.testing.assert_allclose(c, b + slope * (x - x0 - length), atol=1e-10)


@pytest.mark.parametrize(
    "ends",
    [(Dirichlet(1.0), Dirichlet(0.0)), (Robin(h=1.5, outside=3.0), Dirichlet(-1.0))],
    ids=["dirichlet", "robin"],
)
@pytest.mark.parametrize("ndim", [1, 2])
def test_steady_piecewise_constant_diffusivity(ndim, ends):
    # D varies by two orders of magnitude from layer to layer along x: the exact solution is
    # piecewise linear with a continuous flux, and the harmonic-mean face coefficients (series
    # resistances of the two half voxels) make the discrete solution exact at the centres
    rng = np.random.default_rng(40)
    nx, hx = 16, 0.5
    D_layers = 10 ** rng.uniform(-1, 1, nx)
    D_layers[5:9] = [0.05, 5.0, 0.2, 3.0]
    shape = (3, nx)[-ndim:]
    grid = Grid(shape, spacing=(0.7, hx)[-ndim:], origin=(0.0, 1.0)[-ndim:])
    D = np.broadcast_to(D_layers, shape).copy()
    low, high = ends
    boundary = Boundary.from_faces(ndim, x_min=low, x_max=high)
    c = steady_state(grid, boundary, D)
    x = grid.centres()[-1]
    exact = analytic_1d_steady(x, grid.origin[-1], nx * hx, D_layers, hx, low, high)
    np.testing.assert_allclose(c, exact, rtol=0, atol=1e-10)
    # the discrete flux D_face (c[i+1] - c[i]) / h is the same through every interior face
    faces = operators.face_diffusivity(f64(D), grid, boundary)
    flux = -np.asarray(faces[-1][0]) * np.diff(c, axis=-1) / hx
    np.testing.assert_allclose(flux, flux.flat[0], rtol=1e-9)
    # and the profile is genuinely non-linear (kinks at the layer faces)
    assert np.ptp(np.diff(c[(0,) * (ndim - 1)])) > 0.1 * np.ptp(c)


@pytest.mark.parametrize("nx", [1, 2])
def test_steady_dirichlet_on_tiny_grids(nx):
    # one voxel takes both dirichlet faces' fluxes; the profile is still exact
    length, a, b = 3.0, 2.0, 5.0
    grid = Grid((nx,), spacing=length / nx)
    boundary = Boundary.from_faces(1, x_min=Dirichlet(a), x_max=Dirichlet(b))
    c = steady_state(grid, boundary, 0.9)
    np.testing.assert_allclose(c, a + (b - a) * grid.coordinates(0) / length, atol=1e-12)


@pytest.mark.parametrize("D", [0.3, 4.0])
def test_robin_tends_to_dirichlet_for_large_transfer_coefficient(D):
    rng = np.random.default_rng(45)
    grid = Grid((5, 7), spacing=(0.6, 0.4))
    c = rng.uniform(0, 3, grid.shape)
    dirichlet = Boundary.from_faces(2, x_min=Dirichlet(2.0), y_max=Dirichlet(-1.0))
    robin = Boundary.from_faces(2, x_min=Robin(1e13, 2.0), y_max=Robin(1e13, -1.0))
    np.testing.assert_allclose(
        apply_diffusion(c, D, grid, robin), apply_diffusion(c, D, grid, dirichlet), rtol=1e-9
    )
    # and a robin face with h = 0 is a neumann face
    insulated = Boundary.from_faces(2, x_min=Robin(0.0, 2.0), y_max=Robin(0.0, -1.0))
    np.testing.assert_allclose(
        apply_diffusion(c, D, grid, insulated),
        apply_diffusion(c, D, grid, Boundary.uniform(2)),
        rtol=0,
        atol=1e-14,
    )


DIAGONAL_CASES = {
    "1d-dirichlet-robin": ((9,), (Dirichlet(1.0), Robin(0.8, 2.0))),
    "1d-periodic": ((9,), (Periodic(), Periodic())),
    "2d-mixed": ((5, 7), (Periodic(), Periodic()), (Robin(3.0, 1.0), Dirichlet(0.5))),
    "3d-mixed": ((3, 4, 5), (Neumann(), Dirichlet(2.0)), (Periodic(), Periodic()), None),
    "2d-periodic-pair": ((2, 6), (Periodic(), Periodic()), (Neumann(), Neumann())),
    "2d-periodic-single-layer": ((1, 6), (Periodic(), Periodic()), (Dirichlet(1.0), Neumann())),
    "2d-single-layer": ((1, 6), (Neumann(), Dirichlet(1.0)), (Dirichlet(1.0), Neumann())),
}


# every case with constant D by default, and varying D in two; all of them with -m slow
DIAGONAL_VARYING = ("1d-dirichlet-robin", "2d-mixed")


@pytest.mark.parametrize(
    ("case", "variable_D"),
    [
        pytest.param(
            case, variable_D, marks=SLOW if variable_D and case not in DIAGONAL_VARYING else ()
        )
        for variable_D in (False, True)
        for case in DIAGONAL_CASES
    ],
    ids=[
        f"{case}-{'variableD' if variable_D else 'constD'}"
        for variable_D in (False, True)
        for case in DIAGONAL_CASES
    ],
)
def test_diffusion_diagonal_is_the_operator_diagonal(case, variable_D):
    # the Jacobi preconditioner of the implicit solvers: the diagonal of the matrix A of the
    # affine map c -> diffusion(c) = A c + b, for every boundary kind
    shape, *faces = DIAGONAL_CASES[case]
    faces = [f if f is not None else (Robin(0.5, 0.0), Neumann()) for f in faces]
    if len(faces) < len(shape):
        faces = faces * len(shape)
    grid = Grid(shape, spacing=(0.7, 1.1, 0.5)[: len(shape)])
    boundary = Boundary(tuple(faces))
    rng = np.random.default_rng(90)
    D = random_D(shape, rng) if variable_D else 1.3
    A, _ = _affine_diffusion(f64(D), grid, boundary)
    D_faces = operators.face_diffusivity(f64(D), grid, boundary)
    diagonal = operators.diffusion_diagonal(D_faces, grid, boundary, jnp.float64)
    assert diagonal.shape == grid.shape and diagonal.dtype == jnp.float64
    np.testing.assert_allclose(
        np.asarray(diagonal).ravel(), np.diag(np.asarray(A)), rtol=1e-13, atol=1e-13
    )
    assert np.all(np.asarray(diagonal) <= 0)


def test_steady_state_by_time_marching():
    # the same robin/dirichlet steady state reached by engine.Simulation
    nx, length, D = 20, 10.0, 2.0
    low, high = Robin(h=0.3, outside=4.0), Dirichlet(1.0)
    grid = Grid((nx,), spacing=length / nx)
    boundary = Boundary.from_faces(1, x_min=low, x_max=high)
    model = Model(grid, species=(Species("c", diffusion=D, boundary=boundary, initial=0.0),))
    sim = Simulation(model, dtype="float64")
    slowest = D * (np.pi / (2 * length)) ** 2  # decay rate of the slowest mode, a lower bound
    state = sim.advance(sim.initial_state(), 40 / slowest)
    x = grid.coordinates(0)
    exact = analytic_1d_steady(x, 0.0, length, [D], length, low, high)
    np.testing.assert_allclose(np.asarray(state.fields["c"]), exact, rtol=0, atol=1e-9)


# --- periodic diffusion against the exact semi-discrete (Fourier) solution -------------------


@pytest.mark.parametrize(
    ("shape", "spacing"), [((32,), (0.5,)), ((16, 12), (0.5, 0.8))], ids=["1d", "2d"]
)
def test_periodic_diffusion_matches_spectral_solution(shape, spacing):
    D, t_end = 2.0, 1.0
    grid = Grid(shape, spacing)
    rng = np.random.default_rng(50)
    c0 = 2.0 + rng.normal(size=shape)
    boundary = Boundary.uniform(grid.ndim, Periodic())
    model = Model(grid, species=(Species("c", diffusion=D, boundary=boundary, initial=c0),))
    fastest = sum(4 * D / h**2 for h in spacing)
    sim = Simulation(model, dtype="float64", scheme="ssprk3", dt=0.2 / fastest)
    state = sim.advance(sim.initial_state(), t_end)
    numeric = np.asarray(state.fields["c"])

    k = np.meshgrid(*(np.arange(n) for n in shape), indexing="ij")
    rates = sum(4 * D / h**2 * np.sin(np.pi * ka / n) ** 2 for ka, h, n in zip(k, spacing, shape))
    exact = np.real(np.fft.ifftn(np.fft.fftn(c0) * np.exp(-rates * t_end)))
    fluctuation = np.abs(exact - exact.mean()).max()
    assert fluctuation > 0.05  # the test compares a field that has not decayed away
    assert np.abs(numeric - exact).max() <= 1e-6 * fluctuation
    assert numeric.mean() == pytest.approx(c0.mean(), rel=1e-13)


# --- chemotaxis ------------------------------------------------------------------------------


def chemotaxis_model(grid, c, n0, M, chi, boundary=None):
    return Model(
        grid,
        species=(Species("c", diffusion=0.0, decay=0.0, initial=c),),
        populations=(
            Population(
                "n",
                motility=M,
                chemotaxis_species="c",
                chemotaxis_sensitivity=chi,
                boundary=boundary,
                initial=n0,
            ),
        ),
    )


def test_chemotaxis_relaxes_to_boltzmann_first_order():
    # -M n' + chi n c' = 0 with zero-flux walls: n ~ exp(chi c / M). The upwind scheme's
    # discrete equilibrium is n[i+1] / n[i] = 1 + chi c' h / M, first order in h.
    length, M, chi, slope = 100.0, 10.0, 20.0, 0.01  # Peclet chi slope length / M = 2
    relax_rate = M * (np.pi / length) ** 2 + (chi * slope) ** 2 / (4 * M)
    ns = (16, 32, 64, 128)
    errors = []
    for n in ns:
        grid = Grid((n,), spacing=length / n)
        x = grid.coordinates(0)
        c = slope * x
        n0 = 1.0 + 0.5 * np.cos(3 * np.pi * x / length)
        sim = Simulation(chemotaxis_model(grid, c, n0, M, chi), dtype="float64")
        state = sim.advance(sim.initial_state(), 25 / relax_rate)
        cells = np.asarray(state.fields["n"])
        # c stayed fixed (to rounding: the SSP stages recombine it)
        np.testing.assert_allclose(np.asarray(state.fields["c"]), c, rtol=1e-13)
        assert cells.min() >= 0
        assert cells.sum() == pytest.approx(n0.sum(), rel=1e-10)
        # converged to the scheme's own equilibrium
        discrete = (1 + chi * slope * grid.spacing[0] / M) ** np.arange(n)
        discrete *= n0.sum() / discrete.sum()
        np.testing.assert_allclose(cells, discrete, rtol=1e-8)
        boltzmann = np.exp(chi * c / M)
        boltzmann *= n0.sum() / boltzmann.sum()
        errors.append(np.abs(cells - boltzmann).max() / boltzmann.max())
    p = order(ns, errors)
    assert abs(p - 1) < 0.2, (errors, p)
    assert errors[-1] < 0.01


def test_chemotaxis_boltzmann_2d_oblique_gradient():
    # a gradient along both axes: the equilibrium is exp(chi c / M) on the plane
    grid = Grid((24, 32), spacing=(50.0 / 24, 80.0 / 32))
    y, x = grid.centres()
    M, chi = 10.0, 15.0
    c = 0.01 * x - 0.015 * y
    n0 = np.ones(grid.shape)
    sim = Simulation(chemotaxis_model(grid, c, n0, M, chi), dtype="float64")
    relax_rate = M * (np.pi / 80.0) ** 2
    state = sim.advance(sim.initial_state(), 25 / relax_rate)
    cells = np.asarray(state.fields["n"])
    assert cells.sum() == pytest.approx(n0.sum(), rel=1e-10)
    # the discrete equilibrium is the product of the per-axis upwind ratios
    ry = 1 / (1 + chi * 0.015 * grid.spacing[0] / M)  # the drift points down y
    rx = 1 + chi * 0.01 * grid.spacing[1] / M
    iy, ix = np.indices(grid.shape)
    discrete = ry**iy * rx**ix
    discrete *= n0.sum() / discrete.sum()
    np.testing.assert_allclose(cells, discrete, rtol=1e-8)
    boltzmann = np.exp(chi * c / M)
    boltzmann *= n0.sum() / boltzmann.sum()
    assert np.abs(cells - boltzmann).max() / boltzmann.max() < 0.05


@partial(jax.jit, static_argnums=(3, 4))
def _chemotaxis(n, c, chi, grid, boundary):
    return operators.chemotaxis(n, c, chi, grid, boundary)


def apply_chemotaxis(n, c, chi, grid, boundary):
    out = _chemotaxis(f64(n), f64(c), f64(chi), grid, boundary)
    assert out.dtype == jnp.float64
    return np.asarray(out)


def test_chemotaxis_upwind_flux_1d_by_hand():
    # -div(chi n c') with the upwind face value, written out voxel by voxel
    rng = np.random.default_rng(60)
    nx, h, chi = 9, 0.5, 1.7
    grid = Grid((nx,), spacing=h)
    c, n = rng.normal(size=nx), rng.uniform(0, 1, nx)
    for kind in ("neumann", "periodic"):
        boundary = closed_boundary((kind,))
        out = apply_chemotaxis(n, c, chi, grid, boundary)
        faces = range(nx) if kind == "periodic" else range(nx - 1)
        expected = np.zeros(nx)
        for i in faces:  # the face between voxel i and i + 1 (wrapped)
            j = (i + 1) % nx
            u = chi * (c[j] - c[i]) / h
            flux = u * (n[i] if u > 0 else n[j])
            expected[i] -= flux / h
            expected[j] += flux / h
        np.testing.assert_allclose(out, expected, rtol=1e-13, atol=1e-14)


@pytest.mark.parametrize(("ndim", "kinds"), CONSERVATION_CASES)
def test_chemotaxis_conserves_total(ndim, kinds):
    rng = np.random.default_rng(70 + ndim)
    grid = Grid((7, 6, 5)[:ndim], spacing=(0.7, 1.3, 2.0)[:ndim])
    boundary = closed_boundary(kinds)
    n = rng.uniform(0, 3, grid.shape)
    c = 10 * rng.normal(size=grid.shape)
    rate = apply_chemotaxis(n, c, 2.3, grid, boundary)
    assert np.abs(rate).max() > 1e-3
    assert abs(rate.sum()) <= 1e-14 * np.abs(rate).sum() * grid.size
    # a uniform c drives no drift at all
    flat = apply_chemotaxis(n, np.full(grid.shape, 4.0), 2.3, grid, boundary)
    assert np.all(flat == 0)


@pytest.mark.parametrize("M", [0.0, 0.7])
def test_chemotaxis_positivity_in_steep_gradient(M):
    # a checkerboard of c: every low voxel drains into all its neighbours at once, at the
    # largest rate the stability bound allows for; cells start absent from many voxels
    grid = Grid((20, 20), spacing=1.0)
    rng = np.random.default_rng(80)
    iy, ix = np.indices(grid.shape)
    c = 100.0 * ((iy + ix) % 2) + 5.0 * rng.random(grid.shape)
    n0 = np.where(rng.random(grid.shape) < 0.7, rng.random(grid.shape), 0.0)
    model = chemotaxis_model(grid, c, n0, M, chi=3.0)

    sim = Simulation(model, dtype="float64", dt="auto")
    state = sim.initial_state()
    stable = sim.stable_dt(state)
    low_voxels = ((iy + ix) % 2 == 0) & (n0 > 0)
    for _ in range(8):  # one step per advance: check every step
        state = sim.advance(state, state.t + sim.time_step(state))
        cells = np.asarray(state.fields["n"])
        assert cells.min() >= 0
        assert cells.sum() == pytest.approx(n0.sum(), rel=1e-12)
    assert state.step == 8
    # the low voxels were drained almost empty: positivity was at stake
    assert np.asarray(cells)[low_voxels].max() < 0.05 * n0[low_voxels].max()

    # control: forward Euler 30 % beyond the stable step does produce negative densities
    unstable = Simulation(model, dtype="float64", scheme="euler", dt=1.3 * stable)
    state = unstable.initial_state()
    state = unstable.advance(state, 1.3 * stable)
    assert np.asarray(state.fields["n"]).min() < 0


# --- the time-marching harness used above ----------------------------------------------------


def test_initial_state_survives_advance():
    # restarting from `sim.initial_state()` after an advance (e.g. to compare two runs) must
    # work: `advance` donates the state's buffers, which must not be the model's own `initial`
    # arrays (the time-marched tests above avoid restarting because of this)
    grid = Grid((6,), spacing=1.0)
    c0 = np.linspace(0.0, 1.0, 6)
    sim = Simulation(
        Model(grid, species=(Species("c", diffusion=1.0, initial=c0),)), dtype="float64"
    )
    first = sim.advance(sim.initial_state(), 1.0).numpy()["c"]
    np.testing.assert_array_equal(sim.initial_state().numpy()["c"], c0)
    again = sim.advance(sim.initial_state(), 1.0).numpy()["c"]
    np.testing.assert_array_equal(again, first)


@pytest.mark.parametrize(
    "faces",
    [
        {},
        {"x_min": Dirichlet(0.0), "y_max": Robin(2.0)},
        {"x_min": Dirichlet(0.5)},
        {"y_max": Robin(2.0, 0.3)},
        {"x_min": Periodic(), "x_max": Periodic(), "y_min": Robin(0.0, 1.0)},
    ],
)
def test_inhomogeneous_faces_are_those_that_drive_a_zero_field(faces):
    """`Boundary.inhomogeneous` (where CG solves fence their boundary values) holds exactly
    when div(D grad 0) is not 0: a dirichlet value, or a robin outside value with h > 0."""
    grid = Grid((6, 5), spacing=2.0)
    boundary = Boundary.from_faces(2, **faces)
    D_faces = operators.face_diffusivity(jnp.asarray(3.0), grid, boundary)
    drive = operators.diffusion(jnp.zeros(grid.shape), D_faces, grid, boundary)
    assert bool(jnp.any(drive != 0)) == boundary.inhomogeneous


def test_faces_that_cannot_hold_are_refused_by_name():
    """A robin transfer coefficient must be >= 0 (NaN is no number >= 0), and an axis is
    periodic on both faces or on neither, whichever face alone is given as periodic."""
    for h in (-1.0, float("nan")):
        with pytest.raises(ValueError, match="robin.h: must be >= 0"):
            Robin(h)
    for pair in ((Periodic(), Neumann()), (Neumann(), Periodic())):
        with pytest.raises(ValueError, match="boundary.y: periodic must be set on both y_min"):
            Boundary((pair, (Neumann(), Neumann())))
