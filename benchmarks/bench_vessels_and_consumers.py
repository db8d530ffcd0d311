"""Time to a trustworthy answer on a problem with voxel-scale sources and sinks, against
BioFVM, the solver inside PhysiCell, as an external anchor.

The problem (a user's config, run whole-process through `ilsim run`, as a user would): 3D,
N^3 voxels of 10 um, zero-flux walls, one cytokine (D = 10 um^2/s, decay 1.36e-4 1/s),
consuming cells in a random 20% of the voxels (a static population with a first-order
`uptake` term of 1e-3 1/s), supply of 0.05 nM/s in a random 2% of the voxels (a `region`
source, the "vessels") during pulses from 1 h to 3 h and from 9 h to 11 h; 12 hours.
The error of a run is its largest voxel deviation from a converged float64 reference at
3, 6 and 12 h, relative to the reference's maximum at that time.

    python benchmarks/bench_vessels_and_consumers.py [--size 64] [--runs imex-1e-3 ...]

Runs: imex at `time.tolerance` 1e-2, 1e-3 (the default), 1e-4, float32; explicit (ssprk3,
dt = "auto"), float32. The reference is imex in float64 at tolerance 1e-6
(--reference-tolerance; its error is about its difference from a tenth of that,
--check-reference). Results recorded before the tolerance map
(`steppers.per_step_tolerance`) used 1e-7, whose steps then made 3x the local error of 1e-6's
now. BioFVM 1.0.4's figures
on the same problem at 64^3 on a 2-core CPU (-O3, OpenMP on both cores), whole process:
dt = 1 min: 92% in 9.5 s; 0.1 min: 8.4% in 92 s; 0.01 min (its default): 0.78% in 850 s
(at 6 h alone: 15%, 1.4%, 0.13%). Writes benchmarks/results/vessels_and_consumers-<device>-
<N>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
from common import RESULTS, device_name

import engine
from engine.numerics.constants import MOLECULES_PER_UM3_PER_NM

TIMES_H = (3.0, 6.0, 12.0)
RUNS = {
    "imex-1e-2": {"time.tolerance": 1e-2},
    "imex-1e-3": {},  # the defaults
    "imex-1e-4": {"time.tolerance": 1e-4},
    "explicit": {"time.stepper": "explicit"},
}
REFERENCE_TOLERANCE = 1e-6


def reference_options(tolerance: float) -> dict:
    """The reference run's overrides: imex in float64 at `tolerance`."""
    return {"time.dtype": "float64", "time.tolerance": tolerance}


BIOFVM_64 = [  # dt (min), error over 3, 6, 12 h, error at 6 h alone, whole-process seconds
    dict(dt_min=1.0, error=0.92, error_6h=0.15, seconds=9.5),
    dict(dt_min=0.1, error=0.084, error_6h=0.014, seconds=92.0),
    dict(dt_min=0.01, error=0.0078, error_6h=0.0013, seconds=850.0),
]


def write_problem(folder: Path, size: int, seed: int = 0) -> Path:
    """The masks (.npy) and the config of the problem at size^3 in `folder`: its path."""
    rng = np.random.default_rng(seed)
    shape = (size,) * 3
    np.save(folder / "consumers.npy", rng.random(shape) < 0.2)
    np.save(folder / "vessels.npy", rng.random(shape) < 0.02)
    # uptake rate k_on R n / (molecules per um^3 per nM) = 1e-3 1/s in the consumers' voxels
    k_on, receptors = 0.031, 1e3  # 1/(nM s) (3.1e7 1/(M s)), receptors per cell
    density = 1e-3 * MOLECULES_PER_UM3_PER_NM / (k_on * receptors)  # cells/um^3
    config = f"""
[grid]
shape = [{size}, {size}, {size}]
spacing = "10 um"

[time]
end = "12 h"
output_every = "3 h"
dtype = "float32"

[regions.consumers]
file = "consumers.npy"

[regions.vessels]
file = "vessels.npy"

[species.IL]
diffusion = "10 um^2/s"
decay = "1.36e-4 1/s"

[populations.cells]
initial = {{ region = "consumers", value = "{density} 1/um^3" }}

[[terms]]
type = "uptake"
species = "IL"
by = "cells"
k_on = "{k_on} 1/(nM s)"
receptors = {receptors}

[[sources]]
type = "region"
species = "IL"
region = "vessels"
rate = "0.05 nM/s"
schedule = {{ start = "1 h", duration = "2 h", every = "8 h", count = 2 }}
"""
    path = folder / "problem.toml"
    path.write_text(config)
    return path


def run(config: Path, output: Path, overrides: dict) -> float:
    """`ilsim run` of the config with overrides, whole process: its wall time (s)."""
    ilsim = "import sys; from engine.cli.main import main; sys.exit(main())"
    command = [sys.executable, "-c", ilsim, "run", str(config), "-o", str(output)]
    command += ["--quiet", "--overwrite"]
    for key, value in overrides.items():
        command += ["--set", f"{key}={json.dumps(value)}"]
    start = time.perf_counter()
    subprocess.run(command, check=True, cwd=config.parent)
    return time.perf_counter() - start


def frames(output: Path) -> dict[float, np.ndarray]:
    """The cytokine at each of `TIMES_H` (h), float64."""
    with engine.open_output(output) as out:
        times = out.time / 3600
        return {
            t: np.asarray(out.frame("IL", int(np.argmin(np.abs(times - t)))), np.float64)
            for t in TIMES_H
        }


def errors(result: dict, reference: dict) -> dict[float, float]:
    """Largest voxel deviation relative to the reference's maximum, at each time."""
    return {
        t: float(np.max(np.abs(result[t] - reference[t])) / np.max(reference[t])) for t in TIMES_H
    }


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--runs", nargs="+", default=list(RUNS), choices=list(RUNS))
    parser.add_argument("--repeats", type=int, default=1, help="runs of each; the median")
    parser.add_argument("--check-reference", action="store_true")
    parser.add_argument("--reference-tolerance", type=float, default=REFERENCE_TOLERANCE)
    parser.add_argument(
        "--reference-file",
        type=Path,
        help="where the reference output is kept: reused if it is there (same size and seed)",
    )
    parser.add_argument("--output", type=Path, help="JSON path (default: under results/)")
    args = parser.parse_args(argv)
    with tempfile.TemporaryDirectory() as scratch:
        folder = Path(scratch)
        config = write_problem(folder, args.size)
        reference_run = reference_options(args.reference_tolerance)
        kept = (args.reference_file or folder / "reference.h5").resolve()
        reference_seconds = None if kept.exists() else run(config, kept, reference_run)
        reference = frames(kept)
        result = dict(
            device=device_name(),
            size=args.size,
            reference=dict(options=reference_run, seconds=reference_seconds),
            biofvm_64=BIOFVM_64,
            runs=[],
        )
        if args.check_reference:
            check = reference_options(args.reference_tolerance / 10)
            run(config, folder / "check.h5", check)
            result["reference"]["error"] = errors(reference, frames(folder / "check.h5"))
            print(f"reference error against {check}: {result['reference']['error']}")
        for name in args.runs:
            seconds = [run(config, folder / f"{name}.h5", RUNS[name]) for _ in range(args.repeats)]
            error = errors(frames(folder / f"{name}.h5"), reference)
            row = dict(
                run=name,
                options=RUNS[name],
                seconds=float(np.median(seconds)),
                error=max(error.values()),
                error_by_hour={f"{t:g}": e for t, e in error.items()},
            )
            result["runs"].append(row)
            print(
                f"{args.size}^3 {name:>10}: {100 * row['error']:.3f}% over 3, 6, 12 h "
                f"(6 h: {100 * error[6.0]:.3f}%) in {row['seconds']:.1f} s"
            )
    path = args.output or RESULTS / f"vessels_and_consumers-{device_name()}-{args.size}.json"
    path.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {path}")
    return path


if __name__ == "__main__":
    main()
