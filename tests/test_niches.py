"""The IL-2 niche scenario (configs/il2_niches*.toml): regulatory cells that raise their
receptors shrink the niches and lower the fraction of responders above a pSTAT5 threshold
against the control without them; the niche radius scales as (consumer density x
receptors)^(-1/2) (Oyler-Yaniv et al. 2017); the 3D variant is the same tissue."""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import pytest
from scipy import special

import engine
from engine.numerics.constants import MOLECULES_PER_UM3_PER_NM
from engine.runs.examples import niche_radius, niche_scaling

CONFIGS = Path(__file__).resolve().parents[1] / "configs"
THRESHOLD = 0.5  # pSTAT5 above which a responder counts as signalling


@functools.cache
def ended(name: str):
    """The cells of configs/<name>.toml at time.end (imex, its shipped settings)."""
    cfg = engine.load_config(CONFIGS / f"{name}.toml")
    sim = engine.Simulation(cfg)
    state = sim.advance(sim.initial_state(), cfg.time.end)
    return {
        k: {n: np.asarray(v) for n, v in vars(c).items() if n != "state"}
        | {s: np.asarray(v) for s, v in c.state.items()}
        for k, c in state.cells.items()
    }


@pytest.mark.slow  # two 12-hour runs, 20 s
def test_regulatory_cells_lower_the_fraction_of_signalling_responders():
    with_treg, without = ended("il2_niches"), ended("il2_niches_no_treg")
    fractions = [
        np.mean(run["Tresp"]["pSTAT5"][run["Tresp"]["alive"]] > THRESHOLD)
        for run in (with_treg, without)
    ]
    assert fractions[0] < 0.5 * fractions[1], fractions  # measured 0.15 against 0.55
    receptors = with_treg["Treg"]["R"][with_treg["Treg"]["alive"]]
    assert np.median(receptors) > 1.3 * 10_000  # raised from rest by IL-2 (measured 1.7x)


def test_niche_radius_finds_the_threshold_crossing_of_a_known_profile():
    """On the analytic 2D profile K0(r / L) around two centres: the radius where it crosses
    the threshold, to the shells' resolution."""
    h, L = 5.0, 40.0
    index = np.indices((120, 120))
    centres = [(30, 30), (90, 90)]
    field = np.zeros((120, 120))
    for centre in centres:
        r = np.hypot(index[0] - centre[0], index[1] - centre[1]) * h
        field = np.maximum(field, special.k0(np.maximum(r, h / 2) / L))
    threshold = special.k0(1.5)  # crosses at r = 1.5 L = 60 um
    assert niche_radius(field, centres, h, threshold, reach=25) == pytest.approx(60.0, rel=0.02)
    assert np.isnan(niche_radius(field, centres, h, 1e-6, reach=25))


def test_niche_radius_interpolates_log_linearly_between_shells():
    """A field exp(-k h / L) on the voxels whose distance rounds to k voxels has shell means
    exactly exp(-r / L), so the log-linear crossing of exp(-R / L) is R itself."""
    h, L = 4.0, 8.0
    index = np.indices((21, 21))
    field = np.exp(-np.round(np.hypot(index[0] - 10, index[1] - 10)) * h / L)
    threshold = np.exp(-9.2 / L)
    assert niche_radius(field, [(10, 10)], h, threshold, reach=5) == pytest.approx(9.2, rel=1e-12)


@pytest.mark.slow  # five steady states on a 160^2 grid, 15 s
def test_niche_radius_scales_as_consumer_density_times_receptors_to_the_minus_half():
    """16 secreting cells held at the centres of 16 squares of a 1.6 mm slab, responders
    held still at random; their count and receptors vary the consumption 16-fold."""
    consumers = [(1600, 1500), (3200, 1500), (3200, 3000), (6400, 3000), (12800, 3000)]
    products, radii = niche_scaling(
        CONFIGS / "il2_niches_no_treg.toml",
        consumers,
        threshold=0.01,
        overrides={"grid.shape": [160, 160]},
    )
    assert products[-1] / products[0] == 16
    slope = np.polyfit(np.log(products), np.log(radii), 1)[0]
    assert slope == pytest.approx(-0.5, abs=0.05), radii
    # and the radius is where the analytic profile of the equivalent density crosses
    cfg = engine.load_config(CONFIGS / "il2_niches_no_treg.toml")
    D, k, depth = cfg.species["IL2"].diffusion.value, cfg.species["IL2"].decay, 10.0
    volume = 1600.0**2 * depth
    k_on = cfg.cells["Tresp"].uptake[0].k_on
    rate = k_on * products / volume / MOLECULES_PER_UM3_PER_NM + k  # 1/s
    length = np.sqrt(D / rate)
    q = cfg.cells["Th"].secretion[0].rate
    peak = q / (2 * np.pi * D * depth) / MOLECULES_PER_UM3_PER_NM
    x = np.linspace(0.05, 10, 20000)
    crossing = x[np.argmin(np.abs(peak * special.k0(x) - 0.01))]
    np.testing.assert_allclose(radii, crossing * length, rtol=0.15)


@pytest.mark.slow  # builds 164,000 cells
def test_the_3d_variant_is_the_same_tissue_at_the_same_densities():
    flat = engine.load_config(CONFIGS / "il2_niches.toml")
    cube = engine.load_config(CONFIGS / "il2_niches_3d.toml")
    assert cube.grid.shape == (80, 80, 80)
    slab = np.prod(flat.grid.shape) * flat.grid.spacing[0] ** 3
    volume = np.prod(cube.grid.shape) * cube.grid.spacing[0] ** 3
    for name, cells in flat.cells.items():
        assert cube.cells[name].count / volume == pytest.approx(cells.count / slab)
        for key in ("motility", "state", "secretion", "uptake", "state_terms"):
            assert getattr(cube.cells[name], key) == getattr(cells, key), (name, key)
    for table in ("time", "species"):
        assert getattr(cube, table) == getattr(flat, table), table
