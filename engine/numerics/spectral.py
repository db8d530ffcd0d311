"""Exact solution of the semi-discrete diffusion equation for constant D and decay on axes whose
faces are neumann, dirichlet or periodic.

Along each axis the cell-centred 3-point Laplacian is diagonalised by a sine or cosine basis:
the DCT-II between two zero-flux faces (eigenvalues -4/h^2 sin^2(pi k / 2N)), the DST-II between
two dirichlet faces (a dirichlet value sits half a voxel out: the field is odd about the face;
-4/h^2 sin^2(pi (k + 1) / 2N)), quarter-wave sines or cosines between one of each
(-4/h^2 sin^2(pi (2k + 1) / 4N)), and the FFT on a periodic axis (-4/h^2 sin^2(pi k / N)).
exp(dt D Laplacian) is then a multiplication in transform space: no time error, any dt. Non-zero
dirichlet values act as a constant supply on the edge layers. The sine and cosine transforms are
matrix products on axes shorter than `fft_min_length()`, FFTs of twice the length on longer
ones.
"""

from __future__ import annotations

import functools
import math
from dataclasses import dataclass
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from engine.numerics import operators, parallel
from engine.numerics.boundary import Boundary, Dirichlet, Neumann, Periodic, Robin
from engine.numerics.grid import Grid


def eligible(D, decay, boundary: Boundary) -> bool:
    """Constant D and decay with only neumann, dirichlet and periodic faces (static structure)."""
    return (
        jnp.ndim(D) == 0
        and jnp.ndim(decay) == 0
        and all(
            isinstance(face, Neumann | Dirichlet | Periodic)
            for pair in boundary.faces
            for face in pair
        )
    )


def _kinds(boundary: Boundary, axis: int) -> tuple[str, str]:
    """The (low, high) face kinds of a non-periodic axis: "neumann" or "dirichlet"."""
    return tuple(
        "dirichlet" if isinstance(f, Dirichlet) else "neumann" for f in boundary.faces[axis]
    )


def laplacian_eigenvalues(grid: Grid, boundary: Boundary) -> list[np.ndarray]:
    """Eigenvalues (1/um^2, <= 0) of the discrete Laplacian along each axis, each shaped to
    broadcast over the grid: an eigenvalue of the grid's Laplacian is their sum."""
    eigenvalues = []
    for axis, (n, h) in enumerate(zip(grid.shape, grid.spacing)):
        if boundary.is_periodic(axis):
            angle = np.pi * np.arange(n) / n
        else:
            angle = _angles(n, *_kinds(boundary, axis))
        shape = [1] * grid.ndim
        shape[axis] = n
        eigenvalues.append((-4 / h**2 * np.sin(angle) ** 2).reshape(shape))
    return eigenvalues


def mode_rates(D, eigenvalues):
    """D lambda_k (1/s, <= 0) of every mode of the grid from the per-axis eigenvalues: a
    broadcast sum that XLA fuses into what reads it, so that no grid-sized array of rates is
    held through a loop."""
    return D * sum(eigenvalues[1:], eigenvalues[0])


def axis_eigenvalues(grid: Grid, boundary: Boundary, dtype) -> tuple:
    """`laplacian_eigenvalues` on the device, opaque to XLA: a grid-sized array of
    eigenvalues would be captured into the compiled program (8 MB per field at 128^3) and its
    exponentials evaluated while compiling, which made compilation slow."""
    per_axis = [jnp.asarray(a, dtype) for a in laplacian_eigenvalues(grid, boundary)]
    return tuple(lax.optimization_barrier(per_axis))


@dataclass(frozen=True)
class Propagation:
    """Loop-invariant data of the exact solves of one field (`propagation`): D (um^2/s) and
    decay (1/s), the Laplacian's eigenvalues along each axis (`axis_eigenvalues`), the basis
    matrix of each non-periodic axis (None on periodic ones), and the transform of the supply
    that non-zero dirichlet values make (field units/s; None without)."""

    D: Any
    decay: Any
    eigenvalues: tuple
    matrices: tuple
    inflow: Any

    def rates(self):
        """The rate of each mode (1/s, >= 0: decay - D lambda_k), formed where it is read."""
        return self.decay - mode_rates(self.D, self.eigenvalues)


def propagation(D, decay, grid: Grid, boundary: Boundary, dtype) -> Propagation:
    """The `Propagation` of dc/dt = D lap c - decay c on this grid, made once per loop."""
    eigenvalues = axis_eigenvalues(grid, boundary, dtype)
    matrices = transform_matrices(grid, boundary, dtype)
    inflow = None
    if boundary.inhomogeneous:  # eligible faces: a dirichlet value
        D_faces = operators.face_diffusivity(jnp.asarray(D, dtype), grid, boundary)
        supply = operators.diffusion(jnp.zeros(grid.shape, dtype), D_faces, grid, boundary)
        inflow = _forward(supply, boundary, matrices)
    D, decay = (jnp.asarray(x, dtype) for x in (D, decay))
    return Propagation(D, decay, eigenvalues, matrices, inflow)


def phi_functions(x):
    """exp(-x) - 1, phi1(-x) = (1 - exp(-x)) / x and phi2(-x) = (exp(-x) - 1 + x) / x^2 for
    x >= 0: below 0.5, where the closed forms cancel, by sixteen terms of their series
    sum_n (-x)^n / (n + k)! (truncated below 1e-19 of their value there)."""
    small = x < 0.5
    y = jnp.where(small, 1.0, x)
    change = jnp.expm1(-x)
    series = []
    for k in (1, 2):
        total = 1.0 / math.factorial(15 + k)
        for n in range(14, -1, -1):
            total = total * -x + 1.0 / math.factorial(n + k)
        series.append(total)
    phi1 = jnp.where(small, series[0], -change / y)
    phi2 = jnp.where(small, series[1], (change + y) / y**2)
    return change, phi1, phi2


def reaction_change(
    c,
    forcing,
    sink,
    dt,
    p: Propagation,
    boundary: Boundary,
    implicit: bool,
    max_iterations=30,
):
    """The change over dt of c under dc/dt = D lap c - decay c - sink c + forcing, with the
    sink (1/s, >= 0, per voxel; None: none) and the forcing (field units/s; None: none) held
    over the step: the exponential trapezoidal rule, with diffusion, decay and a uniform rate
    k exact in the eigenbasis and the remainder, (k - sink) c, a forcing interpolated
    linearly between the step's ends. No splitting: sinks that differ from voxel to voxel act
    together with diffusion. k is the sink's mean weighted by c (`exact_sink_rate`): then the
    remainder adds nothing to the field's total, and the slow, smooth part of the solution,
    which sets the step, decays at its own rate exactly rather than by the quadrature of a
    remainder (with k the largest sink: a hundred times the error on voxel-scale sinks).
    The end value is `implicit`ly solved to the dtype's rounding by conjugate gradients in
    the eigenbasis, where its system is symmetric and positive definite at any dt; or, not
    `implicit`, taken at the start (first order, a predictor). With k below a voxel's sink
    the result is not non-negative by construction: `linear_change` clips the change at -c.
    Formed as a change, whose rounding scales with the change: the total of a field that
    only diffuses between zero-flux faces gains nothing from the transforms' rounding."""

    def forward(x):
        return _forward(x, boundary, p.matrices)

    def inverse(x):
        return _inverse(x, boundary, p.matrices, c.dtype)

    if sink is not None and jnp.ndim(sink) == 0:  # uniform: exact with the linear part
        k, sink = jnp.asarray(sink, c.dtype), None
    else:
        k = jnp.zeros((), c.dtype) if sink is None else exact_sink_rate(sink, c)
    change, phi1, phi2 = phi_functions(dt * (p.rates() + k))
    mixed = change * forward(c)
    if forcing is not None:
        mixed = mixed + dt * phi1 * forward(forcing)
    if p.inflow is not None:
        mixed = mixed + dt * phi1 * p.inflow
    if sink is None:
        return inverse(mixed)
    excess = k - sink
    start = forward(excess * c)
    if not implicit:
        return inverse(mixed + dt * phi1 * start)
    # change = F^-1 (mixed + dt phi1 start + dt phi2 F(excess change)): in the eigenbasis,
    # scaled by root = sqrt(dt phi2), u = F(change) / root solves u - S u = b with S =
    # root F excess F^-1 root symmetric, and 1 - S positive definite at any dt (1 / phi2(z) >
    # z: P^-1 = 1 / (dt phi2) > rates + k >= k - sink, P = dt phi2 in the eigenbasis)
    root = jnp.sqrt(dt * phi2)
    b = (mixed + dt * phi1 * start) / root
    floor = 1e-6 if c.dtype == jnp.float32 else 1e-13
    size = jnp.max(jnp.abs(c))

    def coupling(u):  # (S u, the change that u stands for)
        change = inverse(root * u)
        return root * forward(excess * change), change

    def solve(_, rhs):  # to the rounding of the field or of its change (from 0: all of it)
        return _conjugate_gradients(coupling, rhs, floor, size, max_iterations)

    def transpose_solve(vecmat, rhs):
        return _conjugate_gradients(lambda u: (u - vecmat(u), u), rhs, floor, 0, max_iterations)

    u = lax.custom_linear_solve(lambda u: u - coupling(u)[0], b, solve, transpose_solve)
    return inverse(root * u)


def _conjugate_gradients(coupling, b, floor, size, max_iterations):
    """u with u - S u = b, for S symmetric and 1 - S positive definite, by conjugate
    gradients from 0: `coupling(p)` gives S p and what p measures in (the change it stands
    for), and the iteration stops once what is left after an update (the update x r / (1 -
    r), r its ratio to the one before; the first update itself) is at most `floor` x the
    larger of `size` and the first update, or after `max_iterations`. From 0 the first
    update is the explicit one, S's part taken at the start. An iteration costs one S (two
    transforms), as a fixed-point iteration u <- b + S u does, which converges only where
    |k - sink| dt / 2 < 1. Dot products (real parts) round alike on one device and split
    (`parallel.dot`). It runs on b scaled to a largest value of 1: the squares of a field
    near 1e-19 (float32; IL-2 hours after a dose) underflow, which stopped the iteration at
    its first step and made steps' errors erratic."""
    largest = jnp.max(jnp.abs(b))
    unit = jnp.where(largest > 0, largest, 1)
    b, size = b / unit, size / unit

    def dot(x, y):
        if jnp.iscomplexobj(x):
            return parallel.dot(x.real, y.real) + parallel.dot(x.imag, y.imag)
        return parallel.dot(x, y)

    def iterate(carry):
        i, u, r, p, rr, before, _, scale = carry
        sp, measure = coupling(p)
        ap = p - sp
        pap = dot(p, ap)
        alpha = jnp.where(pap > 0, rr / jnp.where(pap > 0, pap, 1), 0)
        r = r - alpha * ap
        rr_next = dot(r, r)
        beta = jnp.where(rr > 0, rr_next / jnp.where(rr > 0, rr, 1), 0)
        moved = jnp.max(jnp.abs(alpha * measure))
        scale = jnp.where(i == 0, jnp.maximum(scale, moved), scale)
        # what is left after it, from the ratio of the last two updates (linear convergence)
        ratio = moved / jnp.where(before > 0, before, 1)
        shrinking = (i > 0) & (ratio < 1)
        left = jnp.where(shrinking, moved * ratio / (1 - jnp.where(shrinking, ratio, 0)), moved)
        return i + 1, u + alpha * p, r, r + beta * p, rr_next, moved, left, scale

    def unconverged(carry):
        i, *_, left, scale = carry
        return (i < max_iterations) & (left > floor * scale)

    zero = jnp.zeros((), jnp.real(b).dtype)
    start = (0, jnp.zeros_like(b), b, b, dot(b, b), zero, zero + jnp.inf, zero + size)
    return lax.while_loop(unconverged, iterate, start)[1] * unit


def exact_sink_rate(sink, c):
    """The uniform sink rate (1/s) that `reaction_change` takes exactly: the sink's mean
    weighted by the field c, sum(sink c) / sum(c), which leaves the remainder (k - sink) c
    a zero total; the plain mean where c sums to 0. Within the sink's range, and rounded
    alike on one device and split (`parallel.dot`)."""
    total = parallel.dot(c, jnp.ones_like(c))
    weighted = parallel.dot(sink, c) / jnp.where(total > 0, total, 1)
    k = jnp.where(total > 0, weighted, parallel.mean(sink))
    return jnp.clip(k, jnp.min(sink), jnp.max(sink))


def transform_matrices(grid: Grid, boundary: Boundary, dtype) -> tuple:
    """The basis matrix of each axis transformed by a matrix product (None on the others:
    periodic axes and those of at least `fft_min_length()`), opaque to XLA: with constant
    matrices, XLA evaluates the transform of a constant array (a uniform forcing) while
    compiling, a full matrix product at compile time. Shared by every transform that uses
    them, so that XLA still merges repeated transforms of the same field."""
    products = _axes(boundary, grid.shape)[0]
    matrices = [
        jnp.asarray(basis_matrix(n, *_kinds(boundary, axis)), dtype) if axis in products else None
        for axis, n in enumerate(grid.shape)
    ]
    return tuple(lax.optimization_barrier(matrices))


def _angles(n: int, low: str, high: str) -> np.ndarray:
    """theta_k of the n modes between faces of these kinds: the modes are cos or sin of
    theta_k (2i + 1) (voxel i), the eigenvalues -4/h^2 sin^2 theta_k."""
    k = np.arange(n)
    if low == high:
        return np.pi * (k + (low == "dirichlet")) / (2 * n)
    return np.pi * (2 * k + 1) / (4 * n)


@functools.lru_cache(maxsize=32)
def basis_matrix(n: int, low: str = "neumann", high: str = "neumann") -> np.ndarray:
    """The orthonormal basis (n, n), float64, of the 3-point Laplacian between faces of these
    kinds, one mode per row: X_k = sum_i M[k, i] x_i, and M^T inverts it. A mode is even about
    a neumann face and odd about a dirichlet one: cosines start at a neumann low face, sines at
    a dirichlet one. neumann on both faces: the DCT-II; dirichlet on both: the DST-II."""
    phase = _angles(n, low, high)[:, None] * (2 * np.arange(n)[None, :] + 1)
    matrix = np.sin(phase) if low == "dirichlet" else np.cos(phase)
    return matrix / np.linalg.norm(matrix, axis=1, keepdims=True)


def basis_transform(x, axes, inverse: bool = False, matrices=None):
    """Into the eigenbasis of each axis in `axes` (out of it with `inverse`), one matrix
    product per axis, with `matrices[axis]` (`transform_matrices`), or the DCT-II (neumann
    faces) without. XLA
    computes `dctn` through a complex FFT of the extended signal; on axes shorter than
    `fft_min_length()` the products are faster on a CPU and are what accelerators do best.
    Full precision: no reduced-precision (TF32) products. Each product is the same
    row-major (lines, n) x (n, n) one whether the field is split or not: the lines are moved
    last behind a barrier (so that XLA cannot fold the transposes into the product, which it
    did differently for split fields), and on split fields each device holds whole lines
    before and after it (`parallel.lay_out`) and the whole matrix (`parallel.replicate`).
    The result is then bitwise the single-device one."""
    for axis in axes:
        if matrices is None:
            matrix = jnp.asarray(basis_matrix(x.shape[axis]), x.dtype)
        else:
            matrix = matrices[axis]
        matrix = parallel.replicate(matrix if inverse else matrix.T)
        x = parallel.lay_out(x, whole_axis=axis)
        lines = lax.optimization_barrier(jnp.moveaxis(x, axis, -1))
        product = jnp.matmul(lines, matrix, precision=lax.Precision.HIGHEST)
        x = jnp.moveaxis(lax.optimization_barrier(product), -1, axis)
        x = parallel.lay_out(x, whole_axis=axis)
    return x


def fft_basis_transform(x, axis: int, low: str, high: str, inverse: bool = False):
    """Into the eigenbasis `basis_matrix(n, low, high)` along `axis` (out of it with `inverse`)
    through an FFT of length 2n: O(log n) operations per voxel where a matrix product takes n.
    The modes are cos or sin of theta_k (2i + 1), theta_k = pi (k + s) / 2n, so
    X_k = w_k Re (or -Im) of exp(-i theta_k) FFT_2n(x_i exp(-i pi s i / n))_k, w_k the rows'
    normalisation, and the inverse sums that series. Real FFTs where s = 0 (neumann faces).
    On split fields the axis is whole on every device, as for `basis_transform`."""
    n, dtype = x.shape[axis], x.dtype
    complex_dtype = jnp.result_type(dtype, jnp.complex64)
    theta = _angles(n, low, high)
    shift = theta[0] * 2 * n / np.pi  # s: 0, 1 or 1/2
    sine = low == "dirichlet"
    weights = np.full(n, np.sqrt(2 / n))
    if low == high:  # the constant mode (neumann) or the alternating sine (dirichlet)
        weights[-1 if sine else 0] = np.sqrt(1 / n)
    ramp = np.exp(-1j * np.pi * shift * np.arange(n) / n)

    def along(vector, dtype):
        shape = [1] * x.ndim
        shape[axis] = n
        return jnp.asarray(vector.reshape(shape), dtype)

    def first_n(y):
        return lax.slice_in_dim(y, 0, n, axis=axis)

    x = parallel.lay_out(x, whole_axis=axis)
    if not inverse:
        if shift == 0:
            spectrum = jnp.fft.rfft(x, n=2 * n, axis=axis)
        else:
            spectrum = jnp.fft.fft(x * along(ramp, complex_dtype), n=2 * n, axis=axis)
        z = first_n(spectrum) * along(np.exp(-1j * theta), complex_dtype)
        out = (-z.imag if sine else z.real) * along(weights, dtype)
    else:
        series = weights * np.exp(1j * theta)
        if shift == 0:  # a real series: irfft counts every mode twice but k = 0
            series[0] *= 2
        v = x * along(series, complex_dtype)
        if shift == 0:
            out = first_n(jnp.fft.irfft(v, n=2 * n, axis=axis)) * n
        else:
            z = first_n(jnp.fft.ifft(v, n=2 * n, axis=axis)) * along(
                2 * n * ramp.conj(), complex_dtype
            )
            out = z.imag if sine else z.real
    return parallel.lay_out(out.astype(dtype), whole_axis=axis)


def fourier_transform(x, axes, inverse: bool = False):
    """FFT (inverse FFT with `inverse`) along `axes`, one whole axis at a time on split fields."""
    transform = jnp.fft.ifft if inverse else jnp.fft.fft
    for axis in axes:
        x = transform(parallel.lay_out(x, whole_axis=axis), axis=axis)
    return x


FFT_MIN_LENGTH = 1024
"""On a CPU, non-periodic axes at least this long are transformed by FFTs
(`fft_basis_transform`), shorter ones by matrix products (`basis_transform`): a product costs
N operations per voxel and an FFT about log N; on a CPU the two are about even from 256 to
1024 voxels per axis and the FFTs well ahead beyond (measurements:
docs/performance-notes.md)."""

ACCELERATOR_FFT_MIN_LENGTH = 2048
"""`FFT_MIN_LENGTH` on accelerators, which run the products best, and where the FFTs' complex
buffers of twice the axis' length, made for every field at once, more than double the step's
peak memory just when the grid is largest: six imex fields at 1024^3 held 25.4 bytes per
voxel and field with FFTs and 11.3 with products (docs/performance-notes.md)."""


def fft_min_length() -> int:
    """The shortest non-periodic axis transformed by FFTs on the default backend."""
    return FFT_MIN_LENGTH if jax.default_backend() == "cpu" else ACCELERATOR_FFT_MIN_LENGTH


def _axes(boundary: Boundary, shape) -> tuple[list[int], list[int], list[int]]:
    """(axes transformed by matrix products, non-periodic axes transformed by FFTs, periodic
    axes transformed by FFTs)."""
    axes = range(len(boundary.faces))
    periodic = [a for a in axes if boundary.is_periodic(a)]
    long = [a for a in axes if a not in periodic and shape[a] >= fft_min_length()]
    return [a for a in axes if a not in periodic + long], long, periodic


def _forward(x, boundary: Boundary, matrices):
    products, long, periodic = _axes(boundary, x.shape)
    x = basis_transform(x, products, matrices=matrices)
    for axis in long:
        x = fft_basis_transform(x, axis, *_kinds(boundary, axis))
    return fourier_transform(x, periodic)


def _inverse(x, boundary: Boundary, matrices, dtype):
    products, long, periodic = _axes(boundary, x.shape)
    if periodic:
        x = fourier_transform(x, periodic, inverse=True).real.astype(dtype)
    for axis in long:
        x = fft_basis_transform(x, axis, *_kinds(boundary, axis), inverse=True)
    return parallel.lay_out(basis_transform(x, products, inverse=True, matrices=matrices))


@dataclass(frozen=True)
class Preconditioner:
    """A constant-coefficient operator near div(D grad) that transforms invert exactly
    (`preconditioner`): its D (um^2/s) and per-axis eigenvalues (`axis_eigenvalues`), the rate
    of its slowest decaying mode (1/s, > 0; 1 for a single voxel), its basis matrices and
    faces."""

    D: Any
    eigenvalues: tuple
    slowest: Any
    matrices: tuple
    boundary: Boundary

    def rates(self):
        """Its mode rates (1/s, <= 0), formed where they are read."""
        return mode_rates(self.D, self.eigenvalues)


def preconditioner(D, grid: Grid, boundary: Boundary, dtype) -> Preconditioner:
    """The operator with D's mean and robin faces made neumann (transfer slower than diffusion
    across a voxel, h dx < D, as for cytokines leaving tissue): as a CG preconditioner it
    bounds the condition number by the spread of D and of the shift about their means,
    whatever the grid size, where the voxel diagonal (Jacobi) leaves it growing as n^2."""
    faces = tuple(
        tuple(Neumann() if isinstance(f, Robin) else f for f in pair) for pair in boundary.faces
    )
    nearby = Boundary(faces)
    D = parallel.mean(jnp.asarray(D, dtype))
    eigenvalues = axis_eigenvalues(grid, nearby, dtype)
    rates = mode_rates(D, eigenvalues)  # before the loop, not held through it
    slowest = -jnp.max(jnp.where(rates < 0, rates, -jnp.inf))
    slowest = jnp.where(jnp.isfinite(slowest), slowest, 1)
    return Preconditioner(D, eigenvalues, slowest, transform_matrices(grid, nearby, dtype), nearby)


def apply_shifted_inverse(r, shift, scale, p: Preconditioner):
    """(shift - scale div(D grad))^-1 r for the operator of `p`: shift a scalar (1/s or
    dimensionless), scale in s; homogeneous faces (r is a residual). A zero shift on zero-flux
    faces leaves the mean undetermined: its mode is then scaled as the slowest decaying one
    (the robin faces that make such a problem well posed remove it at about that rate)."""
    operator = shift - scale * p.rates()
    operator = jnp.where(operator > 0, operator, scale * p.slowest)
    mixed = _forward(r, p.boundary, p.matrices) / operator
    return _inverse(mixed, p.boundary, p.matrices, r.dtype)
