"""The `ilsim` command line. Exit status: 0 done, 1 internal error or a diverged run, 2 bad
input (one line on stderr, no traceback), 130 interrupted (file flushed, resumable)."""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

import engine
from engine.config import ConfigError, dump_toml, load_config, parse_override
from engine.steppers import STEPPERS


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
    return engine.Simulation(cfg)


def _run(args) -> int:
    from engine.run import run

    _select_backend(args.backend)
    output = Path(args.output) if args.output else Path(Path(args.config).stem + ".h5")
    path = run(
        _simulation(args), output, resume=args.resume, overwrite=args.overwrite, quiet=args.quiet
    )
    if not args.quiet:
        print(f"wrote {path}")
    return 0


def _validate(args) -> int:
    from engine.run import output_times

    sim = _simulation(args)
    cfg = sim.config
    report = sim.validate()
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
    from engine.examples import point_source_model, point_source_profile

    model = point_source_model(ndim=args.ndim, size=args.size)
    species = model.species[0]
    t_end = 12 / species.decay
    print(
        f"point source in {args.ndim}D, {args.size}^{args.ndim} voxels of "
        f"{model.grid.spacing[0]:g} um, D = {species.diffusion:g} um^2/s, "
        f"k = {species.decay:g} 1/s, run to t = {t_end:g} s ({args.dtype}, {args.stepper})"
    )
    r, simulated, exact = point_source_profile(model, t_end, dtype=args.dtype, stepper=args.stepper)
    print(f"{'r (um)':>8} {'simulated (nM)':>15} {'analytic (nM)':>15} {'rel. error':>11}")
    for radius, sim, ref in zip(r[:15], simulated[:15], exact[:15]):
        print(f"{radius:8.1f} {sim:15.6g} {ref:15.6g} {(sim - ref) / ref:11.2%}")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="ilsim", description=engine.__doc__)
    parser.add_argument("--version", action="version", version=f"ilsim {engine.__version__}")
    commands = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

    run = commands.add_parser("run", help="run a config, writing frames to HDF5")
    run.add_argument("config")
    run.add_argument("-o", "--output", help="output file (default: CONFIG's name with .h5)")
    run.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help='override a config key, e.g. --set time.end="2 h"',
    )
    run.add_argument("--backend", choices=("cpu", "gpu"))
    run.add_argument("--resume", action="store_true", help="continue from the file's checkpoint")
    run.add_argument("--overwrite", action="store_true", help="replace an existing output")
    run.add_argument("--quiet", action="store_true", help="no progress bar or summary")
    run.set_defaults(handler=_run)

    validate = commands.add_parser("validate", help="check a config and report; runs nothing")
    validate.add_argument("config")
    validate.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    validate.set_defaults(handler=_validate)

    demo = commands.add_parser(
        "demo", help="simulate a point source with decay and compare with the analytic steady state"
    )
    demo.add_argument("--ndim", type=int, choices=(2, 3), default=3)
    demo.add_argument("--size", type=int, default=48, help="voxels per axis (default 48)")
    demo.add_argument("--dtype", choices=("float32", "float64"), default="float32")
    demo.add_argument("--stepper", choices=tuple(STEPPERS), default="explicit")
    demo.set_defaults(handler=_demo)
    return parser


def main(argv: list[str] | None = None) -> int:
    from engine.run import Diverged, Interrupted, RunError

    args = build_parser().parse_args(argv)
    try:
        return args.handler(args)
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


if __name__ == "__main__":
    sys.exit(main())
