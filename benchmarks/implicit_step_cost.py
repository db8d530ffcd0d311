"""Cost of one implicit step in units of one explicit step, on one field in 3D.

    python benchmarks/implicit_step_cost.py [--sizes 128 256] [--repeats 3]

Cases: explicit ssprk3 (the unit), imex with the exact spectral linear step (constant D:
cosines on neumann faces, a sine/cosine basis with a dirichlet face), imex with TR-BDF2 +
preconditioned conjugate gradients (a robin face), each imex run at 50x the
explicit limit. Prints medians after warm-up and writes a JSON under
benchmarks/results/ named after the device.
"""

from __future__ import annotations

import argparse
import json

import jax
from common import RESULTS, device_name, median_seconds

import engine


def model(size: int, boundary: engine.Boundary) -> engine.Model:
    grid = engine.Grid((size,) * 3, spacing=10.0)
    centre = (size * 5.0,) * 3
    il2 = engine.Species("IL2", diffusion=100.0, decay=1e-3, boundary=boundary)
    return engine.Model(
        grid, species=(il2,), sources=(engine.point_source(grid, "IL2", centre, 1e3),)
    )


def time_per_step(sim: engine.Simulation, dt: float, steps: int, repeats: int) -> float:
    """Median seconds per step over `repeats` runs of `steps` steps, after a warm-up run."""
    holder = {"fields": sim.initial_state().fields}

    def run():  # the fields are donated: each run continues from the last
        holder["fields"] = jax.block_until_ready(
            sim.advance_steps(holder["fields"], 0.0, dt, steps)
        )

    return median_seconds(run, repeats) / steps


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    name = device_name()
    rows = []
    neumann = engine.Boundary.uniform(3)
    dirichlet = engine.Boundary.from_faces(3, x_min=engine.Dirichlet(0.0))
    robin = engine.Boundary.from_faces(3, x_min=engine.Robin(0.5))
    for size in args.sizes:
        explicit = engine.Simulation(model(size, neumann))
        dt_explicit = explicit.time_step(explicit.initial_state())
        unit = time_per_step(explicit, dt_explicit, 10, args.repeats)
        rows.append(dict(size=size, case="explicit ssprk3", solve="-", seconds=unit, ratio=1.0))
        for label, boundary, solve in [
            ("imex, neumann", neumann, "spectral (DCT)"),
            ("imex, dirichlet face", dirichlet, "spectral (mixed)"),
            ("imex, robin face", robin, "TR-BDF2 + CG"),
        ]:
            sim = engine.Simulation(model(size, boundary), stepper="imex")
            seconds = time_per_step(sim, 50 * dt_explicit, 2, args.repeats)
            rows.append(
                dict(size=size, case=label, solve=solve, seconds=seconds, ratio=seconds / unit)
            )
    print(f"device: {name}; imex at 50x the explicit limit; float32, one field")
    header = ("size", "case", "solve", "ms/step", "explicit steps", "per sim. s")
    print("{:>6} {:<22} {:<16} {:>10} {:>15} {:>11}".format(*header))
    for r in rows:
        per_time = r["ratio"] / (50 if r["case"].startswith("imex") else 1)
        print(
            f"{r['size']:>5}^3 {r['case']:<22} {r['solve']:<16} {1e3 * r['seconds']:>10.1f} "
            f"{r['ratio']:>15.1f} {per_time:>11.2f}"
        )
    out = RESULTS / f"implicit_step_cost-{name}.json"
    out.write_text(json.dumps(dict(device=name, jax=jax.__version__, rows=rows), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
