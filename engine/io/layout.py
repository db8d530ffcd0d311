"""The HDF5 layout of an ilsim file (DESIGN section 3): its names, units, chunks, compression
and attribute conventions, shared by the writer, the checkpoint, the reader and the sidecar.

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
    /cells/<type>       a cell type: attrs capacity, state (its state variables' names, in
                        order); position (n_frames, capacity, ndim) um in the grid's axis
                        order, alive (n_frames, capacity) bool, id (n_frames, capacity)
                        int64, one (n_frames, capacity) dataset per state variable in the
                        run's dtype; chunked one frame per chunk; empty slots: alive False;
                        axes labelled time, cell, axis, with the dimension scales /time,
                        cell (slot index, int64) and axis (the grid's axis names) attached
    /checkpoint         attrs time, step, dt (NaN for None), complete; one dataset per state
                        field; cells/<type>/ with the arrays of /cells/<type> for one time
                        (in the state's own dtypes) and 0-d int64 next_id and overflow
    /checkpoint_next    the same: where the next checkpoint is written, then swapped with
                        /checkpoint, so that a kill while writing one keeps the previous one
    /z, /y, /x, /<field>   soft links to /grid/<axis> and /fields/<field> (for xarray: see
                        `engine.io.reader`)

A sweep (`ilsim sweep`, `engine.sweep`) writes the same layout with a leading member axis:
/fields/<name> is (n_members, n_frames, *shape), /summary/<name>_* (n_members, n_frames), the
checkpoint fields (n_members, *shape); /member is the member index (a dimension scale) and
/members/<key> holds each varied config key's value per member (float64, engine units; the
root attribute `members` counts them).

Axes are C-ordered with x last. A field whose name collides with a root entry (grid, time,
fields, summary, regions, cells, checkpoint, x, y, z) gets no root link. Sweeps and
multi-process runs hold no cells.
"""

from __future__ import annotations

import datetime
import math
import time
from dataclasses import dataclass
from pathlib import Path

import h5py
import numpy as np

from engine.numerics.grid import Grid

FORMAT_NAME = "ilsim"
FORMAT_VERSION = 1

KINDS = {"species": "nM", "population": "cells/um^3"}
"""Field kind -> the units of its values."""

TOTAL_UNITS = {"species": "molecules", "population": "cells"}
"""Field kind -> the units of its domain total (/summary/<name>_total)."""

MEMBER_STATISTICS = {
    "mean": np.mean,
    "std": np.std,
    "min": np.min,
    "max": np.max,
    "median": np.median,
}
"""Summaries across the members of a sweep that `open_output(path, member=...)` can show."""

COMPRESSIONS = ("gzip", "lzf", "none")

MAX_CHUNK_VALUES = 64**3
"""Largest chunk (values): one frame per chunk up to this size, tiles above it."""

TIME_CHUNK = 1024
"""Chunk length (frames) of /time and the summaries."""

CHECKPOINT, CHECKPOINT_NEXT, CHECKPOINT_SWAP = "checkpoint", "checkpoint_next", "checkpoint_swap"
CHECKPOINT_GROUPS = (CHECKPOINT, CHECKPOINT_NEXT, CHECKPOINT_SWAP)

CELLS = "cells"
"""The group of the cell types, at the root and in a checkpoint."""

CELL_ARRAYS = ("position", "alive", "id")
"""Every cell type's arrays besides its state variables."""

CELL_COUNTERS = ("next_id", "overflow")
"""A cell type's 0-d int64 counters, kept in the checkpoint only."""

CELL_SCALES = ("cell", "axis")
"""A cell type's dimension scales beside its arrays: the slot index (capacity,) int64 and the
grid's axis names (ndim,), so that h5netcdf names every axis (it refuses a dataset with scales
on some axes only; time is the root's /time)."""

RESERVED_NAMES = {
    "grid",
    "time",
    "fields",
    "summary",
    "regions",
    CELLS,
    "x",
    "y",
    "z",
    *CHECKPOINT_GROUPS,
}
"""Root entries that a field's root link would collide with."""


def _valid_name(name: str) -> bool:
    return bool(name) and "/" not in name and name not in (".", "..")


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
        if not _valid_name(self.name):
            raise ValueError(f"field name {self.name!r}: must be non-empty and contain no '/'")
        if self.units is None:
            object.__setattr__(self, "units", KINDS[self.kind])


@dataclass(frozen=True)
class CellInfo:
    """A cell type as the file stores it: its name, capacity (the most cells alive at once:
    slots per frame) and the names of its per-cell float state variables, in order."""

    name: str
    capacity: int
    state: tuple[str, ...] = ()

    def __post_init__(self):
        if not _valid_name(self.name):
            raise ValueError(f"cell type name {self.name!r}: must be non-empty and contain no '/'")
        object.__setattr__(self, "state", tuple(self.state))
        if int(self.capacity) != self.capacity or self.capacity < 1:
            raise ValueError(f"cells {self.name!r}: capacity must be a positive integer")
        object.__setattr__(self, "capacity", int(self.capacity))
        taken = set(CELL_ARRAYS) | set(CELL_COUNTERS) | set(CELL_SCALES)
        for variable in self.state:
            if not _valid_name(variable) or variable in taken:
                raise ValueError(
                    f"cells {self.name!r}: state variable {variable!r} must be non-empty, "
                    f"contain no '/' and differ from {', '.join(sorted(taken))}"
                )
        if len(set(self.state)) != len(self.state):
            raise ValueError(f"cells {self.name!r}: duplicate state variables in {self.state}")


def now_iso() -> str:
    """The present time, ISO 8601 in UTC to the second (the `created` attribute)."""
    return datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")


def attr_value(value):
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


def decode_attr(value):
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


def compression_options(compression: str) -> dict:
    """h5py's dataset options for `compression` ("gzip" | "lzf" | "none")."""
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


LIVE_TRIES = 6
"""Tries at reading a file that a run is still writing. Without SWMR a reader can meet
metadata the writer has not flushed yet (HDF5's "truncated file", "addr overflow": 2 of 30
`ilsim info` of a live file failed so); a fresh open a moment later reads it whole."""


def open_read(path) -> h5py.File:
    """Open read-only; if another process holds the file open for writing (HDF5 file lock),
    open without locking, which reads what that process has flushed, trying again where it
    meets what is not flushed yet (`while_written`)."""
    try:
        return h5py.File(path, "r")
    except OSError as error:
        if "lock" not in str(error).lower():
            raise
    return while_written(lambda: h5py.File(path, "r", locking=False), path)


def while_written(read, path, unread=lambda error: isinstance(error, OSError)):
    """`read()`, tried again after a pause (`LIVE_TRIES` tries in all) where it raises an
    error that `unread` takes for a read of what is not flushed yet while another process
    writes `path` (`being_written`); any other error at once."""
    attempt = 1
    while True:
        try:
            return read()
        except Exception as error:
            if not unread(error) or attempt == LIVE_TRIES or not being_written(path):
                raise
        time.sleep(0.1 * attempt)
        attempt += 1


def being_written(path) -> bool:
    """Whether another process holds `path` open for writing (its HDF5 file lock; a writer
    run with HDF5_USE_FILE_LOCKING=FALSE holds none and is not seen)."""
    try:
        h5py.File(path, "r").close()
    except OSError as error:
        return "lock" in str(error).lower()
    return False


def unreadable(path, error: OSError) -> str:
    """The one-line message for a file HDF5 could not open: its path and HDF5's reason."""
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    return f"{path}: not a readable HDF5 file ({reason})"


def read_grid(f: h5py.File) -> Grid:
    """The grid described by an open file's /grid attributes."""
    attrs = f["grid"].attrs
    depth = attrs.get("depth")
    return Grid(
        shape=tuple(int(n) for n in attrs["shape"]),
        spacing=tuple(float(h) for h in attrs["spacing"]),
        origin=tuple(float(o) for o in attrs["origin"]),
        depth=None if depth is None else float(depth),
    )


def read_cells(f: h5py.File) -> tuple[CellInfo, ...]:
    """The cell types an open file (or checkpoint group) holds under /cells, in stored order."""
    if CELLS not in f:
        return ()
    return tuple(
        CellInfo(
            name,
            int(group.attrs["capacity"]),
            tuple(decode_attr(group.attrs.get("state", ()))),
        )
        for name, group in f[CELLS].items()
    )


def check_format(f: h5py.File, path) -> None:
    """ValueError unless `f` is an ilsim file of a format version this code reads."""
    name = decode_attr(f.attrs.get("format"))
    if name != FORMAT_NAME:
        raise ValueError(f"{path}: not an ilsim output file (format attribute {name!r})")
    version = int(f.attrs.get("format_version", -1))
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path}: format_version {version} is newer than this ilsim reads ({FORMAT_VERSION})"
        )
    missing = [name for name in ("grid", "time", "fields") if name not in f]
    if missing:
        raise ValueError(
            f"{path}: an ilsim file without /{missing[0]}; it was not written whole by ilsim"
        )
