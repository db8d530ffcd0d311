"""Gradients with individual cells: the differentiable trajectory steps fields and cells as a
run does (the same frames, random numbers included), and derivatives with respect to the
cells' secretion and uptake parameters equal central finite differences."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

import engine
from engine.config.loading import load_config
from engine.runs.gradients import Trajectory, gradient

CONFIG = {
    "grid": {"shape": [10, 12], "spacing": "10 um"},
    "time": {"end": "6 min", "output_every": "2 min", "dt": "4 s", "seed": 5},
    "species": {"IL2": {"diffusion": "20 um^2/s", "decay": "1e-3 1/s"}},
    "cells": {
        "Th": {
            "count": 6,
            "motility": "1 um^2/s",
            "secretion": [{"species": "IL2", "rate": "20 1/s"}],
        },
        "Tr": {
            "count": 30,
            "capacity": 60,
            "motility": "2 um^2/s",
            "state": {"R": 1000.0},
            "uptake": [{"species": "IL2", "k_on": "1e7 1/M/s", "receptors": "R"}],
            "state_terms": [
                {
                    "variable": "R",
                    "production": "2 1/s",
                    "decay": "1e-3 1/s",
                    "activators": [{"of": "IL2", "K": "10 pM"}],
                }
            ],
            "division": {"rate": "1e-3 1/s"},
        },
    },
}
KEYS = ["cells.Th.secretion[0].rate", "cells.Tr.uptake[0].k_on"]


@pytest.mark.slow  # a trajectory program with three cell types to compile
@pytest.mark.parametrize("stepper", ["imex", "explicit"])
def test_the_trajectory_with_cells_is_the_run(float64, stepper):
    dt = "4 s" if stepper == "imex" else "0.5 s"  # explicit: cells every few field steps
    cfg = load_config(CONFIG, {"time.stepper": stepper, "time.dt": dt, "time.dtype": float64})
    trajectory = Trajectory(cfg, KEYS)
    frames = trajectory(trajectory.values)
    sim = engine.Simulation(cfg)
    every, _ = sim.cell_steps(sim.initial_state(), sim.time_step(sim.initial_state()))
    assert {leg[2] for _, legs in trajectory._plan for leg in legs} == {every}
    state = sim.initial_state()
    for index, t in enumerate(trajectory.times):
        state = sim.advance(state, t)
        np.testing.assert_allclose(
            frames["IL2"][index], state.numpy()["IL2"], rtol=1e-11, atol=1e-300
        )


@pytest.mark.slow  # a reverse-mode program to compile, 10 s
def test_gradients_through_the_cells_equal_central_differences(float64):
    cfg = load_config(CONFIG, {"time.stepper": "imex", "time.dtype": float64})

    def loss(frames):
        return jnp.sum(frames["IL2"][-1] ** 2)

    grads = gradient(cfg, loss, KEYS)
    trajectory = Trajectory(cfg, KEYS)
    values = trajectory.values
    for i, key in enumerate(KEYS):
        h = 1e-4 * values[i]
        up, down = values.copy(), values.copy()
        up[i] += h
        down[i] -= h
        central = (float(loss(trajectory(up))) - float(loss(trajectory(down)))) / (2 * h)
        assert grads[key] == pytest.approx(central, rel=1e-6), key
    assert grads[KEYS[0]] > 0 > grads[KEYS[1]]
