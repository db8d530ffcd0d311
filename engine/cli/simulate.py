"""`ilsim run`, `ilsim validate` and `ilsim demo`: simulating a config (or the built-in point
source), each command's arguments beside its handler."""

from __future__ import annotations

from pathlib import Path

from engine.cli import options


def register(commands) -> None:
    """Add run, validate and demo to the `ilsim` subcommands."""
    _register_run(commands)
    _register_validate(commands)
    _register_demo(commands)


# ----------------------------------------------------------------------------------------------
# ilsim run


def _register_run(commands) -> None:
    run = commands.add_parser("run", help="run a config, writing frames to HDF5")
    run.add_argument("config")
    run.add_argument("-o", "--output", help="output file (default: CONFIG's name with .h5)")
    options.add_set_option(run)
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
        choices=("auto", "xla", "pallas"),
        default="auto",
        help="pallas: each explicit stage in one Pallas kernel (auto: for ssprk2/3 on 3D "
        "grids on a GPU); xla: XLA's fusion",
    )
    options.add_output_options(run)
    run.set_defaults(handler=_run)


def _run(args) -> int:
    from engine.runs.driver import run

    options.select_backend(args.backend)
    options.select_devices(args.devices)
    output = Path(args.output) if args.output else Path(Path(args.config).stem + ".h5")
    sim = options.simulation(args)
    path = run(sim, output, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet)
    if not args.quiet:
        print(f"wrote {path}")
    return 0


# ----------------------------------------------------------------------------------------------
# ilsim validate


def _register_validate(commands) -> None:
    validate = commands.add_parser("validate", help="check a config and report; runs nothing")
    validate.add_argument("config")
    options.add_set_option(validate)
    validate.set_defaults(handler=_validate)


def _print_peak(sim, state) -> None:
    """The run's predicted peak memory: the compiled loop's (compiled, not run) with this
    process and one host frame (`numerics.memory.predicted_peak_bytes`)."""
    from engine.numerics.memory import predicted_peak_bytes, process_bytes

    compiled = sim.compile_stats(state)["peak_bytes"]
    process = process_bytes()
    if compiled is None or process is None:
        print("peak memory: not predicted here (no memory analysis)")
        return
    fields = sum(v.size * v.dtype.itemsize for v in state.fields.values())
    peak = predicted_peak_bytes(process, fields, compiled, fields)
    print(
        f"peak memory: {peak / 1e6:.1f} MB predicted (compiled loop {compiled / 1e6:.1f} MB, "
        f"host frame {fields / 1e6:.1f} MB, process {(process - fields) / 1e6:.1f} MB)"
    )


def _validate(args) -> int:
    from engine.config.toml import dump_toml
    from engine.runs.driver import output_times

    sim = options.simulation(args)
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
        if report["stiffest_rate"] * limit > 0.5:  # the sinks set most of the limit
            print(
                f"note: {report['stiffest_field']}'s sinks set most of the explicit limit; "
                'time.stepper = "imex" takes them exactly at steps its accuracy target sets'
            )
    else:
        print(f"explicit stability limit: {limit:.6g} s (dt is {dt / limit:.3g}x it; stable)")
    print(f"stiffest reaction: {report['stiffest_field']} at {report['stiffest_rate']:.3g} 1/s")
    print(f"steps to {cfg.time.end:g} s: {report['steps']}")
    for name, (count, capacity) in report.get("cells", {}).items():
        print(f"cells {name}: {count} at the start, capacity {capacity}")
    if "cell_every" in report:
        every, parts = report["cell_every"], report["cell_parts"]
        split = f", in {parts} parts within cells_dt" if parts > 1 else ""
        print(f"cells step every {every} field steps ({every * dt:.6g} s){split}")
    print(f"memory estimate: {report['memory_bytes'] / 1e6:.1f} MB")
    _print_peak(sim, state)
    cells = ""
    if sim.model.cells:
        ndim, value = sim.model.grid.ndim, sim.dtype.itemsize
        per_frame = sum(  # position and state in the run's dtype, alive 1 byte, id 8 bytes
            c.capacity * ((ndim + len(c.state_names)) * value + 1 + 8) for c in sim.model.cells
        )
        frame_bytes += per_frame
        cells = f" and {len(sim.model.cells)} cell types"
    print(
        f"output: {frames} frames of {len(names)} fields{cells}, "
        f"{frames * frame_bytes / 1e6:.1f} MB before compression"
    )
    return 0


# ----------------------------------------------------------------------------------------------
# ilsim demo


class _StepperNames:
    """The stepper names (`engine.stepping.steppers.STEPPERS`) as argparse choices, looked up
    only when argparse checks or lists them, so that building the parser imports no JAX."""

    def __iter__(self):
        from engine.stepping.steppers import STEPPERS

        return iter(STEPPERS)

    def __contains__(self, name) -> bool:
        return name in list(self)


def _register_demo(commands) -> None:
    demo = commands.add_parser(
        "demo", help="simulate a point source with decay and compare with the analytic steady state"
    )
    demo.add_argument("--ndim", type=int, choices=(2, 3), default=3)
    demo.add_argument("--size", type=int, default=48, help="voxels per axis (default 48)")
    demo.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    demo.add_argument(
        "--stepper",
        choices=_StepperNames(),
        default="explicit",
        metavar="STEPPER",
        help="%(choices)s (default explicit)",
    )
    demo.set_defaults(handler=_demo)


def _demo(args) -> int:
    from engine.config.memory import check_fits
    from engine.numerics.memory import STATE_COPIES, available_memory, state_bytes
    from engine.runs.examples import point_source_model, point_source_profile

    voxels, per_value = args.size**args.ndim, 8 if args.dtype == "float64" else 4
    check_fits(
        state_bytes(1, voxels, per_value),
        available_memory(),
        f"--size {args.size}",
        f"1 field x {voxels:.3g} voxels x {per_value} bytes x {STATE_COPIES} copies",
        "use a smaller --size",
    )
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
