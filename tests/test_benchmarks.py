"""The benchmarks run end to end on a tiny matrix, so that they cannot rot (those runs with
-m slow); their helpers are checked in the default run."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))

import bench_solver  # noqa: E402


@pytest.mark.slow  # runs the benchmark script
def test_bench_solver_quick_writes_every_case(tmp_path, capsys):
    output = tmp_path / "solver.json"
    bench_solver.main(
        ["--quick", "--grids", "16^2", "8^3", "--fields", "2", "--output", str(output)]
    )
    result = json.loads(output.read_text())
    rows = result["rows"]
    assert {(r["grid"], r["stepper"]) for r in rows} == {
        (grid, stepper) for grid in ("16^2", "8^3") for stepper in bench_solver.STEPPERS
    }
    for r in rows:
        assert r["seconds"] > 0 and r["compile_s"] > 0 and r["numpy_s"] > 0 and r["xla_s"] > 0
        assert r["updates_per_s"] == pytest.approx(r["voxels"] * 2 / r["seconds"])
        least = 5 if r["stepper"] in bench_solver.EXPLICIT else 2  # --quick's --steps
        assert r["steps_per_call"] >= least
        assert r["page_faults_per_call"] >= 0
    assert result["copy_bandwidth"] > 0 and result["copy_method"] == bench_solver.COPY_METHOD
    assert output.with_suffix(".png").stat().st_size > 0
    assert "euler-compensated" in capsys.readouterr().out


def test_timed_calls_advance_as_many_steps_as_fill_the_call_time():
    """A probe call of the least steps sets the count; every timed call then advances it."""
    import time

    calls = []

    def advance(steps):  # at least 1 ms a step
        calls.append(steps)
        time.sleep(1e-3 * steps)

    from common import timed_steps

    timed = timed_steps(advance, 3, call_seconds=0.03, repeats=4)
    steps = timed["steps_per_call"]
    assert 3 <= steps <= 30  # the probe took at least 1 ms a step
    assert calls == [3, 3] + [steps] * 5  # compile, probe, warm-up and 4 timed calls
    assert timed["seconds"] >= 1e-3
    assert timed_steps(advance, 4, 0.0, 1)["steps_per_call"] == 4


@pytest.mark.parametrize("text, shape", [("256^3", (256,) * 3), ("64x32", (64, 32))])
def test_grid_labels_round_trip(text, shape):
    assert bench_solver.parse_grid(text) == shape
    assert bench_solver.grid_label(shape) == text


@pytest.mark.slow  # runs the benchmark script
@pytest.mark.parametrize("adaptive", [False, True])
def test_tolerance_benchmark_measures_error_against_each_tolerance(tmp_path, adaptive):
    import bench_tolerance
    import make_readme

    output = tmp_path / "tolerance-cpu-cpu.json"
    argv = ["--configs", "infection_resolution_3d", "--size", "12", "--end", "2 h"]
    argv += ["--adaptive"] * adaptive
    bench_tolerance.main([*argv, "--tolerances", "1e-2", "1e-4", "--output", str(output)])
    result = json.loads(output.read_text())
    assert result["adaptive"] is adaptive
    rows = result["rows"]
    assert [r["tolerance"] for r in rows] == [1e-2, 1e-4]
    assert all(r["ratio"] == r["error"] / r["tolerance"] and r["steps"] > 0 for r in rows)
    assert 0 < rows[1]["error"] < rows[0]["error"] < 1e-2  # tighter, closer to the reference
    # the check (about 7x the reference's own error) below the finest run's error
    assert 0 < result["reference_check"]["infection_resolution_3d"] < rows[1]["error"]
    text = "\n".join(make_readme.tolerance_section(tmp_path))
    assert f"| infection_resolution_3d | {rows[0]['ratio']:.2f} ({rows[0]['steps']}) |" in text
    assert ("with adaptive steps" in text) is adaptive


@pytest.mark.slow  # runs the benchmark script
def test_time_to_solution_runs_and_measures_error(tmp_path):
    import bench_time_to_solution

    output = tmp_path / "tts.json"
    argv = ["--configs", "il2_therapy_3d", "--steppers", "imex", "--size", "8", "--end", "20 min"]
    bench_time_to_solution.main([*argv, "--output", str(output)])
    rows = json.loads(output.read_text())["rows"]
    assert [r["stepper"] for r in rows] == ["reference", "imex"]
    assert all(r["wall_s"] > r["compile_s"] > 0 and r["steps"] > 0 for r in rows)
    assert 0 < rows[1]["error"] < 0.05  # imex against the converged reference
    assert rows[1]["error"] == max(rows[1]["errors"].values())  # over the trajectory
    assert 0 < rows[1]["end_error"] == max(rows[1]["end_errors"].values())


def test_trajectory_error_is_relative_to_the_largest_size_over_the_frames():
    import bench_time_to_solution

    deviation = bench_time_to_solution.Deviation()
    deviation.add({"a": np.array([0.0, 5.0])}, {"a": np.array([0.0, 10.0])})  # |d| 5, |ref| 10
    deviation.add({"a": np.array([1e-20])}, {"a": np.array([1e-25])})  # vanished by the end
    assert deviation.relative() == {"a": pytest.approx(0.5)}
    assert deviation.end == {"a": pytest.approx(1e5 - 1)}


@pytest.mark.slow  # runs the benchmark script
def test_time_to_solution_without_reference_gives_wall_times_only(tmp_path):
    import bench_time_to_solution

    output = tmp_path / "tts.json"
    argv = ["--configs", "il2_therapy_3d", "--steppers", "imex", "--size", "8", "--end", "20 min"]
    bench_time_to_solution.main([*argv, "--no-reference", "--output", str(output)])
    result = json.loads(output.read_text())
    assert result["reference"] is None
    assert [(r["stepper"], r["error"]) for r in result["rows"]] == [("imex", None)]


@pytest.mark.slow  # runs the benchmark script
def test_bench_solver_without_references_times_only_the_engine(tmp_path):
    output = tmp_path / "solver.json"
    argv = ["--quick", "--grids", "8^3", "--fields", "1", "--steppers", "euler", "--references"]
    bench_solver.main([*argv, "--output", str(output)])
    (row,) = json.loads(output.read_text())["rows"]
    assert row["seconds"] > 0 and not {"numpy_s", "numba_s", "xla_s"} & set(row)


@pytest.mark.slow  # runs the benchmark script
def test_bench_solver_times_the_fused_kernels_on_request(tmp_path):
    output = tmp_path / "solver.json"
    argv = ["--quick", "--grids", "8^3", "--fields", "2", "--steppers", "euler", "imex"]
    bench_solver.main([*argv, "--references", "--kernels", "pallas", "--output", str(output)])
    result = json.loads(output.read_text())
    assert result["kernels"] == "pallas"  # for the explicit steps; imex keeps XLA's
    assert [r["stepper"] for r in result["rows"]] == ["euler", "imex"]


@pytest.mark.slow  # runs the benchmark script
def test_implicit_step_cost_is_measured_in_explicit_steps(tmp_path):
    import implicit_step_cost

    argv = ["--sizes", "8", "--repeats", "1", "--call-seconds", "0.01"]
    output = implicit_step_cost.main([*argv, "--output", str(tmp_path / "cost.json")])
    rows = json.loads(output.read_text())["rows"]
    assert [r["case"] for r in rows] == [
        "explicit ssprk3",
        "imex, neumann",
        "imex, dirichlet face",
        "imex, robin face",
    ]
    unit = rows[0]["seconds"]
    for r in rows:
        assert r["ratio"] == pytest.approx(r["seconds"] / unit)
        assert r["steps_per_call"] >= (10 if r["case"] == "explicit ssprk3" else 2)


@pytest.mark.slow  # runs the benchmark script
def test_scaling_benchmark_measures_sharded_and_isolated_blocks(tmp_path):
    import bench_scaling

    output = tmp_path / "scaling.json"
    argv = ["--devices", "1", "2", "--size", "8", "--steps", "2", "--repeats", "1"]
    bench_scaling.main([*argv, "--cpu-devices", "--output", str(output)])
    rows = json.loads(output.read_text())["rows"]
    assert [(r["scaling"], r["devices"]) for r in rows] == [
        ("strong", 1),
        ("weak", 1),
        ("strong", 2),
        ("weak", 2),
    ]
    assert rows[3]["shape"] == [16, 8, 8]
    assert all(r["seconds"] > 0 and 0 <= r["communication_share"] < 1 for r in rows)


def test_results_tables_regenerate_with_the_verdicts():
    import make_readme

    text = make_readme.results_markdown(Path(__file__).parent.parent / "benchmarks" / "results")
    assert "the Numba stencil (target 0.8x)" in text  # CPU targets
    assert "of the copy bandwidth (target 90%)" in text  # GPU target
    assert "explicit euler-compensated" in text  # which the target also names
    assert "the defaults within 1% in 9.2 s or less" in text  # the vessels problem's target
    assert "at its shipped settings within 1% over its whole run" in text  # the seed scenarios
    assert "| problem | within | cheapest setting |" in text  # work against precision
    # a bound measured against the copy bandwidth of a fresh output per call is restated
    assert "measured with a fresh output per call: against the in-place" in text


def test_copy_bandwidth_flag_is_absent_from_results_measured_in_place():
    import make_readme

    result = {"copy_bandwidth": 5e10, "copy_method": bench_solver.COPY_METHOD}
    assert make_readme._copy_bandwidth(result, 1) == (
        "Copy bandwidth measured in the same run: 50.0 GB/s"
    )
    assert "understates" in make_readme._copy_bandwidth({"copy_bandwidth": 5e10}, 1)


@pytest.mark.parametrize(
    "layout, tiles", [("march", (4, 2, 8)), ("block", (2, 2, 8)), ("copy", (2, 2, 8))]
)
def test_pallas_kernels_lower_to_triton_for_a_gpu(layout, tiles):
    """The kernels trace and lower to Triton on a machine without a GPU (they run only on one:
    bench_pallas_stencil.py checks them against the plain stencil there)."""
    import bench_pallas_stencil
    import jax
    import jax.numpy as jnp
    from jax import export

    step = bench_pallas_stencil.pallas_step((8, 4, 16), jnp.float32, 0.1, 0.99, layout, tiles, 4, 1)
    triton = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
    exported = export.export(jax.jit(step), platforms=["cuda"], disabled_checks=[triton])(
        jax.ShapeDtypeStruct((8, 4, 16), jnp.float32)
    )
    assert "xla.gpu.triton" in exported.mlir_module()
    assert f"grid_x = {8 // tiles[0]}" in exported.mlir_module()


def test_the_tma_copy_lowers_to_mosaic_gpu():
    """The Mosaic GPU copy of bench_pallas_stencil.py: its pipeline of TMA copies lowers for a
    GPU here (Pallas' interpreters do not run such pipelines; the script checks what it
    copies on the GPU), and a grid it cannot split evenly is refused."""
    import bench_pallas_stencil
    import jax
    import jax.numpy as jnp
    from jax import export

    shape, gain = (4, 8, 256), 0.5  # 32 rows of 256: 4 blocks of 8 rows, 2 programs of 2
    step = bench_pallas_stencil.tma_copy_step(shape, jnp.float32, gain, 8, 2, 2)
    text = export.export(jax.jit(step), platforms=["cuda"])(
        jax.ShapeDtypeStruct(shape, jnp.float32)
    ).mlir_module()
    assert "mosaic_gpu" in text and "cp.async.bulk.tensor" in text  # loads through the TMA
    with pytest.raises(ValueError, match="does not split into 3"):
        bench_pallas_stencil.tma_copy_step(shape, jnp.float32, gain, 8, 2, 3)


def test_the_tma_stencil_lowers_to_mosaic_gpu():
    """The Mosaic GPU stencil of bench_pallas_stencil.py: its block and six shifted neighbour
    blocks come through the TMA in a pipeline that lowers for a GPU here (no interpreter runs
    it: the script checks it against the plain stencil on the GPU before timing it); blocks
    beyond the shared memory and grids it cannot split are refused."""
    import bench_pallas_stencil
    import jax
    import jax.numpy as jnp
    from jax import export

    def lowered(shape, *launch):
        step = bench_pallas_stencil.tma_stencil_step(shape, jnp.float32, 0.1, 0.99, *launch)
        return export.export(jax.jit(step), platforms=["cuda"])(
            jax.ShapeDtypeStruct(shape, jnp.float32)
        ).mlir_module()

    text = lowered((4, 16, 512), 8, 256, 2, 4)  # 4 columns of 4 blocks, one per program
    assert "mosaic_gpu" in text and "cp.async.bulk.tensor" in text  # through the TMA
    with pytest.raises(ValueError, match="exceeds available shared memory"):
        lowered((4, 64, 512), 32, 256, 2, 2)
    with pytest.raises(ValueError, match="do not split into 3 programs"):
        bench_pallas_stencil.tma_stencil_step((4, 16, 512), jnp.float32, 0.1, 0.99, 8, 256, 2, 3)
    with pytest.raises(ValueError, match="blocks of 5 x 256"):
        bench_pallas_stencil.tma_stencil_step((4, 16, 512), jnp.float32, 0.1, 0.99, 5, 256, 2, 1)


@pytest.mark.slow  # runs the benchmark script
def test_kernel_tiles_times_every_tile(tmp_path):
    import bench_kernel_tiles

    output = tmp_path / "tiles.json"
    argv = ["--size", "8", "--fields", "1", "--schemes", "euler", "--repeats", "1"]
    bench_kernel_tiles.main([*argv, "--call-seconds", "0.001", "--output", str(output)])
    rows = json.loads(output.read_text())["rows"]
    tried = {(tuple(r["tile"]), r["warps"]) for r in rows}
    assert tried == {(t, w) for t in bench_kernel_tiles.TILES for w in bench_kernel_tiles.WARPS}
    assert all(r["seconds"] > 0 and r["fraction"] > 0 for r in rows)


def test_the_bound_names_the_fastest_stencil_kernel_and_each_copy_apart(tmp_path):
    """The GPU section's bound is the fastest hand-written kernel of the step, never one of
    the copies (which move less and are always faster): those are stated as the ceiling of
    each kind of copy kernel."""
    import shutil

    import make_readme

    results = Path(__file__).parent.parent / "benchmarks" / "results"
    for name in make_readme.CURRENT["gpu"]:
        shutil.copy(results / name, tmp_path / name)
    rows = [
        dict(kernel="engine euler (xla)", seconds=6e-4, fraction=0.6, error=None),
        dict(kernel="copy 4x4x128 w4 s1", seconds=3e-4, fraction=0.85, error=0.0, layout="copy"),
        dict(kernel="tma copy 16x256 f2 p256", seconds=2.8e-4, fraction=0.93, error=0.0),
        dict(kernel="block 4x4x128 w8 s1", seconds=4e-4, fraction=0.79, error=0.0, layout="block"),
        dict(kernel="march 32x8x128 w4 s1", seconds=5e-4, fraction=0.7, error=0.0, layout="march"),
    ]
    rows[2]["layout"] = "tma copy"
    bound = dict(device="gpu", shape=[512] * 3, copy_bandwidth=4e12, copy_method="in place")
    (tmp_path / make_readme.CURRENT["gpu_bound"][0]).write_text(json.dumps(dict(bound, rows=rows)))
    line = next(x for x in make_readme.results_markdown(tmp_path).splitlines() if "Bound" in x)
    assert "the bare step, `block 4x4x128 w8 s1`, ran 0.400 ms per step (79%" in line
    assert "The fastest copy through Pallas (`copy 4x4x128 w4 s1`)" in line and "85%" in line
    assert "The fastest tma copy through Pallas (`tma copy 16x256 f2 p256`)" in line
