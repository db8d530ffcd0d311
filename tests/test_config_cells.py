"""Tests of the config side of individual cells ([cells.NAME], DESIGN.md section 7): parsing and
unit conversion, defaults, one-line key-path errors, the model's `CellType`s, seeded placement
in a region, the whole grid or from a file, overrides, the memory estimate and `Parameters`."""

from __future__ import annotations

import copy
import tomllib

import jax
import numpy as np
import pytest

from engine.config.build import build_grid, build_model, region_mask, time_options
from engine.config.errors import ConfigError
from engine.config.loading import load_config, parse_override
from engine.config.memory import check_memory
from engine.config.parameters import Parameters, numeric_keys
from engine.config.schema import CellTypeConfig
from engine.config.toml import dump_toml
from engine.model import cells
from engine.model.terms import Hill
from engine.numerics.memory import STATE_COPIES

DAY = 86400.0

TH = {
    "count": 50,
    "place": {"region": "lesion"},
    "capacity": 400,
    "motility": "1 um^2/s",
    "chemotaxis": {"species": "CXCL10", "sensitivity": "1e4 um^2/(s nM)"},
    "state": {"R": 1500.0, "pSTAT5": 0.0},
    "secretion": [
        {
            "species": "IL2",
            "rate": "10 1/s",
            "inhibitors": [{"of": "pSTAT5", "K": 0.5, "hill": 2}],
        }
    ],
    "uptake": [
        {
            "species": "IL2",
            "k_on": "3.1e7 1/M/s",
            "receptors": "R",
            "activators": [{"of": "IL2", "K": "10 pM"}],
        },
        {"species": "CXCL10", "vmax": "20 molecule/s", "km": "0.1 nM"},
    ],
    "state_terms": [
        {
            "variable": "R",
            "production": "5 1/s",
            "decay": "1e-3 1/s",
            "activators": [{"of": "pSTAT5", "K": 0.3}],
        },
        {"variable": "pSTAT5", "production": "1 1/min", "decay": "1 1/min"},
    ],
    "division": {
        "rate": "0.5 1/day",
        "activators": [{"of": "pSTAT5", "K": 0.5, "hill": 2}],
        "halve": ["R"],
    },
    "death": {"rate": "0.1 1/day", "inhibitors": [{"of": "T", "K": "1e5 1/mm^3"}]},
}

BASE_2D = {
    "grid": {"shape": [20, 30], "spacing": "10 um", "origin": [-50, 100]},
    "time": {"end": "1 h", "seed": 3},
    "regions": {"lesion": {"sphere": {"center": [50, 250], "radius": "40 um"}}},
    "species": {"IL2": {"diffusion": "25 um^2/s"}, "CXCL10": {"diffusion": 10}},
    "populations": {"T": {"initial": 1e-4}},
    "cells": {"Th": TH, "Treg": {"count": 20}},
}

BASE_3D = {
    "grid": {"shape": [6, 8, 10], "spacing": [5, 10, 10]},
    "time": {"end": "1 h"},
    "regions": {"core": {"box": {"lower": [5, 20, 30], "upper": [20, 50, 70]}}},
    "species": {"IL2": {"diffusion": "25 um^2/s"}},
    "cells": {
        "Th": {
            "count": 200,
            "place": {"region": "core"},
            "state": {"R": 100.0},
            "uptake": [{"species": "IL2", "k_on": 0.01, "receptors": 1000}],
            "secretion": [{"species": "IL2", "rate": 3}],
        }
    },
}


def base(which: dict = BASE_2D) -> dict:
    return copy.deepcopy(which)


def voxel_of(positions: np.ndarray, cfg) -> tuple[np.ndarray, ...]:
    g = cfg.grid
    return tuple(
        np.floor((positions[:, a] - g.origin[a]) / g.spacing[a]).astype(int) for a in range(g.ndim)
    )


# ---------------------------------------------------------------------------------------------
# Parsing, units, defaults


def test_full_2d_example_in_engine_units():
    cfg = load_config(base())
    th = cfg.cells["Th"]
    assert list(cfg.cells) == ["Th", "Treg"]
    assert (th.count, th.capacity, th.place.region, th.place.kind) == (50, 400, "lesion", "region")
    assert th.motility == 1.0
    assert (th.chemotaxis.species, th.chemotaxis.sensitivity) == ("CXCL10", 1e4)
    assert th.state == {"R": 1500.0, "pSTAT5": 0.0}
    assert th.secretion[0].rate == 10.0
    assert th.secretion[0].inhibitors[0].K == 0.5
    assert th.uptake[0].k_on == pytest.approx(0.031)  # 3.1e7 1/(M s) in 1/(nM s)
    assert th.uptake[0].receptors == "R"
    assert th.uptake[0].activators[0].K == pytest.approx(0.01)  # 10 pM in nM: of a species
    assert (th.uptake[1].vmax, th.uptake[1].km) == (20.0, pytest.approx(0.1))
    assert (th.state_terms[0].production, th.state_terms[0].decay) == (5.0, 1e-3)
    assert th.state_terms[1].production == pytest.approx(1 / 60)
    assert th.division.rate == pytest.approx(0.5 / DAY)
    assert th.division.halve == ["R"]
    assert th.death.rate == pytest.approx(0.1 / DAY)
    assert th.death.inhibitors[0].K == pytest.approx(1e-4)  # 1e5 1/mm^3 in cells/um^3


def test_full_3d_example_in_engine_units():
    cfg = load_config(base(BASE_3D))
    th = cfg.cells["Th"]
    assert (th.count, th.capacity) == (200, 800)
    assert th.uptake[0].receptors == 1000.0 and th.uptake[0].k_on == 0.01
    assert th.secretion[0].rate == 3.0


def test_a_modulator_reads_another_cell_type_as_a_density():
    data = base()
    data["cells"]["Th"]["death"]["inhibitors"] = [{"of": "Treg", "K": "1e5 1/mm^3"}]
    cfg = load_config(data)
    assert cfg.cells["Th"].death.inhibitors[0].K == pytest.approx(1e-4)  # cells/um^3
    death = build_model(cfg).cells[0].death
    assert death.modulators[0].of == "Treg" and death.modulators[0].inhibits
    data["cells"]["Th"]["state"]["Treg"] = 1.0
    with pytest.raises(ConfigError, match=r'cells\.Th\.state\.Treg: "Treg" is also a cell type'):
        load_config(data)


def test_defaults():
    cfg = load_config(base())
    treg = cfg.cells["Treg"]
    assert treg.capacity == 4 * treg.count
    assert treg.place is None and treg.chemotaxis is None
    assert (treg.motility, treg.state, treg.division, treg.death) == (0.0, {}, None, None)
    assert treg.secretion == treg.uptake == treg.state_terms == []
    none = CellTypeConfig.model_validate({"count": 0})
    assert none.capacity == 1  # at least one slot
    term = CellTypeConfig.model_validate(
        {"count": 1, "state": {"x": 0}, "state_terms": [{"variable": "x", "decay": 1}]}
    )
    assert term.state_terms[0].production == 0.0
    assert load_config({k: v for k, v in base().items() if k != "cells"}).cells == {}


def test_dump_round_trip(tmp_path):
    np.save(tmp_path / "at.npy", np.full((3, 2), 120.0))
    cfg = load_config(
        base(), {"cells.Treg.place": {"file": str(tmp_path / "at.npy")}, "cells.Treg.count": 3}
    )
    text = dump_toml(cfg)
    assert load_config(tomllib.loads(text)) == cfg
    assert 'receptors = "R"' in text


# ---------------------------------------------------------------------------------------------
# The model


def test_build_model_makes_the_cell_types():
    cfg = load_config(base())
    model = build_model(cfg)
    assert [c.name for c in model.cells] == ["Th", "Treg"]
    th = model.cells[0]
    assert isinstance(th, cells.CellType)
    assert (th.capacity, th.motility, th.state) == (400, 1.0, {"R": 1500.0, "pSTAT5": 0.0})
    assert (th.chemotaxis_species, th.chemotaxis_sensitivity) == ("CXCL10", 1e4)
    assert th.initial.shape == (50, 2) and th.initial.dtype == np.float64
    assert th.secretion == (cells.CellSecretion("IL2", 10.0, (Hill("pSTAT5", 0.5, 2.0, True),)),)
    linear, saturable = th.uptake
    assert linear.receptors is None and linear.receptors_state == "R"
    assert linear.k_on == pytest.approx(0.031) and not linear.saturable
    assert linear.modulators == (Hill("IL2", pytest.approx(0.01), 1.0, False),)
    assert saturable.saturable and (saturable.vmax, saturable.km) == (20.0, pytest.approx(0.1))
    assert th.state_terms[0] == cells.StateTerm("R", 5.0, 1e-3, (Hill("pSTAT5", 0.3),))
    assert th.division == cells.Fate(
        pytest.approx(0.5 / DAY), (Hill("pSTAT5", 0.5, 2.0),), halve=("R",)
    )
    assert th.death.halve == () and th.death.modulators[0].inhibits
    treg = model.cells[1]
    assert (treg.capacity, treg.division, treg.death, treg.secretion) == (80, None, None, ())
    # a number of receptors stays a number
    model3 = build_model(load_config(base(BASE_3D)))
    (uptake,) = model3.cells[0].uptake
    assert (uptake.receptors, uptake.receptors_state) == (1000.0, None)
    assert model3.cells[0].initial_cells(np.float32).alive.sum() == 200


def test_time_options_pass_the_seed():
    assert time_options(load_config(base()))["seed"] == 3
    assert time_options(load_config(base(BASE_3D)))["seed"] == 0


@pytest.mark.parametrize("which", [BASE_2D, BASE_3D], ids=["2d", "3d"])
def test_region_placement_inside_the_mask_and_seeded(which):
    cfg = load_config(base(which))
    model = build_model(cfg)
    region = next(iter(cfg.regions))
    mask = region_mask(build_grid(cfg), cfg.regions[region], region)
    positions = np.asarray(model.cells[0].initial)
    index = voxel_of(positions, cfg)
    assert mask[index].all()
    # spread over the region's voxels, not only their corners
    assert len(set(zip(*index))) > 0.3 * min(mask.sum(), len(positions))
    offsets = [(positions[:, a] - cfg.grid.origin[a]) / cfg.grid.spacing[a] % 1 for a in range(2)]
    assert all(np.ptp(o) > 0.5 for o in offsets)
    # the same seed places the same cells; another seed, others
    again = np.asarray(build_model(load_config(base(which))).cells[0].initial)
    np.testing.assert_array_equal(positions, again)
    other = np.asarray(build_model(load_config(base(which), {"time.seed": 7})).cells[0].initial)
    assert not np.array_equal(positions, other)
    assert mask[voxel_of(other, cfg)].all()
    # the stream is np.random.default_rng([time.seed, type index])
    rng = np.random.default_rng([cfg.time.seed, 0])
    voxels = np.flatnonzero(mask)
    first = voxels[rng.integers(0, voxels.size, size=len(positions))]
    assert np.array_equal(np.ravel_multi_index(index, cfg.grid.shape), first)


def test_whole_grid_placement():
    cfg = load_config(base())
    treg = np.asarray(build_model(cfg).cells[1].initial)
    assert treg.shape == (20, 2)
    lower, upper = np.asarray(cfg.grid.lower), np.asarray(cfg.grid.upper)
    assert np.all(treg >= lower) and np.all(treg < upper)
    expected = np.random.default_rng([3, 1]).uniform(lower, upper, size=(20, 2))
    np.testing.assert_array_equal(treg, expected)
    # each type draws its own stream: the second type does not move with the first's count
    fewer = load_config(base(), {"cells.Th.count": 5})
    np.testing.assert_array_equal(np.asarray(build_model(fewer).cells[1].initial), treg)


def test_file_placement_relative_to_the_config(tmp_path):
    positions = np.array([[1.0, 2.0, 3.0], [29.0, 79.0, 99.5], [10.0, 40.0, 50.0]])
    np.save(tmp_path / "cells.npy", positions)
    text = """
[grid]
shape = [6, 8, 10]
spacing = [5, 10, 10]

[time]
end = "1 h"

[species.IL2]
diffusion = "25 um^2/s"

[cells.Th]
count = 3
place = { file = "cells.npy" }
state = { R = 10.0 }

[[cells.Th.uptake]]
species = "IL2"
k_on = "3.1e7 1/M/s"
receptors = "R"
"""
    path = tmp_path / "cfg.toml"
    path.write_text(text)
    cfg = load_config(path)
    assert cfg.cells["Th"].place.file == str(tmp_path / "cells.npy")
    np.testing.assert_array_equal(np.asarray(build_model(cfg).cells[0].initial), positions)
    # overrides on a file's config: count must then match the file's rows
    with pytest.raises(ConfigError, match=r"^cells\.Th\.place\.file: the file holds shape"):
        load_config(path, dict([parse_override("cells.Th.count=10")]))


def test_overrides_of_a_config_file(tmp_path):
    path = tmp_path / "cfg.toml"
    raw = base()
    path.write_text(dump_toml(load_config(raw)).replace("capacity = 80\n", ""))
    overrides = dict(parse_override(t) for t in ("cells.Treg.count=10", "cells.Th.motility=3"))
    cfg = load_config(path, overrides)
    assert (cfg.cells["Treg"].count, cfg.cells["Treg"].capacity) == (10, 40)
    assert cfg.cells["Th"].motility == 3.0
    assert build_model(cfg).cells[1].initial.shape == (10, 2)
    added = load_config(path, {"cells.New": {"count": 2, "state": {"x": 1.0}}})
    assert added.cells["New"].state == {"x": 1.0}


# ---------------------------------------------------------------------------------------------
# Memory and parameters


def test_memory_estimate_counts_the_cells():
    raw = base()
    without = load_config({k: v for k, v in raw.items() if k != "cells"}).memory_bytes()
    cfg = load_config(raw)
    # Th: 400 slots x (2 position + alive + id + 2 states); Treg: 80 x (2 + 2)
    values = 400 * 6 + 80 * 4
    assert cfg.memory_bytes() == without + values * 4 * STATE_COPIES
    double = load_config(raw, {"time.dtype": "float64"})
    assert double.memory_bytes() == 2 * cfg.memory_bytes()
    huge = load_config(raw, {"cells.Th.capacity": 10**9})
    with pytest.raises(ConfigError, match=r"^cells\.Th\.capacity: the run needs about .* GB"):
        check_memory(huge, 2**30)
    # the type whose values need the most is named, not the one of the largest capacity
    both = load_config(raw, {"cells.Th.capacity": 3 * 10**8, "cells.Treg.capacity": 4 * 10**8})
    with pytest.raises(ConfigError, match=r"^cells\.Th\.capacity"):
        check_memory(both, 2**30)
    big_grid = load_config(raw, {"grid.shape": [200, 300]})
    with pytest.raises(ConfigError, match=r"^grid\.shape: .*, plus 2.72e\+03 cell values"):
        check_memory(big_grid, 10**5)


def test_parameters_with_cells():
    cfg = load_config(base())
    keys = ["species.IL2.diffusion", "cells.Th.secretion[0].rate", "cells.Th.state.R"]
    parameters = Parameters.of(cfg, keys)
    model = build_model(cfg)
    moved = parameters.bind(model, np.array([40.0, 7.0, 300.0]))
    rebuilt = build_model(
        load_config(
            base(),
            {
                "species.IL2.diffusion": 40.0,
                "cells.Th.secretion[0].rate": 7.0,
                "cells.Th.state.R": 300.0,
            },
        )
    )
    for a, b in zip(jax.tree.leaves(moved), jax.tree.leaves(rebuilt), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-6)
    # the non-cell key moves only its own leaf, at the index it has without cells
    plain = load_config({k: v for k, v in base().items() if k != "cells"})
    alone = Parameters.of(plain, keys[:1])
    assert list(alone.slopes[0]) == list(parameters.slopes[0])
    assert "cells.Th.motility" in numeric_keys(cfg)
    assert not any(k.endswith(("count", "capacity")) for k in numeric_keys(cfg))
    for key, message in [
        ("cells.Th.count", "counts or places cells"),
        ("cells.Th.capacity", "counts or places cells"),
        ("cells.Th.place.region", "counts or places cells"),
        ("time.seed", "draws the cells' start positions"),
        ("cells.Th.uptake[0].receptors", "not a number"),
        ("cells.Th.nope", "no such key"),
        ("cells.Treg.place", "no such key"),
    ]:
        with pytest.raises(ConfigError, match=message) as info:
            Parameters.of(cfg, [key])
        assert str(info.value).startswith(key + ":")


# ---------------------------------------------------------------------------------------------
# Bad input: one line, the key path first, what is wrong and the fix


def _file(tmp_path, array) -> str:
    path = tmp_path / "pos.npy"
    np.save(path, np.asarray(array))
    return str(path)


def _empty(tmp_path) -> str:
    path = tmp_path / "pos.npy"
    path.write_bytes(b"")
    return str(path)


BAD = [
    ("unknown_key", {"cells.Th.counts": 5}, "cells.Th.counts", "unknown key; valid keys: count"),
    (
        "unknown_secretion_key",
        {"cells.Th.secretion[0].by": "T"},
        "cells.Th.secretion[0].by",
        "unknown key; valid keys: species, rate",
    ),
    (
        "unknown_species",
        {"cells.Th.secretion[0].species": "IL7"},
        "cells.Th.secretion[0].species",
        'unknown species "IL7"; defined: CXCL10, IL2',
    ),
    (
        "uptake_of_a_population",
        {"cells.Th.uptake[1].species": "T"},
        "cells.Th.uptake[1].species",
        '"T" is a population, not a species',
    ),
    (
        "unknown_receptor_state",
        {"cells.Th.uptake[0].receptors": "Rx"},
        "cells.Th.uptake[0].receptors",
        'unknown state variable "Rx"; defined: R, pSTAT5',
    ),
    (
        "receptor_state_without_state",
        {"cells.Treg.uptake": [{"species": "IL2", "k_on": 1, "receptors": "R"}]},
        "cells.Treg.uptake[0].receptors",
        'unknown state variable "R"; defined: none; add it to cells.Treg.state',
    ),
    (
        "unknown_region",
        {"cells.Th.place.region": "bone"},
        "cells.Th.place.region",
        'unknown region "bone"; defined: lesion',
    ),
    (
        "capacity_below_count",
        {"cells.Th.capacity": 10},
        "cells.Th.capacity",
        "10 is below count = 50; raise capacity to at least 50",
    ),
    ("capacity_zero", {"cells.Th.capacity": 0}, "cells.Th.capacity", "must be >= 1"),
    ("negative_count", {"cells.Th.count": -1}, "cells.Th.count", "must be >= 0"),
    ("fractional_count", {"cells.Th.count": 2.5}, "cells.Th.count", "expected an integer"),
    (
        "file_shape",
        lambda tmp: {"cells.Treg.place": {"file": _file(tmp, np.zeros((20, 3)))}},
        "cells.Treg.place.file",
        "the file holds shape (20, 3), count = 20 cells in 2D need (20, 2)",
    ),
    (
        "file_outside_grid",
        lambda tmp: {"cells.Treg.place": {"file": _file(tmp, np.full((20, 2), 150.0))}},
        "cells.Treg.place.file",
        "row 0 (150, 150) um lies outside the grid [-50, 150) x [100, 400) um",
    ),
    (
        "file_not_finite",
        lambda tmp: {"cells.Treg.place": {"file": _file(tmp, np.full((20, 2), np.nan))}},
        "cells.Treg.place.file",
        "the file holds non-finite positions; give finite positions (um)",
    ),
    (
        "file_empty",
        lambda tmp: {"cells.Treg.place": {"file": _empty(tmp)}},
        "cells.Treg.place.file",
        "as a .npy array: empty (0 bytes); give a .npy array of positions",
    ),
    (
        "file_missing",
        {"cells.Treg.place": {"file": "no_such_file.npy"}},
        "cells.Treg.place.file",
        "no such file",
    ),
    (
        "place_both",
        lambda tmp: {"cells.Th.place.file": _file(tmp, np.zeros((50, 2)))},
        "cells.Th.place",
        "needs exactly one of region, file, got region, file",
    ),
    (
        "state_is_a_field",
        {"cells.Th.state.IL2": 1.0},
        "cells.Th.state.IL2",
        '"IL2" is also a species',
    ),
    (
        "state_is_reserved",
        {"cells.Th.state.alive": 1.0},
        "cells.Th.state.alive",
        '"alive" names an array every cell type has',
    ),
    (
        "negative_state",
        {"cells.Th.state.R": -1.0},
        "cells.Th.state.R",
        "must be >= 0",
    ),
    (
        "unknown_halve",
        {"cells.Th.division.halve": ["R", "S"]},
        "cells.Th.division.halve[1]",
        'unknown state variable "S"; defined: R, pSTAT5',
    ),
    (
        "halve_twice",
        {"cells.Th.division.halve": ["R", "R"]},
        "cells.Th.division.halve[1]",
        '"R" is listed twice; list it once',
    ),
    (
        "unknown_state_term_variable",
        {"cells.Th.state_terms[1].variable": "STAT"},
        "cells.Th.state_terms[1].variable",
        'unknown state variable "STAT"',
    ),
    (
        "chemotaxis_not_a_species",
        {"cells.Th.chemotaxis.species": "T"},
        "cells.Th.chemotaxis.species",
        '"T" is a population, not a species',
    ),
    (
        "modulator_of_unknown",
        {"cells.Th.secretion[0].inhibitors[0].of": "pSTAT3"},
        "cells.Th.secretion[0].inhibitors[0].of",
        'unknown species, population, cell type or state variable "pSTAT3"; '
        "defined: CXCL10, IL2, R, T, Th, Th.R, Th.pSTAT5, Treg, pSTAT5",
    ),
    (
        "modulator_of_unknown_with_unit",
        {"cells.Th.death.inhibitors[0].of": "B"},
        "cells.Th.death.inhibitors[0].of",
        'unknown species, population, cell type or state variable "B"',
    ),
    (
        "state_K_with_unit",
        {"cells.Th.division.activators[0].K": "0.5 nM"},
        "cells.Th.division.activators[0].K",
        "'pSTAT5' is a state variable, a plain number; give K as a number",
    ),
    (
        "species_K_wrong_unit",
        {"cells.Th.uptake[0].activators[0].K": "1 s"},
        "cells.Th.uptake[0].activators[0].K",
        "expected concentration (in nM)",
    ),
    (
        "uptake_both_pairs",
        {"cells.Th.uptake[1].k_on": 1.0},
        "cells.Th.uptake[1]",
        "gives both vmax/km and k_on/receptors; keep one pair",
    ),
    (
        "uptake_half_pair",
        {"cells.Th.uptake[1]": {"species": "IL2", "vmax": 3}},
        "cells.Th.uptake[1].km",
        "missing (vmax is given); add km",
    ),
    (
        "receptors_bad",
        {"cells.Th.uptake[0].receptors": True},
        "cells.Th.uptake[0].receptors",
        "or the name of a state variable",
    ),
    (
        "secretion_wrong_dimension",
        {"cells.Th.secretion[0].rate": "10 nM/s"},
        "cells.Th.secretion[0].rate",
        "expected molecule_rate",
    ),
    (
        "division_rate_wrong_dimension",
        {"cells.Th.division.rate": "1 day"},
        "cells.Th.division.rate",
        "expected rate (in 1/s)",
    ),
    (
        "negative_motility",
        {"cells.Th.motility": "-1 um^2/s"},
        "cells.Th.motility",
        "must be >= 0",
    ),
    ("bad_type_name", {"cells.2Th": {"count": 1}}, "cells.2Th", "not a valid cell type name"),
    ("missing_count", {"cells.New": {"capacity": 3}}, "cells.New.count", "missing; add"),
    (
        "unknown_division_key",
        {"cells.Th.division.split": ["R"]},
        "cells.Th.division.split",
        "unknown key; valid keys: rate, halve",
    ),
]


@pytest.mark.parametrize("case, key, fragment", [b[1:] for b in BAD], ids=[b[0] for b in BAD])
def test_bad_input_names_the_key_and_the_fix(case, key, fragment, tmp_path):
    overrides = case(tmp_path) if callable(case) else case
    with pytest.raises(ConfigError) as info:
        load_config(base(), overrides)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(key + ":"), message
    assert fragment in message, message
    assert ";" in message[len(key) :], message  # what is wrong; the fix


def test_bad_input_table_is_large():
    assert len(BAD) >= 10
    assert len({b[0] for b in BAD}) == len(BAD)
