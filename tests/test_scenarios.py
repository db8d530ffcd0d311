"""The shipped seed scenarios (configs/*.toml): every config loads and validates, every 2D
config runs, and the scenarios do what they claim over their full run:

- infection_resolution: the pathogen is cleared (its total falls by over 90% from its peak)
  and inflammation resolves (the IL-6 total ends below 10% of its peak);
- il2_therapy: the tumour burden at the end is below that of il2_therapy_untreated, and the
  side-effect read-out region "healthy" sees the doses (peak and time-integrated IL-2);
- autoimmune: inflammation persists, its IL-6 total at the end at least 5x that of
  autoimmune_healthy (whose stop signal is intact).

The full runs take 5-20 s each on two CPU cores (imex), their explicit-stepper versions
minutes each: the outcome checks run with -m slow, as do the validations of the 128^3
configs (3 s each to build) and the validations and 20 minute runs of the controls (a term,
a dose or a cell type less than their scenarios); the default run loads every config,
checks that each 3D one is its 2D one on a cube, and validates and runs the 2D scenarios
for 20 simulated minutes.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np
import pytest

import engine
from engine.config.build import build_grid, region_mask

CONFIG_DIR = Path(__file__).resolve().parents[1] / "configs"
CONFIGS = sorted(CONFIG_DIR.glob("*.toml"))
SCENARIOS = (
    "infection_resolution",
    "il2_therapy",
    "il2_therapy_untreated",
    "autoimmune",
    "autoimmune_healthy",
)


def _ids(paths):
    return [path.stem for path in paths]


def _is_2d(path: Path) -> bool:
    return len(engine.load_config(path).grid.shape) == 2


CONFIGS_2D = [path for path in CONFIGS if _is_2d(path)]


def test_the_seed_scenarios_ship_in_2d_and_3d():
    names = {path.stem for path in CONFIGS}
    for name in SCENARIOS:
        assert name in names, f"configs/{name}.toml is missing"
        assert f"{name}_3d" in names, f"configs/{name}_3d.toml is missing"


def _smoke_run(path: Path):
    # the controls, and il2_niches (its cells: tests/test_niches.py, test_cells.py); by
    # default il2_therapy only (the others compile for 7-9 s each)
    slow = path.stem in (
        "autoimmune",
        "infection_resolution",
        "il2_therapy_untreated",
        "autoimmune_healthy",
        "il2_niches_no_treg",
        "il2_niches",
    )
    return pytest.param(path, id=path.stem, marks=[pytest.mark.slow] if slow else [])


# by default through the smoke runs below, which validate too (compiling the loop once for
# both); every config here, the 3D ones and the controls too, with -m slow
@pytest.mark.slow
@pytest.mark.parametrize("path", CONFIGS, ids=_ids(CONFIGS))
def test_config_loads_and_validates(path):
    cfg = engine.load_config(path)
    report = engine.Simulation(cfg).validate()
    assert report["stepper"] == cfg.time.stepper
    assert np.isfinite(report["dt"]) and report["dt"] > 0
    assert report["steps"] >= 1
    assert report["memory_bytes"] > 0


@pytest.mark.parametrize("name", SCENARIOS)
def test_3d_variant_is_the_same_model_on_a_128_cube(name):
    flat = engine.load_config(CONFIG_DIR / f"{name}.toml")
    cube = engine.load_config(CONFIG_DIR / f"{name}_3d.toml")
    assert cube.grid.shape == (128, 128, 128)
    assert cube.grid.spacing == (flat.grid.spacing[0],) * 3
    for table in ("time", "species", "populations", "terms", "sources", "output"):
        assert getattr(cube, table) == getattr(flat, table), table
    assert set(cube.regions) == set(flat.regions)


@pytest.mark.parametrize("path", [_smoke_run(path) for path in CONFIGS_2D])
def test_2d_config_smoke_run(path):
    cfg = engine.load_config(path, overrides={"time.end": "20 min", "time.output_every": "10 min"})
    sim = engine.Simulation(cfg)
    report = sim.validate()
    assert report["stepper"] == cfg.time.stepper and report["steps"] >= 1
    assert np.isfinite(report["dt"]) and report["dt"] > 0 and report["memory_bytes"] > 0
    state = sim.advance(sim.initial_state(), 600.0)
    state = sim.advance(state, cfg.time.end)
    assert state.t == pytest.approx(1200.0)
    for name, value in state.numpy().items():
        assert value.shape == cfg.grid.shape, name
        assert np.all(np.isfinite(value)), f"{name} has non-finite values"
        assert value.min() >= 0, f"{name} has negative values"


# --- scenario outcomes over the full runs ---------------------------------------------------


@functools.cache
def scenario(name: str, stepper: str = "imex") -> dict:
    """The full run of configs/<name>.toml, sampled every output_every: time (s), the total of
    every field (sum over voxels) and the mean of every field over every region."""
    cfg = engine.load_config(CONFIG_DIR / f"{name}.toml", overrides={"time.stepper": stepper})
    sim = engine.Simulation(cfg)
    grid = build_grid(cfg)
    masks = {region: region_mask(grid, spec, region) for region, spec in cfg.regions.items()}
    state = sim.initial_state()
    frames = [state.t]
    series = {"total": [], "mean": []}

    def record(fields):
        for value in fields.values():
            assert np.all(np.isfinite(value)) and value.min() >= 0
        series["total"].append({k: float(np.sum(v, dtype=np.float64)) for k, v in fields.items()})
        series["mean"].append(
            {
                (k, region): float(np.mean(v[mask], dtype=np.float64))
                for k, v in fields.items()
                for region, mask in masks.items()
            }
        )

    record(state.numpy())
    every, end = cfg.time.output_every, cfg.time.end
    for k in range(1, math.ceil(end / every - 1e-9) + 1):
        state = sim.advance(state, min(k * every, end))
        frames.append(state.t)
        record(state.numpy())
    total = {k: np.array([row[k] for row in series["total"]]) for k in series["total"][0]}
    mean = {k: np.array([row[k] for row in series["mean"]]) for k in series["mean"][0]}
    return {"t": np.array(frames), "total": total, "mean": mean}


STEPPERS = ["imex", "explicit"]


@pytest.mark.slow
@pytest.mark.parametrize("stepper", STEPPERS)
def test_infection_is_cleared_and_inflammation_resolves(stepper):
    run = scenario("infection_resolution", stepper)
    pathogen, il6 = run["total"]["pathogen"], run["total"]["IL6"]
    assert pathogen[-1] < 0.1 * pathogen.max(), "the pathogen total did not fall by over 90%"
    assert pathogen[-1] < 0.1 * pathogen[0]
    assert il6.max() > 0
    assert il6[-1] < 0.1 * il6.max(), "the IL-6 total did not fall below 10% of its peak"
    # the stop signal is up when inflammation resolves, and effectors came and mostly went
    assert run["total"]["IL10"][-1] > 0
    effector = run["total"]["effector"]
    assert effector.max() > 0 and effector[-1] < 0.5 * effector.max()


@pytest.mark.slow
@pytest.mark.parametrize("stepper", STEPPERS)
def test_il2_therapy_shrinks_the_tumour_below_the_untreated_control(stepper):
    treated = scenario("il2_therapy", stepper)
    untreated = scenario("il2_therapy_untreated", stepper)
    tumour, control = treated["total"]["tumour"], untreated["total"]["tumour"]
    assert tumour[-1] < control[-1], "IL-2 therapy did not reduce the tumour burden"
    # the expansion that did it
    assert treated["total"]["effector"][-1] > untreated["total"]["effector"][-1]
    # side-effect read-outs: peak and time-integrated IL-2 in the healthy region
    for run, dosed in ((treated, True), (untreated, False)):
        il2 = run["mean"][("IL2", "healthy")]
        peak = il2.max()
        exposure = float(np.sum((il2[1:] + il2[:-1]) / 2 * np.diff(run["t"])))  # nM s
        if dosed:
            assert peak > 0.05 and exposure > 0
        else:
            assert peak == 0 and exposure == 0


@pytest.mark.slow
@pytest.mark.parametrize("stepper", STEPPERS)
def test_autoimmune_inflammation_persists_against_the_healthy_control(stepper):
    sick = scenario("autoimmune", stepper)["total"]["IL6"]
    healthy = scenario("autoimmune_healthy", stepper)["total"]["IL6"]
    assert sick[-1] >= 5 * healthy[-1], "autoimmune IL-6 is not 5x the healthy control's"
    assert healthy[-1] < 0.1 * healthy.max(), "the healthy control did not resolve"
    assert sick[-1] > 0.3 * sick.max(), "the autoimmune inflammation did not persist"
