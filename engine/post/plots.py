"""Figures from ilsim output files: field maps (with the cells over them), summary time
series, profiles and movies.

matplotlib with the Agg canvas (no display, no pyplot state); the command line imports this
module only for `ilsim plot`, `profile` and `movie`. Every figure is exactly `size` pixels
(width, height) at `dpi`. The data come from `engine.analysis`, which reads one frame, or one
plane of a 3D frame, at a time. Colour bars stand beside their map, exactly as tall as it;
time series show plain tick values (no offset).
"""

from __future__ import annotations

import math
import shutil
from pathlib import Path

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.ticker import ScalarFormatter
from matplotlib.transforms import Bbox, blended_transform_factory

from engine.io.replacing import replaced
from engine.post import analysis
from engine.post.analysis import AnalysisError

DEFAULT_SIZE = (800, 600)
MOVIE_SUFFIXES = (".gif", ".mp4")
LOG_DECADES = 6
"""With --log and no vmin: the colour scale spans at most this many decades below the max."""

COLORBAR_WIDTH, COLORBAR_PAD = 0.15, 0.1
"""A colour bar's width and its gap to the map, or to the ticks and label of the colour bar
before it (inches)."""

CELL_COLOURS = ("red", "black", "orange", "magenta", "white")
"""The colours of cell types drawn without a state variable, in the order asked for."""

CELL_CMAPS = ("cool", "autumn", "spring", "Wistia")
"""The colour maps of cell types coloured by a state variable, in the order asked for."""

CELL_SIZE = 24
"""Cell marker area (points^2); markers have a thin white edge."""

RUG_HEIGHT = 0.04
"""Where the cells of a 1D output are drawn: this fraction of the axes height."""


def _figure(size, dpi: int) -> Figure:
    width, height = (int(v) for v in size)
    if width < 50 or height < 50:
        raise AnalysisError(f"figure size {width}x{height}: need at least 50x50 pixels")
    if not 10 <= dpi <= 2000:
        raise AnalysisError(f"dpi {dpi}: expected 10..2000")
    figure = Figure(figsize=(width / dpi, height / dpi), dpi=dpi, layout="constrained")
    FigureCanvasAgg(figure)
    return figure


def image_formats() -> list[str]:
    """File suffixes matplotlib can write (png, pdf, svg, ...)."""
    return sorted(FigureCanvasAgg(Figure()).get_supported_filetypes())


def check_figure_path(path) -> Path:
    """`path` if its suffix is a format matplotlib writes and its folder exists."""
    path = Path(path)
    suffix = path.suffix.lower().lstrip(".")
    formats = image_formats()
    if suffix not in formats:
        raise AnalysisError(
            f"{path}: unknown figure format {path.suffix or '(none)'!r}; use one of "
            f"{', '.join('.' + f for f in formats)}"
        )
    check_folder(path)
    return path


def check_replaceable(paths, overwrite: bool) -> None:
    """Refuse, before any work, an output that is a folder, or that exists without
    --overwrite."""
    for path in (Path(p) for p in paths if p is not None):
        if path.is_dir():
            raise AnalysisError(f"{path} is a folder; give a file path")
        if path.exists() and not overwrite:
            raise AnalysisError(f"{path} exists; pass --overwrite to replace it")


def check_apart(outputs: dict) -> None:
    """Refuse, before any work, two outputs of one command at one path (the second would
    replace the first): `outputs` is {option: path or None}."""
    seen = {}
    for option, path in outputs.items():
        if path is None:
            continue
        where = Path(path).resolve()
        if where in seen:
            raise AnalysisError(
                f"{option} {path}: the same file as {seen[where]}; give each output its own path"
            )
        seen[where] = f"{option} {path}"


def check_folder(path: Path) -> None:
    """Refuse an output whose folder does not exist, before any work."""
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise AnalysisError(
            f"{path}: folder {folder} does not exist; create it or give another path"
        )


def save(figure: Figure, path, dpi: float | None = None) -> Path:
    """`figure` written whole to `path` (its suffix names the format) at `dpi` (default the
    figure's), replacing it only once written."""
    path = Path(path)
    with replaced(path) as partial:
        figure.savefig(partial, dpi=dpi or figure.dpi, format=path.suffix.lstrip(".").lower())
    return path


def _label(name: str, units: str) -> str:
    return f"{name} ({units})" if units else name


def _norm(values, log: bool, vmin=None, vmax=None, what: str = ""):
    """A colour normalisation; with `log`, over positive values, at most LOG_DECADES decades
    below the maximum unless vmin is given."""
    finite = np.asarray(values, dtype=float)
    finite = finite[np.isfinite(finite)]
    if log:
        positive = finite[finite > 0]
        high = float(vmax) if vmax is not None else (float(positive.max()) if positive.size else 0)
        if not high > 0:
            raise AnalysisError(f"--log: {what} has no positive values to show on a log scale")
        if vmin is not None:
            low = float(vmin)
            if not low > 0:
                raise AnalysisError(f"--log: vmin {vmin} must be positive")
        else:
            low = float(positive.min()) if positive.size else high * 10.0**-LOG_DECADES
            low = max(low, high * 10.0**-LOG_DECADES)
        if low >= high:
            low = high / 10
        return LogNorm(vmin=low, vmax=high, clip=True)
    low = float(vmin) if vmin is not None else (float(finite.min()) if finite.size else 0.0)
    high = float(vmax) if vmax is not None else (float(finite.max()) if finite.size else 1.0)
    if high <= low:
        pad = abs(high) * 1e-6 or 1e-12
        low, high = low - pad, high + pad
    return Normalize(vmin=low, vmax=high)


def _masked(values, log: bool):
    values = np.asarray(values, dtype=float)
    return np.ma.masked_less_equal(values, 0) if log else values


def _title(plane: analysis.Plane, n_frames: int, with_field: bool = True) -> str:
    where = f", {plane.slice}" if plane.slice is not None else ""
    head = f"{plane.field} at " if with_field else ""
    return (
        f"{head}t = {analysis.format_time(plane.time)} (frame {plane.frame + 1}/{n_frames}){where}"
    )


class _Beside:
    """Where a colour bar of the map `axes` goes when drawn: exactly as tall as the map as
    drawn, COLORBAR_PAD inches right of the map or of `before` (the previous colour bar, its
    ticks and label included), COLORBAR_WIDTH inches wide."""

    def __init__(self, axes, before=None):
        self.axes, self.before = axes, before

    def __call__(self, cax, renderer) -> Bbox:
        width = self.axes.figure.bbox.width
        box = self.axes.get_position()  # after the map's aspect ratio is applied
        right = box.x1 if self.before is None else self.before.get_tightbbox(renderer).x1 / width
        inch = self.axes.figure.dpi / width
        return Bbox.from_bounds(
            right + COLORBAR_PAD * inch, box.y0, COLORBAR_WIDTH * inch, box.height
        )


def _colorbar(axes, mappable, label: str):
    """A colour bar for `mappable` right of the map `axes` and of its colour bars so far,
    exactly as tall as the map as drawn (an inset axes, so the layout makes room for it)."""
    figure = axes.figure
    before = axes.child_axes[-1] if axes.child_axes else None  # a map's insets: its bars
    cax = axes.inset_axes([1, 0, 0.05, 1])
    cax.set_axes_locator(_Beside(axes, before))
    bar = figure.colorbar(mappable, cax=cax)
    bar.set_label(label)
    if isinstance(bar.formatter, ScalarFormatter):  # not on a log scale
        bar.formatter.set_useOffset(False)
    return bar


def _plain_ticks(axes) -> None:
    """Tick labels as plain values: no offset ("+1.0001e3") on near-constant values."""
    axes.ticklabel_format(axis="both", useOffset=False)


def _draw_plane(axes, plane: analysis.Plane, norm, cmap: str):
    """Draw a plane on `axes`: an image for 2D (axes in um) with its colour bar, a line for
    1D. Returns the artist (AxesImage or Line2D)."""
    if plane.values.ndim == 1:
        _plain_ticks(axes)
        (line,) = axes.plot(plane.coordinates[0], plane.values, color="C0")
        axes.set_xlabel(f"{plane.axes[0]} (um)")
        axes.set_ylabel(_label(plane.field, plane.units))
        if isinstance(norm, LogNorm):
            axes.set_yscale("log")
            axes.set_ylim(norm.vmin / 1.2, norm.vmax * 1.2)
        else:
            pad = 0.05 * (norm.vmax - norm.vmin)
            axes.set_ylim(norm.vmin - pad, norm.vmax + pad)
        axes.grid(True, alpha=0.3)
        return line
    image = axes.imshow(
        _masked(plane.values, isinstance(norm, LogNorm)),
        origin="lower",
        extent=plane.extent,
        norm=norm,
        cmap=cmap,
        interpolation="nearest",
        aspect="equal",
    )
    axes.set_xlabel(f"{plane.axes[1]} (um)")
    axes.set_ylabel(f"{plane.axes[0]} (um)")
    _colorbar(axes, image, _label(plane.field, plane.units))
    return image


def _cell_offsets(cells: analysis.CellPoints) -> np.ndarray:
    """Where a scatter draws the cells: (x, y) in um; in 1D (x, RUG_HEIGHT of the axes)."""
    if cells.points.shape[1] == 1:
        return np.column_stack([cells.points[:, 0], np.full(len(cells.points), RUG_HEIGHT)])
    return cells.points


def _draw_cells(axes, layers: list[analysis.CellPoints], norms: list) -> list:
    """Each layer's cells as a scatter over the map on `axes` (in 1D a row near its bottom):
    coloured by the state variable with `norms[k]` and a colour bar of its own, or in a
    single colour; a legend names the types. Returns the scatters."""
    scatters = []
    transform = axes.transData
    if layers and layers[0].points.shape[1] == 1:
        transform = blended_transform_factory(axes.transData, axes.transAxes)
    for k, (cells, norm) in enumerate(zip(layers, norms)):
        style = dict(s=CELL_SIZE, edgecolors="white", linewidths=0.6, zorder=3)
        offsets = _cell_offsets(cells)
        if cells.state is None:
            style["color"] = CELL_COLOURS[k % len(CELL_COLOURS)]
        else:
            style.update(c=cells.values, cmap=CELL_CMAPS[k % len(CELL_CMAPS)], norm=norm)
        scatter = axes.scatter(
            offsets[:, 0], offsets[:, 1], transform=transform, label=cells.type, **style
        )
        if cells.state is not None:
            _colorbar(axes, scatter, f"{cells.state} ({cells.type})")
        scatters.append(scatter)
    if layers:
        axes.legend(loc="upper right", fontsize="small", framealpha=0.7)
    return scatters


def _cell_norms(layers: list[analysis.CellPoints], ranges=None) -> list:
    """A linear colour scale per layer coloured by a state variable (None for the others):
    over the values shown, or over `ranges[k]` ((min, max), a movie's every frame)."""
    norms = []
    for k, cells in enumerate(layers):
        if cells.state is None:
            norms.append(None)
            continue
        values = cells.values if ranges is None else np.asarray(ranges[k], dtype=float)
        norms.append(_norm(values, False, what=f"{cells.state} of {cells.type}"))
    return norms


def field_map(
    out,
    fields,
    path,
    *,
    time=None,
    frame: int | None = None,
    slice=None,
    log: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    cmap: str = "viridis",
    size=DEFAULT_SIZE,
    dpi: int = 100,
    cells=(),
) -> Path:
    """A map of one field, or a panel of several at one time: 2D outputs whole, 3D outputs one
    plane (`slice`, default the middle z plane), 1D outputs as lines. Axes in um, a colour bar
    per field labelled with its units, the time in the title. `cells`: "TYPE" or
    "TYPE:STATE" requests, whose alive cells (in 3D those in the plane's voxel layer) are drawn
    over every map, coloured by STATE (a colour bar each) or in one colour."""
    names = [fields] if isinstance(fields, str) else list(fields)
    if not names:
        raise AnalysisError("no field to plot")
    for name in names:
        analysis.check_field(out, name)
    for spec in cells:
        analysis.cell_request(out, spec)
    path = check_figure_path(path)
    index = analysis.frame_index(out, time, frame)
    planes = [analysis.read_plane(out, name, frame=index, slice=slice) for name in names]
    layers = [analysis.plane_cells(out, spec, frame=index, slice=slice) for spec in cells]
    cell_norms = _cell_norms(layers)
    figure = _figure(size, dpi)
    columns = math.ceil(math.sqrt(len(planes)))
    rows = math.ceil(len(planes) / columns)
    grid = figure.subplots(rows, columns, squeeze=False)
    for axes, plane in zip(grid.ravel(), planes):
        norm = _norm(plane.values, log, vmin, vmax, what=f"{plane.field} at this time")
        _draw_plane(axes, plane, norm, cmap)
        _draw_cells(axes, layers, cell_norms)
        axes.set_title(plane.field if len(planes) > 1 else _title(plane, out.n_frames))
    for axes in grid.ravel()[len(planes) :]:
        axes.set_visible(False)
    if len(planes) > 1:
        first = planes[0]
        where = f", {first.slice}" if first.slice is not None else ""
        figure.suptitle(
            f"t = {analysis.format_time(first.time)} (frame {first.frame + 1}/{out.n_frames})"
            f"{where}"
        )
    return save(figure, path)


def summary_plot(out, path, *, log: bool = False, size=DEFAULT_SIZE, dpi: int = 100) -> Path:
    """Every summary series (domain totals and maxima of each field) against time, one panel
    per field with the total on the left axis and the maximum on the right (log axes with
    `log`)."""
    path = check_figure_path(path)
    series = analysis.summaries(out)
    counts = analysis.cell_series(out)
    if not series and not counts:
        raise AnalysisError(f"{out.path} holds no summaries")
    groups: dict[str, list[analysis.Series]] = {}
    for item in series.values():
        groups.setdefault(item.field or item.name, []).append(item)
    if counts:
        groups["alive cells"] = list(counts.values())
    time = np.asarray(out.time, dtype=float)
    unit, scale = analysis.time_unit(time.max() if time.size else 0.0)
    figure = _figure(size, dpi)
    columns = 1 if len(groups) < 3 else 2
    rows = math.ceil(len(groups) / columns)
    grid = figure.subplots(rows, columns, squeeze=False, sharex=True)
    marker = "o" if time.size < 30 else None
    for axes, (name, items) in zip(grid.ravel(), groups.items()):
        totals = [s for s in items if s.stat == "total"]
        others = [s for s in items if s.stat != "total"]
        left = axes
        _plain_ticks(left)
        if totals:
            for s in totals:
                _series_lines(left, time / scale, s.values, "C0", s.name, marker)
            left.set_ylabel(f"total ({totals[0].units})", color="C0")
        right = left.twinx() if totals and others else left
        _plain_ticks(right)
        for k, s in enumerate(others):
            _series_lines(right, time / scale, s.values, f"C{k + 1}", s.name, marker)
        if others:
            label = "max" if len(others) == 1 and others[0].stat == "max" else "value"
            if {s.stat for s in others} == {"count"}:  # alive cells, one line per type
                label = "alive"
                right.legend(fontsize="small")
            right.set_ylabel(f"{label} ({others[0].units})", color="C1")
        if log:
            for each in {left, right}:
                each.set_yscale("log")
        left.set_title(name)
        left.grid(True, alpha=0.3)
        left.set_xlabel(f"time ({unit})")
    for axes in grid.ravel()[len(groups) :]:
        axes.set_visible(False)
    sweep = getattr(out, "is_sweep", False)
    members = f", {out.n_members} members (thin) and their mean" if sweep else ""
    figure.suptitle(f"{Path(out.path).name}: summaries{members}")
    return save(figure, path)


def _series_lines(axes, time, values, colour: str, label: str, marker) -> None:
    """One series against time; a sweep's (members, frames) series as a thin line per member
    and a thick one for their mean."""
    if values.ndim == 1:
        axes.plot(time, values, color=colour, marker=marker, ms=3, label=label)
        return
    axes.plot(time, values.T, color=colour, lw=0.7, alpha=0.35)
    axes.plot(time, values.mean(axis=0), color=colour, lw=2, label=f"{label} (mean)")


def profile_plot(
    profiles,
    path,
    *,
    fits=None,
    log: bool = False,
    title: str | None = None,
    size=DEFAULT_SIZE,
    dpi: int = 100,
) -> Path:
    """Radial or line profiles (one curve per profile, e.g. per time) with their screening
    length fits (a ScreeningFit or None per profile) drawn dashed."""
    path = check_figure_path(path)
    profiles = [profiles] if isinstance(profiles, analysis.Profile) else list(profiles)
    fits = [None] * len(profiles) if fits is None else list(fits)
    figure = _figure(size, dpi)
    axes = figure.subplots()
    for k, (profile, fit) in enumerate(zip(profiles, fits)):
        color = f"C{k % 10}"
        values = _masked(profile.values, log)
        axes.plot(
            profile.distance,
            values,
            color=color,
            marker="o" if profile.kind == "radial" and profile.distance.size < 60 else None,
            ms=3,
            label=f"t = {analysis.format_time(profile.time)}",
        )
        if fit is not None:
            r = np.linspace(fit.r_min, fit.r_max, 200)
            axes.plot(
                r,
                fit.model(r),
                color=color,
                ls="--",
                label=f"fit {fit.geometry}: screening length {fit.length:.4g} um",
            )
    first = profiles[0]
    if log:
        axes.set_yscale("log")
    what = "distance from center" if first.kind == "radial" else "distance along the line"
    axes.set_xlabel(f"{what} (um)")
    axes.set_ylabel(_label(first.field, first.units))
    axes.grid(True, alpha=0.3)
    axes.legend(fontsize="small")
    if title is None:
        title = describe_profile(first)
    axes.set_title(title, fontsize="medium")
    return save(figure, path)


def _point_text(profile: analysis.Profile, point) -> str:
    pairs = sorted(zip(profile.axes, point), key=lambda item: "xyz".index(item[0]))
    return "(" + ", ".join(f"{axis}={value:g}" for axis, value in pairs) + ") um"


def describe_profile(profile: analysis.Profile) -> str:
    """A one-line description: field, kind, where, and the plane of a 3D output."""
    where = f" in the plane {profile.slice}" if profile.slice is not None else ""
    if profile.kind == "radial":
        return (
            f"{profile.field}: radial profile around {_point_text(profile, profile.start)}{where}"
        )
    return (
        f"{profile.field}: line profile {_point_text(profile, profile.start)} to "
        f"{_point_text(profile, profile.end)}{where}"
    )


def ffmpeg_path() -> str | None:
    """The ffmpeg an MP4 is encoded with: matplotlib's (rcParams["animation.ffmpeg_path"], on
    PATH), else the one the optional package imageio-ffmpeg ships; None if neither."""
    found = shutil.which(matplotlib.rcParams["animation.ffmpeg_path"])
    if found:
        return found
    try:
        import imageio_ffmpeg
    except ImportError:
        return None
    return imageio_ffmpeg.get_ffmpeg_exe()


def movie(
    out,
    name: str,
    path,
    *,
    slice=None,
    log: bool = False,
    vmin: float | None = None,
    vmax: float | None = None,
    fps: float = 8.0,
    cmap: str = "viridis",
    size=DEFAULT_SIZE,
    dpi: int = 100,
    progress=None,
    cells=(),
) -> Path:
    """Every frame of field `name` (a plane of a 3D output) with one colour scale for all
    frames, as an animated GIF (pillow) or an MP4 (the ffmpeg `ffmpeg_path` finds). Reads one
    plane at a time; `progress(i, n)` is called after each frame if given. `cells` as in
    `field_map`, each state variable on one colour scale for all frames."""
    analysis.check_field(out, name)
    for spec in cells:
        analysis.cell_request(out, spec)
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix not in MOVIE_SUFFIXES:
        raise AnalysisError(
            f"{path}: a movie must be .gif or .mp4, not {path.suffix or '(none)'!r}"
        )
    check_folder(path)
    ffmpeg = ffmpeg_path() if suffix == ".mp4" else None
    if suffix == ".mp4" and ffmpeg is None:
        raise AnalysisError(
            f"{path}: writing mp4 needs ffmpeg, which is not on PATH; install ffmpeg (or pip "
            f"install imageio-ffmpeg) or write a .gif ({path.with_suffix('.gif').name})"
        )
    if not (math.isfinite(fps) and fps > 0):
        raise AnalysisError(f"fps {fps}: must be positive")
    if out.n_frames == 0:
        raise AnalysisError(f"{out.path} holds no frames")
    width, height = (int(v) for v in size)
    if suffix == ".mp4":  # the usual encoders want even sizes
        width, height = width - width % 2, height - height % 2
    low, high = analysis.plane_range(out, name, slice=slice, positive=log)
    bounds = np.asarray([low, high], dtype=float)
    norm = _norm(bounds, log, vmin, vmax, what=f"{name} (in every frame)")
    figure = _figure((width, height), dpi)
    axes = figure.subplots()
    plane = analysis.read_plane(out, name, frame=0, slice=slice)
    artist = _draw_plane(axes, plane, norm, cmap)
    layers = [analysis.plane_cells(out, spec, frame=0, slice=slice) for spec in cells]
    ranges = [analysis.cell_range(out, spec, slice=slice) for spec in cells]
    scatters = _draw_cells(axes, layers, _cell_norms(layers, ranges))
    title = axes.set_title(_title(plane, out.n_frames))
    canvas = figure.canvas

    def frames():
        for index in range(out.n_frames):
            current = (
                plane if index == 0 else analysis.read_plane(out, name, frame=index, slice=slice)
            )
            if current.values.ndim == 1:
                artist.set_ydata(current.values)
            else:
                artist.set_data(_masked(current.values, log))
            for spec, scatter in zip(cells, scatters):
                shown = analysis.plane_cells(out, spec, frame=index, slice=slice)
                scatter.set_offsets(_cell_offsets(shown))
                if shown.values is not None:
                    scatter.set_array(shown.values)
            title.set_text(_title(current, out.n_frames))
            yield index

    n = out.n_frames
    if suffix == ".gif":
        from PIL import Image

        images = []
        for index in frames():
            canvas.draw()
            rgba = np.asarray(canvas.buffer_rgba())
            image = Image.fromarray(rgba[..., :3].copy())
            images.append(image.quantize(colors=256, method=Image.Quantize.MEDIANCUT))
            if progress:
                progress(index + 1, n)
        with replaced(path) as partial:
            images[0].save(
                partial,
                format="GIF",
                save_all=True,
                append_images=images[1:],
                duration=max(20, int(round(1000 / fps))),
                loop=0,
            )
        return path
    from matplotlib import animation

    writer = animation.FFMpegWriter(fps=fps, codec="libx264", extra_args=["-pix_fmt", "yuv420p"])
    with (
        matplotlib.rc_context({"animation.ffmpeg_path": ffmpeg}),
        replaced(path) as partial,
        writer.saving(figure, str(partial), dpi),
    ):
        for index in frames():
            writer.grab_frame()
            if progress:
                progress(index + 1, n)
    return path
