"""Throughput of one explicit step against a plain NumPy and a parallel Numba stencil of the
same step, with the machine's copy bandwidth measured in the same run (a first cut of the
solver benchmark: single field and coupled fields, 3D, float32 and float64).

    python benchmarks/bench_solver.py [--sizes 64 128] [--fields 1 4] [--repeats 5]

Each case times the engine's euler step (the same arithmetic as the references: 7-point
diffusion with zero-flux walls and an implicit linear decay), reports voxel-updates per second
per field, the effective bandwidth at the minimal 2 x itemsize bytes per voxel-step, its
fraction of the copy bandwidth, and the ratios to NumPy and Numba. Writes a JSON under
benchmarks/results/ named after the device. Numba is optional (`pip install numba`).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import numpy as np

import engine


def median_time(function, repeats: int) -> float:
    function()  # warm-up (and compile)
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def copy_bandwidth(n_bytes: int, repeats: int) -> float:
    """Bytes/s of a large array copy (read + write), NumPy."""
    source = np.ones(n_bytes // 8)
    target = np.empty_like(source)
    seconds = median_time(lambda: np.copyto(target, source), repeats)
    return 2 * source.nbytes / seconds


def numpy_step(c, out, D, k, dt, h):
    """One euler step of dc/dt = D lap c - k c (zero-flux walls, decay implicit)."""
    p = np.pad(c, 1, mode="edge")
    lap = (
        p[2:, 1:-1, 1:-1]
        + p[:-2, 1:-1, 1:-1]
        + p[1:-1, 2:, 1:-1]
        + p[1:-1, :-2, 1:-1]
        + p[1:-1, 1:-1, 2:]
        + p[1:-1, 1:-1, :-2]
        - 6 * c
    )
    np.divide(c + dt * D / h**2 * lap, 1 + dt * k, out=out)


def numba_step():
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(parallel=True, fastmath=False, cache=False)
    def step(c, out, a, decay_factor):
        nz, ny, nx = c.shape
        for i in numba.prange(nz):
            for j in range(ny):
                for m in range(nx):
                    centre = c[i, j, m]
                    total = -6 * centre
                    total += c[i - 1, j, m] if i > 0 else centre
                    total += c[i + 1, j, m] if i < nz - 1 else centre
                    total += c[i, j - 1, m] if j > 0 else centre
                    total += c[i, j + 1, m] if j < ny - 1 else centre
                    total += c[i, j, m - 1] if m > 0 else centre
                    total += c[i, j, m + 1] if m < nx - 1 else centre
                    out[i, j, m] = (centre + a * total) * decay_factor

    return step


def engine_time(size: int, fields: int, dtype: str, steps: int, repeats: int) -> float:
    grid = engine.Grid((size,) * 3, spacing=10.0)
    rng = np.random.default_rng(0)
    species = tuple(
        engine.Species(f"c{i}", diffusion=100.0, decay=1e-3, initial=rng.random(grid.shape))
        for i in range(fields)
    )
    sim = engine.Simulation(engine.Model(grid, species=species), scheme="euler", dtype=dtype)
    state = sim.initial_state()
    dt = sim.time_step(state)
    holder = {"fields": state.fields}

    def run():
        holder["fields"] = jax.block_until_ready(
            sim.advance_steps(holder["fields"], 0.0, dt, steps)
        )

    return median_time(run, repeats) / steps


def reference_time(step, size: int, fields: int, dtype: str, repeats: int) -> float:
    rng = np.random.default_rng(0)
    cs = [rng.random((size,) * 3).astype(dtype) for _ in range(fields)]
    outs = [np.empty_like(c) for c in cs]
    return median_time(lambda: [step(c, o) for c, o in zip(cs, outs)], repeats)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[64, 128])
    parser.add_argument("--fields", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--dtypes", nargs="+", default=["float32", "float64"])
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=20)
    args = parser.parse_args()
    device = jax.devices()[0]
    name = f"{device.platform}-{device.device_kind}".replace(" ", "_")
    bandwidth = copy_bandwidth(256 * 2**20, args.repeats)
    numba_kernel = numba_step()
    D, k, h, dt = 100.0, 1e-3, 10.0, 0.15
    a, factor = dt * D / h**2, 1 / (1 + dt * k)
    rows = []
    for dtype in args.dtypes:
        for size in args.sizes:
            for fields in args.fields:
                voxels = size**3 * fields
                seconds = engine_time(size, fields, dtype, args.steps, args.repeats)
                row = dict(size=size, fields=fields, dtype=dtype, engine_s=seconds)
                row["numpy_s"] = reference_time(
                    lambda c, o: numpy_step(c, o, D, k, dt, h), size, fields, dtype, args.repeats
                )
                if numba_kernel is not None:
                    row["numba_s"] = reference_time(
                        lambda c, o: numba_kernel(c, o, a, factor),
                        size,
                        fields,
                        dtype,
                        args.repeats,
                    )
                itemsize = np.dtype(dtype).itemsize
                row["updates_per_s"] = voxels / seconds
                row["bandwidth_fraction"] = 2 * itemsize * voxels / seconds / bandwidth
                rows.append(row)
    print(f"device: {name}; copy bandwidth {bandwidth / 1e9:.1f} GB/s; euler step, 3D")
    header = ("dtype", "size", "fields", "Gupd/s", "of copy bw", "x NumPy", "x Numba")
    print("{:>8} {:>5} {:>6} {:>8} {:>10} {:>8} {:>8}".format(*header))
    for r in rows:
        numba_ratio = f"{r['numba_s'] / r['engine_s']:.2f}" if "numba_s" in r else "-"
        print(
            f"{r['dtype']:>8} {r['size']:>4}^3 {r['fields']:>6} {r['updates_per_s'] / 1e9:>8.3f} "
            f"{r['bandwidth_fraction']:>10.1%} {r['numpy_s'] / r['engine_s']:>8.2f} "
            f"{numba_ratio:>8}"
        )
    out = Path(__file__).parent / "results" / f"bench_solver-{name}.json"
    out.write_text(json.dumps(dict(device=name, copy_bandwidth=bandwidth, rows=rows), indent=1))
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
