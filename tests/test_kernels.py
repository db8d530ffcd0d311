"""The fused Pallas kernel of the explicit stages (`engine.stepping.kernels`) against the XLA
path: the same increments for every term, boundary and grid shape. Here, without a GPU, the
kernel runs in Pallas' interpreter; on a GPU the same tests check the compiled Triton kernel."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import engine
from engine.config.loading import load_config
from engine.model.rhs import face_diffusivities
from engine.numerics import operators
from engine.numerics.boundary import Boundary, Dirichlet, Neumann, Periodic, Robin
from engine.stepping import ensemble
from engine.stepping import kernels as fused_kernels
from engine.stepping.simulation import State

SLOW = pytest.mark.slow

# the shared IL-2/T-cell config (tests/conftest.py) in 3D, with ragged blocks (no axis a
# multiple of its tile), and recruitment: a grid-sized parameter (the region's mask)
CHANGES = {
    "grid.shape": [6, 5, 20],
    "regions.core.sphere.center": ["30 um", "25 um", "100 um"],
    "terms[0].activators[0].hill": 2,
}
RECRUITMENT = {
    "type": "recruitment",
    "population": "T",
    "region": "core",
    "rate": "1e-7 1/(um^3 s)",
    "activators": [{"of": "IL2", "K": 0.5, "hill": 1}],
}


@pytest.fixture
def config(cells_config):
    config = cells_config(CHANGES)
    config["terms"].append(RECRUITMENT)
    return config


CASES = {
    "3D neumann": {},
    "3D dirichlet and robin": {
        "species.IL2.boundary": {"x_min": {"dirichlet": 0.5}, "z_max": {"robin": {"h": 0.3}}}
    },
    "3D periodic": {"grid.boundary": "periodic"},
    "3D chemotaxis": {"populations.T.chemotaxis": {"species": "IL2", "sensitivity": 2.0}},
    "3D chemotaxis periodic": {
        "grid.boundary": "periodic",
        "populations.T.chemotaxis": {"species": "IL2", "sensitivity": 2.0},
    },
    "3D whole blocks": {"grid.shape": [8, 4, 32]},  # no clamp along z, no store mask
    "3D whole blocks periodic chemotaxis": {
        "grid.shape": [8, 4, 32],
        "grid.spacing": ["12 um", "10 um", "8 um"],  # each axis' drift at its own spacing
        "grid.boundary": "periodic",
        "populations.T.chemotaxis": {"species": "IL2", "sensitivity": 2.0},
    },
    "3D one and two voxels across": {
        "grid.shape": [1, 2, 20],
        "regions.core.sphere.center": ["5 um", "10 um", "100 um"],
        "species.IL2.boundary": {"z_min": {"dirichlet": 0.5}, "y_max": {"robin": {"h": 0.3}}},
    },
    "2D": {"grid.shape": [9, 140], "regions.core.sphere.center": ["30 um", "25 um"]},
    "2D whole rows": {"grid.shape": [9, 128], "regions.core.sphere.center": ["30 um", "25 um"]},
    "1D periodic": {
        "grid.shape": [1030],
        "grid.boundary": "periodic",
        "regions.core.sphere.center": ["30 um"],
    },
}


def increments(cfg, kernels, scheme, dtype, steps=3, compensated=True):
    sim = engine.Simulation(
        cfg, kernels=kernels, scheme=scheme, dtype=dtype, compensated=compensated
    )
    state = sim.initial_state()
    rng = np.random.default_rng(1)  # every field non-zero, so that every term acts
    fields = {
        k: jnp.asarray(rng.uniform(0.5, 1.5, v.shape), dtype) for k, v in state.fields.items()
    }
    dt = 0.5 * sim.stable_dt(State(t=0.0, fields=fields))  # within the limit of these fields
    return {k: np.asarray(v) for k, v in sim.advance_steps(fields, 0.0, dt, steps).items()}


# by default every face kind, term and block layout once, in 3D and 1D (2D: the seed scenarios
# below); all cases with -m slow
DEFAULT_CASES = {
    ("3D dirichlet and robin", "ssprk3"),
    ("3D whole blocks periodic chemotaxis", "euler"),
    ("1D periodic", "ssprk3"),
    ("3D one and two voxels across", "euler"),
}


@pytest.mark.parametrize(
    "case, scheme",
    [
        pytest.param(case, scheme, marks=[] if (case, scheme) in DEFAULT_CASES else SLOW)
        for scheme in ("ssprk3", "euler")
        for case in CASES
    ],
)
def test_the_fused_kernel_computes_the_xla_step(case, scheme, float64, config):
    """float64: every term, boundary kind and grid shape; ssprk3 (three stages a step, each
    the kernel's increment) and euler (the kernel adds the fields itself)."""
    cfg = load_config(config, CASES[case])
    xla = increments(cfg, "xla", scheme, float64)
    fused = increments(cfg, "pallas", scheme, float64)
    for name, expected in xla.items():
        np.testing.assert_allclose(fused[name], expected, rtol=1e-13, atol=1e-15, err_msg=name)


@pytest.mark.parametrize("n", [1, 2, 5])
@pytest.mark.parametrize(
    "face", [Neumann(), Dirichlet(0.5), Robin(0.3, outside=0.2), Periodic()], ids=repr
)
def test_the_kernels_face_rates_are_the_couplings_vectors(face, n):
    """`kernels.face_rates`' three rates per axis rebuild each axis' coupling vectors of a
    uniform diffusivity exactly, on axes of one voxel, two and more, for every face kind."""
    grid = engine.Grid((n, 3), spacing=(2.0, 5.0))
    boundary = Boundary(((face, face), (Neumann(), Dirichlet(1.0))))
    model = engine.Model(grid, species=(engine.Species("c", diffusion=7.0),))
    couplings = operators.face_couplings(
        face_diffusivities(model)["c"], grid, boundary, jnp.float32
    )
    rates = fused_kernels.face_rates({"c": couplings})["c"]
    for axis, ((low, low_value), (high, high_value)) in enumerate(couplings):
        (low_edge, interior, high_edge), outside = rates[axis]
        i = np.arange(grid.shape[axis])
        np.testing.assert_array_equal(np.where(i == 0, low_edge, interior), np.ravel(low))
        np.testing.assert_array_equal(
            np.where(i == grid.shape[axis] - 1, high_edge, interior), np.ravel(high)
        )
        assert outside == (low_value, high_value)
    # the interior faces exchange at D / dx^2 (1/s)
    assert float(rates[1][0][1]) == pytest.approx(7.0 / 5.0**2)
    if n > 1:
        assert float(rates[0][0][1]) == pytest.approx(7.0 / 2.0**2)


@pytest.mark.parametrize(  # each scenario once by default, with and without compensation
    "scenario, compensated",
    [
        ("il2_therapy", True),
        pytest.param("il2_therapy", False, marks=SLOW),
        pytest.param("infection_resolution", True, marks=SLOW),
        pytest.param("infection_resolution", False, marks=SLOW),
    ],
)
def test_the_fused_kernel_in_float32_with_the_seed_scenarios(scenario, compensated):
    """Coarsened 2D seed scenarios (secretion, uptake, killing, recruitment, chemotaxis, doses),
    euler, float32; compensated: the kernel adds the increment with stochastic rounding, else
    rounded to nearest."""
    overrides = {"grid.shape": [24, 24], "grid.spacing": "50 um", "time.stepper": "explicit"}
    cfg = load_config(f"configs/{scenario}.toml", overrides)
    xla = increments(cfg, "xla", "euler", "float32", steps=4, compensated=compensated)
    fused = increments(cfg, "pallas", "euler", "float32", steps=4, compensated=compensated)
    for name, expected in xla.items():
        scale = np.abs(expected).max()
        np.testing.assert_allclose(
            fused[name], expected, rtol=2e-6, atol=1e-6 * scale, err_msg=name
        )


def test_the_fused_kernel_rounds_as_the_xla_path_and_conserves_in_float32():
    """The default float32 ssprk3 step through the kernels: the last stage adds the increment
    with the XLA path's stochastic rounding (the same draws, by each voxel's index in the
    grid), so the two runs agree to a few ulps after 1,500 steps where rounding to nearest
    departs from them by more, and the total of a field diffusing between zero-flux walls
    stays within 1e-6."""
    rng = np.random.default_rng(0)
    grid = engine.Grid((64, 64), spacing=(2.0, 3.0))  # 8 x 1 blocks of 8 x 128, masked
    initial = 100 + rng.uniform(0.0, 1.0, grid.shape)
    model = engine.Model(grid, species=(engine.Species("c", diffusion=20.0, initial=initial),))
    total = np.sum(initial.astype(np.float32), dtype=np.float64)
    ends = {}
    for kernels, compensated in (("pallas", True), ("xla", True), ("pallas", False)):
        sim = engine.Simulation(model, kernels=kernels, compensated=compensated)
        state = sim.initial_state()
        state = sim.advance(state, 1500 * sim.time_step(state))
        assert state.step == 1500
        ends[kernels, compensated] = np.asarray(state.fields["c"], np.float64)
    fused, xla, nearest = ends["pallas", True], ends["xla", True], ends["pallas", False]
    departure = lambda end: np.max(np.abs(end / xla - 1))  # noqa: E731
    assert departure(fused) <= 1e-6 < departure(nearest)
    assert abs(fused.sum() / total - 1) <= 1e-6


@pytest.mark.parametrize(
    "options, message",
    [
        ({"stepper": "imex"}, "explicit steps only"),
        ({"kernels": "cuda"}, 'be "auto", "xla" or "pallas"'),
    ],
)
def test_what_the_kernel_cannot_fuse_is_refused_by_name(options, message, config):
    with pytest.raises(ValueError, match=message):
        engine.Simulation(load_config(config), **{"kernels": "pallas", **options})
    grid = engine.Grid((4, 4), spacing=10.0)
    varying = engine.Species("c", diffusion=np.full((4, 4), 10.0))
    with pytest.raises(ValueError, match="per-voxel diffusivity of c"):
        engine.Simulation(engine.Model(grid, species=(varying,)), kernels="pallas")


def test_sweeps_and_sharded_runs_keep_the_xla_path(config):
    """A batch axis would be a fourth grid axis for Triton, and the kernel does not split over
    devices: ensembles build their steppers without it, and a mesh refuses it."""
    cfg = load_config(config)
    assert not engine.Ensemble(cfg, {"species.IL2.decay": [1e-3, 2e-3]}).sim.stepper.fused
    with pytest.raises(ValueError, match="one device"):
        engine.Simulation(cfg, kernels="pallas", mesh=[1, 1])
    with pytest.raises(ValueError, match='kernels="xla"'):
        ensemble.Ensemble(engine.Simulation(cfg, kernels="pallas"), {0: np.array([1e-3, 2e-3])})


def test_on_a_gpu_explicit_runs_of_several_stages_default_to_the_kernels(monkeypatch, config):
    """kernels = "auto": the Pallas kernels for one-device explicit ssprk2/ssprk3 runs on 3D
    grids on a GPU (measured faster there), XLA for euler, imex, adaptive steps, meshes,
    cells, models the kernels cannot fuse, 2D grids, sweeps and gradients, and on a CPU
    (this machine's backend first, then a GPU's by name)."""
    from engine.runs.gradients import Trajectory

    cfg = load_config(config)
    assert engine.Simulation(cfg).stepper.fused == (jax.default_backend() == "gpu")
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    for scheme in ("ssprk3", "ssprk2"):
        assert engine.Simulation(cfg, scheme=scheme).stepper.fused
    for options in ({"scheme": "euler"}, {"stepper": "imex"}, {"adaptive": True}):
        assert not engine.Simulation(cfg, **options).stepper.fused, options
    assert not engine.Simulation(cfg, mesh=[1, 1]).stepper.fused
    grid = engine.Grid((4, 4, 4), spacing=10.0)
    varying = engine.Species("c", diffusion=np.full((4, 4, 4), 10.0))
    assert not engine.Simulation(engine.Model(grid, species=(varying,))).stepper.fused
    square = load_config(config, CASES["2D"])
    assert not engine.Simulation(square).stepper.fused  # 2D: not measured on a GPU
    assert not engine.Ensemble(cfg, {"species.IL2.decay": [1e-3, 2e-3]}).sim.stepper.fused
    assert not Trajectory(cfg, ["species.IL2.decay"]).sim.stepper.fused
    # a JAX without the Pallas Triton backend (deprecated since 0.11): XLA's, and a clear refusal
    monkeypatch.setattr(fused_kernels, "plt", None)
    assert not engine.Simulation(cfg).stepper.fused
    with pytest.raises(ValueError, match="no Pallas Triton backend"):
        engine.Simulation(cfg, kernels="pallas")


@pytest.mark.slow  # test_the_kernels_launch_as_kernel_launch_says lowers for a GPU by default
def test_the_fused_step_lowers_to_triton_for_a_gpu(monkeypatch, config):
    """On a machine without a GPU: the whole stepping loop, with the kernels built as for a GPU
    (every reaction term and the stochastic rounding traced into them), lowers to one Triton
    kernel per stage."""
    from jax import export

    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    cfg = load_config(config, CASES["3D chemotaxis"])
    sim = engine.Simulation(cfg, kernels="pallas")  # ssprk3, float32, rounding in the kernel
    state = sim.initial_state()
    triton = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
    args = (
        sim.model,
        state.fields,
        {},
        jnp.float32(0),
        jnp.float32(1),
        jnp.int32(5),
        jnp.int32(0),
        jnp.int32(1),
        jnp.int32(1),
    )
    exported = export.export(sim._advance, platforms=["cuda"], disabled_checks=[triton])(*args)
    text = exported.mlir_module()
    assert text.count("xla.gpu.triton") >= 3  # a kernel per stage
    assert "num_warps = 8" in text


@SLOW  # two kernel programs and a GPU lowering, 5 s; the fused step's results run by default
def test_the_kernels_launch_as_kernel_launch_says(monkeypatch, config):
    """`kernel_launch` sets the tile and warps the kernels are built with (what
    bench_kernel_tiles.py varies, on this Simulation only): the lowered kernel has its
    program grid and warps, and the interpreted step is the default launch's to the bit;
    tiles that are not powers of two, and a launch without the kernels, are refused by name."""
    from jax import export

    cfg = load_config(config, CASES["3D dirichlet and robin"])  # 6 x 5 x 20 voxels
    launch = fused_kernels.Launch().with_tile((2, 4, 8), 4)
    assert launch.tiles[:2] == fused_kernels.DEFAULT_LAUNCH.tiles[:2]
    options = dict(kernels="pallas", scheme="euler")  # float32, the rounding in the kernel
    ramp = np.linspace(0.5, 1.5, 600, dtype=np.float32).reshape(6, 5, 20)
    fields = {"IL2": ramp, "T": ramp[::-1]}
    steps = []
    for chosen in (launch, None):
        sim = engine.Simulation(cfg, **options, kernel_launch=chosen)
        given = {name: jnp.asarray(value) for name, value in fields.items()}  # donated
        steps.append(sim.advance_steps(given, 0.0, 0.1, 2))
    for name in fields:
        np.testing.assert_array_equal(np.asarray(steps[0][name]), np.asarray(steps[1][name]))
    monkeypatch.setattr(jax, "default_backend", lambda: "gpu")
    sim = engine.Simulation(cfg, kernels="pallas", kernel_launch=launch)
    triton = export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")
    state = sim.initial_state()
    numbers = (jnp.float32(0), jnp.float32(1), *map(jnp.int32, (1, 0, 1, 1)))
    exported = export.export(sim._advance, platforms=["cuda"], disabled_checks=[triton])(
        sim.model, state.fields, {}, *numbers
    )
    text = exported.mlir_module()
    assert "num_warps = 4" in text and "num_warps = 8" not in text
    assert all(f"grid_{a} = {n}" in text for a, n in zip("xyz", (3, 2, 3))), text[:2000]
    with pytest.raises(ValueError, match=r"kernel_launch: tiles\[2\] must be 3 powers of two"):
        fused_kernels.Launch().with_tile((2, 4, 6), 4)
    with pytest.raises(ValueError, match="kernel_launch: warps must be a power of two"):
        fused_kernels.Launch(warps=3)
    with pytest.raises(
        ValueError, match='kernel_launch: only the Pallas kernels.*kernels="pallas"'
    ):
        engine.Simulation(cfg, kernels="xla", kernel_launch=launch)


def test_a_tile_is_no_longer_than_its_axis_rounded_up_to_a_power_of_two():
    """The default tiles, cut to each axis rounded up to a power of two (1 stays 1), so that a
    small grid runs no programs of masked voxels only."""
    launch = fused_kernels.DEFAULT_LAUNCH
    assert launch.tile((1, 4, 20)) == (1, 4, 32)
    assert launch.tile((3, 9, 200)) == (2, 8, 128)
    assert launch.tile((9, 140)) == (8, 128)
    assert launch.tile((5,)) == (8,)


def test_the_fused_kernel_draws_each_fields_stream_as_the_xla_path():
    """Fields named out of sorted order, which only decay (without diffusion the two paths
    compute the same increments to the bit): the kernel adds them with the XLA path's
    stochastic rounding to the bit, each field drawing its own stream (`rounding.streams`),
    not that of its place in the model."""
    grid = engine.Grid((64,), spacing=10.0)
    initial = np.random.default_rng(2).uniform(0.5, 1.5, grid.shape)
    species = tuple(
        engine.Species(name, diffusion=0.0, decay=decay, initial=initial)
        for name, decay in (("b", 1e-3), ("a", 3e-3))
    )
    model = engine.Model(grid, species=species)
    ends = []
    for kernels in ("pallas", "xla"):
        sim = engine.Simulation(model, kernels=kernels, scheme="euler")
        ends.append(sim.advance_steps(sim.initial_state().fields, 0.0, 1.0, 1))
    for name in ("a", "b"):
        np.testing.assert_array_equal(np.asarray(ends[0][name]), np.asarray(ends[1][name]))
