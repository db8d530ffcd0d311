"""HDF5 output: the run's frames, summaries, regions and checkpoint (DESIGN section 3).

Plain NumPy and h5py; nothing here imports JAX (xarray is imported only by `to_xarray`).

Layout (format "ilsim", format_version 1)::

    /                   attrs format, format_version, created (ISO 8601 UTC), ilsim_version,
                        backend, device, dtype, stepper, config (TOML text), ...
    /grid               attrs shape, spacing (um), origin (um), axes (["z", "y", "x"] subset,
                        x last), depth (um: slab / rod thickness), voxel_volume (um^3)
    /grid/z, /grid/y, /grid/x   voxel-centre coordinates (float64, um), dimension scales
    /time               (n_frames,) float64 s, extendable dimension scale
    /fields/<name>      (n_frames, *shape) in the run's dtype; attrs units, kind; dimension
                        scales attached (time, then the axes); chunks (1, *shape), or
                        (1, *tile) with at most 64^3 values per chunk for large frames
    /summary/<name>_total, /summary/<name>_max   (n_frames,) float64 with units attrs:
                        total in molecules (species) or cells (populations), max in nM or
                        cells/um^3; the time scale attached
    /regions/<name>     uint8 masks (shape of the grid, axis scales attached)
    /checkpoint         attrs time, step, dt (NaN for None), complete; one dataset per state
                        field
    /checkpoint_next    the same: where the next checkpoint is written, then swapped with
                        /checkpoint, so that a kill while writing one keeps the previous one

A sweep (`ilsim sweep`, `engine.sweep`) writes the same layout with a leading member axis:
/fields/<name> is (n_members, n_frames, *shape), /summary/<name>_* (n_members, n_frames), the
checkpoint fields (n_members, *shape); /member is the member index (a dimension scale) and
/members/<key> holds each varied config key's value per member (float64, engine units; the
root attribute `members` counts them). The XDMF sidecar names each member's field
`<name>[k]`.
    /z, /y, /x, /<field>   soft links to /grid/<axis> and /fields/<field> (see below)

Axes are C-ordered with x last. Frames are flushed as they are written (H5Fflush, default
superblock, no SWMR) so that a process killed after `write_frame` returns leaves a file that
opens with every completed frame; a reader in another process must open it with
`locking=False` (or HDF5_USE_FILE_LOCKING=FALSE) while the writer still runs, which
`open_output` and `read_checkpoint` fall back to by themselves.

xarray / h5netcdf (tested with h5netcdf 1.8, xarray 2026.9): h5netcdf names a variable's
dimensions after the dimension scales attached to it and looks the names up in the variable's
group and its parents, never in sibling groups. Scales only at /grid/x would therefore leave
/fields/<name> unreadable (`KeyError: 'z'` with group="fields"), and a root-level open would
not see /fields at all. So the root also holds soft links /z, /y, /x to the scales in /grid
and /<field> to /fields/<field>; with them

* `xarray.open_dataset(path, engine="h5netcdf")` gives every field with dims
  (time, z, y, x) and coordinates time (s), z, y, x (um), units in the attributes;
* `group="fields"` gives the same fields and dims (without coordinate values: those live in
  the parent group); `group="summary"` gives the summaries over `time`.

A field whose name collides with a root entry (grid, time, fields, summary, regions,
checkpoint, x, y, z) gets no root link and is readable through group="fields" only.
`/time` has units "s" (not "seconds"), so xarray keeps it as float64 seconds.

XDMF: `OUT.xdmf` beside `OUT.h5` (written on every checkpoint and on close, to the file's
current name, so a file renamed while open gets a matching sidecar; `write_xdmf` regenerates
it) holds a temporal collection of uniform grids, 3DCoRectMesh / 2DCoRectMesh (1D: a
2DCoRectMesh one cell of `depth` thick), cell-centred attributes read through a hyperslab of
`OUT.h5:/fields/<name>` per frame. Origin and spacing are listed z, y, x (the order ParaView's
reader reverses into VTK's x, y, z); the topology counts points, shape + 1 per axis. The
reference uses the h5 file's bare name so both files can move together. "lzf" compression is
an h5py-only filter that ParaView cannot decode; use "gzip" or "none" for ParaView.
"""

from __future__ import annotations

import datetime
import math
import os
import xml.etree.ElementTree as ET
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from engine.numerics.constants import MOLECULES_PER_UM3_PER_NM
from engine.numerics.grid import Grid
from engine.numerics.parallel import host_parts

FORMAT_NAME = "ilsim"
FORMAT_VERSION = 1


KINDS = {"species": "nM", "population": "cells/um^3"}
TOTAL_UNITS = {"species": "molecules", "population": "cells"}
COMPRESSIONS = ("gzip", "lzf", "none")
MAX_CHUNK_VALUES = 64**3
"""Largest chunk (values): one frame per chunk up to this size, tiles above it."""

CHECKPOINT, CHECKPOINT_NEXT, CHECKPOINT_SWAP = "checkpoint", "checkpoint_next", "checkpoint_swap"
_CHECKPOINT_GROUPS = (CHECKPOINT, CHECKPOINT_NEXT, CHECKPOINT_SWAP)
_RESERVED = {"grid", "time", "fields", "summary", "regions", "x", "y", "z", *_CHECKPOINT_GROUPS}
_TIME_CHUNK = 1024


@dataclass(frozen=True)
class FieldInfo:
    """An output field: its name, kind ("species" | "population") and units (from the kind
    when left out: nM for species, cells/um^3 for populations)."""

    name: str
    kind: str
    units: str | None = None

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"field {self.name!r}: kind must be species or population")
        if not self.name or "/" in self.name or self.name in (".", ".."):
            raise ValueError(f"field name {self.name!r}: must be non-empty and contain no '/'")
        if self.units is None:
            object.__setattr__(self, "units", KINDS[self.kind])


# ----------------------------------------------------------------------------------------------
# small helpers


def _now_iso() -> str:
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def _attr_value(value):
    """A Python value as something h5py stores as a plain attribute."""
    if value is None:
        return ""
    if isinstance(value, bool | np.bool_):  # h5py would store an enum that netCDF lacks
        return int(value)
    if isinstance(value, str | bytes | bool | int | float | np.generic):
        return value
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, list | tuple | np.ndarray):
        array = np.asarray(value)
        if array.dtype.kind in "US" or (array.dtype == object and array.size > 0):
            return np.array([str(v) for v in array.ravel()], dtype=h5py.string_dtype())
        return array
    return str(value)


def _decode(value):
    """An attribute as plain Python: str for strings, lists of str, numbers, arrays."""
    if isinstance(value, bytes):
        return value.decode()
    if isinstance(value, np.ndarray):
        if value.dtype.kind in "OSU":
            return [v.decode() if isinstance(v, bytes) else str(v) for v in value.ravel()]
        return value
    if isinstance(value, np.generic):
        return value.item()
    return value


def _compression_options(compression: str) -> dict:
    if compression not in COMPRESSIONS:
        raise ValueError(
            f"output.compression: expected one of {', '.join(COMPRESSIONS)}, got {compression!r}"
        )
    if compression == "none":
        return {}
    options = {"compression": compression, "shuffle": True}
    if compression == "gzip":
        options["compression_opts"] = 4
    return options


def frame_chunks(shape: tuple[int, ...]) -> tuple[int, ...]:
    """Chunk shape (without the time axis) for frames of `shape`: the whole frame when it
    holds at most MAX_CHUNK_VALUES values, else a tile made by halving the longest side until
    it fits (64^3 for 128^3 frames)."""
    chunk = [max(1, int(n)) for n in shape]
    while math.prod(chunk) > MAX_CHUNK_VALUES:
        axis = int(np.argmax(chunk))
        chunk[axis] = (chunk[axis] + 1) // 2
    return tuple(chunk)


def _open_read(path) -> h5py.File:
    """Open read-only; if another process holds the file open for writing (HDF5 file lock),
    open without locking, which reads what that process has flushed."""
    try:
        return h5py.File(path, "r")
    except OSError as error:
        if "lock" not in str(error).lower():
            raise
        return h5py.File(path, "r", locking=False)


def _read_grid(f: h5py.File) -> Grid:
    attrs = f["grid"].attrs
    depth = attrs.get("depth")
    return Grid(
        shape=tuple(int(n) for n in attrs["shape"]),
        spacing=tuple(float(h) for h in attrs["spacing"]),
        origin=tuple(float(o) for o in attrs["origin"]),
        depth=None if depth is None else float(depth),
    )


def _check_format(f: h5py.File, path) -> None:
    name = _decode(f.attrs.get("format"))
    if name != FORMAT_NAME:
        raise ValueError(f"{path}: not an ilsim output file (format attribute {name!r})")
    version = int(f.attrs.get("format_version", -1))
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {version} is newer than this ilsim reads ({FORMAT_VERSION})"
        )


def _summaries(info: FieldInfo, parts: list, grid: Grid) -> tuple[float, float]:
    """(domain integral, maximum) of one frame from its blocks, in float64."""
    total = sum(float(np.sum(v, dtype=np.float64)) for _, v in parts) * grid.voxel_volume
    if info.kind == "species":
        total *= MOLECULES_PER_UM3_PER_NM
    maxima = [float(np.max(v)) for _, v in parts if v.size]
    return total, max(maxima) if maxima else math.nan


def _member_summaries(info: FieldInfo, parts: list, grid: Grid, n_members: int):
    """(totals, maxima) per member of one frame of a sweep, from its blocks."""
    totals, maxima = np.zeros(n_members), np.full(n_members, -np.inf)
    for index, values in parts:
        rows = np.arange(n_members)[index[0]]
        for row, member in zip(rows, values):
            total, peak = _summaries(info, [(index[1:], member)], grid)
            totals[row] += total
            maxima[row] = max(maxima[row], peak)
    return totals, maxima


def _parts_shape(parts) -> tuple[int, ...]:
    """The global shape that (index, block) pairs cover."""
    if len(parts) == 1:
        return parts[0][1].shape
    ndim = parts[0][1].ndim
    return tuple(max(index[a].stop for index, _ in parts) for a in range(ndim))


def as_parts(value) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """A field as (index, block) pairs: kept when already so (from `parallel.host_parts`),
    else the blocks of a (possibly sharded) array this process holds."""
    if isinstance(value, list):
        return value
    return host_parts(value)


# ----------------------------------------------------------------------------------------------
# writer


_MESSAGE_BYTES = 1024
"""Room for the first process's error message, sent to the others of a multi-process run."""


class OutputWriter:
    """Writes one run's HDF5 file (layout in the module docstring).

    Arguments:
        path: the file to create (or, with `resume`, to append to). The caller handles
            temporary names and refusing to clobber; this writes where told.
        grid: the simulation grid.
        fields: the output fields, in the order they are stored.
        dtype: the run's dtype ("float32" or "float64"), used for /fields.
        attrs: root attributes besides format, format_version and created (ilsim_version,
            backend, device, dtype, stepper, config).
        regions: name -> mask of the grid's shape, stored as uint8.
        compression: "gzip" | "lzf" | "none".
        members: for a sweep, each varied key's values per member (engine units): fields get
            a leading member axis.
        resume: open an existing file and append after its last frame; the grid, fields
            (names, kinds, units) and dtype must match (ValueError otherwise). `created` is
            kept, the other root attributes are updated, missing regions added.
        processes: the processes of a multi-process run (`parallel.Processes`), every one
            constructing its own writer with the same arguments. Each writes the blocks it
            holds, one process after another (the file is opened only for each write, so a
            plain h5py on a shared file system suffices); only the first writes metadata,
            regions, summaries (combined from every process's blocks) and times. None: one
            process, which keeps the file open.
    """

    def __init__(
        self,
        path,
        grid: Grid,
        fields: list[FieldInfo],
        dtype: str,
        attrs: dict,
        regions: dict[str, np.ndarray],
        compression: str = "gzip",
        resume: bool = False,
        members: dict[str, np.ndarray] | None = None,
        processes=None,
    ):
        self.path = Path(path)
        self._processes = processes
        self.members = {k: np.asarray(v, dtype=np.float64) for k, v in (members or {}).items()}
        self.n_members = len(next(iter(self.members.values()))) if self.members else None
        self._lead = () if self.n_members is None else (self.n_members,)
        self.grid = grid
        self.fields = tuple(fields)
        self.dtype = np.dtype(dtype)
        self.compression = compression
        names = [info.name for info in self.fields]
        if len(set(names)) != len(names):
            raise ValueError(f"output fields: duplicate names in {names}")
        if self.dtype.kind != "f":
            raise ValueError(f"output dtype: expected a float type, got {dtype!r}")
        self._compression = _compression_options(compression)
        self._file: h5py.File | None = None
        self._closed = False
        first = processes is None or processes.rank == 0
        failure = None
        if first:
            try:
                self._open(attrs, regions, resume)
            except BaseException as error:
                failure = error
        if processes is None:
            if failure is not None:
                raise failure
            return
        # every process learns whether the first could open the file (and why not), and
        # where the file stands
        message = np.zeros(_MESSAGE_BYTES, np.uint8)
        if failure is not None:
            text = (str(failure) or type(failure).__name__).encode()[:_MESSAGE_BYTES]
            message[: len(text)] = np.frombuffer(text, np.uint8)
        first_message = processes.gather(message)[0]
        if first_message.any():
            self._closed = True
            raise failure or ValueError(bytes(first_message).rstrip(b"\0").decode(errors="replace"))
        if first:
            self._file.close()
            self._file = None
        where = [self._n_frames, self._last_time] if first else [0, 0]
        frames, last = processes.gather(np.array(where, dtype=np.float64))[0]
        self._n_frames, self._last_time = int(frames), float(last)

    def _open(self, attrs: dict, regions: dict, resume: bool) -> None:
        if resume:
            self._file = h5py.File(self.path, "r+")
        else:
            self._file = h5py.File(self.path, "w", track_order=True)
        try:
            if resume:
                self._open_existing(attrs, regions)
            else:
                self._create(attrs, regions)
        except BaseException:
            self._file.close()
            self._file = None
            raise
        self._n_frames = int(self._file["time"].shape[0])
        self._last_time = float(self._file["time"][-1]) if self._n_frames else -math.inf
        self._file.flush()

    # -- creation -------------------------------------------------------------------------

    def _create(self, attrs: dict, regions: dict) -> None:
        f, grid = self._file, self.grid
        f.attrs["format"] = FORMAT_NAME
        f.attrs["format_version"] = FORMAT_VERSION
        f.attrs["created"] = _now_iso()
        self._set_attrs(attrs)

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

        time = f.create_dataset(
            "time", shape=(0,), maxshape=(None,), dtype=np.float64, chunks=(_TIME_CHUNK,)
        )
        time.make_scale("time")
        time.attrs["units"] = "s"
        time.attrs["long_name"] = "time"
        time.attrs["axis"] = "T"

        if self.members:
            self._write_members()
        lead = self._lead
        fields = f.create_group("fields", track_order=True)
        summary = f.create_group("summary", track_order=True)
        chunks = (*(1 for _ in lead), 1, *frame_chunks(grid.shape))
        for info in self.fields:
            data = fields.create_dataset(
                info.name,
                shape=(*lead, 0, *grid.shape),
                maxshape=(*lead, None, *grid.shape),
                dtype=self.dtype,
                chunks=chunks,
                **self._compression,
            )
            data.attrs["units"] = info.units
            data.attrs["kind"] = info.kind
            self._attach(data, with_time=True)
            if info.name not in _RESERVED:
                f[info.name] = h5py.SoftLink(f"/fields/{info.name}")
            for stat, units in (
                ("total", TOTAL_UNITS[info.kind]),
                ("max", info.units),
            ):
                series = summary.create_dataset(
                    f"{info.name}_{stat}",
                    shape=(*lead, 0),
                    maxshape=(*lead, None),
                    dtype=np.float64,
                    chunks=(*lead, _TIME_CHUNK),
                )
                series.attrs["units"] = units
                series.attrs["field"] = info.name
                series.attrs["long_name"] = (
                    f"domain total of {info.name}" if stat == "total" else f"maximum of {info.name}"
                )
                if lead:
                    series.dims[0].attach_scale(f["member"])
                    series.dims[0].label = "member"
                series.dims[len(lead)].attach_scale(time)
                series.dims[len(lead)].label = "time"
        f.create_group("regions", track_order=True)
        self._write_regions(regions)

    def _write_members(self) -> None:
        f = self._file
        f.attrs["members"] = self.n_members
        scale = f.create_dataset("member", data=np.arange(self.n_members, dtype=np.int64))
        scale.make_scale("member")
        scale.attrs["long_name"] = "sweep member"
        group = f.create_group("members", track_order=True)
        for key, values in self.members.items():
            data = group.create_dataset(key, data=values)
            data.attrs["long_name"] = f"{key} of each member (engine units)"
            data.dims[0].attach_scale(scale)
            data.dims[0].label = "member"

    def _attach(self, data: h5py.Dataset, with_time: bool) -> None:
        f = self._file
        offset = 0
        if with_time:
            if self._lead:
                data.dims[0].attach_scale(f["member"])
                data.dims[0].label = "member"
                offset = 1
            data.dims[offset].attach_scale(f["time"])
            data.dims[offset].label = "time"
            offset += 1
        for axis, name in enumerate(self.grid.axes):
            data.dims[axis + offset].attach_scale(f["grid"][name])
            data.dims[axis + offset].label = name

    def _set_attrs(self, attrs: dict) -> None:
        for key, value in attrs.items():
            if key in ("format", "format_version", "created"):
                continue
            self._file.attrs[key] = _attr_value(value)

    def _write_regions(self, regions: dict) -> None:
        group = self._file["regions"]
        for name, mask in regions.items():
            mask = np.asarray(mask)
            if mask.shape != self.grid.shape:
                raise ValueError(
                    f"region {name!r}: mask shape {mask.shape} differs from the grid's "
                    f"{self.grid.shape}"
                )
            mask = (mask != 0).astype(np.uint8)
            if name in group:
                if np.array_equal(group[name][()], mask):
                    continue
                group[name][...] = mask
                continue
            data = group.create_dataset(name, data=mask, **self._compression)
            data.attrs["long_name"] = f"region {name} (1 inside)"
            self._attach(data, with_time=False)

    # -- resume ---------------------------------------------------------------------------

    def _open_existing(self, attrs: dict, regions: dict) -> None:
        f, path = self._file, self.path
        _check_format(f, path)
        problems = []
        stored = _read_grid(f)
        for what in ("shape", "spacing", "origin", "depth"):
            old, new = getattr(stored, what), getattr(self.grid, what)
            same = np.shape(old) == np.shape(new) and np.allclose(old, new, rtol=1e-12, atol=0)
            if not same:
                problems.append(f"grid {what} {old} in the file, {new} requested")
                if what == "shape":
                    break
        have = {
            name: (_decode(d.attrs.get("kind")), _decode(d.attrs.get("units")), d.dtype)
            for name, d in f["fields"].items()
        }
        want = {info.name: (info.kind, info.units, self.dtype) for info in self.fields}
        if set(have) != set(want):
            problems.append(f"fields {sorted(have)} in the file, {sorted(want)} requested")
        else:
            for name, (kind, units, dtype) in want.items():
                if have[name][:2] != (kind, units):
                    problems.append(
                        f"field {name!r} is {have[name][0]} in {have[name][1]} in the file, "
                        f"{kind} in {units} requested"
                    )
                elif have[name][2] != dtype:
                    problems.append(
                        f"field {name!r} is {have[name][2]} in the file, {dtype} requested"
                    )
        stored_members = {k: d[()] for k, d in f["members"].items()} if "members" in f else {}
        same = set(stored_members) == set(self.members) and all(
            np.array_equal(stored_members[k], v) for k, v in self.members.items()
        )
        if not same:
            problems.append("the sweep's members differ from the file's /members")
        if problems:
            raise ValueError(f"cannot resume {path}: " + "; ".join(problems))
        # frames are complete only up to /time: drop a frame that a kill left half written
        frames = int(f["time"].shape[0])
        axis = len(self._lead)
        for group in ("fields", "summary"):
            for data in f[group].values():
                if data.shape[axis] != frames:
                    data.resize(frames, axis=axis)
        self._set_attrs(attrs)
        if "regions" not in f:
            f.create_group("regions", track_order=True)
        self._write_regions(regions)

    # -- frames ---------------------------------------------------------------------------

    @property
    def n_frames(self) -> int:
        return self._n_frames

    @property
    def last_time(self) -> float | None:
        """Time (s) of the last frame in the file, None before the first."""
        return None if self._n_frames == 0 else self._last_time

    def _require_open(self) -> None:
        if self._closed:
            raise ValueError(f"{self.path}: the output writer is closed")

    def _in_turns(self, write) -> None:
        """write(file, first) by every process, the first process first, one at a time."""
        if self._processes is None:
            write(self._file, True)
            return
        for rank in range(self._processes.size):
            if rank == self._processes.rank:
                with h5py.File(self.path, "r+") as f:
                    write(f, rank == 0)
            self._processes.barrier()

    def _by_first(self, write) -> None:
        """write(file) by the first process alone; the others wait for it."""
        if self._processes is None:
            write(self._file)
            return
        if self._processes.rank == 0:
            with h5py.File(self.path, "r+") as f:
                write(f)
        self._processes.barrier()

    def _check_blocks(self, what: str, parts, shape: tuple[int, ...]) -> None:
        """The blocks must cover `shape` (one process) or lie within it (several)."""
        if self._processes is None:
            if _parts_shape(parts) != shape:
                raise ValueError(f"{what} has shape {_parts_shape(parts)}, expected {shape}")
            return
        for index, block in parts:
            inside = block.ndim == len(shape) and all(i.stop <= n for i, n in zip(index, shape))
            if not inside:
                raise ValueError(f"{what}: a block at {index} lies outside the shape {shape}")

    def _combine(self, stats: dict) -> dict:
        """Each field's (total, max) of this process's blocks combined over every process
        (sum, max), all fields in one exchange. (Sweeps, whose summaries are per member,
        run in one process.)"""
        if self._processes is None or not stats:
            return stats
        every = self._processes.gather(np.array(list(stats.values()), np.float64))
        totals, peaks = every[:, :, 0].sum(axis=0), every[:, :, 1].max(axis=0)
        return {n: (float(totals[i]), float(peaks[i])) for i, n in enumerate(stats)}

    def write_frame(self, t: float, fields: dict[str, np.ndarray]) -> None:
        """Append one frame at time t (s). `fields` must hold every output field (extra
        entries, e.g. the rest of the state, are ignored). Flushed before returning."""
        self._require_open()
        t = float(t)
        if not math.isfinite(t):
            raise ValueError(f"write_frame: time must be finite, got {t}")
        if t < self._last_time:
            raise ValueError(
                f"write_frame: t = {t} s precedes the last frame ({self._last_time} s)"
            )
        missing = [info.name for info in self.fields if info.name not in fields]
        if missing:
            raise ValueError(f"write_frame: missing fields {missing}")
        # everything is checked and converted before the file changes
        values, stats = {}, {}
        lead = self._lead
        for info in self.fields:
            parts = as_parts(fields[info.name])
            shape = (*lead, *self.grid.shape)
            self._check_blocks(f"write_frame: field {info.name!r}", parts, shape)
            parts = [(index, v.astype(self.dtype, copy=False)) for index, v in parts]
            values[info.name] = parts
            stats[info.name] = (
                _member_summaries(info, parts, self.grid, self.n_members)
                if lead
                else _summaries(info, parts, self.grid)
            )
        stats = self._combine(stats)
        n = self._n_frames
        axis = len(lead)

        def blocks(f, first):
            for info in self.fields:
                data = f["fields"][info.name]
                if first:
                    data.resize(n + 1, axis=axis)
                    for stat, value in zip(("total", "max"), stats[info.name]):
                        series = f["summary"][f"{info.name}_{stat}"]
                        series.resize(n + 1, axis=axis)
                        series[(*(slice(None) for _ in lead), n)] = value
                for index, block in values[info.name]:
                    data[(*index[:axis], n, *index[axis:])] = block
            # out of HDF5's caches before /time grows: one flush writes metadata and data in
            # no set order, and a kill inside it left a frame counted with its data unwritten
            f.flush()

        def finish(f):
            time = f["time"]
            time.resize(n + 1, axis=0)  # last: a frame counts once its time is there
            time[n] = t
            f.flush()

        self._in_turns(blocks)
        self._by_first(finish)
        self._n_frames = n + 1
        self._last_time = t

    def write_checkpoint(
        self, t: float, step: int, dt: float | None, fields: dict[str, np.ndarray]
    ) -> None:
        """Replace /checkpoint with the full state at time t (s) after `step` steps; dt is the
        step size in use (None: NaN in the file). Written into /checkpoint_next, marked
        complete, then swapped with /checkpoint: a kill at any point leaves one complete
        checkpoint (`read_checkpoint` takes the latest). Flushed, and the XDMF sidecar
        refreshed."""
        self._require_open()
        arrays = {name: as_parts(value) for name, value in fields.items()}
        if self._processes is None:
            shapes = {name: _parts_shape(parts) for name, parts in arrays.items()}
        else:  # several processes checkpoint the state, every field of the grid's shape
            shapes = {name: (*self._lead, *self.grid.shape) for name in arrays}
            for name, parts in arrays.items():
                self._check_blocks(f"write_checkpoint: field {name!r}", parts, shapes[name])
        dtypes = {name: parts[0][1].dtype for name, parts in arrays.items()}

        def blocks(f, first):
            if first:
                self._prepare_checkpoint(f, shapes, dtypes)
            for name, parts in arrays.items():
                for index, block in parts:
                    f[CHECKPOINT_NEXT][name][index] = block

        def finish(f):
            group = f[CHECKPOINT_NEXT]
            group.attrs["time"] = float(t)
            group.attrs["step"] = int(step)
            group.attrs["dt"] = math.nan if dt is None else float(dt)
            group.attrs["complete"] = 1
            f.flush()
            if CHECKPOINT in f:
                f.move(CHECKPOINT, CHECKPOINT_SWAP)
            f.move(CHECKPOINT_NEXT, CHECKPOINT)
            if CHECKPOINT_SWAP in f:
                f.move(CHECKPOINT_SWAP, CHECKPOINT_NEXT)
            f.flush()
            _write_xdmf_file(f, self.current_path())

        self._in_turns(blocks)
        self._by_first(finish)

    def _prepare_checkpoint(self, f: h5py.File, shapes: dict, dtypes: dict) -> None:
        """/checkpoint_next with a dataset per field, reused when the shapes and dtypes match,
        marked incomplete until its attributes are written."""
        _settle_checkpoints(f)
        group = f.get(CHECKPOINT_NEXT)
        reusable = group is not None and set(group.keys()) == set(shapes)
        if reusable:
            for name in shapes:
                data = group[name]
                if data.shape != shapes[name] or data.dtype != dtypes[name]:
                    reusable = False
                    break
        if not reusable:
            if group is not None:
                del f[CHECKPOINT_NEXT]
            group = f.create_group(CHECKPOINT_NEXT, track_order=True)
            for name, shape in shapes.items():
                chunked = dict(chunks=frame_chunks(shape), **self._compression)
                group.create_dataset(
                    name,
                    shape=shape,
                    dtype=dtypes[name],
                    **(chunked if shape and math.prod(shape) else {}),
                )
        group.attrs["complete"] = 0  # written in place: no growth, marked meanwhile

    # -- closing --------------------------------------------------------------------------

    def move_to(self, path) -> None:
        """Rename the file (replacing what is at `path`) and write there from now on."""
        path = Path(path)
        if self._processes is None or self._processes.rank == 0:
            os.replace(self.path, path)
        if self._processes is not None:
            self._processes.barrier()
        self.path = path

    def current_path(self) -> Path:
        """The file's present name: the path given, or where it was renamed to while open
        (read from /proc/self/fd where the OS has it)."""
        if self._file is not None:
            try:
                fd = self._file.id.get_vfd_handle()
                name = Path(os.readlink(f"/proc/self/fd/{int(fd)}"))
                if name.exists():
                    return name
            except (OSError, TypeError, ValueError, AttributeError):
                pass
        return self.path

    def flush(self) -> None:
        self._require_open()
        if self._file is not None:  # (several processes close the file after each write)
            self._file.flush()

    def close(self) -> None:
        """Flush and close the file and write the XDMF sidecar; a second call does nothing."""
        if self._closed:
            return
        self._closed = True
        if self._processes is not None:
            self._by_first(lambda f: _write_xdmf_file(f, self.path))
            return
        try:
            self._file.flush()
            _write_xdmf_file(self._file, self.current_path())
        finally:
            self._file.close()
            self._file = None

    def __enter__(self) -> OutputWriter:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "closed" if self._closed else f"{self._n_frames} frames"
        return f"OutputWriter({str(self.path)!r}, {state})"


# ----------------------------------------------------------------------------------------------
# checkpoint


def latest_checkpoint(f: h5py.File):
    """The complete checkpoint group with the latest time (None: none complete): /checkpoint,
    or the other copy where a kill came while they were being swapped."""
    groups = [f[name] for name in _CHECKPOINT_GROUPS if name in f]
    complete = [g for g in groups if int(g.attrs.get("complete", 1)) == 1 and "time" in g.attrs]
    return max(complete, key=lambda g: float(g.attrs["time"]), default=None)


def _settle_checkpoints(f: h5py.File) -> None:
    """After a kill while the checkpoints were being swapped: the latest complete one as
    /checkpoint, the other as /checkpoint_next (to be written next)."""
    latest = latest_checkpoint(f)
    if latest is not None and latest.name != f"/{CHECKPOINT}":
        if CHECKPOINT in f:
            del f[CHECKPOINT]
        f.move(latest.name, CHECKPOINT)
    if CHECKPOINT_SWAP in f:
        if CHECKPOINT_NEXT in f:
            del f[CHECKPOINT_SWAP]
        else:
            f.move(CHECKPOINT_SWAP, CHECKPOINT_NEXT)


def read_checkpoint(path, load=None) -> tuple[float, int, float | None, dict]:
    """(time s, step, dt or None, {name: array}) from a file's /checkpoint. `load` turns the
    checkpoint's datasets ({name: h5py.Dataset}) into the arrays, reading only what it needs
    (`Simulation.load_fields` reads each process's own blocks); by default all of them."""
    with _open_read(path) as f:
        group = latest_checkpoint(f)
        if group is None:
            if any(name in f for name in _CHECKPOINT_GROUPS):
                raise ValueError(f"{path}: the checkpoint was being written when the run stopped")
            raise ValueError(f"{path}: holds no checkpoint")
        dt = float(group.attrs["dt"])
        datasets = dict(group.items())
        fields = {k: d[()] for k, d in datasets.items()} if load is None else load(datasets)
        return (
            float(group.attrs["time"]),
            int(group.attrs["step"]),
            None if math.isnan(dt) else dt,
            fields,
        )


# ----------------------------------------------------------------------------------------------
# XDMF sidecar


def _number_type(dtype: np.dtype) -> tuple[str, str]:
    dtype = np.dtype(dtype)
    if dtype.kind == "f":
        return "Float", str(dtype.itemsize)
    if dtype.kind == "u":
        return ("UChar" if dtype.itemsize == 1 else "UInt"), str(dtype.itemsize)
    return ("Char" if dtype.itemsize == 1 else "Int"), str(dtype.itemsize)


def _dims(values) -> str:
    return " ".join(str(int(v)) for v in values)


def _floats(values) -> str:
    return " ".join(repr(float(v)) for v in values)


def xdmf_text(f: h5py.File, h5_name: str) -> str:
    """The XDMF document for an open ilsim file whose bare file name is `h5_name`."""
    grid = _read_grid(f)
    shape, spacing, origin = grid.shape, grid.spacing, grid.origin
    if grid.ndim == 1:  # a rod: a 2D mesh one cell (of the rod's depth) thick
        cells = (1, shape[0])
        spacing, origin = (grid.depth, spacing[0]), (-0.5 * grid.depth, origin[0])
    else:
        cells = shape
    mesh_dims = 3 if len(cells) == 3 else 2
    topology_type = f"{mesh_dims}DCoRectMesh"
    geometry_type = "ORIGIN_DXDYDZ" if mesh_dims == 3 else "ORIGIN_DXDY"
    times = f["time"][()]
    fields = [(name, data.shape, data.dtype) for name, data in f["fields"].items()]
    regions = (
        [(name, data.shape, data.dtype) for name, data in f["regions"].items()]
        if ("regions" in f)
        else []
    )

    root = ET.Element("Xdmf", Version="2.0")
    domain = ET.SubElement(root, "Domain")
    series = ET.SubElement(
        domain, "Grid", Name="ilsim", GridType="Collection", CollectionType="Temporal"
    )
    for index, t in enumerate(times):
        uniform = ET.SubElement(series, "Grid", Name=f"frame_{index:06d}", GridType="Uniform")
        ET.SubElement(uniform, "Time", Value=repr(float(t)))
        ET.SubElement(
            uniform, "Topology", TopologyType=topology_type, Dimensions=_dims(np.add(cells, 1))
        )
        geometry = ET.SubElement(uniform, "Geometry", GeometryType=geometry_type)
        for name, values in (("Origin", origin), ("Spacing", spacing)):
            item = ET.SubElement(
                geometry,
                "DataItem",
                Name=name,
                Dimensions=str(mesh_dims),
                NumberType="Float",
                Precision="8",
                Format="XML",
            )
            item.text = _floats(values)  # z, y, x: ParaView reverses them into x, y, z
        for (name, data_shape, dtype), member in (
            (field, member) for field in fields for member in _members_of(field[1], grid.ndim)
        ):
            number, precision = _number_type(dtype)
            attribute = ET.SubElement(
                uniform,
                "Attribute",
                Name=name if member is None else f"{name}[{member}]",
                AttributeType="Scalar",
                Center="Cell",
            )
            slab = ET.SubElement(
                attribute,
                "DataItem",
                ItemType="HyperSlab",
                Dimensions=_dims(cells),
            )
            selection = ET.SubElement(
                slab, "DataItem", Dimensions=f"3 {len(data_shape)}", Format="XML"
            )
            lead = () if member is None else (member,)
            selection.text = "  ".join(
                (
                    _dims((*lead, index) + (0,) * grid.ndim),
                    _dims((1,) * len(data_shape)),
                    _dims((*(1 for _ in lead), 1, *grid.shape)),
                )
            )
            source = ET.SubElement(
                slab,
                "DataItem",
                Dimensions=_dims(data_shape),
                NumberType=number,
                Precision=precision,
                Format="HDF",
            )
            source.text = f"{h5_name}:/fields/{name}"
        for name, data_shape, dtype in regions:
            number, precision = _number_type(dtype)
            attribute = ET.SubElement(
                uniform, "Attribute", Name=f"region_{name}", AttributeType="Scalar", Center="Cell"
            )
            item = ET.SubElement(
                attribute,
                "DataItem",
                Dimensions=_dims(data_shape),
                NumberType=number,
                Precision=precision,
                Format="HDF",
            )
            item.text = f"{h5_name}:/regions/{name}"
    ET.indent(root, space=" ")
    return '<?xml version="1.0" ?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _members_of(data_shape, ndim: int) -> list:
    """The member indices of a field dataset: [None] for a single run's."""
    return list(range(data_shape[0])) if len(data_shape) == ndim + 2 else [None]


def _write_xdmf_file(f: h5py.File, h5_path: Path) -> Path:
    h5_path = Path(h5_path)
    target = h5_path.with_suffix(".xdmf")
    temporary = target.with_name(f".{target.name}.{os.getpid()}.tmp")
    temporary.write_text(xdmf_text(f, h5_path.name))
    os.replace(temporary, target)
    return target


def write_xdmf(path) -> Path:
    """(Re)write the sidecar `path.with_suffix(".xdmf")` of an ilsim file; returns its path."""
    with _open_read(path) as f:
        _check_format(f, path)
        return _write_xdmf_file(f, Path(path))


# ----------------------------------------------------------------------------------------------
# reading


MEMBER_STATISTICS = {
    "mean": np.mean,
    "std": np.std,
    "min": np.min,
    "max": np.max,
    "median": np.median,
}
"""Summaries across the members of a sweep that `open_output(path, member=...)` can show."""


class _MemberView:
    """One member of a sweep's (n_members, n_frames, *shape) dataset, or a statistic across
    the members, with the shape, chunks and lazy slicing of a single run's dataset."""

    def __init__(self, data: h5py.Dataset, member: int | str):
        self.data, self.member = data, member
        self.shape, self.dtype, self.attrs = data.shape[1:], data.dtype, data.attrs
        self.ndim = len(self.shape)
        self.chunks = data.chunks[1:] if data.chunks else None

    def __len__(self) -> int:
        return self.shape[0]

    def __getitem__(self, key):
        key = key if isinstance(key, tuple) else (key,)
        if isinstance(self.member, int):
            return self.data[(self.member, *key)]
        values = np.asarray(self.data[(slice(None), *key)])
        return MEMBER_STATISTICS[self.member](values, axis=0).astype(self.dtype, copy=False)


def _select_member(values: np.ndarray, member: int | str) -> np.ndarray:
    if isinstance(member, int):
        return values[member]
    return MEMBER_STATISTICS[member](values, axis=0)


class Output:
    """An ilsim output file opened read-only (`engine.open_output`); a context manager.

    Attributes: time (s), grid, fields (names in stored order), attrs (root attributes),
    units and kinds (per field), summary (name_total / name_max -> float64 arrays), members
    (a sweep's varied key -> values per member; empty for a single run).
    Data are read on demand: `frame` reads one frame, `field` is the lazy h5py dataset,
    `to_xarray` a lazily backed Dataset; all need the file open (until `close`).

    A sweep's fields and summaries lead with the member axis; `member` (an index, or one of
    mean, std, min, max, median across the members) makes the file read as a single run's.
    """

    def __init__(self, path, member: int | str | None = None):
        self.path = Path(path)
        self._file = _open_read(self.path)
        try:
            f = self._file
            _check_format(f, self.path)
            self.members = {k: d[()] for k, d in f["members"].items()} if "members" in f else {}
            self.n_members = int(f.attrs["members"]) if self.members else None
            self.member = self._check_member(member)
            self.grid = _read_grid(f)
            self.time = np.asarray(f["time"][()], dtype=np.float64)
            self.fields = tuple(f["fields"].keys())
            self.units = {n: _decode(f["fields"][n].attrs.get("units", "")) for n in self.fields}
            self.kinds = {n: _decode(f["fields"][n].attrs.get("kind", "")) for n in self.fields}
            self.attrs = {k: _decode(v) for k, v in f.attrs.items()}
            n = len(self.time)
            self.summary = (
                {k: np.asarray(d[..., :n], dtype=np.float64) for k, d in f["summary"].items()}
                if "summary" in f
                else {}
            )
            if self.member is not None:
                self.summary = {k: _select_member(v, self.member) for k, v in self.summary.items()}
            self.summary_units = (
                {k: _decode(d.attrs.get("units", "")) for k, d in f["summary"].items()}
                if "summary" in f
                else {}
            )
        except BaseException:
            self._file.close()
            raise

    def _check_member(self, member):
        if member is None:
            return None
        if self.n_members is None:
            raise ValueError(f"{self.path}: a single run, not a sweep; leave out the member")
        if isinstance(member, str) and member.lstrip("-").isdigit():
            member = int(member)
        if isinstance(member, int):
            if not 0 <= member < self.n_members:
                raise ValueError(
                    f"member {member}: out of range, {self.path} holds members "
                    f"0..{self.n_members - 1}"
                )
            return member
        if member not in MEMBER_STATISTICS:
            raise ValueError(
                f"member {member!r}: give an index 0..{self.n_members - 1} or one of "
                f"{', '.join(MEMBER_STATISTICS)}"
            )
        return member

    @property
    def is_sweep(self) -> bool:
        """A sweep read whole (no member chosen): fields lead with the member axis."""
        return self.n_members is not None and self.member is None

    @property
    def n_frames(self) -> int:
        return len(self.time)

    def _dataset(self, name: str) -> h5py.Dataset:
        if self._file is None or not self._file.id.valid:
            raise ValueError(f"{self.path}: the output is closed")
        if name not in self.fields:
            raise KeyError(f"no field {name!r} in {self.path}; fields: {', '.join(self.fields)}")
        data = self._file["fields"][name]
        return data if self.member is None else _MemberView(data, self.member)

    def field(self, name: str) -> h5py.Dataset:
        """The lazy (n_frames, *shape) dataset of field `name` ((n_members, n_frames, *shape)
        for a sweep read whole); slicing reads only what it selects."""
        return self._dataset(name)

    def frame(self, name: str, index: int) -> np.ndarray:
        """Field `name` at frame `index` (negative counts from the end); reads that frame
        only."""
        if self.is_sweep:
            raise ValueError(
                f"{self.path} holds a sweep of {self.n_members} members; choose a member "
                f"(0..{self.n_members - 1}) or one of {', '.join(MEMBER_STATISTICS)}"
            )
        data = self._dataset(name)
        n = self.n_frames
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"frame {index} out of range: {self.path} holds {n} frames")
        return data[i % n]

    @property
    def regions(self) -> dict[str, np.ndarray]:
        """Region masks as boolean arrays of the grid's shape."""
        if "regions" not in self._file:
            return {}
        return {name: data[()] != 0 for name, data in self._file["regions"].items()}

    def to_xarray(self):
        """An xarray.Dataset: fields over ("time", *grid.axes) read lazily from the open file,
        summaries over time, coordinates time (s) and the voxel centres (um), units in attrs."""
        import xarray as xr

        dims_space = self.grid.axes
        coords = {"time": ("time", self.time, {"units": "s", "long_name": "time"})}
        for axis, name in enumerate(dims_space):
            coords[name] = (
                name,
                self.grid.coordinates(axis),
                {"units": "um", "long_name": f"{name} (voxel centre)"},
            )
        lead = ("member",) if self.is_sweep else ()
        if lead:
            coords["member"] = ("member", np.arange(self.n_members))
            for key, values in self.members.items():
                coords[key] = ("member", values, {"long_name": f"{key} (engine units)"})
        data_vars = {}
        for name in self.fields:
            data = self._dataset(name)
            n, axis = self.n_frames, len(lead)
            whole = data.shape[axis] == n  # else a frame a kill left half written
            data_vars[name] = xr.Variable(
                (*lead, "time", *dims_space),
                _lazy_array(data) if whole else data[(*(slice(None) for _ in lead), slice(0, n))],
                {"units": self.units[name], "kind": self.kinds[name]},
            )
        for name, values in self.summary.items():
            if name not in data_vars:
                data_vars[name] = xr.Variable(
                    (*lead, "time"), values, {"units": self.summary_units.get(name, "")}
                )
        attrs = {k: v for k, v in self.attrs.items()}
        return xr.Dataset(data_vars, coords=coords, attrs=attrs)

    def close(self) -> None:
        if self._file is not None:
            self._file.close()
            self._file = None

    def __enter__(self) -> Output:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def __repr__(self) -> str:
        return (
            f"Output({str(self.path)!r}, grid {self.grid.shape}, {self.n_frames} frames, "
            f"fields {', '.join(self.fields)})"
        )


def open_output(path, member: int | str | None = None) -> Output:
    """Open an ilsim output file read-only (see `Output`); for a sweep, `member` selects one
    member (an index) or a statistic across them ("mean", "std", "min", "max", "median")."""
    return Output(path, member)


_LAZY_CLASS = None


def _lazy_array(data: h5py.Dataset):
    """`data` wrapped as a lazily indexed xarray backend array (h5py reads on indexing); the
    whole dataset in memory if this xarray lacks the backend-array API."""
    global _LAZY_CLASS
    try:
        from xarray.backends import BackendArray
        from xarray.core import indexing
    except ImportError:  # pragma: no cover - older or reorganised xarray
        return data[()]
    if _LAZY_CLASS is None:

        class _H5Array(BackendArray):
            def __init__(self, dataset):
                self.dataset = dataset
                self.shape = dataset.shape
                self.dtype = dataset.dtype

            def __getitem__(self, key):
                return indexing.explicit_indexing_adapter(
                    key, self.shape, indexing.IndexingSupport.OUTER_1VECTOR, self._raw
                )

            def _raw(self, key):
                return np.asarray(self.dataset[key])

        _LAZY_CLASS = _H5Array
    return indexing.LazilyIndexedArray(_LAZY_CLASS(data))
