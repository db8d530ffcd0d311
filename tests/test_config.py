"""Tests of the config layer: malformed configs rejected with one-line key-path errors, unit
conversion to engine units, defaults, overrides, the TOML dump round trip, memory estimates."""

from __future__ import annotations

import copy
import math
import tomllib
from pathlib import Path

import numpy as np
import pytest

from engine.config.build import build_grid, build_model, region_mask
from engine.config.errors import ConfigError
from engine.config.loading import load_config, parse_override
from engine.config.memory import check_memory
from engine.config.schema import (
    Config,
    Conversion,
    Face,
    Initial,
    PointSource,
    RegionSource,
    Secretion,
    Uptake,
)
from engine.config.toml import dump_toml, to_raw
from engine.numerics.memory import available_memory
from engine.runs.driver import output_times

EXAMPLE = Path(__file__).parent / "data" / "configs" / "design_example.toml"

BASE = {
    "grid": {"shape": [64, 64], "spacing": "10 um"},
    "time": {"end": "1 h"},
    "regions": {
        "tumour": {"sphere": {"center": ["320 um", "320 um"], "radius": "100 um"}},
        "vessels": {"spots": {"count": 5, "radius": "8 um", "seed": 1}},
    },
    "species": {
        "IL2": {"diffusion": "25 um^2/s"},
        "IL6": {"diffusion": 50.0, "decay": "1e-4 1/s"},
        "IL10": {"diffusion": "30 um^2/s"},
    },
    "populations": {
        "effector": {"motility": "2 um^2/s", "initial": {"region": "vessels", "value": 1e-4}},
        "cancer": {"initial": {"region": "tumour", "value": 1e-3}},
    },
    "terms": [
        {"type": "secretion", "species": "IL2", "by": "effector", "rate": 20},
        {"type": "killing", "target": "cancer", "by": "effector", "rate": "1e3 um^3/s"},
    ],
    "sources": [
        {"type": "region", "species": "IL2", "region": "vessels", "rate": "5 nM/s"},
        {"type": "point", "species": "IL6", "position": [100, 200], "rate": 100},
    ],
}


def base() -> dict:
    return copy.deepcopy(BASE)


def _append_term(term: dict):
    def mutate(raw: dict) -> dict:
        raw["terms"].append(term)
        return raw

    return mutate


def _delete(path: tuple):
    def mutate(raw: dict) -> dict:
        node = raw
        for key in path[:-1]:
            node = node[key]
        del node[path[-1]]
        return raw

    return mutate


UPTAKE = {"type": "uptake", "species": "IL2", "by": "effector"}

# (id, overrides applied to BASE | a function of the raw dict | TOML text, key path, fragment)
MALFORMED = [
    ("toml_syntax", "[grid]\nshape = [4, 4\n", "<file>", "line 2"),
    ("toml_duplicate_key", "[time]\nend = 1\nend = 2\n", "<file>", "line 3"),
    ("unknown_top_level", {"gird": {}}, "gird", "unknown key; valid keys: grid, time"),
    (
        "nothing_to_simulate",
        lambda raw: {"grid": raw["grid"], "time": raw["time"]},
        "species",
        "defines no species, population or cell type",
    ),
    ("unknown_nested", {"time.endd": "2 h"}, "time.endd", "unknown key; valid keys: end, dt"),
    (
        "unknown_species",
        {"terms[0].species": "IL7"},
        "terms[0].species",
        'unknown species "IL7"; defined: IL2, IL6, IL10',
    ),
    (
        "population_as_species",
        {"terms[0].species": "effector"},
        "terms[0].species",
        '"effector" is a population, not a species',
    ),
    ("species_as_population", {"terms[1].by": "IL6"}, "terms[1].by", "is a species, not a"),
    ("unknown_region", {"sources[0].region": "bone"}, "sources[0].region", 'unknown region "bone"'),
    (
        "wrong_dimension",
        {"species.IL2.diffusion": "5 s"},
        "species.IL2.diffusion",
        "'5 s' has dimension [time], expected diffusivity (in um^2/s)",
    ),
    (
        "unparsable_unit",
        {"species.IL2.diffusion": "5 furlongs^"},
        "species.IL2.diffusion",
        "cannot",
    ),
    ("undefined_unit", {"species.IL6.decay": "5 blorps"}, "species.IL6.decay", "cannot read"),
    ("negative_rate", {"terms[0].rate": -1}, "terms[0].rate", "must be >= 0"),
    ("nan_rate", {"terms[0].rate": parse_override("r=nan")[1]}, "terms[0].rate", "finite"),
    ("inf_decay", {"species.IL6.decay": math.inf}, "species.IL6.decay", "finite"),
    ("negative_diffusion", {"species.IL2.diffusion": "-1 um^2/s"}, "species.IL2.diffusion", ">= 0"),
    (
        "region_outside",
        {"regions.tumour.sphere.center": [2000, 2000]},
        "regions.tumour",
        "the sphere lies outside the grid [0, 640] um x [0, 640] um",
    ),
    (
        "box_between_centres",
        {"regions.tumour": {"box": {"lower": [1, 1], "upper": [4, 4]}}},
        "regions.tumour",
        "the box contains no voxel centre",
    ),
    (
        "box_outside",
        {"regions.tumour": {"box": {"lower": [700, 0], "upper": [800, 10]}}},
        "regions.tumour",
        "the box lies outside the grid",
    ),
    (
        "position_outside",
        {"sources[1].position": [100, 640]},
        "sources[1].position",
        "lies outside the grid",
    ),
    (
        "center_length",
        {"regions.tumour.sphere.center": [1, 2, 3]},
        "regions.tumour.sphere.center",
        "has 3 coordinates, the grid has 2 axes",
    ),
    ("position_length", {"sources[1].position": [1.0]}, "sources[1].position", "1 coordinate,"),
    ("empty_shape", {"grid.shape": []}, "grid.shape", "expected 1 to 3 axes, got 0"),
    ("four_axes", {"grid.shape": [2, 2, 2, 2]}, "grid.shape", "expected 1 to 3 axes, got 4"),
    ("zero_axis", {"grid.shape": [64, 0]}, "grid.shape[1]", "at least one voxel"),
    ("float_axis", {"grid.shape": [64, 6.5]}, "grid.shape[1]", "expected a voxel count"),
    ("spacing_length", {"grid.spacing": [1, 2, 3]}, "grid.spacing", "has 3 entries"),
    ("zero_spacing", {"grid.spacing": 0}, "grid.spacing[0]", "must be > 0"),
    (
        "periodic_one_face",
        {"species.IL2.boundary.x_min": "periodic"},
        "species.IL2.boundary.x_min",
        'set x_max = "periodic" too',
    ),
    (
        "periodic_default_broken",
        {"grid.boundary": "periodic", "populations.cancer.boundary.y_max": {"dirichlet": 0}},
        "populations.cancer.boundary.y_max",
        "periodic on y_min but not on y_max",
    ),
    (
        "face_z_in_2d",
        {"species.IL2.boundary.z_min": "neumann"},
        "species.IL2.boundary.z_min",
        "not a face of a 2D grid; valid faces: y_min, y_max, x_min, x_max",
    ),
    (
        "unknown_face_kind",
        {"species.IL2.boundary.x_min": "sticky"},
        "species.IL2.boundary.x_min",
        "unknown boundary 'sticky'",
    ),
    (
        "robin_unknown_key",
        {"species.IL2.boundary.x_min": {"robin": {"h": 1, "outsid": 0}}},
        "species.IL2.boundary.x_min.robin.outsid",
        "valid keys: h, outside",
    ),
    (
        "negative_robin_h",
        {"species.IL2.boundary.x_min": {"robin": {"h": -1}}},
        "species.IL2.boundary.x_min.robin.h",
        ">= 0",
    ),
    (
        "negative_robin_h_full_form",
        {"species.IL2.boundary.x_min": {"kind": "robin", "h": -1}},
        "species.IL2.boundary.x_min.h",
        ">= 0",
    ),
    (
        "robin_outside_in_nM_for_a_population",
        {"populations.cancer.boundary.x_min": {"robin": {"h": 1, "outside": "1 nM"}}},
        "populations.cancer.boundary.x_min.robin.outside",
        "expected density",
    ),
    (
        "negative_dirichlet",
        {"species.IL2.boundary.x_min": {"dirichlet": -1}},
        "species.IL2.boundary.x_min.dirichlet",
        "must be >= 0",
    ),
    (
        "negative_dirichlet_table",
        {"species.IL2.boundary.x_min": {"dirichlet": {"value": -1}}},
        "species.IL2.boundary.x_min.dirichlet.value",
        "must be >= 0",
    ),
    (
        "grid_face_with_unit",
        {"grid.boundary": {"dirichlet": "1 nM"}},
        "grid.boundary.dirichlet",
        "plain number",
    ),
    ("uptake_vmax_no_km", _append_term({**UPTAKE, "vmax": 10}), "terms[2].km", "missing (vmax"),
    (
        "uptake_both_pairs",
        _append_term({**UPTAKE, "vmax": 10, "km": 1, "k_on": 0.01, "receptors": 1e3}),
        "terms[2]",
        "both vmax/km and k_on/receptors",
    ),
    ("uptake_no_pair", _append_term(UPTAKE), "terms[2]", "needs vmax and km, or k_on"),
    (
        "unknown_term_type",
        {"terms[1].type": "teleport"},
        "terms[1].type",
        "unknown type 'teleport'",
    ),
    ("missing_term_type", _delete(("terms", 0, "type")), "terms[0].type", "one of: secretion"),
    ("missing_source_type", _delete(("sources", 1, "type")), "sources[1].type", "point, region"),
    ("dt_negative", {"time.dt": "-1 s"}, "time.dt", "must be > 0"),
    ("unknown_term_key", {"terms[0].K": 1}, "terms[0].K", "valid keys: activators"),
    ("missing_end", _delete(("time", "end")), "time.end", "missing"),
    ("missing_grid", _delete(("grid",)), "grid", "missing"),
    ("dt_word", {"time.dt": "fast"}, "time.dt", 'expected "auto" or a time step'),
    ("dt_bool", {"time.dt": True}, "time.dt", 'expected "auto" or a time step'),
    ("dt_not_below_end", {"time.dt": "2 h"}, "time.dt", "not below end"),
    ("dtype_float16", {"time.dtype": "float16"}, "time.dtype", "'float16' is not allowed"),
    ("stepper_unknown", {"time.stepper": "rk4"}, "time.stepper", "'explicit'"),
    ("tolerance_above_one", {"time.tolerance": 1.5}, "time.tolerance", "must be < 1"),
    (
        "hill_zero",
        {"terms[0].activators": [{"of": "IL6", "K": 1.0, "hill": 0}]},
        "terms[0].activators[0].hill",
        "must be > 0",
    ),
    (
        "population_K_in_nM",
        {"terms[0].inhibitors": [{"of": "cancer", "K": "0.1 nM"}]},
        "terms[0].inhibitors[0].K",
        "expected density",
    ),
    (
        "modulator_unknown",
        {"terms[0].activators": [{"of": "IL99", "K": "1 nM"}]},
        "terms[0].activators[0].of",
        'unknown species or population "IL99"',
    ),
    (
        "modulator_unknown_numeric_K",
        {"terms[0].activators": [{"of": "IL99", "K": 1.0}]},
        "terms[0].activators[0].of",
        'unknown species or population "IL99"',
    ),
    (
        "schedule_duration_over_every",
        {"sources[0].schedule": {"every": "1 h", "duration": "2 h"}},
        "sources[0].schedule.duration",
        "make each dose's duration <= every",
    ),
    (
        "schedule_count_alone",
        {"sources[0].schedule": {"count": 3}},
        "sources[0].schedule.count",
        "repeated doses only",
    ),
    (  # each dose's edges cut the steps: validate counted 5e12 steps, a run never ended
        "schedule_doses_beyond_counting",
        {"sources[0].schedule": {"every": "1e-9 s", "duration": "1e-10 s"}},
        "sources[0].schedule.every",
        "1e-09 s gives 3.6e+12 doses by time.end, more than 1e+06",
    ),
    (
        "output_field_unknown",
        {"output.fields": ["IL2", "IL99"]},
        "output.fields[1]",
        'unknown species or population "IL99"; defined: IL2, IL6, IL10, cancer, effector',
    ),
    (
        "output_field_twice",
        {"output.fields": ["IL2", "IL2"]},
        "output.fields[1]",
        '"IL2" is listed twice; list each field once',
    ),
    ("compression_unknown", {"output.compression": "zip"}, "output.compression", "'gzip'"),
    (
        "duplicate_name",
        {"populations.IL2": {}},
        "populations.IL2",
        '"IL2" is also a species',
    ),
    ("invalid_name", {"species.2IL": {"diffusion": 1}}, "species.2IL", "not a valid name"),
    (  # a key TOML must quote, quoted and escaped
        "invalid_name_quoted",
        lambda raw: {**raw, "species": {**raw["species"], 'I"L': {"diffusion": 1}}},
        'species."I\\"L"',
        "not a valid name",
    ),
    ("invalid_name_with_hyphen", {"species.IL-2": {"diffusion": 1}}, "species.IL-2", "not a valid"),
    (  # one line: the newline of a name shows as a space
        "unknown_species_with_newline",
        {"terms[0].species": "IL\n7"},
        "terms[0].species",
        'unknown species "IL 7"',
    ),
    ("stepper_bool", {"time.stepper": True}, "time.stepper", "true is not allowed; use 'explicit'"),
    ("bool_rate", {"terms[0].rate": True}, "terms[0].rate", "expected a number or a string"),
    ("string_name", {"terms[0].by": 3}, "terms[0].by", "expected a name"),
    (
        "cylinder_z_in_2d",
        {"regions.vessel": {"cylinder": {"center": [1, 1], "radius": 5, "axis": "z"}}},
        "regions.vessel.cylinder.axis",
        '"z" is not an axis of a 2D grid',
    ),
    (
        "region_two_shapes",
        {"regions.tumour.spots": {"count": 1, "radius": 5}},
        "regions.tumour",
        "needs exactly one of sphere",
    ),
    ("region_file_missing", {"regions.mask": {"file": "nope.npy"}}, "regions.mask.file", "no such"),
    (
        "sphere_too_small",
        {"regions.tumour.sphere": {"center": [0, 0], "radius": 1}},
        "regions.tumour.sphere.radius",
        "contains no voxel centre",
    ),
    (
        "initial_region_unknown",
        {"species.IL2.initial": {"region": "bone", "value": 1}},
        "species.IL2.initial.region",
        'unknown region "bone"',
    ),
    ("initial_negative", {"species.IL2.initial": -1e-5}, "species.IL2.initial", "must be >= 0"),
    (
        "population_initial_negative",
        {"populations.cancer.initial": -1},
        "populations.cancer.initial",
        "must be >= 0",
    ),
    (
        "initial_region_value_negative",
        {"species.IL2.initial": {"region": "tumour", "value": -1}},
        "species.IL2.initial.value",
        "must be >= 0",
    ),
    (
        "gaussian_zero_sigma",
        {"species.IL10.initial": {"gaussian": {"center": [1, 1], "sigma": 0, "amplitude": 1}}},
        "species.IL10.initial.gaussian.sigma",
        "must be > 0",
    ),
    (
        "gaussian_bad_coordinate",
        {"species.IL10.initial": {"gaussian": {"center": [1, "x"], "sigma": 1, "amplitude": 1}}},
        "species.IL10.initial.gaussian.center[1]",
        "cannot read 'x'",
    ),
    (
        "random_negative_std",
        {"species.IL10.initial": {"random": {"mean": 1, "std": -1}}},
        "species.IL10.initial.random.std",
        "must be >= 0",
    ),
    (
        "random_no_std",
        {"species.IL10.initial": {"random": {"mean": 1}}},
        "species.IL10.initial.random.std",
        "needs std",
    ),
    (
        "random_negative_seed",
        {"species.IL10.initial": {"random": {"mean": 1, "std": 1, "seed": -1}}},
        "species.IL10.initial.random.seed",
        "must be >= 0",
    ),
    (
        "initial_file_missing",
        {"species.IL10.initial": {"file": "missing.npy"}},
        "species.IL10.initial.file",
        "no such file",
    ),
    (
        "initial_two_forms",
        {"species.IL2.initial": {"file": "a.npy", "random": {"mean": 1, "std": 0}}},
        "species.IL2.initial",
        "exactly one of gaussian, region, random, file",
    ),
    (
        "gaussian_no_sigma",
        {"species.IL2.initial": {"gaussian": {"center": [1, 1], "amplitude": 1}}},
        "species.IL2.initial.gaussian.sigma",
        "needs sigma",
    ),
    (
        "gaussian_center_length",
        {"species.IL2.initial": {"gaussian": {"center": [1], "sigma": 5, "amplitude": 1}}},
        "species.IL2.initial.gaussian.center",
        "1 coordinate,",
    ),
    (
        "coefficient_region_unknown",
        {"species.IL2.diffusion": {"value": 25, "regions": {"bone": 1}}},
        "species.IL2.diffusion.regions.bone",
        'unknown region "bone"',
    ),
    (
        "chemotaxis_to_population",
        {"populations.effector.chemotaxis": {"species": "cancer", "sensitivity": 1}},
        "populations.effector.chemotaxis.species",
        "is a population, not a species",
    ),
    (
        "conversion_into_itself",
        _append_term({"type": "conversion", "from": "effector", "to": "effector", "rate": 1e-4}),
        "terms[2].to",
        'converts "effector" into itself',
    ),
    (
        "depth_of_a_3d_grid",
        {"grid.shape": [4, 4, 4], "grid.depth": "5 um"},
        "grid.depth",
        "a 3D grid has no depth",
    ),
    (
        "conversion_from_unknown",
        _append_term({"type": "conversion", "from": "naive", "to": "effector", "rate": 1e-4}),
        "terms[2].from",
        'unknown population "naive"; defined: cancer, effector',
    ),
    (
        "growth_crowding_unknown",
        _append_term(
            {
                "type": "growth",
                "population": "cancer",
                "rate": 1e-5,
                "capacity": 1e-3,
                "crowding": ["cancer", "stroma"],
            }
        ),
        "terms[2].crowding[1]",
        'unknown population "stroma"',
    ),
    (
        "growth_zero_capacity",
        _append_term({"type": "growth", "population": "cancer", "rate": 1e-5, "capacity": 0}),
        "terms[2].capacity",
        "must be > 0",
    ),
    (
        "recruitment_region_unknown",
        _append_term(
            {
                "type": "recruitment",
                "population": "effector",
                "region": "bone",
                "rate": 1e-9,
            }
        ),
        "terms[2].region",
        'unknown region "bone"',
    ),
    (
        "custom_bad_name",
        _append_term({"type": "custom", "name": "my term"}),
        "terms[2].name",
        "not a valid term name",
    ),
    ("not_a_table", {"time": 5}, "time", "expected a table"),
    ("seed_float", {"time.seed": 1.5}, "time.seed", "expected an integer"),
    ("seed_huge", {"time.seed": 99999999999999999999}, "time.seed", "must be below 2^32"),
    ("seed_2_32", {"time.seed": 2**32}, "time.seed", "from 0 to 4294967295"),
    (
        "override_unknown_species",
        {"species.IL22.diffusion": 3},
        "species.IL22",
        'unknown species "IL22"; defined: IL2, IL6, IL10; define it in the config file',
    ),
    (
        "override_unknown_population",
        {"populations.effectr.motility": 1},
        "populations.effectr",
        'unknown population "effectr"; defined: cancer, effector',
    ),
    (
        "override_unknown_region",
        {"regions.tumor.sphere.radius": 5},
        "regions.tumor",
        'unknown region "tumor"; defined: tumour, vessels',
    ),
    ("adaptive_string", {"time.adaptive": "yes"}, "time.adaptive", "expected true or false"),
    (  # K of a name that is both is read neither way: the names are refused first
        "duplicate_name_with_a_modulator",
        lambda raw: {
            **raw,
            "species": {**raw["species"], "cancer": {"diffusion": 1}},
            "terms": [
                {**raw["terms"][0], "inhibitors": [{"of": "cancer", "K": "1e4 1/mm^3"}]},
            ],
        },
        "populations.cancer",
        '"cancer" is also a species; give every species and population its own name',
    ),
    (
        "beyond_float32",
        {"species.IL6.diffusion": 1e39},
        "species.IL6.diffusion",
        "1e+39 does not fit the run's float32 (largest 3.4e+38)",
    ),
    (
        "beyond_float32_in_a_region",
        {"species.IL6.diffusion": {"value": 1, "regions": {"tumour": "1e39 um^2/s"}}},
        "species.IL6.diffusion.regions.tumour",
        "does not fit the run's float32",
    ),
    ("huge_spacing", {"grid.spacing": 1e300}, "grid.spacing[0]", "does not fit"),
    (
        "huge_spacing_float64",
        {"grid.spacing": 1e300, "time.dtype": "float64"},
        "regions.tumour.sphere.radius",
        "contains no voxel centre",
    ),
    (
        "more_spots_than_voxels",
        {"regions.vessels.spots.count": 10**11},
        "regions.vessels.spots.count",
        "100000000000 spots on a grid of 4096 voxels, more than one a voxel; use at most 4096",
    ),
]


def _load_case(case, tmp_path: Path):
    if isinstance(case, str):
        path = tmp_path / "broken.toml"
        path.write_text(case)
        return path, lambda: load_config(path)
    if callable(case):
        return None, lambda: load_config(case(base()))
    return None, lambda: load_config(base(), overrides=case)


@pytest.mark.parametrize(
    "case, key, fragment", [entry[1:] for entry in MALFORMED], ids=[e[0] for e in MALFORMED]
)
def test_malformed_config_names_the_key(case, key, fragment, tmp_path):
    path, load = _load_case(case, tmp_path)
    if path is not None:
        key = str(path)
    with pytest.raises(ConfigError) as info:
        load()
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith(key + ":"), message
    assert fragment in message, message
    # every message says what is wrong and how to fix it, after the path
    assert ";" in message[len(key) :], message


def test_malformed_table_is_large():
    assert len(MALFORMED) >= 25
    assert len({entry[0] for entry in MALFORMED}) == len(MALFORMED)


def test_base_config_is_valid():
    cfg = load_config(base())
    assert isinstance(cfg, Config)
    assert list(cfg.species) == ["IL2", "IL6", "IL10"]
    assert isinstance(cfg.terms[0], Secretion)
    assert isinstance(cfg.sources[0], RegionSource)
    assert isinstance(cfg.sources[1], PointSource)


def test_source_dict_is_not_modified():
    raw = base()
    load_config(
        raw, overrides={"time.end": "2 h", "terms[0].activators": [{"of": "IL6", "K": "1 nM"}]}
    )
    assert raw == BASE


# ---------------------------------------------------------------------------------------------
# Files


def test_missing_file(tmp_path):
    with pytest.raises(ConfigError, match=r"nope\.toml: no such config file"):
        load_config(tmp_path / "nope.toml")


def test_toml_error_names_file_and_line(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_text('[grid]\nshape = [8]\nspacing = 1\n\n[time]\nend = "1 h\n')
    with pytest.raises(ConfigError) as info:
        load_config(str(path))
    message = str(info.value)
    assert message.startswith(f"{path}: invalid TOML")
    assert "line 6" in message
    assert "\n" not in message


def test_byte_order_mark_is_skipped(tmp_path):
    path = tmp_path / "cfg.toml"
    path.write_bytes(b"\xef\xbb\xbf" + dump_toml(load_config(base())).encode())
    assert load_config(path) == load_config(base())
    path.write_bytes(b"\xef\xbb\xbf[grid]\nshape = [8\n")
    with pytest.raises(ConfigError, match=r"invalid TOML at line 2"):
        load_config(path)


def test_bad_source_type():
    with pytest.raises(ConfigError, match="expected a path"):
        load_config(42)


def test_design_example_loads():
    cfg = load_config(EXAMPLE)
    assert cfg.grid.shape == (64, 64)
    assert cfg.grid.spacing == (10.0, 10.0)
    assert cfg.grid.origin == (0.0, 0.0)
    assert cfg.grid.boundary == Face(kind="neumann")
    assert cfg.time.end == 86400.0
    assert cfg.time.output_every == 600.0
    assert cfg.time.dt == "auto"
    assert cfg.regions["vessels"].kind == "spots"
    assert cfg.regions["vessels"].spots.radius == 8.0
    il6 = cfg.species["IL6"]
    assert il6.diffusion.value == 50.0
    assert il6.decay == pytest.approx(1e-4)
    assert il6.boundary["x_min"].kind == "dirichlet"
    assert il6.boundary["x_min"].value == 0.0
    assert cfg.species["IL2"].initial.value == pytest.approx(0.01)
    assert cfg.species["IL10"].diffusion.value == pytest.approx(1e4 / 60)
    effector = cfg.populations["effector"]
    assert effector.initial.kind == "region"
    assert effector.initial.region == "vessels"
    assert effector.initial.value == 1e-4
    assert effector.motility.value == 2.0
    assert effector.chemotaxis.species == "IL6"
    assert effector.chemotaxis.sensitivity == pytest.approx(1e4)
    assert cfg.populations["macrophage"].initial.value == pytest.approx(1e-4)
    pathogen = cfg.populations["pathogen"].initial
    assert (pathogen.kind, pathogen.center, pathogen.sigma) == ("gaussian", (320.0, 320.0), 40.0)
    term = cfg.terms[0]
    assert (term.type, term.species, term.by, term.rate) == ("secretion", "IL6", "macrophage", 20)
    assert term.activators[0].of == "pathogen"
    assert term.activators[0].K == 1e-5
    assert term.activators[0].hill == 2.0
    assert term.inhibitors[0].K == pytest.approx(0.1)
    schedule = cfg.sources[0].schedule
    assert (schedule.start, schedule.duration, schedule.every, schedule.count) == (
        3600.0,
        1800.0,
        43200.0,
        4,
    )
    assert cfg.sources[0].rate == 5.0
    assert cfg.output.fields == ["IL6", "effector"]
    assert cfg.output.checkpoint_every == 3600.0


# ---------------------------------------------------------------------------------------------
# Units and defaults


def _get(cfg: Config, path: str):
    node = cfg
    for part in path.split("."):
        node = (
            node[int(part)]
            if part.isdigit()
            else (node[part] if isinstance(node, dict) else getattr(node, part))
        )
    return node


@pytest.mark.parametrize(
    "key, value, attribute, expected",
    [
        ("species.IL2.diffusion", "25 um^2/s", "species.IL2.diffusion.value", 25.0),
        ("species.IL2.diffusion", "1e4 um^2/min", "species.IL2.diffusion.value", 1e4 / 60),
        ("species.IL2.diffusion", "1e-7 cm^2/s", "species.IL2.diffusion.value", 10.0),
        ("time.end", "6 h", "time.end", 21600.0),
        ("time.end", "30 min", "time.end", 1800.0),
        ("time.end", 7.5, "time.end", 7.5),
        ("species.IL2.initial", "10 pM", "species.IL2.initial.value", 0.01),
        ("species.IL2.initial", "1 uM", "species.IL2.initial.value", 1000.0),
        ("populations.cancer.initial", "1e5 1/mm^3", "populations.cancer.initial.value", 1e-4),
        ("populations.cancer.initial", "1e5 cells/mm^3", "populations.cancer.initial.value", 1e-4),
        ("species.IL6.decay", "1 1/h", "species.IL6.decay", 1 / 3600),
        ("terms[0].rate", "20 molecule/s", "terms.0.rate", 20.0),
        ("terms[0].rate", "1200 molecule/min", "terms.0.rate", 20.0),
        ("terms[1].rate", "1e-9 mm^3/s", "terms.1.rate", 1.0),
        ("sources[0].rate", "5 pM/s", "sources.0.rate", 0.005),
        ("sources[1].position", ["0.1 mm", "200 um"], "sources.1.position", (100.0, 200.0)),
        ("grid.spacing", "0.01 mm", "grid.spacing", (10.0, 10.0)),
        ("grid.spacing", [5, "10 um"], "grid.spacing", (5.0, 10.0)),
        ("grid.origin", "-0.01 mm", "grid.origin", (-10.0, -10.0)),
        ("grid.depth", "20 um", "grid.depth", 20.0),
        ("regions.tumour.sphere.radius", "0.1 mm", "regions.tumour.sphere.radius", 100.0),
        (  # 3.6e6 cells per mm^3 per hour: 3.6e6 / 1e9 / 3600 per um^3 per second
            "terms[1]",
            {
                "type": "recruitment",
                "population": "effector",
                "region": "vessels",
                "rate": "3.6e6 1/(mm^3*h)",
            },
            "terms.1.rate",
            1e-6,
        ),
    ],
)
def test_unit_conversion(key, value, attribute, expected):
    cfg = load_config(base(), overrides={key: value})
    assert _get(cfg, attribute) == pytest.approx(expected, rel=1e-12)


def test_uptake_association_units():
    raw = base()
    raw["terms"].append({**UPTAKE, "k_on": "3.1e7 1/M/s", "receptors": 1500})
    raw["terms"].append({**UPTAKE, "vmax": "600 molecules/cell/min", "km": "5 pM"})
    cfg = load_config(raw)
    uptake = cfg.terms[2]
    assert isinstance(uptake, Uptake)
    assert uptake.k_on == pytest.approx(0.031)
    assert uptake.receptors == 1500.0
    assert uptake.vmax is None and uptake.km is None
    assert cfg.terms[3].vmax == pytest.approx(10.0)
    assert cfg.terms[3].km == pytest.approx(0.005)
    assert cfg.terms[3].k_on is None and cfg.terms[3].receptors is None


def test_hill_constant_in_the_units_of_its_field():
    modulators = [
        {"of": "cancer", "K": "1e5 1/mm^3"},
        {"of": "IL6", "K": "100 pM", "hill": 2},
        {"of": "IL10", "K": 0.5},
    ]
    cfg = load_config(base(), overrides={"terms[0].activators": modulators})
    activators = cfg.terms[0].activators
    assert activators[0].K == pytest.approx(1e-4)
    assert activators[1].K == pytest.approx(0.1)
    assert activators[1].hill == 2.0
    assert activators[2].K == 0.5
    assert activators[0].hill == 1.0


def test_defaults_filled():
    cfg = load_config(
        {
            "grid": {"shape": 32, "spacing": 2},
            "time": {"end": 10},
            "species": {"a": {"diffusion": 1}},
        }
    )
    assert cfg.grid.shape == (32,)
    assert cfg.grid.spacing == (2.0,)
    assert cfg.grid.origin == (0.0,)
    assert cfg.grid.depth is None
    assert cfg.grid.boundary.kind == "neumann"
    time = cfg.time
    assert (time.dt, time.stepper, time.scheme, time.dtype) == ("auto", "imex", "ssprk3", "float32")
    assert (time.output_every, time.seed, time.adaptive) == (None, 0, False)
    assert (time.tolerance, time.safety) == (1e-3, 0.9)
    species = cfg.species["a"]
    assert species.decay == 0.0
    assert species.diffusion.regions == {}
    assert species.initial.kind == "value" and species.initial.value == 0.0
    assert isinstance(species.initial, Initial)
    assert species.boundary == {}
    assert cfg.regions == {} and cfg.populations == {} and cfg.terms == [] and cfg.sources == []
    assert cfg.output.fields is None
    assert cfg.output.compression == "gzip"
    assert cfg.output.checkpoint_every is None


def test_population_defaults_and_schedule_default():
    cfg = load_config(base())
    cancer = cfg.populations["cancer"]
    assert cancer.motility.value == 0.0 and cancer.chemotaxis is None
    schedule = cfg.sources[0].schedule
    assert (schedule.start, schedule.duration, schedule.every, schedule.count) == (
        0,
        None,
        None,
        None,
    )
    assert load_config(base(), overrides={"sources[0].schedule": "always"}).sources[0].schedule == (
        schedule
    )


def test_face_forms():
    faces = {
        "x_min": {"dirichlet": "10 pM"},
        "x_max": {"robin": {"h": "1 um/s", "outside": "2 nM"}},
        "y_min": {"neumann": {}},
        "y_max": {"kind": "dirichlet", "value": 3.0},
    }
    cfg = load_config(base(), overrides={"species.IL2.boundary": faces})
    boundary = cfg.species["IL2"].boundary
    assert boundary["x_min"].kind == "dirichlet"
    assert boundary["x_min"].value == pytest.approx(0.01)
    assert (boundary["x_max"].kind, boundary["x_max"].h, boundary["x_max"].outside) == (
        "robin",
        1.0,
        2.0,
    )
    assert boundary["y_min"].kind == "neumann"
    assert boundary["y_max"].value == 3.0
    # a population's face values are densities
    cfg = load_config(
        base(), overrides={"populations.cancer.boundary.x_max": {"dirichlet": "1e5 1/mm^3"}}
    )
    assert cfg.populations["cancer"].boundary["x_max"].value == pytest.approx(1e-4)
    # periodic on both faces, or as the grid default
    both = {"x_min": "periodic", "x_max": "periodic"}
    cfg = load_config(base(), overrides={"species.IL6.boundary": both})
    assert cfg.species["IL6"].boundary["x_max"].kind == "periodic"
    cfg = load_config(base(), overrides={"grid.boundary": "periodic"})
    assert cfg.grid.boundary.kind == "periodic"


def test_initial_forms(tmp_path):
    data = tmp_path / "c0.npy"
    np.save(data, np.zeros((64, 64)))
    forms = {
        "species.IL2.initial": {
            "gaussian": {"center": [320, 320], "sigma": "5 um", "amplitude": "1 pM"}
        },
        "species.IL6.initial": {"random": {"mean": "1 nM", "std": 0.1, "seed": 3}},
        "species.IL10.initial": {"file": str(data)},
    }
    cfg = load_config(base(), overrides=forms)
    gaussian = cfg.species["IL2"].initial
    assert (gaussian.kind, gaussian.center, gaussian.sigma) == ("gaussian", (320.0, 320.0), 5.0)
    assert gaussian.amplitude == pytest.approx(1e-3)
    random = cfg.species["IL6"].initial
    assert (random.kind, random.mean, random.std, random.seed) == ("random", 1.0, 0.1, 3)
    assert cfg.species["IL10"].initial.path == str(data)


def test_initial_file_of_another_shape_says_which_shape(tmp_path):
    np.save(tmp_path / "c0.npy", np.zeros((8, 8)))
    cfg = load_config(
        base(), overrides={"species.IL10.initial": {"file": str(tmp_path / "c0.npy")}}
    )
    with pytest.raises(ConfigError) as info:
        build_model(cfg)
    message = str(info.value)
    assert message.startswith("species.IL10.initial.file: ")
    assert message.endswith("; save an array of shape (64, 64)")


def test_output_every_beyond_end_gives_frames_at_0_and_end():
    cfg = load_config(base(), overrides={"time.end": "100 s", "time.output_every": "300 s"})
    assert cfg.time.output_every == 300.0
    assert list(output_times(cfg.time.end, cfg.time.output_every)) == [0.0, 100.0]


def test_largest_seed():
    assert load_config(base(), overrides={"time.seed": 2**32 - 1}).time.seed == 2**32 - 1


def test_relative_paths_resolve_against_the_config_folder(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    np.save(folder / "mask.npy", np.ones((64, 64), dtype=np.uint8))
    (folder / "il2.h5").write_bytes(b"")
    path = folder / "cfg.toml"
    path.write_text(dump_toml(load_config(base())) + '\n[regions.mask]\nfile = "mask.npy"\n')
    cfg = load_config(path, overrides={"species.IL2.initial": {"file": "il2.h5"}})
    assert cfg.regions["mask"].kind == "file"
    assert cfg.regions["mask"].file == str(folder / "mask.npy")
    assert cfg.species["IL2"].initial.path == str(folder / "il2.h5")
    # a mask of another shape is an error naming the file key
    np.save(folder / "mask.npy", np.ones((8, 8)))
    with pytest.raises(ConfigError, match=r"^regions\.mask\.file: the mask has shape \(8, 8\)"):
        load_config(path)


def test_a_region_reads_its_mask_from_an_hdf5_file(tmp_path):
    import h5py

    from engine.config.build import build_model

    mask = np.zeros((64, 64), dtype=np.uint8)
    mask[10:20, 30:40] = 1
    with h5py.File(tmp_path / "masks.h5", "w") as f:
        f["regions/mask"] = mask
        f["regions/other"] = 1 - mask
        f["time"] = [0.0]
    path = tmp_path / "cfg.toml"
    path.write_text(dump_toml(load_config(base())) + '\n[regions.mask]\nfile = "masks.h5"\n')
    overrides = {"species.IL2.initial": {"region": "mask", "value": 2.0}}
    initial = build_model(load_config(path, overrides)).species[0].initial
    np.testing.assert_array_equal(initial, 2.0 * mask)
    with h5py.File(tmp_path / "masks.h5", "a") as f:
        del f["regions/mask"]
    with pytest.raises(ConfigError, match=r"^regions\.mask\.file: cannot read .* 2 datasets"):
        load_config(path)


def test_a_box_as_thin_as_a_voxel_centre_holds_that_layer():
    """A box holds the voxel centres within its faces: lower = upper on a centre (x = 5 um) is
    the one layer of voxels there, not an empty box."""
    box = {"box": {"lower": [0, 5], "upper": [640, 5]}}
    cfg = load_config(base(), overrides={"regions.tumour": box})
    mask = region_mask(build_grid(cfg), cfg.regions["tumour"], "tumour")
    assert mask.sum() == 64 and mask[:, 0].all()


def test_region_kinds_and_3d_geometry():
    raw = {
        "grid": {"shape": [8, 16, 32], "spacing": [4, 2, 1], "origin": [-16, 0, 0]},
        "time": {"end": "1 min", "dt": "0.1 s"},
        "regions": {
            "ball": {"sphere": {"center": [0, 16, 16], "radius": 3}},
            "slab": {"box": {"lower": [-16, 0, 0], "upper": [0, 32, 32]}},
            "vessel": {"cylinder": {"center": [0, 16, 16], "radius": 2, "axis": "z"}},
            "dots": {"spots": {"count": 3, "radius": 2}},
        },
        "species": {"a": {"diffusion": 1, "boundary": {"z_min": {"dirichlet": 1}}}},
        "sources": [{"type": "point", "species": "a", "position": [-16, 0, 0], "rate": 1}],
    }
    cfg = load_config(raw)
    assert [region.kind for region in cfg.regions.values()] == [
        "sphere",
        "box",
        "cylinder",
        "spots",
    ]
    assert cfg.time.dt == 0.1
    assert cfg.species["a"].boundary["z_min"].value == 1.0
    assert cfg.regions["vessel"].cylinder.axis == "z"
    with pytest.raises(
        ConfigError, match=r"^sources\[0\]\.position: .* lies outside the grid \[-16, 16\) x"
    ):
        load_config(raw, overrides={"sources[0].position": [16, 0, 0]})
    with pytest.raises(ConfigError, match=r"^species\.a\.boundary\.w_min: not a face of a 3D grid"):
        load_config(raw, overrides={"species.a.boundary.w_min": "neumann"})


def test_conversion_and_custom_terms():
    terms = [
        {"type": "conversion", "from": "effector", "to": "cancer", "rate": "1 1/h"},
        {"type": "custom", "name": "my_term", "params": {"a": 1, "b": 2.5}},
        {"type": "growth", "population": "cancer", "rate": 1e-5, "capacity": "1e6 1/mm^3"},
        {"type": "death", "population": "cancer", "rate": 1e-6},
        {
            "type": "proliferation",
            "population": "effector",
            "rate": 1e-6,
            "activators": [{"of": "IL2", "K": "10 pM"}],
        },
        {"type": "recruitment", "population": "effector", "region": "vessels", "rate": 1e-9},
    ]
    cfg = load_config(base(), overrides={"terms": terms})
    conversion = cfg.terms[0]
    assert isinstance(conversion, Conversion)
    assert (conversion.from_, conversion.to) == ("effector", "cancer")
    assert conversion.rate == pytest.approx(1 / 3600)
    assert (cfg.terms[1].name, cfg.terms[1].params) == ("my_term", {"a": 1.0, "b": 2.5})
    assert cfg.terms[2].capacity == pytest.approx(1e-3)
    assert cfg.terms[2].crowding is None
    assert cfg.terms[4].activators[0].K == pytest.approx(0.01)
    assert [term.type for term in cfg.terms] == [
        "conversion",
        "custom",
        "growth",
        "death",
        "proliferation",
        "recruitment",
    ]


# ---------------------------------------------------------------------------------------------
# Overrides


def test_overrides_apply_before_validation():
    cfg = load_config(
        EXAMPLE,
        overrides={
            "time.end": "2 h",
            "terms[0].rate": 3.0,
            "species.IL2.diffusion": "10 um^2/s",
            "terms[0].activators[0].hill": 3,
            "sources[0].schedule.count": 2,
        },
    )
    assert cfg.time.end == 7200.0
    assert cfg.terms[0].rate == 3.0
    assert cfg.species["IL2"].diffusion.value == 10.0
    assert cfg.terms[0].activators[0].hill == 3.0
    assert cfg.sources[0].schedule.count == 2


@pytest.mark.parametrize(
    "key, value, place",
    [
        ("terms[1].rate", 7.0, lambda raw: (raw["terms"][1], "rate")),
        ("terms[1].activators[1].K", 0.25, lambda raw: (raw["terms"][1]["activators"][1], "K")),
        (
            "terms[0].activators[1].hill",
            3.0,
            lambda raw: (raw["terms"][0]["activators"][1], "hill"),
        ),
        ("sources[1].position[1]", 310.0, lambda raw: (raw["sources"][1]["position"], 1)),
        ("sources[1].rate", 42.0, lambda raw: (raw["sources"][1], "rate")),
        ("grid.spacing[1]", 8.0, lambda raw: (raw["grid"]["spacing"], 1)),
    ],
)
def test_an_override_sets_the_array_entry_it_indexes_and_nothing_else(key, value, place):
    """`terms[1].activators[1].K = v` (--set, sweeps, fits) changes that entry of the
    resolved config alone: not entry 0, not the last, and at every depth of indexing; alike
    in a config file's tables and in a loaded Config (whose arrays of numbers are tuples)."""
    raw = base()
    modulators = [{"of": "IL6", "K": 0.5, "hill": 1.0}, {"of": "IL10", "K": 2.0, "hill": 1.0}]
    for term in raw["terms"]:
        term["activators"] = copy.deepcopy(modulators)
    raw["terms"].append({"type": "death", "population": "cancer", "rate": 1e-6})
    raw["grid"]["spacing"] = [10.0, 10.0]
    before = load_config(raw)
    expected = to_raw(before)
    container, entry = place(expected)
    assert container[entry] != value
    container[entry] = value
    expected = to_raw(load_config(expected))
    assert to_raw(load_config(raw, overrides={key: value})) == expected
    # the same override of a loaded Config (the Python API, sweeps, fits)
    assert to_raw(load_config(before, overrides={key: value})) == expected


def test_overrides_create_missing_tables():
    cfg = load_config(
        base(),
        overrides={
            "species.IL2.boundary.x_min.dirichlet": "1 nM",
            "populations.naive": {"motility": "1 um^2/s"},
            "regions.spot": {"sphere": {"center": [10, 10], "radius": 10}},
            "regions.spot.sphere.radius": 20,
        },
    )
    assert cfg.species["IL2"].boundary["x_min"].value == 1.0
    assert cfg.populations["naive"].motility.value == 1.0
    assert cfg.regions["spot"].kind == "sphere" and cfg.regions["spot"].sphere.radius == 20


@pytest.mark.parametrize(
    "key, fragment",
    [
        ("terms[5].rate", r"^terms\[5\]: index out of range, terms has 2 entries"),
        ("sources[2]", r"^sources\[2\]: index out of range"),
        ("time[0]", r"^time: not an array"),
        ("time.end.x", r"^time\.end: not a table"),
        ("terms[x].rate", r"not a key path"),
        ("regions[0]", r"^regions: not an array"),
    ],
)
def test_bad_override_paths(key, fragment):
    with pytest.raises(ConfigError, match=fragment):
        load_config(base(), overrides={key: 1.0})


def test_overrides_on_a_loaded_config():
    cfg = load_config(base())
    other = load_config(cfg, overrides={"terms[0].rate": 40.0})
    assert other.terms[0].rate == 40.0
    assert cfg.terms[0].rate == 20.0
    assert load_config(cfg) == cfg


@pytest.mark.parametrize(
    "text, expected",
    [
        ("time.end=2 h", ("time.end", "2 h")),
        ('time.end="2 h"', ("time.end", "2 h")),
        ("terms[0].rate=3", ("terms[0].rate", 3)),
        ("terms[0].rate = 1e-3", ("terms[0].rate", 1e-3)),
        ("time.adaptive=true", ("time.adaptive", True)),
        ("grid.shape=[1,2]", ("grid.shape", [1, 2])),
        ("time.dt=auto", ("time.dt", "auto")),
        (
            "species.IL2.initial={ region = 'tumour', value = 1 }",
            ("species.IL2.initial", {"region": "tumour", "value": 1}),
        ),
        ("output.fields=", ("output.fields", "")),
        ("species.IL2.diffusion=10 um^2/s", ("species.IL2.diffusion", "10 um^2/s")),
        ("a.b=c=d", ("a.b", "c=d")),
    ],
)
def test_parse_override(text, expected):
    assert parse_override(text) == expected


def test_parse_override_nan_and_errors():
    key, value = parse_override("terms[0].rate=nan")
    assert key == "terms[0].rate" and math.isnan(value)
    for text in ("time.end", "=3", "time..end=3"):
        with pytest.raises(ConfigError):
            parse_override(text)
    for text in ('time.end="2 h', "grid.shape=[4, 4", "species.IL2.initial={ value = 1"):
        with pytest.raises(ConfigError, match=r"is not a TOML value \(a quote or bracket"):
            parse_override(text)


def test_parse_override_feeds_load_config():
    overrides = dict(parse_override(text) for text in ("time.end=6 h", "terms[0].rate=7"))
    cfg = load_config(base(), overrides=overrides)
    assert (cfg.time.end, cfg.terms[0].rate) == (21600.0, 7.0)


# ---------------------------------------------------------------------------------------------
# Dump


@pytest.mark.parametrize("source", ["base", "example", "rich"])
def test_dump_toml_round_trip(source, tmp_path):
    if source == "base":
        cfg = load_config(base())
    elif source == "example":
        cfg = load_config(EXAMPLE)
    else:
        np.save(tmp_path / 'odd "name".npy', np.ones((64, 64)))
        cfg = load_config(
            base(),
            overrides={
                "grid.boundary": {"robin": {"h": 0.5, "outside": 0.25}},
                "grid.depth": 15,
                "time.dt": "0.5 s",
                "time.dtype": "float64",
                "time.output_every": "1 min",
                "regions.odd": {"file": str(tmp_path / 'odd "name".npy')},
                "species.IL2.diffusion": {"value": 25, "regions": {"tumour": 5, "odd": 0}},
                "species.IL2.initial": {"gaussian": {"center": [1, 2], "sigma": 3, "amplitude": 4}},
                "species.IL2.boundary.x_min": {"dirichlet": 1.5},
                "populations.effector.chemotaxis": {"species": "IL2", "sensitivity": -2.5},
                "terms": [
                    *BASE["terms"],
                    {**UPTAKE, "vmax": 10, "km": 0.3},
                    {
                        "type": "growth",
                        "population": "cancer",
                        "rate": 1e-5,
                        "capacity": 1e-3,
                        "crowding": ["cancer", "effector"],
                    },
                    {"type": "custom", "name": "f", "params": {"x": 1}},
                ],
                "terms[0].inhibitors": [{"of": "IL10", "K": "0.1 nM", "hill": 2}],
                "sources[1].schedule": {"start": 5, "duration": 10},
                "output.fields": ["IL2"],
                "output.compression": "none",
            },
        )
    text = dump_toml(cfg)
    raw = tomllib.loads(text)
    assert load_config(raw) == cfg
    # the dump holds engine units: numbers, no unit strings
    assert raw["time"]["end"] == cfg.time.end
    path = tmp_path / "resolved.toml"
    path.write_text(text)
    assert load_config(path) == cfg
    assert dump_toml(load_config(path)) == text


# ---------------------------------------------------------------------------------------------
# Memory


def test_memory_bytes_scales_with_fields_voxels_and_dtype():
    cfg = load_config(base())
    fields = len(cfg.species) + len(cfg.populations)
    assert cfg.memory_bytes() == fields * 64 * 64 * 4 * 8
    more = load_config(base(), overrides={f"species.extra{i}": {"diffusion": 1} for i in range(5)})
    assert more.memory_bytes() == cfg.memory_bytes() * (fields + 5) // fields
    double = load_config(base(), overrides={"time.dtype": "float64"})
    assert double.memory_bytes() == 2 * cfg.memory_bytes()
    bigger = load_config(base(), overrides={"grid.shape": [128, 64]})
    assert bigger.memory_bytes() == 2 * cfg.memory_bytes()


def test_memory_check_against_available_memory():
    cfg = load_config(base())
    need = cfg.memory_bytes()
    check_memory(cfg, need * 5 // 4 + 8)  # just below 80% of the available memory
    with pytest.raises(ConfigError) as info:
        check_memory(cfg, need * 5 // 4 - 8)
    message = str(info.value)
    assert message.startswith("grid.shape: the run needs about")
    assert "GB" in message and "80%" in message and "smaller grid" in message
    huge = load_config(base(), overrides={"grid.shape": [10**6, 10**6]})
    with pytest.raises(ConfigError, match=r"^grid\.shape: the run needs about .* GB"):
        check_memory(huge, 2**40)  # a TiB machine
    check_memory(huge, None)  # unknown memory: not checked


def test_memory_check_counts_the_output_times():
    """A run holds the times of its frames: 1e30 s in frames of 30 min (5.6e26 frames) fits no
    machine and is refused naming time.output_every; without output_every there are two."""
    frames = {"time.end": "1e30 s", "time.output_every": "30 min"}
    with pytest.raises(ConfigError) as info:
        check_memory(load_config(base(), overrides=frames), 2**40)
    message = str(info.value)
    assert message.startswith("time.output_every: the run needs about 2.67e+19 GB (5.56e+26 fr")
    assert message.endswith("; use a larger output_every or a shorter time.end")
    check_memory(load_config(base(), overrides={"time.end": "1e30 s"}), 2**40)


def test_available_memory_is_positive():
    available = available_memory()
    assert available is None or available > 0


def test_plain_model_validate_converts_like_load_config():
    raw = base()
    raw["terms"][0]["activators"] = [{"of": "cancer", "K": "1e5 1/mm^3"}]
    assert Config.model_validate(raw) == load_config(raw)
    assert Config.model_validate(raw).terms[0].activators[0].K == pytest.approx(1e-4)


def test_field_faces_compare_with_plain_faces():
    cfg = load_config(base(), overrides={"species.IL2.boundary.x_min": {"dirichlet": 0}})
    face = cfg.species["IL2"].boundary["x_min"]
    assert isinstance(face, Face)
    assert face == Face(kind="dirichlet")
    assert face != Face(kind="dirichlet", value=1.0)
    assert cfg.species["IL2"].boundary.get("y_min", cfg.grid.boundary) == Face()
    assert cfg.species["IL2"].initial == Initial()


def test_dict_paths_resolve_against_the_working_directory(tmp_path, monkeypatch):
    np.save(tmp_path / "mask.npy", np.ones((64, 64)))
    monkeypatch.chdir(tmp_path)
    cfg = load_config(base(), overrides={"regions.mask": {"file": "mask.npy"}})
    assert cfg.regions["mask"].file == str(tmp_path / "mask.npy")


@pytest.mark.parametrize(
    "mesh, message",
    [
        ([0], "parallel.mesh: devices per axis must be >= 1, got [0]"),
        ("x", "parallel.mesh: expected \"auto\" or devices per leading grid axis, got 'x'"),
        ([2, True], 'parallel.mesh: expected "auto" or devices per leading grid axis'),
    ],
)
def test_bad_parallel_mesh_names_the_key(mesh, message):
    raw = base()
    raw["parallel"] = {"mesh": mesh}
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
        load_config(raw)


@pytest.mark.parametrize("mesh, expected", [("auto", "auto"), (4, (4,)), ([2, 2], (2, 2))])
def test_parallel_mesh_forms(mesh, expected):
    raw = base()
    raw["parallel"] = {"mesh": mesh}
    assert load_config(raw).parallel.mesh == expected
    assert load_config(base()).parallel.mesh is None


def test_parallel_heartbeat_timeout_is_a_positive_duration():
    raw = base()
    assert load_config(raw).parallel.heartbeat_timeout == 100.0
    raw["parallel"] = {"heartbeat_timeout": "2 min"}
    assert load_config(raw).parallel.heartbeat_timeout == 120.0
    raw["parallel"] = {"heartbeat_timeout": "0 s"}
    with pytest.raises(ConfigError, match="parallel.heartbeat_timeout"):
        load_config(raw)
