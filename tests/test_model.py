"""A model built in code is complete by itself: it bounds its explicit steps by its own growth
terms, carries its custom terms, and a float64 simulation keeps 64-bit mode to its own calls."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import engine
from engine import Grid, Model, Population, Simulation, Species
from engine.model import terms
from engine.stepping.steppers import Explicit


def growing_model(rate: float, crowding_capacity: float = 1.0, motility: float = 10.0) -> Model:
    grid = Grid((16, 16), spacing=10.0)
    cells = Population("n", motility=motility, initial=0.5 * crowding_capacity)
    growth = terms.Growth("n", rate, crowding_capacity)
    return Model(grid, populations=(cells,), terms=(growth,))


@pytest.mark.parametrize("rate", [1e-3, 0.1, 5.0])
def test_explicit_auto_dt_of_a_model_in_code_is_bounded_by_its_growth(rate):
    """dt = "auto" is safety / (transport + loss rate + growth rate): the growth term (its
    growth and its crowding loss) alone sets the bound of a motionless population, and adds
    to the transport rate of a moving one."""
    crowding = 0.5 * rate  # the logistic loss rate r n / K at n = K / 2
    still = Simulation(growing_model(rate, motility=0.0), stepper="explicit", safety=0.9)
    assert still.time_step(still.initial_state()) == pytest.approx(0.9 / (rate + crowding))
    moving = Simulation(growing_model(rate), stepper="explicit", safety=0.9)
    transport = 2 * 2 * 10.0 / 10.0**2  # 2 ndim M / h^2 (1/s)
    expected = 0.9 / (transport + crowding + rate)
    assert moving.time_step(moving.initial_state()) == pytest.approx(expected, rel=1e-6)


def test_growth_bounds_add_per_population_and_take_the_largest():
    grid = Grid((8,), spacing=10.0)
    a, b = Population("a", initial=1e-4), Population("b", initial=1e-4)
    model = Model(
        grid,
        populations=(a, b),
        terms=(
            terms.Growth("a", 0.2, 1.0),
            terms.Proliferation("a", 0.3),
            terms.Growth("b", 0.4, 1.0),
            terms.Death("b", 9.0),  # a sink: implicit, no bound
        ),
    )
    assert float(model.growth_rate()) == pytest.approx(0.5)
    assert float(Model(grid, populations=(a,), reaction_rate=2.0).growth_rate()) == 2.0


def test_an_explicit_run_at_auto_dt_grows_to_its_capacity_without_overshoot():
    """At the bound's step the logistic run rises monotonically from n0 to the capacity K."""
    rate, capacity = 0.05, 1.0
    sim = Simulation(growing_model(rate, capacity, motility=0.0), stepper="explicit")
    state, means = sim.initial_state(), []
    for t in np.arange(1, 41) * 25.0:
        state = sim.advance(state, t)
        means.append(float(state.numpy()["n"].mean()))
    assert np.all(np.diff(means) >= 0) and max(means) <= capacity
    assert means[-1] == pytest.approx(capacity, rel=1e-6)


def test_float64_is_scoped_to_the_simulation():
    """A float64 simulation computes in float64 while JAX's 64-bit mode stays off around it,
    and a float32 simulation beside it stays float32."""
    grid = Grid((32,), spacing=1.0)
    bump = np.exp(-(((np.arange(32) - 16.0) / 3.0) ** 2))
    model = Model(grid, species=(Species("c", diffusion=1.0, initial=bump),))
    assert not jax.config.jax_enable_x64
    wide = Simulation(model, stepper="explicit", dtype="float64")
    state = wide.advance(wide.initial_state(), 5.0)
    assert state.fields["c"].dtype == jnp.float64
    assert not jax.config.jax_enable_x64
    narrow = Simulation(model, stepper="explicit", dtype="float32")
    single = narrow.advance(narrow.initial_state(), 5.0)
    assert single.fields["c"].dtype == jnp.float32
    np.testing.assert_allclose(single.numpy()["c"], state.numpy()["c"], rtol=1e-5, atol=1e-7)
    # the wide result is exactly float64 arithmetic: its total is conserved to rounding
    assert abs(state.numpy()["c"].sum() - bump.sum()) < 1e-12 * bump.sum()


def test_a_custom_term_is_carried_by_the_model_it_was_built_with(tmp_path):
    """Re-registering a name changes the models built afterwards, never one already built
    (nor its compiled loop)."""
    source = """
[grid]
shape = [8]
spacing = "10 um"
[time]
end = "10 s"
stepper = "explicit"
dtype = "float64"
[species.c]
diffusion = "10 um^2/s"
initial = 1.0
[[terms]]
type = "custom"
name = "feed"
params = { k = 0.01 }
"""
    path = tmp_path / "custom.toml"
    path.write_text(source)
    cfg = engine.load_config(path)
    engine.register_term("feed", lambda fields, p: ({"c": p["k"] * jnp.ones_like(fields["c"])}, {}))
    first = engine.Simulation(cfg)
    before = first.advance(first.initial_state(), 10.0).numpy()["c"]
    engine.register_term(
        "feed", lambda fields, p: ({"c": 2 * p["k"] * jnp.ones_like(fields["c"])}, {})
    )
    again = first.advance(first.initial_state(), 10.0).numpy()["c"]
    second = engine.Simulation(cfg)
    after = second.advance(second.initial_state(), 10.0).numpy()["c"]
    np.testing.assert_allclose(before, 1.1, rtol=1e-12)
    np.testing.assert_array_equal(again, before)
    np.testing.assert_allclose(after, 1.2, rtol=1e-12)


def test_stable_dt_of_the_explicit_stepper_reads_the_model_bound():
    model = growing_model(0.25, motility=0.0)
    limit = float(Explicit().stable_dt(model, model.initial_fields(jnp.float32)))
    assert limit == pytest.approx(1 / (0.25 + 0.125), rel=1e-6)
