"""Finite-volume operators on cell-centred grids, one implementation for 1D, 2D and 3D.

Fluxes live on voxel faces. For each axis the face array holds n + 1 faces: the low boundary
face, the n - 1 interior faces and the high boundary face, so the divergence telescopes and the
total amount changes only through boundary faces. Units: c in field units, D in um^2/s,
lengths in um, results in field units per second.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from engine.numerics.boundary import Boundary, Dirichlet, Neumann, Periodic, Robin
from engine.numerics.grid import Grid


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


def _boundary_coupling(face, D_edge, dx: float):
    """(coefficient, outside value) of one non-periodic boundary face: the face adds
    coefficient * (outside - c_edge) / dx^2 to the edge voxel (coefficient in um^2/s).

    Dirichlet places the value half a voxel from the centre; robin adds the half-voxel diffusion
    resistance in series with the transfer coefficient h, exact for a linear profile."""
    if isinstance(face, Neumann):
        return 0.0, 0.0
    if isinstance(face, Dirichlet):
        return 2 * D_edge, face.value
    if isinstance(face, Robin):
        return _robin_conductance(face, D_edge, dx) * dx, face.outside
    raise TypeError(f"unsupported boundary face {face!r}")


def _one_hot(n: int, index: int, axis: int, ndim: int, dtype):
    """A length-n vector along `axis` (broadcastable to the grid) that is 1 at `index`."""
    shape = [1] * ndim
    shape[axis] = n
    vector = np.zeros(n, dtype)
    vector[index] = 1
    return jnp.asarray(vector.reshape(shape))


def _pad_axis(x, axis: int, low=0, high=0, value=0.0):
    """`x` padded with `low` and `high` layers of `value` along `axis`."""
    widths = [(0, 0)] * x.ndim
    widths[axis] = (low, high)
    return jnp.pad(x, widths, constant_values=value)


def _face_couplings(D_faces: tuple, grid: Grid, boundary: Boundary, axis: int, dtype):
    """Per-voxel rates of exchange through the low and high faces along `axis` (1/s: the face's
    diffusivity over dx^2; a vector along the axis when D is constant, else full arrays), with
    the outside values of boundary faces.

    Every voxel then gets  low (c[i-1] - c) + high (c[i+1] - c), where the neighbour beyond a
    boundary face is the face's outside value (or the wrapped voxel when periodic). The 1/dx^2
    is folded in here, once before the loop, so that no stencil divides per voxel."""
    n, dx = grid.shape[axis], grid.spacing[axis]
    D_int, D_low, D_high = D_faces[axis]
    low_face, high_face = boundary.faces[axis]
    if isinstance(low_face, Periodic):
        (low_coef, low_value), (high_coef, high_value) = (D_low, None), (D_high, None)
    else:
        low_coef, low_value = _boundary_coupling(low_face, D_low, dx)
        high_coef, high_value = _boundary_coupling(high_face, D_high, dx)
    first = _one_hot(n, 0, axis, grid.ndim, dtype)
    last = _one_hot(n, n - 1, axis, grid.ndim, dtype)
    D_int = jnp.asarray(D_int, dtype)
    if D_int.ndim == 0:  # a vector along the axis, broadcast by XLA inside the fused stencil
        interior_low, interior_high = D_int * (1 - first), D_int * (1 - last)
    else:
        interior_low, interior_high = _pad_axis(D_int, axis, low=1), _pad_axis(D_int, axis, high=1)
    if n == 1 and isinstance(low_face, Periodic):  # a voxel coupled to itself exchanges nothing
        return (interior_low / dx**2, None), (interior_high / dx**2, None)
    return ((interior_low + low_coef * first) / dx**2, low_value), (
        (interior_high + high_coef * last) / dx**2,
        high_value,
    )


def _padded(c, outside: list):
    """c with one layer of ghost voxels on every face: the face's outside value, or the
    wrapped voxels where it is None (periodic). Stored or fused: see `stored_ghosts`."""
    for axis, (low, high) in enumerate(outside):
        if low is None:
            c = jnp.pad(c, [(1, 1) if a == axis else (0, 0) for a in range(c.ndim)], mode="wrap")
        else:
            c = _pad_axis(_pad_axis(c, axis, low=1, value=low), axis, high=1, value=high)
    return lax.optimization_barrier(c) if stored_ghosts() else c


def stored_ghosts() -> bool:
    """Whether the ghost-padded copy of a field is stored (on CPU) or its padding fused into
    the stencil that reads it (on accelerators). On CPU, slices of a stored array fuse into
    one vectorised pass, while a fused pad is re-evaluated per neighbour, several times slower.
    On a GPU the stored copy is an extra pass over memory, and fusing the padding is faster
    once `steppers.advance_fields` pairs the steps (measurements:
    docs/performance-notes.md)."""
    return jax.default_backend() == "cpu"


def with_ghosts(c, couplings: list):
    """`c` with one layer of ghost voxels per face (the outside values of its `face_couplings`,
    or the wrapped voxels), stored once: what `coupled_diffusion` reads its neighbours from.
    Its interior (`interior_of`) equals `c`; terms that read their fields from it read no
    other buffer, which lets a step overwrite the fields in place without first copying them."""
    return _padded(c, _outside_values(couplings))


def face_couplings(D_faces: tuple, grid: Grid, boundary: Boundary, dtype) -> list:
    """`_face_couplings` of every axis: per axis ((low rates, outside value), (high rates,
    outside value)); what `coupled_diffusion` and the fused kernels (`kernels`)
    apply. Loop-invariant: steppers build them once per `advance`."""
    return [_face_couplings(D_faces, grid, boundary, axis, dtype) for axis in range(grid.ndim)]


def _outside_values(couplings: list) -> list:
    """(low, high) outside values of every axis: what `_padded` pads with."""
    return [(low[1], high[1]) for low, high in couplings]


def interior_of(padded):
    """The field inside a ghost-padded array (one layer on every face)."""
    return padded[tuple(slice(1, n - 1) for n in padded.shape)]


def diffusion(c, D_faces: tuple, grid: Grid, boundary: Boundary):
    """div(D grad c) with face coefficients from `face_diffusivity`."""
    return coupled_diffusion(c, face_couplings(D_faces, grid, boundary, c.dtype), grid)


def coupled_diffusion(c, couplings: list, grid: Grid, padded=None):
    """div(D grad c) from the faces' `face_couplings`; `padded`: `c` with its ghosts
    (`with_ghosts`) when the caller has it already (c then is its interior)."""
    padded = _padded(c, _outside_values(couplings)) if padded is None else padded
    interior = [slice(1, n + 1) for n in grid.shape]
    total = jnp.zeros_like(c)
    for axis, ((low, _), (high, _)) in enumerate(couplings):
        n = grid.shape[axis]
        lower = padded[tuple(interior[:axis] + [slice(0, n)] + interior[axis + 1 :])]
        upper = padded[tuple(interior[:axis] + [slice(2, n + 2)] + interior[axis + 1 :])]
        total = total + low * (lower - c) + high * (upper - c)
    return total


def _divergence(interior_flux, low, high, axis: int, dx: float):
    """(F[i + 1/2] - F[i - 1/2]) / dx from the n - 1 interior face fluxes and the low and high
    boundary face fluxes (None: zero). Boundary faces update the edge layers in place rather
    than being concatenated: XLA fuses this form well across Runge-Kutta stages."""
    div = _diff(_pad_axis(interior_flux, axis, low=1, high=1), axis)
    n = div.shape[axis]
    if low is not None:
        div = lax.dynamic_update_slice_in_dim(div, _slab(div, 0, 1, axis) - low, 0, axis)
    if high is not None:
        div = lax.dynamic_update_slice_in_dim(div, _slab(div, n - 1, n, axis) + high, n - 1, axis)
    return div / dx


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
    for axis in range(grid.ndim):
        (low, _), (high, _) = _face_couplings(D_faces, grid, boundary, axis, dtype)
        total = total - (low + high)
    return total
