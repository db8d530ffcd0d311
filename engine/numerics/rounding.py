"""Stochastic rounding of a field plus its increment: unbiased, so float32 steps conserve.

Rounded to nearest, an increment below half an ulp of the field is lost, and lost
systematically (a peak loses its negative increments, its flanks their positive ones), so a
field that only diffuses drifts in total. Rounded up or down with probabilities that make
the expected result exact, the sum's rounding errors have mean zero: the total then wanders
by about sqrt(voxels x steps) x ulp / 2.4, far below 1e-6 of it over 10^4 steps, at the cost
of some arithmetic per voxel and no extra memory traffic (Kahan summation carries a second
state-sized array through the loop).

The random numbers are a counter-based hash of (global voxel index, step, field), a step
named by its loop's start time and its number in the loop (`step_counter`), so a run is
reproducible, a resumed run equals an uninterrupted one bitwise, a sweep's member rounds as
its single run does, and a field split over devices rounds as a whole one does.
"""

from __future__ import annotations

import jax.numpy as jnp
from jax import lax

_GOLDEN = 0x9E3779B1
_STEP = 0x85EBCA77
_FIELD = 0xC2B2AE3D


def _mix(x):
    """A 32-bit integer hash (murmur3's finaliser): every input bit flips each output bit
    with probability close to 1/2."""
    x = x ^ (x >> 16)
    x = x * jnp.uint32(0x7FEB352D)
    x = x ^ (x >> 15)
    x = x * jnp.uint32(0x846CA68B)
    return x ^ (x >> 16)


def step_counter(t0, i):
    """The counter of step `i` of a loop that starts at time `t0` (s, float32): the hash of
    t0's bits plus i, distinct for the steps of a run (its loops start at distinct times)."""
    bits = lax.bitcast_convert_type(jnp.asarray(t0, jnp.float32), jnp.uint32)
    return _mix(bits) + jnp.asarray(i).astype(jnp.uint32)


def streams(names) -> dict[str, int]:
    """Each field's stream (the `salt` of its draws): its place among the names sorted, so
    the XLA path and the fused kernels draw the same numbers for the same field."""
    return {name: k for k, name in enumerate(sorted(names))}


def flat_index(shape):
    """Each voxel's flat (C-order) index in a grid of `shape`, as uint32 (wrapping past 2^32)."""
    return index_of([lax.broadcasted_iota(jnp.uint32, shape, a) for a in range(len(shape))], shape)


def index_of(position, shape):
    """The flat (C-order) index, uint32, of the voxels at `position` (an integer array per
    axis) in a grid of `shape`."""
    index = jnp.uint32(0)
    stride = 1
    for axis in reversed(range(len(shape))):
        index = index + position[axis].astype(jnp.uint32) * jnp.uint32(stride % 2**32)
        stride *= shape[axis]
    return index


def uniform_at(index, step, salt: int = 0):
    """Uniform numbers in [0, 1) (float32, 24 random bits) for the voxels of flat indices
    `index` (uint32, `flat_index` of the whole grid) at `step` (an integer scalar, traced:
    `step_counter`) for stream `salt`: a hash of the index, so the same on any split over
    devices and in any kernel that computes the indices itself."""
    salt = jnp.uint32(salt * _FIELD % 2**32)
    key = _mix(jnp.asarray(step).astype(jnp.uint32) * jnp.uint32(_STEP) + salt)
    bits = _mix(index * jnp.uint32(_GOLDEN) ^ key)
    return (bits >> 8).astype(jnp.float32) * jnp.float32(2.0**-24)


def uniform(shape, step, salt: int = 0):
    """`uniform_at` each voxel of a grid of `shape`."""
    return uniform_at(flat_index(shape), step, salt)


def _next_float(x, up):
    """The float next to `x` (finite) towards +inf where `up`, towards -inf elsewhere: its bits
    plus or minus one, away from zero where the direction is x's sign (what `jnp.nextafter`
    computes, in fewer operations). At x = 0 towards -inf it gives a NaN, which the caller's
    comparison never selects (the exact sum of a field and an increment >= -field is >= 0)."""
    signed = jnp.int32 if x.dtype == jnp.float32 else jnp.int64
    bits = lax.bitcast_convert_type(x, signed)
    away = up == (x >= 0)
    return lax.bitcast_convert_type(bits + jnp.where(away, 1, -1).astype(signed), x.dtype)


def add_stochastically(field, increment, step, salt: int = 0):
    """field + increment rounded to one of its two neighbouring floats, up with probability
    (exact sum - lower) / (upper - lower): the expected result is the exact sum. An
    increment below -field is taken as -field (the sum stays >= 0). `step`: the step's
    `step_counter`; `salt`: which field (independent streams)."""
    return rounded_sum(field, increment, uniform(field.shape, step, salt))


def rounded_sum(field, increment, draw):
    """`add_stochastically` with its uniform numbers `draw` (`uniform_at`) given."""
    increment = jnp.maximum(increment, -field)
    total = field + increment
    # the exact rounding error of the sum (Knuth's two-sum; exact in binary floating point)
    back = total - field
    error = (field - (total - back)) + (increment - back)
    neighbour = _next_float(total, error > 0)
    gap = jnp.abs(neighbour - total)
    return jnp.where(draw.astype(total.dtype) * gap < jnp.abs(error), neighbour, total)
