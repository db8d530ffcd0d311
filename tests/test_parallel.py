"""Domain decomposition: sharded runs of every stepper equal single-device runs, output is
written block by block, and checkpoints resume on another device count.

JAX fixes the number of CPU devices when it starts, so the sharded cases run in a child
process that splits this CPU into 8 devices (as `ilsim run --devices 8` does)."""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import textwrap
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest

from engine.numerics import parallel

CHILD_SETUP = """
import json, sys
import jax
from engine.numerics import parallel
parallel.use_cpu_devices(8)
import numpy as np
import engine
from engine.model.terms import Conversion, Secretion, Uptake
"""


def run_child(body: str, tmp_path) -> dict:
    """Run `body` (which sets `result`) in a child process with 8 CPU devices."""
    script = tmp_path / "child.py"
    code = CHILD_SETUP + textwrap.dedent(body) + "\nprint(json.dumps(result))\n"
    script.write_text(code)
    done = subprocess.run(
        [sys.executable, str(script)], capture_output=True, text=True, timeout=600, cwd=tmp_path
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


SHARDED_STEPPERS = """
def model(shape, faces):
    grid = engine.Grid(shape, spacing=10.0)
    rng = np.random.default_rng(1)
    faces = {"neumann": {}, "dirichlet": {"x_min": engine.Dirichlet(0.5)},
             "robin": {"x_min": engine.Robin(0.5, 0.3)}}[faces]
    boundary = engine.Boundary.from_faces(len(shape), **faces)
    il2 = engine.Species("IL2", diffusion=100.0, decay=1e-3, boundary=boundary,
                         initial=rng.random(shape))
    il10 = engine.Species("IL10", diffusion=60.0, decay=2e-3, boundary=boundary)
    cells = engine.Population("T", motility=1.0, chemotaxis_species="IL2",
                              chemotaxis_sensitivity=5.0, initial=1e-4 * (1 + rng.random(shape)))
    terms = (Secretion("IL10", "T", 100.0), Secretion("IL2", "T", 50.0),
             Uptake("IL2", "T", k_on=1.0, receptors=1e3),
             Conversion("IL2", "IL10", 1e-3))
    return engine.Model(grid, species=(il2, il10), populations=(cells,), terms=terms)

result = {}
for shape, mesh, stepper, dtype, faces in CASES:
    m = model(tuple(shape), faces)
    single = engine.Simulation(m, stepper=stepper, dtype=dtype)
    dt = 20.0 if stepper != "explicit" else single.time_step(single.initial_state())
    reference = single.advance_steps(single.initial_state().fields, 0.0, dt, 5)
    sim = engine.Simulation(m, stepper=stepper, mesh=mesh, dtype=dtype)
    fields = sim.advance_steps(sim.initial_state().fields, 0.0, dt, 5)
    diff = max(
        float(np.max(np.abs(np.asarray(v) - ref)) / np.max(np.abs(ref)))
        for k, v in fields.items()
        for ref in [np.asarray(reference[k])]
    )
    key = f"{len(shape)}D {stepper} {dtype} {faces} {mesh}"
    result[key] = dict(diff=diff, devices=min(len(v.sharding.device_set) for v in fields.values()))
"""


STEPPERS = ("explicit", "imex", "quasi_steady")
FAST_CASES = [  # every stepper split over 8 devices in 3D and over 4 in 2D
    *[((16, 16, 8), [4, 2], s, "float32", "dirichlet") for s in STEPPERS],
    *[((32, 24), [4], s, "float64", "neumann") for s in STEPPERS],
    ((32, 24), [4], "imex", "float32", "neumann"),
    ((32, 24), [4], "imex", "float32", "robin"),  # TR-BDF2 with CG
]
ALL_CASES = [
    (shape, mesh, s, dtype, faces)
    for shape, meshes in [((32, 24), [[4], [8]]), ((16, 16, 8), [[2, 2], [4, 2]])]
    for mesh in meshes
    for s in STEPPERS
    for dtype in ("float32", "float64")
    for faces in ("neumann", "dirichlet", "robin")
    if faces != "robin" or s == "imex"
]


def check_sharded_runs(cases, tmp_path):
    """Split runs round as single-device ones, bitwise: the CPU split into devices compiles
    without FMAs (`parallel.reproducible_cpu_math`), each transform sums whole lines as one
    device does (`test_split_transforms_equal_single_device_transforms_bitwise`), CG's dot
    products add in one order on any split (`parallel.dot`), and its right-hand side takes
    its boundary values behind a `parallel.fence` (XLA had combined that sum with the
    right-hand side's own terms differently for split fields). Before, float32 runs
    differed by up to 2e-6 after these 5 steps: chemotaxis up this rough field carries on a
    unit in the last place here and there (float64: 1e-14)."""
    runs = run_child(f"CASES = {cases!r}\n" + SHARDED_STEPPERS, tmp_path)
    assert len(runs) == len(cases)
    for case, outcome in runs.items():
        mesh = json.loads(case.split(" ", 4)[-1])
        assert outcome["devices"] == int(np.prod(mesh)), case  # really split
        assert outcome["diff"] == 0, f"{case}: relative difference {outcome['diff']:.2e}"


def test_sharded_runs_of_every_stepper_equal_single_device_runs(tmp_path):
    check_sharded_runs(FAST_CASES, tmp_path)


@pytest.mark.slow
def test_sharded_runs_equal_single_device_runs_over_meshes_dtypes_and_faces(tmp_path):
    check_sharded_runs(ALL_CASES, tmp_path)


CHECKPOINT_RESUME = """
import shutil
from engine.runs.driver import run
from engine.io.reader import open_output

config = {
    "grid": {"shape": [16, 16, 8], "spacing": "10 um"},
    "time": {"end": "6 min", "output_every": "3 min", "stepper": "imex", "dtype": "float64"},
    "species": {"IL2": {"diffusion": "100 um^2/s", "decay": "1e-3 1/s"}},
    "populations": {"T": {"motility": "1 um^2/s", "initial": 1e-4}},
    "regions": {"core": {"sphere": {"center": ["80 um", "80 um", "40 um"], "radius": "30 um"}}},
    "terms": [{"type": "secretion", "species": "IL2", "by": "T", "rate": "5 molecule/s"},
              {"type": "uptake", "species": "IL2", "by": "T", "k_on": "1e9 1/M/s",
               "receptors": 1e3}],
    "sources": [{"type": "region", "species": "IL2", "region": "core", "rate": "1 nM/s"}],
}
longer = {**config, "time": {**config["time"], "end": "12 min"}}
first = run(engine.Simulation(engine.load_config(config), devices=4), "four.h5", quiet=True)
result = {"layout": str(engine.Simulation(engine.load_config(config), devices=4).mesh.shape)}
for devices in (1, 8):
    shutil.copy("four.h5", f"resumed{devices}.h5")
    sim = engine.Simulation(engine.load_config(longer), devices=devices)
    run(sim, f"resumed{devices}.h5", resume=True, quiet=True)
run(engine.Simulation(engine.load_config(longer)), "straight.h5", quiet=True)
with open_output("straight.h5") as straight:
    expected = straight.frame("IL2", -1)
    result["frames"] = straight.n_frames
    for devices in (1, 8):
        with open_output(f"resumed{devices}.h5") as out:
            result[f"frames{devices}"] = out.n_frames
            got = out.frame("IL2", -1)
            result[f"diff{devices}"] = float(np.max(np.abs(got - expected)) / np.max(expected))
            total, expected_total = out.summary["IL2_total"][-1], straight.summary["IL2_total"][-1]
            result[f"summary{devices}"] = float(abs(total / expected_total - 1))
"""


def test_checkpoint_written_on_4_devices_resumes_on_1_and_8(tmp_path):
    result = run_child(CHECKPOINT_RESUME, tmp_path)
    assert "4" in result["layout"]
    for devices in (1, 8):
        assert result[f"frames{devices}"] == result["frames"] == 5
        assert result[f"diff{devices}"] <= 1e-12  # float64: the resumed run is the same run
        assert result[f"summary{devices}"] <= 1e-12


# --- mesh construction and host blocks (in this process: one device is enough) -------------


@pytest.mark.parametrize(
    "shape, devices, expected",
    [
        ((64, 64, 64), 8, (8,)),
        ((16, 64, 64), 8, (2, 4)),
        ((8, 8, 8), 4, (2, 2)),
        ((16, 64), 8, (8,)),
        ((8,), 1, (1,)),
    ],
)
def test_auto_mesh_prefers_thick_slabs_then_even_blocks(shape, devices, expected):
    assert parallel.auto_mesh_shape(shape, devices) == expected


def test_auto_mesh_refuses_a_grid_it_cannot_split():
    with pytest.raises(ValueError, match="parallel.mesh: cannot split a 5x7 grid evenly"):
        parallel.auto_mesh_shape((5, 7), 4)


@pytest.mark.parametrize(
    "mesh, message",
    [
        ([2], "needs 2 devices, 1 given"),
        ([1, 1, 1], "3 mesh axes for a 3D grid; give at most 2"),
        ([0], "must be >= 1"),
    ],
)
def test_bad_meshes_name_the_key(mesh, message):
    with pytest.raises(ValueError, match=message):
        parallel.device_mesh(mesh, (8, 8, 8))


def test_one_device_needs_no_mesh_and_too_many_is_an_error():
    assert parallel.device_mesh(None, (8, 8)) is None
    with pytest.raises(ValueError, match=f"--devices 99: only {len(jax.devices())}"):
        parallel.device_mesh("auto", (8, 8), devices=99)


def test_host_parts_of_an_unsharded_array_is_the_whole_array():
    values = np.arange(12.0).reshape(3, 4)
    ((index, block),) = parallel.host_parts(jax.numpy.asarray(values))
    np.testing.assert_array_equal(block[index], values)


def test_split_transforms_equal_single_device_transforms_bitwise(tmp_path):
    """Each DCT of a split field runs as the single-device product does: whole lines on every
    device, the same row-major (lines, n) x (n, n) product, its result kept in that layout.
    Without that, XLA folded the transposes into the product differently, or split the matrix
    instead of the lines, and 3D transforms differed in most voxels (float32). The FFTs of
    long axes too, with whole lines."""
    runs = run_child(
        """
from engine.numerics import parallel
from engine.numerics import spectral
result = {}
for shape, mesh_shape in [((128, 128), [4]), ((32, 32, 16), [2, 2]), ((64, 32, 16), [4, 2])]:
    mesh = parallel.device_mesh(mesh_shape, shape)
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    for inverse in (False, True):
        def transform(x, mesh):
            with parallel.layout(mesh):
                return spectral.basis_transform(x, range(len(shape)), inverse=inverse)
        single = jax.jit(lambda x: transform(x, None))(x)
        split = jax.jit(lambda x: transform(x, mesh))(parallel.place(x, mesh, shape))
        key = f"{shape} {mesh_shape} inverse={inverse}"
        result[key] = int(np.count_nonzero(np.asarray(single) != np.asarray(split)))
        for kinds in [("neumann", "neumann"), ("dirichlet", "neumann")]:
            def fft(x, mesh):
                with parallel.layout(mesh):
                    for axis in range(len(shape)):
                        x = spectral.fft_basis_transform(x, axis, *kinds, inverse=inverse)
                    return x
            single = jax.jit(lambda x: fft(x, None))(x)
            split = jax.jit(lambda x: fft(x, mesh))(parallel.place(x, mesh, shape))
            key = f"FFT {kinds} {shape} {mesh_shape} inverse={inverse}"
            result[key] = int(np.count_nonzero(np.asarray(single) != np.asarray(split)))
""",
        tmp_path,
    )
    assert len(runs) == 18
    assert all(differing == 0 for differing in runs.values()), runs


def test_split_dot_products_equal_single_device_ones_bitwise(tmp_path):
    """`parallel.dot` adds in one order on any split, also where XLA would fuse the factors'
    producers into the sum, or sum a transform's output in the transform's blocks (as in CG
    with a spectral preconditioner), and equals the exact sum to rounding."""
    runs = run_child(
        """
from engine.numerics import parallel
from engine.numerics import spectral
result = {}
for shape, mesh_shape in [((32, 24), [4]), ((16, 16, 8), [2, 2]), ((64, 32, 16), [4, 2])]:
    mesh = parallel.device_mesh(mesh_shape, shape)
    x = np.random.default_rng(0).random(shape).astype(np.float32)
    def dots(x, mesh):
        with parallel.layout(mesh):
            y = jax.numpy.sin(x) * x + 0.5
            z = spectral.basis_transform(y, range(len(shape)), inverse=True)
            return parallel.dot(x, x), parallel.dot(y * (y - x), x), parallel.dot(y, z)
    single = jax.jit(lambda x: dots(x, None))(x)
    split = jax.jit(lambda x: dots(x, mesh))(parallel.place(x, mesh, shape))
    exact = np.sum(x.astype(np.float64) ** 2)
    result[f"{shape} {mesh_shape}"] = dict(
        differing=[float(a) != float(b) for a, b in zip(single, split)],
        error=abs(float(single[0]) - exact) / exact,
    )
""",
        tmp_path,
    )
    assert len(runs) == 3
    for case, outcome in runs.items():
        assert not any(outcome["differing"]), case
        assert outcome["error"] < 1e-6, case


def test_a_fence_is_a_conditional_on_cpus_and_a_plain_call_elsewhere(monkeypatch):
    """`parallel.fence` keeps XLA from fusing across it on CPUs (a branch it cannot see
    through); on accelerators, where FMAs keep split runs from being bitwise anyway, it adds
    nothing to the program."""
    x = jax.numpy.arange(12.0).reshape(3, 4)

    def program():
        return str(jax.make_jaxpr(lambda x: parallel.fence(jax.numpy.sum, x))(x))

    assert "cond" in program()
    assert float(jax.jit(lambda x: parallel.fence(jax.numpy.sum, x))(x)) == 66.0
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    assert "cond" not in program()


def xla_flags_of_a_process(env_flags: str | None, setup: str = "pass") -> str:
    """XLA_FLAGS after `import engine` and `setup` in a fresh process."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if env_flags is not None:
        env["XLA_FLAGS"] = env_flags
    code = f"import engine, os; {setup}; print(os.environ.get('XLA_FLAGS', ''))"
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="XLA's ISA cap is x86-64's"
)
def test_only_a_cpu_split_into_devices_compiles_without_fma():
    """Importing the engine sets no XLA flag; splitting the CPU into devices
    (`parallel.use_cpu_devices`, as `--devices N` does) gives up FMAs, so that split and whole
    runs round alike, and keeps an instruction set the user chose."""
    split = "engine.parallel.use_cpu_devices(4)"
    assert xla_flags_of_a_process(None) == ""
    forced = "--xla_force_host_platform_device_count=4"
    assert xla_flags_of_a_process(forced) == forced
    assert xla_flags_of_a_process(None, split) == "--xla_cpu_max_isa=AVX"
    assert xla_flags_of_a_process("--xla_cpu_max_isa=AVX2", split) == "--xla_cpu_max_isa=AVX2"


def test_a_seed_scenario_on_4_devices_equals_its_run_on_one_bitwise(tmp_path):
    """The sharding tests' model aside, a seed scenario's terms (Hill activation and
    inhibition, killing, recruitment, growth) round alike on any split too: float32, imex."""
    config = Path(__file__).parents[1] / "configs" / "infection_resolution.toml"
    outputs = {}
    for devices in (1, 4):
        outputs[devices] = tmp_path / f"run{devices}.h5"
        done = subprocess.run(
            [sys.executable, "-m", "engine.cli", "run", str(config), "-o", str(outputs[devices])]
            + ["--set", 'time.end="1 h"', "--set", 'time.output_every="30 min"']
            + ["--devices", str(devices), "--quiet"],
            capture_output=True,
            text=True,
            timeout=300,
        )
        assert done.returncode == 0, done.stderr[-2000:]
    with h5py.File(outputs[1]) as one, h5py.File(outputs[4]) as four:
        assert set(one["fields"]) == set(four["fields"])
        for name in one["fields"]:
            assert one["fields"][name].shape[0] == 3, name
            np.testing.assert_array_equal(one["fields"][name][...], four["fields"][name][...])


def test_transforms_inside_shard_map_leave_the_blocks_alone():
    """Inside shard_map (manual mesh axes) each device transforms its own block: `lay_out`
    must not constrain it (benchmarks advance blocks as independent domains this way)."""
    from jax.sharding import Mesh, PartitionSpec

    from engine.numerics import spectral

    mesh = Mesh(np.asarray(jax.devices()[:1]), ("shard_0",))
    values = np.random.default_rng(0).random((8, 6)).astype(np.float32)

    def transform(x):
        return spectral.basis_transform(x, (0, 1))

    spec = PartitionSpec("shard_0")
    blocks = jax.jit(jax.shard_map(transform, mesh=mesh, in_specs=spec, out_specs=spec))
    np.testing.assert_allclose(blocks(values), spectral.basis_transform(values, (0, 1)), rtol=1e-5)


def test_a_multi_process_run_splits_over_every_device(monkeypatch):
    """No process may run the whole grid itself (its blocks would be written, and its totals
    counted, once per process): without a mesh the run is split over all devices, and a
    mesh or --devices that leaves devices out is refused."""
    monkeypatch.setattr(jax, "process_count", lambda: 2)
    mesh = parallel.device_mesh(None, (8, 8))
    assert mesh is not None and mesh.devices.size == len(jax.devices())
    two = [jax.devices()[0]] * 2  # as if each of the two processes had one device
    monkeypatch.setattr(jax, "devices", lambda: two)
    with pytest.raises(ValueError, match="--devices 1: a multi-process run uses all 2 devices"):
        parallel.device_mesh(None, (8, 8), devices=1)
    with pytest.raises(ValueError, match=r"parallel.mesh: \[1\] uses 1 of the 2 devices"):
        parallel.device_mesh([1], (8, 8))
