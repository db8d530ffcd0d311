"""The model a config builds (`engine.config.build`, and `Parameters` on top of it): every
configured number lands in the model leaf it names, on the field, face and voxels the config
says (DESIGN.md sections 1 and 2), and a key the model depends on non-linearly is refused as a
parameter (section 5). A mask or initial file that holds no mask or field is refused in one
line naming the key and the file."""

from __future__ import annotations

import h5py
import numpy as np
import pytest

from engine.config.build import build_model
from engine.config.errors import ConfigError
from engine.config.loading import load_config
from engine.config.parameters import Parameters
from engine.model import terms
from engine.model.sources import Schedule
from engine.numerics.boundary import Dirichlet, Neumann, Robin
from engine.numerics.constants import MOLECULES_PER_UM3_PER_NM

RAW = {
    "grid": {"shape": [6, 10], "spacing": "10 um", "origin": [0, -20]},
    "time": {"end": "1 h"},
    "regions": {"left": {"box": {"lower": [0, -20], "upper": [60, 10]}}},
    "species": {
        "IL2": {
            "diffusion": {"value": "25 um^2/s", "regions": {"left": "5 um^2/s"}},
            "initial": {"gaussian": {"center": [30, 15], "sigma": "20 um", "amplitude": 2.0}},
            "boundary": {
                "x_min": {"robin": {"h": "3 um/s", "outside": "7 nM"}},
                "y_max": {"dirichlet": 0.5},
            },
        },
    },
    "populations": {
        "effector": {"initial": 1e-4},
        "cancer": {"initial": {"region": "left", "value": 1e-3}},
    },
    "terms": [
        {"type": "killing", "target": "cancer", "by": "effector", "rate": "2 um^3/s"},
        {"type": "conversion", "from": "effector", "to": "cancer", "rate": "0.5 1/s"},
        {
            "type": "secretion",
            "species": "IL2",
            "by": "effector",
            "rate": 20,
            "inhibitors": [{"of": "IL2", "K": "100 pM", "hill": 2}],
        },
        {"type": "uptake", "species": "IL2", "by": "cancer", "vmax": 10, "km": "1 nM"},
    ],
    "sources": [
        {
            "type": "region",
            "species": "IL2",
            "region": "left",
            "rate": "1 nM/s",
            "schedule": {"start": "1 min", "duration": "2 min", "every": "10 min", "count": 3},
        },
    ],
}


@pytest.fixture(scope="module")
def model():
    return build_model(load_config(RAW))


def _left(model) -> np.ndarray:
    """The region `left`: x < 10 um, i.e. the voxels whose centres lie at x = -15, -5."""
    _, x = model.grid.centres()
    return np.broadcast_to(x < 10.0, model.grid.shape)


def test_faces_get_their_condition_and_values_by_name(model):
    """A per-face override goes to the face it names (the axes in array order y, x, each
    (min, max)), with its own numbers: robin's h and outside are not exchanged, and every
    face not named keeps the grid's default (neumann)."""
    (il2,) = model.species
    (y_min, y_max), (x_min, x_max) = il2.boundary.faces
    assert x_min == Robin(h=3.0, outside=7.0)
    assert y_max == Dirichlet(0.5)
    assert y_min == x_max == Neumann()


def test_a_coefficient_takes_its_region_value_inside_the_region_only(model):
    """`diffusion = { value, regions = { left = ... } }` is the region's value inside its mask
    and the default everywhere else."""
    (il2,) = model.species
    np.testing.assert_array_equal(il2.diffusion, np.where(_left(model), 5.0, 25.0))


def test_initial_conditions_follow_their_formulas(model):
    """A Gaussian is amplitude exp(-r^2 / (2 sigma^2)) around its centre (voxel centres,
    origin included); a region initial is its value inside the region and 0 outside."""
    (il2,) = model.species
    y, x = model.grid.centres()
    r2 = (y - 30.0) ** 2 + (x - 15.0) ** 2
    np.testing.assert_allclose(il2.initial, 2.0 * np.exp(-r2 / (2 * 20.0**2)), rtol=1e-12)
    cancer = model.populations[1]
    np.testing.assert_array_equal(cancer.initial, np.where(_left(model), 1e-3, 0.0))


def _rates(term, fields) -> tuple[dict, dict]:
    """(production, loss rate) of one term at `fields`."""
    production, loss = {}, {}
    term.contribute(fields, production, loss)
    return production, loss


def test_terms_act_on_the_fields_they_name(model):
    """Each term changes the fields its keys name, at its table's rate (DESIGN.md section 1):
    killing, the target at rate k n_by (the killer is not); conversion, n_from lost at rate k
    and n_to gaining k n_from; secretion, the species gaining rate n_by (molecules -> nM) times
    its inhibitor K^h / (K^h + c^h); uptake, the species lost at vmax / (km + c) n_by."""
    killing, conversion, secretion, uptake = model.terms
    types = (terms.Killing, terms.Conversion, terms.Secretion, terms.Uptake)
    assert all(isinstance(term, kind) for term, kind in zip(model.terms, types))
    fields = {"cancer": 3.0, "effector": 5.0, "IL2": 0.3}
    production, loss = _rates(killing, fields)
    assert production == {} and loss == {"cancer": pytest.approx(2.0 * 5.0)}
    production, loss = _rates(conversion, fields)
    assert loss == {"effector": pytest.approx(0.5)}
    assert production == {"cancer": pytest.approx(0.5 * 5.0)}
    production, loss = _rates(secretion, fields)
    inhibition = 0.1**2 / (0.1**2 + 0.3**2)  # 0.1 at c = 3 K (an activator: 0.9)
    expected = 20 * 5.0 / MOLECULES_PER_UM3_PER_NM * inhibition
    assert production == {"IL2": pytest.approx(expected)}
    assert loss == {}
    production, loss = _rates(uptake, fields)
    per_cell = 10 / (1.0 + 0.3)
    assert loss == {"IL2": pytest.approx(per_cell * 3.0 / MOLECULES_PER_UM3_PER_NM)}
    assert production == {}


def test_a_source_keeps_its_schedule_and_region(model):
    """A dosing schedule reaches the model as start, duration, every and count (s), each in
    its place, and a region source's rate is the rate inside the region's voxels only."""
    (source,) = model.sources
    assert source.schedule == Schedule(start=60.0, duration=120.0, every=600.0, count=3.0)
    np.testing.assert_array_equal(source.rate, np.where(_left(model), 1.0, 0.0))
    always = build_model(load_config(RAW, {"sources[0].schedule": "always"})).sources[0]
    assert always.schedule == Schedule()


def test_a_key_the_model_depends_on_non_linearly_is_not_a_parameter():
    """A Gaussian's amplitude moves the initial field affinely and is a parameter; its sigma
    moves it non-linearly: refused (it cannot be bound by a slope), and left out with
    skip_invalid."""
    cfg = load_config(RAW)
    amplitude = Parameters.of(cfg, ["species.IL2.initial.amplitude"])
    assert amplitude.values.tolist() == [2.0]
    with pytest.raises(ConfigError, match=r"^species\.IL2\.initial\.sigma: .*non-linearly"):
        Parameters.of(cfg, ["species.IL2.initial.sigma"])
    kept = Parameters.of(cfg, ["species.IL2.initial.sigma", "terms[0].rate"], skip_invalid=True)
    assert kept.keys == ("terms[0].rate",)


def test_random_initial_values_are_seeded_and_never_negative():
    """{ random = { mean, std, seed } }: normal values cut at 0 (a field holds no negative
    concentration), the same for the same seed and different for another."""
    initial = {"random": {"mean": 0.1, "std": 1.0, "seed": 3}}

    def built(seed: int) -> np.ndarray:
        raw = {**RAW, "species": {"IL2": {"diffusion": 1.0, "initial": initial}}}
        cfg = load_config(raw, {"species.IL2.initial.random.seed": seed})
        return np.asarray(build_model(cfg).species[0].initial)

    first = built(3)
    assert first.shape == (6, 10) and first.min() == 0.0 and first.max() > 0.0
    np.testing.assert_array_equal(first, built(3))
    assert not np.array_equal(first, built(4))


def test_an_initial_file_of_an_ilsim_output_gives_its_last_frame(tmp_path):
    """{ file = OUT.h5 } starts the field from the last frame of fields/<name> in an earlier
    run's output (continuing where that run ended), not from its first."""
    path = tmp_path / "before.h5"
    frames = np.stack([np.full((6, 10), 1.0), np.arange(60.0).reshape(6, 10)])
    with h5py.File(path, "w") as f:
        f["fields/IL2"] = frames
    cfg = load_config(RAW, {"species.IL2.initial": {"file": str(path)}})
    np.testing.assert_array_equal(build_model(cfg).species[0].initial, frames[-1])


def _bytes(data: bytes):
    return lambda path: path.write_bytes(data)


def _npy(array, **options):
    def write(path):
        with open(path, "wb") as file:  # np.save would append .npy to another suffix
            np.save(file, array, **options)

    return write


def _fields(value):
    """An HDF5 file whose fields/IL2 is `value`, or a group where `value` is None."""

    def write(path):
        with h5py.File(path, "w") as f:
            if value is None:
                f.create_group("fields/IL2/frames")
            else:
                f["fields/IL2"] = value

    return write


# (id, file name, writer, the reason the error gives): neither a mask nor an initial field
UNREADABLE = [
    ("text", "a.npy", _npy(np.full((6, 10), "a")), "holds <U1 values, not booleans or real"),
    (
        "records",
        "a.npy",
        _npy(np.zeros((6, 10), dtype=[("a", "f4"), ("b", "f4")])),
        "holds [('a', '<f4'), ('b', '<f4')] values",
    ),
    ("complex", "a.npy", _npy(np.ones((6, 10), dtype=complex)), "holds complex128 values"),
    ("nan", "a.npy", _npy(np.full((6, 10), np.nan)), "holds NaN or infinite values"),
    ("empty", "a.npy", _bytes(b""), "empty (0 bytes)"),
    ("objects", "a.npy", _npy(np.full((6, 10), None), allow_pickle=True), "holds Python objects"),
    ("junk", "a.npy", _bytes(b"not an array\n" * 9), "not a .npy file"),
    ("junk_hdf5", "a.h5", _bytes(b"not an array\n" * 9), "not a readable HDF5 file"),
]
NOT_A_FIELD = [
    ("scalar", "a.h5", _fields(1.0), "dataset fields/IL2 has shape (), not frames of shape"),
    ("one_axis", "a.h5", _fields(np.ones(10)), "dataset fields/IL2 has shape (10,), not frames"),
    ("group", "a.hdf5", _fields(None), "has no dataset fields/IL2"),
]


def _one_line(info) -> str:
    message = str(info.value)
    assert "\n" not in message
    return message


@pytest.mark.parametrize(
    ("name", "write", "reason"), [c[1:] for c in UNREADABLE], ids=[c[0] for c in UNREADABLE]
)
def test_a_mask_file_that_holds_no_mask_is_refused_naming_key_and_file(
    tmp_path, name, write, reason
):
    """A mask is booleans or finite real numbers (nonzero = inside); anything else, or a file
    that holds no array, is refused when the config loads, naming the key and the file."""
    path = tmp_path / name
    write(path)
    with pytest.raises(ConfigError) as info:
        load_config(RAW, {"regions.left": {"file": str(path)}})
    message = _one_line(info)
    assert message.startswith(f"regions.left.file: cannot read {str(path)!r} as a mask: {reason}")
    assert message.endswith("of booleans or finite numbers (nonzero = inside)")


def test_a_mask_group_is_not_a_mask(tmp_path):
    """regions/NAME that is a group is not the mask: the file's only dataset is."""
    with h5py.File(tmp_path / "masks.h5", "w") as f:
        f["regions/left/a"] = np.ones((6, 10))
        f["regions/left/b"] = np.ones((6, 10))
    with pytest.raises(ConfigError, match="holds no dataset regions/left and 2 datasets; give"):
        load_config(RAW, {"regions.left": {"file": str(tmp_path / "masks.h5")}})


@pytest.mark.parametrize(
    ("name", "write", "reason"),
    [c[1:] for c in UNREADABLE + NOT_A_FIELD],
    ids=[c[0] for c in UNREADABLE + NOT_A_FIELD],
)
def test_an_initial_file_that_holds_no_field_is_refused_naming_key_and_file(
    tmp_path, name, write, reason
):
    """An initial field is a .npy array or an output's last frame of the grid's shape, real
    and finite; anything else is refused naming the key and the file, before any step."""
    path = tmp_path / name
    write(path)
    cfg = load_config(RAW, {"species.IL2.initial": {"file": str(path)}})
    with pytest.raises(ConfigError) as info:
        build_model(cfg)
    message = _one_line(info)
    assert message.startswith(
        f"species.IL2.initial.file: cannot read {path} as an initial field: {reason}"
    )
    assert "; give a .npy array of shape (6, 10) or an ilsim output of this grid" in message


def test_an_initial_file_is_a_npy_array_by_its_suffix_in_any_case(tmp_path):
    """up.NPY is read as the .npy array it is (loading accepts the suffix in any case), not
    opened as HDF5."""
    values = np.arange(60.0).reshape(6, 10)
    _npy(values)(tmp_path / "up.NPY")
    cfg = load_config(RAW, {"species.IL2.initial": {"file": str(tmp_path / "up.NPY")}})
    np.testing.assert_array_equal(build_model(cfg).species[0].initial, values)
