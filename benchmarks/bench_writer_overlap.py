"""Does writing frames stall the solver? Wall time of a run with HDF5 output against the same
chunks advanced with no output at all, in one process.

    python benchmarks/bench_writer_overlap.py [--size 96] [--frames 20] [--repeats 3]

The run driver dispatches the next chunk before it compresses and writes the previous frame,
so with enough work per chunk the writer hides behind the device and the overhead approaches
the device-to-host copy alone.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

import jax

import engine
from engine.runs.driver import output_times


def config(size: int, frames: int) -> engine.Config:
    return engine.load_config(
        {
            "grid": {"shape": [size] * 3, "spacing": "10 um"},
            "time": {"end": frames * 60.0, "output_every": 60.0, "stepper": "explicit"},
            "regions": {"core": {"sphere": {"center": [size * 5.0] * 3, "radius": "50 um"}}},
            "species": {"IL2": {"diffusion": "100 um^2/s", "decay": "1e-3 1/s"}},
            "populations": {"T": {"initial": {"region": "core", "value": 1e-3}}},
            "terms": [{"type": "secretion", "species": "IL2", "by": "T", "rate": 10.0}],
            "output": {"compression": "gzip"},
        }
    )


def advance_only(sim: engine.Simulation, times) -> float:
    start = time.perf_counter()
    state = sim.initial_state()
    for t in times[1:]:
        state = sim.advance(state, t, donate=True)  # as the run does
    jax.block_until_ready(state.fields)
    return time.perf_counter() - start


def with_output(sim: engine.Simulation, folder: Path) -> float:
    start = time.perf_counter()
    sim.run(folder / "out.h5", overwrite=True, quiet=True)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=96)
    parser.add_argument("--frames", type=int, default=20)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    cfg = config(args.size, args.frames)
    sim = engine.Simulation(cfg)
    times = output_times(cfg.time.end, cfg.time.output_every)
    advance_only(sim, times[:2])  # compile
    with tempfile.TemporaryDirectory() as folder:
        bare = [advance_only(sim, times) for _ in range(args.repeats)]
        written = [with_output(sim, Path(folder)) for _ in range(args.repeats)]
        size_mb = (Path(folder) / "out.h5").stat().st_size / 1e6
    bare_s, written_s = statistics.median(bare), statistics.median(written)
    print(f"device: {jax.devices()[0].device_kind}; {args.size}^3, 2 fields, {len(times)} frames")
    print(f"advance only: {bare_s:.2f} s   with HDF5 output: {written_s:.2f} s ({size_mb:.0f} MB)")
    print(f"overhead of writing: {written_s / bare_s - 1:+.1%} (median of {args.repeats})")


if __name__ == "__main__":
    main()
