"""HDF5 output layer (DESIGN section 3): layout, flushing, summaries, chunking, checkpoints,
resume, reading back (open_output, xarray, h5netcdf) and the XDMF sidecar."""

from __future__ import annotations

import ast
import os
import shutil
import subprocess
import time
import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np
import pytest

from engine.io.blocks import check_parts
from engine.io.checkpoint import read_checkpoint
from engine.io.layout import FORMAT_VERSION, FieldInfo, frame_chunks
from engine.io.reader import open_output
from engine.io.writer import OutputWriter
from engine.io.xdmf import LZF_WARNING, write_xdmf
from engine.numerics.constants import MOLECULES_PER_UM3_PER_NM
from engine.numerics.grid import Grid

REPO = Path(__file__).resolve().parents[1]

GRIDS = {
    1: Grid((7,), spacing=2.0, origin=-3.0, depth=4.0),
    2: Grid((6, 8), spacing=(2.0, 3.0), origin=(-5.0, 1.0)),
    3: Grid((4, 5, 6), spacing=(1.0, 2.0, 3.0), origin=(0.0, 10.0, -3.0)),
}
FIELDS = [FieldInfo("IL2", "species", "nM"), FieldInfo("T", "population", "cells/um^3")]
ATTRS = dict(
    ilsim_version="0.1.0",
    backend="cpu",
    device="cpu",
    dtype="float32",
    stepper="imex",
    config='[grid]\nshape = [6, 8]\n\n[time]\nend = "1 h"\n',
)


def synthetic(grid: Grid, t: float) -> dict[str, np.ndarray]:
    """Known fields: IL2 = t + (linear index), T = 1e-4 everywhere times (1 + t)."""
    ramp = np.arange(grid.size, dtype=np.float64).reshape(grid.shape)
    return {"IL2": t + ramp, "T": np.full(grid.shape, 1e-4 * (1 + t))}


def regions_for(grid: Grid) -> dict[str, np.ndarray]:
    left = np.zeros(grid.shape, dtype=bool)
    left[..., : grid.shape[-1] // 2] = True
    return {"left": left.astype(np.uint8), "all": np.ones(grid.shape, dtype=bool)}


def write_file(path, grid, times=(0.0, 10.0, 20.0), dtype="float32", compression="gzip"):
    with OutputWriter(
        path, grid, FIELDS, dtype, dict(ATTRS, dtype=dtype), regions_for(grid), compression
    ) as writer:
        for t in times:
            writer.write_frame(t, synthetic(grid, t))
        writer.write_checkpoint(times[-1], 42, 0.5, synthetic(grid, times[-1]))
    return path


@pytest.fixture(params=[2, 3])
def written(request, tmp_path):
    grid = GRIDS[request.param]
    return write_file(tmp_path / f"out{request.param}d.h5", grid), grid


def _str(value):
    return value.decode() if isinstance(value, bytes) else str(value)


def test_module_imports_neither_jax_nor_xarray_at_top_level():
    top = set()
    for path in (REPO / "engine" / "io").glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Import):
                top |= {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                top.add((node.module or "").split(".")[0])
    assert "jax" not in top and "xarray" not in top
    assert {"h5py", "numpy"} <= top


def test_molecule_constant_matches_the_reaction_terms():
    from engine.model.terms import MOLECULES_PER_UM3_PER_NM as terms_value

    assert MOLECULES_PER_UM3_PER_NM == terms_value


def test_layout_of_design_section_3(written):
    path, grid = written
    with h5py.File(path, "r") as f:
        assert _str(f.attrs["format"]) == "ilsim"
        assert int(f.attrs["format_version"]) == FORMAT_VERSION == 1
        for key in ("ilsim_version", "created", "backend", "device", "dtype", "stepper"):
            assert _str(f.attrs[key])
        assert _str(f.attrs["config"]) == ATTRS["config"]
        assert _str(f.attrs["created"]).endswith("+00:00")  # ISO 8601, UTC

        g = f["grid"]
        assert tuple(g.attrs["shape"]) == grid.shape
        np.testing.assert_allclose(g.attrs["spacing"], grid.spacing)
        np.testing.assert_allclose(g.attrs["origin"], grid.origin)
        assert [_str(a) for a in g.attrs["axes"]] == list(grid.axes)
        assert g.attrs["depth"] == grid.depth
        # a 2D slab is depth thick, a 1D rod depth^2 in cross-section (DESIGN section 1)
        volume = np.prod(grid.spacing) * grid.depth ** (3 - grid.ndim)
        assert g.attrs["voxel_volume"] == pytest.approx(volume, rel=1e-12)
        for axis, name in enumerate(grid.axes):
            scale = g[name]
            assert scale.dtype == np.float64 and scale.is_scale
            np.testing.assert_allclose(scale[()], grid.coordinates(axis))
            assert _str(scale.attrs["units"]) == "um"
        assert not any(name in g for name in {"z", "y", "x"} - set(grid.axes))

        time = f["time"]
        assert time.dtype == np.float64 and time.is_scale and time.maxshape == (None,)
        np.testing.assert_array_equal(time[()], [0.0, 10.0, 20.0])
        assert _str(time.attrs["units"]) == "s"

        assert list(f["fields"]) == ["IL2", "T"]  # stored in the order given
        for info in FIELDS:
            data = f["fields"][info.name]
            assert data.shape == (3, *grid.shape) and data.dtype == np.float32
            assert data.maxshape == (None, *grid.shape)
            assert data.chunks == (1, *grid.shape)  # one frame per chunk
            assert data.compression == "gzip"
            assert _str(data.attrs["units"]) == info.units
            assert _str(data.attrs["kind"]) == info.kind
            assert data.dims[0][0] == time
            for axis, name in enumerate(grid.axes):
                assert data.dims[axis + 1][0] == g[name]
                assert data.dims[axis + 1].label == name
            np.testing.assert_allclose(data[1], synthetic(grid, 10.0)[info.name], rtol=1e-6)
            for stat, units in (
                ("total", "molecules" if info.kind == "species" else "cells"),
                ("max", info.units),
            ):
                series = f["summary"][f"{info.name}_{stat}"]
                assert series.shape == (3,) and series.dtype == np.float64
                assert _str(series.attrs["units"]) == units

        for name, mask in regions_for(grid).items():
            stored = f["regions"][name]
            assert stored.dtype == np.uint8 and stored.shape == grid.shape
            np.testing.assert_array_equal(stored[()], mask.astype(np.uint8))

        checkpoint = f["checkpoint"]
        assert checkpoint.attrs["time"] == 20.0 and checkpoint.attrs["step"] == 42
        assert set(checkpoint) == {"IL2", "T"}


def test_one_dimensional_file(tmp_path):
    grid = GRIDS[1]
    path = write_file(tmp_path / "rod.h5", grid, dtype="float64")
    with open_output(path) as out:
        assert out.grid == grid and out.fields == ("IL2", "T")
        np.testing.assert_array_equal(out.frame("IL2", 2), synthetic(grid, 20.0)["IL2"])
        ds = out.to_xarray()
        assert ds["IL2"].dims == ("time", "x") and ds["IL2"].dtype == np.float64
    with h5py.File(path, "r") as f:  # a rod of cross-section depth^2
        assert f["grid"].attrs["voxel_volume"] == pytest.approx(2.0 * 4.0**2, rel=1e-12)
    _check_xdmf(path)


def test_summaries_equal_the_analytic_totals(tmp_path):
    grid = GRIDS[3]
    path = write_file(tmp_path / "s.h5", grid, dtype="float64")
    n = grid.size
    with open_output(path) as out:
        for index, t in enumerate(out.time):
            species_total = (n * t + n * (n - 1) / 2) * grid.voxel_volume * 0.602214076
            cells = n * 1e-4 * (1 + t) * grid.voxel_volume
            np.testing.assert_allclose(out.summary["IL2_total"][index], species_total, rtol=1e-12)
            np.testing.assert_allclose(out.summary["IL2_max"][index], t + n - 1, rtol=1e-12)
            np.testing.assert_allclose(out.summary["T_total"][index], cells, rtol=1e-12)
            np.testing.assert_allclose(out.summary["T_max"][index], 1e-4 * (1 + t), rtol=1e-12)
    # a 2D slab integrates over its depth
    grid2 = Grid((4, 4), spacing=2.0, depth=5.0)
    with OutputWriter(tmp_path / "slab.h5", grid2, FIELDS, "float32", ATTRS, {}) as writer:
        writer.write_frame(0.0, {"IL2": np.ones((4, 4)), "T": np.zeros((4, 4))})
    with open_output(tmp_path / "slab.h5") as out:
        np.testing.assert_allclose(out.summary["IL2_total"], [16 * 20.0 * 0.602214076])
        assert out.summary["T_total"][0] == 0.0


@pytest.mark.parametrize("compression", ["gzip", "lzf", "none"])
def test_compression_options(tmp_path, compression):
    """Every option writes a readable file; lzf, whose sidecar ParaView cannot read, with a
    one-line warning from the writer and from `write_xdmf`, the others without one."""
    grid = GRIDS[2]
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        path = write_file(tmp_path / "c.h5", grid, compression=compression)
        write_xdmf(path)
    lzf = [str(w.message) for w in caught if "lzf" in str(w.message)]
    assert lzf == ([LZF_WARNING] * 2 if compression == "lzf" else [])
    assert "\n" not in LZF_WARNING and "ParaView" in LZF_WARNING
    with h5py.File(path, "r") as f:
        data = f["fields"]["IL2"]
        assert data.compression == (None if compression == "none" else compression)
        np.testing.assert_allclose(data[2], synthetic(grid, 20.0)["IL2"], rtol=1e-6)


def test_unknown_compression_is_refused(tmp_path):
    with pytest.raises(ValueError, match="compression"):
        OutputWriter(tmp_path / "x.h5", GRIDS[2], FIELDS, "float32", ATTRS, {}, "zstd")


def test_large_3d_frames_are_tiled(tmp_path):
    assert frame_chunks((128, 128, 128)) == (64, 64, 64)
    assert frame_chunks((64, 64, 64)) == (64, 64, 64)  # still one frame per chunk
    assert frame_chunks((1024, 1024)) == (512, 512)
    grid = Grid((96, 80, 72), spacing=5.0)
    with (
        pytest.warns(UserWarning, match="lzf"),
        OutputWriter(tmp_path / "big.h5", grid, FIELDS[:1], "float32", ATTRS, {}, "lzf") as w,
    ):
        w.write_frame(0.0, {"IL2": np.ones(grid.shape, dtype=np.float32)})
    with h5py.File(tmp_path / "big.h5", "r") as f:
        chunks = f["fields"]["IL2"].chunks
        assert chunks[0] == 1 and np.prod(chunks[1:]) <= 64**3
        assert chunks[1:] != grid.shape
        assert f["fields"]["IL2"][0].sum() == grid.size


def test_frames_are_flushed_as_written_and_read_under_another_writers_lock(tmp_path):
    """In this process (the cases below start writers and readers of their own): the bytes
    on disk while the writer is still open (what a kill leaves) hold every frame written, and
    open_output reads a file that is locked for writing (as a writer in another process
    holds it: HDF5 would refuse a plain open) without locking."""
    import fcntl

    grid = GRIDS[2]
    path, copy = tmp_path / "live.h5", tmp_path / "copy.h5"
    writer = OutputWriter(path, grid, FIELDS, "float32", ATTRS, regions_for(grid))
    writer.write_frame(0.0, synthetic(grid, 0.0))
    writer.write_frame(5.0, synthetic(grid, 5.0))
    assert writer.n_frames == 2 and writer.last_time == 5.0
    shutil.copy(path, copy)
    with open(copy, "rb+") as held:
        fcntl.flock(held, fcntl.LOCK_EX)
        with pytest.raises(OSError, match="lock"):
            h5py.File(copy, "r")
        with open_output(copy) as out:
            assert out.n_frames == 2 and float(out.frame("IL2", 1)[0, 0]) == 5.0
            maxima = [synthetic(grid, t)["IL2"].max() for t in (0.0, 5.0)]
            assert out.summary["IL2_max"].tolist() == maxima
    writer.close()
    writer.close()  # idempotent


@pytest.mark.slow
def test_frames_are_readable_while_the_writer_is_open(tmp_path, child):
    grid = GRIDS[2]
    path = tmp_path / "live.h5"
    writer = OutputWriter(path, grid, FIELDS, "float32", ATTRS, regions_for(grid))
    writer.write_frame(0.0, synthetic(grid, 0.0))
    writer.write_frame(5.0, synthetic(grid, 5.0))
    assert writer.n_frames == 2 and writer.last_time == 5.0
    # another process: the writer holds the HDF5 lock, open_output falls back to no locking
    result = subprocess.run(child("writer", "read", path), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["2", "5.0"]
    writer.close()


@pytest.mark.slow
def test_a_killed_writer_leaves_every_flushed_frame(tmp_path, child):
    path = tmp_path / "killed.h5"
    result = subprocess.run(child("writer", "exit", path), capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["time"][()], [0.0, 10.0, 20.0])
        assert f["fields"]["IL2"].shape == (3, 6, 8)
        assert np.all(f["fields"]["IL2"][2] == 3.0)
    with open_output(path) as out:
        assert out.n_frames == 3 and out.summary["IL2_max"].tolist() == [1.0, 2.0, 3.0]


@pytest.mark.slow
def test_a_writer_killed_while_writing_leaves_every_completed_frame(tmp_path, child):
    """SIGKILL while frames are being written back to back, so that it lands inside a write:
    the file still opens, with every frame the writer had finished and nothing else."""
    base = np.random.default_rng(0).random((48, 48, 48)).astype(np.float32)
    for trial, delay in enumerate((0.3, 0.55, 0.8)):
        path = tmp_path / f"killed-{trial}.h5"
        command = child("writer", "forever", path)
        writer = subprocess.Popen(command, stdout=subprocess.PIPE, text=True)
        writer.stdout.readline()  # the first frame is written
        time.sleep(delay)
        writer.kill()
        writer.wait(timeout=60)
        completed = 1 + max((int(k) for k in writer.stdout.read().split()), default=0)
        with h5py.File(path, "r") as f:
            frames = f["time"].shape[0]
            # every completed frame; one more if the kill fell between a write and its print
            assert completed <= frames <= completed + 1, (frames, completed)
            np.testing.assert_array_equal(f["time"][()], 10.0 * np.arange(frames))
            for k in range(frames):
                np.testing.assert_array_equal(f["fields"]["IL2"][k], base + k)


def test_bad_frames_are_refused_before_the_file_changes(tmp_path):
    grid = GRIDS[2]
    with OutputWriter(tmp_path / "b.h5", grid, FIELDS, "float32", ATTRS, {}) as writer:
        writer.write_frame(1.0, synthetic(grid, 1.0))
        with pytest.raises(ValueError, match="missing"):
            writer.write_frame(2.0, {"IL2": np.zeros(grid.shape)})
        with pytest.raises(ValueError, match="shape"):
            writer.write_frame(2.0, {"IL2": np.zeros((3, 3)), "T": np.zeros(grid.shape)})
        with pytest.raises(ValueError, match="precedes"):
            writer.write_frame(0.5, synthetic(grid, 0.5))
        assert writer.n_frames == 1
    with h5py.File(tmp_path / "b.h5", "r") as f:
        assert f["fields"]["IL2"].shape[0] == f["time"].shape[0] == 1


def test_checkpoint_round_trip(tmp_path):
    grid = GRIDS[3]
    path = tmp_path / "ck.h5"
    state = {
        "IL2": np.random.default_rng(0).random(grid.shape),
        "T": np.zeros(grid.shape, np.float32),
        "hidden": np.ones(grid.shape, np.float32),  # the full state, not only output fields
    }
    with OutputWriter(path, grid, FIELDS, "float32", ATTRS, {}) as writer:
        writer.write_checkpoint(3.0, 7, None, state)
        saved = read_checkpoint(path)  # readable while the writer is open
        assert (saved.dt, saved.held, saved.scale, saved.cells) == (None, None, None, {})
        state["IL2"] = state["IL2"] * 2
        scale = {"IL2": 2.5, "T": 1e-3}
        writer.write_checkpoint(6.0, 14, 0.25, state, held=(0.5, 8.0), scale=scale)  # in place
    saved = read_checkpoint(path)
    assert (saved.time, saved.step, saved.dt, saved.held) == (6.0, 14, 0.25, (0.5, 8.0))
    assert saved.scale == scale
    assert set(saved.fields) == {"IL2", "T", "hidden"}
    for name, value in state.items():
        np.testing.assert_array_equal(saved.fields[name], value)
        assert saved.fields[name].dtype == value.dtype
    with OutputWriter(path, grid, FIELDS, "float32", ATTRS, {}, resume=True) as writer:
        writer.write_checkpoint(8.0, 16, 0.25, state, held=(0.5, 8.0), scale=scale)
        writer.write_checkpoint(8.5, 18, 0.25, state)  # into the copy of 6 s: its scale goes
        assert read_checkpoint(path).scale is None
        writer.write_checkpoint(9.0, 20, None, {"IL2": np.zeros(grid.shape)})  # new layout
    saved = read_checkpoint(path)
    assert (saved.time, saved.step, saved.dt, set(saved.fields)) == (9.0, 20, None, {"IL2"})
    assert saved.held is None and saved.scale is None  # none left from the earlier ones
    with OutputWriter(path, grid, FIELDS, "float32", ATTRS, {}, resume=True) as writer:
        members = (np.array([0.5, np.nan]), np.array([8.0, np.nan]))  # a sweep's: one holds
        scales = {"IL2": np.array([2.0, np.nan]), "T": np.array([1e-3, np.nan])}
        writer.write_checkpoint(12.0, 24, np.array([0.1, 0.2]), state, held=members, scale=scales)
    saved = read_checkpoint(path)
    step_held, until = saved.held
    np.testing.assert_array_equal(step_held, members[0])
    np.testing.assert_array_equal(until, members[1])
    assert list(saved.scale) == ["IL2", "T"]
    for name, value in scales.items():
        np.testing.assert_array_equal(saved.scale[name], value)
    with OutputWriter(tmp_path / "none.h5", grid, FIELDS, "float32", ATTRS, {}):
        pass
    with pytest.raises(ValueError, match="no checkpoint"):
        read_checkpoint(tmp_path / "none.h5")


ROD = """
[grid]
shape = [8]
spacing = "10 um"

[time]
end = "10 s"
stepper = "{stepper}"
dt = {dt}
output_every = "5 s"

[species.IL2]
diffusion = "10 um^2/s"
initial = 1.0
"""


def test_a_run_checkpoints_its_fixed_step(tmp_path):
    """The checkpoint's dt is the run's step: time.dt where it is fixed (here the explicit
    stepper's 0.5 s), not NaN; with error control, the step it proposes next."""
    from engine.cli.main import main

    config = tmp_path / "rod.toml"
    config.write_text(ROD.format(stepper="explicit", dt='"0.5 s"'))
    out = tmp_path / "rod.h5"
    assert main(["run", str(config), "-o", str(out), "--quiet"]) == 0
    saved = read_checkpoint(out)
    assert (saved.time, saved.step) == (10.0, 20)
    assert saved.dt == 0.5


@pytest.mark.parametrize("stage", ["writing", "swapping", "swapped"])
def test_a_kill_while_checkpointing_keeps_a_complete_checkpoint(tmp_path, stage):
    """The next checkpoint is written beside /checkpoint and then swapped with it; a kill
    at each stage (reproduced here by hand) leaves the latest complete one readable, and a
    resumed writer puts the two copies back in order."""
    grid = GRIDS[3]
    path = tmp_path / "kill.h5"
    state = {"IL2": np.full(grid.shape, 1.0, np.float32)}
    with OutputWriter(path, grid, FIELDS, "float32", ATTRS, {}) as writer:
        writer.write_checkpoint(3.0, 1, None, state)
        writer.write_checkpoint(6.0, 2, None, {"IL2": state["IL2"] * 2})
    with h5py.File(path, "r+") as f:  # a third checkpoint, at 9 s, stopped at `stage`
        spare = f["checkpoint_next"]
        spare.attrs["complete"] = 0
        spare["IL2"][...] = 3.0
        expected = 6.0
        if stage != "writing":
            spare.attrs.update(time=9.0, step=3, complete=1)
            f.move("checkpoint", "checkpoint_swap")
            expected = 9.0
        if stage == "swapped":
            f.move("checkpoint_next", "checkpoint")
    saved = read_checkpoint(path)
    assert saved.time == expected and np.all(saved.fields["IL2"] == expected / 3)
    with OutputWriter(path, grid, FIELDS, "float32", ATTRS, {}, resume=True) as writer:
        writer.write_checkpoint(12.0, 4, None, {"IL2": state["IL2"] * 4})
    with h5py.File(path, "r") as f:
        assert {name for name in f if name.startswith("checkpoint")} == {
            "checkpoint",
            "checkpoint_next",
        }
        assert f["checkpoint"].attrs["time"] == 12.0
        assert f["checkpoint_next"].attrs["time"] == expected  # the previous one, intact
    saved = read_checkpoint(path)
    assert saved.time == 12.0 and np.all(saved.fields["IL2"] == 4.0)


def test_resume_appends_after_the_last_frame(tmp_path):
    grid = GRIDS[2]
    path = write_file(tmp_path / "r.h5", grid, times=(0.0, 10.0))
    with h5py.File(path, "r") as f:
        created = _str(f.attrs["created"])
    attrs = dict(ATTRS, device="gpu0")
    with OutputWriter(
        path, grid, FIELDS, "float32", attrs, regions_for(grid), resume=True
    ) as writer:
        assert writer.n_frames == 2 and writer.last_time == 10.0
        writer.write_frame(20.0, synthetic(grid, 20.0))
        assert writer.n_frames == 3
    with open_output(path) as out:
        np.testing.assert_array_equal(out.time, [0.0, 10.0, 20.0])
        np.testing.assert_allclose(out.frame("IL2", 2), synthetic(grid, 20.0)["IL2"])
        assert out.summary["T_total"].shape == (3,)
        assert out.attrs["created"] == created and out.attrs["device"] == "gpu0"


@pytest.mark.parametrize(
    "change, message",
    [
        (dict(grid=Grid((6, 9), spacing=(2.0, 3.0), origin=(-5.0, 1.0))), "grid shape"),
        (dict(grid=Grid((6, 8), spacing=2.0, origin=(-5.0, 1.0))), "grid spacing"),
        (dict(grid=Grid((2, 6, 8))), "grid shape"),
        (dict(fields=FIELDS[:1]), "fields"),
        (dict(fields=[FIELDS[0], FieldInfo("T", "species")]), "field 'T'"),
        (dict(dtype="float64"), "float32 in the file"),
        (dict(grid=Grid((6, 8), spacing=(2.0, 3.0), origin=(0.0, 1.0))), "grid origin"),
        (dict(grid=Grid((6, 8), spacing=(2.0, 3.0), origin=(-5.0, 1.0), depth=5.0)), "grid depth"),
        (dict(fields=[FieldInfo("IL2", "species", "pM"), FIELDS[1]]), "species in pM requested"),
    ],
)
def test_resume_refuses_an_incompatible_file(tmp_path, change, message):
    grid = GRIDS[2]
    path = write_file(tmp_path / "r.h5", grid, times=(0.0,))
    args = dict(grid=grid, fields=FIELDS, dtype="float32") | change
    with pytest.raises(ValueError, match=message):
        OutputWriter(path, args["grid"], args["fields"], args["dtype"], ATTRS, {}, resume=True)
    with open_output(path) as out:  # untouched, and closed again
        assert out.n_frames == 1


def test_open_output(written):
    path, grid = written
    with open_output(path) as out:
        np.testing.assert_array_equal(out.time, [0.0, 10.0, 20.0])
        assert out.grid == grid
        assert out.fields == ("IL2", "T")
        assert out.units == {"IL2": "nM", "T": "cells/um^3"}
        assert out.kinds == {"IL2": "species", "T": "population"}
        assert out.attrs["format"] == "ilsim" and out.attrs["stepper"] == "imex"
        assert out.attrs["config"] == ATTRS["config"]
        assert set(out.summary) == {"IL2_total", "IL2_max", "T_total", "T_max"}
        for index, t in enumerate(out.time):  # negative indices count from the end
            expected = synthetic(grid, t)["IL2"]
            np.testing.assert_allclose(out.frame("IL2", index - 3), expected, rtol=1e-6)
        assert out.field("T").shape == (3, *grid.shape)
        np.testing.assert_array_equal(out.regions["left"], regions_for(grid)["left"] != 0)
        assert out.regions["all"].dtype == bool and out.regions["all"].all()
        with pytest.raises(KeyError, match="IL7"):
            out.frame("IL7", 0)
        for outside in (3, -4):
            with pytest.raises(IndexError):
                out.frame("IL2", outside)
    with pytest.raises(ValueError, match="closed"):
        out.frame("IL2", 0)


def _corrupt_frames(path, name, keep: int):
    """Overwrite the stored chunks of every frame but `keep` with garbage: reading them fails
    in the gzip filter, so a successful read proves it touched frame `keep` only."""
    with h5py.File(path, "r") as f:
        data = f["fields"][name]
        spans = []
        for index in range(data.shape[0]):
            if index != keep:
                info = data.id.get_chunk_info_by_coord((index,) + (0,) * (data.ndim - 1))
                spans.append((info.byte_offset, info.size))
    with open(path, "r+b") as raw:
        for offset, size in spans:
            raw.seek(offset)
            raw.write(b"\xff" * size)


def test_frame_reads_one_frame_only(tmp_path):
    grid = GRIDS[3]
    path = write_file(tmp_path / "one.h5", grid)
    _corrupt_frames(path, "IL2", keep=1)
    with open_output(path) as out:
        np.testing.assert_allclose(out.frame("IL2", 1), synthetic(grid, 10.0)["IL2"], rtol=1e-6)
        with pytest.raises(OSError):
            out.field("IL2")[()]  # the whole dataset: hits a corrupted chunk
        ds = out.to_xarray()  # lazy: building it reads no field chunk
        np.testing.assert_allclose(ds["IL2"].isel(time=1).values, out.frame("IL2", 1))
        np.testing.assert_allclose(
            ds["IL2"].isel(time=1, x=slice(1, 3)).values[..., 0], out.frame("IL2", 1)[..., 1]
        )


def test_to_xarray(written):
    path, grid = written
    with open_output(path) as out:
        ds = out.to_xarray()
        assert ds["IL2"].dims == ("time", *grid.axes)
        assert ds["IL2"].attrs["units"] == "nM" and ds["T"].attrs["units"] == "cells/um^3"
        assert ds["time"].attrs["units"] == "s"
        np.testing.assert_array_equal(ds["time"].values, out.time)
        for axis, name in enumerate(grid.axes):
            np.testing.assert_allclose(ds[name].values, grid.coordinates(axis))
            assert ds[name].attrs["units"] == "um"
        assert ds["IL2_total"].dims == ("time",)
        assert ds["IL2_total"].attrs["units"] == "molecules"
        np.testing.assert_allclose(ds["T"].sel(time=10.0).values, out.frame("T", 1))
        assert ds.attrs["format"] == "ilsim"


def test_xarray_open_dataset_with_h5netcdf(written):
    xr = pytest.importorskip("xarray")
    pytest.importorskip("h5netcdf")
    path, grid = written
    with xr.open_dataset(path, engine="h5netcdf") as ds:
        assert dict(ds.sizes) == {"time": 3, **dict(zip(grid.axes, grid.shape))}
        for name in ("IL2", "T"):
            assert ds[name].dims == ("time", *grid.axes)
        assert ds["IL2"].attrs["units"] == "nM" and ds["IL2"].attrs["kind"] == "species"
        np.testing.assert_array_equal(ds["time"].values, [0.0, 10.0, 20.0])
        assert ds["time"].dtype == np.float64 and ds["time"].attrs["units"] == "s"
        for axis, name in enumerate(grid.axes):
            np.testing.assert_allclose(ds[name].values, grid.coordinates(axis))
        np.testing.assert_allclose(
            ds["IL2"].isel(time=2).values, synthetic(grid, 20.0)["IL2"], rtol=1e-6
        )
        assert ds.attrs["format"] == "ilsim"
    with xr.open_dataset(path, engine="h5netcdf", group="fields") as ds:
        assert ds["IL2"].dims == ("time", *grid.axes)
    with xr.open_dataset(path, engine="h5netcdf", group="summary") as ds:
        assert ds["IL2_total"].dims == ("time",)


def _check_xdmf(h5_path: Path):
    """Parse the sidecar and check every referenced dataset exists with the stated shape."""
    h5_path = Path(h5_path)
    xdmf = h5_path.with_suffix(".xdmf")
    root = ET.parse(xdmf).getroot()
    assert root.tag == "Xdmf"
    collection = root.find("Domain/Grid")
    assert collection.get("CollectionType") == "Temporal"
    frames = collection.findall("Grid")
    with h5py.File(h5_path, "r") as f:
        grid_attrs = f["grid"].attrs
        shape = tuple(int(n) for n in grid_attrs["shape"])
        np.testing.assert_array_equal(
            [float(g.find("Time").get("Value")) for g in frames], f["time"][()]
        )
        referenced = 0
        cells = shape if len(shape) > 1 else (1, *shape)  # a 1D rod: a mesh 1 x n cells
        for index, frame in enumerate(frames):
            topology = frame.find("Topology")
            assert topology.get("TopologyType") == f"{len(cells)}DCoRectMesh"
            assert [int(n) for n in topology.get("Dimensions").split()] == [n + 1 for n in cells]
            origin, spacing = frame.findall("Geometry/DataItem")
            if len(shape) > 1:  # listed z, y, x like the array axes
                np.testing.assert_allclose(
                    [float(v) for v in origin.text.split()], grid_attrs["origin"]
                )
                np.testing.assert_allclose(
                    [float(v) for v in spacing.text.split()], grid_attrs["spacing"]
                )
            else:  # a rod one cell of its depth thick, centred on its axis (where its cells lie)
                depth = float(grid_attrs["depth"])
                np.testing.assert_allclose(
                    [float(v) for v in origin.text.split()], [-depth / 2, *grid_attrs["origin"]]
                )
                np.testing.assert_allclose(
                    [float(v) for v in spacing.text.split()], [depth, *grid_attrs["spacing"]]
                )
            for item in frame.iter("DataItem"):
                if item.get("Format") != "HDF":
                    continue
                file_name, _, dataset = item.text.strip().partition(":")
                assert file_name == h5_path.name  # relative: the pair can move together
                assert dataset in f, dataset
                stated = tuple(int(n) for n in item.get("Dimensions").split())
                assert f[dataset].shape == stated
                assert int(item.get("Precision")) == f[dataset].dtype.itemsize  # float64 too
                referenced += 1
            for attribute in frame.findall("Attribute"):  # fields and regions alike
                (slab,) = attribute.findall("DataItem")
                assert slab.get("ItemType") == "HyperSlab"
                stated = [int(n) for n in slab.get("Dimensions").split()]
                assert stated == list(cells)  # the mesh's: what vtkXdmfReader reads
                selection, source = slab.findall("DataItem")
                values = np.array(selection.text.split(), dtype=int).reshape(3, -1)
                start, stride, count = values
                dataset = source.text.strip().partition(":")[2]
                if dataset.startswith("/regions/"):
                    assert list(count) == list(shape) and not np.any(start)
                else:
                    assert start[0] == index
                assert np.all(stride == 1)
                assert np.all(start + count <= f[dataset].shape)
                assert np.prod(count) == np.prod(shape)
        assert referenced >= len(frames) * len(f["fields"])
    assert not list(h5_path.parent.glob("*.partial*"))  # the sidecar's temporary is renamed


def test_xdmf_sidecar(written, tmp_path):
    path, grid = written
    _check_xdmf(path)
    # the pair moves together
    moved = tmp_path / "elsewhere"
    moved.mkdir()
    shutil.copy(path, moved / path.name)
    shutil.copy(path.with_suffix(".xdmf"), moved / path.with_suffix(".xdmf").name)
    _check_xdmf(moved / path.name)
    os.remove(moved / path.with_suffix(".xdmf").name)
    assert write_xdmf(moved / path.name) == moved / path.with_suffix(".xdmf").name
    _check_xdmf(moved / path.name)


def test_an_interrupted_sidecar_write_leaves_the_earlier_sidecar_whole(written, request):
    """write_xdmf writes beside the sidecar and renames it: stopped halfway, it leaves the
    earlier sidecar whole and nothing beside it."""
    path, _ = written
    sidecar = path.with_suffix(".xdmf")
    earlier = sidecar.read_text()
    before = sorted(path.parent.iterdir())

    request.getfixturevalue("write_text_stops_halfway")  # after the earlier file is written
    with pytest.raises(KeyboardInterrupt):
        write_xdmf(path)
    assert sidecar.read_text() == earlier
    assert sorted(path.parent.iterdir()) == before


@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_xdmf_region_masks_have_the_fields_dimensions(tmp_path, ndim):
    """A region mask is read with the same dimensions as a field (the mesh's cells; a 1D rod's
    1 x n): vtkXdmfReader read a rod's mask stated as n long as a single value."""
    path = write_file(tmp_path / f"r{ndim}.h5", GRIDS[ndim])
    for frame in ET.parse(path.with_suffix(".xdmf")).getroot().findall("Domain/Grid/Grid"):
        dimensions = {
            attribute.get("Name"): attribute.find("DataItem").get("Dimensions")
            for attribute in frame.findall("Attribute")
        }
        assert set(dimensions) == {"IL2", "T", "region_left", "region_all"}
        assert set(dimensions.values()) == {dimensions["IL2"]}


@pytest.mark.slow
@pytest.mark.parametrize("ndim", [1, 2, 3])
def test_vtk_xdmf_reader_reads_fields_and_regions(tmp_path, ndim):
    """ParaView's XDMF reader (vtkXdmfReader) gets every field and region mask with one value
    per voxel, in the arrays' C order (x fastest, as VTK orders cells)."""
    vtk = pytest.importorskip("vtk")
    from vtk.util.numpy_support import vtk_to_numpy

    grid = GRIDS[ndim]
    path = write_file(tmp_path / f"v{ndim}.h5", grid)
    reader = vtk.vtkXdmfReader()
    reader.SetFileName(str(path.with_suffix(".xdmf")))
    reader.UpdateInformation()
    reader.UpdateTimeStep(10.0)
    mesh = reader.GetOutputDataObject(0)
    assert mesh.GetNumberOfCells() == grid.size
    data = mesh.GetCellData()
    for name, values in synthetic(grid, 10.0).items():
        np.testing.assert_allclose(vtk_to_numpy(data.GetArray(name)), values.ravel(), rtol=1e-6)
    for name, mask in regions_for(grid).items():
        np.testing.assert_array_equal(vtk_to_numpy(data.GetArray(f"region_{name}")), mask.ravel())


def test_xdmf_follows_a_rename_while_open(tmp_path):
    """The run driver writes to OUT.h5.partial and renames it once the first frame is in."""
    grid = GRIDS[2]
    partial = tmp_path / "run.h5.partial"
    final = tmp_path / "run.h5"
    with OutputWriter(partial, grid, FIELDS, "float32", ATTRS, regions_for(grid)) as writer:
        writer.write_frame(0.0, synthetic(grid, 0.0))
        os.replace(partial, final)
        writer.write_frame(1.0, synthetic(grid, 1.0))
    assert (tmp_path / "run.xdmf").exists()
    assert not (tmp_path / "run.h5.xdmf").exists()
    _check_xdmf(final)


def test_only_ilsim_files_of_a_version_it_knows_are_read(tmp_path):
    """A changed meaning bumps format_version (docs/file-format.md): a newer file is refused
    by the reader and by a resume, and an HDF5 file of another format by the reader."""
    grid = GRIDS[2]
    path = write_file(tmp_path / "v.h5", grid, times=(0.0,))
    with h5py.File(path, "r+") as f:
        f.attrs["format_version"] = FORMAT_VERSION + 1
    with pytest.raises(ValueError, match="newer"):
        open_output(path)
    with pytest.raises(ValueError, match="newer"):
        OutputWriter(path, grid, FIELDS, "float32", ATTRS, {}, resume=True)
    with h5py.File(tmp_path / "other.h5", "w") as f:
        f["grid"] = 0
    with pytest.raises(ValueError, match="not an ilsim output file"):
        open_output(tmp_path / "other.h5")
    for name in ("grid", "time", "fields"):  # each was a KeyError: an internal error, status 1
        whole = write_file(tmp_path / f"no-{name}.h5", grid, times=(0.0,))
        with h5py.File(whole, "r+") as f:
            del f[name]
        with pytest.raises(ValueError, match=f"an ilsim file without /{name}; it was not"):
            open_output(whole)


def test_a_field_named_like_a_root_entry_gets_no_root_link(tmp_path):
    """Fields called x and time keep the root's /x and /time (the grid's scale and the frame
    times) and are read from /fields."""
    grid = GRIDS[2]
    fields = [FieldInfo("x", "species"), FieldInfo("time", "population")]
    path = tmp_path / "names.h5"
    values = synthetic(grid, 1.0)
    with OutputWriter(path, grid, fields, "float32", ATTRS, {}) as writer:
        writer.write_frame(1.0, {"x": values["IL2"], "time": values["T"]})
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["x"][()], grid.coordinates(1))
        np.testing.assert_array_equal(f["time"][()], [1.0])
    with open_output(path) as out:
        np.testing.assert_allclose(out.frame("x", 0), values["IL2"])


def test_a_half_written_frame_is_ignored_then_dropped(tmp_path):
    """A kill after the fields and summaries grew but before /time did: open_output and
    to_xarray show the completed frames only, and a resumed writer drops the rest on opening,
    before it writes any frame (a run resumed at its end writes none)."""
    grid = GRIDS[2]
    path = write_file(tmp_path / "h.h5", grid, times=(0.0, 10.0))
    with h5py.File(path, "r+") as f:
        for group in ("fields", "summary"):
            for data in f[group].values():
                data.resize(3, axis=0)
                data[2] = -1.0
    with open_output(path) as out:
        assert out.n_frames == 2
        assert out.summary["IL2_max"].tolist() == [grid.size - 1, grid.size + 9]
        ds = out.to_xarray()
        assert ds.sizes["time"] == 2 and ds["IL2"].shape == (2, *grid.shape)
    with OutputWriter(path, grid, FIELDS, "float32", ATTRS, {}, resume=True):
        pass
    with h5py.File(path, "r") as f:
        for group in ("fields", "summary"):
            assert all(data.shape[0] == 2 for data in f[group].values())


def test_region_masks_are_one_inside_and_follow_a_resume(tmp_path):
    """A mask is stored as 1 wherever it is nonzero, whatever its dtype, and a resumed run's
    changed mask replaces the stored one."""
    grid = GRIDS[2]
    weights = np.zeros(grid.shape)
    weights[0, :3] = (0.5, 2.0, 300.0)
    path = tmp_path / "m.h5"
    with OutputWriter(path, grid, FIELDS, "float32", ATTRS, {"w": weights}):
        pass
    with open_output(path) as out:
        np.testing.assert_array_equal(out.regions["w"], weights != 0)
    moved = np.roll(weights != 0, 1, axis=0)
    with OutputWriter(path, grid, FIELDS, "float32", ATTRS, {"w": moved}, resume=True):
        pass
    with h5py.File(path, "r") as f:
        np.testing.assert_array_equal(f["regions"]["w"][()], moved.astype(np.uint8))


def test_a_checkpoint_keeps_each_fields_dtype(tmp_path):
    """The spare copy is reused only when the names, shapes and dtypes match: a float64 state
    after float32 ones is stored, and read back, exactly."""
    grid = GRIDS[2]
    path = tmp_path / "d.h5"
    precise = np.full(grid.shape, 1 + 2.0**-40)
    with OutputWriter(path, grid, FIELDS, "float32", ATTRS, {}) as writer:
        for t in (1.0, 2.0):
            writer.write_checkpoint(t, int(t), None, {"IL2": precise.astype(np.float32)})
        writer.write_checkpoint(3.0, 3, None, {"IL2": precise})
    saved = read_checkpoint(path)
    assert saved.fields["IL2"].dtype == np.float64
    np.testing.assert_array_equal(saved.fields["IL2"], precise)


def test_a_sweep_file_summarises_and_shows_each_member(tmp_path):
    """A sweep's fields lead with the member axis: each member's summaries take every block it
    comes in (as a sharded run hands them over), and the sidecar reads member k's frame i at
    (k, i, 0, 0) as <name>[k]."""
    grid = GRIDS[2]
    path = tmp_path / "sweep.h5"
    times = (0.0, 10.0, 20.0)
    # the x halves, the one holding each member's maximum (the last voxel) first
    halves = [(slice(0, 2), slice(0, 6), slice(4, 8)), (slice(0, 2), slice(0, 6), slice(0, 4))]
    with OutputWriter(
        path, grid, FIELDS, "float32", ATTRS, {}, members={"k": [1.0, 2.0]}
    ) as writer:
        for t in times:
            fields = {
                name: np.stack([synthetic(grid, t + 100 * k)[name] for k in range(2)])
                for name in ("IL2", "T")
            }
            writer.write_frame(t, {n: [(i, v[i]) for i in halves] for n, v in fields.items()})
    n = grid.size
    for k in range(2):
        with open_output(path, member=k) as out:
            shift = np.array(times) + 100.0 * k
            np.testing.assert_allclose(out.summary["IL2_max"], shift + n - 1)
            np.testing.assert_allclose(
                out.summary["IL2_total"],
                (n * shift + n * (n - 1) / 2) * grid.voxel_volume * MOLECULES_PER_UM3_PER_NM,
                rtol=1e-12,
            )
            np.testing.assert_allclose(out.frame("IL2", 2), synthetic(grid, 20.0 + 100 * k)["IL2"])
    frames = ET.parse(path.with_suffix(".xdmf")).getroot().findall("Domain/Grid/Grid")
    assert len(frames) == len(times)
    for index, frame in enumerate(frames):
        for k in range(2):
            slab = frame.find(f"Attribute[@Name='IL2[{k}]']/DataItem")
            start = [int(v) for v in slab.find("DataItem").text.split()[:4]]
            assert start == [k, index, 0, 0]


def test_a_checkpoint_refreshes_the_sidecar(tmp_path):
    """The sidecar is rewritten on every checkpoint, not only on close: a run killed after
    one leaves a sidecar that shows the frames written by then."""
    grid = GRIDS[2]
    path = tmp_path / "c.h5"
    writer = OutputWriter(path, grid, FIELDS, "float32", ATTRS, {})
    for t in (0.0, 5.0):
        writer.write_frame(t, synthetic(grid, t))
    writer.write_checkpoint(5.0, 10, None, synthetic(grid, 5.0))
    _check_xdmf(path)
    frames = ET.parse(path.with_suffix(".xdmf")).getroot().findall("Domain/Grid/Grid")
    assert [float(g.find("Time").get("Value")) for g in frames] == [0.0, 5.0]
    writer.close()


def test_blocks_of_other_processes_outside_the_field_are_refused():
    """Several processes check that each block lies within the field before writing it."""
    inside = [((slice(0, 6), slice(4, 8)), np.zeros((6, 4)))]
    check_parts("field 'IL2'", inside, (6, 8), whole=False)
    outside = [((slice(0, 6), slice(6, 10)), np.zeros((6, 4)))]
    with pytest.raises(ValueError, match="lies outside the shape"):
        check_parts("field 'IL2'", outside, (6, 8), whole=False)
