"""Steps end at every start and end of a dose: no step straddles a schedule edge, on every
stepper and in sweeps, so dosing adds no error of its own (a well-mixed dose with decay is
exact where the stepper is exact for a constant supply)."""

from __future__ import annotations

import math

import numpy as np
import pytest

import engine
from engine import Grid, Model, Schedule, Simulation, Species, region_source
from engine.model.sources import model_edges, schedule_edges

# doses at times that no step size divides: on from 37.3 s for 101.7 s, every 311.1 s, 3 times
DOSES = Schedule(start=37.3, duration=101.7, every=311.1, count=3.0)
EDGES = [37.3, 139.0, 348.4, 450.1, 659.5, 761.2]


def test_the_edges_of_a_window_and_of_repeated_doses():
    assert schedule_edges(DOSES, 0.0, 1e4) == pytest.approx(EDGES)
    assert schedule_edges(DOSES, 139.0, 659.5) == pytest.approx(EDGES[2:4])  # open interval
    assert schedule_edges(DOSES, 400.0, 700.0) == pytest.approx([450.1, 659.5])
    assert schedule_edges(Schedule(), 0.0, 1e9) == []  # always on
    assert schedule_edges(Schedule(start=5.0), 0.0, 10.0) == [5.0]  # on for ever from 5 s
    assert schedule_edges(Schedule(1.0, 2.0, 10.0, 0.0), 0.0, 100.0) == []  # no dose
    forever = Schedule(start=0.0, duration=1.0, every=3.0)
    # doses at 999999-1000000, 1000002-1000003, 1000005-...
    assert schedule_edges(forever, 1e6 + 0.5, 1e6 + 5.5) == [1e6 + 2.0, 1e6 + 3.0, 1e6 + 5.0]
    two = (
        region_source("c", np.ones(4), 1.0, DOSES),
        region_source("c", np.ones(4), 1.0, Schedule(5.0, 1.0)),
    )
    assert model_edges(two, 0.0, 200.0) == pytest.approx([5.0, 6.0, 37.3, 139.0])


def exact_dose_response(rate: float, decay: float, t: float) -> float:
    """c(t) of dc/dt = -decay c + rate while DOSES are on, c(0) = 0."""
    total = 0.0
    for k in range(3):
        on = DOSES.start + k * DOSES.every
        a, b = min(on, t), min(on + DOSES.duration, t)
        total += rate / decay * (math.exp(-decay * (t - b)) - math.exp(-decay * (t - a)))
    return total


def dosed_model(decay: float = 3e-3) -> Model:
    grid = Grid((6, 5), spacing=10.0)
    species = Species("c", diffusion=50.0, decay=decay)
    return Model(
        grid, species=(species,), sources=(region_source("c", np.ones(grid.shape), 0.02, DOSES),)
    )


def spied(sim: Simulation) -> list:
    """Record every device loop's (t0, dt, n_steps) that `sim.advance` runs."""
    calls = []
    advance = sim.advance_cells_and_fields

    def spy(fields, cells, t0, dt, n_steps, first_step, cell_every=1, cell_parts=1):
        calls.append((float(t0), float(dt), int(n_steps)))
        return advance(fields, cells, t0, dt, n_steps, first_step, cell_every, cell_parts)

    sim.advance_cells_and_fields = spy
    return calls


STEPPERS = [
    dict(stepper="explicit", scheme="euler"),
    dict(stepper="explicit", scheme="ssprk3"),
    dict(stepper="imex"),
    dict(stepper="quasi_steady"),
    dict(stepper="imex", adaptive=True, tolerance=1e-4),
]


@pytest.mark.parametrize("options", STEPPERS, ids=lambda o: "-".join(map(str, o.values())))
def test_no_step_straddles_a_dose_edge_and_the_dose_total_is_exact(options):
    """(quasi_steady, whose species have no memory, needs decay and has no dose total.)"""
    steady = options["stepper"] == "quasi_steady"
    model = dosed_model(decay=1e-2 if steady else 0.0)
    sim = Simulation(model, dtype="float64", dt=60.0, **options)
    calls = spied(sim)
    state = sim.initial_state()
    for t in (200.0, 500.0, 900.0):
        state = sim.advance(state, t)
    if not steady:
        np.testing.assert_allclose(state.numpy()["c"], 0.02 * 3 * DOSES.duration, rtol=1e-12)
    for t0, dt, n in calls:
        steps = t0 + dt * np.arange(n + 1)
        for edge in EDGES:
            inside = (steps[:-1] < edge - 1e-9) & (steps[1:] > edge + 1e-9)
            assert not inside.any(), f"a step of {dt:g} s from {t0:g} s straddles {edge} s"
    if not options.get("adaptive"):
        assert {round(t0, 6) for t0, _, _ in calls} >= {round(e, 6) for e in EDGES}


def test_a_well_mixed_dose_with_decay_is_exact_with_imex():
    """imex solves decay with a constant supply exactly: with the steps cut at the edges, a
    step of 5 minutes reproduces the piecewise exponential to rounding."""
    decay = 3e-3
    sim = Simulation(dosed_model(decay), stepper="imex", dtype="float64", dt=300.0)
    state = sim.initial_state()
    for t in (120.0, 420.0, 1000.0):
        state = sim.advance(state, t)
        np.testing.assert_allclose(
            state.numpy()["c"], exact_dose_response(0.02, decay, t), rtol=1e-10
        )


SWEEP = {
    "grid": {"shape": [4, 3], "spacing": "10 um"},
    "time": {
        "end": "1000 s",
        "output_every": "250 s",
        "stepper": "imex",
        "dt": "300 s",
        "dtype": "float64",
    },
    "regions": {"all": {"box": {"lower": [0, 0], "upper": [40, 30]}}},
    "species": {"c": {"diffusion": "50 um^2/s", "decay": 3e-3}},
    "sources": [
        {
            "type": "region",
            "species": "c",
            "region": "all",
            "rate": "0.02 nM/s",
            "schedule": {"start": "37.3 s", "duration": "101.7 s", "every": "311.1 s", "count": 3},
        }
    ],
}


def test_sweep_members_with_other_dose_times_are_each_exact():
    """The batch steps end at every member's edges: each member, dosed at its own times, is
    its exact piecewise exponential."""
    cfg = engine.load_config(SWEEP)
    starts = [37.3, 80.9, 151.0]
    result = engine.sweep(cfg, {"sources[0].schedule.start": starts})
    for member, start in enumerate(starts):
        shift = start - DOSES.start
        for frame, t in enumerate(result.time):
            expected = exact_dose_response(0.02, 3e-3, t - shift) if t > shift else 0.0
            np.testing.assert_allclose(
                result.fields["c"][member, frame], expected, rtol=1e-9, atol=1e-15
            )
