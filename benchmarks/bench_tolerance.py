"""Error over the run against `time.tolerance`: imex (dt = "auto") in float64 on the 3D seed
scenarios over a range of tolerances, each run's error, its ratio to the tolerance, steps and
wall time. A ratio that holds across tolerances (tolerance proportionality) means a user who
asks for ten times less error gets it, at a cost that follows.

    python benchmarks/bench_tolerance.py [--size 16] [--end "24 h"]
        [--tolerances 1e-2 1e-3 1e-4 1e-5 1e-6] [--configs ...] [--adaptive]

float64, so that rounding sets no floor. The reference is explicit ssprk3 in float64 at an
sixteenth of its default step (safety 0.05625), independent of the error control it measures; a
second run at twice its step gives `reference_check`, their difference, which is 7x the
reference's own error where ssprk3 has its third order. The error of a run is
`bench_work_precision.measure`'s: the largest over fields of max_t ||u - u_ref||_2 / max_t
||u_ref||_2 over the output frames. `--size N` coarsens each scenario to N^3 over the same
tissue. Writes benchmarks/results/tolerance-<device>.json (`-adaptive.json` with --adaptive).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
from bench_time_to_solution import SEED_SCENARIOS, Run, scenario
from bench_work_precision import measure
from common import RESULTS, device_name

from engine.runs.driver import output_times

REFERENCE = dict(stepper="explicit", scheme="ssprk3", dtype="float64", safety=0.05625)
TOLERANCES = (1e-2, 1e-3, 1e-4, 1e-5, 1e-6)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=SEED_SCENARIOS)
    parser.add_argument("--size", type=int, default=16, help="voxels per axis")
    parser.add_argument("--end", default="24 h", help='simulated time, e.g. "24 h"')
    parser.add_argument("--tolerances", nargs="+", type=float, default=list(TOLERANCES))
    parser.add_argument("--adaptive", action="store_true", help="adaptive steps, not dt = auto")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default: results/)")
    args = parser.parse_args(argv)
    name = device_name()
    suffix = "-adaptive" if args.adaptive else ""
    output = args.output or RESULTS / f"tolerance-{name}{suffix}.json"
    result = dict(
        device=name,
        jax=jax.__version__,
        size=args.size,
        end=args.end,
        adaptive=args.adaptive,
        reference=REFERENCE,
        rows=[],
        reference_check={},
    )
    print(f"device: {name}; jax {jax.__version__}; {args.size}^3, end {args.end}, float64")
    print(f"{'scenario':>24} {'tolerance':>9} {'error':>9} {'/ tol':>6} {'steps':>7} {'wall s':>7}")
    for config in args.configs:
        cfg = scenario(config, args.size, args.end)
        reference = Run.start(cfg, **REFERENCE)
        options = dict(stepper="imex", dtype="float64", adaptive=args.adaptive)
        runs = {("imex", t): Run.start(cfg, tolerance=t, **options) for t in args.tolerances}
        check = {**REFERENCE, "safety": 2 * REFERENCE["safety"]}
        runs["check", check["safety"]] = Run.start(cfg, **check)
        times = output_times(cfg.time.end, cfg.time.output_every)[1:]
        for measured in measure(config, reference, runs, times):
            if measured["scheme"] == "check":
                result["reference_check"][config] = measured["error"]
                continue
            tolerance, error = measured["setting"], measured["error"]
            timing = {k: measured[k] for k in ("wall_s", "compile_s", "steps")}
            row = dict(scenario=config, tolerance=tolerance, error=error, **timing)
            row["ratio"] = error / tolerance
            result["rows"].append(row)
            print(
                f"{config:>24} {tolerance:>9.0e} {error:>9.2e} {row['ratio']:>6.2f} "
                f"{row['steps']:>7} {row['wall_s']:>7.1f}",
                flush=True,
            )
        print(f"{config:>24} reference check {result['reference_check'][config]:.1e}")
        output.parent.mkdir(parents=True, exist_ok=True)
        output.write_text(json.dumps(result, indent=1, default=float))
    print(f"wrote {output}")
    return output


if __name__ == "__main__":
    main()
