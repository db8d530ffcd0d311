"""The fused Pallas kernels' block shape and warps against speed, on a GPU.

    python benchmarks/bench_kernel_tiles.py [--size 512] [--fields 1 4] [--repeats 3]

Times the explicit step through the kernels (`engine.stepping.kernels`, ssprk3 and euler,
float32 with stochastic rounding, the default) on `bench_solver`'s chain model at size^3 for
each 3D tile (voxels per program along each axis) and number of warps, with the copy
bandwidth measured in the same run. The fraction is the least traffic of the scheme's
stages (euler 2, ssprk3 8 float32 reads and writes per voxel and field: each stage reads the
fields and, after the first, the step's increment so far, and writes one of the two) over the
copy bandwidth. Writes results/kernel_tiles-<device>.json.
"""

from __future__ import annotations

import argparse

import jax
from common import RESULTS, device_name

from engine.runs.bench import copy_bandwidth, measure_case, write_result
from engine.stepping.kernels import Launch

TILES = ((4, 4, 128), (2, 8, 128), (2, 4, 128), (8, 4, 64), (4, 8, 64), (1, 8, 256))
WARPS = (4, 8)
STAGE_TRAFFIC = {"euler": 2, "ssprk3": 8}
"""float32 arrays read or written per voxel and field by a step of the scheme's kernels."""


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--fields", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--schemes", nargs="+", default=["ssprk3", "euler"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--call-seconds", type=float, default=0.3)
    parser.add_argument("--output", default=None)
    args = parser.parse_args(argv)
    bandwidth = copy_bandwidth(args.repeats)
    name = device_name()
    print(f"{name}, jax {jax.__version__}: copy bandwidth {bandwidth / 1e9:.0f} GB/s", flush=True)
    output = args.output or RESULTS / f"kernel_tiles-{name}.json"
    rows = []
    shape = (args.size,) * 3
    for scheme in args.schemes:
        for n_fields in args.fields:
            for tile in TILES:
                for warps in WARPS:
                    options = dict(stepper="explicit", scheme=scheme, kernels="pallas")
                    options["kernel_launch"] = Launch().with_tile(tile, warps)
                    case = measure_case(
                        shape,
                        n_fields,
                        "float32",
                        options,
                        least_steps=10,
                        call_seconds=args.call_seconds,
                        repeats=args.repeats,
                    )
                    traffic = STAGE_TRAFFIC[scheme] * 4 * args.size**3 * n_fields
                    row = dict(scheme=scheme, fields=n_fields, tile=tile, warps=warps)
                    row.update(seconds=case["seconds"], compile_s=case["compile_s"])
                    row["fraction"] = traffic / case["seconds"] / bandwidth
                    rows.append(row)
                    print(
                        f"{scheme:>7} F={n_fields} tile {tile} warps {warps}: "
                        f"{1e3 * case['seconds']:.3f} ms, {row['fraction']:.1%} of copy",
                        flush=True,
                    )
                    result = dict(device=name, jax=jax.__version__, size=args.size)
                    result.update(copy_bandwidth=bandwidth, rows=rows)
                    write_result(result, output)
    print(f"wrote {output}")


if __name__ == "__main__":
    main()
