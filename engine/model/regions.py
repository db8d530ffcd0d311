"""Named geometric masks on a grid: sphere, box, cylinder, seeded random spots, a .npy or
HDF5 mask file.

Each function returns a boolean NumPy array of the grid's shape; a voxel belongs to a region
when its centre does. Coordinates are in um, in the axis order of the grid's shape.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from engine.model import array_files
from engine.numerics.grid import Grid, per_axis


def _squared_distance(grid: Grid, center, axes) -> np.ndarray:
    centres = grid.centres()
    center = per_axis(center, grid.ndim, "center")
    return sum((centres[a] - center[a]) ** 2 for a in axes)


def _check_nonempty(mask: np.ndarray, what: str) -> np.ndarray:
    if not mask.any():
        raise ValueError(f"{what}: the region contains no voxel centre of the grid")
    return mask


def sphere(grid: Grid, center, radius: float) -> np.ndarray:
    """Voxels whose centre lies within `radius` (um) of `center`; a disc in 2D."""
    if radius <= 0:
        raise ValueError(f"sphere.radius: must be positive, got {radius}")
    mask = _squared_distance(grid, center, range(grid.ndim)) <= radius**2
    return _check_nonempty(mask, "sphere")


def box(grid: Grid, lower, upper) -> np.ndarray:
    """Voxels whose centre lies in the closed box [lower, upper] (um)."""
    lower = per_axis(lower, grid.ndim, "lower")
    upper = per_axis(upper, grid.ndim, "upper")
    if any(lo > up for lo, up in zip(lower, upper)):
        raise ValueError(f"box: lower {lower} exceeds upper {upper}")
    centres = grid.centres()
    mask = np.ones(grid.shape, dtype=bool)
    for a in range(grid.ndim):
        mask &= (centres[a] >= lower[a]) & (centres[a] <= upper[a])
    return _check_nonempty(mask, "box")


def cylinder(grid: Grid, center, radius: float, axis: str) -> np.ndarray:
    """Voxels within `radius` (um) of the line through `center` along grid axis `axis`."""
    if axis not in grid.axes:
        raise ValueError(f"cylinder.axis: {axis!r} is not one of {grid.axes}")
    if radius <= 0:
        raise ValueError(f"cylinder.radius: must be positive, got {radius}")
    along = grid.axes.index(axis)
    across = [a for a in range(grid.ndim) if a != along]
    mask = _squared_distance(grid, center, across) <= radius**2
    return _check_nonempty(mask, "cylinder")


def spots(grid: Grid, count: int, radius: float, seed: int) -> np.ndarray:
    """Union of `count` spheres of `radius` (um) centred uniformly at random (seeded)."""
    if count < 1 or radius <= 0:
        raise ValueError(f"spots: need count >= 1 and radius > 0, got {count}, {radius}")
    rng = np.random.default_rng(seed)
    lower, upper = np.array(grid.lower), np.array(grid.upper)
    mask = np.zeros(grid.shape, dtype=bool)
    for center in rng.uniform(lower, upper, size=(count, grid.ndim)):
        d2 = _squared_distance(grid, center, range(grid.ndim))
        mask |= d2 <= radius**2
        mask[np.unravel_index(np.argmin(d2), grid.shape)] = True  # a spot is never empty
    return mask


def read_mask(path: str | Path, name: str) -> np.ndarray:
    """The array of a mask file: a .npy array, or from an HDF5 file its dataset
    `regions/<name>` (an ilsim output's mask of that name) or else its only dataset; booleans
    or finite real numbers. ValueError saying why (not naming the file) where it holds none."""
    path = Path(path)
    if path.suffix.lower() not in array_files.SUFFIXES:
        raise ValueError("region masks are .npy or HDF5 (.h5, .hdf5) files")
    if array_files.is_npy(path):
        return array_files.check_real(array_files.load_npy(path))
    import h5py

    with array_files.open_hdf5(path) as f:
        if isinstance(f.get(f"regions/{name}"), h5py.Dataset):
            return array_files.check_real(f[f"regions/{name}"][()])
        datasets = []
        f.visititems(
            lambda key, item: datasets.append(key) if isinstance(item, h5py.Dataset) else None
        )
        if len(datasets) != 1:
            raise ValueError(f"holds no dataset regions/{name} and {len(datasets)} datasets")
        return array_files.check_real(f[datasets[0]][()])


def from_file(grid: Grid, path: str | Path, name: str = "") -> np.ndarray:
    """A mask read from a file of the grid's shape (nonzero = inside; `read_mask`)."""
    try:
        mask = read_mask(path, name)
    except ValueError as error:
        raise ValueError(f"file {path}: {error}") from None
    if mask.shape != grid.shape:
        raise ValueError(
            f"file {path}: mask shape {mask.shape} differs from grid shape {grid.shape}"
        )
    return _check_nonempty(mask != 0, f"file {path}")
