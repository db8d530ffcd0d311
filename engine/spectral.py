"""Exact solution of the semi-discrete diffusion equation for constant D on neumann/periodic axes.

The cell-centred 3-point Laplacian is diagonalised by the DCT-II on a zero-flux axis and by the
FFT on a periodic axis, with eigenvalues -4/h^2 sin^2(pi k / 2N) and -4/h^2 sin^2(pi k / N).
exp(dt D Laplacian) is then a multiplication in transform space: no time error, any dt.
"""

from __future__ import annotations

import functools

import jax.numpy as jnp
import numpy as np
from jax import lax

from engine import parallel
from engine.boundary import Boundary, Neumann, Periodic
from engine.grid import Grid


def eligible(D, decay, boundary: Boundary) -> bool:
    """Constant D and decay with only neumann and periodic faces (static structure)."""
    return (
        jnp.ndim(D) == 0
        and jnp.ndim(decay) == 0
        and all(isinstance(face, Neumann | Periodic) for pair in boundary.faces for face in pair)
    )


def laplacian_eigenvalues(grid: Grid, boundary: Boundary) -> list[np.ndarray]:
    """Eigenvalues (1/um^2, <= 0) of the discrete Laplacian along each axis, each shaped to
    broadcast over the grid: an eigenvalue of the grid's Laplacian is their sum."""
    eigenvalues = []
    for axis, (n, h) in enumerate(zip(grid.shape, grid.spacing)):
        k = np.arange(n)
        angle = np.pi * k / n if boundary.is_periodic(axis) else np.pi * k / (2 * n)
        shape = [1] * grid.ndim
        shape[axis] = n
        eigenvalues.append((-4 / h**2 * np.sin(angle) ** 2).reshape(shape))
    return eigenvalues


def propagators(D, decay, dt, grid: Grid, boundary: Boundary, dtype):
    """Transform-space multipliers of one step of dt (s) of dc/dt = D lap c - decay c + S:
    exp(dt mu) for c and dt phi1(dt mu) for a supply S held constant over the step, with
    mu = D lambda_k - decay; and the DCT matrix of each neumann axis (None on periodic ones),
    made once here for every transform of the step (`transform_matrices`)."""
    # summed on the device from opaque per-axis vectors: a grid-sized array of eigenvalues
    # would be captured into the compiled program (8 MB per field at 128^3) and the
    # exponentials folded while compiling (46 s for a seed scenario on a GPU)
    per_axis = [jnp.asarray(a, dtype) for a in laplacian_eigenvalues(grid, boundary)]
    per_axis = lax.optimization_barrier(per_axis)
    rate = decay - D * sum(per_axis[1:], per_axis[0])
    x = dt * rate
    small = x < 1e-4
    phi1 = jnp.where(small, 1 - x / 2, -jnp.expm1(-x) / jnp.where(small, 1, x))
    return jnp.exp(-x), dt * phi1, transform_matrices(grid, boundary, dtype)


def transform_matrices(grid: Grid, boundary: Boundary, dtype) -> tuple:
    """The DCT matrix of each non-periodic axis (None on periodic ones), opaque to XLA: with
    constant matrices, the transform of a constant array (a uniform forcing) was evaluated
    while compiling (54 s for a 2048^2 product on a GPU). Shared by every transform that
    uses them, so that XLA still merges repeated transforms of the same field."""
    matrices = [
        None if boundary.is_periodic(axis) else jnp.asarray(dct_matrix(n), dtype)
        for axis, n in enumerate(grid.shape)
    ]
    return tuple(lax.optimization_barrier(matrices))


@functools.lru_cache(maxsize=32)
def dct_matrix(n: int) -> np.ndarray:
    """The orthonormal DCT-II matrix (n, n), float64: X_k = sum_i M[k, i] x_i; M^T inverts it."""
    k, i = np.arange(n)[:, None], np.arange(n)[None, :]
    matrix = np.cos(np.pi * k * (2 * i + 1) / (2 * n)) * np.sqrt(2 / n)
    matrix[0] /= np.sqrt(2)
    return matrix


def cosine_transform(x, axes, inverse: bool = False, matrices=None):
    """Orthonormal DCT-II along `axes` (DCT-III, its inverse, with `inverse`), one matrix
    product per axis, with `matrices[axis]` (`transform_matrices`) or a constant matrix. XLA
    computes `dctn` through a complex FFT of the extended signal; the products ran 4.7x
    faster on a 2-core CPU at 128^3 (float32, 10 ms against 49 ms) and are what accelerators
    do best. Full precision: no reduced-precision (TF32) products. Each product is the same
    row-major (lines, n) x (n, n) one whether the field is split or not: the lines are moved
    last behind a barrier (so that XLA cannot fold the transposes into the product, which it
    did differently for split fields), and on split fields each device holds whole lines
    before and after it (`parallel.lay_out`) and the whole matrix (`parallel.replicate`).
    The result is then bitwise the single-device one."""
    for axis in axes:
        if matrices is None:
            matrix = jnp.asarray(dct_matrix(x.shape[axis]), x.dtype)
        else:
            matrix = matrices[axis]
        matrix = parallel.replicate(matrix if inverse else matrix.T)
        x = parallel.lay_out(x, whole_axis=axis)
        lines = lax.optimization_barrier(jnp.moveaxis(x, axis, -1))
        product = jnp.matmul(lines, matrix, precision=lax.Precision.HIGHEST)
        x = jnp.moveaxis(lax.optimization_barrier(product), -1, axis)
        x = parallel.lay_out(x, whole_axis=axis)
    return x


def fourier_transform(x, axes, inverse: bool = False):
    """FFT (inverse FFT with `inverse`) along `axes`, one whole axis at a time on split fields."""
    transform = jnp.fft.ifft if inverse else jnp.fft.fft
    for axis in axes:
        x = transform(parallel.lay_out(x, whole_axis=axis), axis=axis)
    return x


def _forward(x, cosine, fourier, matrices):
    return fourier_transform(cosine_transform(x, cosine, matrices=matrices), fourier)


def _inverse(x, cosine, fourier, matrices, dtype):
    if fourier:
        x = fourier_transform(x, fourier, inverse=True).real.astype(dtype)
    return parallel.lay_out(cosine_transform(x, cosine, inverse=True, matrices=matrices))


def propagate(c, forcing, propagator, integrator, matrices, boundary: Boundary):
    """propagator * c + integrator * forcing, the multipliers (`propagators`) applied in the
    eigenbasis (DCT on neumann axes, FFT on periodic ones): two forward transforms and one
    inverse, or one forward and one inverse where `forcing` is None (none)."""
    cosine = [a for a in range(c.ndim) if not boundary.is_periodic(a)]
    fourier = [a for a in range(c.ndim) if boundary.is_periodic(a)]
    mixed = propagator * _forward(c, cosine, fourier, matrices)
    if forcing is not None:
        mixed = mixed + integrator * _forward(forcing, cosine, fourier, matrices)
    return _inverse(mixed, cosine, fourier, matrices, c.dtype)
