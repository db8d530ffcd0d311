"""Matrix-free linear solves with the diffusion operator: implicit steps and steady states.

Both solve  shift * x - scale * div(D grad x) = rhs  (boundary values moved to the right), an
SPD system for shift > 0, by preconditioned conjugate gradients. Preconditioned with the voxel
diagonal (Jacobi), CG needs about sqrt(stiffness) iterations, stiffness = largest diagonal /
mean shift, each one stencil; with the exact inverse of a nearby constant-coefficient operator
(`spectral.preconditioner`) a few at any stiffness and grid size, each two transforms (about 20
stencils on a CPU). The solve picks the spectral one above `SPECTRAL_STIFFNESS`. On a 2-core
CPU at 128^3 (float32), an imex step with a robin face (IL-2 and uptaking cells) took 302 ms
with the diagonal and 346 spectral at a stiffness of 10, 453 and 293 at 36, 640 and 315 at 71,
665 and 299 at 106; the implicit-step benchmark's robin case (stiffness 14) 137-157 and
200-214; a quasi_steady run of the infection scenario (far stiffer) 39.1 s and 17.7 s.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax
from jax.scipy.sparse.linalg import cg

from engine import operators, spectral
from engine.boundary import Boundary
from engine.grid import Grid

SPECTRAL_STIFFNESS = 25.0
"""Stiffness above which CG is preconditioned spectrally rather than with the diagonal."""


def tolerance(dtype) -> float:
    """CG relative residual target: near the rounding floor of the dtype."""
    return 1e-5 if jnp.dtype(dtype) == jnp.float32 else 1e-11


def solve_shifted(
    shift,
    scale,
    rhs,
    D_faces,
    grid: Grid,
    boundary: Boundary,
    x0,
    preconditioner: spectral.Preconditioner,
    maxiter=2000,
):
    """x with shift x - scale div(D grad x) = rhs, boundary values (dirichlet, robin) included.

    shift: 1/s or dimensionless (scalar or per voxel, > 0 or with absorbing faces), scale: s.
    `preconditioner` is applied with the mean shift where the system is stiff.
    """
    affine = operators.diffusion(jnp.zeros_like(rhs), D_faces, grid, boundary)

    def matvec(x):
        linear = operators.diffusion(x, D_faces, grid, boundary) - affine
        return shift * x - scale * linear

    diagonal = shift - scale * operators.diffusion_diagonal(D_faces, grid, boundary, rhs.dtype)
    mean_shift = jnp.mean(shift)
    stiff = jnp.max(diagonal) > SPECTRAL_STIFFNESS * mean_shift

    def precondition(r):
        return lax.cond(
            stiff,
            lambda r: spectral.apply_shifted_inverse(r, mean_shift, scale, preconditioner),
            lambda r: r / diagonal,
            r,
        )

    b = rhs + scale * affine
    # relative to the right-hand side or, where that vanishes (a solution of 0), to the first
    # residual, and never below a floor well clear of subnormal numbers: a residual of 0 is
    # out of reach in rounding, and CG would break down (0/0) trying
    floor = 1e-15 if rhs.dtype == jnp.float32 else 1e-140
    residual = b - matvec(x0)
    target = tolerance(rhs.dtype) * jnp.maximum(jnp.linalg.norm(b), jnp.linalg.norm(residual))
    # solved for the correction to x0, so CG's roundings scale with the (small) correction
    # rather than with x: runs that round differently agree more closely
    correction, _ = cg(
        matvec,
        residual,
        x0=jnp.zeros_like(x0),
        tol=0.0,
        atol=target + floor,
        maxiter=maxiter,
        M=precondition,
    )
    return x0 + correction
