"""benchmarks/bench_vessels_and_consumers.py: the problem it writes is the one it states (a
user's config with 20% consumers at 1e-3 1/s and 2% pulsed vessels), and its errors."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))

import bench_vessels_and_consumers as bench  # noqa: E402

import engine  # noqa: E402
from engine.model.rhs import reaction_terms  # noqa: E402


def test_the_problem_has_its_consumers_vessels_and_pulses(tmp_path):
    config = engine.load_config(bench.write_problem(tmp_path, 16))
    consumers = np.load(tmp_path / "consumers.npy")
    vessels = np.load(tmp_path / "vessels.npy")
    assert abs(consumers.mean() - 0.2) < 0.02 and abs(vessels.mean() - 0.02) < 0.01
    model = engine.Simulation(config).model
    fields = model.initial_fields("float32")
    _, loss = reaction_terms(model, fields, 0.0, decay=False)
    rate = np.asarray(loss["IL"])
    np.testing.assert_allclose(rate[consumers], 1e-3, rtol=1e-6)  # float32
    assert np.all(rate[~consumers] == 0)
    assert model.decay(model.species[0]) == pytest.approx(1.36e-4)
    # 0.05 nM/s for 2 h from 1 h and from 9 h: 720 nM per vessel voxel in all
    sim = engine.Simulation(
        engine.load_config(
            bench.write_problem(tmp_path, 16),
            {"species.IL.decay": "0 1/s", "terms": [], "populations": {}},
        ),
        dtype="float64",
    )
    state = sim.advance(sim.initial_state(), 12 * 3600.0)
    total = np.sum(np.asarray(state.fields["IL"]))
    assert total == pytest.approx(0.05 * 2 * 7200.0 * vessels.sum(), rel=1e-10)


def test_errors_are_relative_to_the_references_maximum_at_each_time():
    reference = {t: np.array([1.0, 2.0 * t]) for t in bench.TIMES_H}
    result = {t: v + np.array([0.0, 0.1]) for t, v in reference.items()}
    errors = bench.errors(result, reference)
    assert errors == {t: pytest.approx(0.1 / (2 * t)) for t in bench.TIMES_H}


@pytest.mark.slow
def test_a_small_run_measures_imex_against_the_reference(tmp_path):
    output = tmp_path / "vc.json"
    bench.main(["--size", "8", "--runs", "imex-1e-2", "--output", str(output)])
    result = json.loads(output.read_text())
    (row,) = result["runs"]
    assert row["run"] == "imex-1e-2" and row["seconds"] > 0
    assert 0 < row["error"] < 0.5
    assert set(row["error_by_hour"]) == {"3", "6", "12"}
