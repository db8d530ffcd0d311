"""The term library, scheduled sources and dosing, unit conversion, V4 (Fisher-KPP)."""

import jax.numpy as jnp
import numpy as np
import pytest

import engine
from engine.model import regions, terms
from engine.model.rhs import reaction_terms
from engine.model.sources import Schedule, on_time
from engine.model.terms import MOLECULES_PER_UM3_PER_NM as NA

pytestmark = pytest.mark.usefixtures("x64_module")


def fields(**values):
    return {k: jnp.asarray(v, jnp.float64) for k, v in values.items()}


def test_hill_factors():
    f = fields(c=[0.0, 1.0, 3.0])
    activator = terms.Hill("c", K=1.0, hill=2.0)
    inhibitor = terms.Hill("c", K=1.0, hill=2.0, inhibits=True)
    np.testing.assert_allclose(activator(f), [0.0, 0.5, 0.9])
    np.testing.assert_allclose(inhibitor(f), [1.0, 0.5, 0.1])
    np.testing.assert_allclose(terms.modulation((activator, inhibitor), f), [0.0, 0.25, 0.09])


def test_hill_factors_of_a_slightly_negative_field_are_those_of_zero():
    """Round-off can leave a field a little below 0: a Hill factor reads it as 0 (activator 0,
    inhibitor 1), finite for a non-integer exponent too, where c^h of c < 0 is NaN."""
    f = fields(c=[-1e-12, -0.3, 0.0])
    for hill in (1.0, 1.5, 2.0):
        activator = terms.Hill("c", K=0.2, hill=hill)
        inhibitor = terms.Hill("c", K=0.2, hill=hill, inhibits=True)
        np.testing.assert_array_equal(activator(f), [0.0, 0.0, 0.0])
        np.testing.assert_array_equal(inhibitor(f), [1.0, 1.0, 1.0])


@pytest.mark.parametrize(
    "term, expected_production, expected_loss",
    [
        (terms.Secretion("c", "n", 10.0), {"c": 10.0 * 2e-3 / NA}, {}),
        (terms.Uptake("c", "n", vmax=5.0, km=0.5), {}, {"c": 5.0 / (0.5 + 0.5) * 2e-3 / NA}),
        (terms.Uptake("c", "n", k_on=0.031, receptors=1e3), {}, {"c": 0.031 * 1e3 * 2e-3 / NA}),
        (terms.Growth("n", 0.1, 4e-3), {"n": 0.1 * 2e-3}, {"n": 0.1 * 2e-3 / 4e-3}),
        (
            terms.Growth("n", 0.1, 4e-3, crowding=("n", "m")),
            {"n": 0.1 * 2e-3},
            {"n": 0.1 * 3e-3 / 4e-3},
        ),
        (terms.Death("n", 0.2), {}, {"n": 0.2}),
        (terms.Proliferation("n", 0.3), {"n": 0.3 * 2e-3}, {}),
        (terms.Killing("m", "n", 50.0), {}, {"m": 50.0 * 2e-3}),
        (terms.Conversion("n", "m", 0.4), {"m": 0.4 * 2e-3}, {"n": 0.4}),
        (terms.Recruitment("m", jnp.asarray(1.0), 1e-6), {"m": 1e-6}, {}),
    ],
    ids=lambda x: type(x).__name__ if not isinstance(x, dict) else "",
)
def test_each_term_as_production_and_implicit_loss(term, expected_production, expected_loss):
    """d f/dt = production - loss f, at c = 0.5 nM, n = 2e-3, m = 1e-3 cells/um^3."""
    f = fields(c=0.5, n=2e-3, m=1e-3)
    production, loss = terms.evaluate((term,), f)
    assert set(production) == set(expected_production) and set(loss) == set(expected_loss)
    for name, value in expected_production.items():
        assert float(production[name]) == pytest.approx(value, rel=1e-12)
    for name, value in expected_loss.items():
        assert float(loss[name]) == pytest.approx(value, rel=1e-12)


def test_modulators_multiply_a_term():
    f = fields(c=0.5, n=2e-3, i=1.0)
    plain = terms.Secretion("c", "n", 10.0)
    mods = (terms.Hill("c", 0.5), terms.Hill("i", 1.0, 2.0, inhibits=True))
    modulated = terms.Secretion("c", "n", 10.0, mods)
    ratio = terms.evaluate((modulated,), f)[0]["c"] / terms.evaluate((plain,), f)[0]["c"]
    assert float(ratio) == pytest.approx(0.5 * 0.5)


# Each term's rates with a Hill inhibitor of i (K = 2, h = 3) at i = 1: (1/2)^3 = 1/8, so the
# factor is 1 / (1 + 1/8) = 8/9; and an activator of c (K = 0.25, h = 2) at c = 0.5: 4 / 5.
MODULATORS = (terms.Hill("i", 2.0, 3.0, inhibits=True), terms.Hill("c", 0.25, 2.0))
MODULATION = 8 / 9 * 4 / 5


@pytest.mark.parametrize(
    "make",
    [
        lambda m: terms.Secretion("c", "n", 10.0, m),
        lambda m: terms.Uptake("c", "n", vmax=5.0, km=0.5, modulators=m),
        lambda m: terms.Uptake("c", "n", k_on=0.031, receptors=1e3, modulators=m),
        lambda m: terms.Growth("n", 0.1, 4e-3, crowding=("n", "m"), modulators=m),
        lambda m: terms.Death("n", 0.2, m),
        lambda m: terms.Proliferation("n", 0.3, m),
        lambda m: terms.Killing("m", "n", 50.0, m),
        lambda m: terms.Conversion("n", "m", 0.4, m),
        lambda m: terms.Recruitment("m", jnp.asarray(1.0), 1e-6, m),
    ],
    ids=[
        "Secretion",
        "Uptake-saturable",
        "Uptake-receptors",
        "Growth",
        "Death",
        "Proliferation",
        "Killing",
        "Conversion",
        "Recruitment",
    ],
)
def test_every_term_is_scaled_by_its_modulators(make):
    """DESIGN's terms table: every term is a rate that its Hill activators and inhibitors
    multiply, so each of its productions and loss rates (of a Conversion both the source's
    loss and the target's gain, or mass is not conserved) is the unmodulated one times the
    product of the Hill factors, here with K != 1 and h != 1 (K^h, not K, sets the level)."""
    f = fields(c=0.5, n=2e-3, m=1e-3, i=1.0)
    plain_production, plain_loss = terms.evaluate((make(()),), f)
    production, loss = terms.evaluate((make(MODULATORS),), f)
    assert set(production) == set(plain_production) and set(loss) == set(plain_loss)
    for modulated, plain in ((production, plain_production), (loss, plain_loss)):
        for name, value in plain.items():
            assert float(value) > 0
            assert float(modulated[name]) == pytest.approx(MODULATION * float(value), rel=1e-12)


def test_a_conversion_moves_cells_without_creating_or_losing_any():
    """n -> m at a modulated rate: d(n + m)/dt = production - loss n summed is 0."""
    f = fields(c=0.5, n=2e-3, m=1e-3, i=1.0)
    production, loss = terms.evaluate((terms.Conversion("n", "m", 0.4, MODULATORS),), f)
    gained = float(production["m"])
    lost = float(loss["n"] * f["n"])
    assert gained == pytest.approx(lost, rel=1e-12) and gained > 0


def test_recruitment_acts_only_inside_its_region():
    """Recruitment adds rate cells/um^3/s in the voxels of its region mask and nothing
    outside: over a box region of a grid, exactly rate x (its voxels) in all."""
    grid = engine.Grid((6, 8), spacing=10.0)
    mask = regions.box(grid, (20, 20), (40, 50))
    f = fields(m=np.full(grid.shape, 1e-3))
    term = terms.Recruitment("m", jnp.asarray(mask, jnp.float64), 2e-6)
    production, loss = terms.evaluate((term,), f)
    np.testing.assert_allclose(np.asarray(production["m"]), np.where(mask, 2e-6, 0.0), rtol=1e-12)
    assert loss == {} and 0 < mask.sum() < mask.size


@pytest.mark.parametrize(
    "grid, position",
    [
        (engine.Grid((5, 7, 6), spacing=(1.0, 2.5, 4.0)), (2.2, 9.0, 13.0)),
        (engine.Grid((6, 9), spacing=(3.0, 5.0), depth=2.0), (10.0, 31.0)),
        (engine.Grid((12,), spacing=4.0, depth=7.0), (21.0,)),
    ],
    ids=["3d-anisotropic", "2d-slab", "1d-rod"],
)
def test_a_point_source_releases_its_rate_in_molecules_into_its_voxel(grid, position):
    """`point_source`: `rate` molecules/s into the voxel holding `position`, whatever the
    voxel's shape (anisotropic spacing, a 2D slab's or 1D rod's depth): the supply (nM/s)
    times the voxel volume and molecules per um^3 per nM is the rate, in that voxel only."""
    source = engine.point_source(grid, "c", position, 1234.0)
    rate = np.asarray(source.rate)
    assert np.count_nonzero(rate) == 1 and rate[grid.index_of(position)] > 0
    molecules = rate.sum() * grid.voxel_volume * NA
    assert molecules == pytest.approx(1234.0, rel=1e-12)


def test_custom_term_registered_from_python_and_used_from_a_config():
    def autocatalysis(f, params):
        return {"c": params["gain"] * f["c"]}, {"c": params["loss"] * f["c"]}

    engine.register_term("autocatalysis", autocatalysis)
    cfg = engine.load_config(
        {
            "grid": {"shape": [4], "spacing": 10.0},
            "time": {"end": 10.0, "stepper": "explicit", "dtype": "float64"},
            "species": {"c": {"diffusion": 0.0, "initial": 1.0}},
            "terms": [
                {"type": "custom", "name": "autocatalysis", "params": {"gain": 0.01, "loss": 0.02}}
            ],
        }
    )
    sim = engine.Simulation(cfg, dt=1e-3)
    state = sim.advance(sim.initial_state(), 10.0)
    # dc/dt = 0.01 c - 0.02 c^2 from c = 1: logistic with r = 0.01, K = 0.5
    exact = 0.5 / (1 + (0.5 - 1) / 1 * np.exp(-0.01 * 10.0))
    np.testing.assert_allclose(state.numpy()["c"], exact, rtol=1e-5)


def test_unknown_custom_term_is_a_config_error():
    cfg = engine.load_config(
        {
            "grid": {"shape": [4], "spacing": 10.0},
            "time": {"end": 10.0},
            "species": {"c": {"diffusion": 0.0}},
            "terms": [{"type": "custom", "name": "nothing_registered_like_this"}],
        }
    )
    with pytest.raises(engine.ConfigError, match=r"^terms\[0\]\.name: unknown custom term"):
        engine.Simulation(cfg)


@pytest.mark.parametrize("stepper", ["explicit", "imex"])
def test_secretion_by_known_cells_adds_the_expected_nM(stepper):
    """q molecules/cell/s from N cells for T seconds, no decay, zero-flux walls: the species
    total is q N T molecules, i.e. q N T / (0.6022 V) nM spread over the volume V."""
    density = "2e5 1/mm^3"  # 2e-4 cells/um^3
    cfg = engine.load_config(
        {
            "grid": {"shape": [16, 16], "spacing": "10 um", "depth": "10 um"},
            "time": {"end": "1 h", "stepper": stepper, "dtype": "float64"},
            "regions": {"cluster": {"box": {"lower": [40, 40], "upper": [80, 100]}}},
            "species": {"IL2": {"diffusion": "10 um^2/s"}},
            "populations": {"T": {"initial": {"region": "cluster", "value": density}}},
            "terms": [{"type": "secretion", "species": "IL2", "by": "T", "rate": "10 molecule/s"}],
        }
    )
    sim = engine.Simulation(cfg)
    state = sim.advance(sim.initial_state(), 3600.0)
    voxel = 10.0 * 10.0 * 10.0
    cells = np.sum(state.numpy()["T"]) * voxel
    assert cells == pytest.approx(2e-4 * voxel * 4 * 6)  # 4 x 6 voxel centres in the box
    molecules = np.sum(state.numpy()["IL2"]) * voxel * NA
    assert molecules == pytest.approx(10.0 * cells * 3600.0, rel=1e-9)


def test_on_time_of_schedules_against_brute_force():
    rng = np.random.default_rng(1)
    inf = float("inf")
    for _ in range(200):
        every = rng.choice([inf, rng.uniform(5, 12)])
        duration = rng.uniform(0.5, 5)
        s = Schedule(rng.uniform(0, 50), duration, every, float(rng.choice([inf, 1, 2, 3])))
        t, dt = rng.uniform(0, 80), rng.choice([rng.uniform(0.1, 3), rng.uniform(5, 60)])
        times = np.linspace(t, t + dt, 200_001)
        on = np.zeros_like(times, dtype=bool)
        for k in range(int(min(s.count, 50))):
            begin = s.start + (k * s.every if k else 0.0)
            on |= (times >= begin) & (times < begin + s.duration)
        expected = np.trapezoid(on.astype(float), times)
        assert float(on_time(s, t, dt)) == pytest.approx(expected, abs=10 * dt / 200_000)
    assert float(on_time(Schedule(), jnp.float32(86400.0), jnp.float32(0.1))) == np.float32(0.1)


def dosing_model(dtype_steps):
    grid = engine.Grid((32, 32), spacing=10.0)
    mask = regions.box(grid, (50, 50), (150, 120))
    schedule = Schedule(start=1000.0, duration=1800.0, every=7200.0, count=2)
    species = engine.Species("c", diffusion=50.0)
    source = engine.region_source("c", mask, 2e-3, schedule)  # nM/s
    expected = 2e-3 * 2 * 1800.0 * mask.sum()  # nM x voxels
    return engine.Model(grid, species=(species,), sources=(source,)), expected


@pytest.mark.parametrize(
    "stepper, dt, dtype, tolerance",
    [
        ("explicit", 0.37, "float32", 1e-6),
        ("explicit", "auto", "float64", 1e-12),
        ("imex", 7.0, "float64", 1e-10),
        ("imex", 113.0, "float64", 1e-10),
        ("imex", 7.0, "float32", 1e-6),
        ("imex", 113.0, "float32", 1e-6),
    ],
)
def test_delivered_dose_equals_rate_times_duration(stepper, dt, dtype, tolerance):
    """Two 30 min infusions, steps that do not divide the dose window or its start."""
    model, expected = dosing_model(dtype)
    sim = engine.Simulation(model, stepper=stepper, dt=dt, dtype=dtype)
    state = sim.advance(sim.initial_state(), 20000.0)
    total = np.sum(np.asarray(state.fields["c"], np.float64))
    assert total / expected - 1 == pytest.approx(0, abs=tolerance)


def test_fisher_kpp_front_moves_at_2_sqrt_rM():
    """V4: logistic growth with motility M: the front at n = K/2 travels at 2 sqrt(r M)."""
    r, M, K = 1e-3, 2.0, 1e-3  # 1/s, um^2/s, cells/um^3
    grid = engine.Grid((3000,), spacing=2.0)  # front width sqrt(M/r) = 45 um
    x = grid.coordinates(0)
    population = engine.Population("n", motility=M, initial=np.where(x < 100, K, 0.0))
    model = engine.Model(
        grid, populations=(population,), terms=(terms.Growth("n", r, K),), reaction_rate=r
    )
    sim = engine.Simulation(model, dtype="float64")

    def front(state):
        n = state.numpy()["n"]
        i = np.argmax(n < K / 2)
        return x[i - 1] + (x[i] - x[i - 1]) * (n[i - 1] - K / 2) / (n[i - 1] - n[i])

    # late times: the front's speed approaches 2 sqrt(rM) from below as 3 / (2 lambda t)
    # (Bramson), 1.5% between these two times
    state = sim.advance(sim.initial_state(), 4e4)
    x1 = front(state)
    state = sim.advance(state, 6e4)
    x2 = front(state)
    assert x2 < grid.upper[0] - 300
    speed = (x2 - x1) / 2e4
    assert speed == pytest.approx(2 * np.sqrt(r * M), rel=0.03)


def test_validate_reports_the_stiffest_rate_and_the_explicit_limit():
    cfg = engine.load_config(
        {
            "grid": {"shape": [16, 16], "spacing": "10 um"},
            "time": {"end": "1 h", "stepper": "imex"},
            "species": {"IL2": {"diffusion": "100 um^2/s", "decay": "1e-3 1/s"}},
            "populations": {"T": {"initial": 1e-3}},
            "terms": [
                {
                    "type": "uptake",
                    "species": "IL2",
                    "by": "T",
                    "k_on": "3.1e7 1/M/s",
                    "receptors": 1e3,
                }
            ],
        }
    )
    report = engine.Simulation(cfg).validate()
    uptake = 0.031 * 1e3 * 1e-3 / NA + 1e-3
    assert report["stiffest_field"] == "IL2"
    assert report["stiffest_rate"] == pytest.approx(uptake, rel=1e-5)
    # the forward-Euler positivity limit: diffusion's self-coupling plus the loss rate
    assert report["explicit_limit"] == pytest.approx(1 / (2 * 100.0 * 2 / 100.0 + uptake), rel=1e-5)
    assert report["steps"] == int(np.ceil(3600.0 / report["dt"]))
    assert report["memory_bytes"] > 0


def test_reaction_terms_combine_terms_python_reactions_and_decay():
    grid = engine.Grid((3,), spacing=1.0)
    model = engine.Model(
        grid,
        species=(engine.Species("c", decay=0.1),),
        populations=(engine.Population("n", initial=1.0),),
        terms=(terms.Death("n", 0.2),),
        reactions=lambda f, t: ({"c": f["n"]}, {"n": 0.3}),
    )
    f = model.cast("float64").initial_fields("float64")
    production, loss = reaction_terms(model, f, 0.0)
    assert float(production["c"][0]) == 1.0
    assert float(loss["n"]) == pytest.approx(0.5) and float(loss["c"]) == pytest.approx(0.1)


@pytest.mark.parametrize(  # both take the dose limit (`dose_dt`); quasi_steady with -m slow
    "stepper", ["imex", pytest.param("quasi_steady", marks=pytest.mark.slow)]
)
def test_auto_dt_resolves_short_doses(stepper):
    """With no reaction limiting the step, a 15 min dose must still span several steps: the
    peak concentration matches fine stepping instead of being smeared over a long step."""
    grid = engine.Grid((16, 16), spacing=10.0)
    mask = regions.box(grid, (50, 50), (100, 100))
    dose = Schedule(start=3600.0, duration=900.0, every=28800.0)
    model = engine.Model(
        grid,
        species=(engine.Species("IL2", diffusion=10.0, decay=1.36e-4),),
        sources=(engine.region_source("IL2", mask, 0.05, dose),),
    )
    sim = engine.Simulation(model, stepper=stepper, dtype="float64")
    assert sim.time_step(sim.initial_state()) <= 900.0 / 4
    coarse = sim.advance(sim.initial_state(), 4500.0).numpy()["IL2"]
    fine = engine.Simulation(model, stepper=stepper, dt=10.0, dtype="float64")
    reference = fine.advance(fine.initial_state(), 4500.0).numpy()["IL2"]
    assert coarse.max() == pytest.approx(reference.max(), rel=0.05)


def _uniform_saturable_uptake(c, t, vmax, km, density):
    """c (nM) at time t (s) of dc/dt = -a c / (km + c), a = vmax density / NA: the root of
    km ln(c / c0) + c - c0 + a t = 0 (bisection in float64)."""
    a = vmax * density / NA
    low, high = 0.0, c
    for _ in range(200):
        mid = (low + high) / 2
        residual = km * np.log(mid / c) + mid - c + a * t if mid > 0 else -np.inf
        low, high = (mid, high) if residual < 0 else (low, mid)
    return (low + high) / 2


@pytest.mark.parametrize(
    "uptake_by, scheme, error", [("population", "euler", 3e-3), ("cells", "ssprk3", 1e-7)]
)
def test_explicit_auto_dt_drains_a_saturable_sink_without_overshoot(
    tmp_path, uptake_by, scheme, error
):
    """A uniform field taken up at vmax c / (km + c), km a hundredth of its start: explicit at
    dt = "auto" follows the exact decline to 0 and never leaves [0, c0]. Its limit counts the
    sink at vmax / km, where it ends; at the start's vmax / (km + c0) the field overshot below
    0 and then grew without a source."""
    vmax, km, c0, density = 100.0, 0.01, 1.0, 1e-3  # molecules/s, nM, nM, cells/um^3
    cfg = {
        "grid": {"shape": [4, 5], "spacing": "10 um"},
        "time": {"end": "30 s", "stepper": "explicit", "scheme": scheme, "dtype": "float64"},
        "species": {"IL2": {"diffusion": "10 um^2/s", "initial": c0}},
    }
    uptake = {"species": "IL2", "vmax": vmax, "km": km}
    if uptake_by == "population":
        cfg["populations"] = {"T": {"initial": density}}
        cfg["terms"] = [{"type": "uptake", "by": "T", **uptake}]
    else:  # one still cell at each voxel's centre: 1e-3 cells/um^3 in 10 um cubes
        centres = [[(i + 0.5) * 10, (j + 0.5) * 10] for i in range(4) for j in range(5)]
        np.save(tmp_path / "cells.npy", np.array(centres))
        place = {"file": str(tmp_path / "cells.npy")}
        cfg["cells"] = {"T": {"count": 20, "place": place, "uptake": [uptake]}}
    sim = engine.Simulation(engine.load_config(cfg))
    state = sim.initial_state()
    sink = vmax * density / NA / km
    diffusion = 2 * 2 * 10.0 / 10.0**2  # an inner voxel's self-coupling, 2D
    assert sim.stable_dt(state) == pytest.approx(1 / (sink + diffusion), rel=1e-9)
    report = sim.validate(state)
    assert (report["stiffest_field"], report["stiffest_rate"]) == ("IL2", pytest.approx(sink))
    for t in (2.0, 5.0, 6.0, 8.0, 30.0):
        state = sim.advance(state, t)
        c = np.asarray(state.fields["IL2"])
        exact = _uniform_saturable_uptake(c0, t, vmax, km, density)
        assert np.all((c >= 0) & (c <= c0))
        np.testing.assert_allclose(c, exact, atol=error * c0)
