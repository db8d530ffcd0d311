"""Writing a run's HDF5 file (layout in `engine.io.layout`): created with its grid, fields and
regions, then frame after frame, with the checkpoint replaced as the run goes.

Frames are flushed as they are written (H5Fflush, default superblock, no SWMR) so that a
process killed after `write_frame` returns leaves a file that opens with every completed
frame; a reader in another process must open it with `locking=False` (or
HDF5_USE_FILE_LOCKING=FALSE) while the writer still runs, which `open_output` and
`read_checkpoint` fall back to by themselves.
"""

from __future__ import annotations

import math
import os
import warnings
from pathlib import Path

import h5py
import numpy as np

from engine.io.blocks import (
    as_parts,
    check_parts,
    frame_summary,
    member_summaries,
    parts_shape,
)
from engine.io.checkpoint import commit_checkpoint, prepare_checkpoint, truncate_frames
from engine.io.layout import (
    CELL_ARRAYS,
    CELL_COUNTERS,
    CELLS,
    CHECKPOINT_NEXT,
    CellInfo,
    FieldInfo,
    check_format,
    compression_options,
)
from engine.io.schema import (
    create_cells,
    create_layout,
    resume_problems,
    set_root_attrs,
    write_regions,
)
from engine.io.turns import Turns
from engine.io.xdmf import LZF_WARNING, write_sidecar
from engine.numerics.grid import Grid

PARTIAL = ".partial"
"""The suffix of a run's file before its first frame and checkpoint are in (OUT.h5.partial):
such a file gets no sidecar; `move_to` gives it its name, and then its sidecar."""


class OutputWriter:
    """Writes one run's HDF5 file.

    Arguments:
        path: the file to create (or, with `resume`, to append to). The caller handles
            temporary names (`PARTIAL`, `move_to`) and refusing to clobber; this writes
            where told.
        grid: the simulation grid.
        fields: the output fields, in the order they are stored.
        dtype: the run's dtype ("float32" or "float64"), used for /fields.
        attrs: root attributes besides format, format_version and created (ilsim_version,
            backend, device, dtype, stepper, config).
        regions: name -> mask of the grid's shape, stored as uint8.
        compression: "gzip" | "lzf" | "none"; lzf (which ParaView cannot read) with a
            warning, `xdmf.LZF_WARNING`.
        members: for a sweep, each varied key's values per member (engine units): fields get
            a leading member axis.
        resume: open an existing file and append after its last frame; the grid, fields
            (names, kinds, units) and dtype must match (ValueError otherwise). `created` is
            kept, the other root attributes are updated, missing regions added.
        processes: the processes of a multi-process run (`parallel.Processes`), every one
            constructing its own writer with the same arguments. Each writes the blocks it
            holds, one process after another (`engine.io.turns`); only the first writes
            metadata, regions, summaries (combined from every process's blocks) and times.
            None: one process, which keeps the file open.
        cells: the cell types (`CellInfo`), stored under /cells; not with `members` or
            `processes`.

    Fields are given to `write_frame` and `write_checkpoint` as NumPy arrays (one block
    covering the whole field) or as lists of (index, block) pairs, the blocks of the field
    that this process holds (`parallel.host_parts`). A cell type's frame is a dict of NumPy
    arrays: position (capacity, ndim) um in the grid's axis order, alive (capacity,) bool, id
    (capacity,) integer and one (capacity,) array per state variable; a checkpoint's also
    holds next_id and overflow (integer scalars).
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
        cells: list[CellInfo] = (),
    ):
        self.path = Path(path)
        self._turns = None if processes is None else Turns(processes)
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
        self.cells = tuple(cells)
        types = [info.name for info in self.cells]
        if len(set(types)) != len(types):
            raise ValueError(f"cells: duplicate cell types in {types}")
        if self.cells and (self.members or processes is not None):
            what = "sweep members" if self.members else "several processes"
            raise ValueError(f"cells: cell types {types} are not supported with {what}")
        self._compression = compression_options(compression)
        if compression == "lzf" and (self._turns is None or self._turns.first):
            warnings.warn(LZF_WARNING, stacklevel=2)
        self._file: h5py.File | None = None
        self._closed = False
        if self._turns is None:
            self._open(attrs, regions, resume)
        else:
            self._open_together(attrs, regions, resume)

    def _open_together(self, attrs: dict, regions: dict, resume: bool) -> None:
        """Open the file on the first process (which closes it again: every write reopens
        it); every process learns whether that worked and where the file stands."""
        failure = None
        if self._turns.first:
            try:
                self._open(attrs, regions, resume)
            except BaseException as error:
                failure = error
        try:
            self._turns.raise_first_failure(failure)
        except BaseException:
            self._closed = True
            raise
        if self._turns.first:
            self._file.close()
            self._file = None
        where = [self._n_frames, self._last_time] if self._turns.first else [0, 0]
        frames, last = self._turns.from_first(where)
        self._n_frames, self._last_time = int(frames), float(last)

    def _open(self, attrs: dict, regions: dict, resume: bool) -> None:
        """Create the file (or open it to resume) and read where its frames stand."""
        if resume:
            self._file = h5py.File(self.path, "r+")
        else:
            self._file = h5py.File(self.path, "w", track_order=True)
        try:
            if resume:
                self._open_existing(attrs, regions)
            else:
                create_layout(
                    self._file,
                    self.grid,
                    self.fields,
                    self.dtype,
                    attrs,
                    self._compression,
                    self.members,
                )
                create_cells(self._file, self.grid, self.cells, self.dtype, self._compression)
                write_regions(self._file, self.grid, regions, self._compression)
        except BaseException:
            self._file.close()
            self._file = None
            raise
        self._n_frames = int(self._file["time"].shape[0])
        self._last_time = float(self._file["time"][-1]) if self._n_frames else -math.inf
        self._file.flush()

    def _open_existing(self, attrs: dict, regions: dict) -> None:
        """Check that the open file can take this run's frames, drop a frame a kill left half
        written, update the root attributes and add missing regions."""
        f = self._file
        check_format(f, self.path)
        problems = resume_problems(f, self.grid, self.fields, self.dtype, self.members, self.cells)
        if problems:
            raise ValueError(f"cannot resume {self.path}: " + "; ".join(problems))
        truncate_frames(f)
        set_root_attrs(f, attrs)
        if "regions" not in f:
            f.create_group("regions", track_order=True)
        write_regions(f, self.grid, regions, self._compression)

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

    def _each(self, write) -> None:
        """write(file, first) by every process, the first first, one at a time."""
        if self._turns is None:
            write(self._file, True)
        else:
            self._turns.each(self.path, write)

    def _first_only(self, write) -> None:
        """write(file) by the first process alone; the others wait for it."""
        if self._turns is None:
            write(self._file)
        else:
            self._turns.first_only(self.path, write)

    def _frame_parts(self, fields: dict) -> tuple[dict, dict]:
        """Each output field's blocks in the file's dtype, and its summaries (combined over
        the processes); ValueError for a missing field or a block of the wrong shape."""
        missing = [info.name for info in self.fields if info.name not in fields]
        if missing:
            raise ValueError(f"write_frame: missing fields {missing}")
        values, stats = {}, {}
        shape = (*self._lead, *self.grid.shape)
        for info in self.fields:
            parts = as_parts(fields[info.name])
            check_parts(
                f"write_frame: field {info.name!r}", parts, shape, whole=self._turns is None
            )
            parts = [(index, v.astype(self.dtype, copy=False)) for index, v in parts]
            values[info.name] = parts
            stats[info.name] = (
                member_summaries(info, parts, self.grid, self.n_members)
                if self._lead
                else frame_summary(info, parts, self.grid)
            )
        if self._turns is not None:
            stats = self._turns.combine(stats)
        return values, stats

    def _cell_arrays(self, what: str, cells: dict | None, checkpoint: bool) -> dict:
        """Each cell type's arrays checked and cast: position and state in the run's dtype
        (for a `checkpoint`: float arrays kept as they are, next_id and overflow added),
        alive bool, id int64; ValueError for a missing or unknown type or array, or a wrong
        shape."""
        cells = {} if cells is None else cells
        types = [info.name for info in self.cells]
        if set(cells) != set(types):
            raise ValueError(f"{what}: cells of types {sorted(cells)} given, {types} expected")
        result = {}
        for info in self.cells:
            frame = cells[info.name]
            names = (*CELL_ARRAYS, *info.state, *(CELL_COUNTERS if checkpoint else ()))
            missing = [name for name in names if name not in frame]
            if missing:
                raise ValueError(f"{what}: cells {info.name!r} lack {missing}")
            shapes = {"position": (info.capacity, self.grid.ndim)}
            arrays = {}
            for name in names:
                value = np.asarray(frame[name])
                shape = () if name in CELL_COUNTERS else shapes.get(name, (info.capacity,))
                if value.shape != shape:
                    raise ValueError(
                        f"{what}: cells {info.name!r} {name} has shape {value.shape}, "
                        f"expected {shape}"
                    )
                if name in ("id", *CELL_COUNTERS):
                    if value.dtype.kind not in "iu":
                        raise ValueError(f"{what}: cells {info.name!r} {name} must be integers")
                    value = value.astype(np.int64, copy=False)
                elif name == "alive":
                    value = value.astype(np.bool_, copy=False)
                elif not checkpoint or value.dtype.kind != "f":
                    value = value.astype(self.dtype, copy=False)
                arrays[name] = value
            result[info.name] = arrays
        return result

    def write_frame(self, t: float, fields: dict, cells: dict | None = None) -> None:
        """Append one frame at time t (s). `fields` must hold every output field (extra
        entries, e.g. the rest of the state, are ignored), `cells` every cell type's frame
        ({type: arrays}, see the class; extra arrays are ignored). Flushed before
        returning."""
        self._require_open()
        t = float(t)
        if not math.isfinite(t):
            raise ValueError(f"write_frame: time must be finite, got {t}")
        if t < self._last_time:
            raise ValueError(
                f"write_frame: t = {t} s precedes the last frame ({self._last_time} s)"
            )
        # everything is checked and converted before the file changes
        values, stats = self._frame_parts(fields)
        frames = self._cell_arrays("write_frame", cells, checkpoint=False)
        n = self._n_frames
        axis = len(self._lead)
        every = tuple(slice(None) for _ in self._lead)

        def blocks(f, first):
            for info in self.fields:
                data = f["fields"][info.name]
                if first:
                    data.resize(n + 1, axis=axis)
                    for stat, value in zip(("total", "max"), stats[info.name]):
                        series = f["summary"][f"{info.name}_{stat}"]
                        series.resize(n + 1, axis=axis)
                        series[(*every, n)] = value
                for index, block in values[info.name]:
                    data[(*index[:axis], n, *index[axis:])] = block
            for name, arrays in frames.items():  # cells: one process, the first
                for array, value in arrays.items():
                    data = f[CELLS][name][array]
                    data.resize(n + 1, axis=0)
                    data[n] = value
            # out of HDF5's caches before /time grows: one flush writes metadata and data in
            # no set order, and a kill inside it left a frame counted with its data unwritten
            f.flush()

        def finish(f):
            time = f["time"]
            time.resize(n + 1, axis=0)  # last: a frame counts once its time is there
            time[n] = t
            f.flush()

        self._each(blocks)
        self._first_only(finish)
        self._n_frames = n + 1
        self._last_time = t

    def write_checkpoint(
        self,
        t: float,
        step: int,
        dt: float | None,
        fields: dict,
        cells: dict | None = None,
        held=None,
        scale=None,
    ) -> None:
        """Replace /checkpoint with the full state at time t (s) after `step` steps; dt is the
        step size in use (None: NaN in the file), `held` error control's estimate that still
        holds (`State.held`), `scale` the run's size of each field (`State.scale`); `cells`
        holds every cell type's arrays with next_id and overflow (see the class). Written
        beside it and then swapped (`engine.io.checkpoint`): a kill at any point leaves one
        complete checkpoint, which `read_checkpoint` takes. Flushed, and the XDMF sidecar
        refreshed."""
        self._require_open()
        arrays = {name: as_parts(value) for name, value in fields.items()}
        if self.cells and CELLS in arrays:
            raise ValueError(f"write_checkpoint: a field named {CELLS!r} clashes with the cells")
        for name, state in self._cell_arrays("write_checkpoint", cells, checkpoint=True).items():
            arrays |= {f"{CELLS}/{name}/{key}": as_parts(v) for key, v in state.items()}
        if self._turns is None:
            shapes = {name: parts_shape(parts) for name, parts in arrays.items()}
        else:  # several processes checkpoint the state, every field of the grid's shape
            shapes = {name: (*self._lead, *self.grid.shape) for name in arrays}
            for name, parts in arrays.items():
                what = f"write_checkpoint: field {name!r}"
                check_parts(what, parts, shapes[name], whole=False)
        dtypes = {name: parts[0][1].dtype for name, parts in arrays.items()}

        def blocks(f, first):
            if first:
                prepare_checkpoint(f, shapes, dtypes, self._compression)
            for name, parts in arrays.items():
                for index, block in parts:
                    f[CHECKPOINT_NEXT][name][index] = block

        def finish(f):
            commit_checkpoint(f, t, step, dt, held, scale)
            self._write_sidecar(f)

        self._each(blocks)
        self._first_only(finish)

    # -- closing --------------------------------------------------------------------------

    def move_to(self, path) -> None:
        """Rename the file (replacing what is at `path`), write there from now on, and write
        its sidecar there at once (not to leave a replaced file's beside it)."""
        path = Path(path)
        if self._turns is None or self._turns.first:
            os.replace(self.path, path)
        if self._turns is not None:
            self._turns.barrier()
        self.path = path
        self._first_only(self._write_sidecar)

    def _write_sidecar(self, f) -> None:
        """The XDMF sidecar of the open file `f` under its present name; none while that is
        a `PARTIAL` name."""
        path = self.current_path()
        if path.suffix != PARTIAL:
            write_sidecar(f, path)

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
        if self._turns is not None:
            self._first_only(self._write_sidecar)
            return
        try:
            self._file.flush()
            self._write_sidecar(self._file)
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
