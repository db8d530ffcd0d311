"""Cells in `ilsim info`, `ilsim plot` and `ilsim movie`: the info table, the cells drawn over
field maps (what is drawn: positions in the slice, state values, colour bars as tall as the
map), the alive counts among the summaries, and one-line errors (exit status 2) for unknown
types and states. Files come from tests/test_io_cells.py's synthetic writer."""

from __future__ import annotations

import re

import numpy as np
import pytest
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.collections import PathCollection
from matplotlib.figure import Figure
from test_io_cells import COUNTS, GRIDS, TIMES, alive_of, history, write_cells_file

from engine.cli.main import main
from engine.io.layout import FieldInfo
from engine.io.writer import OutputWriter
from engine.post import plots


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("cells")
    plain = folder / "plain.h5"
    with OutputWriter(plain, GRIDS[2], [FieldInfo("IL2", "species")], "float32", {}, {}) as w:
        w.write_frame(0.0, {"IL2": np.ones(GRIDS[2].shape)})
    return {
        **{ndim: write_cells_file(folder / f"c{ndim}.h5", GRIDS[ndim]) for ndim in (1, 2, 3)},
        "plain": plain,
    }


def ilsim(capsys, *args) -> tuple[int, str, str]:
    """Run the CLI in this process: (exit status, stdout, stderr)."""
    try:
        code = main([str(a) for a in args])
    except SystemExit as stop:  # argparse errors
        code = stop.code
    captured = capsys.readouterr()
    return code, captured.out, captured.err


@pytest.fixture
def saved(monkeypatch):
    """The figures `ilsim plot` saves, drawn as saved."""
    figures = []
    original = Figure.savefig

    def savefig(self, *args, **kwargs):
        figures.append(self)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(Figure, "savefig", savefig)
    return figures


def scatters(axes) -> list[PathCollection]:
    return [c for c in axes.collections if isinstance(c, PathCollection)]


def same_height(map_axes, bar) -> None:
    """The colour bar stands beside the map and is exactly as tall as the map as drawn."""
    mine, theirs = map_axes.get_position(), bar.ax.get_position()
    assert theirs.height == pytest.approx(mine.height, rel=1e-9)
    assert theirs.y0 == pytest.approx(mine.y0, rel=1e-9)
    assert theirs.x0 > mine.x1


# ----------------------------------------------------------------------------------------------
# info


def test_info_lists_the_cell_types(files, capsys):
    code, out, err = ilsim(capsys, "info", files[2])
    assert (code, err) == (0, "")
    lines = out.splitlines()
    start = lines.index("cells:")
    assert lines[start + 1].split() == [
        "type", "capacity", "state", "alive", "first", "alive", "last", "min", "max"
    ]  # fmt: skip
    th, treg = (lines[start + 2].split(), lines[start + 3].split())
    assert th == ["Th", "8", "R,", "pSTAT5", "4", "3", "3", "6"]
    assert treg == ["Treg", "5", "-", "2", "0", "0", "3"]
    code, out, _ = ilsim(capsys, "info", files["plain"])
    assert code == 0 and "cells:" not in out


# ----------------------------------------------------------------------------------------------
# plot


def test_plot_draws_the_cells_of_a_2d_output(files, tmp_path, capsys, saved):
    figure_path = tmp_path / "map.png"
    code, out, err = ilsim(
        capsys,
        "plot", files[2], "--field", "IL2", "--time", "10", "--cells", "Th:R", "--cells", "Treg",
        "-o", figure_path,
    )  # fmt: skip
    assert (code, err) == (0, "") and out.strip() == f"wrote {figure_path}"
    (figure,) = saved
    axes = figure.axes[0]
    th, treg = scatters(axes)
    written = history(GRIDS[2])[1]
    shown = alive_of(written["Th"])
    # (x, y) = (position[:, 1], position[:, 0]): the file stores (y, x)
    np.testing.assert_allclose(th.get_offsets(), shown["position"][:, ::-1], rtol=1e-6)
    np.testing.assert_allclose(th.get_array(), shown["R"], rtol=1e-6)
    assert th.colorbar.ax.get_ylabel() == "R (Th)"
    assert (th.norm.vmin, th.norm.vmax) == pytest.approx((shown["R"].min(), shown["R"].max()))
    same_height(axes, th.colorbar)
    field_bar = axes.images[0].colorbar
    assert field_bar.ax.get_ylabel() == "IL2 (nM)"
    same_height(axes, field_bar)
    assert th.colorbar.ax.get_position().x0 > field_bar.ax.get_tightbbox().x1 / figure.bbox.width
    assert treg.get_array() is None and treg.colorbar is None  # one colour, no bar
    np.testing.assert_allclose(
        treg.get_offsets(), alive_of(written["Treg"])["position"][:, ::-1], rtol=1e-6
    )
    assert [t.get_text() for t in axes.get_legend().get_texts()] == ["Th", "Treg"]
    for bar in (field_bar, th.colorbar):  # within the figure
        assert bar.ax.get_tightbbox().x1 <= figure.bbox.width


@pytest.mark.parametrize(
    ("spec", "axis", "across"),
    [("z=0", 0, (2, 1)), ("y=13um", 1, (2, 0)), ("x=3", 2, (1, 0))],
)
def test_plot_of_a_3d_slice_draws_the_cells_in_its_voxel_layer(
    files, tmp_path, capsys, saved, spec, axis, across
):
    grid = GRIDS[3]
    code, _, err = ilsim(
        capsys, "plot", files[3], "--field", "IL2", "--slice", spec, "--time", "20",
        "--cells", "Th:pSTAT5", "-o", tmp_path / "slice.png",
    )  # fmt: skip
    assert (code, err) == (0, "")
    axes = saved[0].axes[0]
    (th,) = scatters(axes)
    shown = alive_of(history(grid)[2]["Th"])
    position = shown["position"]
    layer = np.floor((position[:, axis] - grid.origin[axis]) / grid.spacing[axis])
    inside = layer == {"z=0": 0, "y=13um": 1, "x=3": 3}[spec]
    assert 0 < inside.sum() < len(position)  # some cells in the layer, some not
    np.testing.assert_allclose(th.get_offsets(), position[inside][:, across], rtol=1e-6)
    np.testing.assert_allclose(th.get_array(), shown["pSTAT5"][inside], rtol=1e-6)
    assert th.colorbar.ax.get_ylabel() == "pSTAT5 (Th)"
    same_height(axes, th.colorbar)


def test_plot_of_a_1d_output_draws_the_cells_along_the_bottom(files, tmp_path, capsys, saved):
    code, _, err = ilsim(
        capsys, "plot", files[1], "--field", "IL2", "--cells", "Th:R", "-o", tmp_path / "1d.png"
    )
    assert (code, err) == (0, "")
    axes = saved[0].axes[0]
    (th,) = scatters(axes)
    shown = alive_of(history(GRIDS[1])[-1]["Th"])
    np.testing.assert_allclose(th.get_offsets()[:, 0], shown["position"][:, 0], rtol=1e-6)
    np.testing.assert_allclose(th.get_offsets()[:, 1], plots.RUG_HEIGHT)
    assert th.colorbar.ax.get_ylabel() == "R (Th)"
    same_height(axes, th.colorbar)


def test_summary_plot_shows_alive_cells_without_offsets(files, tmp_path, capsys, saved):
    code, _, err = ilsim(capsys, "plot", files[2], "-o", tmp_path / "summary.png")
    assert (code, err) == (0, "")
    figure = saved[0]
    panels = {a.get_title(): a for a in figure.axes if a.get_title()}
    assert set(panels) == {"IL2", "alive cells"}
    lines = panels["alive cells"].get_lines()
    assert [line.get_label() for line in lines] == ["Th", "Treg"]
    for line, name in zip(lines, ("Th", "Treg")):
        np.testing.assert_array_equal(line.get_ydata(), COUNTS[name])
    assert panels["alive cells"].get_ylabel() == "alive (cells)"
    for axes in figure.axes:  # the IL2 total is nearly constant: no "+1e3"-style offset
        for axis in (axes.xaxis, axes.yaxis):
            assert axis.get_major_formatter().get_useOffset() is False
            assert axis.get_offset_text().get_text() == ""


# ----------------------------------------------------------------------------------------------
# movie


def test_movie_moves_the_cells_on_one_colour_scale(files, tmp_path, capsys, monkeypatch):
    drawn = []
    original = FigureCanvasAgg.draw

    def draw(self, *args, **kwargs):
        result = original(self, *args, **kwargs)
        axes = self.figure.axes[0]
        drawn.append([(c.get_offsets().copy(), c.get_array(), c.norm) for c in scatters(axes)])
        return result

    monkeypatch.setattr(FigureCanvasAgg, "draw", draw)
    movie = tmp_path / "cells.gif"
    code, out, err = ilsim(
        capsys, "movie", files[2], "--field", "IL2", "--cells", "Th:R", "--cells", "Treg",
        "--size", "400x300", "-o", movie,
    )  # fmt: skip
    assert (code, err) == (0, "") and "4 frames" in out
    assert movie.stat().st_size > 0
    frames = history(GRIDS[2])
    every_r = np.concatenate([alive_of(f["Th"])["R"] for f in frames])
    assert len(drawn) == len(TIMES)
    for k, ((th, r, norm), (treg, _, _)) in enumerate(drawn):
        shown = alive_of(frames[k]["Th"])
        np.testing.assert_allclose(th, shown["position"][:, ::-1], rtol=1e-6)
        np.testing.assert_allclose(r, shown["R"], rtol=1e-6)
        assert (norm.vmin, norm.vmax) == pytest.approx((every_r.min(), every_r.max()))
        assert len(treg) == COUNTS["Treg"][k]  # none alive in the last frame


# ----------------------------------------------------------------------------------------------
# bad requests


MAP = ["plot", "{2}", "--field", "IL2", "--cells"]


@pytest.mark.parametrize(
    ("args", "message"),
    [
        ([*MAP, "B"], "no cell type 'B' in .*c2.h5; cell types: Th, Treg"),
        ([*MAP, "Th:X"], "Th has no state variable 'X'; state variables: R, pSTAT5"),
        ([*MAP, "Treg:R"], "state variables: none"),
        ([*MAP, "Th:"], "no state variable ''"),
        (["plot", "{plain}", "--field", "IL2", "--cells", "Th"], "cell types: none"),
        (["plot", "{2}", "--cells", "Th"], "--cells need --field"),
        (["movie", *MAP[1:], "B", "-o", "{tmp}/m.gif"], "cell types: Th, Treg"),
    ],
)
def test_bad_cells_requests_are_one_line_with_status_2(files, tmp_path, capsys, args, message):
    names = {"{2}": files[2], "{plain}": files["plain"], "{tmp}": tmp_path}
    argv = [str(names.get(a, a)).replace("{tmp}", str(tmp_path)) for a in args]
    if args[0] == "plot":
        argv += ["-o", str(tmp_path / "bad.png")]
    code, out, err = ilsim(capsys, *argv)
    assert code == 2 and out == ""
    assert err.count("\n") == 1 and err.startswith("ilsim: ")
    assert re.search(message, err), err
    assert not any(tmp_path.iterdir())
