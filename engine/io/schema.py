"""Creating an ilsim file's groups and datasets (the layout of `engine.io.layout`), and checking
that an existing file can take more frames of a run (resume)."""

from __future__ import annotations

import h5py
import numpy as np

from engine.io.layout import (
    CELLS,
    FORMAT_NAME,
    FORMAT_VERSION,
    RESERVED_NAMES,
    TIME_CHUNK,
    TOTAL_UNITS,
    CellInfo,
    FieldInfo,
    attr_value,
    decode_attr,
    frame_chunks,
    now_iso,
    read_cells,
    read_grid,
)
from engine.numerics.grid import Grid


def create_layout(
    f: h5py.File,
    grid: Grid,
    fields: tuple[FieldInfo, ...],
    dtype: np.dtype,
    attrs: dict,
    compression: dict,
    members: dict[str, np.ndarray],
) -> None:
    """Root attributes, /grid with its scales, an empty /time, /member(s) for a sweep, empty
    /fields and /summary datasets (extendable along time) and an empty /regions group."""
    f.attrs["format"] = FORMAT_NAME
    f.attrs["format_version"] = FORMAT_VERSION
    f.attrs["created"] = now_iso()
    set_root_attrs(f, attrs)
    _create_grid(f, grid)
    time = f.create_dataset(
        "time", shape=(0,), maxshape=(None,), dtype=np.float64, chunks=(TIME_CHUNK,)
    )
    time.make_scale("time")
    time.attrs["units"] = "s"
    time.attrs["long_name"] = "time"
    time.attrs["axis"] = "T"
    if members:
        _create_members(f, members)
    lead = (len(next(iter(members.values()))),) if members else ()
    group = f.create_group("fields", track_order=True)
    summary = f.create_group("summary", track_order=True)
    chunks = (*(1 for _ in lead), 1, *frame_chunks(grid.shape))
    frame_scales = [*(f["member"] for _ in lead), time]
    for info in fields:
        data = group.create_dataset(
            info.name,
            shape=(*lead, 0, *grid.shape),
            maxshape=(*lead, None, *grid.shape),
            dtype=dtype,
            chunks=chunks,
            **compression,
        )
        data.attrs["units"] = info.units
        data.attrs["kind"] = info.kind
        attach_scales(data, [*frame_scales, *grid_scales(f, grid)])
        if info.name not in RESERVED_NAMES:
            f[info.name] = h5py.SoftLink(f"/fields/{info.name}")
        for stat, units in (("total", TOTAL_UNITS[info.kind]), ("max", info.units)):
            series = _create_summary(summary, info.name, stat, units, lead)
            attach_scales(series, frame_scales)
    f.create_group("regions", track_order=True)


def create_cells(
    f: h5py.File, grid: Grid, cells: tuple[CellInfo, ...], dtype: np.dtype, compression: dict
) -> None:
    """Empty /cells/<type> groups (attrs capacity, state) with position (um), alive, id and
    one dataset per state variable, each extendable along time, one frame per chunk (tiles
    past MAX_CHUNK_VALUES), and the group's `CELL_SCALES`: each array's axes have the
    dimension scales /time, cell (and axis) attached, and labels of those names."""
    if not cells:
        return
    root = f.create_group(CELLS, track_order=True)
    for info in cells:
        group = root.create_group(info.name, track_order=True)
        group.attrs["capacity"] = info.capacity
        group.attrs["state"] = np.array(info.state, dtype=h5py.string_dtype())
        arrays = {
            "position": ((info.capacity, grid.ndim), dtype),
            "alive": ((info.capacity,), np.bool_),
            "id": ((info.capacity,), np.int64),
            **{name: ((info.capacity,), dtype) for name in info.state},
        }
        for name, (shape, kind) in arrays.items():
            group.create_dataset(
                name,
                shape=(0, *shape),
                maxshape=(None, *shape),
                dtype=kind,
                chunks=(1, *frame_chunks(shape)),
                **compression,
            )
        group["position"].attrs["units"] = "um"
        group["position"].attrs["axes"] = np.array(grid.axes, dtype=h5py.string_dtype())
        cell = group.create_dataset("cell", data=np.arange(info.capacity, dtype=np.int64))
        cell.make_scale("cell")
        cell.attrs["long_name"] = "cell slot"
        axis = group.create_dataset("axis", data=np.array(grid.axes, dtype=h5py.string_dtype()))
        axis.make_scale("axis")
        axis.attrs["long_name"] = "grid axis"
        for name in arrays:
            attach_scales(group[name], [f["time"], cell, axis][: group[name].ndim])


def _create_grid(f: h5py.File, grid: Grid) -> None:
    """/grid with its attributes and one coordinate scale per axis (um), linked from the
    root."""
    group = f.create_group("grid", track_order=True)
    group.attrs["shape"] = np.asarray(grid.shape, dtype=np.int64)
    group.attrs["spacing"] = np.asarray(grid.spacing, dtype=np.float64)
    group.attrs["origin"] = np.asarray(grid.origin, dtype=np.float64)
    group.attrs["axes"] = np.array(grid.axes, dtype=h5py.string_dtype())
    group.attrs["depth"] = float(grid.depth)
    group.attrs["voxel_volume"] = float(grid.voxel_volume)
    group.attrs["units"] = "um"
    for axis, name in enumerate(grid.axes):
        scale = group.create_dataset(name, data=grid.coordinates(axis).astype(np.float64))
        scale.make_scale(name)
        scale.attrs["units"] = "um"
        scale.attrs["long_name"] = f"{name} (voxel centre)"
        scale.attrs["axis"] = name.upper()
        f[name] = h5py.SoftLink(f"/grid/{name}")


def _create_members(f: h5py.File, members: dict[str, np.ndarray]) -> None:
    """A sweep's /member scale and /members/<key> values (engine units)."""
    count = len(next(iter(members.values())))
    f.attrs["members"] = count
    scale = f.create_dataset("member", data=np.arange(count, dtype=np.int64))
    scale.make_scale("member")
    scale.attrs["long_name"] = "sweep member"
    group = f.create_group("members", track_order=True)
    for key, values in members.items():
        data = group.create_dataset(key, data=values)
        data.attrs["long_name"] = f"{key} of each member (engine units)"
        data.dims[0].attach_scale(scale)
        data.dims[0].label = "member"


def _create_summary(group: h5py.Group, name: str, stat: str, units: str, lead: tuple):
    """The empty, extendable series /summary/<name>_<stat> (float64) over (member,) time."""
    series = group.create_dataset(
        f"{name}_{stat}",
        shape=(*lead, 0),
        maxshape=(*lead, None),
        dtype=np.float64,
        chunks=(*lead, TIME_CHUNK),
    )
    series.attrs["units"] = units
    series.attrs["field"] = name
    series.attrs["long_name"] = (
        f"domain total of {name}" if stat == "total" else f"maximum of {name}"
    )
    return series


def attach_scales(data: h5py.Dataset, scales: list[h5py.Dataset]) -> None:
    """Attach one dimension scale per axis of `data`, in order, each labelled with the
    scale's name (member, time, z, y, x)."""
    for axis, scale in enumerate(scales):
        data.dims[axis].attach_scale(scale)
        data.dims[axis].label = scale.name.rsplit("/", 1)[-1]


def grid_scales(f: h5py.File, grid: Grid) -> list[h5py.Dataset]:
    """The coordinate scales of the grid's axes, in array order."""
    return [f["grid"][name] for name in grid.axes]


def set_root_attrs(f: h5py.File, attrs: dict) -> None:
    """Root attributes from `attrs`, except format, format_version and created."""
    for key, value in attrs.items():
        if key in ("format", "format_version", "created"):
            continue
        f.attrs[key] = attr_value(value)


def write_regions(f: h5py.File, grid: Grid, regions: dict, compression: dict) -> None:
    """Store region masks (of the grid's shape) in /regions as uint8: new ones created, changed
    ones overwritten."""
    group = f["regions"]
    for name, mask in regions.items():
        mask = np.asarray(mask)
        if mask.shape != grid.shape:
            raise ValueError(
                f"region {name!r}: mask shape {mask.shape} differs from the grid's {grid.shape}"
            )
        mask = (mask != 0).astype(np.uint8)
        if name in group:
            if not np.array_equal(group[name][()], mask):
                group[name][...] = mask
            continue
        data = group.create_dataset(name, data=mask, **compression)
        data.attrs["long_name"] = f"region {name} (1 inside)"
        attach_scales(data, grid_scales(f, grid))


def resume_problems(
    f: h5py.File,
    grid: Grid,
    fields: tuple[FieldInfo, ...],
    dtype: np.dtype,
    members: dict[str, np.ndarray],
    cells: tuple[CellInfo, ...] = (),
) -> list[str]:
    """What stops a run of this grid, fields, dtype, sweep members and cell types from
    appending to `f` (an ilsim file): one phrase per mismatch, none if it can."""
    problems = []
    stored = read_grid(f)
    for what in ("shape", "spacing", "origin", "depth"):
        old, new = getattr(stored, what), getattr(grid, what)
        same = np.shape(old) == np.shape(new) and np.allclose(old, new, rtol=1e-12, atol=0)
        if not same:
            problems.append(f"grid {what} {old} in the file, {new} requested")
            if what == "shape":
                break
    have = {
        name: (decode_attr(d.attrs.get("kind")), decode_attr(d.attrs.get("units")), d.dtype)
        for name, d in f["fields"].items()
    }
    want = {info.name: (info.kind, info.units, dtype) for info in fields}
    if set(have) != set(want):
        problems.append(f"fields {sorted(have)} in the file, {sorted(want)} requested")
    else:
        for name, (kind, units, wanted) in want.items():
            if have[name][:2] != (kind, units):
                problems.append(
                    f"field {name!r} is {have[name][0]} in {have[name][1]} in the file, "
                    f"{kind} in {units} requested"
                )
            elif have[name][2] != wanted:
                problems.append(
                    f"field {name!r} is {have[name][2]} in the file, {wanted} requested"
                )
    stored_members = {k: d[()] for k, d in f["members"].items()} if "members" in f else {}
    same = set(stored_members) == set(members) and all(
        np.array_equal(stored_members[k], v) for k, v in members.items()
    )
    if stored_members and not members:
        problems.append("the file holds a sweep; resume it with ilsim sweep --resume")
    elif members and not stored_members:
        problems.append("the file holds a single run; resume it with ilsim run --resume")
    elif not same:
        problems.append("the sweep's members differ from the file's /members")
    problems += _cell_problems(read_cells(f), cells)
    return problems


def _cell_problems(have: tuple[CellInfo, ...], want: tuple[CellInfo, ...]) -> list[str]:
    """How the cell types in a file differ from those of a run: one phrase per mismatch."""
    stored = {info.name: info for info in have}
    wanted = {info.name: info for info in want}
    if set(stored) != set(wanted):
        return [f"cell types {sorted(stored)} in the file, {sorted(wanted)} requested"]
    problems = []
    for name, info in wanted.items():
        old = stored[name]
        if old.capacity != info.capacity:
            problems.append(
                f"cells {name!r} have capacity {old.capacity} in the file, {info.capacity} "
                "requested"
            )
        if old.state != info.state:
            problems.append(
                f"cells {name!r} have state {list(old.state)} in the file, {list(info.state)} "
                "requested"
            )
    return problems
