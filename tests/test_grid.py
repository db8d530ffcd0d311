"""engine.numerics.grid.Grid: normalisation, coordinates, voxel volumes, index_of and input
errors."""

import numpy as np
import pytest

from engine.numerics.grid import Grid


@pytest.mark.parametrize(
    ("kwargs", "shape", "spacing", "origin"),
    [
        (dict(shape=7), (7,), (1.0,), (0.0,)),
        (dict(shape=(7,), spacing=0.5, origin=-2), (7,), (0.5,), (-2.0,)),
        (dict(shape=(3, 4), spacing=2.0), (3, 4), (2.0, 2.0), (0.0, 0.0)),
        (dict(shape=[3, 4], spacing=(1, 2), origin=(5, -1)), (3, 4), (1.0, 2.0), (5.0, -1.0)),
        (
            dict(shape=np.array([2, 3, 4]), spacing=np.array([1.0, 2.0, 3.0]), origin=1.5),
            (2, 3, 4),
            (1.0, 2.0, 3.0),
            (1.5, 1.5, 1.5),
        ),
    ],
)
def test_normalisation(kwargs, shape, spacing, origin):
    grid = Grid(**kwargs)
    assert grid.shape == shape
    assert grid.spacing == spacing
    assert grid.origin == origin
    assert all(type(n) is int for n in grid.shape)
    assert all(type(h) is float for h in grid.spacing + grid.origin)
    assert grid.ndim == len(shape)
    assert grid.size == int(np.prod(shape))
    assert grid.axes == {1: ("x",), 2: ("y", "x"), 3: ("z", "y", "x")}[len(shape)]
    assert grid.lower == origin
    np.testing.assert_allclose(grid.upper, np.add(origin, np.multiply(shape, spacing)))


def test_grid_is_hashable_and_equal_after_normalisation():
    # grids are static structure of compiled programs: equal inputs must give equal, hashable grids
    a = Grid((3, 4), spacing=2, origin=0)
    b = Grid([3, 4], spacing=(2.0, 2.0), origin=(0.0, 0.0))
    assert a == b
    assert hash(a) == hash(b)
    assert a != Grid((3, 4), spacing=(2.0, 1.0))


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_voxel_centres(ndim):
    shape = (5, 3, 4)[:ndim]
    spacing = (0.5, 2.0, 1.25)[:ndim]
    origin = (-1.0, 3.0, 0.25)[:ndim]
    grid = Grid(shape, spacing, origin)
    for axis in range(ndim):
        expected = origin[axis] + (np.arange(shape[axis]) + 0.5) * spacing[axis]
        coords = grid.coordinates(axis)
        assert coords.dtype == np.float64
        np.testing.assert_allclose(coords, expected, rtol=0, atol=1e-14)
        # centres lie strictly inside [lower, upper], half a voxel from each wall
        assert coords[0] - grid.lower[axis] == pytest.approx(spacing[axis] / 2)
        assert grid.upper[axis] - coords[-1] == pytest.approx(spacing[axis] / 2)
    centres = grid.centres()
    assert len(centres) == ndim
    for axis, c in enumerate(centres):
        assert c.shape == shape
        index = [0] * ndim
        for i in range(shape[axis]):
            index[axis] = i
            # varies along its own axis only
            expected = origin[axis] + (i + 0.5) * spacing[axis]
            assert c[tuple(index)] == pytest.approx(expected)
        others = tuple(a for a in range(ndim) if a != axis)
        if others:
            assert np.ptp(c, axis=others).max() == 0


@pytest.mark.parametrize(
    ("grid", "volume"),
    [
        (Grid((4, 5, 6), spacing=(1.0, 2.0, 3.0)), 6.0),
        (Grid((4, 5, 6), spacing=(1.0, 2.0, 3.0), depth=100.0), 6.0),  # depth ignored in 3D
        (Grid((4, 5), spacing=(2.0, 3.0), depth=10.0), 60.0),  # slab: area * depth
        (Grid((4, 5), spacing=(2.0, 4.0)), 2.0 * 4.0 * 3.0),  # default depth: mean spacing
        (Grid((8,), spacing=2.0, depth=5.0), 2.0 * 25.0),  # rod: length * depth^2
        (Grid((8,), spacing=3.0), 27.0),
    ],
)
def test_voxel_volume(grid, volume):
    assert grid.voxel_volume == pytest.approx(volume, rel=1e-15)


def test_default_depth_is_mean_spacing():
    assert Grid((4, 5), spacing=(2.0, 4.0)).depth == 3.0
    assert Grid((4,), spacing=1.5).depth == 1.5
    assert Grid((4, 5), spacing=(2.0, 4.0), depth=7).depth == 7.0


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_index_of(ndim):
    shape = (5, 3, 4)[:ndim]
    spacing = (0.5, 2.0, 1.25)[:ndim]
    origin = (-1.0, 3.0, 0.25)[:ndim]
    grid = Grid(shape, spacing, origin)
    rng = np.random.default_rng(0)
    for index in np.ndindex(shape):
        # any point of the voxel (not on its faces) maps back to the voxel
        for frac in (rng.uniform(0.01, 0.99, ndim), np.full(ndim, 0.5)):
            position = [o + (i + f) * h for o, i, f, h in zip(origin, index, frac, spacing)]
            assert grid.index_of(position) == index
    # the centres round-trip
    centres = [c.ravel() for c in grid.centres()]
    for k, index in enumerate(np.ndindex(shape)):
        assert grid.index_of([c[k] for c in centres]) == index
    # the lower corner belongs to the first voxel
    assert grid.index_of(grid.lower) == (0,) * ndim


def test_index_of_scalar_position_broadcasts():
    assert Grid((4, 4), spacing=1.0).index_of(2.5) == (2, 2)
    assert Grid((4,), spacing=1.0).index_of(0.2) == (0,)


@pytest.mark.parametrize(
    "position",
    [(-0.01, 1.0), (1.0, -1e-9), (6.0, 1.0), (1.0, 8.0), (1.0, 100.0), (-50.0, -50.0)],
)
def test_index_of_outside_raises(position):
    grid = Grid((3, 4), spacing=2.0)  # covers [0, 6) x [0, 8)
    with pytest.raises(ValueError, match="outside the grid"):
        grid.index_of(position)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        (dict(shape=()), r"grid\.shape.*1 to 3 axes"),
        (dict(shape=(2, 2, 2, 2)), r"grid\.shape.*1 to 3 axes"),
        (dict(shape=(3, 0)), r"grid\.shape.*at least one voxel"),
        (dict(shape=(-1,)), r"grid\.shape.*at least one voxel"),
        (dict(shape=(3, 3), spacing=-1.0), r"grid\.spacing.*positive"),
        (dict(shape=(3, 3), spacing=(1.0, 0.0)), r"grid\.spacing.*positive"),
        (dict(shape=(3,), spacing=np.inf), r"grid\.spacing.*finite"),
        (dict(shape=(3,), spacing=np.nan), r"grid\.spacing"),
        (dict(shape=(3, 3), depth=0.0), r"grid\.depth.*positive"),
        (dict(shape=(3, 3), depth=-2.0), r"grid\.depth.*positive"),
    ],
)
def test_invalid_grid_raises(kwargs, match):
    with pytest.raises(ValueError, match=match):
        Grid(**kwargs)


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: Grid((3, 4), spacing=(1.0, 2.0, 3.0)), r"grid\.spacing"),
        (lambda: Grid((3, 4), origin=(0.0, 0.0, 0.0)), r"grid\.origin"),
        (lambda: Grid((3, 4), spacing=[[1.0, 2.0], [3.0, 4.0]]), r"grid\.spacing"),
        (lambda: Grid((3, 4)).index_of((1.0, 1.0, 1.0)), r"position"),
    ],
)
def test_wrong_number_of_per_axis_values_raises_clear_error(make, match):
    # the error must name the offending parameter (as engine.numerics.grid.per_axis intends)
    with pytest.raises(ValueError, match=match):
        make()
