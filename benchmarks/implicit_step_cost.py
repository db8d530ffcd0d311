"""Cost of one implicit step in units of one explicit step, on one field in 3D.

    python benchmarks/implicit_step_cost.py [--sizes 128 256] [--repeats 3] [--call-seconds 0.5]

Cases: explicit ssprk3 (the unit), imex with the exact spectral linear step (constant D:
cosines on neumann faces, a sine/cosine basis with a dirichlet face), imex with TR-BDF2 +
preconditioned conjugate gradients (a robin face), each imex run at 50x the
explicit limit. Prints medians after warm-up, each timed call advancing as many steps as take
about `--call-seconds` (at least 10 explicit or 2 imex steps; `common.simulation_seconds`),
and writes a JSON under benchmarks/results/ named after the device.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import jax
from common import RESULTS, device_name, simulation_seconds

import engine


def model(size: int, boundary: engine.Boundary) -> engine.Model:
    grid = engine.Grid((size,) * 3, spacing=10.0)
    centre = (size * 5.0,) * 3
    il2 = engine.Species("IL2", diffusion=100.0, decay=1e-3, boundary=boundary)
    return engine.Model(
        grid, species=(il2,), sources=(engine.point_source(grid, "IL2", centre, 1e3),)
    )


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[128, 256])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--call-seconds", type=float, default=0.5)
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default: results/)")
    args = parser.parse_args(argv)
    name = device_name()
    rows = []
    neumann = engine.Boundary.uniform(3)
    dirichlet = engine.Boundary.from_faces(3, x_min=engine.Dirichlet(0.0))
    robin = engine.Boundary.from_faces(3, x_min=engine.Robin(0.5))
    for size in args.sizes:
        explicit = engine.Simulation(model(size, neumann))
        start = explicit.initial_state()
        dt_explicit = explicit.time_step(start)
        timed = simulation_seconds(
            explicit, start.fields, dt_explicit, 10, args.call_seconds, args.repeats
        )
        unit = timed["seconds"]
        rows.append(dict(size=size, case="explicit ssprk3", solve="-", ratio=1.0, **timed))
        for label, boundary, solve in [
            ("imex, neumann", neumann, "spectral (DCT)"),
            ("imex, dirichlet face", dirichlet, "spectral (mixed)"),
            ("imex, robin face", robin, "TR-BDF2 + CG"),
        ]:
            sim = engine.Simulation(model(size, boundary), stepper="imex")
            timed = simulation_seconds(
                sim,
                sim.initial_state().fields,
                50 * dt_explicit,
                2,
                args.call_seconds,
                args.repeats,
            )
            ratio = timed["seconds"] / unit
            rows.append(dict(size=size, case=label, solve=solve, ratio=ratio, **timed))
    print(f"device: {name}; imex at 50x the explicit limit; float32, one field")
    header = ("size", "case", "solve", "ms/step", "explicit steps", "per sim. s")
    print("{:>6} {:<22} {:<16} {:>10} {:>15} {:>11}".format(*header))
    for r in rows:
        per_time = r["ratio"] / (50 if r["case"].startswith("imex") else 1)
        print(
            f"{r['size']:>5}^3 {r['case']:<22} {r['solve']:<16} {1e3 * r['seconds']:>10.1f} "
            f"{r['ratio']:>15.1f} {per_time:>11.2f}"
        )
    out = args.output or RESULTS / f"implicit_step_cost-{name}.json"
    out.write_text(json.dumps(dict(device=name, jax=jax.__version__, rows=rows), indent=1))
    print(f"wrote {out}")
    return out


if __name__ == "__main__":
    main()
