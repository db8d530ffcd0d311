"""The steps `Simulation.advance` takes: the fewest equal steps no longer than the step it
aims for, ending exactly at t_end; error control's held estimate never reaches past a
schedule edge; the state's step counter counts every step taken, across calls."""

from __future__ import annotations

import math

import numpy as np
import pytest
from test_schedule_edges import dosed_model, spied

from engine import Model, Simulation
from engine.model.sources import model_edges


@pytest.mark.parametrize("t_end, dt", [(200.0, 60.0), (30.0, 7.0), (1.0, 0.25), (10.0, 3.3)])
def test_a_fixed_dt_is_covered_by_the_fewest_equal_steps_no_longer_than_it(t_end, dt):
    """A span that dt does not divide is cut into ceil(span / dt) equal steps, each at most
    dt (a longer one would exceed what the user allowed, the explicit stability limit for
    one), and they end exactly at t_end (no overshoot, no step short)."""
    sim = Simulation(dosed_model(), dtype="float64", dt=dt)
    sim.host_model = Model(sim.host_model.grid, species=sim.host_model.species)  # no edges
    calls = spied(sim)
    state = sim.advance(sim.initial_state(), t_end)
    ((t0, step, n),) = calls
    assert t0 == 0.0 and n == math.ceil(t_end / dt) and step <= dt * (1 + 1e-12)
    assert t0 + n * step == pytest.approx(t_end, rel=1e-12)
    assert state.t == t_end and state.step == n


def test_the_step_counter_counts_every_step_across_calls():
    """State.step is the number of steps taken since t = 0, whatever the calls: the cells'
    random numbers and checkpoints are numbered by it."""
    sim = Simulation(dosed_model(), dtype="float64", dt=60.0)
    calls = spied(sim)
    state = sim.initial_state()
    for t in (200.0, 500.0, 900.0):
        state = sim.advance(state, t)
        assert state.step == sum(n for _, _, n in calls)
    assert state.step > 15


def test_the_error_controlled_estimate_never_holds_past_a_schedule_edge():
    """imex at dt = "auto" estimates its step and holds it for up to 16 steps; the dynamics
    change at a dose's start and end, so an estimate made before an edge holds until the
    edge at most (State.held's until), never into the next stretch."""
    model = dosed_model(decay=1e-4)
    sim = Simulation(model, stepper="imex", dtype="float64", tolerance=1e-2)
    state = sim.initial_state()
    checked = 0
    for t in np.arange(20.0, 900.0, 20.0):
        state = sim.advance(state, float(t))
        if state.held is not None:
            step, until = state.held
            assert until >= state.t
            assert model_edges(model.sources, state.t, until) == [], (state.t, until)
            checked += 1
    assert checked > 5


def test_advance_leaves_the_callers_state_as_it_is():
    """advance is pure unless told to donate: the state it was given still holds its fields
    (the device loop donates its inputs, so advance must hand it copies), and advancing it
    again gives the same result bitwise."""
    sim = Simulation(dosed_model(), dtype="float64", dt=20.0)
    start = sim.initial_state()
    before = start.numpy()["c"].copy()
    once = sim.advance(start, 100.0)
    np.testing.assert_array_equal(start.numpy()["c"], before)
    again = sim.advance(start, 100.0)
    np.testing.assert_array_equal(again.numpy()["c"], once.numpy()["c"])
    assert np.any(once.numpy()["c"] != before)
    later = sim.advance(once, 200.0)
    np.testing.assert_array_equal(sim.advance(once, 200.0).numpy()["c"], later.numpy()["c"])
