"""`ilsim info`, `ilsim plot`, `ilsim profile` and `ilsim movie`: reading an output file,
each command's arguments beside its handler. Nothing here loads JAX, pint or pydantic: the
handlers read files through `engine.io` and draw with `engine.post`."""

from __future__ import annotations

import argparse
import contextlib
import io
import math
import sys
from pathlib import Path

import numpy as np

import engine
from engine.io.layout import MEMBER_STATISTICS, unreadable, while_written
from engine.io.replacing import replaced
from engine.post import analysis
from engine.post.quantities import UnitError, read_quantity


def register(commands) -> None:
    """Add info, plot, profile and movie to the `ilsim` subcommands."""
    _register_info(commands)
    _register_plot(commands)
    _register_profile(commands)
    _register_movie(commands)


MAX_SAMPLES = 1_000_000
"""Most points of a line profile (--samples): far more than a figure has pixels, and read in
seconds."""

_SLICE_HELP = (
    "plane of a 3D output: AXIS=INDEX (z=12) or AXIS=POSITION (z=30um); default the middle z plane"
)
_CELLS_HELP = (
    "draw the alive cells of TYPE over the map (in 3D those in the plane's voxel layer), "
    "coloured by the state variable STATE or in one colour; repeat for several types"
)
_MEMBER_HELP = (
    "of a sweep: member K (0-based), or mean|std|min|max|median across the members; a plot "
    "of the summaries without --field shows every member"
)


def _reading_live(handler):
    """`handler`, tried again while a run writes its file and reading it fails
    (`io.layout.while_written`), what it prints held back until it succeeds."""

    def attempt(args) -> tuple[int, str]:
        printed = io.StringIO()
        with contextlib.redirect_stdout(printed):
            return handler(args), printed.getvalue()

    def unread(error) -> bool:
        return isinstance(error, OSError) or (
            isinstance(error, analysis.AnalysisError) and isinstance(error.__context__, OSError)
        )

    def tried(args) -> int:
        status, printed = while_written(lambda: attempt(args), args.output, unread)
        sys.stdout.write(printed)
        return status

    return tried


def _open_output(path, member=None, whole_sweep: bool = False):
    """An output opened for reading; a sweep needs `member` (--member) unless `whole_sweep`."""
    path = Path(path)
    if not path.exists():
        raise analysis.AnalysisError(f"{path}: no such file")
    try:
        out = engine.open_output(path, member)
    except OSError as error:
        raise analysis.AnalysisError(unreadable(path, error)) from None
    if out.is_sweep and not whole_sweep:
        out.close()
        raise analysis.AnalysisError(
            f"{path} holds a sweep of {out.n_members} members; choose one with --member K "
            f"(0..{out.n_members - 1}) or a summary across them with --member "
            + "|".join(MEMBER_STATISTICS)
        )
    return out


def _size(text: str) -> tuple[int, int]:
    parts = text.lower().replace(",", "x").split("x")
    try:
        width, height = (int(p) for p in parts)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT in pixels, got {text!r}") from None
    if width < 50 or height < 50 or width > 20000 or height > 20000:
        raise argparse.ArgumentTypeError(f"{text!r}: each side must be 50..20000 pixels")
    return width, height


def _samples(text: str) -> int:
    try:
        count = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number of points, got {text!r}") from None
    if not 2 <= count <= MAX_SAMPLES:
        raise argparse.ArgumentTypeError(f"{text!r}: give 2..{MAX_SAMPLES} points")
    return count


def _point(text: str, out, option: str) -> tuple[float, ...]:
    """ "X,Y[,Z]" (um, or lengths with units) as a position in the grid's axis order."""
    values = []
    for part in text.split(","):
        try:
            values.append(float(part))
        except ValueError:
            try:
                values.append(read_quantity(part.strip(), "length"))
            except UnitError:
                raise analysis.AnalysisError(
                    f"{option} {text!r}: expected X,Y[,Z] in um, e.g. {option} 120,80"
                ) from None
    ndim = out.grid.ndim
    if not (len(values) == ndim or (ndim == 3 and len(values) == 2)):
        names = ",".join(a.upper() for a in reversed(out.grid.axes))
        also = " (or two in the plane of --slice: X,Y for z=K, X,Z for y=K, Y,Z for x=K)"
        also = also if ndim == 3 else ""
        raise analysis.AnalysisError(
            f"{option} {text!r}: the output is {ndim}D; give {names}{also}"
        )
    return tuple(reversed(values))  # X,Y,Z -> the grid's axis order (z, y, x)


def _frame_note(out, time, index: int) -> None:
    """A note on stderr when the frame shown is not at the time asked for."""
    if time is None or time.strip().lower() in ("first", "last", "end"):
        return
    asked, actual = analysis.to_seconds(time), float(out.time[index])
    if abs(asked - actual) > 1e-9 * max(1.0, abs(asked)):
        print(
            f"ilsim: note: no frame at {analysis.format_time(asked)}; using the nearest, "
            f"{analysis.format_time(actual)} (frame {index + 1}/{len(out.time)})",
            file=sys.stderr,
        )


def _add_figure_options(parser, colours: bool = True) -> None:
    parser.add_argument(
        "--overwrite", action="store_true", help="replace an existing figure (and --csv)"
    )
    parser.add_argument(
        "--size",
        type=_size,
        default=(800, 600),
        metavar="WxH",
        help="figure size in pixels (default 800x600)",
    )
    parser.add_argument("--dpi", type=int, default=100, help="dots per inch (default 100)")
    if colours:
        parser.add_argument("--log", action="store_true", help="logarithmic colour scale")
        parser.add_argument("--vmin", type=float, help="colour scale minimum (field units)")
        parser.add_argument("--vmax", type=float, help="colour scale maximum (field units)")
        parser.add_argument("--cmap", default="viridis", help="matplotlib colour map")
        parser.add_argument(
            "--cells", action="append", default=[], metavar="TYPE[:STATE]", help=_CELLS_HELP
        )


def _image_options(args) -> dict:
    """The options `ilsim plot` and `ilsim movie` share: plane, colour scale, figure size,
    cells."""
    for option in ("vmin", "vmax"):
        value = getattr(args, option)
        if value is not None and not math.isfinite(value):
            raise analysis.AnalysisError(f"--{option} {value}: give a finite number")
    if args.vmin is not None and args.vmax is not None and not args.vmin < args.vmax:
        raise analysis.AnalysisError(
            f"--vmin {args.vmin:g} is not below --vmax {args.vmax:g}; swap or change them"
        )
    return dict(
        cells=tuple(args.cells),
        slice=args.slice,
        log=args.log,
        vmin=args.vmin,
        vmax=args.vmax,
        cmap=args.cmap,
        size=args.size,
        dpi=args.dpi,
    )


# ----------------------------------------------------------------------------------------------
# ilsim info


def _register_info(commands) -> None:
    info = commands.add_parser("info", help="what an output file holds")
    info.add_argument("output", metavar="OUT.h5")
    info.add_argument("--member", help=_MEMBER_HELP)
    info.set_defaults(handler=_reading_live(_info))


def _info(args) -> int:
    with _open_output(args.output, args.member, whole_sweep=True) as sweep:
        member = "mean" if sweep.is_sweep else args.member
    with _open_output(args.output, member) as out:
        _print_file(out)
        if out.members:
            _print_members(out)
        _print_fields(out)
        if out.cell_types:
            _print_cells(out)
        if out.summary:
            units = getattr(out, "summary_units", {})
            listed = ", ".join(f"{k} ({units.get(k, '')})" for k in out.summary)
            print(f"summaries: {listed}")
        config = out.attrs.get("config")
        if config:
            print("config:")
            for line in str(config).rstrip().splitlines():
                print(f"  {line}".rstrip())
    return 0


def _print_file(out) -> None:
    """Where a file comes from and what it covers: format, grid, times, run, regions."""
    grid, attrs, times = out.grid, out.attrs, out.time
    print(f"file: {out.path}")
    print(
        f"format: {attrs.get('format')} {attrs.get('format_version')}, written by ilsim "
        f"{attrs.get('ilsim_version', '?')} on {attrs.get('created', '?')}"
    )
    shape = " x ".join(str(n) for n in reversed(grid.shape))
    spacing = " x ".join(f"{h:g}" for h in reversed(grid.spacing))
    extent = " x ".join(f"{lo:g}..{up:g}" for lo, up in zip(grid.lower[::-1], grid.upper[::-1]))
    axes = ", ".join(reversed(grid.axes))
    depth = f", depth {grid.depth:g} um" if grid.ndim < 3 else ""
    print(f"grid: {grid.ndim}D, {shape} voxels ({axes}) of {spacing} um, extent {extent} um{depth}")
    if times.size:
        steps = np.diff(times)
        every = ""
        if steps.size:
            if np.allclose(steps, steps[0], rtol=1e-6, atol=0):
                every = f", every {analysis.format_time(steps[0])}"
            else:
                every = ", at irregular intervals"
        print(
            f"time: {analysis.format_time(times[0])} .. {analysis.format_time(times[-1])}, "
            f"{times.size} frame{'s' * (times.size != 1)}{every}"
        )
    else:
        print("time: no frames")
    print(
        f"run: stepper {attrs.get('stepper', '?')}, backend {attrs.get('backend', '?')}, "
        f"device {attrs.get('device', '?')}, dtype {attrs.get('dtype', '?')}"
    )
    regions = analysis.region_names(out)
    if regions:
        parts = []
        for name in regions:
            voxels = analysis.region_voxels(out, name)
            parts.append(f"{name} ({voxels} voxels, {voxels / grid.size:.3g} of the grid)")
        print("regions: " + "; ".join(parts))
    else:
        print("regions: none")


def _print_members(out) -> None:
    """A sweep's members table: each member's value of every varied key (engine units)."""
    keys = list(out.members)
    rows = [(str(m), *(f"{out.members[k][m]:.6g}" for k in keys)) for m in range(out.n_members)]
    header = ("member", *keys)
    print(f"members: {out.n_members}")
    print(analysis.text_table(header, rows, indent="  "))


def _print_fields(out) -> None:
    """Each field's kind, units and statistics at the first and last frames."""
    if out.member is not None:
        print(f"fields (member {out.member}):")
    else:
        print("fields:")
    header = ("name", "kind", "units", "frame", "time", "min", "max", "total")
    n = out.time.size
    frames = [0, n - 1] if n > 1 else [0] if n else []
    rows = []
    for name in out.fields:
        kind, units = out.kinds.get(name, ""), out.units.get(name, "")
        for k, index in enumerate(frames):
            stats = analysis.frame_stats(out, name, frame=index)
            rows.append(
                (
                    name if k == 0 else "",
                    kind if k == 0 else "",
                    units if k == 0 else "",
                    "first" if k == 0 else "last",
                    analysis.format_time(stats.time),
                    f"{stats.min:.4g}",
                    f"{stats.max:.4g}",
                    f"{stats.total:.4g} {stats.total_units}",
                )
            )
        if not frames:
            rows.append((name, kind, units, "-", "-", "-", "-", "-"))
    print(analysis.text_table(header, rows, indent="  "))


def _print_cells(out) -> None:
    """Each cell type's capacity and state variables, and its alive cells at the first and
    last frames and their least and most over every frame."""
    print("cells:")
    header = ("type", "capacity", "state", "alive first", "alive last", "min", "max")
    rows = []
    for name in out.cell_types:
        counts = out.cell_counts(name)
        alive = ["-"] * 4
        if counts.size:
            alive = [counts[0], counts[-1], counts.min(), counts.max()]
        state = ", ".join(out.cell_state(name)) or "-"
        rows.append((name, out.cell_capacity(name), state, *alive))
    print(analysis.text_table(header, rows, indent="  "))


# ----------------------------------------------------------------------------------------------
# ilsim plot


def _register_plot(commands) -> None:
    plot = commands.add_parser(
        "plot",
        help="a field map at one time (a plane of a 3D output), or the summaries vs time",
        description="With --field: a map of the field(s) at one time (axes in um, colour bar "
        "in the field's units), with --cells the cells over it; without: every summary "
        "(totals and maxima, alive cells per type) against time.",
    )
    plot.add_argument("output", metavar="OUT.h5")
    plot.add_argument(
        "--field", action="append", metavar="NAME", help="field to map (repeat for a panel)"
    )
    plot.add_argument("--time", help='time of the frame, e.g. 3600 or "1 h" (default: last)')
    plot.add_argument("--slice", help=_SLICE_HELP)
    plot.add_argument("--member", help=_MEMBER_HELP)
    plot.add_argument("-o", "--figure", required=True, metavar="FIG.png", help="figure to write")
    _add_figure_options(plot)
    plot.set_defaults(handler=_reading_live(_plot))


def _plot(args) -> int:
    from engine.post import plots

    plots.check_replaceable([args.figure], args.overwrite)
    with _open_output(args.output, args.member, whole_sweep=not args.field) as out:
        if not args.field:
            if args.time is not None or args.slice is not None or args.cells:
                raise analysis.AnalysisError(
                    "--time, --slice and --cells need --field; without it ilsim plot draws "
                    "the summaries"
                )
            path = plots.summary_plot(out, args.figure, log=args.log, size=args.size, dpi=args.dpi)
        else:
            for name in args.field:
                analysis.check_field(out, name)
            for spec in args.cells:
                analysis.cell_request(out, spec)
            index = analysis.frame_index(out, args.time)
            _frame_note(out, args.time, index)
            path = plots.field_map(
                out, args.field, args.figure, frame=index, **_image_options(args)
            )
    print(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------------------------
# ilsim profile


def _register_profile(commands) -> None:
    profile = commands.add_parser(
        "profile",
        help="a line or radial profile of a field, with its screening length",
        description="Line profile: --from X,Y --to X,Y. Radial profile: --center X,Y[,Z] "
        "[--radius R]; the screening length is fitted and printed (--fit). Coordinates in um, "
        "x first. In a 3D output X,Y,Z spans the volume (shells for --center) and two "
        "coordinates lie in the plane of --slice (default the middle z plane): X,Y for z=K, X,Z "
        "for y=K, Y,Z for x=K. Write negative coordinates as --from=-10,5.",
    )
    profile.add_argument("output", metavar="OUT.h5")
    profile.add_argument("--field", required=True, metavar="NAME")
    profile.add_argument("--from", dest="start", metavar="X,Y[,Z]", help="line start (um)")
    profile.add_argument("--to", dest="end", metavar="X,Y[,Z]", help="line end (um)")
    profile.add_argument("--center", metavar="X,Y[,Z]", help="center of a radial profile (um)")
    profile.add_argument("--radius", type=float, help="largest radius (um; default: whole grid)")
    profile.add_argument("--bin", type=float, metavar="WIDTH", help="radial bin width (um)")
    profile.add_argument(
        "--samples", type=_samples, help="points along a line (default 2 per voxel)"
    )
    profile.add_argument(
        "--time", action="append", help="time of the frame (repeat for several; default last)"
    )
    profile.add_argument("--slice", help=_SLICE_HELP)
    profile.add_argument("--member", help=_MEMBER_HELP)
    profile.add_argument(
        "--fit",
        choices=("auto", "sphere", "cylinder", "plane", "none"),
        help="screening-length fit: exp(-r/L)/r (sphere), K0(r/L) (cylinder), exp(-r/L) "
        "(plane); default auto (from the grid's dimension) for radial, none for line profiles",
    )
    profile.add_argument("--r-min", type=float, help="fit from this distance (um)")
    profile.add_argument("--r-max", type=float, help="fit up to this distance (um)")
    profile.add_argument("--csv", metavar="FILE.csv", help="also write the profile values")
    profile.add_argument("-o", "--figure", required=True, metavar="FIG.png")
    _add_figure_options(profile, colours=False)
    profile.add_argument("--log", action="store_true", help="logarithmic value axis")
    profile.set_defaults(handler=_reading_live(_profile))


def _profile(args) -> int:
    from engine.post import plots

    plots.check_replaceable([args.figure, args.csv], args.overwrite)
    plots.check_apart({"-o": args.figure, "--csv": args.csv})
    if args.csv:
        plots.check_folder(Path(args.csv))
    with _open_output(args.output, args.member) as out:
        analysis.check_field(out, args.field)
        line = _profile_kind(args)
        plots.check_figure_path(args.figure)
        indices = []
        for time in args.time or [None]:
            index = analysis.frame_index(out, time)
            _frame_note(out, time, index)
            indices.append(index)
        profiles = [_read_profile(out, args, line, index) for index in indices]
        geometry = args.fit or ("auto" if not line else "none")
        fits = [_fit_profile(profile, args, geometry) for profile in profiles]
        path = plots.profile_plot(
            profiles, args.figure, fits=fits, log=args.log, size=args.size, dpi=args.dpi
        )
        if args.csv:
            _write_profiles_csv(args.csv, profiles)
            print(f"wrote {args.csv}")
    print(f"wrote {path}")
    return 0


def _profile_kind(args) -> bool:
    """Whether the arguments ask for a line profile (True) or a radial one (False)."""
    line = args.start is not None or args.end is not None
    if line and args.center is not None:
        raise analysis.AnalysisError("give --from/--to (a line) or --center (radial), not both")
    if line and (args.start is None or args.end is None):
        raise analysis.AnalysisError("a line profile needs both --from X,Y and --to X,Y")
    if not line and args.center is None:
        raise analysis.AnalysisError(
            "give --from X,Y --to X,Y for a line profile or --center X,Y[,Z] for a radial one"
        )
    others = {"--radius": args.radius, "--bin": args.bin} if line else {"--samples": args.samples}
    for option, value in others.items():
        if value is not None:
            kind = "radial (--center)" if line else "line (--from/--to)"
            raise analysis.AnalysisError(f"{option} is for a {kind} profile; drop it")
    return line


def _read_profile(out, args, line: bool, index: int):
    """The line or radial profile that the arguments ask for, at frame `index`."""
    if line:
        return analysis.line_profile(
            out,
            args.field,
            _point(args.start, out, "--from"),
            _point(args.end, out, "--to"),
            samples=args.samples,
            frame=index,
            slice=args.slice,
        )
    return analysis.radial_profile(
        out,
        args.field,
        _point(args.center, out, "--center"),
        args.radius,
        frame=index,
        slice=args.slice,
        bin_width=args.bin,
    )


def _fit_profile(profile, args, geometry: str):
    """The screening length fitted to `profile` (printed), or None: with --fit none, or when
    the fit fails (a note on stderr says why)."""
    if geometry == "none":
        return None
    try:
        fit = analysis.screening_length(
            profile,
            geometry=None if geometry == "auto" else geometry,
            r_min=args.r_min,
            r_max=args.r_max,
        )
    except analysis.AnalysisError as error:
        print(f"ilsim: note: no fit: {error}", file=sys.stderr)
        return None
    print(
        f"{profile.field} at t = {analysis.format_time(profile.time)}: screening "
        f"length {fit.length:.4g} um ({fit.geometry} fit over r = {fit.r_min:.4g}.."
        f"{fit.r_max:.4g} um, {fit.points} points, rms log residual {fit.rms:.2g})"
    )
    return fit


def _write_profiles_csv(path, profiles) -> None:
    """The profiles' values as CSV: time (s), distance (um), value, units; written whole."""
    lines = ["time_s,distance_um,value,units"]
    for profile in profiles:
        for d, v in zip(profile.distance, profile.values):
            lines.append(f"{profile.time:.9g},{d:.9g},{v:.9g},{profile.units}")
    with replaced(Path(path)) as partial:
        partial.write_text("\n".join(lines) + "\n")


# ----------------------------------------------------------------------------------------------
# ilsim movie


def _register_movie(commands) -> None:
    movie = commands.add_parser(
        "movie", help="every frame of a field as a GIF (or MP4 with ffmpeg), one colour scale"
    )
    movie.add_argument("output", metavar="OUT.h5")
    movie.add_argument("--field", required=True, metavar="NAME")
    movie.add_argument("--slice", help=_SLICE_HELP)
    movie.add_argument("--member", help=_MEMBER_HELP)
    movie.add_argument("--fps", type=float, default=8.0, help="frames per second (default 8)")
    movie.add_argument("-o", "--movie", required=True, metavar="MOVIE.gif|mp4")
    _add_figure_options(movie)
    movie.set_defaults(handler=_reading_live(_movie))


def _movie(args) -> int:
    from engine.post import plots

    plots.check_replaceable([args.movie], args.overwrite)
    with _open_output(args.output, args.member) as out:
        path = plots.movie(out, args.field, args.movie, fps=args.fps, **_image_options(args))
        frames = out.n_frames
    print(f"wrote {path} ({frames} frames)")
    return 0
