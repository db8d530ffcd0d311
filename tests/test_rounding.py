"""Stochastic rounding of a field plus its increment (`engine.numerics.rounding`)."""

import jax.numpy as jnp
import numpy as np
import pytest

from engine.numerics import rounding


def test_the_rounded_sum_is_one_of_the_two_neighbours_of_the_exact_sum():
    rng = np.random.default_rng(0)
    field = rng.uniform(0.0, 10.0, (64, 48)).astype(np.float32)
    increment = (rng.standard_normal(field.shape) * 1e-6).astype(np.float32)
    out = np.asarray(rounding.add_stochastically(jnp.asarray(field), jnp.asarray(increment), 3))
    exact = field.astype(np.float64) + increment.astype(np.float64)
    below = np.nextafter(exact.astype(np.float32), np.float32(-np.inf))
    above = np.nextafter(exact.astype(np.float32), np.float32(np.inf))
    assert np.all((out >= below) & (out <= above))
    assert np.all(np.abs(out - exact) < np.spacing(np.abs(exact).astype(np.float32)) * 1.0001)


@pytest.mark.parametrize("fraction", [0.1, 0.37, 0.5, 0.9])
def test_increments_below_half_an_ulp_are_kept_on_average(fraction):
    """An increment of `fraction` ulp, which rounding to nearest loses (or doubles), is added
    up or down by one ulp with probabilities that make the mean exact: over 2^16 voxels the
    mean lies within 4 standard errors of the increment."""
    field = jnp.full((256, 256), 3.0, jnp.float32)
    ulp = float(np.spacing(np.float32(3.0)))
    for sign in (1.0, -1.0):
        increment = jnp.full(field.shape, sign * fraction * ulp, jnp.float32)
        out = np.asarray(rounding.add_stochastically(field, increment, 7), np.float64)
        mean = np.mean(out - 3.0)
        error = ulp * np.sqrt(fraction * (1 - fraction) / out.size)
        assert abs(mean - sign * fraction * ulp) < 4 * error


def test_streams_differ_between_steps_fields_and_voxels_and_repeat_for_the_same_step():
    shape = (32, 32)
    a = np.asarray(rounding.uniform(shape, rounding.step_counter(10.0, 0), 0))
    again = np.asarray(rounding.uniform(shape, rounding.step_counter(10.0, 0), 0))
    assert np.array_equal(a, again)
    others = [
        rounding.uniform(shape, rounding.step_counter(10.0, 1), 0),
        rounding.uniform(shape, rounding.step_counter(20.0, 0), 0),
        rounding.uniform(shape, rounding.step_counter(10.0, 0), 1),
    ]
    for other in others:
        assert abs(np.corrcoef(a.ravel(), np.asarray(other).ravel())[0, 1]) < 0.1
    assert 0 <= a.min() and a.max() < 1 and abs(a.mean() - 0.5) < 0.02
    assert len(np.unique(a)) > 0.99 * a.size


def test_a_sum_that_would_go_below_zero_stops_at_zero():
    field = jnp.asarray([1.0, 2.0, 0.0], jnp.float32)
    out = rounding.add_stochastically(field, jnp.asarray([-1.5, -2.0, -1.0], jnp.float32), 0)
    assert np.array_equal(np.asarray(out), [0.0, 0.0, 0.0])


def test_a_field_below_half_an_ulp_of_a_larger_increment_is_kept_on_average():
    """The sum's exact rounding error (two-sum) holds whichever term is larger: a voxel holding
    0.3 ulp of the sum (nearly empty when a large supply arrives), which rounding to nearest
    loses, is kept on average: over 2^16 voxels the mean lies within 4 standard errors."""
    ulp = float(np.spacing(np.float32(3.0)))
    field = jnp.full((256, 256), 0.3 * ulp, jnp.float32)
    out = np.asarray(rounding.add_stochastically(field, jnp.full(field.shape, 3.0), 7), np.float64)
    exact = float(field[0, 0])
    error = ulp * np.sqrt(0.3 * 0.7 / out.size)
    assert abs(np.mean(out - 3.0) - exact) < 4 * error
