"""Reading an ilsim file back: `open_output` gives an `Output` with the time, grid, fields,
summaries and regions as NumPy arrays read on demand, or as a lazily backed xarray Dataset,
and the alive cells of a frame (`Output.cells`) as NumPy arrays or a pandas DataFrame.

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

A field whose name collides with a root entry is readable through group="fields" only.
`/time` has units "s" (not "seconds"), so xarray keeps it as float64 seconds. xarray is
imported only by `Output.to_xarray`.

A file still being written opens too: the writer flushes every frame, and `open_output` falls
back to opening without the HDF5 file lock that the writer holds.
"""

from __future__ import annotations

import functools
from pathlib import Path

import h5py
import numpy as np

from engine.io.layout import (
    CELLS,
    MEMBER_STATISTICS,
    check_format,
    decode_attr,
    open_read,
    read_cells,
    read_grid,
)

COUNT_BLOCK = 1 << 22
"""Most alive flags `Output.cell_counts` reads at once."""


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
    (a sweep's varied key -> values per member; empty for a single run), cell_types.
    Data are read on demand: `frame` reads one frame, `field` is the lazy h5py dataset,
    `to_xarray` a lazily backed Dataset, `cells` one frame's alive cells of a type; all need
    the file open (until `close`).

    A sweep's fields and summaries lead with the member axis; `member` (an index, or one of
    mean, std, min, max, median across the members) makes the file read as a single run's.
    """

    def __init__(self, path, member: int | str | None = None):
        self.path = Path(path)
        self._file = open_read(self.path)
        try:
            f = self._file
            check_format(f, self.path)
            self.members = {k: d[()] for k, d in f["members"].items()} if "members" in f else {}
            self.n_members = int(f.attrs["members"]) if self.members else None
            self.member = self._check_member(member)
            self.grid = read_grid(f)
            self.time = np.asarray(f["time"][()], dtype=np.float64)
            self.fields = tuple(f["fields"].keys())
            self._cells = {info.name: info for info in read_cells(f)}
            self.units = {
                n: decode_attr(f["fields"][n].attrs.get("units", "")) for n in self.fields
            }
            self.kinds = {n: decode_attr(f["fields"][n].attrs.get("kind", "")) for n in self.fields}
            self.attrs = {k: decode_attr(v) for k, v in f.attrs.items()}
            n = len(self.time)
            self.summary = (
                {k: np.asarray(d[..., :n], dtype=np.float64) for k, d in f["summary"].items()}
                if "summary" in f
                else {}
            )
            if self.member is not None:
                self.summary = {k: _select_member(v, self.member) for k, v in self.summary.items()}
            self.summary_units = (
                {k: decode_attr(d.attrs.get("units", "")) for k, d in f["summary"].items()}
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

    def _require_open(self) -> None:
        if self._file is None or not self._file.id.valid:
            raise ValueError(f"{self.path}: the output is closed")

    def _frame_number(self, index: int) -> int:
        """Frame `index` (negative counts from the end) as 0..n_frames-1; IndexError outside."""
        n = self.n_frames
        i = int(index)
        if not -n <= i < n:
            raise IndexError(f"frame {index} out of range: {self.path} holds {n} frames")
        return i % n

    def _dataset(self, name: str) -> h5py.Dataset:
        self._require_open()
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
        return data[self._frame_number(index)]

    # -- cells ----------------------------------------------------------------------------

    @property
    def cell_types(self) -> tuple[str, ...]:
        """The names of the cell types the file holds (/cells), in stored order."""
        return tuple(self._cells)

    def _cell_info(self, type: str):
        if type not in self._cells:
            listed = ", ".join(self._cells) if self._cells else "none"
            raise KeyError(f"no cell type {type!r} in {self.path}; cell types: {listed}")
        return self._cells[type]

    def cell_state(self, type: str) -> tuple[str, ...]:
        """The names of cell type `type`'s state variables, in order."""
        return self._cell_info(type).state

    def cell_capacity(self, type: str) -> int:
        """The most cells of type `type` alive at once: the slots of each frame."""
        return self._cell_info(type).capacity

    def _cell_group(self, type: str) -> h5py.Group:
        self._cell_info(type)
        self._require_open()
        return self._file[CELLS][type]

    def cells(self, type: str, frame: int, table: bool = False):
        """The alive cells of type `type` at frame `frame` (negative counts from the end):
        {"id": (n,) int64, "position": (n, ndim) um in the grid's axis order, <state>: (n,)},
        or with `table` a pandas DataFrame with columns id, the axes (z, y, x subset) and the
        state variables. Reads that frame only."""
        group = self._cell_group(type)
        i = self._frame_number(frame)
        alive = np.flatnonzero(group["alive"][i])
        found = {
            "id": np.asarray(group["id"][i], dtype=np.int64)[alive],
            "position": np.asarray(group["position"][i])[alive],
        }
        for name in self.cell_state(type):
            found[name] = np.asarray(group[name][i])[alive]
        if not table:
            return found
        import pandas as pd

        columns = {"id": found["id"]}
        for axis, name in enumerate(self.grid.axes):
            columns[name] = found["position"][:, axis]
        for name in self.cell_state(type):
            columns[name] = found[name]
        return pd.DataFrame(columns)

    def cell_counts(self, type: str) -> np.ndarray:
        """(n_frames,) int64: how many cells of type `type` are alive in each frame."""
        alive = self._cell_group(type)["alive"]
        n = self.n_frames
        rows = max(1, COUNT_BLOCK // max(1, alive.shape[1]))
        counts = np.zeros(n, dtype=np.int64)
        for start in range(0, n, rows):
            stop = min(n, start + rows)
            counts[start:stop] = np.count_nonzero(alive[start:stop], axis=1)
        return counts

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
        cells = f", cells {', '.join(self._cells)}" if self._cells else ""
        return (
            f"Output({str(self.path)!r}, grid {self.grid.shape}, {self.n_frames} frames, "
            f"fields {', '.join(self.fields)}{cells})"
        )


def open_output(path, member: int | str | None = None) -> Output:
    """Open an ilsim output file read-only (see `Output`); for a sweep, `member` selects one
    member (an index) or a statistic across them ("mean", "std", "min", "max", "median")."""
    return Output(path, member)


def _lazy_array(data: h5py.Dataset):
    """`data` wrapped as a lazily indexed xarray backend array (h5py reads on indexing); the
    whole dataset in memory if this xarray lacks the backend-array API."""
    backend = _h5_backend_array()
    if backend is None:
        return data[()]
    from xarray.core import indexing

    return indexing.LazilyIndexedArray(backend(data))


@functools.cache
def _h5_backend_array():
    """An xarray BackendArray class reading an h5py dataset on indexing (defined on first use,
    since xarray is imported only then); None if this xarray lacks the backend-array API."""
    try:
        from xarray.backends import BackendArray
        from xarray.core import indexing
    except ImportError:  # pragma: no cover - older or reorganised xarray
        return None

    class H5Array(BackendArray):
        def __init__(self, dataset: h5py.Dataset):
            self.dataset = dataset
            self.shape = dataset.shape
            self.dtype = dataset.dtype

        def __getitem__(self, key):
            return indexing.explicit_indexing_adapter(
                key, self.shape, indexing.IndexingSupport.OUTER_1VECTOR, self._raw
            )

        def _raw(self, key):
            return np.asarray(self.dataset[key])

    return H5Array
