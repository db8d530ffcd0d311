"""Finite-volume operators on cell-centred grids, one implementation for 1D, 2D and 3D.

Fluxes live on voxel faces. For each axis the face array holds n + 1 faces: the low boundary
face, the n - 1 interior faces and the high boundary face, so the divergence telescopes and the
total amount changes only through boundary faces. Units: c in field units, D in um^2/s,
lengths in um, results in field units per second.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

from engine.boundary import Boundary, Dirichlet, Neumann, Periodic, Robin
from engine.grid import Grid


def _slab(x, start: int, stop: int, axis: int):
    return lax.slice_in_dim(x, start, stop, axis=axis)


def _diff(x, axis: int):
    """x[i + 1] - x[i] along `axis` (n - 1 values)."""
    n = x.shape[axis]
    return _slab(x, 1, n, axis) - _slab(x, 0, n - 1, axis)


def harmonic_mean(a, b):
    """2ab / (a + b), zero where a + b = 0 (an impermeable face next to D = 0)."""
    total = a + b
    safe = jnp.where(total > 0, total, 1)
    return jnp.where(total > 0, 2 * a * b / safe, 0)


def face_diffusivity(D, grid: Grid, boundary: Boundary) -> tuple:
    """Face coefficients per axis as (interior, low, high): harmonic means of the voxels on
    either side; a boundary face takes its voxel's value, a periodic one the wrapped mean.
    A constant (scalar) D stays scalar."""
    D = jnp.asarray(D)
    if D.ndim == 0:
        return tuple((D, D, D) for _ in range(grid.ndim))
    faces = []
    for axis, n in enumerate(grid.shape):
        first, last = _slab(D, 0, 1, axis), _slab(D, n - 1, n, axis)
        interior = harmonic_mean(_slab(D, 0, n - 1, axis), _slab(D, 1, n, axis))
        if boundary.is_periodic(axis):
            wrap = harmonic_mean(last, first)
            faces.append((interior, wrap, wrap))
        else:
            faces.append((interior, first, last))
    return tuple(faces)


def _robin_conductance(face: Robin, D_edge, dx: float):
    """h D / (D + h dx / 2) (um/s): the transfer coefficient in series with half a voxel."""
    denominator = D_edge + face.h * dx / 2
    safe = jnp.where(denominator > 0, denominator, 1)
    return jnp.where(denominator > 0, face.h * D_edge / safe, 0)


def _boundary_gradient_flux(face, c_edge, D_edge, dx: float, side: int):
    """D dc/dx on a boundary face (positive: increasing along the axis; None: zero flux);
    side -1 low, +1 high.

    Dirichlet places the value half a voxel from the centre; robin adds the half-voxel diffusion
    resistance in series with the transfer coefficient h, exact for a linear profile.
    """
    if isinstance(face, Neumann):
        return None
    if isinstance(face, Dirichlet):
        return side * 2 * D_edge * (face.value - c_edge) / dx
    if isinstance(face, Robin):
        return side * _robin_conductance(face, D_edge, dx) * (face.outside - c_edge)
    raise TypeError(f"unsupported boundary face {face!r}")


def _pad_axis(x, axis: int):
    """Zero faces added at both ends of `axis`."""
    widths = [(0, 0)] * x.ndim
    widths[axis] = (1, 1)
    return jnp.pad(x, widths)


def _divergence(interior_flux, low, high, axis: int, dx: float):
    """(F[i + 1/2] - F[i - 1/2]) / dx from the n - 1 interior face fluxes and the low and high
    boundary face fluxes (None: zero). Boundary faces update the edge layers in place rather
    than being concatenated: XLA fuses this form well across Runge-Kutta stages."""
    div = _diff(_pad_axis(interior_flux, axis), axis)
    n = div.shape[axis]
    if low is not None:
        div = lax.dynamic_update_slice_in_dim(div, _slab(div, 0, 1, axis) - low, 0, axis)
    if high is not None:
        div = lax.dynamic_update_slice_in_dim(div, _slab(div, n - 1, n, axis) + high, n - 1, axis)
    return div / dx


def diffusion(c, D_faces: tuple, grid: Grid, boundary: Boundary):
    """div(D grad c) with face coefficients from `face_diffusivity`."""
    total = jnp.zeros_like(c)
    for axis, (dx, n) in enumerate(zip(grid.spacing, grid.shape)):
        D_int, D_low, D_high = D_faces[axis]
        first, last = _slab(c, 0, 1, axis), _slab(c, n - 1, n, axis)
        low_face, high_face = boundary.faces[axis]
        if isinstance(low_face, Periodic):
            low = high = D_low * (first - last) / dx
        else:
            low = _boundary_gradient_flux(low_face, first, D_low, dx, -1)
            high = _boundary_gradient_flux(high_face, last, D_high, dx, +1)
        total = total + _divergence(D_int * _diff(c, axis) / dx, low, high, axis, dx)
    return total


def _upwind(velocity, n_left, n_right):
    return jnp.maximum(velocity, 0) * n_left + jnp.minimum(velocity, 0) * n_right


def chemotaxis(n, c, chi, grid: Grid, boundary: Boundary):
    """-div(chi n grad c): drift up the gradient of c with an upwind (positivity-preserving) flux.

    chi in um^2/(s * c-units). No drift flux crosses a non-periodic boundary face.
    """
    total = jnp.zeros_like(n)
    for axis, (dx, size) in enumerate(zip(grid.spacing, grid.shape)):
        interior = _upwind(
            chi * _diff(c, axis) / dx, _slab(n, 0, size - 1, axis), _slab(n, 1, size, axis)
        )
        low = high = None
        if boundary.is_periodic(axis):
            c_wrap = (_slab(c, 0, 1, axis) - _slab(c, size - 1, size, axis)) / dx
            low = high = _upwind(chi * c_wrap, _slab(n, size - 1, size, axis), _slab(n, 0, 1, axis))
        total = total - _divergence(interior, low, high, axis, dx)
    return total


def chemotaxis_rate(c, chi, grid: Grid, boundary: Boundary):
    """Largest outflow rate (1/s) of the upwind drift: sum over axes of 2 |chi| max|dc/dx| / dx."""
    rate = 0.0
    for axis, (dx, size) in enumerate(zip(grid.spacing, grid.shape)):
        steps = [jnp.max(jnp.abs(_diff(c, axis)))] if size > 1 else []
        if boundary.is_periodic(axis):
            wrap = _slab(c, 0, 1, axis) - _slab(c, size - 1, size, axis)
            steps.append(jnp.max(jnp.abs(wrap)))
        if steps:
            rate = rate + 2 * jnp.abs(chi) * jnp.max(jnp.stack(steps)) / dx**2
    return rate


def diffusion_diagonal(D_faces: tuple, grid: Grid, boundary: Boundary, dtype):
    """Diagonal of the linear part of `diffusion` (1/s, <= 0): the Jacobi preconditioner."""
    total = jnp.zeros(grid.shape, dtype)
    for axis, (dx, n) in enumerate(zip(grid.spacing, grid.shape)):
        D_int, D_low, D_high = D_faces[axis]
        faces_shape = list(grid.shape)
        faces_shape[axis] = n - 1
        padded = _pad_axis(jnp.broadcast_to(D_int, faces_shape).astype(dtype), axis)
        diag = -(_slab(padded, 0, n, axis) + _slab(padded, 1, n + 1, axis)) / dx**2
        low_face, high_face = boundary.faces[axis]
        if isinstance(low_face, Periodic):
            # a one-voxel periodic axis couples the voxel to itself: no diagonal term
            low = high = (
                None if n == 1 else -jnp.broadcast_to(D_low, _slab(diag, 0, 1, axis).shape) / dx**2
            )
        else:
            low = _boundary_self_coupling(low_face, D_low, dx)
            high = _boundary_self_coupling(high_face, D_high, dx)
        if low is not None:
            diag = lax.dynamic_update_slice_in_dim(diag, _slab(diag, 0, 1, axis) + low, 0, axis)
        if high is not None:
            diag = lax.dynamic_update_slice_in_dim(
                diag, _slab(diag, n - 1, n, axis) + high, n - 1, axis
            )
        total = total + diag
    return total


def _boundary_self_coupling(face, D_edge, dx: float):
    """d(boundary flux divergence)/d(c_edge) (1/s) for one face, None when zero."""
    if isinstance(face, Neumann):
        return None
    if isinstance(face, Dirichlet):
        return -2 * D_edge / dx**2
    if isinstance(face, Robin):
        return -_robin_conductance(face, D_edge, dx) / dx
    raise TypeError(f"unsupported boundary face {face!r}")
