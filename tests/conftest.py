"""Shared fixtures: 64-bit mode for reference runs and a convergence-order fit."""

from __future__ import annotations

import jax
import numpy as np
import pytest


def _convergence_order(h, err) -> float:
    """Least-squares slope of log(err) against log(h): the measured order of convergence."""
    h = np.asarray(h, dtype=float)
    err = np.asarray(err, dtype=float)
    if h.shape != err.shape or h.ndim != 1 or h.size < 2:
        raise ValueError(f"convergence_order: need two equal 1-D sequences, got {h} and {err}")
    if not (np.all(h > 0) and np.all(err > 0)):
        raise ValueError(f"convergence_order: steps and errors must be positive, got {h}, {err}")
    slope, _ = np.polyfit(np.log(h), np.log(err), 1)
    return float(slope)


@pytest.fixture
def convergence_order():
    """`convergence_order(h, err)`: fitted slope of log err vs log h."""
    return _convergence_order


@pytest.fixture(scope="module")
def x64_module():
    """JAX 64-bit mode for every test of a module (`pytestmark =
    pytest.mark.usefixtures("x64_module")`), restored afterwards: switched on at import, it
    would leak into every module collected after."""
    previous = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def float64():
    """Switches on JAX 64-bit mode for the test (restoring the previous setting afterwards) and
    returns the dtype name to pass to `Simulation`."""
    previous = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)
    yield "float64"
    jax.config.update("jax_enable_x64", previous)
