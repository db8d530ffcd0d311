"""`ilsim info / plot / profile / movie` on 2D and 3D outputs: figures of the requested pixel
size with varying content, one-line errors with exit status 2 that list what exists, and the
memory of plotting one frame of a 1 GB 3D output (slow; benchmarks/bench_plot_memory.py)."""

from __future__ import annotations

import importlib.util
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from test_analysis import ATTRS, LAMBDA, ReadCounter, write_output, yukawa

import engine
from engine.cli.main import main
from engine.numerics.grid import Grid
from engine.post import analysis, plots

REPO = Path(__file__).resolve().parents[1]


def blob(center, width):
    def make(t, grid):
        r2 = sum((x - c) ** 2 for x, c in zip(grid.centres(), center))
        return np.exp(-r2 / width**2) * (1 + t / 60.0) + 1e-4

    return make


@pytest.fixture(scope="module")
def outputs(tmp_path_factory):
    """A 2D output (two fields, a region, 4 frames) and a 3D one (3 frames)."""
    folder = tmp_path_factory.mktemp("outputs")
    grid2 = Grid((40, 50), spacing=5.0)
    region = np.zeros(grid2.shape, dtype=np.uint8)
    region[10:20, 10:20] = 1
    two = write_output(
        folder / "two.h5",
        grid2,
        {
            "IL2": ("species", blob((100.0, 125.0), 40.0)),
            "T": ("population", lambda t, g: 1e-4 * blob((50.0, 60.0), 30.0)(t, g)),
        },
        times=[0.0, 60.0, 120.0, 180.0],
        regions={"lesion": region},
    )
    grid3 = Grid((24, 28, 32), spacing=4.0)
    three = write_output(
        folder / "three.h5",
        grid3,
        {"IL6": ("species", yukawa((48.0, 56.0, 64.0)))},
        times=[0.0, 600.0, 1200.0],
    )
    return {"2d": two, "3d": three}


def ilsim(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit status, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as stop:  # argparse errors
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def image(path: Path, size=(800, 600)) -> np.ndarray:
    """The image's RGB pixels, after checking its pixel size and that it is not blank."""
    assert path.exists() and path.stat().st_size > 0
    with Image.open(path) as im:
        assert im.size == size
        pixels = np.asarray(im.convert("RGB"))
    colours = np.unique(pixels.reshape(-1, 3), axis=0)
    assert len(colours) > 50, f"{path.name}: {len(colours)} colours, a blank canvas?"
    assert pixels.std() > 10
    return pixels


# ----------------------------------------------------------------------------------------------
# plot


def test_plot_2d_field_panel_and_summaries(outputs, tmp_path, capsys):
    figure = tmp_path / "il2.png"
    code, out, err = ilsim(capsys, "plot", outputs["2d"], "--field", "IL2", "-o", figure)
    assert (code, err) == (0, "")
    assert out.strip() == f"wrote {figure}"
    last = image(figure)
    early = tmp_path / "early.png"
    code, _, err = ilsim(
        capsys, "plot", outputs["2d"], "--field", "IL2", "--time", "1 min", "-o", early
    )
    assert (code, err) == (0, "")
    assert not np.array_equal(image(early), last)  # another frame, another title
    panel = tmp_path / "panel.png"
    code, _, _ = ilsim(
        capsys,
        "plot", outputs["2d"], "--field", "IL2", "--field", "T", "--log", "--time", "130",
        "--size", "900x400", "-o", panel,
    )  # fmt: skip
    assert code == 0
    image(panel, (900, 400))
    summary = tmp_path / "summary.png"
    code, _, _ = ilsim(capsys, "plot", outputs["2d"], "-o", summary, "--size", "640x480")
    assert code == 0
    image(summary, (640, 480))


def test_plot_3d_slices(outputs, tmp_path, capsys):
    middle = tmp_path / "middle.png"
    assert ilsim(capsys, "plot", outputs["3d"], "--field", "IL6", "-o", middle)[0] == 0
    first = image(middle)
    for spec in ("z=3", "y=40um", "x=31"):
        figure = tmp_path / f"{spec[0]}.png"
        code, _, err = ilsim(
            capsys, "plot", outputs["3d"], "--field", "IL6", "--slice", spec, "--log", "-o", figure
        )
        assert (code, err) == (0, "")
        assert not np.array_equal(image(figure), first)


def test_plot_reads_one_plane_of_a_3d_frame(tmp_path, capsys, monkeypatch):
    grid = Grid((64, 64, 64), spacing=2.0)
    path = write_output(
        tmp_path / "big.h5",
        grid,
        {"IL6": ("species", yukawa((64.0, 64.0, 64.0)))},
        times=[0.0, 60.0],
        compression="none",
    )
    counter = ReadCounter(monkeypatch)
    figure = tmp_path / "plane.png"
    assert ilsim(capsys, "plot", path, "--field", "IL6", "-o", figure)[0] == 0
    assert counter.values == 64 * 64  # the middle z plane of the last frame, nothing more
    image(figure)


@pytest.fixture
def saved(monkeypatch):
    """The figures the command saves, as drawn."""
    figures = []
    original = plots.save

    def save(figure, path, dpi=None):
        figures.append(figure)
        return original(figure, path, dpi)

    monkeypatch.setattr(plots, "save", save)
    return figures


def test_a_map_shows_the_frame_asked_for_on_the_scale_asked_for(outputs, tmp_path, capsys, saved):
    """The nearest frame to --time (a note says which), its values as an image with y up (the
    file's row 0 at the bottom) over the grid's extent in um, x across and y up, on
    --vmin/--vmax with the default colour map, titled with its time and frame (from 1)."""
    code, _, err = ilsim(
        capsys, "plot", outputs["2d"], "--field", "IL2", "--time", "50", "--vmin", "0.5",
        "--vmax", "1.5", "--size", "400x300", "-o", tmp_path / "map.png",
    )  # fmt: skip
    assert (code, err) == (
        0,
        "ilsim: note: no frame at 50 s; using the nearest, 60 s (frame 2/4)\n",
    )
    axes = saved[0].axes[0]
    (image,) = axes.images
    with engine.open_output(outputs["2d"]) as out:
        np.testing.assert_array_equal(image.get_array(), out.frame("IL2", 1))
    assert image.origin == "lower" and list(image.get_extent()) == [0, 250, 0, 200]
    assert (image.norm.vmin, image.norm.vmax, image.cmap.name) == (0.5, 1.5, "viridis")
    assert (axes.get_xlabel(), axes.get_ylabel()) == ("x (um)", "y (um)")
    assert axes.get_title() == "IL2 at t = 60 s (frame 2/4)"


def test_each_map_of_a_panel_has_its_own_colour_scale(outputs, tmp_path, capsys, saved):
    """--log without --vmin: each field's map spans its own positive values (here less than
    LOG_DECADES decades), not the first field's."""
    code, _, _ = ilsim(
        capsys, "plot", outputs["2d"], "--field", "IL2", "--field", "T", "--log",
        "--size", "400x300", "-o", tmp_path / "panel.png",
    )  # fmt: skip
    assert code == 0
    with engine.open_output(outputs["2d"]) as out:
        for axes, name in zip(saved[0].axes, ("IL2", "T")):
            values = out.frame(name, -1)
            (image,) = axes.images
            assert axes.get_title() == name
            assert (image.norm.vmin, image.norm.vmax) == (values.min(), values.max())
    assert saved[0].get_suptitle() == "t = 3 min (frame 4/4)"


def test_a_movie_of_a_slice_is_on_the_scale_of_that_plane(outputs, tmp_path, capsys, monkeypatch):
    """One colour scale for every frame of the plane shown (--slice), not of another plane."""
    norms = []
    draw = plots._draw_plane

    def drawn(axes, plane, norm, cmap):
        norms.append(norm)
        return draw(axes, plane, norm, cmap)

    monkeypatch.setattr(plots, "_draw_plane", drawn)
    code, _, _ = ilsim(
        capsys, "movie", outputs["3d"], "--field", "IL6", "--slice", "x=31", "--size", "200x150",
        "-o", tmp_path / "x.gif",
    )  # fmt: skip
    assert code == 0
    with engine.open_output(outputs["3d"]) as out:
        plane = out.field("IL6")[:, :, :, 31]
    assert (norms[0].vmin, norms[0].vmax) == pytest.approx((plane.min(), plane.max()))


def test_the_summaries_are_drawn_against_time_in_the_unit_of_the_axis(
    outputs, tmp_path, capsys, saved
):
    """A panel per field: its total on the left axis and its maximum on a right axis of its
    own, in its units, against time in the unit the axis names (frames over 3 min: min)."""
    code, _, _ = ilsim(capsys, "plot", outputs["2d"], "--size", "400x300", "-o", tmp_path / "s.png")
    assert code == 0
    drawn = {line.get_label(): (axes, line) for axes in saved[0].axes for line in axes.get_lines()}
    with engine.open_output(outputs["2d"]) as out:
        for name, units in (("IL2", "nM"), ("T", "cells/um^3")):
            (left, total), (right, peak) = drawn[f"{name}_total"], drawn[f"{name}_max"]
            assert (left.get_title(), left.get_xlabel()) == (name, "time (min)")
            assert right is not left and right.get_ylabel() == f"max ({units})"
            for line in (total, peak):
                np.testing.assert_allclose(line.get_xdata(), out.time / 60)
            np.testing.assert_array_equal(peak.get_ydata(), out.summary[f"{name}_max"])


def test_a_1d_map_is_the_frame_as_a_line_inside_the_axes(tmp_path, capsys, saved):
    """A 1D output's field: a line of the frame's values over x in um, within the value axis's
    limits (a margin either side), not on its edges."""
    path = write_output(
        tmp_path / "rod.h5", Grid((40,), spacing=5.0), {"IL2": ("species", blob((100.0,), 40.0))}
    )
    code, _, _ = ilsim(
        capsys, "plot", path, "--field", "IL2", "--size", "400x300", "-o", tmp_path / "rod.png"
    )
    assert code == 0
    axes = saved[0].axes[0]
    (line,) = axes.get_lines()
    with engine.open_output(path) as out:
        values = out.frame("IL2", 0)
    np.testing.assert_array_equal(line.get_ydata(), values)
    np.testing.assert_allclose(line.get_xdata(), 2.5 + 5.0 * np.arange(40))
    low, high = axes.get_ylim()
    assert low < values.min() and values.max() < high


# ----------------------------------------------------------------------------------------------
# profile


def test_profiles_2d_and_3d(outputs, tmp_path, capsys, saved):
    line = tmp_path / "line.png"
    table = tmp_path / "line.csv"
    code, out, err = ilsim(
        capsys,
        "profile", outputs["2d"], "--field", "IL2", "--from", "0,100", "--to", "250,100",
        "--time", "0", "--time", "3 min", "--csv", table, "-o", line,
    )  # fmt: skip
    assert (code, err) == (0, "")
    assert "screening length" not in out  # no fit for line profiles by default
    image(line)
    rows = table.read_text().splitlines()
    assert rows[0] == "time_s,distance_um,value,units" and len(rows) > 100
    assert {tuple(row.split(",")[::3]) for row in rows[1:]} == {("0", "nM"), ("180", "nM")}
    radial = tmp_path / "radial.png"
    code, out, err = ilsim(
        capsys,
        "profile", outputs["3d"], "--field", "IL6", "--center", "64,56,48", "--radius", "40",
        "--log", "-o", radial,
    )  # fmt: skip
    assert (code, err) == (0, "")
    reported = float(out.split("screening length ")[1].split()[0])
    assert reported == pytest.approx(LAMBDA, rel=0.05)  # a coarse 4 um grid, r < 40 um
    image(radial)
    (fit,) = [line for line in saved[-1].axes[0].get_lines() if line.get_label().startswith("fit")]
    assert fit.get_linestyle() == "--"  # the fit dashed over the profile
    plane = tmp_path / "plane.png"
    code, out, _ = ilsim(
        capsys,
        "profile", outputs["3d"], "--field", "IL6", "--center", "64,56", "--slice", "z=48um",
        "--fit", "sphere", "--r-max", "40", "-o", plane,
    )  # fmt: skip
    assert code == 0 and "sphere fit" in out
    image(plane)
    # in an x plane the two coordinates are Y,Z
    code, out, _ = ilsim(
        capsys,
        "profile", outputs["3d"], "--field", "IL6", "--center", "56,48", "--slice", "x=64um",
        "--r-max", "40", "-o", tmp_path / "x.png",
    )  # fmt: skip
    assert code == 0
    assert float(out.split("screening length ")[1].split()[0]) == pytest.approx(LAMBDA, rel=0.05)


# ----------------------------------------------------------------------------------------------
# movie


@pytest.mark.parametrize("which, field", [("2d", "IL2"), ("3d", "IL6")])
def test_movie_gif(outputs, tmp_path, capsys, which, field):
    movie = tmp_path / "movie.gif"
    code, out, err = ilsim(
        capsys, "movie", outputs[which], "--field", field, "--size", "320x240", "-o", movie
    )
    assert (code, err) == (0, "")
    assert out.strip() == f"wrote {movie} ({3 if which == '3d' else 4} frames)"
    with Image.open(movie) as gif:
        assert gif.size == (320, 240)
        # 125 ms per frame at the default 8 frames per second, in GIF's hundredths of a second
        assert gif.info["duration"] == pytest.approx(125, abs=10)
        frames = []
        for k in range(gif.n_frames):
            gif.seek(k)
            frames.append(np.asarray(gif.convert("RGB")))
    assert len(frames) == (3 if which == "3d" else 4)
    for pixels in frames:
        assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20
    assert not np.array_equal(frames[0], frames[-1])


def test_movie_mp4_holds_every_frame(outputs, tmp_path, capsys):
    """An MP4 through ffmpeg (imageio-ffmpeg's, a test dependency, where none is on PATH):
    decoded back, it has every frame, at the asked size rounded down to even, and the frames
    change."""
    import imageio_ffmpeg

    movie = tmp_path / "movie.mp4"
    code, out, err = ilsim(
        capsys, "movie", outputs["2d"], "--field", "IL2", "--size", "321x240", "-o", movie
    )
    assert (code, err) == (0, "")
    assert out.strip() == f"wrote {movie} (4 frames)"
    assert [p.name for p in tmp_path.iterdir()] == ["movie.mp4"]
    reader = imageio_ffmpeg.read_frames(str(movie))
    meta = next(reader)
    assert tuple(meta["size"]) == (320, 240) and meta["fps"] == pytest.approx(8)
    frames = [np.frombuffer(frame, np.uint8).reshape(240, 320, 3) for frame in reader]
    assert len(frames) == 4
    assert all(len(np.unique(pixels.reshape(-1, 3), axis=0)) > 20 for pixels in frames)
    assert not np.array_equal(frames[0], frames[-1])


def test_ffmpeg_is_found_on_path_first_then_in_imageio_ffmpeg(tmp_path, monkeypatch):
    fake = tmp_path / "ffmpeg"
    fake.write_text("#!/bin/sh\n")
    fake.chmod(0o755)
    monkeypatch.setitem(plots.matplotlib.rcParams, "animation.ffmpeg_path", str(fake))
    assert plots.ffmpeg_path() == str(fake)
    monkeypatch.setitem(plots.matplotlib.rcParams, "animation.ffmpeg_path", "no-such-ffmpeg")
    import imageio_ffmpeg

    assert plots.ffmpeg_path() == imageio_ffmpeg.get_ffmpeg_exe()
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)  # not installed
    assert plots.ffmpeg_path() is None


def test_movie_mp4_without_ffmpeg_is_refused(outputs, tmp_path, capsys, monkeypatch):
    monkeypatch.setitem(plots.matplotlib.rcParams, "animation.ffmpeg_path", "no-such-ffmpeg")
    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", None)
    movie = tmp_path / "movie.mp4"
    code, out, err = ilsim(capsys, "movie", outputs["2d"], "--field", "IL2", "-o", movie)
    assert (code, out) == (2, "")
    assert err.count("\n") == 1 and "needs ffmpeg" in err and "movie.gif" in err
    assert "imageio-ffmpeg" in err
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("live, tries", [(True, 2), (True, 6), (True, 7), (False, 1)])
def test_a_read_that_fails_while_a_run_writes_the_file_is_tried_again(
    outputs, capsys, monkeypatch, live, tries
):
    """Without SWMR a reader can meet what a live run has not flushed yet ("addr overflow":
    2 of 30 `ilsim info` of a live file failed): the file commands try again after a pause,
    printing once, at most LIVE_TRIES times; a file no run writes fails at once."""
    from engine.cli import files
    from engine.io import layout

    calls, pauses = [], []
    print_fields = files._print_fields

    def flaky(out):
        calls.append(1)
        if len(calls) < tries or not live:
            raise OSError("Can't synchronously read data (addr overflow, addr = 8928371)")
        print_fields(out)

    monkeypatch.setattr(files, "_print_fields", flaky)
    monkeypatch.setattr(layout, "being_written", lambda path: live)
    monkeypatch.setattr(layout.time, "sleep", pauses.append)
    code, out, err = ilsim(capsys, "info", outputs["2d"])
    if live and tries <= layout.LIVE_TRIES:
        assert (code, err, len(calls)) == (0, "", tries)
        assert out.count("file: ") == 1 and "fields:" in out  # printed once, whole
        assert pauses == [0.1 * k for k in range(1, tries)]
    else:
        assert (code, out) == (2, "") and "addr overflow" in err and err.count("\n") == 1
        assert len(calls) == (layout.LIVE_TRIES if live else 1)


def test_being_written_sees_another_process_hold_the_file(outputs, tmp_path):
    """The HDF5 file lock of a writer in another process (the fallback of open_read)."""
    from engine.io.layout import being_written

    path = tmp_path / "live.h5"
    shutil.copy(outputs["2d"], path)
    holder = subprocess.Popen(
        [
            sys.executable,
            "-c",
            f"import h5py, sys; f = h5py.File({str(path)!r}, 'a'); "
            "print('open', flush=True); sys.stdin.read()",
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "open\n"
        assert being_written(path)
        with engine.open_output(path) as out:  # open_read falls back to no locking
            assert out.n_frames == 4
    finally:
        holder.communicate("")
    assert not being_written(path)


# ----------------------------------------------------------------------------------------------
# info


def test_info(outputs, capsys):
    code, out, err = ilsim(capsys, "info", outputs["2d"])
    assert (code, err) == (0, "")
    assert "grid: 2D, 50 x 40 voxels (x, y) of 5 x 5 um, extent 0..250 x 0..200 um" in out
    assert "time: 0 s .. 3 min, 4 frames, every 60 s" in out
    assert "run: stepper imex, backend cpu, device cpu, dtype float32" in out
    assert "regions: lesion (100 voxels" in out
    lines = out.splitlines()
    first = next(line for line in lines if line.strip().startswith("IL2"))
    assert first.split()[:5] == ["IL2", "species", "nM", "first", "0"]
    assert any(line.split()[:3] == ["last", "3", "min"] for line in lines)
    assert out.rstrip().endswith('end = "1 h"')  # the config, last
    assert ATTRS["config"].splitlines()[0] in out
    code, out, _ = ilsim(capsys, "info", outputs["3d"])
    assert code == 0 and "grid: 3D, 32 x 28 x 24 voxels (x, y, z)" in out


# ----------------------------------------------------------------------------------------------
# errors: one line, exit 2, what exists


@pytest.mark.parametrize(
    "args, message",
    [
        (["plot", "{2d}", "--field", "IL7", "-o", "{tmp}/a.png"], "fields: IL2, T"),
        (["plot", "{2d}", "--field", "IL2", "--time", "2 h", "-o", "{tmp}/a.png"],
         "0, 1, 2, 3 min (4 frames)"),
        (["plot", "{2d}", "--field", "IL2", "--time", "5 kg", "-o", "{tmp}/a.png"], "dimension"),
        (["plot", "{3d}", "--field", "IL6", "--slice", "z=99", "-o", "{tmp}/a.png"],
         "index out of range 0..23"),
        (["plot", "{2d}", "--field", "IL2", "--slice", "z=1", "-o", "{tmp}/a.png"],
         "slices apply to 3D"),
        (["plot", "{2d}", "--field", "IL2", "-o", "{tmp}/a.xyz"], "unknown figure format"),
        (["plot", "{2d}", "--field", "IL2", "-o", "{tmp}/no/a.png"], "does not exist"),
        (["plot", "{tmp}/missing.h5", "--field", "IL2", "-o", "{tmp}/a.png"], "no such file"),
        (["plot", "{2d}", "--field", "IL2", "--size", "10x10", "-o", "{tmp}/a.png"], "--size"),
        (["plot", "{2d}", "--field", "IL2", "--size", "20001x600", "-o", "{tmp}/a.png"],
         "each side must be 50..20000 pixels"),
        (["plot", "{2d}", "--field", "IL2", "--vmin", "1", "--vmax", "1", "-o", "{tmp}/a.png"],
         "--vmin 1 is not below --vmax 1"),
        (["plot", "{2d}", "--field", "IL2"], "-o/--figure"),
        (["plot", "{2d}", "--field", "IL2", "--vmin", "5", "--vmax", "1", "-o", "{tmp}/a.png"],
         "--vmin 5 is not below --vmax 1"),
        (["movie", "{2d}", "--field", "IL2", "--vmax", "nan", "-o", "{tmp}/a.gif"],
         "--vmax nan: give a finite number"),
        (["profile", "{2d}", "--field", "IL9", "--center", "1,1", "-o", "{tmp}/a.png"],
         "fields: IL2, T"),
        (["profile", "{2d}", "--field", "IL2", "--center", "1,2,3", "-o", "{tmp}/a.png"],
         "give X,Y"),
        (["profile", "{2d}", "--field", "IL2", "--center", "900,1", "-o", "{tmp}/a.png"],
         "outside the grid, 0..200 x 0..250 um"),
        (["profile", "{2d}", "--field", "IL2", "--from", "1,1", "-o", "{tmp}/a.png"], "--to"),
        (["profile", "{2d}", "--field", "IL2", "-o", "{tmp}/a.png"], "--center"),
        (["profile", "{2d}", "--field", "IL2", "--from", "1,1", "--to", "9,9", "--samples",
          "1000001", "-o", "{tmp}/a.png"], "argument --samples: '1000001': give 2..1000000 points"),
        (["profile", "{2d}", "--field", "IL2", "--center", "1,1", "--samples", "9", "-o",
          "{tmp}/a.png"], "--samples is for a line (--from/--to) profile; drop it"),
        (["profile", "{2d}", "--field", "IL2", "--from", "1,1", "--to", "9,9", "--bin", "2",
          "-o", "{tmp}/a.png"], "--bin is for a radial (--center) profile; drop it"),
        (["profile", "{2d}", "--field", "IL2", "--center", "1,1", "--csv", "{tmp}/no/p.csv",
          "-o", "{tmp}/a.png"], "{tmp}/no/p.csv: folder {tmp}/no does not exist; create it"),
        (["profile", "{2d}", "--field", "IL2", "--center", "1,1", "--csv", "{tmp}/a.png",
          "-o", "{tmp}/./a.png"],
         "--csv {tmp}/a.png: the same file as -o {tmp}/./a.png; give each output its own path"),
        (["movie", "{2d}", "--field", "X", "-o", "{tmp}/a.gif"], "fields: IL2, T"),
        (["movie", "{2d}", "--field", "IL2", "-o", "{tmp}/a.avi"], ".gif or .mp4"),
        (["info", "{tmp}/missing.h5"], "no such file"),
    ],
)  # fmt: skip
def test_bad_input_exits_2_with_one_line(outputs, tmp_path, capsys, args, message):
    args = [a.format(tmp=tmp_path, **{k: str(v) for k, v in outputs.items()}) for a in args]
    code, out, err = ilsim(capsys, *args)
    assert code == 2
    assert err.count("\n") == 1 and err.startswith("ilsim: error: ")
    assert message.format(tmp=tmp_path) in err
    assert "Traceback" not in err
    assert not any(tmp_path.iterdir())  # nothing written


@pytest.mark.parametrize(
    "command, suffix, extra",
    [
        ("plot", ".png", ["--field", "IL2"]),
        ("plot", ".png", []),
        ("profile", ".png", ["--field", "IL2", "--center", "100,100"]),
        ("profile", ".csv", ["--field", "IL2", "--center", "100,100"]),
        ("movie", ".gif", ["--field", "IL2"]),
    ],
)
def test_an_existing_figure_is_replaced_only_with_overwrite(
    outputs, tmp_path, capsys, command, suffix, extra
):
    """DESIGN 4: an existing output is never overwritten without --overwrite (refused before
    any drawing, the file untouched); with it the new figure replaces the old whole, and no
    partial file is left beside it."""
    figure = tmp_path / ("fig.gif" if command == "movie" else "fig.png")
    existing = figure if suffix != ".csv" else tmp_path / "values.csv"
    existing.write_bytes(b"earlier")
    args = [command, str(outputs["2d"]), *extra, "-o", str(figure)]
    args += ["--csv", str(existing)] if suffix == ".csv" else []
    code, out, err = ilsim(capsys, *args)
    assert (code, out) == (2, "")
    assert err == f"ilsim: error: {existing} exists; pass --overwrite to replace it\n"
    assert existing.read_bytes() == b"earlier"
    assert ilsim(capsys, *args, "--overwrite")[0] == 0
    assert existing.read_bytes() != b"earlier"
    if suffix != ".csv":
        assert Image.open(figure).size == (800, 600)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted({figure.name, existing.name})


@pytest.mark.parametrize(
    "command, args",
    [
        ("plot", ["--field", "IL2", "-o", "{folder}"]),
        ("plot", ["-o", "{folder}"]),
        ("profile", ["--field", "IL2", "--center", "100,100", "-o", "{folder}"]),
        ("profile", ["--field", "IL2", "--center", "100,100", "-o", "{tmp}/a.png", "--csv",
                     "{folder}"]),
        ("movie", ["--field", "IL2", "-o", "{folder}"]),
    ],
)  # fmt: skip
def test_a_folder_is_refused_as_an_output_even_with_overwrite(
    outputs, tmp_path, capsys, command, args
):
    """A folder named as the figure, movie or CSV is refused before any drawing, as ilsim run
    -o FOLDER is, and nothing is written."""
    folder = tmp_path / ("taken.gif" if command == "movie" else "taken.png")
    folder.mkdir()
    args = [a.format(tmp=tmp_path, folder=folder) for a in args]
    code, out, err = ilsim(capsys, command, outputs["2d"], *args, "--overwrite")
    assert (code, out) == (2, "")
    assert err == f"ilsim: error: {folder} is a folder; give a file path\n"
    assert [p.name for p in tmp_path.iterdir()] == [folder.name] and not any(folder.iterdir())


def test_a_stopped_movie_leaves_the_earlier_file_whole(outputs, tmp_path, monkeypatch):
    """A movie stopped while it is written (Ctrl-C after half the file) leaves no partial
    file, and the movie it was to replace as it was."""
    movie = tmp_path / "movie.gif"
    movie.write_bytes(b"earlier")

    def stopped(image, path, *args, **kwargs):
        Path(path).write_bytes(b"half a movie")
        raise KeyboardInterrupt

    monkeypatch.setattr(Image.Image, "save", stopped)
    with engine.open_output(outputs["2d"]) as out, pytest.raises(KeyboardInterrupt):
        plots.movie(out, "IL2", movie)
    assert movie.read_bytes() == b"earlier"
    assert [p.name for p in tmp_path.iterdir()] == ["movie.gif"]


def test_not_an_output_file(tmp_path, capsys):
    bogus = tmp_path / "bogus.h5"
    bogus.write_text("not hdf5")
    code, _, err = ilsim(capsys, "info", bogus)
    assert code == 2 and "not a readable HDF5 file" in err and err.count("\n") == 1


# ----------------------------------------------------------------------------------------------
# memory on a 1 GB 3D output (slow: writes 1 GB)


@pytest.mark.slow
def test_plotting_a_frame_of_a_1gb_output_stays_under_300mb(tmp_path):
    spec = importlib.util.spec_from_file_location(
        "bench_plot_memory", REPO / "benchmarks" / "bench_plot_memory.py"
    )
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    path = tmp_path / "big.h5"
    bench.write_file(path, 512, 2, "none")
    assert path.stat().st_size > 1e9
    report = bench.measure(bench.commands(path, tmp_path, 512)["plot"])
    assert report["rc"] == 0, report["stderr"]
    image(tmp_path / "map.png")
    assert report["peak"] - report["start"] < 300e6
    assert report["peak"] - report["imported"] < 150e6


def test_analysis_module_does_not_import_jax_or_matplotlib():
    source = (REPO / "engine" / "post" / "analysis.py").read_text()
    for module in ("jax", "matplotlib"):
        assert f"import {module}" not in source and f"from {module}" not in source
    assert analysis.BLOCK_VALUES * 4 < 32e6
