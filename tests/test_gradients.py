"""Gradients through the solver equal central finite differences, forward and reverse mode
agree, checkpointing bounds memory, fits recover known parameters from noisy data with honest
error bars, and sensitivities rank the parameters."""

from __future__ import annotations

import shutil

import h5py
import jax
import jax.numpy as jnp
import numpy as np
import pytest

import engine
from engine.cli.main import main
from engine.config.errors import ConfigError
from engine.config.loading import load_config
from engine.config.parameters import Parameters, numeric_keys
from engine.config.toml import dump_toml
from engine.numerics.constants import MOLECULES_PER_UM3_PER_NM
from engine.runs.gradients import Trajectory, fit, gradient, sensitivity, value_and_gradient


@pytest.fixture
def config(cells_config):
    """The shared IL-2/T-cell config (tests/conftest.py) in float64."""
    return cells_config({"time.dtype": "float64"})


KEYS = [
    "species.IL2.decay",
    "species.IL2.diffusion",
    "terms[0].rate",
    "terms[0].activators[0].K",
]
SLOW = pytest.mark.slow
CASES = {  # the CG case (robin faces: TR-BDF2) checks the parameters of the solve
    "explicit": ({"time.stepper": "explicit"}, KEYS),
    "imex spectral": ({"time.stepper": "imex", "time.dt": 20.0}, KEYS),
    "imex spectral dirichlet": (  # D also sets the inflow through the faces
        {
            "time.stepper": "imex",
            "time.dt": 20.0,
            "species.IL2.boundary": {"x_min": {"dirichlet": 0.5}},
        },
        KEYS[:2],
    ),
    "imex cg": (
        {"time.stepper": "imex", "time.dt": 20.0, "grid.boundary": {"robin": {"h": 0.5}}},
        KEYS[:2],
    ),
}


def loss_against(target):
    """Squared misfit of IL2 at every frame plus the final T total: a loss touching both."""

    def loss(frames):
        misfit = jnp.sum((frames["IL2"] - target) ** 2)
        return misfit + 1e6 * jnp.sum(frames["T"][-1])

    return loss


def central_differences(trajectory, loss, relative=1e-5):
    evaluate = jax.jit(lambda v: loss(trajectory(v)))
    result = []
    for i, value in enumerate(trajectory.values):
        h = relative * value
        up, down = trajectory.values.copy(), trajectory.values.copy()
        up[i] += h
        down[i] -= h
        result.append(float(evaluate(up) - evaluate(down)) / (2 * h))
    return np.array(result)


@pytest.mark.parametrize(  # every key; `ilsim fit` below goes through imex
    "case",
    [
        pytest.param("explicit", marks=SLOW),  # by default through value_and_gradient below
        pytest.param("imex spectral", marks=SLOW),
        pytest.param("imex spectral dirichlet", marks=SLOW),
        pytest.param("imex cg", marks=SLOW),  # 30 s to compile
    ],
)
def test_gradients_equal_central_finite_differences(case, float64, config):
    overrides, keys = CASES[case]
    cfg = load_config(config, overrides)
    trajectory = Trajectory(cfg, keys)
    target = 1.2 * np.asarray(trajectory(trajectory.values)["IL2"])
    loss = loss_against(target)
    reverse = gradient(cfg, loss, keys)
    expected = central_differences(trajectory, loss)
    for key, fd in zip(keys, expected):
        assert reverse[key] == pytest.approx(fd, rel=1e-3), key
        assert fd != 0
    forward = gradient(cfg, loss, keys, mode="forward")
    for key in keys:
        assert forward[key] == pytest.approx(reverse[key], rel=1e-9), key


def test_the_trajectory_is_the_run(float64, config):
    """Frames of the differentiable trajectory equal those of Simulation.advance (same steps)."""
    cfg = load_config(config, {"time.stepper": "imex", "time.dt": 30.0})
    trajectory = Trajectory(cfg, ["terms[1].k_on"])
    frames = trajectory(trajectory.values)
    sim = engine.Simulation(cfg)
    state = sim.initial_state()
    for index, t in enumerate(trajectory.times):
        state = sim.advance(state, t)
        for name, value in state.numpy().items():
            np.testing.assert_allclose(frames[name][index], value, rtol=1e-12, atol=1e-300)


@pytest.mark.slow  # five gradient programs to compile
def test_checkpointed_segments_give_one_gradient_and_bound_memory(float64, config):
    cfg = load_config(config, {"time.end": "20 min", "time.output_every": "20 min"})
    loss = loss_against(0.0)
    by_segment = {s: gradient(cfg, loss, KEYS[:2], segment=s) for s in (1, 7, None)}
    for key in KEYS[:2]:
        assert by_segment[1][key] == pytest.approx(by_segment[None][key], rel=1e-12)
        assert by_segment[7][key] == pytest.approx(by_segment[None][key], rel=1e-12)

    def temporary_bytes(segment):
        trajectory = Trajectory(cfg, KEYS[:2], segment=segment)
        steps = sum(n for n, *_ in trajectory._plan[-1][1])
        grad = jax.jit(jax.grad(lambda v: loss(trajectory(v))))
        compiled = grad.lower(jnp.asarray(trajectory.values)).compile()
        return steps, compiled.memory_analysis().temp_size_in_bytes

    steps, whole = temporary_bytes(10**9)  # one segment: every step's state kept
    _, checkpointed = temporary_bytes(None)  # about sqrt(steps) per segment
    assert steps > 100
    assert checkpointed < whole / 4


def test_reverse_mode_refuses_steppers_it_cannot_go_through(float64, config):
    loss = loss_against(0.0)
    cfg = load_config(config, {"time.stepper": "quasi_steady", "time.dt": 60.0})
    with pytest.raises(ConfigError, match="quasi_steady"):
        gradient(cfg, loss, KEYS[:1])
    drifting = load_config(
        config,
        {
            "time.stepper": "imex",
            "populations.T.chemotaxis": {"species": "IL2", "sensitivity": 10.0},
        },
    )
    with pytest.raises(ConfigError, match="chemotaxis"):
        gradient(drifting, loss, KEYS[:1])


@pytest.mark.slow  # forward mode through CG and Picard loops: 12 s to compile
def test_forward_mode_goes_through_the_quasi_steady_loops(float64, config):
    loss = loss_against(0.0)
    cfg = load_config(config, {"time.stepper": "quasi_steady", "time.dt": 60.0})
    forward = gradient(cfg, loss, KEYS[:1], mode="forward")  # goes through the while loops
    fd = central_differences(Trajectory(cfg, KEYS[:1]), loss)[0]
    assert forward[KEYS[0]] == pytest.approx(fd, rel=1e-3)


def test_parameters_are_affine_in_config_values(float64, config):
    cfg = load_config(config, {"species.IL2.diffusion": {"value": 20.0, "regions": {"core": 5.0}}})
    parameters = Parameters.of(cfg, ["species.IL2.diffusion", "sources[0].rate"])
    model = engine.build_model(cfg)
    moved = parameters.bind(model, np.array([40.0, 0.03]))
    rebuilt = engine.build_model(
        load_config(
            config,
            {
                "species.IL2.diffusion": {"value": 40.0, "regions": {"core": 5.0}},
                "sources[0].rate": 0.03,
            },
        )
    )
    for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(rebuilt)):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-12)
    assert "species.IL2.diffusion" in numeric_keys(cfg)
    for key, message in [
        ("time.end", "changes nothing"),
        ("species.IL2", "not a number"),
        ("terms[7].rate", "no such key"),
    ]:
        with pytest.raises(ConfigError, match=message):
            Parameters.of(cfg, [key])


def test_parameter_keys_name_rates_once_and_each_moves_the_model():
    """`numeric_keys` leaves out the numbers that place things (a point source's position, a
    Gaussian's center); `Parameters` keeps keys in display form, refuses a key named twice
    (with and without `.value`), and refuses a coefficient whose region a later region covers
    (later entries win): it changes nothing, and a sweep over it would too."""
    raw = {
        "grid": {"shape": [10], "spacing": "10 um"},
        "time": {"end": "1 min"},
        "regions": {
            "left": {"box": {"lower": [0], "upper": [40]}},
            "wide": {"box": {"lower": [0], "upper": [60]}},
        },
        "species": {
            "IL2": {
                "diffusion": {"value": 20.0, "regions": {"left": 5.0, "wide": 10.0}},
                "initial": {"gaussian": {"center": [50.0], "sigma": 20.0, "amplitude": 1.0}},
            }
        },
        "sources": [{"type": "point", "species": "IL2", "position": [35.0], "rate": 100.0}],
    }
    cfg = load_config(raw)
    keys = numeric_keys(cfg)
    assert {"species.IL2.diffusion", "species.IL2.initial.sigma", "sources[0].rate"} <= set(keys)
    assert not [k for k in keys if "position" in k or "center" in k], keys
    assert Parameters.of(cfg, ["species.IL2.diffusion.value"]).keys == ("species.IL2.diffusion",)
    with pytest.raises(ConfigError, match="names a key twice"):
        Parameters.of(cfg, ["species.IL2.diffusion", "species.IL2.diffusion.value"])
    assert Parameters.of(cfg, ["species.IL2.diffusion.regions.wide"]).values.tolist() == [10.0]
    with pytest.raises(
        ConfigError, match=r"^species\.IL2\.diffusion\.regions\.left: changes nothing"
    ):
        Parameters.of(cfg, ["species.IL2.diffusion.regions.left"])


FIT_CONFIG = {
    "grid": {"shape": [40], "spacing": "10 um"},
    "time": {"end": "30 min", "output_every": "5 min", "dtype": "float64", "stepper": "imex"},
    "regions": {"left": {"box": {"lower": [0], "upper": [40]}}},
    "species": {"IL2": {"diffusion": "20 um^2/s", "decay": "1e-4 1/s"}},
    "populations": {"T": {"initial": 1e-4}},
    "terms": [{"type": "uptake", "species": "IL2", "by": "T", "k_on": 0.01, "receptors": 1000}],
    "sources": [{"type": "region", "species": "IL2", "region": "left", "rate": "0.05 nM/s"}],
}
FIT_KEYS = ["species.IL2.diffusion", "terms[0].k_on"]


@pytest.mark.slow  # `ilsim fit` below fits by default
def test_a_fit_recovers_diffusion_and_uptake_from_noisy_data(float64):
    """IL-2 from a boundary source, taken up by T cells: profiles made with D = 20 um^2/s,
    k_on = 0.01 1/(nM s), with 2% multiplicative noise; the fit starts 3x off each."""
    truth = load_config(FIT_CONFIG)
    trajectory = Trajectory(truth, FIT_KEYS)
    clean = np.asarray(trajectory(trajectory.values)["IL2"])
    noisy = clean * (1 + 0.02 * np.random.default_rng(3).standard_normal(clean.shape))
    start = load_config(FIT_CONFIG, {"species.IL2.diffusion": 60.0, "terms[0].k_on": 0.01 / 3})
    result = fit(start, {"time": trajectory.times, "IL2": noisy}, FIT_KEYS)
    assert result.converged
    np.testing.assert_allclose(result.start, [60.0, 0.01 / 3])
    for value, std, true in zip(result.values, result.std, [20.0, 0.01]):
        assert abs(value / true - 1) < 0.05
        assert 0 < std < 0.05 * value
        assert abs(value - true) < 5 * std  # the error bars are honest, not decorative
    assert "species.IL2.diffusion" in result.table()


def test_ilsim_fit_reads_an_output_file(tmp_path, capsys, float64):
    """The explicit stepper: a fit through imex compiles for twice as long (its reverse mode
    solves each step's transposed system), which test_a_fit_recovers_... exercises."""
    config = tmp_path / "truth.toml"
    explicit = {"time.stepper": "explicit", "time.dt": 1.0}  # stable up to D = 50 um^2/s
    explicit |= {"time.end": "10 min", "time.output_every": "2 min"}
    config.write_text(dump_toml(load_config(FIT_CONFIG, explicit)))
    data = tmp_path / "obs.h5"
    assert main(["run", str(config), "-o", str(data), "--quiet"]) == 0
    argv = ["fit", str(config), "--data", str(data), "--param", "species.IL2.diffusion"]
    argv += ["--param", "terms[0].k_on", "--set", "species.IL2.diffusion=7"]
    assert main([*argv, "--set", "terms[0].k_on=0.03"]) == 0
    printed = capsys.readouterr().out
    assert "converged" in printed and "--set species.IL2.diffusion=20" in printed
    refusals = [
        (["--param", "time.end"], "changes nothing"),
        (["--param", FIT_KEYS[0], "--set", "time.stepper=quasi_steady"], "--set time.stepper"),
        (["--param", FIT_KEYS[0], "--max-iterations", "0"], "--max-iterations: 0"),
    ]
    for args, refusal in refusals:
        assert main(["fit", str(config), "--data", str(data), *args]) == 2
        err = capsys.readouterr().err.strip()  # one line: no note before it
        assert len(err.splitlines()) == 1 and refusal in err, err
    for bad in (tmp_path / "none.h5", config):
        assert main(["fit", str(config), "--data", str(bad), "--param", FIT_KEYS[0]]) == 2
        assert str(bad) in capsys.readouterr().err
    holed = tmp_path / "holed.h5"  # fitted, then "SVD did not converge"
    shutil.copy(data, holed)
    with h5py.File(holed, "r+") as file:
        file["fields/IL2"][2, 5] = np.nan
    assert main(["fit", str(config), "--data", str(holed), "--param", FIT_KEYS[0]]) == 2
    assert capsys.readouterr().err == (
        "ilsim: error: data: field IL2, frame 3/6 (t = 4 min) holds NaN or inf; fit "
        "observations of finite values\n"
    )


@pytest.mark.slow  # a forward-mode program per parameter; value_and_gradient runs by default
def test_sensitivities_rank_every_parameter(float64, config):
    """A linear model (no Hill factor) started empty: the IL2 total is proportional to the
    source rate (elasticity exactly 1)."""
    linear = dict(config, terms=config["terms"][1:])
    cfg = load_config(linear)
    rows = sensitivity(cfg, "IL2")
    by_key = {r.key: r for r in rows}
    assert by_key["sources[0].rate"].elasticity == pytest.approx(1.0, rel=1e-9)
    assert set(by_key) >= {"species.IL2.decay", "species.IL2.diffusion", "terms[0].k_on"}
    assert [abs(r.elasticity) for r in rows] == sorted(
        (abs(r.elasticity) for r in rows), reverse=True
    )
    total = jax.jit(Trajectory(cfg, ["species.IL2.decay"], [cfg.time.end]))
    k = by_key["species.IL2.decay"].value
    grid_volume = 10.0 * 10.0 * 10.0
    values = [float(np.sum(total(np.array([k * f]))["IL2"][-1])) for f in (1 + 1e-5, 1 - 1e-5)]
    fd = (values[0] - values[1]) / (2e-5 * k) * grid_volume * MOLECULES_PER_UM3_PER_NM
    assert by_key["species.IL2.decay"].derivative == pytest.approx(fd, rel=1e-4)


def test_value_and_gradient_of_a_summary(float64, config):
    """The value of a summary and its reverse-mode derivative, against central differences
    (every key, forward mode too: test_gradients_equal_central_finite_differences)."""
    cfg = load_config(config)

    def summary(frames):
        return jnp.max(frames["IL2"][-1])

    value, grads = value_and_gradient(cfg, summary, ["sources[0].rate"])
    trajectory = Trajectory(cfg, ["sources[0].rate"])
    assert value == pytest.approx(float(summary(trajectory(trajectory.values))), rel=1e-12)
    (expected,) = central_differences(trajectory, summary)
    assert expected > 0 and grads["sources[0].rate"] == pytest.approx(expected, rel=1e-4)


SMALL = {  # a 1D strip of 10 voxels, explicit, 2 min: gradients compile in a second or so
    "grid": {"shape": [10], "spacing": "10 um"},
    "time": {
        "end": "2 min",
        "output_every": "1 min",
        "dtype": "float64",
        "stepper": "explicit",
        "dt": "2 s",
    },
    "regions": {"left": {"box": {"lower": [0], "upper": [30]}}},
    "species": {"IL2": {"diffusion": "20 um^2/s", "decay": "1e-3 1/s"}},
    "populations": {"T": {"initial": 1e-4}},
    "terms": [{"type": "uptake", "species": "IL2", "by": "T", "k_on": 0.01, "receptors": 1000}],
    "sources": [{"type": "region", "species": "IL2", "region": "left", "rate": "0.05 nM/s"}],
}
SMALL_KEYS = ["species.IL2.diffusion", "species.IL2.decay", "sources[0].rate", "terms[0].k_on"]


@pytest.mark.slow  # a reverse and a forward program to compile, 5 s
def test_each_parameter_gets_its_own_derivative(float64):
    """Several parameters of different sizes and units at once, reverse and forward mode,
    against central differences of the trajectory in float64: a derivative reported under
    another parameter's key, or taken with respect to another leaf, fails."""
    cfg = load_config(SMALL)
    trajectory = Trajectory(cfg, SMALL_KEYS)
    weights = np.linspace(1.0, 2.0, 10)

    def loss(frames):
        return jnp.sum(frames["IL2"][-1] * weights) + jnp.sum(frames["IL2"][0] ** 2)

    value, reverse = value_and_gradient(cfg, loss, SMALL_KEYS)
    forward = gradient(cfg, loss, SMALL_KEYS, mode="forward")
    expected = central_differences(trajectory, loss, relative=1e-6)
    assert value == pytest.approx(float(loss(trajectory(trajectory.values))), rel=1e-12)
    assert len(set(np.sign(expected))) > 1  # the derivatives differ: a swap shows
    for key, fd in zip(SMALL_KEYS, expected):
        assert reverse[key] == pytest.approx(fd, rel=1e-6), key
        assert forward[key] == pytest.approx(reverse[key], rel=1e-9), key


@pytest.mark.slow  # a reverse-mode program to compile, 3 s
def test_sensitivity_is_the_derivative_of_the_total_in_molecules(float64):
    """sensitivity's summary is the total of a species at time.end in molecules (voxel
    volume x molecules per um^3 per nM): its derivative against central differences of
    that total, and the elasticity of a linear model's total in its source rate is 1."""
    linear = {k: v for k, v in SMALL.items() if k not in ("terms", "populations")}
    cfg = load_config(linear)
    rows = {
        r.key: r for r in sensitivity(cfg, "IL2", params=["species.IL2.decay", "sources[0].rate"])
    }
    factor = 10.0 * 10.0 * 10.0 * MOLECULES_PER_UM3_PER_NM  # a 1D voxel is 10 um on a side
    trajectory = Trajectory(cfg, ["species.IL2.decay", "sources[0].rate"], [cfg.time.end])

    def total(frames):
        return jnp.sum(frames["IL2"][-1]) * factor

    expected = central_differences(trajectory, total, relative=1e-6)
    value = float(total(trajectory(trajectory.values)))
    for (key, fd), v in zip(zip(trajectory.keys, expected), trajectory.values):
        assert rows[key].value == v
        assert rows[key].derivative == pytest.approx(fd, rel=1e-6), key
        assert rows[key].elasticity == pytest.approx(v * fd / value, rel=1e-6), key
    assert rows["sources[0].rate"].elasticity == pytest.approx(1.0, rel=1e-9)


@pytest.mark.slow  # L-BFGS and a Jacobian to compile, 11 s
def test_a_fit_reports_its_gauss_newton_errors_in_the_parameters_units(float64):
    """At the fitted values, the residuals are each field scaled by its observed maximum;
    the loss is their mean square and the standard errors are the Gauss-Newton ones
    (sigma^2 (J^T J)^-1, sigma^2 = |r|^2 / (n - p)) of the parameters themselves, which the
    fit's log-parameters give through the chain rule d log p = dp / p."""
    truth = load_config(SMALL)
    keys = ["species.IL2.diffusion", "sources[0].rate"]
    trajectory = Trajectory(truth, keys)
    clean = np.asarray(trajectory(trajectory.values)["IL2"])
    noisy = 1e3 * clean * (1 + 0.03 * np.random.default_rng(5).standard_normal(clean.shape))
    data = {"time": trajectory.times, "IL2": noisy / 1e3}
    result = fit(truth, data, keys, max_iterations=30)
    scale = np.max(np.abs(data["IL2"]))

    def residuals(values):
        return ((trajectory(values)["IL2"] - data["IL2"]) / scale).ravel()

    r = np.asarray(residuals(result.values))
    jacobian = np.asarray(jax.jacfwd(residuals)(jnp.asarray(result.values)))
    sigma2 = float(r @ r) / (r.size - len(keys))
    std = np.sqrt(np.diag(sigma2 * np.linalg.inv(jacobian.T @ jacobian)))
    assert result.loss == pytest.approx(float(r @ r) / r.size, rel=1e-9)
    np.testing.assert_allclose(result.std, std, rtol=1e-6)
    np.testing.assert_allclose(result.values, [20.0, 0.05], rtol=0.1)


def test_the_trajectory_is_the_run_across_dose_edges_and_uneven_steps(float64):
    """A source dosed on and off between frames, and a dt (7 s) that divides neither the
    frame interval nor the stretches between edges: the trajectory steps as
    Simulation.advance does (equal steps of at most dt within each stretch, each at its
    own time), so their frames agree to rounding."""
    dosed = dict(SMALL, time=dict(SMALL["time"], dt="7 s", output_every="40 s"))
    schedule = {"start": "13.3 s", "duration": "31 s", "every": "50 s", "count": 2}
    dosed["sources"] = [dict(SMALL["sources"][0], schedule=schedule)]
    cfg = load_config(dosed)
    trajectory = Trajectory(cfg, ["species.IL2.decay"])
    frames = jax.jit(trajectory)(trajectory.values)
    sim = engine.Simulation(cfg)
    state = sim.initial_state()
    for index, t in enumerate(trajectory.times):
        state = sim.advance(state, t)
        np.testing.assert_allclose(frames["IL2"][index], state.numpy()["IL2"], rtol=1e-12)
    assert float(np.max(state.numpy()["IL2"])) > 0
