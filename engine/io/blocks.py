"""A field as (index, block) parts, the pieces of it that one process holds, and the summaries
of a frame (domain total and maximum) computed from them."""

from __future__ import annotations

import math

import numpy as np

from engine.io.layout import FieldInfo
from engine.numerics.constants import MOLECULES_PER_UM3_PER_NM
from engine.numerics.grid import Grid

Parts = list[tuple[tuple[slice, ...], np.ndarray]]
"""(index into the whole field, values there) pairs."""


def as_parts(value) -> Parts:
    """A field as (index, block) pairs: a list of them is kept (a sharded device array's
    blocks, from `engine.numerics.parallel.host_parts`); an array is one block covering all
    of it."""
    if isinstance(value, list):
        return value
    whole = np.asarray(value)
    return [(tuple(slice(0, n) for n in whole.shape), whole)]


def parts_shape(parts: Parts) -> tuple[int, ...]:
    """The global shape that (index, block) pairs cover."""
    if len(parts) == 1:
        return parts[0][1].shape
    ndim = parts[0][1].ndim
    return tuple(max(index[a].stop for index, _ in parts) for a in range(ndim))


def check_parts(what: str, parts: Parts, shape: tuple[int, ...], whole: bool) -> None:
    """ValueError unless the blocks cover `shape` (`whole`: one process holds all of it) or
    lie within it (several processes, each with some of the blocks)."""
    if whole:
        if parts_shape(parts) != shape:
            raise ValueError(f"{what} has shape {parts_shape(parts)}, expected {shape}")
        return
    for index, block in parts:
        inside = block.ndim == len(shape) and all(i.stop <= n for i, n in zip(index, shape))
        if not inside:
            raise ValueError(f"{what}: a block at {index} lies outside the shape {shape}")


def frame_summary(info: FieldInfo, parts: Parts, grid: Grid) -> tuple[float, float]:
    """(domain integral, maximum) of one frame from its blocks, in float64: the integral in
    molecules for a species (values in nM), in cells for a population (cells/um^3)."""
    total = sum(float(np.sum(v, dtype=np.float64)) for _, v in parts) * grid.voxel_volume
    if info.kind == "species":
        total *= MOLECULES_PER_UM3_PER_NM
    maxima = [float(np.max(v)) for _, v in parts if v.size]
    return total, max(maxima) if maxima else math.nan


def member_summaries(
    info: FieldInfo, parts: Parts, grid: Grid, n_members: int
) -> tuple[np.ndarray, np.ndarray]:
    """(totals, maxima) per member of one frame of a sweep (blocks lead with the member
    axis)."""
    totals, maxima = np.zeros(n_members), np.full(n_members, -np.inf)
    for index, values in parts:
        rows = np.arange(n_members)[index[0]]
        for row, member in zip(rows, values):
            total, peak = frame_summary(info, [(index[1:], member)], grid)
            totals[row] += total
            maxima[row] = max(maxima[row], peak)
    return totals, maxima
