"""Cells in the output file (DESIGN section 7): /cells/<type> written frame by frame with the
fields, read back as the alive cells of a frame, kept in the checkpoint, checked on resume,
dropped with later frames, and shown by the XDMF sidecar as point sets (the vtkXdmfReader
check is slow). Files are built from synthetic NumPy arrays: no simulation."""

from __future__ import annotations

import xml.etree.ElementTree as ET

import h5py
import numpy as np
import pytest

from engine.io.checkpoint import read_checkpoint, truncate_frames
from engine.io.layout import CellInfo, FieldInfo
from engine.io.reader import open_output
from engine.io.writer import OutputWriter
from engine.numerics.grid import Grid

GRIDS = {
    1: Grid((7,), spacing=2.0, origin=-3.0, depth=4.0),
    2: Grid((6, 8), spacing=(2.0, 3.0), origin=(-5.0, 1.0)),
    3: Grid((4, 5, 6), spacing=(1.0, 2.0, 3.0), origin=(0.0, 10.0, -3.0)),
}
FIELDS = [FieldInfo("IL2", "species")]
CELLS = [CellInfo("Th", 8, ("R", "pSTAT5")), CellInfo("Treg", 5)]
TIMES = (0.0, 10.0, 20.0, 30.0)
ALIVE = {  # per frame, per slot: births fill empty slots, deaths empty them
    "Th": ["11110000", "10111100", "00111111", "00010110"],
    "Treg": ["11000", "11100", "01110", "00000"],
}
COUNTS = {"Th": [4, 5, 6, 3], "Treg": [2, 3, 3, 0]}
VTK_AXES = {3: ["x", "y", "z"], 2: [None, "x", "y"], 1: [None, "x", None]}
"""The grid axis at VTK's x, y and z (None: 0) in the fields' mesh as vtkXdmfReader reads the
sidecar: a 2D mesh in the plane VTK x = 0, a 1D rod's along VTK y."""
ATTRS = dict(ilsim_version="0.1.0", backend="cpu", device="cpu", dtype="float32", stepper="imex")


def history(grid: Grid) -> list[dict[str, dict[str, np.ndarray]]]:
    """Every frame's arrays of both types (float64 as a run hands them over): a slot that
    comes alive gets a new id; empty slots hold NaN and id -1; next_id and overflow too."""
    rng = np.random.default_rng(7)
    lower, upper = np.asarray(grid.lower), np.asarray(grid.upper)
    frames, next_id = [], 0
    previous = {info.name: np.zeros(info.capacity, bool) for info in CELLS}
    ids = {info.name: np.full(info.capacity, -1, np.int64) for info in CELLS}
    for k in range(len(TIMES)):
        frame = {}
        for info in CELLS:
            alive = np.array([c == "1" for c in ALIVE[info.name][k]])
            for slot in np.flatnonzero(alive & ~previous[info.name]):
                ids[info.name][slot] = next_id
                next_id += 1
            ids[info.name][~alive] = -1
            previous[info.name] = alive
            position = lower + (upper - lower) * rng.random((info.capacity, grid.ndim))
            position[~alive] = np.nan
            arrays = {"position": position, "alive": alive, "id": ids[info.name].copy()}
            for j, name in enumerate(info.state):
                values = 1000.0 * (j + 1) + 10.0 * ids[info.name] + k
                arrays[name] = np.where(alive, values, np.nan)
            arrays |= {"next_id": np.int64(next_id), "overflow": np.int64(0)}
            frame[info.name] = arrays
        frames.append(frame)
    return frames


def fields_at(grid: Grid, t: float) -> dict[str, np.ndarray]:
    """IL2 near 1 nM, nearly constant: a total that would want an offset on its axis."""
    return {"IL2": 1.0 + 1e-7 * t + 1e-9 * np.arange(grid.size).reshape(grid.shape)}


def write_cells_file(path, grid: Grid, times=TIMES, checkpoint: bool = True, **options):
    """A file of `grid` with IL2 and the two cell types over `times`, and a checkpoint at the
    last frame holding the cells."""
    frames = history(grid)
    with OutputWriter(path, grid, FIELDS, "float32", ATTRS, {}, cells=CELLS, **options) as w:
        for k, t in enumerate(times):
            w.write_frame(t, fields_at(grid, t), frames[k])
        if checkpoint:
            last = len(times) - 1
            w.write_checkpoint(
                times[last], 10 * last, 0.5, fields_at(grid, times[last]), frames[last]
            )
    return path


@pytest.fixture(params=[1, 2, 3], ids=["1d", "2d", "3d"])
def written(request, tmp_path):
    grid = GRIDS[request.param]
    return write_cells_file(tmp_path / f"cells{request.param}d.h5", grid), grid


def frame_arrays(group: h5py.Group) -> dict[str, h5py.Dataset]:
    """A cell type's per-frame datasets: all but its dimension scales (cell, axis)."""
    return {name: data for name, data in group.items() if not data.is_scale}


def alive_of(arrays: dict) -> dict:
    """The alive cells of one type's frame arrays, as `Output.cells` gives them."""
    keep = arrays["alive"]
    return {k: v[keep] for k, v in arrays.items() if k not in ("alive", "next_id", "overflow")}


# ----------------------------------------------------------------------------------------------
# layout, writing and reading


def test_layout_and_round_trip(written):
    path, grid = written
    frames = history(grid)
    with h5py.File(path, "r") as f:
        assert list(f["cells"]) == ["Th", "Treg"]
        for info in CELLS:
            group = f["cells"][info.name]
            assert group.attrs["capacity"] == info.capacity
            assert [s.decode() if isinstance(s, bytes) else s for s in group.attrs["state"]] == [
                *info.state
            ]
            assert list(group) == ["position", "alive", "id", *info.state, "cell", "axis"]
            np.testing.assert_array_equal(group["cell"][()], np.arange(info.capacity))
            assert [a.decode() for a in group["axis"][()]] == list(grid.axes)
            shapes = {"position": (4, info.capacity, grid.ndim)}
            dtypes = {"alive": np.bool_, "id": np.int64}
            for name, data in frame_arrays(group).items():
                scales = [dim[0].name for dim in data.dims]  # for h5netcdf: one on every axis
                assert (
                    scales
                    == ["/time", f"/cells/{info.name}/cell", f"/cells/{info.name}/axis"][
                        : data.ndim
                    ]
                )
                assert [dim.label for dim in data.dims] == ["time", "cell", "axis"][: data.ndim]
                assert data.shape == shapes.get(name, (4, info.capacity))
                assert data.dtype == dtypes.get(name, np.float32)
                assert data.chunks == (1, *data.shape[1:])  # one frame per chunk
                assert data.compression == "gzip" and data.maxshape[0] is None
                for k in range(4):
                    expected = frames[k][info.name][name]
                    np.testing.assert_array_equal(data[k], expected.astype(data.dtype))
            assert group["position"].attrs["units"] == "um"
            assert [a.decode() if isinstance(a, bytes) else a for a in
                    group["position"].attrs["axes"]] == list(grid.axes)  # fmt: skip
    with open_output(path) as out:
        assert out.cell_types == ("Th", "Treg")
        assert out.cell_state("Th") == ("R", "pSTAT5") and out.cell_state("Treg") == ()
        assert out.cell_capacity("Th") == 8
        for info in CELLS:
            np.testing.assert_array_equal(out.cell_counts(info.name), COUNTS[info.name])
            assert out.cell_counts(info.name).dtype == np.int64
            for k in (0, 1, 2, -1):
                cells = out.cells(info.name, k)
                expected = alive_of(frames[k][info.name])
                assert list(cells) == ["id", "position", *info.state]
                assert cells["id"].dtype == np.int64
                assert cells["position"].shape == (COUNTS[info.name][k], grid.ndim)
                for name, values in expected.items():
                    np.testing.assert_array_equal(cells[name], values.astype(cells[name].dtype))
                    assert np.all(np.isfinite(cells[name]))  # no empty slot among them
        assert "cells Th, Treg" in repr(out)


def test_cells_as_a_table(written):
    path, grid = written
    expected = alive_of(history(grid)[2]["Th"])
    with open_output(path) as out:
        table = out.cells("Th", 2, table=True)
        assert list(table.columns) == ["id", *grid.axes, "R", "pSTAT5"]
        assert len(table) == 6
        np.testing.assert_array_equal(table["id"], expected["id"])
        for axis, name in enumerate(grid.axes):
            np.testing.assert_allclose(table[name], expected["position"][:, axis], rtol=1e-6)
        np.testing.assert_allclose(table["pSTAT5"], expected["pSTAT5"], rtol=1e-6)
        empty = out.cells("Treg", -1, table=True)
        assert list(empty.columns) == ["id", *grid.axes] and len(empty) == 0


def test_unknown_types_and_frames_are_named(tmp_path):
    path = write_cells_file(tmp_path / "c.h5", GRIDS[2], checkpoint=False)
    with open_output(path) as out:
        with pytest.raises(KeyError, match="no cell type 'B'.*cell types: Th, Treg"):
            out.cells("B", 0)
        with pytest.raises(KeyError, match="cell types: Th, Treg"):
            out.cell_counts("B")
        with pytest.raises(KeyError, match="cell types: Th, Treg"):
            out.cell_state("B")
        with pytest.raises(IndexError, match="holds 4 frames"):
            out.cells("Th", 4)
    with pytest.raises(ValueError, match="closed"):
        out.cells("Th", 0)


def test_cell_info_is_checked():
    for bad, message in [
        (dict(name="a/b", capacity=4), "contain no '/'"),
        (dict(name="T", capacity=0), "positive integer"),
        (dict(name="T", capacity=2.5), "positive integer"),
        (dict(name="T", capacity=4, state=("alive",)), "differ from"),
        (dict(name="T", capacity=4, state=("next_id",)), "differ from"),
        (dict(name="T", capacity=4, state=("cell",)), "differ from"),  # the scales' names
        (dict(name="T", capacity=4, state=("axis",)), "differ from"),
        (dict(name="T", capacity=4, state=("R", "R")), "duplicate"),
    ]:
        with pytest.raises(ValueError, match=message):
            CellInfo(**bad)
    assert CellInfo("T", 4, ["R"]).state == ("R",)


def test_bad_cell_frames_are_refused_before_the_file_changes(tmp_path):
    grid = GRIDS[2]
    frames = history(grid)
    path = tmp_path / "bad.h5"
    with OutputWriter(path, grid, FIELDS, "float32", ATTRS, {}, cells=CELLS) as writer:
        writer.write_frame(0.0, fields_at(grid, 0.0), frames[0])
        fields = fields_at(grid, 1.0)

        def changed(name, key, value):
            frame = {k: dict(v) for k, v in frames[1].items()}
            if value is None:
                del frame[name][key]
            else:
                frame[name][key] = value
            return frame

        for cells, message in [
            (None, r"cells of types \[\] given, \['Th', 'Treg'\] expected"),
            ({"Th": frames[1]["Th"]}, "cells of types"),
            ({**frames[1], "B": frames[1]["Th"]}, "cells of types"),
            (changed("Th", "pSTAT5", None), r"cells 'Th' lack \['pSTAT5'\]"),
            (changed("Th", "position", np.zeros((8, 3))), r"position has shape \(8, 3\)"),
            (changed("Treg", "alive", np.ones(4, bool)), r"alive has shape \(4,\)"),
            (changed("Th", "id", np.zeros(8)), "id must be integers"),
        ]:
            with pytest.raises(ValueError, match=message):
                writer.write_frame(1.0, fields, cells)
        assert writer.n_frames == 1
        with pytest.raises(ValueError, match="next_id"):  # a checkpoint needs the counters
            writer.write_checkpoint(
                0.0, 0, None, fields, {k: alive_of(v) for k, v in frames[0].items()}
            )
    with h5py.File(path, "r") as f:
        assert all(data.shape[0] == 1 for data in frame_arrays(f["cells"]["Th"]).values())


def test_cells_need_a_single_run_in_one_process(tmp_path):
    grid = GRIDS[2]
    with pytest.raises(ValueError, match="cells: cell types .* not supported with sweep members"):
        OutputWriter(tmp_path / "s.h5", grid, FIELDS, "float32", ATTRS, {}, members={"k": [1, 2]},
                     cells=CELLS)  # fmt: skip
    with pytest.raises(ValueError, match="cells: .* not supported with several processes"):
        OutputWriter(tmp_path / "p.h5", grid, FIELDS, "float32", ATTRS, {}, processes=object(),
                     cells=CELLS)  # fmt: skip
    with pytest.raises(ValueError, match="duplicate cell types"):
        OutputWriter(tmp_path / "d.h5", grid, FIELDS, "float32", ATTRS, {}, cells=CELLS * 2)
    assert not any(tmp_path.iterdir())


# ----------------------------------------------------------------------------------------------
# resume, truncation, checkpoint


def test_resume_appends_cells_after_the_last_frame(tmp_path):
    grid = GRIDS[3]
    frames = history(grid)
    path = write_cells_file(tmp_path / "r.h5", grid, times=TIMES[:2])
    with OutputWriter(path, grid, FIELDS, "float32", ATTRS, {}, resume=True, cells=CELLS) as w:
        assert w.n_frames == 2
        w.write_frame(TIMES[2], fields_at(grid, TIMES[2]), frames[2])
    with open_output(path) as out:
        np.testing.assert_array_equal(out.cell_counts("Th"), COUNTS["Th"][:3])
        np.testing.assert_array_equal(out.cells("Th", 2)["id"], alive_of(frames[2]["Th"])["id"])


@pytest.mark.parametrize(
    "cells, message",
    [
        (
            [CellInfo("Th", 9, ("R", "pSTAT5")), CELLS[1]],
            "cells 'Th' have capacity 8 in the file, 9",
        ),
        ([CellInfo("Th", 8, ("pSTAT5", "R")), CELLS[1]], r"state \['R', 'pSTAT5'\] in the file"),
        ([CellInfo("Th", 8, ("R",)), CELLS[1]], r"state \['R', 'pSTAT5'\] in the file, \['R'\]"),
        (CELLS[:1], r"cell types \['Th', 'Treg'\] in the file, \['Th'\] requested"),
        ([], r"cell types \['Th', 'Treg'\] in the file, \[\] requested"),
    ],
)
def test_resume_refuses_other_cells(tmp_path, cells, message):
    grid = GRIDS[2]
    path = write_cells_file(tmp_path / "r.h5", grid, times=TIMES[:1], checkpoint=False)
    with pytest.raises(ValueError, match=f"cannot resume .*{message}"):
        OutputWriter(path, grid, FIELDS, "float32", ATTRS, {}, resume=True, cells=cells)
    with open_output(path) as out:  # untouched
        assert out.n_frames == 1 and out.cell_types == ("Th", "Treg")


def test_resume_of_a_file_without_cells_names_the_types(tmp_path):
    grid = GRIDS[2]
    path = tmp_path / "plain.h5"
    with OutputWriter(path, grid, FIELDS, "float32", ATTRS, {}) as writer:
        writer.write_frame(0.0, fields_at(grid, 0.0))
    with pytest.raises(ValueError, match=r"cell types \[\] in the file, \['Th', 'Treg'\]"):
        OutputWriter(path, grid, FIELDS, "float32", ATTRS, {}, resume=True, cells=CELLS)


def test_truncate_frames_drops_later_cell_frames(tmp_path):
    grid = GRIDS[2]
    path = write_cells_file(tmp_path / "t.h5", grid)
    with h5py.File(path, "r+") as f:
        truncate_frames(f, after=10.0)
        for group in f["cells"].values():
            assert all(data.shape[0] == 2 for data in frame_arrays(group).values())
            assert group["cell"].shape == (group.attrs["capacity"],)  # the scales stay
    with open_output(path) as out:
        np.testing.assert_array_equal(out.cell_counts("Th"), COUNTS["Th"][:2])


def test_a_half_written_frame_of_cells_is_ignored_then_dropped(tmp_path):
    """A kill after the cells grew but before /time did: readers see the completed frames,
    a resumed writer drops the rest and writes that frame again."""
    grid = GRIDS[2]
    frames = history(grid)
    path = write_cells_file(tmp_path / "h.h5", grid, times=TIMES[:2])
    with h5py.File(path, "r+") as f:
        for data in frame_arrays(f["cells"]["Th"]).values():
            data.resize(3, axis=0)
            data[2] = 1
    with open_output(path) as out:
        np.testing.assert_array_equal(out.cell_counts("Th"), COUNTS["Th"][:2])
    with OutputWriter(path, grid, FIELDS, "float32", ATTRS, {}, resume=True, cells=CELLS) as w:
        w.write_frame(TIMES[2], fields_at(grid, TIMES[2]), frames[2])
    with open_output(path) as out:
        np.testing.assert_array_equal(out.cell_counts("Th"), COUNTS["Th"][:3])
        np.testing.assert_array_equal(out.cells("Th", -1)["id"], alive_of(frames[2]["Th"])["id"])


def test_checkpoint_round_trip_with_cells(tmp_path):
    grid = GRIDS[3]
    frames = history(grid)
    path = write_cells_file(tmp_path / "ck.h5", grid)
    saved = read_checkpoint(path)
    assert (saved.time, saved.step, saved.dt, set(saved.fields)) == (30.0, 30, 0.5, {"IL2"})
    cells = saved.cells
    assert set(cells) == {"Th", "Treg"}
    for info in CELLS:
        written = frames[-1][info.name]
        assert set(cells[info.name]) == {*written}
        for name, value in written.items():
            np.testing.assert_array_equal(cells[info.name][name], value)
        assert cells[info.name]["position"].dtype == np.float64  # the state's own dtype
        assert cells[info.name]["alive"].dtype == np.bool_
        for counter in ("next_id", "overflow"):
            assert (
                cells[info.name][counter].shape == ()
                and cells[info.name][counter].dtype == np.int64
            )
    assert int(cells["Th"]["next_id"]) == int(frames[-1]["Th"]["next_id"])
    # a later checkpoint replaces it (into the spare copy, reused), also after a resume
    later = {k: dict(v, overflow=np.int32(3)) for k, v in frames[1].items()}
    with OutputWriter(path, grid, FIELDS, "float32", ATTRS, {}, resume=True, cells=CELLS) as w:
        w.write_checkpoint(40.0, 41, None, fields_at(grid, 40.0), later)
        w.write_checkpoint(50.0, 51, None, fields_at(grid, 50.0), later)
    saved = read_checkpoint(path)
    assert (saved.time, saved.step) == (50.0, 51)
    cells = saved.cells
    np.testing.assert_array_equal(cells["Th"]["alive"], frames[1]["Th"]["alive"])
    assert int(cells["Treg"]["overflow"]) == 3
    with h5py.File(path, "r") as f:
        assert set(f["checkpoint"]) == {"IL2", "cells"}
        assert set(f["checkpoint_next"]["cells"]["Th"]) == {*later["Th"]}


def test_a_field_named_cells_cannot_share_a_checkpoint_with_cells(tmp_path):
    grid = GRIDS[2]
    with OutputWriter(tmp_path / "c.h5", grid, FIELDS, "float32", ATTRS, {}, cells=CELLS) as w:
        with pytest.raises(ValueError, match="a field named 'cells'"):
            w.write_checkpoint(0.0, 0, None, {"cells": np.zeros(grid.shape)}, history(grid)[0])


def test_a_file_without_cells_is_unchanged(tmp_path):
    grid = GRIDS[2]
    path = tmp_path / "plain.h5"
    with OutputWriter(path, grid, FIELDS, "float32", ATTRS, {}) as writer:
        writer.write_frame(0.0, fields_at(grid, 0.0))
        writer.write_checkpoint(
            0.0, 0, None, {"IL2": np.ones(grid.shape), "cells": np.zeros(grid.shape)}
        )
    with h5py.File(path, "r") as f:
        assert "cells" not in f
        assert set(f["checkpoint"]) == {"IL2", "cells"}  # a field may be called cells here
    saved = read_checkpoint(path)
    assert set(saved.fields) == {"IL2", "cells"} and saved.cells == {}
    with open_output(path) as out:
        assert out.cell_types == ()
        with pytest.raises(KeyError, match="cell types: none"):
            out.cells("Th", 0)
        assert repr(out).endswith("fields IL2)")
    domain = ET.parse(path.with_suffix(".xdmf")).getroot().find("Domain")
    assert [g.get("Name") for g in domain.findall("Grid")] == ["ilsim"]


def test_xarray_still_opens_a_file_with_cells(tmp_path):
    xr = pytest.importorskip("xarray")
    grid = GRIDS[2]
    path = write_cells_file(tmp_path / "x.h5", grid, checkpoint=False)
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert ds["IL2"].dims == ("time", *grid.axes)
    with xr.open_dataset(path, engine="h5netcdf", group="cells/Th", phony_dims="sort") as ds:
        assert ds["position"].shape == (4, 8, 2) and ds["alive"].dtype == bool


def test_xarray_names_the_dimensions_of_the_cells(written):
    """Every axis of a cell array has a dimension scale (h5netcdf refuses a mix), so a type's
    group opens with dimensions time (the root's /time), cell and axis."""
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    path, grid = written
    frames = history(grid)
    for info in CELLS:
        with xr.open_dataset(path, engine="h5netcdf", group=f"cells/{info.name}") as ds:
            assert dict(ds.sizes) == {"time": 4, "cell": info.capacity, "axis": grid.ndim}
            assert ds["position"].dims == ("time", "cell", "axis")
            for name in ("alive", "id", *info.state):
                assert ds[name].dims == ("time", "cell")
            np.testing.assert_array_equal(ds["cell"].values, np.arange(info.capacity))
            assert list(ds["axis"].values) == list(grid.axes)
            assert ds["position"].attrs["units"] == "um"
            for k in range(4):
                expected = frames[k][info.name]
                np.testing.assert_array_equal(ds["alive"].isel(time=k).values, expected["alive"])
                np.testing.assert_array_equal(ds["id"].isel(time=k).values, expected["id"])
                np.testing.assert_allclose(
                    ds["position"].isel(time=k).sel(axis=grid.axes[-1]).values,
                    expected["position"][:, -1],
                    rtol=1e-6,
                )
    with xr.open_dataset(path, engine="h5netcdf") as ds:  # the root is as it was
        assert ds["IL2"].dims == ("time", *grid.axes)


# ----------------------------------------------------------------------------------------------
# the XDMF sidecar


def _slab(item) -> tuple[np.ndarray, str]:
    """(start, stride, count) rows and the dataset path of a HyperSlab DataItem."""
    selection, source = item.findall("DataItem")
    values = np.array(selection.text.split(), dtype=int).reshape(3, -1)
    return values, source.text.strip().partition(":")[2]


def test_xdmf_shows_each_cell_type_as_point_sets(written):
    path, grid = written
    domain = ET.parse(path.with_suffix(".xdmf")).getroot().find("Domain")
    series = domain.findall("Grid")
    assert [g.get("Name") for g in series] == ["ilsim", "cells_Th", "cells_Treg"]
    with h5py.File(path, "r") as f:
        for info, collection in zip(CELLS, series[1:]):
            assert collection.get("CollectionType") == "Temporal"
            frames = collection.findall("Grid")
            assert [float(g.find("Time").get("Value")) for g in frames] == list(TIMES)
            for index, frame in enumerate(frames):
                topology = frame.find("Topology")
                assert topology.get("TopologyType") == "Polyvertex"
                assert topology.get("NumberOfElements") == str(info.capacity)
                geometry = frame.find("Geometry")
                assert geometry.get("GeometryType") == "X_Y_Z"
                columns = []
                for item in geometry.findall("DataItem"):  # VTK's x, y, z
                    zero = item.get("ItemType") == "Function"
                    if zero:
                        assert item.get("Function") == "0 * $0"
                        item = item.find("DataItem")
                    (start, stride, count), source = _slab(item)
                    assert source == f"/cells/{info.name}/position"
                    assert start[0] == index and np.all(stride == 1)
                    assert list(count) == [1, info.capacity, 1]
                    columns.append(None if zero else grid.axes[start[2]])
                assert columns == VTK_AXES[grid.ndim]
                names = [a.get("Name") for a in frame.findall("Attribute")]
                assert names == ["alive", "id", *info.state]
                for attribute in frame.findall("Attribute"):
                    assert attribute.get("Center") == "Node"
                    (start, _, count), source = _slab(attribute.find("DataItem"))
                    assert source == f"/cells/{info.name}/{attribute.get('Name')}"
                    assert list(start) == [index, 0] and list(count) == [1, info.capacity]
                    hdf = attribute.find("DataItem/DataItem[@Format='HDF']")
                    assert tuple(int(n) for n in hdf.get("Dimensions").split()) == f[source].shape


@pytest.mark.slow
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_vtk_xdmf_reader_reads_the_point_sets(tmp_path, ndim):
    """ParaView's XDMF reader (vtkXdmfReader) gets the cells' points on the fields' mesh (in
    3D at VTK (x, y, z) = (x, y, z); 2D and 1D meshes stand in the plane VTK x = 0) and their
    point data; a Threshold on alive keeps the alive cells."""
    vtk = pytest.importorskip("vtk")
    from vtk.util.numpy_support import vtk_to_numpy

    grid = GRIDS[ndim]
    path = write_cells_file(tmp_path / f"v{ndim}.h5", grid)
    frames = history(grid)
    reader = vtk.vtkXdmfReader()
    reader.SetFileName(str(path.with_suffix(".xdmf")))
    reader.UpdateInformation()
    frame = 2
    reader.UpdateTimeStep(TIMES[frame])
    output = reader.GetOutputDataObject(0)
    assert output.IsA("vtkMultiBlockDataSet") and output.GetNumberOfBlocks() == 3
    names = [output.GetMetaData(b).Get(vtk.vtkCompositeDataSet.NAME()) for b in range(3)]
    assert names == ["ilsim", "cells_Th", "cells_Treg"]
    mesh = output.GetBlock(0)
    assert mesh.GetCellData().GetArray("IL2").GetNumberOfTuples() == grid.size
    bounds = np.array(mesh.GetBounds()).reshape(3, 2)
    for block, info in enumerate(CELLS, start=1):
        points = output.GetBlock(block)
        assert points.GetNumberOfPoints() == info.capacity
        written = frames[frame][info.name]
        alive = written["alive"]
        xyz = vtk_to_numpy(points.GetPoints().GetData())
        expected = np.zeros((info.capacity, 3))
        for vtk_axis, name in enumerate(VTK_AXES[ndim]):
            if name is not None:
                expected[:, vtk_axis] = written["position"][:, grid.axes.index(name)]
        np.testing.assert_allclose(xyz[alive], expected[alive], rtol=1e-6)
        inside = (xyz[alive] >= bounds[:, 0] - 1e-6) & (xyz[alive] <= bounds[:, 1] + 1e-6)
        assert inside.all()  # within the fields' mesh
        data = points.GetPointData()
        np.testing.assert_array_equal(vtk_to_numpy(data.GetArray("alive")), alive)
        np.testing.assert_array_equal(
            vtk_to_numpy(data.GetArray("id"))[alive], written["id"][alive]
        )
        for name in info.state:
            np.testing.assert_allclose(
                vtk_to_numpy(data.GetArray(name))[alive], written[name][alive], rtol=1e-6
            )
        threshold = vtk.vtkThreshold()  # what the docs tell ParaView users to apply
        threshold.SetInputData(points)
        threshold.SetInputArrayToProcess(0, 0, 0, 0, "alive")
        threshold.SetLowerThreshold(1)  # ParaView's default method: between lower and upper
        threshold.SetUpperThreshold(1)
        threshold.Update()
        assert threshold.GetOutput().GetNumberOfPoints() == COUNTS[info.name][frame]
