"""Solver throughput over a matrix of cases, with a plain NumPy and a parallel Numba stencil of
the same step and the machine's copy bandwidth measured in the same run.

    python benchmarks/bench_solver.py [--quick] [--grids 128^3 256^3 2048^2] [--fields 1 4 8]
        [--dtypes float32 float64]
        [--steppers euler euler-compensated ssprk3 ssprk3-compensated imex quasi_steady]

The benchmark model: F fields, each diffusing (D = 100 um^2/s, 10 um voxels, zero-flux walls)
and decaying (1e-3 /s), coupled in a chain: field i converts into field i + 1 at 1e-3 /s. The
references implement the engine's euler step of that model: NumPy with one array operation at
a time, Numba as one parallel pass over all fields (`pip install -e ".[bench]"`).

Per case: median seconds per step after warm-up (synchronised), each timed call advancing as
many steps as take about `--call-seconds` (as a run advances an output interval per call; at
least `--steps`), voxel-updates per second per field, effective bandwidth at the minimal
2 x itemsize bytes per field per voxel-step and its fraction of the copy bandwidth, compile
time, the compiled loop's peak memory, the host's page faults per timed call, and the ratios
to NumPy and Numba (euler only: the other steppers do different work per step; their cost is
also given in euler steps). Writes benchmarks/results/bench_solver-<device>.json and a plot of
throughput against grid size.

Steppers: euler and ssprk3 (explicit, float32 rounded to nearest, the arithmetic of the
references), euler-compensated and ssprk3-compensated (the float32 default: each step's sum
rounded stochastically, which conserves), imex and quasi_steady (one step each, at their own
dt).
"""

from __future__ import annotations

import argparse
import functools
import json
import math
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from common import RESULTS, device_name, median_seconds, timed_steps

import engine
from engine.runs.bench import (
    DECAY,
    RATE,
    SPACING,
    D,
    chain_model,
    copy_bandwidth,
    grid_label,
    measure_case,
    parse_grid,
    random_fields,
)
from engine.stepping.simulation import precision

STEPPERS = {
    "euler": dict(stepper="explicit", scheme="euler", compensated=False),
    "euler-compensated": dict(stepper="explicit", scheme="euler", compensated=True),
    "ssprk3": dict(stepper="explicit", scheme="ssprk3", compensated=False),
    "ssprk3-compensated": dict(stepper="explicit", scheme="ssprk3", compensated=True),
    "imex": dict(stepper="imex"),
    "quasi_steady": dict(stepper="quasi_steady"),
}
EXPLICIT = ("euler", "euler-compensated", "ssprk3", "ssprk3-compensated")
COPY_METHOD = "in_place"
COMPENSATION = "stochastic_rounding"
"""How float32 compensated steps conserve (results before it have no `compensation`: Kahan
summation)."""
"""How `copy_bandwidth` streams (results before it have no `copy_method`: a fresh output
per call, which understates the rate; docs/performance-notes.md)."""


# --- references: the engine's euler step of the chain model ---------------------------------


def numpy_step(c: np.ndarray, out: np.ndarray, a: float, dt: float) -> None:
    """c, out: (F, *grid). out = c + a lap c + dt RATE c_prev - dt (DECAY + RATE) c (no RATE
    for the last field)."""
    n_fields, ndim = c.shape[0], c.ndim - 1
    for f in range(n_fields):
        p = np.pad(c[f], 1, mode="edge")
        lap = -2 * ndim * c[f]
        for axis in range(ndim):
            for lo in (0, 2):
                index = [slice(1, -1)] * ndim
                index[axis] = slice(lo, lo + c.shape[axis + 1])
                lap += p[tuple(index)]
        gain = c[f] + a * lap
        if f > 0:
            gain += dt * RATE * c[f - 1]
        loss = dt * (DECAY + (RATE if f < n_fields - 1 else 0.0))
        np.subtract(gain, loss * c[f], out=out[f])


def numba_steps():
    """(2D kernel, 3D kernel) of the same step, parallel over the first grid axis; None
    without numba."""
    try:
        import numba
    except ImportError:
        return None

    @numba.njit(parallel=True, fastmath=False, cache=False)
    def step3(c, out, a, dt):
        n_fields, nz, ny, nx = c.shape
        for i in numba.prange(nz):
            for j in range(ny):
                for f in range(n_fields):
                    loss = dt * (DECAY + (RATE if f < n_fields - 1 else 0.0))
                    for m in range(nx):
                        centre = c[f, i, j, m]
                        total = -6 * centre
                        total += c[f, i - 1, j, m] if i > 0 else centre
                        total += c[f, i + 1, j, m] if i < nz - 1 else centre
                        total += c[f, i, j - 1, m] if j > 0 else centre
                        total += c[f, i, j + 1, m] if j < ny - 1 else centre
                        total += c[f, i, j, m - 1] if m > 0 else centre
                        total += c[f, i, j, m + 1] if m < nx - 1 else centre
                        gain = centre + a * total
                        if f > 0:
                            gain += dt * RATE * c[f - 1, i, j, m]
                        out[f, i, j, m] = gain - loss * centre

    @numba.njit(parallel=True, fastmath=False, cache=False)
    def step2(c, out, a, dt):
        n_fields, ny, nx = c.shape
        for j in numba.prange(ny):
            for f in range(n_fields):
                loss = dt * (DECAY + (RATE if f < n_fields - 1 else 0.0))
                for m in range(nx):
                    centre = c[f, j, m]
                    total = -4 * centre
                    total += c[f, j - 1, m] if j > 0 else centre
                    total += c[f, j + 1, m] if j < ny - 1 else centre
                    total += c[f, j, m - 1] if m > 0 else centre
                    total += c[f, j, m + 1] if m < nx - 1 else centre
                    gain = centre + a * total
                    if f > 0:
                        gain += dt * RATE * c[f - 1, j, m]
                    out[f, j, m] = gain - loss * centre

    return {2: step2, 3: step3}


def xla_step(c, a: float, dt: float):
    """The same step as a plain jnp stencil of the stacked fields (edge padding, slices): what
    XLA alone makes of it on the device. Returns the new fields."""
    n_fields, ndim = c.shape[0], c.ndim - 1
    p = jnp.pad(c, [(0, 0)] + [(1, 1)] * ndim, mode="edge")
    total = -2 * ndim * c
    for axis in range(ndim):
        for lo in (0, 2):
            index = [slice(None)] + [slice(1, -1)] * ndim
            index[axis + 1] = slice(lo, lo + c.shape[axis + 1])
            total = total + p[tuple(index)]
    gain = (c + a * total).at[1:].add(dt * RATE * c[:-1])
    sinks = DECAY + RATE * (jnp.arange(n_fields) < n_fields - 1)
    return gain - (dt * sinks).reshape((n_fields,) + (1,) * ndim).astype(c.dtype) * c


def xla_seconds(shape, n_fields: int, dtype: str, least_steps: int, call_seconds, repeats):
    """Seconds per step of `xla_step` (`timed_steps`, counting pairs of steps), in a device
    loop of two steps per iteration (each writes the buffer the other read, so XLA copies
    nothing)."""
    c = jnp.asarray(np.random.default_rng(0).random((n_fields, *shape)), dtype)
    dt = 0.1
    a = dt * D / SPACING**2

    @functools.partial(jax.jit, donate_argnums=0)
    def advance(c, pairs):
        pair = lambda i, c: xla_step(xla_step(c, a, dt), a, dt)  # noqa: E731
        return jax.lax.fori_loop(0, pairs, pair, c)

    holder = {"c": c}

    def run(pairs):
        holder["c"] = jax.block_until_ready(advance(holder["c"], pairs))

    least_pairs = max(1, least_steps // 2)
    return timed_steps(run, least_pairs, call_seconds, repeats)["seconds"] / 2


def reference_seconds(step, shape, n_fields: int, dtype: str, repeats: int) -> float:
    c = np.random.default_rng(0).random((n_fields, *shape)).astype(dtype)
    out = np.empty_like(c)
    dt = 0.1
    a = dt * D / SPACING**2
    return median_seconds(lambda: step(c, out, a, dt), repeats)


def check_reference_agrees(numba_kernels) -> None:
    """The references and the engine's euler step give the same fields (float64, 2D and 3D)."""
    for shape in ((6, 5), (5, 4, 3)):
        model = chain_model(shape, 3)
        sim = engine.Simulation(model, scheme="euler", dtype="float64")
        fields = random_fields(sim)
        c = np.stack([np.asarray(fields[f"c{i}"]) for i in range(3)])
        fields = sim.advance_steps(fields, 0.0, 0.1, 1)
        expected = np.stack([np.asarray(fields[f"c{i}"]) for i in range(3)])
        out = np.empty_like(c)
        for step in [numpy_step] + ([numba_kernels[len(shape)]] if numba_kernels else []):
            step(c, out, 0.1 * D / SPACING**2, 0.1)
            np.testing.assert_allclose(out, expected, rtol=1e-12)
        with precision("float64"):
            xla = xla_step(jnp.asarray(c), 0.1 * D / SPACING**2, 0.1)
        np.testing.assert_allclose(np.asarray(xla), expected, rtol=1e-12)


def engine_case(
    shape, n_fields, dtype, stepper, *, least_steps, call_seconds, repeats, kernels="xla"
) -> dict:
    """Seconds per step of the engine's `stepper` on the chain model, with its time step,
    compile time and peak memory (`engine.runs.bench.measure_case`)."""
    options = dict(STEPPERS[stepper], kernels=kernels if stepper in EXPLICIT else "xla")
    timing = dict(least_steps=least_steps, call_seconds=call_seconds, repeats=repeats)
    return measure_case(shape, n_fields, dtype, options, **timing)


def run_matrix(args, bandwidth: float, numba_kernels, save) -> list[dict]:
    """Every case of the matrix; `save(rows)` after each, so that a long run stopped early
    keeps what it measured."""
    rows = []
    for dtype in args.dtypes:
        for text in args.grids:
            shape = parse_grid(text)
            voxels = math.prod(shape)
            for n_fields in args.fields:
                # the references run first: XLA's worker threads linger busy after a run
                with precision(dtype):  # the XLA reference's arrays in float64 too
                    references = reference_times(shape, n_fields, dtype, args, numba_kernels)
                for stepper in args.steppers:
                    steps = args.steps if stepper in EXPLICIT else 2
                    case = engine_case(
                        shape,
                        n_fields,
                        dtype,
                        stepper,
                        least_steps=steps,
                        call_seconds=args.call_seconds,
                        repeats=args.repeats,
                        kernels=args.kernels,
                    )
                    row = dict(grid=grid_label(shape), voxels=voxels, fields=n_fields)
                    row.update(dtype=dtype, stepper=stepper, **case)
                    updates = voxels * n_fields / case["seconds"]
                    itemsize = np.dtype(dtype).itemsize
                    row["updates_per_s"] = updates
                    row["bandwidth"] = 2 * itemsize * updates
                    row["bandwidth_fraction"] = row["bandwidth"] / bandwidth
                    row.update(references)
                    if stepper == "euler":
                        euler_seconds = case["seconds"]
                    if "euler" in args.steppers:
                        row["euler_steps"] = case["seconds"] / euler_seconds
                    rows.append(row)
                    save(rows)
                    print(format_row(row), flush=True)
    return rows


def reference_times(shape, n_fields, dtype, args, numba_kernels) -> dict:
    """Seconds per step of each reference in `args.references` (NumPy and Numba: one step a
    call, into an output array allocated once)."""
    names, repeats = args.references, args.repeats
    out = {}
    if "xla" in names:
        out["xla_s"] = xla_seconds(shape, n_fields, dtype, args.steps, args.call_seconds, repeats)
    if "numpy" in names:
        out["numpy_s"] = reference_seconds(numpy_step, shape, n_fields, dtype, repeats)
    if numba_kernels is not None and len(shape) in numba_kernels:
        kernel = numba_kernels[len(shape)]
        out["numba_s"] = reference_seconds(kernel, shape, n_fields, dtype, repeats)
    return out


HEADER = (
    f"{'grid':>9} {'F':>2} {'dtype':>7} {'stepper':>17} {'ms/step':>9} {'steps':>6} {'Gupd/s':>7} "
    f"{'of bw':>6} {'xNumPy':>7} {'xNumba':>7} {'xXLA':>6} {'euler':>6} {'compile':>8} "
    f"{'peak MB':>8}"
)


def format_row(r: dict) -> str:
    def ratio(key):
        if key not in r or r["stepper"] not in EXPLICIT:
            return "-"
        return f"{r[key] / r['seconds']:.2f}"

    peak = f"{r['peak_bytes'] / 2**20:.0f}" if r.get("peak_bytes") is not None else "-"
    euler = f"{r['euler_steps']:.1f}" if "euler_steps" in r else "-"
    return (
        f"{r['grid']:>9} {r['fields']:>2} {r['dtype']:>7} {r['stepper']:>17} "
        f"{1e3 * r['seconds']:>9.2f} {r['steps_per_call']:>6} {r['updates_per_s'] / 1e9:>7.3f} "
        f"{r['bandwidth_fraction']:>6.1%} {ratio('numpy_s'):>7} {ratio('numba_s'):>7} "
        f"{ratio('xla_s'):>6} "
        f"{euler:>6} {r['compile_s']:>7.1f}s {peak:>8}"
    )


def plot(rows: list[dict], name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    cases = sorted(
        {(r["stepper"], r["fields"], r["dtype"], "2D" if "^2" in r["grid"] else "3D") for r in rows}
    )
    for stepper, fields, dtype, dims in cases:
        points = sorted(
            (r["voxels"], r["updates_per_s"])
            for r in rows
            if (r["stepper"], r["fields"], r["dtype"]) == (stepper, fields, dtype)
            and ("^2" in r["grid"]) == (dims == "2D")
        )
        x, y = zip(*points)
        ax.plot(
            x, np.asarray(y) / 1e9, "o-", label=f"{stepper}, {fields} field(s), {dtype}, {dims}"
        )
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("voxels")
    ax.set_ylabel("voxel-updates / s per field (1e9)")
    ax.set_title(f"ilsim solver throughput, {name}")
    ax.legend(fontsize=6, ncol=2)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--grids", nargs="+", help="default 2048^2 4096^2 128^3 256^3")
    parser.add_argument("--fields", type=int, nargs="+", help="default 1 4 8")
    parser.add_argument("--dtypes", nargs="+", help="default float32 float64")
    parser.add_argument("--steppers", nargs="+", default=list(STEPPERS), choices=list(STEPPERS))
    parser.add_argument("--repeats", type=int, help="timed calls per case (default 5)")
    parser.add_argument(
        "--steps",
        type=int,
        help="least explicit steps per timed call (default 20; implicit steppers: 2)",
    )
    parser.add_argument(
        "--call-seconds",
        type=float,
        help="about how long each timed call runs, in steps of the case (default 0.5)",
    )
    parser.add_argument("--quick", action="store_true", help="a small matrix in about a minute")
    parser.add_argument(
        "--references",
        nargs="*",
        default=["numpy", "numba", "xla"],
        choices=["numpy", "numba", "xla"],
        help="references to time: NumPy and Numba on the CPU, a plain jnp stencil on the "
        "device (default all; none: only the engine and the bandwidth)",
    )
    parser.add_argument(
        "--kernels",
        choices=["xla", "pallas"],
        default="xla",
        help="the explicit steps' kernels (pallas: engine.stepping.kernels, a run's default "
        "for ssprk2/3 on a GPU; xla: XLA's fusion, the default here for comparison)",
    )
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default: results/)")
    args = parser.parse_args(argv)
    defaults = dict(
        grids=["2048^2", "4096^2", "128^3", "256^3"],
        fields=[1, 4, 8],
        dtypes=["float32", "float64"],
        repeats=5,
        steps=20,
        call_seconds=0.5,
    )
    if args.quick:  # a small matrix; options given explicitly still apply
        defaults.update(grids=["256^2", "32^3"], fields=[1, 4], dtypes=["float32"], repeats=3)
        defaults.update(steps=5, call_seconds=0.01)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    args.steppers = [s for s in STEPPERS if s in args.steppers]  # euler first: the unit
    name = device_name()
    numba_kernels = numba_steps() if "numba" in args.references else None
    check_reference_agrees(numba_kernels)
    bandwidth = copy_bandwidth(args.repeats)
    print(f"device: {name}; jax {jax.__version__}; copy bandwidth {bandwidth / 1e9:.1f} GB/s")
    print(HEADER)
    output = args.output or RESULTS / f"bench_solver-{name}.json"
    output.parent.mkdir(parents=True, exist_ok=True)

    def save(rows):
        result = dict(device=name, jax=jax.__version__, copy_bandwidth=bandwidth, rows=rows)
        result["copy_method"] = COPY_METHOD
        result["compensation"] = COMPENSATION
        result["kernels"] = args.kernels
        output.write_text(json.dumps(result, indent=1))

    rows = run_matrix(args, bandwidth, numba_kernels, save)
    plot(rows, name, output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png')}")
    return output


if __name__ == "__main__":
    main()
