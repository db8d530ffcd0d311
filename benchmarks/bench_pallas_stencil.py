"""How far hand-written Pallas (Triton) kernels of the one-field 3D euler step get on a GPU,
against the engine's step and XLA's plain stencil, all measured in one run.

    python benchmarks/bench_pallas_stencil.py [--size 512] [--repeats 5] [--steps 40]

The step is `bench_solver`'s benchmark model with one field (zero-flux walls): out = (c + a lap
c) / (1 + dt decay). Two kernel layouts, each over a few tile shapes:
- march: a program owns a (ty, tz) column of `xc` planes and marches along the slowest axis
  with three planes in registers; in-plane neighbours are masked loads shifted by one (served
  by the cache);
- block: a program owns a (tx, ty, tz) block and loads each of its six neighbours shifted.
And the ceiling of any such kernel: copy, a program that loads its block and stores it scaled,
the least a step can move, through Pallas instead of XLA; and the same copy through Pallas'
Mosaic GPU backend ("tma copy"), where each program streams its rows through shared memory
with the TMA unit, several blocks in flight: whether a kernel that stages its blocks so can
reach the in-place copy bandwidth where Triton's loads do not; and the step staged so ("tma
stencil"): each program marches a column of blocks along the slowest axis, each block and its
six neighbours shifted by one voxel loaded through the TMA (the shifted copies are served by
the L2 cache: the program read the planes before and after, its neighbours the rows beside,
moments ago), several blocks in flight.
Every kernel is first checked against the plain stencil (max abs difference printed), then
timed as `bench_solver` times the engine: a device loop of two steps per iteration, each
writing the other's input. Prints ms per step and the fraction of the copy bandwidth at the
minimal 8 bytes per voxel-step; writes results/pallas_stencil-<device>.json. GPU only.
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
from bench_solver import COPY_METHOD, DECAY, SPACING, D, copy_bandwidth, engine_case, xla_step
from common import RESULTS, device_name, median_seconds
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as plt

try:  # Pallas' Mosaic GPU backend: without it, the script leaves out the TMA copies
    from jax.experimental.pallas import mosaic_gpu as plgpu
except ImportError:
    plgpu = None

MARCH_TILES = [(32, 8, 128), (64, 4, 128), (32, 4, 64), (16, 8, 64), (64, 8, 64)]
BLOCK_TILES = [
    (4, 8, 64),
    (2, 8, 128),
    (8, 4, 64),
    (4, 4, 128),
    (4, 8, 128),
    (8, 8, 128),
    (2, 16, 128),
    (4, 4, 256),
]
COPY_TILES = [(4, 4, 128), (8, 8, 128), (1, 8, 512), (16, 16, 128)]
WARPS = (4, 8)
TMA_COPIES = [(16, 2, 256), (16, 4, 256), (32, 2, 256), (32, 3, 256), (16, 4, 1024), (8, 6, 512)]
"""Mosaic GPU copies: (rows of TMA_WIDTH floats per block, blocks in flight, programs)."""
TMA_WIDTH = 256  # the widest box a TMA copy takes along an axis
TMA_STENCILS = [(8, 256, 2, 128), (4, 256, 3, 256), (8, 128, 3, 256), (2, 256, 4, 512)]
"""Mosaic GPU stencils: (rows, width, blocks in flight, programs); at 512^3 one or two columns
of blocks per program, every one within the 227 KiB of shared memory a program may hold."""
NEIGHBOURS = ((-1, 0, 0), (1, 0, 0), (0, -1, 0), (0, 1, 0), (0, 0, -1), (0, 0, 1))


def _shifted(ref, index, inside, centre):
    """ref[index] where `inside`, else `centre` (the zero-flux ghost value)."""
    return jnp.where(inside, plt.load(ref.at[index], mask=inside, other=0.0), centre)


def march_kernel(c_ref, o_ref, *, a, gain, shape, xc, ty, tz):
    nx, ny, nz = shape
    x0, y0, z0 = (pl.program_id(i) * n for i, n in enumerate((xc, ty, tz)))
    ys = y0 + lax.broadcasted_iota(jnp.int32, (ty, tz), 0)
    zs = z0 + lax.broadcasted_iota(jnp.int32, (ty, tz), 1)
    Y, Z = pl.ds(y0, ty), pl.ds(z0, tz)

    def plane(x):
        return plt.load(c_ref.at[x, Y, Z])

    def body(i, carry):
        below, centre = carry
        x = x0 + i
        above = plane(jnp.minimum(x + 1, nx - 1))
        lap = below + above - 6 * centre
        lap += _shifted(c_ref, (x, pl.ds(y0 - 1, ty), Z), ys > 0, centre)
        lap += _shifted(c_ref, (x, pl.ds(y0 + 1, ty), Z), ys < ny - 1, centre)
        lap += _shifted(c_ref, (x, Y, pl.ds(z0 - 1, tz)), zs > 0, centre)
        lap += _shifted(c_ref, (x, Y, pl.ds(z0 + 1, tz)), zs < nz - 1, centre)
        plt.store(o_ref.at[x, Y, Z], (centre + a * lap) * gain)
        return centre, above

    lax.fori_loop(0, xc, body, (plane(jnp.maximum(x0 - 1, 0)), plane(x0)))


def block_kernel(c_ref, o_ref, *, a, gain, shape, tx, ty, tz):
    tiles = (tx, ty, tz)
    starts = [pl.program_id(i) * n for i, n in enumerate(tiles)]
    centre = plt.load(c_ref.at[tuple(pl.ds(s, n) for s, n in zip(starts, tiles))])
    lap = -6 * centre
    for axis in range(3):
        position = starts[axis] + lax.broadcasted_iota(jnp.int32, tiles, axis)
        for shift, inside in ((-1, position > 0), (1, position < shape[axis] - 1)):
            index = [pl.ds(s, n) for s, n in zip(starts, tiles)]
            index[axis] = pl.ds(starts[axis] + shift, tiles[axis])
            lap += _shifted(c_ref, tuple(index), inside, centre)
    plt.store(
        o_ref.at[tuple(pl.ds(s, n) for s, n in zip(starts, tiles))], (centre + a * lap) * gain
    )


def copy_kernel(c_ref, o_ref, *, a, gain, shape, tx, ty, tz):
    """The block times `gain`: one load and one store per voxel, no neighbours."""
    del a, shape
    index = tuple(pl.ds(pl.program_id(i) * n, n) for i, n in enumerate((tx, ty, tz)))
    plt.store(o_ref.at[index], plt.load(c_ref.at[index]) * gain)


KERNELS = {"march": march_kernel, "block": block_kernel, "copy": copy_kernel}


def tma_copy_step(shape, dtype, gain: float, rows: int, in_flight: int, programs: int):
    """c * gain through Mosaic GPU: the grid viewed as rows of TMA_WIDTH values, each of
    `programs` programs copying its share in blocks of `rows` rows through shared memory,
    `in_flight` blocks loading or storing at once (`plgpu.emit_pipeline`)."""
    size = math.prod(shape)
    blocks = size // (rows * TMA_WIDTH)
    if size % (rows * TMA_WIDTH) or blocks % programs:
        raise ValueError(f"tma copy: {shape} does not split into {programs} x rows of {rows}")
    steps = blocks // programs

    def body(c_gmem, o_gmem):
        program = lax.axis_index("program")

        def block(_, c_smem, o_smem):
            o_smem[...] = c_smem[...] * gain

        spec = pl.BlockSpec((rows, TMA_WIDTH), lambda s: (program * steps + s, 0))
        pipeline = plgpu.emit_pipeline(
            block, grid=(steps,), in_specs=[spec], out_specs=[spec], max_concurrent_steps=in_flight
        )
        pipeline(c_gmem, o_gmem)

    kernel = plgpu.kernel(
        body,
        out_type=jax.ShapeDtypeStruct((size // TMA_WIDTH, TMA_WIDTH), dtype),
        grid=(programs,),
        grid_names=("program",),
    )
    return lambda c: kernel(c.reshape(-1, TMA_WIDTH)).reshape(shape)


def tma_stencil_step(
    shape, dtype, a: float, gain: float, rows: int, width: int, in_flight: int, programs: int
):
    """The bare step (c + a lap c) * gain, zero-flux walls, through Mosaic GPU: the grid split
    into columns of blocks (1, rows, width) along the slowest axis, each of `programs`
    programs marching its share of the columns; a block and its six neighbour blocks, shifted
    by a voxel (`pl.Element` offsets; where a shift leaves the grid the TMA fills zeros, and
    the wall takes the centre's value instead), come through the TMA into shared memory,
    `in_flight` steps at once (`plgpu.emit_pipeline`)."""
    nx, ny, nz = shape
    if ny % rows or nz % width:
        raise ValueError(f"tma stencil: {shape} does not split into blocks of {rows} x {width}")
    columns = (ny // rows) * (nz // width)
    if columns % programs:
        raise ValueError(f"tma stencil: {columns} columns do not split into {programs} programs")
    per_program = columns // programs
    # the layout Mosaic GPU gives a block read from shared memory: 8-byte vectors per thread
    vector = min(8 // jnp.dtype(dtype).itemsize, rows * width // 128)
    layout = plgpu.Layout.WG_STRIDED((1, rows, width), vec_size=vector)

    def body(c_gmem, o_gmem):
        program = lax.axis_index("program")

        def origin(s):
            column = program * per_program + s // nx
            return s % nx, (column // (nz // width)) * rows, (column % (nz // width)) * width

        def spec(dx, dy, dz):
            def index(s):
                x, y, z = origin(s)
                return x + dx, y + dy, z + dz

            return plgpu.BlockSpec((pl.Element(1), pl.Element(rows), pl.Element(width)), index)

        def block(indices, centre, *neighbours_and_out):
            *neighbours, out = neighbours_and_out
            x, y0, z0 = origin(indices[0])
            c = centre[...]
            ys = y0 + plgpu.broadcasted_iota(jnp.int32, (1, rows, width), 1, layout=layout)
            zs = z0 + plgpu.broadcasted_iota(jnp.int32, (1, rows, width), 2, layout=layout)
            inside = (x > 0, x < nx - 1, ys > 0, ys < ny - 1, zs > 0, zs < nz - 1)
            lap = -6 * c
            for ref, within in zip(neighbours, inside):
                lap += jnp.where(within, ref[...], c)
            out[...] = (c + a * lap) * gain

        specs = [spec(0, 0, 0)] + [spec(*shift) for shift in NEIGHBOURS]
        pipeline = plgpu.emit_pipeline(
            block,
            grid=(nx * per_program,),
            in_specs=specs,
            out_specs=[spec(0, 0, 0)],
            max_concurrent_steps=in_flight,
        )
        pipeline(*[c_gmem] * len(specs), o_gmem)

    return plgpu.kernel(
        body,
        out_type=jax.ShapeDtypeStruct(shape, dtype),
        grid=(programs,),
        grid_names=("program",),
        compiler_params=plgpu.CompilerParams(lowering_semantics=plgpu.LoweringSemantics.Lane),
    )


def pallas_step(shape, dtype, a: float, gain: float, layout: str, tiles, warps: int, stages: int):
    names = ("xc", "ty", "tz") if layout == "march" else ("tx", "ty", "tz")
    return pl.pallas_call(
        functools.partial(KERNELS[layout], a=a, gain=gain, shape=shape, **dict(zip(names, tiles))),
        out_shape=jax.ShapeDtypeStruct(shape, dtype),
        grid=tuple(n // t for n, t in zip(shape, tiles)),
        compiler_params=plt.CompilerParams(num_warps=warps, num_stages=stages),
    )


def loop_seconds(step, c, steps: int, repeats: int) -> float:
    """Seconds per step of `step` in a device loop of two steps per iteration."""

    @functools.partial(jax.jit, donate_argnums=0)
    def advance(c):
        return lax.fori_loop(0, steps // 2, lambda i, c: step(step(c)), c)

    holder = {"c": jnp.copy(c)}  # donated: the caller's `c` stays valid

    def run():
        holder["c"] = jax.block_until_ready(advance(holder["c"]))

    return median_seconds(run, repeats) / (2 * (steps // 2))


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args(argv)
    if jax.default_backend() != "gpu":
        raise SystemExit("bench_pallas_stencil: needs a GPU (Pallas' Triton kernels)")
    shape = (args.size,) * 3
    dt = 0.1
    a, gain = dt * D / SPACING**2, 1 / (1 + dt * DECAY)
    c = jnp.asarray(np.random.default_rng(0).random(shape), jnp.float32)
    expected = xla_step(c[None], a, dt)[0]
    bandwidth = copy_bandwidth(args.repeats)
    minimal_bytes = 8 * c.size
    name = device_name()
    output = args.output or RESULTS / f"pallas_stencil-{name}.json"
    rows = []

    def record(kernel, seconds, error=None, **extra):
        fraction = minimal_bytes / seconds / bandwidth
        rows.append(dict(kernel=kernel, seconds=seconds, fraction=fraction, error=error, **extra))
        print(
            f"{kernel:>28} {1e3 * seconds:8.3f} ms {fraction:6.1%}  max |diff| {error}", flush=True
        )
        output.write_text(
            json.dumps(
                dict(
                    device=name,
                    jax=jax.__version__,
                    shape=shape,
                    copy_bandwidth=bandwidth,
                    copy_method=COPY_METHOD,
                    rows=rows,
                ),
                indent=1,
            )
        )

    print(f"device {name}; jax {jax.__version__}; copy bandwidth {bandwidth / 1e9:.0f} GB/s")
    record(
        "xla plain stencil",
        loop_seconds(lambda u: xla_step(u[None], a, dt)[0], c, args.steps, args.repeats),
    )
    for kernels in ("xla", "pallas"):
        case = engine_case(
            shape,
            1,
            "float32",
            "euler",
            least_steps=args.steps,
            call_seconds=0.0,
            repeats=args.repeats,
            kernels=kernels,
        )
        record(f"engine euler ({kernels})", case["seconds"])
    staged = [  # (layout, tiles, in flight, programs, the step, what it must give)
        (
            "tma copy",
            (rows, TMA_WIDTH),
            in_flight,
            programs,
            functools.partial(tma_copy_step, shape, jnp.float32, gain, rows, in_flight, programs),
            c * gain,
        )
        for rows, in_flight, programs in TMA_COPIES
    ]
    staged += [
        (
            "tma stencil",
            (rows, width),
            in_flight,
            programs,
            functools.partial(
                tma_stencil_step, shape, jnp.float32, a, gain, rows, width, in_flight, programs
            ),
            expected,
        )
        for rows, width, in_flight, programs in TMA_STENCILS
    ]
    for layout, tiles, in_flight, programs, build, wanted in staged if plgpu is not None else ():
        label = f"{layout} {'x'.join(map(str, tiles))} f{in_flight} p{programs}"
        try:
            step = jax.jit(build())
            error = float(jnp.max(jnp.abs(step(c) - wanted)))
            seconds = loop_seconds(step, c, args.steps, args.repeats)
            extra = dict(tiles=tiles, in_flight=in_flight, programs=programs)
            record(label, seconds, error, layout=layout, **extra)
        except Exception as exc:  # a block the compiler refuses or a grid it does not split
            print(f"{label:>28} failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    cases = [("copy", t, w, 1) for t in COPY_TILES for w in WARPS]
    cases += [("march", t, w, 1) for t in MARCH_TILES for w in WARPS]
    cases += [("block", t, w, 1) for t in BLOCK_TILES for w in WARPS]
    for layout, tiles, warps, stages in cases:
        label = f"{layout} {'x'.join(map(str, tiles))} w{warps} s{stages}"
        try:
            step = jax.jit(pallas_step(shape, jnp.float32, a, gain, layout, tiles, warps, stages))
            wanted = c * gain if layout == "copy" else expected
            error = float(jnp.max(jnp.abs(step(c) - wanted)))
            record(
                label,
                loop_seconds(step, c, args.steps, args.repeats),
                error,
                layout=layout,
                tiles=tiles,
                warps=warps,
                stages=stages,
            )
        except Exception as exc:  # a tile shape the compiler refuses: say so and go on
            print(f"{label:>28} failed: {type(exc).__name__}: {str(exc)[:200]}", flush=True)
    return output


if __name__ == "__main__":
    main()
