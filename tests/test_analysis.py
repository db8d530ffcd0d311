"""engine.analysis against fields with known answers: screening lengths of analytic profiles,
exposure and threshold fractions, statistics, interpolation, frame and slice selection, and
reading only what is asked for (one plane or box of a 3D frame, never the whole file)."""

from __future__ import annotations

import math
from pathlib import Path

import h5py
import numpy as np
import pytest

from engine import open_output
from engine.io.layout import FieldInfo
from engine.io.writer import OutputWriter
from engine.numerics.constants import MOLECULES_PER_UM3_PER_NM
from engine.numerics.grid import Grid
from engine.post import analysis
from engine.post.analysis import AnalysisError

ATTRS = dict(
    ilsim_version="0.1.0",
    backend="cpu",
    device="cpu",
    dtype="float32",
    stepper="imex",
    config='[grid]\nshape = [8, 8]\n\n[time]\nend = "1 h"\n',
)


def write_output(
    path: Path,
    grid: Grid,
    fields: dict,
    times=(0.0,),
    regions=None,
    compression="gzip",
    dtype="float32",
) -> Path:
    """An ilsim file with known content: `fields` maps name -> (kind, function of (t, grid)
    giving the frame at time t)."""
    infos = [FieldInfo(name, kind) for name, (kind, _) in fields.items()]
    with OutputWriter(
        path, grid, infos, dtype, ATTRS, regions or {}, compression=compression
    ) as writer:
        for t in times:
            writer.write_frame(t, {name: make(t, grid) for name, (_, make) in fields.items()})
    return path


def distance(grid: Grid, center) -> np.ndarray:
    return np.sqrt(sum((x - c) ** 2 for x, c in zip(grid.centres(), center)))


LAMBDA = 40.0


def yukawa(center):
    """exp(-r/L)/r: the steady state around a point source with decay in 3D."""

    def make(t, grid):
        r = np.maximum(distance(grid, center), 0.5)
        return np.exp(-r / LAMBDA) / r

    return make


def k0_field(center):
    """K0(r/L): the 2D steady state."""

    def make(t, grid):
        r = np.maximum(distance(grid, center), 0.5)
        return np.exp(analysis.log_k0(r.ravel() / LAMBDA)).reshape(r.shape)

    return make


# ----------------------------------------------------------------------------------------------
# screening length


def test_radial_profile_of_yukawa_field_gives_lambda(tmp_path):
    grid = Grid((64, 64, 64), spacing=4.0)
    center = (130.0, 126.0, 128.0)  # off the voxel centres
    path = write_output(tmp_path / "y.h5", grid, {"IL2": ("species", yukawa(center))})
    with open_output(path) as out:
        profile = analysis.radial_profile(out, "IL2", center, radius=120.0)
        assert profile.kind == "radial" and profile.ndim == 3 and profile.units == "nM"
        assert profile.distance[-1] <= 120.0 and np.all(np.diff(profile.distance) > 0)
        assert profile.counts.sum() > 4 / 3 * math.pi * 29**3 * 0.9  # a ball of 120 um
        fit = analysis.screening_length(profile)
        assert fit.geometry == "sphere"
        assert fit.length == pytest.approx(LAMBDA, rel=0.02)
        assert fit.amplitude == pytest.approx(1.0, rel=0.03)
        # rings in the plane through the source: still exp(-r/L)/r
        plane = analysis.radial_profile(out, "IL2", center[1:], slice=f"z={center[0]}um")
        assert plane.slice.name == "z" and plane.ndim == 3
        assert analysis.screening_length(plane, r_max=120).length == pytest.approx(LAMBDA, rel=0.02)
        # a line from the source outwards
        line = analysis.line_profile(out, "IL2", center, (center[0], center[1], 250.0))
        fit = analysis.screening_length(line, r_min=8.0)
        assert fit.length == pytest.approx(LAMBDA, rel=0.02)


def test_radial_profile_in_2d_and_1d(tmp_path):
    grid = Grid((100, 100), spacing=4.0)
    center = (200.0, 200.0)
    path = write_output(tmp_path / "k.h5", grid, {"IL6": ("species", k0_field(center))})
    with open_output(path) as out:
        profile = analysis.radial_profile(out, "IL6", center)
        fit = analysis.screening_length(profile, r_max=180)
        assert fit.geometry == "cylinder"
        assert fit.length == pytest.approx(LAMBDA, rel=0.02)
        # fitting the wrong geometry gives a worse fit
        assert analysis.screening_length(profile, geometry="plane", r_max=180).rms > fit.rms
    grid1 = Grid((200,), spacing=2.0)
    path = write_output(
        tmp_path / "e.h5",
        grid1,
        {"c": ("species", lambda t, g: np.exp(-np.abs(g.coordinates(0) - 100) / LAMBDA))},
    )
    with open_output(path) as out:
        profile = analysis.radial_profile(out, "c", (100.0,))
        fit = analysis.screening_length(profile)
        assert fit.geometry == "plane"
        assert fit.length == pytest.approx(LAMBDA, rel=0.01)


def test_screening_length_leaves_out_the_source_voxels_by_default(tmp_path):
    """A simulated source is not the analytic singularity: the field over the source (a disc
    of 16 um here) and next to it falls short of K0(r/L) (here flattened to its value at 16
    um). The default r_min, two bin widths (of 8 um), leaves that core out, so the fit still
    finds L; fitted from r = 0 it would not."""
    grid = Grid((80, 80), spacing=4.0)
    center = (162.0, 162.0)  # a voxel centre
    core = 16.0

    def make(t, g):
        r = np.maximum(distance(g, center), core)
        return np.exp(analysis.log_k0(r.ravel() / LAMBDA)).reshape(r.shape)

    path = write_output(tmp_path / "s.h5", grid, {"c": ("species", make)}, dtype="float64")
    with open_output(path) as out:
        profile = analysis.radial_profile(out, "c", center, radius=150.0, bin_width=8.0)
    fit = analysis.screening_length(profile)
    assert fit.r_min >= core and fit.length == pytest.approx(LAMBDA, rel=0.01)
    assert analysis.screening_length(profile, r_min=0.0).length > 1.05 * LAMBDA


def test_log_k0_matches_scipy():
    from scipy.special import k0

    x = np.geomspace(1e-3, 200, 60)
    np.testing.assert_allclose(np.exp(analysis.log_k0(x)), k0(x), rtol=1e-9)


def test_screening_length_refuses_flat_or_short_profiles(tmp_path):
    grid = Grid((20, 20), spacing=5.0)
    path = write_output(tmp_path / "f.h5", grid, {"c": ("species", lambda t, g: np.ones(g.shape))})
    with open_output(path) as out:
        profile = analysis.radial_profile(out, "c", (50.0, 50.0))
        with pytest.raises(AnalysisError, match="does not decay"):
            analysis.screening_length(profile, geometry="plane")
        with pytest.raises(AnalysisError, match="usable points"):
            analysis.screening_length(profile, r_min=1e4)
        with pytest.raises(AnalysisError, match="geometry"):
            analysis.screening_length(profile, geometry="torus")


# ----------------------------------------------------------------------------------------------
# exposure, thresholds, statistics, summaries


def test_exposure_of_constant_field_is_value_times_duration(tmp_path):
    grid = Grid((10, 12), spacing=5.0)
    left = np.zeros(grid.shape, dtype=np.uint8)
    left[:, :6] = 1
    times = [0.0, 60.0, 150.0, 600.0]  # irregular frames
    path = write_output(
        tmp_path / "c.h5",
        grid,
        {
            "IL2": ("species", lambda t, g: np.full(g.shape, 0.25)),
            "T": ("population", lambda t, g: np.where(left == 1, 1e-3 * t, 0.0)),
        },
        times=times,
        regions={"left": left},
        dtype="float64",
    )
    with open_output(path) as out:
        result = analysis.exposure(out, "IL2")
        assert set(result) == {"domain", "left"}
        for item in result.values():
            assert item.integral == pytest.approx(0.25 * 600.0, rel=1e-12)
            assert item.peak == pytest.approx(0.25) and item.max == pytest.approx(0.25)
            assert item.integral_units == "nM*s"
        assert result["left"].voxels == 60 and result["domain"].voxels == 120
        assert result["left"].volume == pytest.approx(60 * grid.voxel_volume)
        # linear in time inside the region, zero outside: trapezoids are exact
        ramp = analysis.exposure(out, "T", regions=["left"])["left"]
        assert ramp.integral == pytest.approx(1e-3 * 600.0**2 / 2, rel=1e-12)
        assert ramp.peak == pytest.approx(0.6) and ramp.peak_time == 600.0
        whole = analysis.exposure(out, "T", regions="domain")["domain"]
        assert whole.integral == pytest.approx(ramp.integral / 2, rel=1e-12)
        with pytest.raises(AnalysisError, match="regions: left"):
            analysis.exposure(out, "T", regions=["lesion"])


def test_fraction_above_threshold(tmp_path):
    grid = Grid((4, 10), spacing=10.0)
    ramp = lambda t, g: np.broadcast_to(np.arange(10.0) * 0.01 * (1 + t / 100), g.shape)  # noqa: E731
    half = np.zeros(grid.shape, dtype=np.uint8)
    half[:, 5:] = 1
    path = write_output(
        tmp_path / "r.h5",
        grid,
        {"IL2": ("species", ramp)},
        times=[0.0, 100.0],
        regions={"right": half},
        dtype="float64",
    )
    with open_output(path) as out:
        series = analysis.fraction_above(out, "IL2", 0.045)
        np.testing.assert_allclose(series.values, [0.5, 0.7])  # 0.05.. at t=0, 0.06 (x2) later
        assert (
            analysis.fraction_above(out, "IL2", "45 pM").values.tolist() == series.values.tolist()
        )
        np.testing.assert_allclose(
            analysis.fraction_above(out, "IL2", 0.045, region="right").values, [1.0, 1.0]
        )
        with pytest.raises(AnalysisError, match="threshold"):
            analysis.fraction_above(out, "IL2", "3 kg")


@pytest.mark.parametrize(
    "shape, spacing, center, radius, width",
    [
        ((20, 24), (3.0, 2.0), (31.0, 20.5), 25.0, 2.5),
        ((9, 10, 11), 2.0, (8.3, 10.0, 11.7), None, None),
    ],
    ids=["2d", "3d"],
)
def test_radial_profile_is_the_mean_over_shells_of_the_bin_width(
    tmp_path, shape, spacing, center, radius, width
):
    """Bin k of a radial profile holds the voxels whose centre lies at distance r with
    k w <= r < (k + 1) w (w the bin width, default the smallest voxel edge) and r <= radius
    (default the farthest corner): its counts, mean distance and mean value equal a
    brute-force average over the voxel centres, for a random field that no smooth profile
    could hide a misplaced voxel in."""
    grid = Grid(shape, spacing=spacing)
    values = np.random.default_rng(3).uniform(0.5, 2.0, grid.shape)
    path = write_output(
        tmp_path / "p.h5", grid, {"c": ("species", lambda t, g: values)}, dtype="float64"
    )
    with open_output(path) as out:
        profile = analysis.radial_profile(out, "c", center, radius, bin_width=width)
    r = distance(grid, center).ravel()
    if radius is None:
        corners = np.array([[0.0, u] for u in grid.upper])
        radius = np.sqrt(np.sum(np.max(np.abs(corners - np.array(center)[:, None]), axis=1) ** 2))
    w = min(grid.spacing) if width is None else width
    bins = np.floor(r / w).astype(int)
    inside = r <= radius
    kept = sorted(set(bins[inside]))
    counts = [np.sum(inside & (bins == k)) for k in kept]
    assert profile.counts.tolist() == counts and sum(counts) == inside.sum()
    for i, k in enumerate(kept):
        selected = inside & (bins == k)
        assert profile.distance[i] == pytest.approx(r[selected].mean(), rel=1e-12)
        assert profile.values[i] == pytest.approx(values.ravel()[selected].mean(), rel=1e-12)
        assert k * w <= profile.distance[i] < (k + 1) * w


def test_exposure_peak_of_a_pulse_is_its_largest_mean_and_when(tmp_path):
    """A pulse that rises and falls, c = A exp(-((t - t0) / s)^2) in a region: its exposure
    peaks at the frame t0 with the mean A, not at the run's end, and its integral is the
    trapezoid sum of the frame means (close to A s sqrt(pi) for frames fine enough)."""
    grid = Grid((6, 6), spacing=5.0)
    spot = np.zeros(grid.shape, dtype=np.uint8)
    spot[2:4, 1:5] = 1
    amplitude, t0, s = 3.0, 1200.0, 300.0
    times = np.linspace(0.0, 3600.0, 61)
    pulse = lambda t: amplitude * np.exp(-(((t - t0) / s) ** 2))  # noqa: E731
    path = write_output(
        tmp_path / "pulse.h5",
        grid,
        {"IL2": ("species", lambda t, g: np.where(spot == 1, pulse(t), 0.0))},
        times=times,
        regions={"spot": spot},
        dtype="float64",
    )
    with open_output(path) as out:
        result = analysis.exposure(out, "IL2", regions=["spot", "domain"])
    item = result["spot"]
    assert item.peak_time == t0 and item.peak == pytest.approx(amplitude, rel=1e-12)
    assert item.max == pytest.approx(amplitude, rel=1e-12)
    np.testing.assert_allclose(item.mean, pulse(times), rtol=1e-12, atol=1e-300)
    assert item.integral == pytest.approx(amplitude * s * np.sqrt(np.pi), rel=1e-6)
    share = spot.sum() / spot.size
    assert result["domain"].peak_time == t0
    assert result["domain"].peak == pytest.approx(amplitude * share, rel=1e-12)


def test_fraction_above_counts_only_values_strictly_above(tmp_path):
    """ "Where the field exceeds the threshold": a field that is exactly 0 outside a region is
    above 0 only inside it (the fraction reached by a cytokine), and a value equal to the
    threshold is not above it."""
    grid = Grid((5, 8), spacing=10.0)
    inside = np.zeros(grid.shape, dtype=bool)
    inside[1:4, 2:7] = True
    path = write_output(
        tmp_path / "z.h5",
        grid,
        {"IL2": ("species", lambda t, g: np.where(inside, 0.5, 0.0))},
        dtype="float64",
    )
    with open_output(path) as out:
        assert analysis.fraction_above(out, "IL2", 0.0).values.tolist() == [inside.mean()]
        assert analysis.fraction_above(out, "IL2", 0.5).values.tolist() == [0.0]


def test_frame_stats_and_summaries(tmp_path, monkeypatch):
    grid = Grid((12, 10, 8), spacing=(1.0, 2.0, 3.0))
    rng = np.random.default_rng(1)
    frames = {t: rng.random(grid.shape) - 0.2 for t in (0.0, 30.0)}
    path = write_output(
        tmp_path / "s.h5",
        grid,
        {"IL2": ("species", lambda t, g: frames[t]), "T": ("population", lambda t, g: frames[t])},
        times=[0.0, 30.0],
        dtype="float64",
    )
    monkeypatch.setattr(analysis, "BLOCK_VALUES", 50)  # many blocks
    with open_output(path) as out:
        for frame, t in enumerate((0.0, 30.0)):
            stats = analysis.frame_stats(out, "IL2", frame=frame)
            values = frames[t]
            assert stats.time == t
            assert stats.min == values.min() and stats.max == values.max()
            assert stats.mean == pytest.approx(values.mean(), rel=1e-12)
            total = values.sum() * grid.voxel_volume * MOLECULES_PER_UM3_PER_NM
            assert stats.total == pytest.approx(total, rel=1e-12)
            assert stats.total == pytest.approx(out.summary["IL2_total"][frame], rel=1e-12)
        cells = analysis.frame_stats(out, "T", time=30)
        assert cells.total_units == "cells" and cells.units == "cells/um^3"
        assert cells.total == pytest.approx(frames[30.0].sum() * grid.voxel_volume)
        series = analysis.summaries(out)
        assert set(series) == {"IL2_total", "IL2_max", "T_total", "T_max"}
        assert series["IL2_max"].field == "IL2" and series["IL2_max"].units == "nM"
        np.testing.assert_array_equal(series["T_max"].time, [0.0, 30.0])


# ----------------------------------------------------------------------------------------------
# interpolation, frames, slices


def linear(t, grid):
    return 1.0 + sum((k + 1) * 0.1 * x for k, x in enumerate(grid.centres())) + t


@pytest.mark.parametrize("shape", [(9, 11), (7, 9, 11)])
def test_line_profile_is_exact_for_linear_fields(tmp_path, monkeypatch, shape):
    grid = Grid(shape, spacing=2.0, origin=-5.0)
    path = write_output(tmp_path / "l.h5", grid, {"c": ("species", linear)}, dtype="float64")
    lower = np.asarray(grid.origin) + 1.0  # voxel centres: beyond them the field is held
    upper = np.asarray(grid.upper) - 1.0
    with open_output(path) as out:
        whole = analysis.line_profile(out, "c", lower, upper, samples=37)
        exact = 1.0 + whole.points @ (0.1 * np.arange(1, grid.ndim + 1))
        np.testing.assert_allclose(whole.values, exact, rtol=1e-12)
        assert whole.distance[-1] == pytest.approx(np.linalg.norm(upper - lower))
        monkeypatch.setattr(analysis, "BLOCK_VALUES", 4)  # tiny blocks give the same answer
        np.testing.assert_allclose(
            analysis.line_profile(out, "c", lower, upper, samples=37).values, whole.values
        )
        with pytest.raises(AnalysisError, match="outside the grid"):
            analysis.line_profile(out, "c", lower, upper + 50)


def test_frame_index_and_errors(tmp_path):
    grid = Grid((4, 4), spacing=1.0)
    times = [0.0, 600.0, 1200.0, 1800.0]
    path = write_output(tmp_path / "t.h5", grid, {"c": ("species", linear)}, times=times)
    with open_output(path) as out:
        assert analysis.frame_index(out) == 3
        assert analysis.frame_index(out, 1200) == 2
        assert analysis.frame_index(out, "20 min") == 2
        assert analysis.frame_index(out, "0.4 h") == 2  # 24 min: nearest is 20 min
        assert analysis.frame_index(out, "first") == 0
        assert analysis.frame_index(out, frame=-1) == 3
        with pytest.raises(AnalysisError, match=r"outside .* 0, 10, 20, 30 min \(4 frames\)"):
            analysis.frame_index(out, "2 h")
        with pytest.raises(AnalysisError, match="dimension"):
            analysis.frame_index(out, "3 kg")
        with pytest.raises(AnalysisError, match=r"out of range.*\(0\.\.3\)"):
            analysis.frame_index(out, frame=4)
        with pytest.raises(AnalysisError, match="fields: c$"):
            analysis.read_plane(out, "IL2")
        with pytest.raises(AnalysisError, match="slices apply to 3D"):
            analysis.read_plane(out, "c", slice="z=1")


def test_parse_slice():
    grid = Grid((10, 20, 30), spacing=(1.0, 2.0, 3.0), origin=(0.0, 0.0, -15.0))
    assert analysis.parse_slice(grid, "z=3").index == 3
    s = analysis.parse_slice(grid, "x = 0 um")
    assert (s.axis, s.name, s.index, s.position) == (2, "x", 5, 1.5)
    assert analysis.parse_slice(grid, "y=1e-3 cm").index == 5
    assert analysis.parse_slice(grid, ("y", 19)).index == 19
    assert analysis.default_slice(grid).index == 5
    for bad, message in [
        ("z=10", r"index out of range 0\.\.9"),
        ("w=1", "one of z, y, x"),
        ("x=100um", r"outside the grid, -15\.\.75 um"),
        ("z", "AXIS=INDEX"),
        ("z=abc", "voxel index or a length"),
    ]:
        with pytest.raises(AnalysisError, match=message):
            analysis.parse_slice(grid, bad)


# ----------------------------------------------------------------------------------------------
# reading only what is needed


class ReadCounter:
    """Counts the values read from /fields datasets through h5py."""

    def __init__(self, monkeypatch):
        self.values = 0
        self.largest = 0
        original = h5py.Dataset.__getitem__
        counter = self

        def getitem(dataset, key):
            result = original(dataset, key)
            if dataset.name.startswith("/fields/"):
                size = int(np.size(result))
                counter.values += size
                counter.largest = max(counter.largest, size)
            return result

        monkeypatch.setattr(h5py.Dataset, "__getitem__", getitem)


def test_3d_reads_only_the_plane_or_box_asked_for(tmp_path, monkeypatch):
    n = 128  # stored in 64^3 chunks
    grid = Grid((n, n, n), spacing=2.0)
    path = write_output(
        tmp_path / "big.h5",
        grid,
        {"c": ("species", yukawa((128.0, 128.0, 128.0)))},
        times=[0.0, 10.0],
        compression="none",
    )
    counter = ReadCounter(monkeypatch)
    with open_output(path) as out:
        assert out.field("c").chunks == (1, 64, 64, 64)
        plane = analysis.read_plane(out, "c", time=0, slice="y=40")
        assert plane.values.shape == (n, n) and plane.axes == ("z", "x")
        assert counter.values == n * n  # one plane of one frame
        counter.values = 0
        analysis.read_plane(out, "c")  # default: the middle z plane of the last frame
        assert counter.values == n * n
        counter.values = 0
        analysis.radial_profile(out, "c", (128.0, 128.0, 128.0), radius=20.0)
        assert counter.values <= 22**3  # the box the radius reaches
        counter.values = 0
        monkeypatch.setattr(analysis, "BLOCK_VALUES", 64**3)
        analysis.line_profile(out, "c", (10.0, 10.0, 1.0), (10.0, 10.0, 255.0))
        assert counter.values == 2 * 2 * n  # the voxels around the line
        counter.values = 0
        analysis.line_profile(out, "c", (1.0, 1.0, 1.0), (255.0, 127.0, 191.0))
        assert counter.values <= 4 * 64**3  # the blocks (chunks) the line crosses, of 8
        counter.values, counter.largest = 0, 0
        analysis.frame_stats(out, "c", frame=0)
        assert counter.values == n**3  # one frame, in blocks
        assert counter.largest <= 64**3
