"""The `ilsim` command line. Exit status: 0 done, 1 internal error or a diverged run, 2 bad
input (one line on stderr, no traceback), 130 interrupted (file flushed, resumable)."""

from __future__ import annotations

import argparse
import os
import re
import sys
from pathlib import Path

import numpy as np

import engine
from engine.config.errors import ConfigError
from engine.config.loading import load_config, parse_override
from engine.config.toml import dump_toml
from engine.post.analysis import text_table
from engine.stepping.steppers import STEPPERS


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # one line, exit 2
        self.exit(2, f"ilsim: error: {message} (see ilsim {self.prog.split()[-1]} --help)\n")


def _overrides(pairs: list[str]) -> dict:
    return dict(parse_override(text) for text in pairs)


def _select_backend(backend: str | None) -> None:
    if backend is None:
        return
    import jax

    jax.config.update("jax_platforms", {"cpu": "cpu", "gpu": "cuda"}[backend])
    try:
        jax.devices()
    except RuntimeError:
        raise ValueError(f"--backend {backend}: no {backend} device is available here") from None


def _simulation(args):
    cfg = load_config(args.config, overrides=_overrides(args.set))
    devices = getattr(args, "devices", None)
    if cfg.parallel.distributed:
        from engine.numerics.parallel import initialize_distributed

        initialize_distributed(cfg.parallel.heartbeat_timeout)
    return engine.Simulation(cfg, devices=devices, kernels=getattr(args, "kernels", "xla"))


def _select_devices(devices: int | None) -> None:
    """--devices N: where the run falls back to the CPU, it is split into N devices (this
    touches only the CPU backend, so it is harmless where accelerators run)."""
    if devices is None:
        return
    if devices < 1:
        raise ValueError(f"--devices {devices}: must be >= 1")
    from engine.numerics.parallel import use_cpu_devices

    use_cpu_devices(devices)


def _run(args) -> int:
    from engine.runs.driver import run

    _select_backend(args.backend)
    _select_devices(args.devices)
    output = Path(args.output) if args.output else Path(Path(args.config).stem + ".h5")
    path = run(
        _simulation(args), output, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet
    )
    if not args.quiet:
        print(f"wrote {path}")
    return 0


def parse_vary(text: str) -> tuple[str, list]:
    """`KEY=V1,V2,...` (each value a number or a quantity with its unit, "50 um^2/s"), or
    `KEY=lin:A:B:N` / `KEY=log:A:B:N` (N values evenly or log-evenly spaced from A to B)."""
    key, value = parse_override(text)
    text = str(value).strip()
    spaced = re.fullmatch(r"(lin|log):([^:]+):([^:]+):(\d+)", text)
    if spaced:
        kind, lo, hi, count = spaced.groups()
        try:
            lo, hi = float(lo), float(hi)
        except ValueError:
            raise ConfigError(f"--vary {key}: {text}: A and B must be numbers") from None
        if kind == "log" and (lo <= 0 or hi <= 0):
            raise ConfigError(f"--vary {key}: {text}: log spacing needs A, B > 0")
        space = np.geomspace if kind == "log" else np.linspace
        return key, space(lo, hi, int(count)).tolist()
    values = [parse_override(f"v={part}")[1] for part in text.split(",") if part.strip()]
    if isinstance(value, list):  # written as a TOML array
        values = value
    if not values:
        raise ConfigError(f"--vary {key}: no values; write KEY=V1,V2,... or KEY=log:A:B:N")
    return key, values


def _sweep(args) -> int:
    from engine.runs.driver import run
    from engine.runs.gradients import sensitivity
    from engine.runs.sweep import Ensemble

    _select_backend(args.backend)
    _select_devices(args.devices)
    cfg = load_config(args.config, overrides=_overrides(args.set))
    if args.sensitivity:
        if args.vary:
            raise ConfigError("--sensitivity differentiates at the config's values; drop --vary")
        rows = sensitivity(cfg, args.summary, args.param or None)
        _print_sensitivity(rows, args.summary or cfg.field_names[0], cfg.time.end)
        return 0
    if not args.vary:
        raise ConfigError("ilsim sweep: give --vary KEY=V1,V2,... (or --sensitivity)")
    vary = dict(parse_vary(text) for text in args.vary)
    output = Path(args.output) if args.output else Path(Path(args.config).stem + "_sweep.h5")
    ensemble = Ensemble(cfg, vary, product=not args.zip, chunk=args.chunk, devices=args.devices)
    if not args.quiet:
        print(
            f"sweep: {ensemble.size} members of {', '.join(ensemble.keys)}, "
            f"{ensemble.chunk} per batch on {len(ensemble.devices)} device(s)"
        )
    path = run(ensemble, output, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    if not args.quiet:
        print(f"wrote {path}")
    return 0


def _print_sensitivity(rows, summary: str, end: float) -> None:
    from engine.post.analysis import format_time

    print(
        f"sensitivity of the total {summary} at {format_time(end)}, ranked by |elasticity| "
        "(% change of the total per % change of the parameter); values in engine units"
    )
    header = ("rank", "parameter", "value", "d total / d value", "elasticity")
    table = [
        (str(i + 1), r.key, f"{r.value:.6g}", f"{r.derivative:.6g}", f"{r.elasticity:+.4g}")
        for i, r in enumerate(rows)
    ]
    print(text_table(header, table))


def _fit(args) -> int:
    from engine.runs.gradients import fit

    _select_backend(args.backend)
    cfg = load_config(args.config, overrides=_overrides(args.set))
    data = Path(args.data)
    if not data.exists():
        raise ConfigError(f"--data {data}: no such file")
    if cfg.time.dtype == "float32" and not args.quiet:
        print(
            "ilsim: note: fitting in float32; --set time.dtype=float64 gives exact gradients",
            file=sys.stderr,
        )
    result = fit(cfg, data, args.param, fields=args.field, max_iterations=args.max_iterations)
    print(result.table())
    print(
        "fitted config: "
        + " ".join(f"--set {k}={v:.6g}" for k, v in zip(result.keys, result.values))
    )
    if not result.converged:
        print(
            f"ilsim: note: not converged in {result.iterations} iterations; raise "
            "--max-iterations or start nearer (--set)",
            file=sys.stderr,
        )
    return 0


def _validate(args) -> int:
    from engine.runs.driver import output_times

    sim = _simulation(args)
    cfg = sim.config
    state = sim.initial_state()
    sim.check_time_step(state)
    report = sim.validate(state)
    frames = len(output_times(cfg.time.end, cfg.time.output_every))
    names = cfg.output.fields or list(sim.model.names)
    frame_bytes = len(names) * sim.model.grid.size * sim.dtype.itemsize
    print("# resolved config (engine units: um, s, nM, cells/um^3)")
    print(dump_toml(cfg))
    dt, limit = report["dt"], report["explicit_limit"]
    print(f"stepper: {report['stepper']}, dt = {dt:.6g} s ({cfg.time.dt})")
    if report["stepper"] == "explicit":
        print(f"explicit stability limit: {limit:.6g} s (dt is {dt / limit:.2f} of it)")
    else:
        print(f"explicit stability limit: {limit:.6g} s (dt is {dt / limit:.3g}x it; stable)")
    print(f"stiffest reaction: {report['stiffest_field']} at {report['stiffest_rate']:.3g} 1/s")
    print(f"steps to {cfg.time.end:g} s: {report['steps']}")
    print(f"memory estimate: {report['memory_bytes'] / 1e6:.1f} MB")
    print(
        f"output: {frames} frames of {len(names)} fields, {frames * frame_bytes / 1e6:.1f} MB "
        "before compression"
    )
    return 0


def _demo(args) -> int:
    from engine.runs.examples import point_source_model, point_source_profile

    model = point_source_model(ndim=args.ndim, size=args.size)
    species = model.species[0]
    t_end = 12 / species.decay
    print(
        f"point source in {args.ndim}D, {args.size}^{args.ndim} voxels of "
        f"{model.grid.spacing[0]:g} um, D = {species.diffusion:g} um^2/s, "
        f"k = {species.decay:g} 1/s, run to t = {t_end:g} s ({args.dtype}, {args.stepper})"
    )
    r, simulated, exact = point_source_profile(model, t_end, dtype=args.dtype, stepper=args.stepper)
    print("shell means: voxels whose centre lies within half a voxel of r")
    print(f"{'r (um)':>8} {'simulated (nM)':>15} {'analytic (nM)':>15} {'rel. error':>11}")
    for radius, sim, ref in zip(r[:15], simulated[:15], exact[:15]):
        print(f"{radius:8.1f} {sim:15.6g} {ref:15.6g} {(sim - ref) / ref:11.2%}")
    return 0


# ----------------------------------------------------------------------------------------------
# reading outputs: info, plot, profile, movie (engine.analysis; engine.plots imported lazily)


def _open_output(path, member=None, whole_sweep: bool = False):
    """An output opened for reading; a sweep needs `member` (--member) unless `whole_sweep`."""
    from engine.io.output import MEMBER_STATISTICS
    from engine.post.analysis import AnalysisError

    path = Path(path)
    if not path.exists():
        raise AnalysisError(f"{path}: no such file")
    try:
        out = engine.open_output(path, member)
    except OSError as error:
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        raise AnalysisError(f"{path}: not a readable HDF5 file ({reason})") from None
    if out.is_sweep and not whole_sweep:
        out.close()
        raise AnalysisError(
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


def _point(text: str, out, option: str) -> tuple[float, ...]:
    """ "X,Y[,Z]" (um, or lengths with units) as a position in the grid's axis order."""
    from engine.config.units import UnitError, to_engine
    from engine.post.analysis import AnalysisError

    values = []
    for part in text.split(","):
        try:
            values.append(float(part))
        except ValueError:
            try:
                values.append(to_engine(part.strip(), "length"))
            except UnitError:
                raise AnalysisError(
                    f"{option} {text!r}: expected X,Y[,Z] in um, e.g. {option} 120,80"
                ) from None
    ndim = out.grid.ndim
    if not (len(values) == ndim or (ndim == 3 and len(values) == 2)):
        names = ",".join(a.upper() for a in reversed(out.grid.axes))
        also = " (or two in the plane of --slice: X,Y for z=K, X,Z for y=K, Y,Z for x=K)"
        also = also if ndim == 3 else ""
        raise AnalysisError(f"{option} {text!r}: the output is {ndim}D; give {names}{also}")
    return tuple(reversed(values))  # X,Y,Z -> the grid's axis order (z, y, x)


def _frame_note(out, time, index: int) -> None:
    """A note on stderr when the frame shown is not at the time asked for."""
    from engine.post.analysis import format_time, to_seconds

    if time is None or time.strip().lower() in ("first", "last", "end"):
        return
    asked, actual = to_seconds(time), float(out.time[index])
    if abs(asked - actual) > 1e-9 * max(1.0, abs(asked)):
        print(
            f"ilsim: note: no frame at {format_time(asked)}; using the nearest, "
            f"{format_time(actual)} (frame {index})",
            file=sys.stderr,
        )


def _info(args) -> int:
    from engine.post import analysis

    with _open_output(args.output, args.member, whole_sweep=True) as sweep:
        member = "mean" if sweep.is_sweep else args.member
    with _open_output(args.output, member) as out:
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
        print(
            f"grid: {grid.ndim}D, {shape} voxels ({axes}) of {spacing} um, extent {extent} um"
            f"{depth}"
        )
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
        if out.members:
            _print_members(out)
        if out.member is not None:
            print(f"fields (member {out.member}):")
        else:
            print("fields:")
        header = ("name", "kind", "units", "frame", "time", "min", "max", "total")
        rows = []
        for name in out.fields:
            frames = [0, times.size - 1] if times.size > 1 else [0] if times.size else []
            for k, index in enumerate(frames):
                stats = analysis.frame_stats(out, name, frame=index)
                rows.append(
                    (
                        name if k == 0 else "",
                        out.kinds.get(name, "") if k == 0 else "",
                        out.units.get(name, "") if k == 0 else "",
                        "first" if k == 0 else "last",
                        analysis.format_time(stats.time),
                        f"{stats.min:.4g}",
                        f"{stats.max:.4g}",
                        f"{stats.total:.4g} {stats.total_units}",
                    )
                )
            if not frames:
                rows.append(
                    (
                        name,
                        out.kinds.get(name, ""),
                        out.units.get(name, ""),
                        "-",
                        "-",
                        "-",
                        "-",
                        "-",
                    )
                )
        print(analysis.text_table(header, rows, indent="  "))
        if out.summary:
            units = getattr(out, "summary_units", {})
            listed = ", ".join(f"{k} ({units.get(k, '')})" for k in out.summary)
            print(f"summaries: {listed}")
        config = attrs.get("config")
        if config:
            print("config:")
            for line in str(config).rstrip().splitlines():
                print(f"  {line}".rstrip())
    return 0


def _print_members(out) -> None:
    """A sweep's members table: each member's value of every varied key (engine units)."""
    keys = list(out.members)
    rows = [(str(m), *(f"{out.members[k][m]:.6g}" for k in keys)) for m in range(out.n_members)]
    header = ("member", *keys)
    print(f"members: {out.n_members}")
    print(text_table(header, rows, indent="  "))


def _plot(args) -> int:
    from engine.post import analysis, plots

    with _open_output(args.output, args.member, whole_sweep=not args.field) as out:
        if not args.field:
            if args.time is not None or args.slice is not None:
                raise analysis.AnalysisError(
                    "--time and --slice need --field; without it ilsim plot draws the summaries"
                )
            path = plots.summary_plot(out, args.figure, log=args.log, size=args.size, dpi=args.dpi)
        else:
            for name in args.field:
                analysis.check_field(out, name)
            index = analysis.frame_index(out, args.time)
            _frame_note(out, args.time, index)
            path = plots.field_map(
                out, args.field, args.figure, frame=index, **_image_options(args)
            )
    print(f"wrote {path}")
    return 0


def _profile(args) -> int:
    from engine.post import analysis, plots

    with _open_output(args.output, args.member) as out:
        analysis.check_field(out, args.field)
        line = args.start is not None or args.end is not None
        if line and args.center is not None:
            raise analysis.AnalysisError("give --from/--to (a line) or --center (radial), not both")
        if line and (args.start is None or args.end is None):
            raise analysis.AnalysisError("a line profile needs both --from X,Y and --to X,Y")
        if not line and args.center is None:
            raise analysis.AnalysisError(
                "give --from X,Y --to X,Y for a line profile or --center X,Y[,Z] for a radial one"
            )
        plots.check_figure_path(args.figure)
        times = args.time or [None]
        indices = []
        for time in times:
            index = analysis.frame_index(out, time)
            _frame_note(out, time, index)
            indices.append(index)
        profiles = []
        for index in indices:
            if line:
                profiles.append(
                    analysis.line_profile(
                        out,
                        args.field,
                        _point(args.start, out, "--from"),
                        _point(args.end, out, "--to"),
                        samples=args.samples,
                        frame=index,
                        slice=args.slice,
                    )
                )
            else:
                profiles.append(
                    analysis.radial_profile(
                        out,
                        args.field,
                        _point(args.center, out, "--center"),
                        args.radius,
                        frame=index,
                        slice=args.slice,
                        bin_width=args.bin,
                    )
                )
        geometry = args.fit or ("auto" if not line else "none")
        fits = []
        for profile in profiles:
            fit = None
            if geometry != "none":
                try:
                    fit = analysis.screening_length(
                        profile,
                        geometry=None if geometry == "auto" else geometry,
                        r_min=args.r_min,
                        r_max=args.r_max,
                    )
                except analysis.AnalysisError as error:
                    print(f"ilsim: note: no fit: {error}", file=sys.stderr)
            if fit is not None:
                print(
                    f"{profile.field} at t = {analysis.format_time(profile.time)}: screening "
                    f"length {fit.length:.4g} um ({fit.geometry} fit over r = {fit.r_min:.4g}.."
                    f"{fit.r_max:.4g} um, {fit.points} points, rms log residual {fit.rms:.2g})"
                )
            fits.append(fit)
        path = plots.profile_plot(
            profiles, args.figure, fits=fits, log=args.log, size=args.size, dpi=args.dpi
        )
        if args.csv:
            _write_profiles_csv(args.csv, profiles)
            print(f"wrote {args.csv}")
    print(f"wrote {path}")
    return 0


def _write_profiles_csv(path, profiles) -> None:
    lines = ["time_s,distance_um,value,units"]
    for profile in profiles:
        for d, v in zip(profile.distance, profile.values):
            lines.append(f"{profile.time:.9g},{d:.9g},{v:.9g},{profile.units}")
    Path(path).write_text("\n".join(lines) + "\n")


def _image_options(args) -> dict:
    """The options `ilsim plot` and `ilsim movie` share: plane, colour scale, figure size."""
    return dict(
        slice=args.slice,
        log=args.log,
        vmin=args.vmin,
        vmax=args.vmax,
        cmap=args.cmap,
        size=args.size,
        dpi=args.dpi,
    )


def _movie(args) -> int:
    from engine.post import plots

    with _open_output(args.output, args.member) as out:
        path = plots.movie(out, args.field, args.movie, fps=args.fps, **_image_options(args))
        frames = out.n_frames
    print(f"wrote {path} ({frames} frames)")
    return 0


def _figure_options(parser, colours: bool = True) -> None:
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


SLICE_HELP = (
    "plane of a 3D output: AXIS=INDEX (z=12) or AXIS=POSITION (z=30um); default the middle z plane"
)
MEMBER_HELP = (
    "of a sweep: member K (0-based), or mean|std|min|max|median across the members; a plot "
    "of the summaries without --field shows every member"
)


def _set_option(parser) -> None:
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help='override a config key, e.g. --set time.end="2 h"',
    )


def _output_options(parser) -> None:
    """The options of the commands that write a run's file: ilsim run and ilsim sweep."""
    parser.add_argument("--resume", action="store_true", help="continue from the file's checkpoint")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output")
    parser.add_argument("--quiet", action="store_true", help="no progress bar or summary")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ilsim", description=engine.__doc__)
    parser.add_argument("--version", action="version", version=f"ilsim {engine.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run a config, writing frames to HDF5")
    run.add_argument("config")
    run.add_argument("-o", "--output", help="output file (default: CONFIG's name with .h5)")
    _set_option(run)
    run.add_argument("--backend", choices=("cpu", "gpu"))
    run.add_argument(
        "--devices",
        type=int,
        metavar="N",
        help="split the fields over N devices (the [parallel] mesh, or slabs); "
        "on a CPU-only machine the CPU is split into N devices",
    )
    run.add_argument(
        "--kernels",
        choices=("xla", "pallas"),
        default="xla",
        help="pallas: each explicit stage in one Pallas kernel (experimental; GPU)",
    )
    _output_options(run)
    run.set_defaults(handler=_run)

    sweep = commands.add_parser(
        "sweep",
        help="run many parameter values as one batch, or rank every parameter's sensitivity",
        description="--vary KEY=V1,V2,... runs one member per combination of the values "
        "(--zip: the lists side by side) in one batched run, writing one HDF5 file whose "
        "fields lead with a member axis and whose /members table holds each member's values. "
        "--sensitivity prints d(total of --summary at time.end)/d(parameter) for every numeric "
        "parameter of the model, from one backward pass through the solver.",
    )
    sweep.add_argument("config")
    sweep.add_argument(
        "--vary",
        action="append",
        default=[],
        metavar="KEY=V1,V2,...",
        help='values of a config key (numbers in engine units, or "50 um^2/s"), or '
        "KEY=lin:A:B:N / KEY=log:A:B:N",
    )
    sweep.add_argument("--zip", action="store_true", help="pair the value lists, not combine")
    sweep.add_argument("-o", "--output", help="output file (default: CONFIG_sweep.h5)")
    _set_option(sweep)
    sweep.add_argument("--chunk", type=int, metavar="N", help="members per device batch")
    sweep.add_argument("--backend", choices=("cpu", "gpu"))
    sweep.add_argument("--devices", type=int, metavar="N", help="devices sharing the members")
    _output_options(sweep)
    sweep.add_argument(
        "--sensitivity", action="store_true", help="rank every parameter's sensitivity instead"
    )
    sweep.add_argument(
        "--summary",
        metavar="FIELD",
        help="field whose total the sensitivity is of (default: first)",
    )
    sweep.add_argument(
        "--param", action="append", metavar="KEY", help="only these parameters (sensitivity)"
    )
    sweep.set_defaults(handler=_sweep)

    fit = commands.add_parser(
        "fit",
        help="fit parameters to observed fields through the differentiated solver",
        description="Least squares of the run's frames against an ilsim output file's fields "
        "(at its times; each field scaled by its observed maximum), over the log of each "
        "parameter, by L-BFGS; prints the fitted values with standard errors from the "
        "Gauss-Newton covariance. The config's values are the start.",
    )
    fit.add_argument("config")
    fit.add_argument("--data", required=True, metavar="OBS.h5", help="observed fields")
    fit.add_argument(
        "--param", action="append", required=True, metavar="KEY", help="parameter to fit"
    )
    fit.add_argument("--field", action="append", metavar="NAME", help="observed field to fit")
    _set_option(fit)
    fit.add_argument("--max-iterations", type=int, default=100)
    fit.add_argument("--backend", choices=("cpu", "gpu"))
    fit.add_argument("--quiet", action="store_true", help="no notes")
    fit.set_defaults(handler=_fit)

    validate = commands.add_parser("validate", help="check a config and report; runs nothing")
    validate.add_argument("config")
    _set_option(validate)
    validate.set_defaults(handler=_validate)

    demo = commands.add_parser(
        "demo", help="simulate a point source with decay and compare with the analytic steady state"
    )
    demo.add_argument("--ndim", type=int, choices=(2, 3), default=3)
    demo.add_argument("--size", type=int, default=48, help="voxels per axis (default 48)")
    demo.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    demo.add_argument("--stepper", choices=tuple(STEPPERS), default="explicit")
    demo.set_defaults(handler=_demo)

    info = commands.add_parser("info", help="what an output file holds")
    info.add_argument("output", metavar="OUT.h5")
    info.add_argument("--member", help=MEMBER_HELP)
    info.set_defaults(handler=_info)

    plot = commands.add_parser(
        "plot",
        help="a field map at one time (a plane of a 3D output), or the summaries vs time",
        description="With --field: a map of the field(s) at one time (axes in um, colour bar "
        "in the field's units); without: every summary (totals and maxima) against time.",
    )
    plot.add_argument("output", metavar="OUT.h5")
    plot.add_argument(
        "--field", action="append", metavar="NAME", help="field to map (repeat for a panel)"
    )
    plot.add_argument("--time", help='time of the frame, e.g. 3600 or "1 h" (default: last)')
    plot.add_argument("--slice", help=SLICE_HELP)
    plot.add_argument("--member", help=MEMBER_HELP)
    plot.add_argument("-o", "--figure", required=True, metavar="FIG.png", help="figure to write")
    _figure_options(plot)
    plot.set_defaults(handler=_plot)

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
    profile.add_argument("--samples", type=int, help="points along a line (default 2 per voxel)")
    profile.add_argument(
        "--time", action="append", help="time of the frame (repeat for several; default last)"
    )
    profile.add_argument("--slice", help=SLICE_HELP)
    profile.add_argument("--member", help=MEMBER_HELP)
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
    _figure_options(profile, colours=False)
    profile.add_argument("--log", action="store_true", help="logarithmic value axis")
    profile.set_defaults(handler=_profile)

    movie = commands.add_parser(
        "movie", help="every frame of a field as a GIF (or MP4 with ffmpeg), one colour scale"
    )
    movie.add_argument("output", metavar="OUT.h5")
    movie.add_argument("--field", required=True, metavar="NAME")
    movie.add_argument("--slice", help=SLICE_HELP)
    movie.add_argument("--member", help=MEMBER_HELP)
    movie.add_argument("--fps", type=float, default=8.0, help="frames per second (default 8)")
    movie.add_argument("-o", "--movie", required=True, metavar="MOVIE.gif|mp4")
    _figure_options(movie)
    movie.set_defaults(handler=_movie)
    return parser


def main(argv: list[str] | None = None) -> int:
    from engine.runs.driver import Diverged, Interrupted, RunError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
    except BrokenPipeError:  # output piped into a reader that stopped (| head): not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0
    except (ConfigError, RunError) as error:
        print(f"ilsim: error: {error}", file=sys.stderr)
        return 2
    except (ValueError, OSError) as error:
        print(f"ilsim: error: {str(error).splitlines()[0]}", file=sys.stderr)
        return 2
    except Interrupted as error:
        print(f"ilsim: {error}", file=sys.stderr)
        return 130
    except Diverged as error:
        print(f"ilsim: error: {error}", file=sys.stderr)
        return 1
    except Exception as error:
        if os.environ.get("ILSIM_DEBUG"):
            raise
        print(
            f"ilsim: internal error: {type(error).__name__}: {error} "
            "(set ILSIM_DEBUG=1 for the traceback)",
            file=sys.stderr,
        )
        return 1
