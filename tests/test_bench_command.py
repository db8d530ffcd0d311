"""`ilsim bench`: a quick run on a tinier matrix writes the documented JSON, prints its table,
plots its figures, compares with an earlier run, and refuses bad outputs and inputs."""

from __future__ import annotations

import contextlib
import datetime
import io
import json
import math
import os
import re
import resource
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from engine.cli.main import main
from engine.numerics import memory
from engine.runs import bench

GRIDS = ("8^3", "16^2")
DOC = Path(__file__).resolve().parents[1] / "docs" / "benchmarking.md"

TOP_KEYS = {"schema", "created", "mode", "device", "versions", "copy_bandwidth", "rows"}
TOP_KEYS |= {"skipped", "largest", "kernels", "complete"}
DEVICE_KEYS = {"name", "platform", "kind", "count", "memory"}
VERSION_KEYS = {"ilsim", "jax", "jaxlib", "numpy", "python"}
ROW_KEYS = {
    "grid",
    "voxels",
    "fields",
    "dtype",
    "stepper",
    "dt",
    "seconds_per_step",
    "steps_per_call",
    "updates_per_s",
    "bandwidth",
    "bandwidth_fraction",
    "explicit_steps",
    "compile_s",
    "peak_bytes",
    "peak_bytes_per_voxel_field",
    "kernels",
}
LARGEST_KEYS = {"fields", "dtype", "memory", "predicted_shape", "bytes_per_voxel_field"}
LARGEST_KEYS |= {"peak_bytes"}


def ilsim(*args: str) -> tuple[int, str, str]:
    """`ilsim ARGS` in this process: exit status, stdout, stderr."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        status = main(list(args))
    return status, out.getvalue(), err.getvalue()


def test_a_quick_run_of_one_grid_writes_its_rows_table_and_figure(tmp_path):
    """The default run's `ilsim bench`: one grid, one field (the quick matrix of GRIDS, with
    the checks below, runs with -m slow: a benchmark)."""
    output = tmp_path / "bench.json"
    argv = ["--quick", "--grids", "16^2", "--fields", "1", "-o", str(output)]
    status, printed, errors = ilsim("bench", *argv)
    assert status == 0, errors
    result = json.loads(output.read_text())
    assert set(result) == TOP_KEYS and result["schema"] == bench.SCHEMA
    assert all(set(r) == ROW_KEYS for r in result["rows"])
    assert result["complete"] and result["kernels"] == "auto"  # on a CPU: XLA's everywhere
    assert result["mode"] == "quick"
    assert datetime.datetime.fromisoformat(result["created"]).utcoffset() == datetime.timedelta(0)
    assert {r["kernels"] for r in result["rows"]} == {"xla"}
    assert {(r["grid"], r["fields"], r["dtype"], r["stepper"]) for r in result["rows"]} == {
        ("16^2", 1, dtype, stepper)
        for dtype in ("float32", "float64")
        for stepper in bench.STEPPERS
        if dtype == "float32" or stepper != "explicit-uncompensated"
    }
    rows = [line for line in printed.splitlines() if re.match(r"\s+\d+(\^\d|x)", line)]
    assert len(rows) == len(result["rows"])
    assert output.with_suffix(".png").stat().st_size > 0


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One `ilsim bench --quick` on GRIDS: (JSON path, its result, what it printed)."""
    output = tmp_path_factory.mktemp("bench") / "bench.json"
    status, printed, errors = ilsim("bench", "--quick", "--grids", *GRIDS, "-o", str(output))
    assert status == 0, errors
    return output, json.loads(output.read_text()), printed


@pytest.mark.slow  # a timed run of the quick matrix, as are the tests that read it
def test_the_json_has_every_documented_key_and_consistent_figures(quick):
    _, result, _ = quick
    documented = set(re.findall(r"^\| `(\w+)` \|", DOC.read_text(), re.MULTILINE))
    assert set(result) == TOP_KEYS and set(result["device"]) == DEVICE_KEYS
    assert set(result["versions"]) == VERSION_KEYS
    assert all(set(r) == ROW_KEYS for r in result["rows"])
    assert all(set(e) == LARGEST_KEYS for e in result["largest"].values())
    assert TOP_KEYS | DEVICE_KEYS | ROW_KEYS | LARGEST_KEYS <= documented
    assert result["schema"] == bench.SCHEMA and result["mode"] == "quick"
    assert result["skipped"] == []
    assert result["device"]["name"] == bench.device_name() and result["device"]["count"] >= 1
    bandwidth = result["copy_bandwidth"]
    assert math.isfinite(bandwidth) and bandwidth > 0

    cases = {(r["grid"], r["fields"], r["dtype"], r["stepper"]): r for r in result["rows"]}
    assert set(cases) == {
        (grid, fields, dtype, stepper)
        for grid in GRIDS
        for fields in (1, 4)
        for dtype in ("float32", "float64")
        for stepper in bench.STEPPERS
        if dtype == "float32" or stepper != "explicit-uncompensated"
    }
    for (grid, fields, dtype, stepper), r in cases.items():
        figures = [r[k] for k in ROW_KEYS - {"grid", "fields", "dtype", "stepper", "kernels"}]
        assert all(math.isfinite(v) and v > 0 for v in figures), (r, figures)
        assert r["voxels"] == math.prod(bench.parse_grid(grid))
        assert r["updates_per_s"] == pytest.approx(r["voxels"] * fields / r["seconds_per_step"])
        itemsize = np.dtype(dtype).itemsize
        assert r["bandwidth"] == pytest.approx(2 * itemsize * r["updates_per_s"])
        assert r["bandwidth_fraction"] == pytest.approx(r["bandwidth"] / bandwidth)
        unit = cases[grid, fields, dtype, "explicit"]["seconds_per_step"]
        assert r["explicit_steps"] == pytest.approx(r["seconds_per_step"] / unit)
        assert r["peak_bytes_per_voxel_field"] == pytest.approx(
            r["peak_bytes"] / (r["voxels"] * fields)
        )
        assert r["steps_per_call"] >= (2 if stepper == "imex" else 5)

    assert set(result["largest"]) == {"explicit", "imex"}
    for entry in result["largest"].values():
        (n, *others) = entry["predicted_shape"]
        assert others == [n, n] and n > 16 and entry["fields"] == 6
        assert 0.5 * entry["memory"] < entry["peak_bytes"] <= entry["memory"]
        assert entry["bytes_per_voxel_field"] == pytest.approx(entry["peak_bytes"] / (6 * n**3))


@pytest.mark.slow
def test_the_table_prints_every_case(quick):
    _, result, printed = quick
    lines = printed.splitlines()
    assert bench.HEADER in lines
    rows = [line.split() for line in lines if re.match(r"\s+\d+(\^\d|x)", line)]
    assert len(rows) == len(result["rows"])
    for words, r in zip(rows, result["rows"]):
        assert words[:4] == [r["grid"], str(r["fields"]), r["dtype"], r["stepper"]]
        assert float(words[4]) == pytest.approx(1e3 * r["seconds_per_step"], abs=6e-4)
        assert float(words[6].rstrip("%")) == pytest.approx(100 * r["bandwidth_fraction"], abs=0.06)
        assert float(words[7]) == pytest.approx(r["explicit_steps"], abs=6e-3)
    assert sum("largest 3D grid of 6 float32 fields" in line for line in lines) == 2


@pytest.mark.slow
def test_the_figure_has_a_line_per_series_with_the_json_figures(quick):
    output, result, _ = quick
    assert output.with_suffix(".png").stat().st_size > 0
    figure = bench.figure(result)
    assert result["device"]["name"] in figure.get_suptitle()
    plotted, copy_lines = {}, {}
    for ax in figure.axes:
        assert (ax.get_xscale(), ax.get_yscale()) == ("log", "log")
        for line in ax.get_lines():
            label = f"{ax.get_title()}: {line.get_label()}"
            target = copy_lines if "copy bandwidth" in label else plotted
            assert label not in target
            target[label] = (list(line.get_xdata()), list(line.get_ydata()))
    expected = {}
    for r in sorted(result["rows"], key=lambda r: r["voxels"]):
        ndim = len(bench.parse_grid(r["grid"]))
        s = "s" if r["fields"] > 1 else ""
        label = f"{ndim}D grids: {r['stepper']}, {r['fields']} field{s}, {r['dtype']}"
        xs, ys = expected.setdefault(label, ([], []))
        xs.append(r["voxels"])
        ys.append(r["updates_per_s"])
    assert plotted == expected
    for label, (_, ys) in copy_lines.items():
        dtype = label.rsplit(", ", 1)[1]
        assert ys[0] == result["copy_bandwidth"] / (2 * np.dtype(dtype).itemsize)
    assert len(copy_lines) == 2 * len(GRIDS)  # per panel, per dtype


@pytest.mark.slow  # a second timed run of the matrix
def test_compare_prints_the_ratios_to_an_earlier_run(quick, tmp_path):
    output, result, _ = quick
    old = json.loads(output.read_text())
    old["device"]["name"] = "gpu-Elsewhere"
    del old["kernels"]  # as a result written before it was recorded: XLA's kernels
    dropped = old["rows"].pop(0)
    for r in old["rows"]:
        r["seconds_per_step"] *= 3.0
    doctored = tmp_path / "old.json"
    doctored.write_text(json.dumps(old))
    new_path = tmp_path / "new.json"
    argv = ["--quick", "--grids", GRIDS[0], "--fields", "1", "-o", str(new_path)]
    argv += ["--compare", str(doctored)]
    status, printed, errors = ilsim("bench", *argv)
    assert status == 0, errors
    new = json.loads(new_path.read_text())
    comparison = printed.split(f"compared with {doctored}:")[1]
    assert "gpu-Elsewhere" in comparison and new["device"]["name"] in comparison
    assert "kernels auto); old: gpu-Elsewhere" in comparison and "kernels xla)" in comparison
    ratios = {
        tuple(words[:4]): float(words[6])
        for words in (line.split() for line in comparison.splitlines())
        if len(words) == 7 and re.match(r"\d+(\^\d|x)", words[0])
    }
    before = {(r["grid"], str(r["fields"]), r["dtype"], r["stepper"]): r for r in old["rows"]}
    expected = {
        key: r["seconds_per_step"] / before[key]["seconds_per_step"]
        for r in new["rows"]
        if (key := (r["grid"], str(r["fields"]), r["dtype"], r["stepper"])) in before
    }
    assert len(expected) == len(new["rows"]) - 1  # the dropped row is new's first
    assert (dropped["grid"], str(dropped["fields"]), dropped["dtype"]) == tuple(
        next(iter(ratios))[:3]
    )
    assert ratios.keys() == expected.keys()
    for key, ratio in ratios.items():
        assert ratio == pytest.approx(expected[key], abs=6e-4)


def test_existing_outputs_are_kept_without_overwrite(tmp_path):
    output = tmp_path / "bench.json"
    output.write_text('{"schema": "an earlier run"}')
    before = output.read_text()
    status, printed, errors = ilsim("bench", "--quick", "-o", str(output))
    assert status == 2 and printed == ""
    assert errors.strip() == f"ilsim: error: {output} exists; pass --overwrite to replace it"
    assert output.read_text() == before
    figure = tmp_path / "taken.png"
    figure.write_bytes(b"")
    status, _, errors = ilsim("bench", "-o", str(tmp_path / "b.json"), "--figure", str(figure))
    assert status == 2 and f"{figure} exists" in errors and len(errors.splitlines()) == 1


OLD = dict(
    schema=bench.SCHEMA,
    device=dict(name="cpu-old"),
    created="2025-01-01T00:00:00+00:00",
    copy_bandwidth=1e9,
    rows=[dict(grid="8^2", fields=1, dtype="float32", stepper="explicit", seconds_per_step=1e-3)],
)
"""What --compare reads of an earlier result."""


@pytest.mark.parametrize(
    "text, why",
    [
        ('{"rows": []}', 'no "schema": "ilsim-bench/1"'),
        ("not json", "not an ilsim"),
        (None, "no such file"),
        (json.dumps({"schema": bench.SCHEMA}), 'no "device" name'),
        (json.dumps({**OLD, "created": None}), 'no "created" date'),
        (json.dumps({**OLD, "copy_bandwidth": 0}), "copy_bandwidth 0: not a positive number"),
        (json.dumps({**OLD, "rows": None}), 'no "rows" list'),
        (json.dumps({**OLD, "rows": [{"grid": "8^2"}]}), "rows[0]: not a case"),
        (
            json.dumps({**OLD, "rows": [{**OLD["rows"][0], "seconds_per_step": 0}]}),
            "rows[0]: not a case (grid, fields, dtype, stepper) with a positive seconds_per_step",
        ),
    ],
)
def test_a_compare_file_that_is_not_a_bench_result_exits_2(tmp_path, text, why):
    """Refused before the run when it lacks what the comparison reads (a run and its files,
    then KeyError or ZeroDivisionError, before); `OLD` is read."""
    old = tmp_path / "old.json"
    if text is not None:
        old.write_text(text)
    argv = ["--quick", "--grids", "8^2", "--fields", "1", "-o", str(tmp_path / "b.json")]
    status, printed, errors = ilsim("bench", *argv, "--compare", str(old))
    assert status == 2 and printed == "" and len(errors.splitlines()) == 1
    assert why in errors and f"--compare {old}" in errors and "earlier ilsim bench" in errors
    assert not (tmp_path / "b.json").exists() and not (tmp_path / "b.png").exists()
    old.write_text(json.dumps(OLD))
    assert bench.load_result(old) == OLD


def test_the_largest_grid_fits_the_memory_and_steps_there():
    """Within 20 MB (a stand-in for a device's memory), the predicted cube's compiled peak
    fits and one step runs on it."""
    budget = 20e6
    entry = bench.largest_grid("imex", budget, confirm=True)
    n = entry["predicted_shape"][0]
    assert 0.5 * budget < entry["peak_bytes"] <= budget
    assert (n + 2) ** 3 * 6 * entry["bytes_per_voxel_field"] > budget
    assert entry["confirmed"]["seconds"] > 0
    assert entry["confirmed"]["process_peak_bytes"] > entry["peak_bytes"]  # and the process's


def test_a_stopped_run_keeps_every_case_it_measured(tmp_path, monkeypatch):
    """Ctrl-C during the third case: exit 130, the JSON holds the first two (rewritten whole
    after each, `complete` false, nothing left beside it), no figure."""
    measure, calls = bench.measure_case, []

    def stopped_at_the_third(*args, **kwargs):
        calls.append(args)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return measure(*args, **kwargs)

    monkeypatch.setattr(bench, "measure_case", stopped_at_the_third)
    output = tmp_path / "bench.json"
    argv = ["--quick", "--grids", "8^3", "--fields", "1", "-o", str(output)]
    status, printed, errors = ilsim("bench", *argv)
    assert status == 130 and "interrupted" in errors and str(output) in errors
    result = json.loads(output.read_text())
    assert not result["complete"] and result["largest"] == {}
    assert [r["stepper"] for r in result["rows"]] == ["explicit", "explicit-uncompensated"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bench.json"]


def test_kernels_apply_to_the_explicit_steps_and_each_row_says_which_ran():
    assert bench.case_options("explicit", "pallas")["kernels"] == "pallas"
    assert bench.case_options("explicit-uncompensated", "xla")["kernels"] == "xla"
    assert "kernels" not in bench.case_options("imex", "pallas")  # XLA's alone
    timing = dict(least_steps=1, call_seconds=0.0, repeats=1)
    options = bench.case_options("explicit", "pallas")
    assert bench.measure_case((8, 8, 8), 1, "float32", options, **timing)["kernels"] == "pallas"
    options = bench.case_options("explicit", "auto")  # this CPU's default
    assert bench.measure_case((8, 8, 8), 1, "float32", options, **timing)["kernels"] == "xla"


def test_a_case_beyond_the_memory_is_skipped_before_its_fields_are_made():
    timing = dict(least_steps=1, call_seconds=0.0, repeats=1)
    options = bench.STEPPERS["explicit"]
    assert bench.measure_case((8, 8, 8), 1, "float32", options, **timing, memory=1e3) is None


def test_the_process_peak_is_the_process_own_when_started_from_a_larger_one():
    """`peak_process_bytes` in a child that this process starts while holding 256 MB more:
    the child's peak is its own (its Python and NumPy), less than this process's resident
    set, and it grows by what the child then allocates."""
    ballast = np.ones(2**25)  # noqa: F841 (held, 256 MB resident)
    here = memory.process_bytes()
    script = (
        "import numpy as np; from engine.numerics.memory import peak_process_bytes as peak; "
        "before = peak(); block = np.ones(2**24); print(before, peak())"
    )
    ran = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True)
    before, after = map(int, ran.stdout.split())
    assert before < here - 2**28, (before, here)
    assert after - before == pytest.approx(2**27, rel=0.1)  # 128 MB of float64 ones


def test_the_default_outputs_are_named_after_the_device(tmp_path, monkeypatch):
    """docs/benchmarking.md: the JSON defaults to ilsim-bench-<device>.json in the current
    folder and the figure to its name with .png; either existing is refused (exit 2)."""
    monkeypatch.chdir(tmp_path)
    name = f"ilsim-bench-{bench.device_name()}"
    for taken in (f"{name}.json", f"{name}.png"):
        (tmp_path / taken).write_text("earlier")
        status, printed, errors = ilsim("bench", "--quick", "--grids", "8^3", "--fields", "1")
        assert (status, printed) == (2, "")
        assert errors == f"ilsim: error: {taken} exists; pass --overwrite to replace it\n"
        (tmp_path / taken).unlink()


@pytest.mark.parametrize(
    "paths, message",
    [
        (["--figure={tmp}/bench.xyz"], "unknown figure format '.xyz'"),
        (["--output={tmp}/no/bench.json"], "folder {tmp}/no does not exist"),
        (["--output={tmp}/no/bench.json", "--figure={tmp}/b.png"], "folder {tmp}/no does not"),
        (["-o{tmp}/b.png", "--figure={tmp}/b.png"], "--figure {tmp}/b.png: the same file as -o"),
        (["--output={tmp}/b.png"], "--figure {tmp}/b.png: the same file as -o {tmp}/b.png"),
    ],
)
def test_an_output_that_cannot_be_written_is_refused_before_the_run(tmp_path, paths, message):
    """Checked before a run, not after it: nothing measured, printed or written."""
    argv = ["--quick", "--grids", "8^3", "--fields", "1", "-o", str(tmp_path / "bench.json")]
    status, printed, errors = ilsim("bench", *argv, *(p.format(tmp=tmp_path) for p in paths))
    assert (status, printed) == (2, "") and len(errors.splitlines()) == 1
    assert message.format(tmp=tmp_path) in errors
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("fields", [["0"], ["1", "-1"]])
def test_fewer_than_one_field_is_refused_before_the_run(tmp_path, fields):
    """--fields 0 ran into ZeroDivisionError and --fields -1 measured nothing, exit 0."""
    argv = ["--quick", "--grids", "8^2", "--fields", *fields, "-o", str(tmp_path / "b.json")]
    status, printed, errors = ilsim("bench", *argv)
    assert (status, printed) == (2, "")
    assert errors == f"ilsim: error: --fields {fields[-1]}: give a number of fields, at least 1\n"
    assert not any(tmp_path.iterdir())


def test_a_result_is_replaced_whole_or_not_at_all(tmp_path, request):
    """write_result writes beside the file and renames it: a write stopped halfway leaves the
    earlier result whole, and nothing beside it."""
    path = bench.write_result({"schema": bench.SCHEMA, "rows": []}, tmp_path / "bench.json")
    earlier = path.read_text()

    request.getfixturevalue("write_text_stops_halfway")  # after the earlier file is written
    with pytest.raises(KeyboardInterrupt):
        bench.write_result({"schema": bench.SCHEMA, "rows": [{"grid": "8^3"}]}, path)
    assert path.read_text() == earlier
    assert [p.name for p in tmp_path.iterdir()] == ["bench.json"]


CASE = dict(dt=60.0, seconds=2e-3, steps_per_call=10, compile_s=0.5, peak_bytes=8192)


def test_a_row_holds_the_documented_figures_of_its_case():
    """docs/benchmarking.md's row of a measured case: updates = voxels x fields / seconds,
    bandwidth = 2 x itemsize x updates, its fraction of the copy bandwidth, the cost in
    explicit steps (null without the explicit row) and peak bytes per voxel and field; the
    table shows milliseconds per step."""
    row = bench.row_of((16, 8), 4, "float64", "imex", dict(CASE, kernels="xla"), 1e9, 1e-3)
    assert row == pytest.approx(
        dict(
            grid="16x8", voxels=128, fields=4, dtype="float64", stepper="imex", dt=60.0,
            seconds_per_step=2e-3, steps_per_call=10, updates_per_s=2.56e5,
            bandwidth=4.096e6, bandwidth_fraction=4.096e-3, explicit_steps=2.0,
            compile_s=0.5, peak_bytes=8192, peak_bytes_per_voxel_field=16.0, kernels="xla",
        )
    )  # fmt: skip
    words = bench.format_row(row).split()
    assert words[:5] == ["16x8", "4", "float64", "imex", "2.000"]
    assert (
        bench.row_of((8,), 1, "float32", "imex", dict(CASE, kernels="xla"), 1e9, None)[
            "explicit_steps"
        ]
        is None
    )


def test_kernels_reach_the_cases_and_explicit_steps_are_null_without_their_row(
    tmp_path, monkeypatch
):
    """`--kernels xla` reaches every explicit case and the JSON; each row's explicit_steps is
    relative to the explicit row of its own grid, fields and dtype, and null where that row
    was skipped (beyond the memory), never another case's. Cases measured by a stand-in."""
    asked = []

    def measured(shape, n_fields, dtype, options, **timing):
        asked.append(options)
        if options.get("compensated") and n_fields == 4:
            return None
        return dict(CASE, seconds=1e-3 * n_fields, page_faults_per_call=0, kernels="xla")

    unknown = dict(predicted_shape=None, bytes_per_voxel_field=None, peak_bytes=None)
    monkeypatch.setattr(bench, "measure_case", measured)
    monkeypatch.setattr(bench, "copy_bandwidth", lambda repeats: 1e9)
    monkeypatch.setattr(
        bench, "largest_grid", lambda s, memory, confirm: dict(unknown, fields=6, dtype="float32")
    )
    output = tmp_path / "bench.json"
    argv = ["--quick", "--grids", "8^2", "--kernels", "xla", "-o", str(output)]
    assert ilsim("bench", *argv)[0] == 0
    result = json.loads(output.read_text())
    assert result["kernels"] == "xla"
    assert {o["kernels"] for o in asked if o["stepper"] == "explicit"} == {"xla"}
    assert result["skipped"] == [
        dict(grid="8^2", fields=4, dtype=dtype, stepper="explicit")
        for dtype in ("float32", "float64")
    ]
    steps = {(r["fields"], r["dtype"], r["stepper"]): r["explicit_steps"] for r in result["rows"]}
    assert steps == {
        (1, "float32", "explicit"): 1.0,
        (1, "float32", "explicit-uncompensated"): 1.0,
        (1, "float32", "imex"): 1.0,
        (4, "float32", "explicit-uncompensated"): None,
        (4, "float32", "imex"): None,
        (1, "float64", "explicit"): 1.0,
        (1, "float64", "imex"): 1.0,
        (4, "float64", "imex"): None,
    }


def _result(name, created, bandwidth, rows, **more) -> dict:
    """A bench result of device `name` with these rows and copy bandwidth (bytes/s)."""
    return dict(
        schema=bench.SCHEMA,
        device=dict(name=name),
        created=created,
        rows=rows,
        copy_bandwidth=bandwidth,
        **more,
    )


def test_compare_prints_new_over_old_per_case_in_both():
    """docs/benchmarking.md: the two runs (a result without kernels ran XLA's), the new/old
    copy bandwidth, and per case in both old and new ms per step and new/old (above 1:
    slower)."""
    row = dict(grid="64^2", fields=1, dtype="float32")
    old = _result(
        "cpu-old",
        "2024-01-01T00:00:00+00:00",
        2e9,
        [
            dict(row, stepper="explicit", seconds_per_step=4e-3),
            dict(row, stepper="imex", seconds_per_step=1.0),
        ],
    )
    new = _result(
        "gpu-new",
        "2025-01-01T00:00:00+00:00",
        1e9,
        [dict(row, stepper="explicit", seconds_per_step=1e-3)],
        kernels="auto",
    )
    assert bench.comparison(new, old) == [
        dict(row, stepper="explicit", old=4e-3, new=1e-3, ratio=0.25)
    ]
    lines = bench.comparison_lines(new, old)
    assert lines[0] == (
        "new: gpu-new (2025-01-01T00:00:00+00:00, kernels auto); "
        "old: cpu-old (2024-01-01T00:00:00+00:00, kernels xla)"
    )
    assert lines[1] == "copy bandwidth: new/old 0.500"
    assert lines[3].split() == ["64^2", "1", "float32", "explicit", "4.000", "1.000", "0.250"]
    assert len(lines) == 4


def test_the_figure_styles_each_dtype_and_marks_the_copy_bandwidth():
    """docs/benchmarking.md: solid with circles float32, dashed with squares float64, and a
    grey line per dtype at the copy bandwidth / (2 x itemsize) updates per second."""
    rows = [
        dict(grid="64^2", voxels=4096, fields=1, dtype=dtype, stepper="imex", updates_per_s=1e6)
        for dtype in ("float32", "float64")
    ]
    figure = bench.figure(_result("cpu-cpu", "", 8e9, rows))
    drawn = {line.get_label(): line for line in figure.axes[0].get_lines()}
    assert (
        drawn["imex, 1 field, float32"].get_linestyle(),
        drawn["imex, 1 field, float32"].get_marker(),
    ) == ("-", "o")
    assert (
        drawn["imex, 1 field, float64"].get_linestyle(),
        drawn["imex, 1 field, float64"].get_marker(),
    ) == ("--", "s")
    assert list(drawn["copy bandwidth, float32"].get_ydata()) == [1e9, 1e9]
    assert list(drawn["copy bandwidth, float64"].get_ydata()) == [5e8, 5e8]


def test_the_memory_estimates_follow_their_documented_formulas(monkeypatch):
    """The state estimate counts at least one field; the predicted peak is the process less
    the state it holds now, plus the compiled loop's peak (which holds the state) and one
    host frame; a device may plan on 80% of its limit, a CPU on 80% of what is available."""
    assert memory.state_bytes(0, 1000, 4) == memory.state_bytes(1, 1000, 4) == 1000 * 4 * 8
    assert memory.predicted_peak_bytes(500, 100, 300, 100) == 800
    device = SimpleNamespace(memory_stats=lambda: {"bytes_limit": 10**9})
    assert memory.device_memory(device) == pytest.approx(0.8e9)
    monkeypatch.setattr(memory, "available_memory", lambda: 10**6)
    assert memory.device_memory(object()) == pytest.approx(0.8e6)


def test_the_process_memory_is_read_in_its_platforms_units(monkeypatch):
    """/proc's kB are 1024 bytes (the resident set agrees with statm's pages); without /proc,
    `ru_maxrss` is in KiB, but in bytes on macOS."""
    statm = Path("/proc/self/statm")
    if statm.exists():
        resident = int(statm.read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        assert memory.process_bytes() == pytest.approx(resident, rel=3e-3)
    monkeypatch.setattr(memory, "_status_bytes", lambda key: None)
    monkeypatch.setattr(resource, "getrusage", lambda who: SimpleNamespace(ru_maxrss=1000))
    monkeypatch.setattr(sys, "platform", "linux")
    assert memory.peak_process_bytes() == 1000 * 1024
    monkeypatch.setattr(sys, "platform", "darwin")
    assert memory.peak_process_bytes() == 1000
