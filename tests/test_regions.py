"""engine.regions: geometric masks (voxel in region <=> its centre is), volumes, errors."""

import math

import numpy as np
import pytest

from engine.model import regions
from engine.numerics.grid import Grid


def _brute_force(grid, inside):
    """Mask from a predicate evaluated at every voxel centre, one voxel at a time."""
    mask = np.zeros(grid.shape, dtype=bool)
    coords = [grid.coordinates(a) for a in range(grid.ndim)]
    for index in np.ndindex(grid.shape):
        mask[index] = inside(np.array([coords[a][i] for a, i in enumerate(index)]))
    return mask


GRIDS = {
    1: Grid((23,), spacing=0.7, origin=-3.0),
    2: Grid((13, 17), spacing=(0.9, 0.6), origin=(1.0, -2.0)),
    3: Grid((9, 11, 10), spacing=(1.1, 0.8, 1.0), origin=(0.0, 0.5, -1.0)),
}


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_sphere_is_centres_within_radius(ndim):
    grid = GRIDS[ndim]
    centre = np.array([o + 0.43 * (u - o) for o, u in zip(grid.lower, grid.upper)])
    radius = 3.1
    mask = regions.sphere(grid, centre, radius)
    assert mask.dtype == bool and mask.shape == grid.shape
    expected = _brute_force(grid, lambda x: np.sum((x - centre) ** 2) <= radius**2)
    np.testing.assert_array_equal(mask, expected)
    assert 0 < mask.sum() < grid.size


def test_disc_in_2d_matches_explicit_disc():
    grid = Grid((40, 40), spacing=0.5)
    mask = regions.sphere(grid, (10.0, 10.0), 4.0)
    y, x = grid.centres()
    np.testing.assert_array_equal(mask, (y - 10) ** 2 + (x - 10) ** 2 <= 16)
    # symmetric under the reflections that fix the centre (centre on a voxel face here)
    np.testing.assert_array_equal(mask, mask[::-1, :])
    np.testing.assert_array_equal(mask, mask[:, ::-1])
    np.testing.assert_array_equal(mask, mask.T)


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_sphere_and_cylinder_are_closed_on_voxel_centres(ndim):
    """ "Within radius" includes the voxels whose centre lies exactly at the radius: around a
    voxel centre, a radius of one voxel edge holds the centre and its 2 ndim face neighbours
    (not the centre alone), and a cylinder of that radius along x a cross section of 2 ndim - 1
    voxels in each x row."""
    grid = Grid((7,) * ndim, spacing=2.0)
    centre = tuple(grid.coordinates(a)[3] for a in range(ndim))
    assert regions.sphere(grid, centre, 2.0).sum() == 2 * ndim + 1
    if ndim > 1:
        cylinder = regions.cylinder(grid, centre, 2.0, "x")
        assert cylinder.sum() == (2 * (ndim - 1) + 1) * 7


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_box_is_closed_box_of_centres(ndim):
    grid = GRIDS[ndim]
    lower = np.array([o + 0.2 * (u - o) for o, u in zip(grid.lower, grid.upper)])
    upper = np.array([o + 0.7 * (u - o) for o, u in zip(grid.lower, grid.upper)])
    mask = regions.box(grid, lower, upper)
    expected = _brute_force(grid, lambda x: bool(np.all((x >= lower) & (x <= upper))))
    np.testing.assert_array_equal(mask, expected)


def test_box_is_closed_on_voxel_centres():
    grid = Grid((10,), spacing=1.0)  # centres 0.5, 1.5, ...
    np.testing.assert_array_equal(np.flatnonzero(regions.box(grid, 1.5, 3.5)), [1, 2, 3])
    np.testing.assert_array_equal(np.flatnonzero(regions.box(grid, 1.5, 1.5)), [1])
    np.testing.assert_array_equal(np.flatnonzero(regions.box(grid, -100, 100)), np.arange(10))


@pytest.mark.parametrize("axis", ["z", "y", "x"])
def test_cylinder_along_each_axis_3d(axis):
    grid = GRIDS[3]
    along = grid.axes.index(axis)
    centre = np.array([o + 0.45 * (u - o) for o, u in zip(grid.lower, grid.upper)])
    radius = 2.3
    mask = regions.cylinder(grid, centre, radius, axis)
    across = [a for a in range(3) if a != along]
    expected = _brute_force(grid, lambda x: np.sum((x[across] - centre[across]) ** 2) <= radius**2)
    np.testing.assert_array_equal(mask, expected)
    # invariant along its axis, and each cross-section is the disc of the 2D grid across it
    first = np.take(mask, [0], axis=along)
    np.testing.assert_array_equal(mask, np.broadcast_to(first, mask.shape))
    cross = Grid(
        [grid.shape[a] for a in across],
        [grid.spacing[a] for a in across],
        [grid.origin[a] for a in across],
    )
    np.testing.assert_array_equal(
        np.squeeze(first, along), regions.sphere(cross, centre[across], radius)
    )


@pytest.mark.parametrize("axis", ["y", "x"])
def test_cylinder_in_2d_is_a_band(axis):
    grid = GRIDS[2]
    along = grid.axes.index(axis)
    centre = (6.0, 3.0)
    mask = regions.cylinder(grid, centre, 1.5, axis)
    other = 1 - along
    band = np.abs(grid.centres()[other] - centre[other]) <= 1.5
    np.testing.assert_array_equal(mask, band)


def test_cylinder_axis_must_exist():
    with pytest.raises(ValueError, match="cylinder.axis"):
        regions.cylinder(GRIDS[2], (1.0, 1.0), 1.0, "z")
    with pytest.raises(ValueError, match="cylinder.axis"):
        regions.cylinder(GRIDS[3], (1.0, 1.0, 1.0), 1.0, "w")


# --- volumes on refinement ---------------------------------------------------------------


def _relative_volume_errors(make_mask, exact, ns, ndim, length):
    errors = []
    for n in ns:
        grid = Grid((n,) * ndim, spacing=length / n)
        volume = make_mask(grid).sum() * np.prod(grid.spacing)
        errors.append(abs(volume - exact) / exact)
    return np.array(errors)


@pytest.mark.parametrize(("ndim", "exact"), [(2, math.pi * 3.0**2), (3, 4 / 3 * math.pi * 3.0**3)])
def test_sphere_volume_converges(ndim, exact):
    ns = (10, 20, 40, 80) if ndim == 2 else (10, 20, 40)
    # centre off the lattice symmetry so the counting error is not accidentally small
    centre = (5.013, 4.971, 5.037)[:ndim]
    errors = _relative_volume_errors(
        lambda g: regions.sphere(g, centre, 3.0), exact, ns, ndim, 10.0
    )
    assert errors[-1] < 0.01
    assert errors[-1] < errors[0] / 4  # at least first order over the refinements


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_box_volume_converges(ndim):
    lower = np.array([1.13, 2.71, 0.37])[:ndim]
    upper = np.array([7.29, 5.55, 9.02])[:ndim]
    exact = float(np.prod(upper - lower))
    ns = (10, 20, 40, 80, 160) if ndim < 3 else (10, 20, 40, 80)
    errors = _relative_volume_errors(lambda g: regions.box(g, lower, upper), exact, ns, ndim, 10.0)
    # per axis the count of centres in [lower, upper] is within one voxel of side / h
    bounds = [np.prod(1 + (10.0 / n) / (upper - lower)) - 1 for n in ns]
    assert np.all(errors <= np.array(bounds) + 1e-12)
    assert bounds[-1] < 0.1
    assert errors[-1] < errors[0]


def test_sphere_volume_in_2d_slab_uses_depth():
    grid = Grid((100, 100), spacing=0.1, depth=2.0)
    mask = regions.sphere(grid, (5.0, 5.0), 3.0)
    volume = mask.sum() * grid.voxel_volume
    assert volume == pytest.approx(math.pi * 9.0 * 2.0, rel=0.01)


# --- spots -------------------------------------------------------------------------------


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_spots_reproducible_and_seed_dependent(ndim):
    grid = Grid((30,) * ndim, spacing=1.0)
    a = regions.spots(grid, count=4, radius=3.0, seed=7)
    b = regions.spots(grid, count=4, radius=3.0, seed=7)
    np.testing.assert_array_equal(a, b)
    assert a.dtype == bool and a.shape == grid.shape
    others = [regions.spots(grid, count=4, radius=3.0, seed=s) for s in (8, 9, 10)]
    assert all(not np.array_equal(a, o) for o in others)


@pytest.mark.parametrize("seed", range(5))
def test_spots_count_honoured_with_point_like_spots(seed):
    # a spot much smaller than a voxel is exactly its nearest voxel: `count` distinct voxels
    grid = Grid((100, 100), spacing=1.0)
    mask = regions.spots(grid, count=5, radius=0.01, seed=seed)
    assert mask.sum() == 5


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_spots_never_empty(ndim):
    grid = Grid((8,) * ndim, spacing=1.0)
    for seed in range(5):
        mask = regions.spots(grid, count=1, radius=1e-6, seed=seed)
        assert mask.sum() == 1


def test_spots_radius_honoured():
    grid = Grid((60, 60), spacing=0.5)  # 30 x 30 um
    radius = 2.0
    for seed in range(4):
        small = regions.spots(grid, count=1, radius=radius, seed=seed)
        large = regions.spots(grid, count=1, radius=2 * radius, seed=seed)
        # same centre (same seed): the larger disc contains the smaller one
        assert np.all(large[small])
        # one disc: diameter at most 2 r, area at most that of the disc (plus lattice error)
        pts = np.stack([c[small] for c in grid.centres()], axis=1)
        span = np.sqrt(((pts[:, None, :] - pts[None, :, :]) ** 2).sum(-1)).max()
        assert span <= 2 * radius + 1e-12
        assert small.sum() * 0.25 <= math.pi * (radius + 0.5) ** 2
        # and at least a quarter disc (centre possibly in a corner)
        assert small.sum() * 0.25 >= 0.25 * math.pi * (radius - 0.5) ** 2
        # the mask is a disc around some point: equal to the disc around its best-fit centre
        centre = pts.mean(axis=0)
        if small.sum() * 0.25 > 0.9 * math.pi * radius**2:  # not clipped by a wall
            disc = regions.sphere(grid, centre, radius)
            assert np.sum(disc != small) <= 0.2 * small.sum()


def test_spots_union_volume_bounded_by_count():
    grid = Grid((80, 80), spacing=0.5)
    for count in (1, 3, 6):
        mask = regions.spots(grid, count=count, radius=2.0, seed=3)
        assert mask.sum() * 0.25 <= count * math.pi * 2.5**2


@pytest.mark.parametrize(("count", "radius"), [(0, 1.0), (-1, 1.0), (2, 0.0), (2, -1.0)])
def test_spots_invalid(count, radius):
    with pytest.raises(ValueError, match="spots"):
        regions.spots(Grid((10, 10)), count=count, radius=radius, seed=0)


# --- from_file ---------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [bool, np.int8, np.float32])
def test_from_file_round_trip(tmp_path, dtype):
    grid = Grid((6, 7, 5))
    mask = np.random.default_rng(1).random(grid.shape) < 0.3
    path = tmp_path / "mask.npy"
    np.save(path, mask.astype(dtype) * (3 if dtype is not bool else 1))  # nonzero = inside
    loaded = regions.from_file(grid, path)
    assert loaded.dtype == bool
    np.testing.assert_array_equal(loaded, mask)
    np.testing.assert_array_equal(regions.from_file(grid, str(path)), mask)


def test_a_mask_reads_from_an_hdf5_file_by_its_name_or_as_its_only_dataset(tmp_path):
    """DESIGN's "NumPy or HDF5 mask file": an ilsim output's regions/<name> (the masks a run
    used), or a file of one dataset; a file of several without that name is refused."""
    import h5py

    grid = Grid((5, 4))
    mask = np.random.default_rng(2).random(grid.shape) < 0.4
    with h5py.File(tmp_path / "run.h5", "w") as f:
        f["regions/lesion"] = mask.astype(np.uint8)
        f["regions/other"] = ~mask
    with h5py.File(tmp_path / "one.hdf5", "w") as f:
        f["anything/mask"] = mask.astype(np.float32)
    np.testing.assert_array_equal(regions.from_file(grid, tmp_path / "run.h5", "lesion"), mask)
    np.testing.assert_array_equal(regions.from_file(grid, tmp_path / "one.hdf5", "x"), mask)
    with pytest.raises(ValueError, match="no dataset regions/vessels and 2 datasets"):
        regions.from_file(grid, tmp_path / "run.h5", "vessels")


def test_from_file_wrong_shape(tmp_path):
    path = tmp_path / "mask.npy"
    np.save(path, np.ones((6, 7)))
    with pytest.raises(ValueError, match="shape"):
        regions.from_file(Grid((7, 6)), path)
    with pytest.raises(ValueError, match="shape"):
        regions.from_file(Grid((6, 7, 1)), path)


def test_from_file_requires_npy(tmp_path):
    path = tmp_path / "mask.txt"
    np.savetxt(path, np.ones((3, 3)))
    with pytest.raises(ValueError, match=r"\.npy"):
        regions.from_file(Grid((3, 3)), path)


def test_from_file_empty_mask(tmp_path):
    path = tmp_path / "mask.npy"
    np.save(path, np.zeros((4, 4)))
    with pytest.raises(ValueError, match="no voxel"):
        regions.from_file(Grid((4, 4)), path)


# --- errors ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("make", "match"),
    [
        # regions missing every voxel centre
        (lambda g: regions.sphere(g, (100.0, 100.0), 1.0), "sphere.*no voxel"),
        (lambda g: regions.sphere(g, (0.0, 0.0), 0.4), "sphere.*no voxel"),  # corner, < centre
        (lambda g: regions.box(g, (0.1, 0.1), (0.4, 0.4)), "box.*no voxel"),  # between centres
        (lambda g: regions.box(g, (20.0, 0.0), (30.0, 10.0)), "box.*no voxel"),
        (lambda g: regions.cylinder(g, (50.0, 0.0), 1.0, "x"), "cylinder.*no voxel"),
        # bad parameters
        (lambda g: regions.sphere(g, (5.0, 5.0), 0.0), "sphere.radius"),
        (lambda g: regions.sphere(g, (5.0, 5.0), -1.0), "sphere.radius"),
        (lambda g: regions.cylinder(g, (5.0, 5.0), 0.0, "x"), "cylinder.radius"),
        (lambda g: regions.box(g, (5.0, 5.0), (4.0, 6.0)), "box.*exceeds"),
    ],
)
def test_region_errors(make, match):
    grid = Grid((10, 10), spacing=1.0)
    with pytest.raises(ValueError, match=match):
        make(grid)
