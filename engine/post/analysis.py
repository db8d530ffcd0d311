"""Post-processing of ilsim output files: summaries, field statistics, slices, radial and line
profiles, the screening length fitted from a profile, the fraction of tissue above a threshold,
exposure per region, and the cells a map shows.

Every function takes the object `engine.open_output` returns (an `engine.io.reader.Output`)
and reads what it needs on demand: one frame (or one slice of it) at a time, and a large 3D
frame in blocks of at most `BLOCK_VALUES` values, so that no function holds a whole 3D frame,
let alone the whole file, in memory. NumPy only (no JAX, no matplotlib, no pint: units in
requests are read by `engine.post.quantities`).

Conventions:

* Positions (centers, line ends) are in um in the grid's axis order, (z, y, x) / (y, x) / (x,),
  like `engine.regions` and `Grid.index_of`. (The command line takes X,Y[,Z] and reverses it.)
* A frame is chosen with `time` (seconds, or a string with a unit such as "30 min"; the
  nearest frame within the file's span; None: the last frame) or `frame` (an index, negative
  from the end).
* `slice` picks a plane of a 3D output: "z=12" (an index), "z=30um" (a position), a
  `(axis name, index)` pair, or a `Slice`.
* Bad names, times, slices or positions raise `AnalysisError` (a ValueError) with a one-line
  message that lists what exists.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from engine.io.layout import TOTAL_UNITS
from engine.numerics.constants import MOLECULES_PER_UM3_PER_NM
from engine.post.quantities import UnitError, read_quantity

BLOCK_VALUES = 1 << 21
"""Most values read at once from a frame (2 Mi: 8 MB of float32, 16 MB in float64)."""

GEOMETRIES = ("sphere", "cylinder", "plane")
"""Steady-state shapes of a decaying, diffusing cytokine around a source: a point in 3D
(exp(-r/L)/r), a line or a point in 2D (K0(r/L)), a plane or a point in 1D (exp(-r/L))."""


slice_ = slice  # the builtin, under a name that the `slice` parameters below do not shadow


class AnalysisError(ValueError):
    """A request the file cannot answer (unknown field, time out of range, ...); one line."""


# ----------------------------------------------------------------------------------------------
# formatting helpers


def text_table(header, rows, indent: str = "") -> str:
    """Rows of strings (or values) in columns padded to their widest entry, header first."""
    rows = [tuple(str(v) for v in row) for row in [header, *rows]]
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join(
        indent + "  ".join(v.ljust(w) for v, w in zip(row, widths)).rstrip() for row in rows
    )


def format_time(seconds: float) -> str:
    """A time in a readable unit: '45 s', '30 min', '6 h', '2.5 d'."""
    t = float(seconds)
    a = abs(t)
    if a < 120:
        return f"{t:.4g} s"
    if a < 2 * 3600:
        return f"{t / 60:.4g} min"
    if a < 2 * 86400:
        return f"{t / 3600:.4g} h"
    return f"{t / 86400:.4g} d"


def time_unit(span: float) -> tuple[str, float]:
    """(unit name, seconds per unit) suiting times up to `span` seconds."""
    span = abs(float(span))
    if span < 120:
        return "s", 1.0
    if span < 2 * 3600:
        return "min", 60.0
    if span < 2 * 86400:
        return "h", 3600.0
    return "d", 86400.0


def times_text(times) -> str:
    """The frame times as a short list: all of them up to 12, else the first and last few."""
    times = np.asarray(times, dtype=float)
    if times.size == 0:
        return "no frames"
    units = [("d", 86400.0), ("h", 3600.0), ("min", 60.0), ("s", 1.0)]
    unit, scale = time_unit(float(np.max(np.abs(times))))
    for name, size in units[[u for u, _ in units].index(unit) :]:
        unit, scale = name, size
        scaled = times / size
        if np.allclose(scaled, np.round(scaled, 3), rtol=0, atol=1e-9 * max(1.0, scaled.max())):
            break
    values = [f"{t / scale:.6g}" for t in times]
    if len(values) > 12:
        values = values[:5] + ["..."] + values[-3:]
    return f"{', '.join(values)} {unit} ({times.size} frame{'s' * (times.size != 1)})"


# ----------------------------------------------------------------------------------------------
# fields, frames, times


def check_field(out, name: str) -> str:
    """`name` if the file holds that field; AnalysisError listing the fields otherwise."""
    if name not in out.fields:
        listed = ", ".join(out.fields) if out.fields else "none"
        raise AnalysisError(f"no field {name!r} in {out.path}; fields: {listed}")
    return name


def to_seconds(value) -> float:
    """A time as seconds: a number (s) or a string with a unit ("30 min")."""
    if isinstance(value, bool):
        raise AnalysisError(f"time {value!r}: expected seconds or a string with a unit")
    if isinstance(value, int | float | np.integer | np.floating):
        t = float(value)
    elif isinstance(value, str):
        text = value.strip()
        try:
            t = float(text)
        except ValueError:
            try:
                t = read_quantity(text, "time")
            except UnitError as error:
                raise AnalysisError(f"time {value!r}: {error}") from None
    else:
        raise AnalysisError(f"time {value!r}: expected seconds or a string with a unit")
    if not math.isfinite(t):
        raise AnalysisError(f"time {value!r}: must be finite")
    return t


def frame_index(out, time=None, frame: int | None = None) -> int:
    """Index of the frame to use: `frame` (negative from the end) if given, else the frame
    nearest `time` (s or a string with a unit; "first"/"last"/"end" work too), which must lie
    within the file's span (to half a frame interval); the last frame when both are None."""
    times = np.asarray(out.time, dtype=float)
    n = times.size
    if n == 0:
        raise AnalysisError(f"{out.path} holds no frames")
    if frame is not None:
        if time is not None:
            raise AnalysisError("give a time or a frame index, not both")
        i = int(frame)
        if not -n <= i < n:
            raise AnalysisError(
                f"frame {frame} out of range: {out.path} holds {n} frames (0..{n - 1}); "
                f"times {times_text(times)}"
            )
        return i % n
    if time is None:
        return n - 1
    if isinstance(time, str) and time.strip().lower() in ("first", "last", "end"):
        return 0 if time.strip().lower() == "first" else n - 1
    t = to_seconds(time)
    steps = np.diff(times)
    steps = steps[steps > 0]
    tolerance = 0.5 * float(np.max(steps)) if steps.size else 0.0
    tolerance = max(tolerance, 1e-9 * max(1.0, float(np.max(np.abs(times)))))
    if not times[0] - tolerance <= t <= times[-1] + tolerance:
        raise AnalysisError(
            f"time {time!r} ({format_time(t)}) lies outside {out.path}'s frames: "
            f"{times_text(times)}"
        )
    return int(np.argmin(np.abs(times - t)))


# ----------------------------------------------------------------------------------------------
# slices and views of one frame


@dataclass(frozen=True)
class Slice:
    """A plane of a 3D grid: `axis` (its index in the grid's axes), `name` ("z", "y" or "x"),
    voxel `index` along it and that voxel centre's `position` (um)."""

    axis: int
    name: str
    index: int
    position: float

    def __str__(self) -> str:
        return f"{self.name} = {self.position:g} um (index {self.index})"


_SLICE_TEXT = re.compile(r"^\s*([A-Za-z]+)\s*=\s*([^\s].*?)\s*$")


def parse_slice(grid, spec) -> Slice | None:
    """A `Slice` of a 3D grid from "z=12" (voxel index), "z=30um" / "z=30 um" (a position,
    or any length with a unit), an (axis name, index) pair, or a Slice; None gives None (for
    a 3D grid callers usually want `default_slice`). Only 3D grids have slices."""
    if spec is None or isinstance(spec, Slice):
        return spec
    if grid.ndim != 3:
        raise AnalysisError(
            f"slice {spec!r}: the output is {grid.ndim}D ({', '.join(grid.axes)}); "
            "slices apply to 3D outputs"
        )
    if isinstance(spec, str):
        match = _SLICE_TEXT.match(spec)
        if not match:
            raise AnalysisError(
                f"slice {spec!r}: expected AXIS=INDEX or AXIS=POSITION with a unit, e.g. z=12 "
                "or z=30um"
            )
        name, value = match.group(1).lower(), match.group(2)
    else:
        try:
            name, value = spec
        except (TypeError, ValueError):
            raise AnalysisError(f"slice {spec!r}: expected (axis, index)") from None
        name = str(name).lower()
    if name not in grid.axes:
        raise AnalysisError(f"slice {spec!r}: axis must be one of {', '.join(grid.axes)}")
    axis = grid.axes.index(name)
    n, h, o = grid.shape[axis], grid.spacing[axis], grid.origin[axis]
    upper = o + n * h
    if isinstance(value, str) and re.fullmatch(r"[+-]?\d+", value.strip()):
        value = int(value)
    if isinstance(value, int | np.integer):
        index = int(value)
        if not 0 <= index < n:
            raise AnalysisError(
                f"slice {spec!r}: index out of range 0..{n - 1} along {name} (or give a "
                f"position in {o:g}..{upper:g} um, e.g. {name}={o + 0.5 * n * h:g}um)"
            )
    else:
        try:
            position = read_quantity(value, "length") if isinstance(value, str) else float(value)
        except (UnitError, TypeError, ValueError):
            raise AnalysisError(
                f"slice {spec!r}: expected a voxel index or a length such as 30um"
            ) from None
        if not o <= position <= upper:
            raise AnalysisError(
                f"slice {spec!r}: position outside the grid, {o:g}..{upper:g} um along {name} "
                f"(indices 0..{n - 1})"
            )
        index = min(n - 1, int(math.floor((position - o) / h)))
    return Slice(axis, name, index, float(o + (index + 0.5) * h))


def default_slice(grid) -> Slice | None:
    """The middle z plane of a 3D grid; None for 1D and 2D grids."""
    if grid.ndim != 3:
        return None
    return parse_slice(grid, ("z", grid.shape[0] // 2))


def _ranges(start: int, stop: int, step: int, chunk: int) -> list[tuple[int, int]]:
    """[a, b) ranges covering start..stop, at most `step` long, ending on multiples of
    `chunk` (so that a range never splits an HDF5 chunk it could hold whole)."""
    ranges = []
    a = start
    while a < stop:
        b = (a // chunk) * chunk + step if step >= chunk else a + step
        b = min(stop, max(b, a + 1))
        ranges.append((a, b))
        a = b
    return ranges


def _block_boxes(box, chunks, max_values: int) -> Iterator[tuple[slice, ...]]:
    """Boxes tiling `box` (slices), each of at most `max_values` values (or one chunk, if
    chunks are larger) and made of whole chunks where the box allows: split along the first
    axis, then the second, ..., in multiples of the chunk shape."""
    sizes = [s.stop - s.start for s in box]
    steps = list(sizes)
    for k in range(len(sizes)):
        if math.prod(steps) <= max_values:
            break
        chunk = max(1, min(int(chunks[k]), sizes[k]))
        others = math.prod(steps[:k]) * math.prod(steps[k + 1 :])
        if chunk * others <= max_values:
            steps[k] = max(chunk, (max_values // others) // chunk * chunk)
            break
        steps[k] = chunk
    per_axis = [
        _ranges(s.start, s.stop, step, max(1, int(c))) for s, step, c in zip(box, steps, chunks)
    ]
    for ranges in itertools.product(*per_axis):
        yield tuple(slice_(a, b) for a, b in ranges)


class _View:
    """One frame of one field restricted to a plane (3D with a slice) or the whole grid:
    `axes` are the grid axes it spans, `read(box)` reads a box of them, `blocks(box)` yields
    (box, values) pieces of at most BLOCK_VALUES values, aligned with the HDF5 chunks."""

    def __init__(self, out, name: str, index: int, plane: Slice | None = None):
        self.out = out
        self.grid = out.grid
        self.name = check_field(out, name)
        self.index = int(index)
        self.time = float(out.time[self.index])
        self.plane = plane
        self._data = out.field(name)
        self.axes = tuple(a for a in range(self.grid.ndim) if plane is None or a != plane.axis)
        self.shape = tuple(self.grid.shape[a] for a in self.axes)
        self.spacing = tuple(self.grid.spacing[a] for a in self.axes)
        self.origin = tuple(self.grid.origin[a] for a in self.axes)
        chunks = self._data.chunks
        self.chunks = tuple(int(chunks[1 + a]) if chunks else 1 for a in self.axes)

    def coordinates(self, i: int) -> np.ndarray:
        return self.grid.coordinates(self.axes[i])

    def full_box(self) -> tuple[slice, ...]:
        return tuple(slice(0, n) for n in self.shape)

    def _selection(self, box) -> tuple:
        selection: list = [self.index]
        it = iter(box)
        for a in range(self.grid.ndim):
            selection.append(self.plane.index if self.plane and a == self.plane.axis else next(it))
        return tuple(selection)

    def read(self, box=None) -> np.ndarray:
        box = self.full_box() if box is None else box
        return np.asarray(self._data[self._selection(box)])

    def blocks(
        self, box=None, max_values: int | None = None
    ) -> Iterator[tuple[tuple[slice, ...], np.ndarray]]:
        box = self.full_box() if box is None else tuple(box)
        max_values = BLOCK_VALUES if max_values is None else max_values
        for part in _block_boxes(box, self.chunks, max_values):
            yield part, self.read(part)


def _full_view(out, name: str, index: int) -> _View:
    return _View(out, name, index, None)


def _mask_reader(out, region: str) -> Callable[[tuple], np.ndarray]:
    """A function reading a box of region `region`'s mask (bool) without loading all of it
    when the file is open (h5py dataset); from `out.regions` otherwise."""
    names = region_names(out)
    if region not in names:
        listed = ", ".join(names) if names else "none"
        raise AnalysisError(f"no region {region!r} in {out.path}; regions: {listed}")
    f = getattr(out, "_file", None)
    if f is not None and "regions" in f and region in f["regions"]:
        data = f["regions"][region]
        return lambda box: np.asarray(data[box]) != 0
    mask = np.asarray(out.regions[region], dtype=bool)
    return lambda box: mask[box]


def region_names(out) -> list[str]:
    """The names of the region masks a file holds (without reading them)."""
    f = getattr(out, "_file", None)
    if f is not None and f.id.valid:
        return list(f["regions"].keys()) if "regions" in f else []
    return list(out.regions)


# ----------------------------------------------------------------------------------------------
# summaries and statistics


@dataclass(frozen=True)
class Series:
    """A time series: `values` at `time` (s), in `units`."""

    name: str
    time: np.ndarray
    values: np.ndarray
    units: str
    field: str = ""
    stat: str = ""


def summaries(out) -> dict[str, Series]:
    """Every /summary series (name_total: molecules or cells in the domain; name_max: the
    field's maximum) as a Series over the file's times."""
    result = {}
    for name, values in out.summary.items():
        base, _, stat = name.rpartition("_")
        result[name] = Series(
            name=name,
            time=np.asarray(out.time, dtype=float),
            values=np.asarray(values, dtype=float),
            units=out.summary_units.get(name, "") if hasattr(out, "summary_units") else "",
            field=base if base in out.fields else "",
            stat=stat,
        )
    return result


@dataclass(frozen=True)
class FrameStats:
    """Minimum, maximum and mean of a field over the grid at one frame (in `units`), and its
    domain total (molecules for species, cells for populations: `total_units`)."""

    field: str
    frame: int
    time: float
    min: float
    max: float
    mean: float
    total: float
    units: str
    total_units: str


def frame_stats(out, name: str, *, time=None, frame: int | None = None) -> FrameStats:
    """Statistics of field `name` at one frame, read in blocks."""
    index = frame_index(out, time, frame)
    view = _full_view(out, name, index)
    low, high, total, count = math.inf, -math.inf, 0.0, 0
    for _, block in view.blocks():
        if block.size:
            low = min(low, float(np.min(block)))
            high = max(high, float(np.max(block)))
            total += float(np.sum(block, dtype=np.float64))
            count += block.size
    kind = out.kinds.get(name, "species")
    amount = total * out.grid.voxel_volume
    if kind == "species":
        amount *= MOLECULES_PER_UM3_PER_NM
    return FrameStats(
        field=name,
        frame=index,
        time=view.time,
        min=low,
        max=high,
        mean=total / count if count else math.nan,
        total=amount,
        units=out.units.get(name, ""),
        total_units=TOTAL_UNITS.get(kind, ""),
    )


# ----------------------------------------------------------------------------------------------
# planes (what a field map shows)


@dataclass(frozen=True)
class Plane:
    """A 2D plane (or the 1D line) of one field at one frame: `values` indexed (vertical,
    horizontal) for 2D, `axes` their grid axis names, `coordinates` the voxel centres (um),
    `extent` (horizontal lo, hi, vertical lo, hi) in um for imshow(origin="lower")."""

    field: str
    units: str
    frame: int
    time: float
    values: np.ndarray
    axes: tuple[str, ...]
    coordinates: tuple[np.ndarray, ...]
    extent: tuple[float, ...]
    slice: Slice | None


def read_plane(out, name: str, *, time=None, frame: int | None = None, slice=None) -> Plane:
    """Field `name` at one frame as a Plane: the whole frame of a 1D or 2D output, one plane
    (`slice`, default the middle z plane) of a 3D output, reading only that plane."""
    check_field(out, name)
    index = frame_index(out, time, frame)
    grid = out.grid
    plane = parse_slice(grid, slice) if slice is not None else default_slice(grid)
    view = _View(out, name, index, plane)
    values = view.read()
    extent: list[float] = []
    for i in reversed(range(len(view.axes))):
        extent += [view.origin[i], view.origin[i] + view.shape[i] * view.spacing[i]]
    return Plane(
        field=name,
        units=out.units.get(name, ""),
        frame=index,
        time=view.time,
        values=values,
        axes=tuple(grid.axes[a] for a in view.axes),
        coordinates=tuple(view.coordinates(i) for i in range(len(view.axes))),
        extent=tuple(extent),
        slice=plane,
    )


def plane_range(out, name: str, *, slice=None, positive: bool = False) -> tuple[float, float]:
    """(min, max) of field `name` over every frame of the plane `slice` shows (the whole
    frame for 1D/2D): a fixed colour scale for a movie. With `positive`, the minimum is over
    positive values only (NaN when there are none)."""
    check_field(out, name)
    plane = parse_slice(out.grid, slice) if slice is not None else default_slice(out.grid)
    low, high = math.inf, -math.inf
    for index in range(out.n_frames):
        for _, block in _View(out, name, index, plane).blocks():
            if block.size == 0:
                continue
            high = max(high, float(np.max(block)))
            if positive:
                above = block[block > 0]
                if above.size:
                    low = min(low, float(np.min(above)))
            else:
                low = min(low, float(np.min(block)))
    return (low if math.isfinite(low) else math.nan), (high if math.isfinite(high) else math.nan)


# ----------------------------------------------------------------------------------------------
# cells (what a map shows of them)


def cell_request(out, spec: str) -> tuple[str, str | None]:
    """ "TYPE" or "TYPE:STATE" as (type, state or None), if the file holds that cell type and
    state variable; AnalysisError listing what it holds otherwise."""
    name, colon, state = str(spec).partition(":")
    types = tuple(getattr(out, "cell_types", ()))
    if name not in types:
        listed = ", ".join(types) if types else "none"
        raise AnalysisError(f"no cell type {name!r} in {out.path}; cell types: {listed}")
    variables = out.cell_state(name)
    if colon and state not in variables:
        listed = ", ".join(variables) if variables else "none"
        raise AnalysisError(
            f"cells {spec!r}: {name} has no state variable {state!r}; state variables: {listed}"
        )
    return name, (state if colon else None)


@dataclass(frozen=True)
class CellPoints:
    """The alive cells of one type at one frame that a map shows: `points` (n, 2) their
    (horizontal, vertical) map coordinates in um (x, y for a 2D output or a z plane; x, z for
    a y plane; y, z for an x plane; (n, 1), x, for a 1D output), `values` their state
    variable `state` (None without one) and `ids`. In 3D only the cells whose centre lies in
    the voxel layer of the plane shown."""

    type: str
    state: str | None
    frame: int
    ids: np.ndarray
    points: np.ndarray
    values: np.ndarray | None


def plane_cells(out, spec: str, *, frame: int, slice=None) -> CellPoints:
    """The cells of `spec` ("TYPE" or "TYPE:STATE") at frame `frame` that the map of the
    plane `slice` (default the middle z plane of a 3D output; whole 1D and 2D outputs)
    shows."""
    name, state = cell_request(out, spec)
    index = frame_index(out, frame=frame)
    grid = out.grid
    plane = parse_slice(grid, slice) if slice is not None else default_slice(grid)
    cells = out.cells(name, index)
    position = np.asarray(cells["position"], dtype=float)
    keep = np.ones(len(position), dtype=bool)
    if plane is not None:
        n, h, o = grid.shape[plane.axis], grid.spacing[plane.axis], grid.origin[plane.axis]
        voxel = np.clip(np.floor((position[:, plane.axis] - o) / h), 0, n - 1)
        keep = voxel == plane.index
    shown = [a for a in range(grid.ndim) if plane is None or a != plane.axis]
    return CellPoints(
        type=name,
        state=state,
        frame=index,
        ids=np.asarray(cells["id"])[keep],
        points=position[keep][:, shown[::-1]],
        values=None if state is None else np.asarray(cells[state], dtype=float)[keep],
    )


def cell_range(out, spec: str, *, slice=None) -> tuple[float, float]:
    """(min, max) of the state variable of `spec` ("TYPE:STATE") over the cells the maps
    of every frame show (NaN, NaN when none): a fixed colour scale for a movie."""
    low, high = math.inf, -math.inf
    for index in range(out.n_frames):
        values = plane_cells(out, spec, frame=index, slice=slice).values
        if values is not None and values.size:
            low, high = min(low, float(np.min(values))), max(high, float(np.max(values)))
    return (low, high) if math.isfinite(low) else (math.nan, math.nan)


def cell_series(out) -> dict[str, Series]:
    """Each cell type's count of alive cells per frame, as a Series named after the type."""
    time = np.asarray(out.time, dtype=float)
    return {
        name: Series(name, time, out.cell_counts(name).astype(float), "cells", stat="count")
        for name in getattr(out, "cell_types", ())
    }


# ----------------------------------------------------------------------------------------------
# profiles


@dataclass(frozen=True)
class Profile:
    """A radial or line profile of one field at one frame.

    distance: um, radial: the mean distance of the voxel centres in each annulus / shell (bins
    without voxels dropped); line: the arc length from `start`.
    values: the field there (float64, in `units`); counts: voxels per radial bin.
    ndim: the grid's dimension (the geometry a screening-length fit assumes by default).
    start: the center (radial) or the line start, end: the line end (None for radial), both in
    um in the order of `axes`; points: the line's sample positions (n, len(axes)).
    """

    kind: str
    field: str
    units: str
    frame: int
    time: float
    distance: np.ndarray
    values: np.ndarray
    ndim: int
    axes: tuple[str, ...]
    start: tuple[float, ...]
    end: tuple[float, ...] | None = None
    counts: np.ndarray | None = None
    points: np.ndarray | None = None
    slice: Slice | None = None
    bin_width: float | None = None


def _position(view: _View, position, what: str) -> np.ndarray:
    try:
        p = np.asarray(position, dtype=float).reshape(-1)
    except (TypeError, ValueError):
        raise AnalysisError(f"{what} {position!r}: expected numbers (um)") from None
    names = ", ".join(view.grid.axes[a] for a in view.axes)
    if p.size != len(view.axes):
        where = f" in the plane {view.plane}" if view.plane else ""
        raise AnalysisError(
            f"{what} {tuple(position)}: expected {len(view.axes)} coordinates ({names}){where}"
        )
    if not np.all(np.isfinite(p)):
        raise AnalysisError(f"{what} {tuple(position)}: coordinates must be finite")
    lower = np.asarray(view.origin)
    upper = lower + np.asarray(view.shape) * np.asarray(view.spacing)
    if np.any(p < lower) or np.any(p > upper):
        extent = " x ".join(f"{lo:g}..{up:g}" for lo, up in zip(lower, upper))
        raise AnalysisError(
            f"{what} {tuple(float(v) for v in p)} lies outside the grid, {extent} um ({names})"
        )
    return p


def _profile_view(out, name, time, frame, slice, n_coordinates: int) -> _View:
    """A view for a profile: the whole grid if the point has grid.ndim coordinates, else
    (3D) the plane `slice` (default the middle z plane)."""
    check_field(out, name)
    index = frame_index(out, time, frame)
    grid = out.grid
    plane = None
    if slice is not None:
        plane = parse_slice(grid, slice)
    elif grid.ndim == 3 and n_coordinates == 2:
        plane = default_slice(grid)
    return _View(out, name, index, plane)


def radial_profile(
    out,
    name: str,
    center,
    radius: float | None = None,
    *,
    time=None,
    frame: int | None = None,
    slice=None,
    bin_width: float | None = None,
) -> Profile:
    """The mean of field `name` over shells (annuli in 2D or in a plane) around `center`.

    center: um, grid axis order; grid.ndim coordinates for shells over the whole grid, or
        for a 3D output two (y, x) with `slice` (default the middle z plane) for rings in that
        plane (the distances are then in-plane).
    radius: the largest distance (um); default: to the farthest grid corner.
    bin_width: default the smallest voxel edge of the axes spanned.
    Reads only the box around the center that the radius reaches, in blocks.
    """
    view = _profile_view(out, name, time, frame, slice, np.size(center))
    c = _position(view, center, "center")
    lower = np.asarray(view.origin)
    h = np.asarray(view.spacing)
    upper = lower + np.asarray(view.shape) * h
    if radius is None:
        radius = float(np.sqrt(np.sum(np.maximum(c - lower, upper - c) ** 2)))
    radius = float(radius)
    if not (math.isfinite(radius) and radius > 0):
        raise AnalysisError(f"radius {radius!r}: must be positive (um)")
    width = float(np.min(h)) if bin_width is None else float(bin_width)
    if not (math.isfinite(width) and width > 0):
        raise AnalysisError(f"bin width {bin_width!r}: must be positive (um)")
    n_bins = max(1, int(math.ceil(radius / width - 1e-9)))
    box = []
    for i, n in enumerate(view.shape):
        lo = int(np.clip(math.floor((c[i] - radius - lower[i]) / h[i]), 0, n - 1))
        hi = int(np.clip(math.ceil((c[i] + radius - lower[i]) / h[i]), lo + 1, n))
        box.append(slice_(lo, hi))
    sums = np.zeros(n_bins)
    distances = np.zeros(n_bins)
    counts = np.zeros(n_bins, dtype=np.int64)
    for part, block in view.blocks(tuple(box), max_values=BLOCK_VALUES // 4):
        squared = None
        for i in range(len(view.axes)):
            coords = view.coordinates(i)[part[i]] - c[i]
            shape = [1] * block.ndim
            shape[i] = -1
            term = (coords**2).reshape(shape)
            squared = term if squared is None else squared + term
        r = np.sqrt(np.broadcast_to(squared, block.shape)).ravel()
        bins = (r * (1.0 / width)).astype(np.int32)
        np.minimum(bins, n_bins - 1, out=bins)
        bins[r > radius * (1 + 1e-12)] = n_bins  # outside the radius: an extra bin, dropped
        sums += np.bincount(bins, weights=block.ravel(), minlength=n_bins + 1)[:n_bins]
        distances += np.bincount(bins, weights=r, minlength=n_bins + 1)[:n_bins]
        counts += np.bincount(bins, minlength=n_bins + 1)[:n_bins]
    keep = counts > 0
    return _profile(
        "radial",
        out,
        name,
        view,
        distance=distances[keep] / counts[keep],
        values=sums[keep] / counts[keep],
        start=tuple(float(v) for v in c),
        counts=counts[keep],
        bin_width=width,
    )


def _profile(kind: str, out, name: str, view: _View, **specific) -> Profile:
    """A Profile of field `name` read through `view`: what every kind of profile records
    (field, units, frame, time, grid axes, plane) plus the kind's own entries."""
    return Profile(
        kind=kind,
        field=name,
        units=out.units.get(name, ""),
        frame=view.index,
        time=view.time,
        ndim=out.grid.ndim,
        axes=tuple(out.grid.axes[a] for a in view.axes),
        slice=view.plane,
        **specific,
    )


def line_profile(
    out,
    name: str,
    start,
    end,
    *,
    samples: int | None = None,
    time=None,
    frame: int | None = None,
    slice=None,
) -> Profile:
    """Field `name` sampled along the segment start -> end (um, grid axis order; for a 3D
    output two (y, x) coordinates select the plane `slice`, default the middle z plane) by
    multilinear interpolation between voxel centres (constant within half a voxel of a face).
    samples: default two per smallest voxel edge. Reads only the voxels the segment needs."""
    view = _profile_view(out, name, time, frame, slice, np.size(start))
    a = _position(view, start, "start")
    b = _position(view, end, "end")
    h = np.asarray(view.spacing)
    length = float(np.linalg.norm(b - a))
    if samples is None:
        samples = max(2, int(math.ceil(length / (0.5 * float(np.min(h))))) + 1)
    samples = int(samples)
    if samples < 2:
        raise AnalysisError(f"samples {samples}: need at least 2")
    t = np.linspace(0.0, 1.0, samples)
    points = a[None, :] + t[:, None] * (b - a)[None, :]
    values = _interpolate(view, points)
    return _profile(
        "line",
        out,
        name,
        view,
        distance=t * length,
        values=values,
        start=tuple(float(v) for v in a),
        end=tuple(float(v) for v in b),
        points=points,
    )


def _interpolate(view: _View, points: np.ndarray) -> np.ndarray:
    """Multilinear interpolation of the view at `points` (n, d), reading the box they need
    block by block."""
    shape = np.asarray(view.shape)
    u = (points - np.asarray(view.origin)) / np.asarray(view.spacing) - 0.5
    u = np.clip(u, 0.0, shape - 1.0)
    i0 = np.minimum(np.floor(u).astype(np.int64), np.maximum(shape - 2, 0))
    frac = np.clip(u - i0, 0.0, 1.0)
    d = points.shape[1]
    lo = i0.min(axis=0)
    hi = np.minimum(i0.max(axis=0) + 2, shape)
    box = tuple(slice_(int(lo[k]), int(hi[k])) for k in range(d))
    corners = [tuple((m >> k) & 1 for k in range(d)) for m in range(2**d)]
    indices = [np.minimum(i0 + np.asarray(bits), shape - 1) for bits in corners]
    gathered = np.zeros((len(corners), points.shape[0]))
    for part in _block_boxes(box, view.chunks, BLOCK_VALUES):
        rows = []
        for idx in indices:
            inside = np.ones(points.shape[0], dtype=bool)
            for k in range(d):
                inside &= (idx[:, k] >= part[k].start) & (idx[:, k] < part[k].stop)
            rows.append(inside)
        if not any(np.any(inside) for inside in rows):
            continue  # a block the segment does not cross: not read
        block = view.read(part)
        for c, (idx, inside) in enumerate(zip(indices, rows)):
            local = tuple(idx[inside, k] - part[k].start for k in range(d))
            gathered[c, inside] = block[local]
    result = np.zeros(points.shape[0])
    for c, bits in enumerate(corners):
        weight = np.ones(points.shape[0])
        for k, bit in enumerate(bits):
            weight *= frac[:, k] if bit else 1.0 - frac[:, k]
        result += weight * gathered[c]
    return result


# ----------------------------------------------------------------------------------------------
# screening length


def log_k0(x) -> np.ndarray:
    """log K0(x) for x > 0 (the modified Bessel function of the second kind, order 0), from
    K0(x) = exp(-x) * integral_0^inf exp(-x (cosh t - 1)) dt by the trapezoidal rule (the
    integrand is even and smooth, so the rule converges fast); relative error < 1e-10."""
    x = np.atleast_1d(np.asarray(x, dtype=float))
    if np.any(x <= 0):
        raise ValueError("log_k0: x must be positive")
    t_max = np.arccosh(1.0 + 40.0 / x)
    nodes = np.linspace(0.0, 1.0, 801)
    t = nodes[None, :] * t_max[:, None]
    integrand = np.exp(-x[:, None] * (np.cosh(t) - 1.0))
    integral = (integrand.sum(axis=1) - 0.5 * (integrand[:, 0] + integrand[:, -1])) * (
        t_max / (nodes.size - 1)
    )
    return -x + np.log(integral)


def _log_shape(geometry: str, r: np.ndarray, length: float) -> np.ndarray:
    if geometry == "sphere":
        return -r / length - np.log(r)
    if geometry == "cylinder":
        return log_k0(r / length)
    return -r / length


@dataclass(frozen=True)
class ScreeningFit:
    """c(r) ~ amplitude * shape(r / length): exp(-r/L)/r (sphere), K0(r/L) (cylinder) or
    exp(-r/L) (plane). `length` is the screening length (um); `rms` the root-mean-square
    residual of log c over the `points` fitted, between r_min and r_max."""

    length: float
    amplitude: float
    geometry: str
    r_min: float
    r_max: float
    points: int
    rms: float

    def model(self, r) -> np.ndarray:
        r = np.asarray(r, dtype=float)
        return self.amplitude * np.exp(_log_shape(self.geometry, r, self.length))


def screening_length(
    profile: Profile,
    *,
    geometry: str | None = None,
    r_min: float | None = None,
    r_max: float | None = None,
) -> ScreeningFit:
    """Fit the screening length L of a decaying profile (least squares on log c).

    geometry: "sphere" (a point source in 3D: exp(-r/L)/r), "cylinder" (2D: K0(r/L)),
        "plane" (1D, or a line profile away from a flat source: exp(-r/L)); default from the
        grid's dimension (3, 2, 1).
    r_min: fit from here (um); default two voxel edges (the source's own voxels excluded).
    r_max: up to here; default the whole profile. Points with c <= 1e-6 max(c) are left out
    (round-off).
    """
    if geometry is None:
        geometry = {3: "sphere", 2: "cylinder"}.get(profile.ndim, "plane")
    if geometry not in GEOMETRIES:
        raise AnalysisError(f"geometry {geometry!r}: expected one of {', '.join(GEOMETRIES)}")
    r = np.asarray(profile.distance, dtype=float)
    c = np.asarray(profile.values, dtype=float)
    if r_min is None:
        step = profile.bin_width or (float(np.median(np.diff(r))) if r.size > 1 else 0.0)
        r_min = 2.0 * step if profile.kind == "radial" else 0.0
    r_max = float(np.max(r)) if r_max is None and r.size else float(r_max or 0.0)
    peak = float(np.max(c)) if c.size else 0.0
    keep = (r >= r_min) & (r <= r_max) & (c > 1e-6 * peak) & (c > 0) & np.isfinite(c)
    if geometry != "plane":
        keep &= r > 0
    r, c = r[keep], c[keep]
    if r.size < 3:
        raise AnalysisError(
            f"screening length: {r.size} usable points of the {profile.field} profile between "
            f"{r_min:g} and {r_max:g} um; need 3 with positive values"
        )
    log_c = np.log(c)

    def cost(log_length: float) -> float:
        residual = log_c - _log_shape(geometry, r, math.exp(log_length))
        return float(np.sum((residual - residual.mean()) ** 2))

    span = float(r.max() - r.min()) or float(r.max())
    lo, hi = math.log(1e-3 * span), math.log(1e4 * span)
    grid = np.linspace(lo, hi, 141)
    costs = np.array([cost(g) for g in grid])
    best = int(np.argmin(costs))
    if best == grid.size - 1:
        raise AnalysisError(
            f"screening length: the {profile.field} profile does not decay over "
            f"{r.min():g}..{r.max():g} um"
        )
    a, b = grid[max(best - 1, 0)], grid[min(best + 1, grid.size - 1)]
    ratio = (math.sqrt(5) - 1) / 2
    x1, x2 = b - ratio * (b - a), a + ratio * (b - a)
    f1, f2 = cost(x1), cost(x2)
    for _ in range(80):
        if f1 < f2:
            b, x2, f2 = x2, x1, f1
            x1 = b - ratio * (b - a)
            f1 = cost(x1)
        else:
            a, x1, f1 = x1, x2, f2
            x2 = a + ratio * (b - a)
            f2 = cost(x2)
    length = math.exp(0.5 * (a + b))
    residual = log_c - _log_shape(geometry, r, length)
    log_amplitude = float(residual.mean())
    return ScreeningFit(
        length=length,
        amplitude=math.exp(log_amplitude),
        geometry=geometry,
        r_min=float(r.min()),
        r_max=float(r.max()),
        points=int(r.size),
        rms=float(np.sqrt(np.mean((residual - log_amplitude) ** 2))),
    )


# ----------------------------------------------------------------------------------------------
# thresholds and exposure


_UNIT_KINDS = {"nM": "concentration", "cells/um^3": "density"}


def _to_units(value, units: str, what: str) -> float:
    """A number (already in `units`) or a string with a unit, as a float in `units`."""
    if isinstance(value, np.integer | np.floating):
        value = float(value)
    try:
        return read_quantity(value, _UNIT_KINDS[units])
    except UnitError as error:
        raise AnalysisError(f"{what} {value!r}: {error}") from None


def fraction_above(out, name: str, threshold, *, region: str | None = None) -> Series:
    """The fraction of the tissue (the grid, or region `region`) where field `name` exceeds
    `threshold` (in the field's units, or a string such as "10 pM"), at every frame."""
    check_field(out, name)
    units = out.units.get(name, "")
    level = _to_units(threshold, units, "threshold")
    mask = _mask_reader(out, region) if region is not None else None
    fractions = np.zeros(out.n_frames)
    for index in range(out.n_frames):
        above = total = 0
        view = _full_view(out, name, index)
        for part, block in view.blocks():
            selected = block > level
            if mask is not None:
                inside = mask(part)
                selected &= inside
                total += int(np.count_nonzero(inside))
            else:
                total += block.size
            above += int(np.count_nonzero(selected))
        fractions[index] = above / total if total else math.nan
    where = f" in {region}" if region else ""
    return Series(
        name=f"fraction of {name} > {level:g} {units}{where}",
        time=np.asarray(out.time, dtype=float),
        values=fractions,
        units="1",
        field=name,
        stat="fraction_above",
    )


@dataclass(frozen=True)
class Exposure:
    """Exposure of one region to one field.

    mean: the region's mean of the field at each frame (`units`); integral: its time integral
    over the file's span (trapezoidal, `units`*s); peak, peak_time: the largest mean and when;
    max: the largest voxel value in the region over all frames; voxels, volume (um^3).
    """

    region: str
    field: str
    units: str
    voxels: int
    volume: float
    time: np.ndarray
    mean: np.ndarray
    integral: float
    peak: float
    peak_time: float
    max: float = math.nan

    @property
    def integral_units(self) -> str:
        return f"{self.units}*s"


DOMAIN = "domain"
"""The name `exposure` gives the whole grid (unless the file has a region of that name)."""


def exposure(out, name: str, regions=None) -> dict[str, Exposure]:
    """Exposure (the time integral of the mean of field `name`) and peak per region.

    regions: names of the file's region masks; default "domain" (the whole grid) and every
    region in the file. Reads each frame once, in blocks."""
    check_field(out, name)
    available = region_names(out)
    if regions is None:
        regions = ([] if DOMAIN in available else [DOMAIN]) + available
    elif isinstance(regions, str):
        regions = [regions]
    regions = list(regions)
    readers = {}
    for region in regions:
        if region == DOMAIN and DOMAIN not in available:
            readers[region] = None
        else:
            readers[region] = _mask_reader(out, region)
    n = out.n_frames
    sums = {region: np.zeros(n) for region in regions}
    highs = {region: -math.inf for region in regions}
    voxels = dict.fromkeys(regions, 0)
    for index in range(n):
        for part, block in _full_view(out, name, index).blocks():
            for region, reader in readers.items():
                values = block if reader is None else block[reader(part)]
                if index == 0:
                    voxels[region] += values.size
                if values.size:
                    sums[region][index] += float(np.sum(values, dtype=np.float64))
                    highs[region] = max(highs[region], float(np.max(values)))
    time = np.asarray(out.time, dtype=float)
    result = {}
    for region in regions:
        count = voxels[region]
        mean = sums[region] / count if count else np.full(n, math.nan)
        integral = float(np.sum(0.5 * (mean[1:] + mean[:-1]) * np.diff(time))) if n > 1 else 0.0
        peak_at = int(np.nanargmax(mean)) if count and n else 0
        result[region] = Exposure(
            region=region,
            field=name,
            units=out.units.get(name, ""),
            voxels=count,
            volume=count * out.grid.voxel_volume,
            time=time,
            mean=mean,
            integral=integral,
            peak=float(mean[peak_at]) if count and n else math.nan,
            peak_time=float(time[peak_at]) if n else math.nan,
            max=highs[region] if math.isfinite(highs[region]) else math.nan,
        )
    return result


def region_voxels(out, region: str) -> int:
    """Voxels in region `region` (counted in blocks)."""
    reader = _mask_reader(out, region)
    count = 0
    box = tuple(slice_(0, n) for n in out.grid.shape)
    for part in _block_boxes(box, (1,) * out.grid.ndim, BLOCK_VALUES):
        count += int(np.count_nonzero(reader(part)))
    return count


__all__ = [
    "AnalysisError",
    "BLOCK_VALUES",
    "CellPoints",
    "DOMAIN",
    "Exposure",
    "FrameStats",
    "GEOMETRIES",
    "Plane",
    "Profile",
    "ScreeningFit",
    "Series",
    "Slice",
    "cell_range",
    "cell_request",
    "cell_series",
    "check_field",
    "default_slice",
    "exposure",
    "format_time",
    "fraction_above",
    "frame_index",
    "frame_stats",
    "line_profile",
    "log_k0",
    "parse_slice",
    "plane_cells",
    "plane_range",
    "radial_profile",
    "read_plane",
    "region_names",
    "region_voxels",
    "screening_length",
    "summaries",
    "time_unit",
    "times_text",
    "to_seconds",
]
