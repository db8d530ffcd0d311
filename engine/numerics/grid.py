"""Cartesian voxel grids in 1, 2 and 3 dimensions (lengths in um)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

AXIS_NAMES = {1: ("x",), 2: ("y", "x"), 3: ("z", "y", "x")}


def per_axis(value, ndim: int, name: str) -> tuple[float, ...]:
    values = np.asarray(value, dtype=float)
    if values.ndim > 1 or values.size not in (1, ndim):
        raise ValueError(f"grid.{name}: expected a number or {ndim} numbers, got {value!r}")
    values = np.broadcast_to(values.reshape(-1), (ndim,))
    return tuple(float(v) for v in values)


@dataclass(frozen=True)
class Grid:
    """A cell-centred grid: voxel i's centre is origin + (i + 1/2) * spacing on each axis.

    Arguments:
        shape: voxels per axis, in the order (nz, ny, nx), (ny, nx) or (nx,).
        spacing: voxel edge per axis (um), a number or one per axis.
        origin: lower corner (um), default 0.
        depth: slab thickness of a 2D grid, rod side of a 1D grid (um); default: mean spacing.
    """

    shape: tuple[int, ...]
    spacing: tuple[float, ...] = 1.0
    origin: tuple[float, ...] = 0.0
    depth: float | None = None

    def __post_init__(self):
        shape = tuple(int(n) for n in np.atleast_1d(self.shape))
        if not 1 <= len(shape) <= 3:
            raise ValueError(f"grid.shape: expected 1 to 3 axes, got {len(shape)}")
        if any(n < 1 for n in shape):
            raise ValueError(f"grid.shape: every axis needs at least one voxel, got {shape}")
        spacing = per_axis(self.spacing, len(shape), "spacing")
        if not all(np.isfinite(s) and s > 0 for s in spacing):
            raise ValueError(f"grid.spacing: must be positive and finite, got {spacing}")
        origin = per_axis(self.origin, len(shape), "origin")
        depth = float(np.mean(spacing)) if self.depth is None else float(self.depth)
        if not (np.isfinite(depth) and depth > 0):
            raise ValueError(f"grid.depth: must be positive and finite, got {depth}")
        object.__setattr__(self, "shape", shape)
        object.__setattr__(self, "spacing", spacing)
        object.__setattr__(self, "origin", origin)
        object.__setattr__(self, "depth", depth)

    @property
    def ndim(self) -> int:
        return len(self.shape)

    @property
    def axes(self) -> tuple[str, ...]:
        """Axis names in array order, x last."""
        return AXIS_NAMES[self.ndim]

    @property
    def size(self) -> int:
        return int(np.prod(self.shape))

    @property
    def voxel_volume(self) -> float:
        """Volume of one voxel (um^3); 2D slabs and 1D rods use `depth`."""
        area = float(np.prod(self.spacing))
        return area * self.depth ** (3 - self.ndim)

    @property
    def lower(self) -> tuple[float, ...]:
        return self.origin

    @property
    def upper(self) -> tuple[float, ...]:
        return tuple(o + n * h for o, n, h in zip(self.origin, self.shape, self.spacing))

    def coordinates(self, axis: int) -> np.ndarray:
        """Voxel-centre coordinates (um) along `axis`, float64."""
        n, h, o = self.shape[axis], self.spacing[axis], self.origin[axis]
        return o + (np.arange(n) + 0.5) * h

    def centres(self) -> tuple[np.ndarray, ...]:
        """Voxel-centre coordinate arrays (um), each of `shape`, one per axis."""
        return tuple(np.meshgrid(*(self.coordinates(a) for a in range(self.ndim)), indexing="ij"))

    def index_of(self, position) -> tuple[int, ...]:
        """Index of the voxel containing `position` (um, axis order of `shape`)."""
        position = per_axis(position, self.ndim, "position")
        index = tuple(
            int(np.floor((p - o) / h)) for p, o, h in zip(position, self.origin, self.spacing)
        )
        if any(not 0 <= i < n for i, n in zip(index, self.shape)):
            raise ValueError(
                f"position {position} lies outside the grid {self.lower}..{self.upper}"
            )
        return index
