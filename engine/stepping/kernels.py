"""Each stage of the explicit stepper, for every field at once, as one Pallas (Triton) kernel.

Why: on a GPU hand-written Pallas kernels of the bare stencil run closer to the memory's
bandwidth than XLA's fused stencil (benchmarks/bench_pallas_stencil.py; the readings, and
what this kernel gained, are in docs/performance-notes.md). This kernel computes one stage of
`steppers.Explicit` in one pass over memory: each program owns a block of voxels, loads each
field's block and its neighbours (plus the step's increment so far, after the first stage),
traces the model's reaction terms on the block's values (the model's leaves are kernel inputs:
scalars, or grid-sized arrays loaded per block) and stores every field's increment so far, or,
in the last stage, the new fields, their increments added with stochastic rounding
(`rounding.rounded_sum`, drawn by each voxel's index in the grid as the XLA path draws them)
so that float32 steps conserve at no extra pass. Loads use index arrays clamped to the grid,
so every load stays in bounds (Pallas' CPU interpreter runs the kernel exactly, which is how
the tests check it); stores use the unclamped positions under a mask. Where an axis divides
into whole tiles its clamp and the mask are left out (along the contiguous axis Triton then
sees whole rows). The kernel spends few instructions per voxel, as a memory-bound kernel
must: the faces' diffusive rates come in as three scalars per axis (`face_rates`), not as
vectors loaded per voxel, and neighbours wrap by a compare, not an integer division.

On a GPU the kernels are compiled by Triton and are the default of explicit runs of several
stages on 3D grids (`simulation.default_kernels`); elsewhere they run in Pallas' interpreter,
slowly, for tests (`Simulation(..., kernels="pallas")`). Not fused: per-voxel diffusivities,
grids of more than three axes, sharded fields, cells; sweeps and gradients build their own
steppers without them.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl

try:  # deprecated in JAX 0.11 in favour of Mosaic GPU: without it, runs keep XLA's kernels
    from jax.experimental.pallas import triton as plt
except ImportError:
    plt = None

from engine.model.model import Fields, Model
from engine.model.rhs import euler_change, reaction_terms
from engine.numerics import rounding


@dataclass(frozen=True)
class Launch:
    """How the kernels are launched: `tiles[d - 1]`, the voxels per program along each axis
    of a grid of d axes (powers of two, as Triton needs), and `warps` per program. The 3D
    default is the fastest tile of `benchmarks/bench_kernel_tiles.py` on a GPU for one and
    four fields (ssprk3 at 512^3: 2x8x128 with 8 warps; 4x4x128 was as fast for one field and
    1.4x slower for four)."""

    tiles: tuple[tuple[int, ...], ...] = ((1024,), (8, 128), (2, 8, 128))
    warps: int = 8

    def __post_init__(self):
        for d, tile in enumerate(self.tiles, start=1):
            if len(tile) != d or any(n < 1 or n & (n - 1) for n in tile):
                raise ValueError(
                    f"kernel_launch: tiles[{d - 1}] must be {d} powers of two, got {tile}"
                )
        if self.warps < 1 or self.warps & (self.warps - 1):
            raise ValueError(f"kernel_launch: warps must be a power of two, got {self.warps}")

    def with_tile(self, tile: tuple[int, ...], warps: int) -> Launch:
        """This launch with `tile` for grids of its number of axes, and `warps`."""
        tiles = list(self.tiles)
        tiles[len(tile) - 1] = tuple(tile)
        return Launch(tiles=tuple(tiles), warps=warps)

    def tile(self, shape) -> tuple[int, ...]:
        """The tile for a grid of `shape`, each side no longer than its axis rounded up to a
        power of two."""
        tile = self.tiles[len(shape) - 1]
        return tuple(min(t, 1 << max(n - 1, 0).bit_length()) for t, n in zip(tile, shape))


DEFAULT_LAUNCH = Launch()


def fusable(model: Model) -> bool:
    """Whether `fused_stage` can take `model` (`require_fusable` says why not)."""
    return _unfused_reason(model) is None


def require_fusable(model: Model) -> None:
    """Raises ValueError naming what in `model` `fused_stage` cannot take."""
    reason = _unfused_reason(model)
    if reason is not None:
        raise ValueError(f'kernels: "pallas" cannot fuse {reason}; use "xla"')


def _unfused_reason(model: Model) -> str | None:
    if plt is None:
        return f"with this JAX ({jax.__version__}: no Pallas Triton backend)"
    if model.grid.ndim > 3:
        return f"a {model.grid.ndim}D grid (at most 3 axes)"
    for f in model.fields:
        if jnp.ndim(model.diffusivity(f)) != 0:
            return f"the per-voxel diffusivity of {f.name}"
    for leaf in jax.tree.leaves(model):
        if jnp.ndim(leaf) != 0 and jnp.shape(leaf) != tuple(model.grid.shape):
            return f"a parameter of shape {jnp.shape(leaf)}, neither scalar nor the grid's"
    return None


def face_rates(couplings: dict) -> dict:
    """Each field's `rhs.field_couplings` as the kernels take them: per axis ((low face's rate
    at the low edge, the interior faces' rate, the high face's rate at the high edge), (low,
    high) outside values). With a uniform diffusivity (what `fusable` allows) the couplings'
    vectors hold just these three rates (1/s): three scalars in place of two loads per voxel."""
    rates = {}
    for name, axes in couplings.items():
        rates[name] = []
        for (low, low_value), (high, high_value) in axes:
            low, high = jnp.reshape(low, -1), jnp.reshape(high, -1)
            interior = low[min(1, low.size - 1)]
            rates[name].append(((low[0], interior, high[-1]), (low_value, high_value)))
    return rates


def _wrapped(index, n: int):
    """`index` (within one length of the range) wrapped into 0..n-1: a compare and a select
    each way, where `%` costs an integer division per voxel."""
    index = jnp.where(index < 0, index + n, index)
    return jnp.where(index >= n, index - n, index)


def fused_stage(
    model: Model,
    face_rates: dict,
    fields: Fields,
    supply: Fields,
    t,
    dt,
    total: Fields | None = None,
    weight: float = 1.0,
    add_fields: bool = False,
    rounding_step=None,
    launch: Launch = DEFAULT_LAUNCH,
) -> Fields:
    """One stage of an SSP scheme (`steppers.SSP_SCHEMES`) of every field, in one kernel (see
    the module): weight (total + E(u)), the step's increment after this stage, where u =
    fields + total (`total`: the increment before it, None in the first stage) and E(u) is
    `steppers.euler_increment` at time t (s) over dt (s); `face_rates`: `face_rates` of the
    model's `rhs.field_couplings`, built once before the loop.
    `add_fields`: the fields plus that increment instead (the last stage, in the same pass),
    added with stochastic rounding where `rounding_step` (`rounding.step_counter`) is given,
    each field drawing its `rounding.streams`, as `steppers.advance_state` does. `launch`:
    the kernel's tile and warps."""
    require_fusable(model)
    shape = tuple(model.grid.shape)
    names = model.names
    dtype = fields[names[0]].dtype
    leaves, treedef = jax.tree.flatten(model)
    # inputs, each with how the kernel reads it: "grid" per block, or "scalar"
    inputs, kinds = [], []

    def add(value):
        value = jnp.asarray(value)
        kind = "scalar" if value.ndim == 0 else "grid"
        if kind == "grid" and value.shape != shape:
            raise ValueError(f'kernels: "pallas" cannot fuse an input of shape {value.shape}')
        inputs.append(value.reshape(-1) if kind == "scalar" else value)
        kinds.append(kind)

    for name in names:
        add(fields[name])
    for name in names if total is not None else ():
        add(total[name])
    for leaf in leaves:
        add(leaf)
    supply_names = sorted(supply)
    for name in supply_names:
        add(supply[name])
    add(t)
    add(dt)
    if rounding_step is not None:
        add(jnp.asarray(rounding_step, jnp.uint32))
    outside = []  # per field and axis: (low, high) outside values, None where periodic
    for name in names:
        outside.append([])
        for rates, values in face_rates[name]:
            for rate in rates:
                add(rate)
            outside[-1].append(values)
    tile = launch.tile(shape)
    kernel = functools.partial(
        _kernel,
        grid=model.grid,
        names=names,
        with_total=total is not None,
        treedef=treedef,
        kinds=tuple(kinds),
        supply_names=tuple(supply_names),
        outside=outside,
        tile=tile,
        weight=weight,
        add_fields=add_fields,
        salts=None if rounding_step is None else tuple(rounding.streams(names)[n] for n in names),
    )
    gpu = jax.default_backend() == "gpu"
    out = pl.pallas_call(
        kernel,
        out_shape=[jax.ShapeDtypeStruct(shape, dtype) for _ in names],
        grid=tuple(pl.cdiv(n, t) for n, t in zip(shape, tile)),
        interpret=not gpu,
        compiler_params=plt.CompilerParams(num_warps=launch.warps, num_stages=1) if gpu else None,
    )(*inputs)
    return dict(zip(names, out))


def _kernel(
    *refs,
    grid,
    names,
    with_total,
    treedef,
    kinds,
    supply_names,
    outside,
    tile,
    weight,
    add_fields,
    salts,
):
    """One block of every field's `fused_stage`. refs: the inputs in `fused_stage`'s order
    (fields, the totals `with_total`, the model's leaves, supply, t, dt, the rounding step
    where `salts`, coupling vectors), then the outputs."""
    shape = tuple(grid.shape)
    inputs, outputs = refs[: len(kinds)], refs[len(kinds) :]
    position = [
        pl.program_id(axis) * tile[axis] + lax.broadcasted_iota(jnp.int32, tile, axis)
        for axis in range(len(shape))
    ]
    # clamped only along axes that end in a partial tile (along the contiguous axis, unclamped
    # positions let Triton see whole rows)
    clamped = [p if n % t == 0 else jnp.minimum(p, n - 1) for p, n, t in zip(position, shape, tile)]

    def read(ref, kind):
        return ref[0] if kind == "scalar" else plt.load(ref.at[tuple(clamped)])

    values = [read(ref, kind) for ref, kind in zip(inputs, kinds)]
    n_fields, n_leaves = len(names), treedef.num_leaves
    n_totals = n_fields if with_total else 0
    start = dict(zip(names, values[:n_fields]))  # the fields at the step's start
    totals = values[n_fields : n_fields + n_totals]
    # the stage's fields, u = start + total, at the block's voxels
    centre = [v + totals[i] if with_total else v for i, v in enumerate(values[:n_fields])]
    fields = dict(zip(names, centre))
    rest = values[n_fields + n_totals :]
    block_model = jax.tree.unflatten(treedef, rest[:n_leaves])
    rest = rest[n_leaves:]
    supply = dict(zip(supply_names, rest[: len(supply_names)]))
    rest = rest[len(supply_names) :]
    t, dt = rest[0], rest[1]
    step = rest[2] if salts is not None else None
    rates = iter(rest[3 if salts is not None else 2 :])

    def neighbour(field, axis, shift, outside_value):
        """Field number `field` at the voxel `shift` along `axis`: wrapped where periodic,
        else the outside value beyond the grid's face (the ghost of `operators.with_ghosts`)."""
        value = shifted(field, axis, shift)
        if outside_value is None:
            return value
        edge = clamped[axis] == (0 if shift < 0 else shape[axis] - 1)
        return jnp.where(edge, outside_value, value)

    def shifted(field, axis, offset):
        """Stage field number `field` at the voxels `offset` along `axis`, wrapped around the
        grid (offset 0: the block as already loaded)."""
        if offset == 0:
            return centre[field]
        index = list(clamped)
        index[axis] = _wrapped(clamped[axis] + offset, shape[axis])
        value = plt.load(inputs[field].at[tuple(index)])
        if with_total:
            value = value + plt.load(inputs[n_fields + field].at[tuple(index)])
        return value

    def face_flux(n_field, c_field, chi, axis, side, periodic):
        """Upwind flux of chi n grad c through the face between the voxels `side` and
        `side` + 1 along `axis` (none through a non-periodic grid face)."""
        c_left, n_left = shifted(c_field, axis, side), shifted(n_field, axis, side)
        c_right, n_right = shifted(c_field, axis, side + 1), shifted(n_field, axis, side + 1)
        velocity = chi * (c_right - c_left) / grid.spacing[axis]
        flux = jnp.maximum(velocity, 0) * n_left + jnp.minimum(velocity, 0) * n_right
        left = clamped[axis] + side
        return flux if periodic else jnp.where((left >= 0) & (left < shape[axis] - 1), flux, 0)

    def chemotaxis(n_index, c_index, chi):
        """-div(chi n grad c) of field `n_index` up the gradient of field `c_index`, as
        `operators.chemotaxis`."""
        total = jnp.zeros_like(centre[n_index])
        for axis, dx in enumerate(grid.spacing):
            periodic = outside[n_index][axis][0] is None
            high, low = (face_flux(n_index, c_index, chi, axis, s, periodic) for s in (0, -1))
            total = total - (high - low) / dx
        return total

    gain = {}
    for i, name in enumerate(names):
        c = fields[name]
        total = jnp.zeros_like(c)
        for axis, (low_value, high_value) in enumerate(outside[i]):
            low_edge, interior, high_edge = next(rates), next(rates), next(rates)
            low = jnp.where(clamped[axis] == 0, low_edge, interior)
            high = jnp.where(clamped[axis] == shape[axis] - 1, high_edge, interior)
            lower = neighbour(i, axis, -1, low_value)
            upper = neighbour(i, axis, 1, high_value)
            total = total + low * (lower - c) + high * (upper - c)
        gain[name] = total
    for p in block_model.populations:
        if p.chemotaxis_species is not None:
            c_index = names.index(p.chemotaxis_species)
            n_index = names.index(p.name)
            drift = chemotaxis(n_index, c_index, p.chemotaxis_sensitivity)
            gain[p.name] = gain[p.name] + drift
    production, loss = reaction_terms(block_model, fields, t)
    change = euler_change(names, fields, gain, production, supply, loss, dt)
    inside = None  # whole blocks: every store in the grid
    if any(n % t for n, t in zip(shape, tile)):
        inside = functools.reduce(jnp.logical_and, [p < n for p, n in zip(position, shape)])
    for i, (name, out) in enumerate(zip(names, outputs)):
        increment = change[name] + totals[i] if with_total else change[name]
        if weight != 1.0:
            increment = weight * increment
        if not add_fields:
            value = increment
        elif salts is None:
            value = start[name] + increment
        else:
            draw = rounding.uniform_at(rounding.index_of(position, shape), step, salts[i])
            value = rounding.rounded_sum(start[name], increment, draw)
        plt.store(out.at[tuple(position)], value.astype(out.dtype), mask=inside)
