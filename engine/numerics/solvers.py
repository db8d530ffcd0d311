"""Matrix-free linear solves with the diffusion operator: implicit steps and steady states.

Both solve  shift * x - scale * div(D grad x) = rhs  (boundary values moved to the right), an
SPD system for shift > 0, by preconditioned conjugate gradients, and skip the solve when its
start already meets the tolerance. Preconditioned with the voxel diagonal (Jacobi), CG needs
about sqrt(stiffness) iterations, stiffness = largest diagonal / mean shift, each one stencil:
right for imex steps, whose accuracy target keeps dt D/h^2 below 1 (stiffness about 2). With
the exact inverse of a nearby constant-coefficient operator (`spectral.preconditioner`) it
needs a few at any stiffness, each two transforms: right for the steady states of
quasi_steady (stiffness 10^3 and more), on every grid, and more so in float64, where the
tighter tolerance multiplies the diagonal's iterations. The preconditioner is chosen per
stepper, not per solve: a choice per solve would run both under `vmap` (sweeps). The
measurements behind the choice are in docs/performance-notes.md."""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from engine.numerics import operators, parallel, spectral
from engine.numerics.boundary import Boundary
from engine.numerics.grid import Grid


def tolerance(dtype) -> float:
    """CG relative residual target: near the rounding floor of the dtype. 1e-6 in float32
    rather than 1e-5 costs some iterations and keeps runs that differ only in rounding closer
    together (measurements: docs/performance-notes.md)."""
    return 1e-6 if jnp.dtype(dtype) == jnp.float32 else 1e-11


def solve_shifted(
    shift,
    scale,
    rhs,
    D_faces,
    grid: Grid,
    boundary: Boundary,
    x0,
    preconditioner: spectral.Preconditioner | None,
    maxiter=2000,
):
    """x with shift x - scale div(D grad x) = rhs, boundary values (dirichlet, robin) included.

    shift: 1/s or dimensionless (scalar or per voxel, > 0 or with absorbing faces), scale: s.
    CG is preconditioned with the diagonal or, given one (`preconditioner`), spectrally at
    the mean shift.
    """
    affine = operators.diffusion(jnp.zeros_like(rhs), D_faces, grid, boundary)
    matvec = _shifted(shift, scale, D_faces, grid, boundary, affine)
    b = rhs
    if boundary.inhomogeneous:  # behind a fence: a split run forms the sum as a whole one
        b = parallel.fence(lambda rhs, affine: rhs + scale * affine, rhs, affine)
    if preconditioner is None:
        precondition = _jacobi(shift, scale, D_faces, grid, boundary, rhs.dtype)
    else:
        mean_shift = parallel.mean(shift)

        def precondition(r):
            return spectral.apply_shifted_inverse(r, mean_shift, scale, preconditioner)

    return x0 + _correction(matvec, b, x0, precondition, maxiter)


def solve_change(
    shift, scale, rhs, D_faces, grid: Grid, boundary: Boundary, x0, field, maxiter=2000
):
    """x with shift x - scale L x = rhs, L the linear part of div(D grad) (boundary values
    excluded): the change of `field` over an implicit step, by Jacobi-preconditioned CG from
    x0 to `tolerance` relative to the field (as a solve for the new field would be). The
    constant that makes the residual sum to zero is then added, so that the change's total is
    what its equation says (zero on zero-flux faces without decay or supply) to rounding,
    whatever CG's tolerance left in the residual's mean: in float32 that mean had made the
    total drift by about 1e-8 per step. It changes x by less than the residual."""
    affine = operators.diffusion(jnp.zeros_like(rhs), D_faces, grid, boundary)
    matvec = _shifted(shift, scale, D_faces, grid, boundary, affine)
    precondition = _jacobi(shift, scale, D_faces, grid, boundary, rhs.dtype)
    x = x0 + _correction(matvec, rhs, x0, precondition, maxiter, _norm(shift * field))
    ones = jnp.ones_like(rhs)
    return x + _total(rhs - matvec(x)) / _total(matvec(ones))


def _shifted(shift, scale, D_faces, grid: Grid, boundary: Boundary, affine):
    """x -> shift x - scale L x, L the linear part of div(D grad) (`affine`: its value at 0)."""

    def matvec(x):
        linear = operators.diffusion(x, D_faces, grid, boundary) - affine
        return shift * x - scale * linear

    return matvec


def _jacobi(shift, scale, D_faces, grid: Grid, boundary: Boundary, dtype):
    """Division by the voxel diagonal of shift - scale div(D grad)."""
    diagonal = shift - scale * operators.diffusion_diagonal(D_faces, grid, boundary, dtype)

    def precondition(r):
        return r / diagonal

    return precondition


def _correction(matvec, b, x0, precondition, maxiter, size=0.0):
    """What CG adds to x0 to solve matvec(x) = b to `tolerance`: solving for it rather than for
    x, CG's roundings scale with the (small) correction, so runs that round differently agree
    closer. Differentiated by solving the (symmetric) system again, not through the loop.
    `size`: a norm the tolerance is relative to where it exceeds the right-hand side's."""
    # relative to the right-hand side (or `size`) or, where that vanishes (a solution of 0),
    # to the first residual, and never below a floor well clear of subnormal numbers: a
    # residual of 0 is out of reach in rounding, and CG would break down (0/0) trying
    floor = 1e-15 if b.dtype == jnp.float32 else 1e-140
    residual = b - matvec(x0)
    residual_norm = _norm(residual)
    atol = floor + tolerance(b.dtype) * jnp.maximum(jnp.maximum(_norm(b), residual_norm), size)

    def solve(r):
        return lax.custom_linear_solve(
            matvec,
            r,
            lambda A, r: conjugate_gradients(A, r, atol, maxiter, precondition),
            symmetric=True,
        )

    # converged already (a steady state that held): no solve, which for CG would still mean
    # one application of the preconditioner
    return lax.cond(residual_norm <= atol, jnp.zeros_like, solve, residual)


def _total(a):
    """The sum of a's voxels, added in the same order on any split (`parallel.dot`)."""
    return parallel.dot(a, jnp.ones_like(a))


def _norm(a):
    return jnp.sqrt(parallel.dot(a, a))


def conjugate_gradients(matvec, b, atol, maxiter, precondition):
    """x with matvec(x) = b (symmetric positive definite), from x = 0, by preconditioned
    conjugate gradients until |b - matvec(x)| <= atol or after `maxiter` iterations. Its dot
    products add in the same order on any split of the grid, so split runs round as
    single-device ones (jax.scipy's cg adds per-device partial sums)."""
    z = precondition(b)
    start = (jnp.zeros_like(b), b, z, parallel.dot(b, z), 0)

    def unconverged(state):
        _, r, _, _, k = state
        return (parallel.dot(r, r) > atol**2) & (k < maxiter)

    def iteration(state):
        x, r, p, rz, k = state
        q = matvec(p)
        alpha = rz / parallel.dot(p, q)
        x, r = x + alpha * p, r - alpha * q
        z = precondition(r)
        rz_next = parallel.dot(r, z)
        return x, r, z + (rz_next / rz) * p, rz_next, k + 1

    return lax.while_loop(unconverged, iteration, start)[0]
