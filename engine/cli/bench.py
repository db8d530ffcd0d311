"""`ilsim bench`: the standard benchmark of the solver on the device JAX sees, its table,
JSON and figure, and the ratios to an earlier run (docs/benchmarking.md)."""

from __future__ import annotations

import argparse
import functools
import sys
from pathlib import Path


def register(commands) -> None:
    """Add bench to the `ilsim` subcommands."""
    bench = commands.add_parser(
        "bench",
        help="benchmark the solver on this device: table, JSON and figure",
        description="Times the explicit (compensated and not) and imex steps of 1 and 4 "
        "coupled fields on 2D and 3D grids in float32 and float64, measures the copy "
        "bandwidth in the same run and predicts the largest 3D grid of 6 fields that fits "
        "in memory. Prints a table and writes JSON and a figure (docs/benchmarking.md).",
    )
    bench.add_argument("--quick", action="store_true", help="a small matrix (under a minute)")
    bench.add_argument(
        "-o", "--output", help="JSON file (default: ilsim-bench-<device>.json in this folder)"
    )
    bench.add_argument("--figure", help="figure file (default: the JSON's name with .png)")
    bench.add_argument(
        "--compare", metavar="OLD.json", help="print new/old seconds per step against a result"
    )
    bench.add_argument(
        "--largest",
        action="store_true",
        help="run one step at each predicted largest grid (takes most of the device's memory)",
    )
    bench.add_argument(
        "--kernels",
        choices=("auto", "xla", "pallas"),
        default="auto",
        help="the explicit steps' kernels, as ilsim run --kernels (auto: a run's default)",
    )
    bench.add_argument("--overwrite", action="store_true", help="replace existing outputs")
    # a tinier matrix, for tests
    bench.add_argument("--grids", nargs="+", help=argparse.SUPPRESS)
    bench.add_argument("--fields", nargs="+", type=int, help=argparse.SUPPRESS)
    bench.set_defaults(handler=_bench)


def _bench(args) -> int:
    import jax

    from engine.runs import bench

    output = Path(args.output or f"ilsim-bench-{bench.device_name()}.json")
    figure = Path(args.figure) if args.figure else output.with_suffix(".png")
    bench.check_outputs((output, figure), args.overwrite)
    try:
        old = bench.load_result(args.compare) if args.compare else None
    except ValueError as error:
        raise ValueError(f"--compare {error}; give the JSON an earlier ilsim bench wrote") from None
    grids = [bench.parse_grid(text) for text in args.grids] if args.grids else None
    if args.fields and min(args.fields) < 1:
        raise ValueError(f"--fields {min(args.fields)}: give a number of fields, at least 1")
    platform = jax.devices()[0].platform
    matrix = bench.standard_matrix(platform, args.quick, grids, args.fields)
    echo = functools.partial(print, flush=True)
    save = functools.partial(bench.write_result, path=output)
    try:
        result = bench.run_benchmark(
            matrix, confirm_largest=args.largest, echo=echo, kernels=args.kernels, save=save
        )
    except KeyboardInterrupt:
        kept = f"{output} holds the cases measured" if output.exists() else "nothing measured"
        print(f"ilsim: bench interrupted: {kept}", file=sys.stderr)
        return 130
    bench.save_figure(result, figure)
    print(f"wrote {output} and {figure}")
    if old is not None:
        print(f"\ncompared with {args.compare}:")
        for line in bench.comparison_lines(result, old):
            print(line)
    return 0
