"""Wall time to simulate the 3D seed scenarios to their end with each stepper, and the error of
each against a converged reference run: the choice of stepper as a measured trade-off.

    python benchmarks/bench_time_to_solution.py [--quick] [--size 128] [--end "24 h"]
        [--configs infection_resolution_3d il2_therapy_3d autoimmune_3d]
        [--steppers explicit imex quasi_steady]

Each run advances in the config's output intervals (dt = "auto" re-evaluated at each, as
`ilsim run` does) without writing files; the runs of a scenario advance frame by frame side by
side, each frame's advance timed on its own. `--size N` coarsens the 128^3 grid to N^3 over the
same tissue (the spacing scaled by 128 / N), for machines that cannot afford 128^3. The
reference is imex in float64 at an accuracy target of 1e-6: at 16^3 over 24 h 4.5e-7, 8.7e-7
and 2.0e-6 from ssprk3 at a sixteenth of its step (`bench_tolerance.py`), far below imex's
errors at its shipped 1e-3 and below explicit's. Results recorded before the tolerance map
(`steppers.per_step_tolerance`; `time_to_solution-cpu-cpu-32.json`) used a reference of the
same name that was about 1e-5 off (`autoimmune`: 1.4e-5), at the level of explicit's errors,
which there read as bounds. An explicit reference would take steps that shrink with the
square of the spacing: affordable at 16^3, not at 128^3. The error of a run is the
largest over fields of max_t ||u(t) - u_ref(t)||_2 / max_t ||u_ref(t)||_2 over the output
frames: the deviation anywhere along the trajectory, relative to the field's largest size, so
that a field that vanishes by the end (IL-2 hours after the last dose, at 1e-25 nM) does not
turn rounding into a large relative error; the end state's relative error is also recorded
(`end_error`). Wall times include compilation, which is also given alone. Writes
benchmarks/results/time_to_solution-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import time
from dataclasses import dataclass
from pathlib import Path

import jax
import numpy as np
from common import RESULTS, device_name

import engine
from engine.runs.driver import output_times

CONFIGS = Path(__file__).parent.parent / "configs"
REFERENCE = dict(stepper="imex", dtype="float64", tolerance=1e-6)
SEED_SCENARIOS = ["infection_resolution_3d", "il2_therapy_3d", "autoimmune_3d"]
"""The 3D seed scenarios the accuracy benchmarks run by default."""


def scenario(name: str, size: int, end: str | None) -> engine.Config:
    """A seed scenario, coarsened to size^3 over the same volume, ending at `end`."""
    base = engine.load_config(CONFIGS / f"{name}.toml")
    overrides = {}
    if size != base.grid.shape[0]:
        factor = base.grid.shape[0] / size
        overrides["grid.shape"] = [size] * base.grid.ndim
        overrides["grid.spacing"] = [f"{s * factor} um" for s in base.grid.spacing]
    if end is not None:
        overrides["time.end"] = end
    return engine.load_config(CONFIGS / f"{name}.toml", overrides)


@dataclass
class Run:
    """A simulation advanced frame by frame, with its wall time so far (s): set-up,
    compilation and stepping, as a user waits for them; the compilation of the stepping loop
    alone (compiled first, on its own, then reused, so counted once)."""

    sim: engine.Simulation
    state: engine.State
    wall_s: float
    compile_s: float

    @classmethod
    def start(cls, cfg: engine.Config | engine.Model, **options) -> Run:
        start = time.perf_counter()
        sim = engine.Simulation(cfg, **options)
        state = sim.initial_state()
        setup = time.perf_counter() - start
        compile_s = sim.compile_stats(state)["compile_s"]
        return cls(sim, state, setup + compile_s, compile_s)

    def advance(self, t: float) -> None:
        start = time.perf_counter()
        self.state = self.sim.advance(self.state, t, donate=True)
        jax.block_until_ready(self.state.fields)
        self.wall_s += time.perf_counter() - start

    def fields(self) -> dict[str, np.ndarray]:
        return {k: np.asarray(v, np.float64) for k, v in self.state.fields.items()}

    def timing(self) -> dict:
        return dict(wall_s=self.wall_s, compile_s=self.compile_s, steps=self.state.step)


class Deviation:
    """Per field, the largest ||u - u_ref||_2 over the frames and the largest ||u_ref||_2;
    `relative` is their ratio, `end` the last frame's relative difference."""

    def __init__(self):
        self.largest, self.scale, self.end = {}, {}, {}

    def add(self, fields: dict, reference: dict) -> None:
        for name, ref in reference.items():
            difference, size = np.linalg.norm(fields[name] - ref), np.linalg.norm(ref)
            self.largest[name] = max(self.largest.get(name, 0.0), float(difference))
            self.scale[name] = max(self.scale.get(name, 0.0), float(size))
            self.end[name] = float(difference / max(size, 1e-300))

    def relative(self) -> dict[str, float]:
        return {n: self.largest[n] / max(self.scale[n], 1e-300) for n in self.largest}


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="+", default=SEED_SCENARIOS)
    parser.add_argument("--steppers", nargs="+", default=["explicit", "imex", "quasi_steady"])
    parser.add_argument("--size", type=int, default=128, help="voxels per axis (128: as seeded)")
    parser.add_argument("--end", default=None, help='simulated time, e.g. "24 h" (default: config)')
    parser.add_argument("--quick", action="store_true", help="16^3 for 2 simulated hours")
    parser.add_argument(
        "--no-reference", action="store_true", help="wall times only, no reference run or errors"
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default: results/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.end = 16, "2 h"
    name = device_name()
    print(f"device: {name}; jax {jax.__version__}; {args.size}^3, end {args.end or 'as config'}")
    print(
        f"{'scenario':>24} {'stepper':>13} {'wall s':>8} {'compile':>8} {'steps':>8} {'error':>9}"
    )
    output = args.output or RESULTS / f"time_to_solution-{name}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    reference_options = None if args.no_reference else REFERENCE
    result = dict(
        device=name,
        jax=jax.__version__,
        size=args.size,
        end=args.end or "as config",
        reference=reference_options,
        error_measure="trajectory",
        rows=[],
    )

    def report(row: dict) -> None:
        """Print a row and save every row so far: a run stopped early keeps them."""
        result["rows"].append(row)
        output.write_text(json.dumps(result, indent=1, default=float))
        error = "-" if row["error"] is None else f"{row['error']:.2e}"
        print(
            f"{row['scenario']:>24} {row['stepper']:>13} {row['wall_s']:>8.1f} "
            f"{row['compile_s']:>7.1f}s {row['steps']:>8} {error:>9}",
            flush=True,
        )

    for config in args.configs:
        cfg = scenario(config, args.size, args.end)
        runs = {}
        if reference_options is not None:
            runs["reference"] = Run.start(cfg, **reference_options)
        runs.update({s: Run.start(cfg, stepper=s, dtype="float32") for s in args.steppers})
        deviations = {s: Deviation() for s in args.steppers} if "reference" in runs else {}
        for t in output_times(cfg.time.end, cfg.time.output_every)[1:]:
            for run in runs.values():
                run.advance(t)
            if deviations:
                reference = runs["reference"].fields()
                for stepper, deviation in deviations.items():
                    deviation.add(runs[stepper].fields(), reference)
        for stepper, run in runs.items():
            row = dict(scenario=config, stepper=stepper, error=None, **run.timing())
            deviation = deviations.get(stepper)
            if deviation is not None:
                errors, end = deviation.relative(), deviation.end
                row.update(error=max(errors.values()), errors=errors)
                row.update(end_error=max(end.values()), end_errors=end)
            report(row)
    print(f"wrote {output}")
    return output


if __name__ == "__main__":
    main()
