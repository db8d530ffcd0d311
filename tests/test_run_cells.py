"""Runs with cells through the CLI: frames of cells in the file, an interrupted run resumes
bitwise like an uninterrupted one, a run beyond capacity stops with the key to raise and
keeps its frames, validate counts the cells' memory, and what runs with cells refuse."""

from __future__ import annotations

import os
import shutil
import signal
import textwrap
import tomllib

import h5py
import numpy as np
import pytest

import engine
from engine.cli.main import main
from engine.config.loading import load_config
from engine.stepping.simulation import State

CONFIG = """
[grid]
shape = [16, 16]
spacing = "10 um"

[time]
end = "{end}"
dt = "20 s"
stepper = "imex"
output_every = "2 min"
seed = 3

[species.IL2]
diffusion = "10 um^2/s"
decay = "1e-3 1/s"

[cells.Th]
count = 4
motility = "1 um^2/s"

[[cells.Th.secretion]]
species = "IL2"
rate = "20 1/s"

[cells.Tr]
count = 30
capacity = {capacity}
motility = "2 um^2/s"
chemotaxis = {{ species = "IL2", sensitivity = "1e3 um^2/(s nM)" }}
state = {{ R = 1000.0, pSTAT5 = 0.0 }}
division = {{ rate = "{division}", halve = ["R"] }}
death = {{ rate = "1e-4 1/s" }}

[[cells.Tr.uptake]]
species = "IL2"
k_on = "1e7 1/M/s"
receptors = "R"

[[cells.Tr.state_terms]]
variable = "pSTAT5"
production = "2e-3 1/s"
decay = "2e-3 1/s"
activators = [{{ of = "IL2", K = "10 pM" }}]
"""


def write_config(tmp_path, end="12 min", capacity=120, division="2e-4 1/s"):
    path = tmp_path / "cells.toml"
    text = CONFIG.format(end=end, capacity=capacity, division=division)
    path.write_text(textwrap.dedent(text))
    return path


def test_a_run_writes_its_cells_frame_by_frame(tmp_path, capsys):
    config, out = write_config(tmp_path), tmp_path / "out.h5"
    assert main(["run", str(config), "-o", str(out), "--quiet"]) == 0
    with engine.open_output(out) as result:
        assert result.cell_types == ("Th", "Tr")
        assert result.cell_state("Tr") == ("R", "pSTAT5")
        counts = result.cell_counts("Tr")
        assert len(counts) == 7 and counts[0] == 30
        last = result.cells("Tr", -1)
        assert len(last["id"]) == counts[-1] == len(np.unique(last["id"]))
        assert np.all((last["position"] >= 0) & (last["position"] < 160))
        assert last["pSTAT5"].max() > 0  # responders near the secreting cells
        table = result.cells("Th", 3, table=True)
        assert list(table.columns) == ["id", "y", "x"] and len(table) == 4
    assert main(["info", str(out)]) == 0
    assert "Tr" in capsys.readouterr().out


def test_an_interrupted_run_resumes_bitwise_like_an_uninterrupted_run(tmp_path, monkeypatch):
    from engine.io.writer import OutputWriter

    config = write_config(tmp_path)
    out, reference = tmp_path / "stopped.h5", tmp_path / "reference.h5"
    write_frame = OutputWriter.write_frame

    def then_interrupt(writer, *args, **kwargs):
        write_frame(writer, *args, **kwargs)
        if writer.n_frames == 3:
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(OutputWriter, "write_frame", then_interrupt)
    assert main(["run", str(config), "-o", str(out), "--quiet"]) == 130
    monkeypatch.undo()
    with engine.open_output(out) as stopped:
        assert 3 <= stopped.n_frames < 7
    assert main(["run", str(config), "-o", str(out), "--resume", "--quiet"]) == 0
    assert main(["run", str(config), "-o", str(reference), "--quiet"]) == 0
    with h5py.File(out) as a, h5py.File(reference) as b:
        np.testing.assert_array_equal(a["time"][:], b["time"][:])
        for name in ("position", "alive", "id", "R", "pSTAT5"):
            np.testing.assert_array_equal(a[f"cells/Tr/{name}"][:], b[f"cells/Tr/{name}"][:])
        np.testing.assert_array_equal(a["fields/IL2"][:], b["fields/IL2"][:])


@pytest.mark.slow  # tests/test_cells.py checks the guard itself in the default run
def test_a_run_beyond_capacity_stops_naming_the_key_and_keeps_its_frames(tmp_path, capsys):
    config = write_config(tmp_path, end="30 min", capacity=40, division="3e-3 1/s")
    out = tmp_path / "full.h5"
    assert main(["run", str(config), "-o", str(out), "--quiet"]) == 2
    error = capsys.readouterr().err.strip()
    assert (
        error.startswith("ilsim: error: cells.Tr.capacity:") and "raise cells.Tr.capacity" in error
    )
    assert len(error.splitlines()) == 1
    with engine.open_output(out) as kept:
        assert kept.n_frames >= 1
        assert np.all(kept.cell_counts("Tr") <= 40)


def test_validate_counts_the_cells_memory(tmp_path, capsys):
    small, large = tmp_path / "small", tmp_path / "large"
    small.mkdir(), large.mkdir()
    cfgs = [
        engine.load_config(write_config(folder, capacity=capacity))
        for folder, capacity in ((small, 40), (large, 100_040))
    ]
    extra = cfgs[1].memory_bytes() - cfgs[0].memory_bytes()
    per_cell = 4 * (2 + 1 + 1 + 2)  # float32 position (2D), alive, id, R and pSTAT5
    assert extra >= 100_000 * per_cell
    assert main(["validate", str(write_config(tmp_path))]) == 0
    out = capsys.readouterr().out
    assert "cells Th: 4 at the start, capacity 16" in out
    assert "cells Tr: 30 at the start, capacity 120" in out
    # the fixed 20 s step is 6.4 times Tr's limit: rms step half a voxel, 25 / (2 ndim M) s
    assert "cells step every 1 field steps (20 s), in 7 parts within cells_dt\n" in out
    assert "memory estimate" in out
    fields = 7 * 16 * 16 * 4
    cells = 7 * (16 * (2 * 4 + 9) + 120 * (4 * 4 + 9))  # Th: x, y; Tr: x, y, R, pSTAT5
    assert f"output: 7 frames of 1 fields and 2 cell types, {(fields + cells) / 1e6:.1f} MB" in out


@pytest.mark.parametrize(
    "override, key",
    [
        ("time.adaptive=true", "time.adaptive"),
        ("parallel.mesh=[2, 1]", "parallel.mesh"),
    ],
)
def test_runs_with_cells_refuse_what_they_do_not_support(tmp_path, capsys, override, key):
    config = write_config(tmp_path)
    out = tmp_path / "refused.h5"
    status = main(["run", str(config), "-o", str(out), "--quiet", "--set", override])
    assert status == 2
    error = capsys.readouterr().err
    assert key in error and len(error.strip().splitlines()) == 1
    assert not out.exists()


def test_a_sweep_of_a_config_with_cells_is_refused_in_one_line(tmp_path, capsys):
    config = write_config(tmp_path)
    out = tmp_path / "sweep.h5"
    status = main(
        ["sweep", str(config), "-o", str(out), "--vary", "species.IL2.decay=1e-3,2e-3", "--quiet"]
    )
    assert status == 2
    assert "cells" in capsys.readouterr().err
    assert not out.exists()
    shutil.rmtree(tmp_path)


@pytest.mark.slow  # the cells' device loop to compile, 3.5 s
def test_the_cells_legs_cover_the_run_and_step_within_the_cells_limit():
    """advance with cells goes in legs of at most 16 cell steps, each setting the cells'
    step afresh from the cells as they are: the legs follow each other without a gap and
    end at t_end (every field step taken, State.step counting them), and a cell step never
    spans more field steps than fit in safety x the cells' limit at its leg's start."""
    text = CONFIG.format(end="1 min", capacity=200, division="1e-4 1/s")
    sim = engine.Simulation(load_config(tomllib.loads(text), {"time.dt": "0.5 s"}))
    legs = []
    advance = sim.advance_cells_and_fields

    def spy(fields, cells, t0, dt, n_steps, first_step, cell_every=1, cell_parts=1):
        limit = sim._steps(State(t=t0, fields=fields, cells=cells))[1]
        legs.append((t0, dt, n_steps, first_step, cell_every, cell_parts, limit))
        return advance(fields, cells, t0, dt, n_steps, first_step, cell_every, cell_parts)

    sim.advance_cells_and_fields = spy
    state = sim.initial_state()
    for t_end in (60.0, 67.0):  # the cells limit drops within the first call
        state = sim.advance(state, t_end)
    t, steps = 0.0, 0
    for t0, dt, n_steps, first_step, every, parts, limit in legs:
        assert t0 == pytest.approx(t, abs=1e-9) and first_step == steps
        assert dt <= 0.5 * (1 + 1e-12) and n_steps <= 16 * every
        assert every == 1 or every * dt <= sim.safety * limit * (1 + 1e-9)
        assert parts == max(1, int(np.ceil(every * dt / limit - 1e-4)))  # each part within
        t, steps = t0 + n_steps * dt, steps + n_steps
    assert t == pytest.approx(67.0, rel=1e-12) and state.step == steps == 134
    assert max(leg[4] for leg in legs) > 1  # the cells step over several field steps
