"""Strong and weak scaling of sharded runs over devices, and the share of communication.

    python benchmarks/bench_scaling.py [--devices 1 2 4 8] [--size 128] [--stepper explicit]
        [--cpu-devices]

Strong scaling: one size^3 grid split over d devices. Weak scaling: (size * d) x size x size,
a block of size^3 per device. For each, the wall time per step (median of repeats after
warm-up) of the sharded run, and of the same per-device work with the halo exchange disabled:
each device advances its own block as an independent domain (`shard_map`, no collectives).
The communication share is 1 - (without exchange) / (sharded).

With --cpu-devices (the default where no accelerator is present) every device count runs in a
child process that splits the CPU into that many devices, as `ilsim run --devices N` does; the
devices then share the host's cores, so strong scaling measures the overhead of the
decomposition rather than a speed-up. Writes benchmarks/results/scaling-<device>.json.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from pathlib import Path

from common import RESULTS, device_name, median_seconds

IMEX_SPAN = 60.0
"""Seconds an imex step may cover (`ilsim bench`'s imex step): its accuracy target alone
sets no bound on a model that only diffuses and decays, which it solves exactly."""


def measure(n_devices: int, shape: tuple[int, ...], stepper: str, steps: int, repeats: int):
    """(seconds per step sharded, seconds per step without exchange) on n_devices."""
    import jax
    import numpy as np
    from jax.sharding import PartitionSpec

    import engine
    from engine.numerics import parallel
    from engine.stepping.steppers import advance_fields

    def model(grid_shape):
        grid = engine.Grid(grid_shape, spacing=10.0)
        rng = np.random.default_rng(0)
        il2 = engine.Species("IL2", diffusion=100.0, decay=1e-3, initial=rng.random(grid_shape))
        return engine.Model(grid, species=(il2,))

    def timed(function, fields):
        holder = {"fields": fields}

        def run():  # the fields are donated: each call continues from the last
            holder["fields"] = jax.block_until_ready(function(holder["fields"]))

        return median_seconds(run, repeats) / steps

    options = dict(stepper=stepper, scheme="euler", compensated=False)
    mesh = (n_devices,) if n_devices > 1 else None
    sim = engine.Simulation(model(shape), mesh=mesh, **options)
    dt = sim.time_step(sim.initial_state(), span=IMEX_SPAN)
    sharded = timed(lambda f: sim.advance_steps(f, 0.0, dt, steps), sim.initial_state().fields)
    if sim.mesh is None:
        return sharded, sharded
    block = (shape[0] // n_devices, *shape[1:])
    local = engine.Simulation(model(block), **options)
    spec = PartitionSpec(*sim.mesh.axis_names)

    def independent(fields):
        return advance_fields(local.stepper, local.model, fields, 0.0, dt, steps, False)

    isolated = jax.jit(
        jax.shard_map(independent, mesh=sim.mesh, in_specs=spec, out_specs=spec),
        donate_argnums=0,
    )
    blocks = parallel.place(sim.initial_state().fields, sim.mesh, shape)
    return sharded, timed(isolated, blocks)


def child(args) -> None:
    """Measure in this process (its device count is already set) and print JSON rows. CPU
    devices compile without FMAs for every count, one included (`use_cpu_devices`), so the
    counts compare like for like."""
    from engine.numerics import parallel

    if args.cpu_devices:
        parallel.use_cpu_devices(args.child)
    rows = []
    for kind in ("strong", "weak"):
        size = args.size
        shape = (size, size, size) if kind == "strong" else (size * args.child, size, size)
        sharded, isolated = measure(args.child, shape, args.stepper, args.steps, args.repeats)
        rows.append(
            dict(
                scaling=kind,
                devices=args.child,
                shape=list(shape),
                seconds=sharded,
                seconds_without_exchange=isolated,
                communication_share=max(0.0, 1 - isolated / sharded),
            )
        )
    print(json.dumps(dict(device=device_name(), rows=rows)))


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4, 8])
    parser.add_argument("--size", type=int, default=128, help="voxels per axis per block")
    parser.add_argument("--stepper", default="explicit", choices=["explicit", "imex"])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu-devices", action="store_true", help="split the CPU into devices")
    parser.add_argument("--output", type=Path, default=None)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child is not None:
        child(args)
        return Path()
    rows, device = [], None
    for n in args.devices:
        command = [sys.executable, __file__, "--child", str(n), "--size", str(args.size)]
        command += ["--stepper", args.stepper, "--steps", str(args.steps)]
        command += ["--repeats", str(args.repeats)] + (
            ["--cpu-devices"] if args.cpu_devices else []
        )
        done = subprocess.run(command, capture_output=True, text=True, check=True)
        result = json.loads(done.stdout.strip().splitlines()[-1])
        device = result["device"]
        rows += result["rows"]
    scheme = " (euler)" if args.stepper == "explicit" else ""
    print(f"device: {device}; {args.stepper}{scheme}, float32, {args.size}^3 per block (weak)")
    print(
        f"{'scaling':>7} {'devices':>7} {'grid':>14} {'ms/step':>9} {'no exchange':>12} {'comm':>6}"
    )
    for r in rows:
        grid = "x".join(map(str, r["shape"]))
        print(
            f"{r['scaling']:>7} {r['devices']:>7} {grid:>14} {1e3 * r['seconds']:>9.2f} "
            f"{1e3 * r['seconds_without_exchange']:>12.2f} {r['communication_share']:>6.1%}"
        )
    suffix = "-cpu_devices" if args.cpu_devices else ""
    output = args.output or RESULTS / f"scaling-{device}{suffix}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(dict(device=device, stepper=args.stepper, rows=rows), indent=1))
    print(f"wrote {output}")
    return output


if __name__ == "__main__":
    main()
