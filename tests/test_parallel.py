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
from pathlib import Path

import h5py
import jax
import numpy as np
import pytest

from engine.numerics import parallel


def run_child(child, tmp_path, command: str, *args) -> dict:
    """`tests/children/sharded.py COMMAND ARGS` (JSON arguments) with 8 CPU devices, in
    `tmp_path`: the JSON it prints."""
    arguments = [json.dumps(argument) for argument in args]
    done = subprocess.run(
        child("sharded", command, *arguments),
        capture_output=True,
        text=True,
        timeout=1500,  # 56 compiled cases on 2 cores: about 8 min
        cwd=tmp_path,
    )
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


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


def check_sharded_runs(cases, child, tmp_path):
    """Split runs round as single-device ones, bitwise: the CPU split into devices compiles
    without FMAs (`parallel.reproducible_cpu_math`), each transform sums whole lines as one
    device does (`test_split_transforms_equal_single_device_transforms_bitwise`), CG's dot
    products add in one order on any split (`parallel.dot`), and its right-hand side takes
    its boundary values behind a `parallel.fence` (XLA had combined that sum with the
    right-hand side's own terms differently for split fields). Before, float32 runs
    differed by up to 2e-6 after these 5 steps: chemotaxis up this rough field carries on a
    unit in the last place here and there (float64: 1e-14). Known gap: float32 matrix-product
    transforms along axes of 20 or 24 voxels (not 8, 12 or 16) round differently split than
    whole (XLA's CPU matrix products for those sizes), so such grids are not bitwise."""
    runs = run_child(child, tmp_path, "steppers", cases)
    assert len(runs) == len(cases)
    for case, outcome in runs.items():
        mesh = json.loads(case.split(" ", 4)[-1])
        assert outcome["devices"] == int(np.prod(mesh)), case  # really split
        assert outcome["diff"] == 0, f"{case}: relative difference {outcome['diff']:.2e}"


@pytest.mark.slow
def test_sharded_runs_of_every_stepper_equal_single_device_runs(child, tmp_path):
    check_sharded_runs(FAST_CASES, child, tmp_path)


@pytest.mark.slow
def test_sharded_runs_equal_single_device_runs_over_meshes_dtypes_and_faces(child, tmp_path):
    check_sharded_runs(ALL_CASES, child, tmp_path)


@pytest.mark.slow
def test_split_implicit_steppers_conserve_the_total_and_equal_single_device_runs(child, tmp_path):
    """1,000 float32 steps split over 8 devices conserve the total as one device does
    (tests/test_steppers.py) and stay bitwise equal to the single-device run."""
    cases = [
        (stepper, transport, [16, 16, 8], [4, 2])  # see check_sharded_runs on axis lengths
        for stepper in ("imex", "quasi_steady")
        for transport in ("spectral", "periodic", "cg")
    ]
    for case, outcome in run_child(child, tmp_path, "conservation", cases).items():
        assert outcome["devices"] == 8, case
        for run in ("single", "split"):
            drift = outcome[f"drift_{run}"]
            assert abs(drift) <= 1e-6, f"{case} {run}: relative drift {drift:.2e}"
        assert outcome["diff"] == 0, f"{case}: relative difference {outcome['diff']:.2e}"


@pytest.mark.slow
def test_checkpoint_written_on_4_devices_resumes_on_1_and_8(child, tmp_path, core_uptake_config):
    """6 min written on 4 devices, resumed to 12 min on 1 and on 8: float64, imex, with
    secretion added to the shared uptake config."""
    config = core_uptake_config({"time.dtype": "float64"})
    secretion = {"type": "secretion", "species": "IL2", "by": "T", "rate": "5 molecule/s"}
    config["terms"].insert(0, secretion)
    result = run_child(child, tmp_path, "checkpoint", config)
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
        ((32, 64, 64), 8, (8,)),  # slabs of exactly 4 voxels
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
    with pytest.raises(ValueError, match="cannot split a 64 grid"):  # its last axis stays whole
        parallel.auto_mesh_shape((64,), 2)


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
    assert parallel.device_mesh(None, (8, 8), devices=1) is None  # --devices 1: unsplit
    with pytest.raises(ValueError, match=f"--devices 99: only {len(jax.devices())}"):
        parallel.device_mesh("auto", (8, 8), devices=99)


def test_a_mesh_must_divide_the_grid(monkeypatch):
    """Blocks are equal: a mesh axis that does not divide its grid axis is refused by name."""
    two = [jax.devices()[0]] * 2  # as if there were two devices
    monkeypatch.setattr(jax, "devices", lambda: two)
    with pytest.raises(ValueError, match="grid axis 0 has 5 voxels, not divisible into 2"):
        parallel.device_mesh([2], (5, 8))


def test_host_parts_of_an_unsharded_array_is_the_whole_array():
    values = np.arange(12.0).reshape(3, 4)
    ((index, block),) = parallel.host_parts(jax.numpy.asarray(values))
    np.testing.assert_array_equal(block[index], values)


@pytest.mark.parametrize(  # explicit by default; imex (CG solves) and the others with -m slow
    "stepper", [pytest.param(s, marks=pytest.mark.slow) if s != "explicit" else s for s in STEPPERS]
)
def test_a_run_on_a_one_device_mesh_equals_the_run_without_one(stepper, core_uptake_config):
    """In this process (splitting the CPU into devices takes a process of its own: the tests
    above and below, -m slow): the sharded program (layouts, fences, dot products in one
    order) on a mesh of this one device gives the unsharded run's numbers, bitwise; in 2D,
    with robin faces, so that imex solves by CG."""
    from engine import Simulation, load_config

    changes = {
        "time.stepper": stepper,
        "grid": {"shape": [16, 16], "spacing": "10 um", "boundary": {"robin": {"h": 0.5}}},
        "regions.core.sphere": {"center": ["80 um", "80 um"], "radius": "30 um"},
    }
    cfg = load_config(core_uptake_config(changes))
    runs = []
    for mesh in (None, [1]):
        sim = Simulation(cfg, mesh=mesh)
        state = sim.initial_state()
        dt = 20.0 if stepper != "explicit" else sim.time_step(state)
        fields = sim.advance_steps(state.fields, 0.0, dt, 5)
        runs.append({name: np.asarray(value) for name, value in fields.items()})
    assert sim.mesh is not None and sim.mesh.devices.size == 1
    for name, whole in runs[0].items():
        np.testing.assert_array_equal(runs[1][name], whole, err_msg=name)


@pytest.mark.slow
def test_split_transforms_equal_single_device_transforms_bitwise(child, tmp_path):
    """Each DCT of a split field runs as the single-device product does: whole lines on every
    device, the same row-major (lines, n) x (n, n) product, its result kept in that layout.
    Without that, XLA folded the transposes into the product differently, or split the matrix
    instead of the lines, and 3D transforms differed in most voxels (float32). The FFTs of
    long axes too, with whole lines."""
    runs = run_child(child, tmp_path, "transforms")
    assert len(runs) == 18
    assert all(differing == 0 for differing in runs.values()), runs


@pytest.mark.slow
def test_split_dot_products_equal_single_device_ones_bitwise(child, tmp_path):
    """`parallel.dot` adds in one order on any split, also where XLA would fuse the factors'
    producers into the sum, or sum a transform's output in the transform's blocks (as in CG
    with a spectral preconditioner), and equals the exact sum to rounding."""
    runs = run_child(child, tmp_path, "dots")
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


def xla_flags_of_a_process(child, env_flags: str | None, *devices: int) -> str:
    """XLA_FLAGS after `import engine` (and `parallel.use_cpu_devices(DEVICES)` if given) in a
    fresh process started with XLA_FLAGS=`env_flags` (None: unset)."""
    env = {k: v for k, v in os.environ.items() if k != "XLA_FLAGS"}
    if env_flags is not None:
        env["XLA_FLAGS"] = env_flags
    done = subprocess.run(
        child("xla_flags", *devices), capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout.strip()


@pytest.mark.slow
@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="XLA's ISA cap is x86-64's"
)
def test_only_a_cpu_split_into_devices_compiles_without_fma(child):
    """Importing the engine sets no XLA flag; splitting the CPU into devices
    (`parallel.use_cpu_devices`, as `--devices N` does) gives up FMAs, so that split and whole
    runs round alike, and keeps an instruction set the user chose."""
    assert xla_flags_of_a_process(child, None) == ""
    forced = "--xla_force_host_platform_device_count=4"
    assert xla_flags_of_a_process(child, forced) == forced
    assert xla_flags_of_a_process(child, None, 4) == "--xla_cpu_max_isa=AVX"
    assert xla_flags_of_a_process(child, "--xla_cpu_max_isa=AVX2", 4) == "--xla_cpu_max_isa=AVX2"


@pytest.mark.skipif(
    platform.machine().lower() not in ("x86_64", "amd64"), reason="XLA's ISA cap is x86-64's"
)
def test_reproducible_cpu_math_caps_the_instruction_set_unless_the_user_chose_one(monkeypatch):
    """In this process (the flags only take effect in a fresh one): what splitting the CPU
    asks for (`parallel.reproducible_cpu_math`) adds the AVX cap to the user's flags, and
    keeps a cap the user set."""
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4")
    parallel.reproducible_cpu_math()
    assert os.environ["XLA_FLAGS"] == (
        "--xla_force_host_platform_device_count=4 --xla_cpu_max_isa=AVX"
    )
    monkeypatch.setenv("XLA_FLAGS", "--xla_cpu_max_isa=AVX2")
    parallel.reproducible_cpu_math()
    assert os.environ["XLA_FLAGS"] == "--xla_cpu_max_isa=AVX2"


@pytest.mark.slow
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
