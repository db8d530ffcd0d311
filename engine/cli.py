"""The `ilsim` command line."""

from __future__ import annotations

import argparse
import sys

import engine
from engine.steppers import STEPPERS


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
    parser = argparse.ArgumentParser(prog="ilsim", description=engine.__doc__)
    parser.add_argument("--version", action="version", version=f"ilsim {engine.__version__}")
    commands = parser.add_subparsers(dest="command", required=True)
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
    args = build_parser().parse_args(argv)
    return args.handler(args)


if __name__ == "__main__":
    sys.exit(main())
