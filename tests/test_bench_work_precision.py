"""benchmarks/bench_work_precision.py: every scheme's error against its wall time, the
cheapest setting per threshold, and the plot of what it measured."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent.parent / "benchmarks"))

import bench_work_precision  # noqa: E402


def test_the_cheapest_setting_within_each_threshold():
    rows = [
        dict(problem="p", scheme="a", setting="1", wall_s=1.0, error=5e-3, steps=10),
        dict(problem="p", scheme="b", setting="2", wall_s=3.0, error=5e-4, steps=30),
        dict(problem="p", scheme="c", setting="3", wall_s=0.5, error=2e-2, steps=5),
        dict(problem="q", scheme="a", setting="1", wall_s=1.0, error=0.5, steps=10),
    ]
    best = {
        (b["problem"], b["threshold"]): b["scheme"] for b in bench_work_precision.cheapest(rows)
    }
    assert best == {("p", 1e-2): "a", ("p", 1e-3): "b", ("q", 1e-2): None, ("q", 1e-3): None}


def test_the_plot_draws_each_schemes_errors_against_its_wall_times(tmp_path):
    rows = [
        dict(problem=p, scheme=s, setting=str(k), wall_s=w * (k + 1), error=e / (k + 1), steps=1)
        for p in ("p", "q")
        for s, w, e in (("euler", 1.0, 1e-2), ("imex", 2.0, 1e-3))
        for k in range(3)
    ]
    figure = bench_work_precision.plot(rows, "cpu", tmp_path / "wp.png")
    assert [a.get_title() for a in figure.axes] == ["p", "q"]
    for axes, problem in zip(figure.axes, ("p", "q")):
        assert axes.get_xscale() == axes.get_yscale() == "log"
        lines = {line.get_label(): line for line in axes.get_lines() if line.get_marker() == "o"}
        assert set(lines) == {"euler", "imex"}
        for scheme, line in lines.items():
            mine = [r for r in rows if r["problem"] == problem and r["scheme"] == scheme]
            assert list(line.get_xdata()) == [r["wall_s"] for r in mine]
            assert list(line.get_ydata()) == [r["error"] for r in mine]
    assert (tmp_path / "wp.png").stat().st_size > 0


@pytest.mark.slow
def test_quick_run_measures_every_scheme_and_plots_them(tmp_path):
    output = tmp_path / "wp.json"
    argv = ["--quick", "--configs", "autoimmune_3d", "--output", str(output)]
    bench_work_precision.main(argv)
    result = json.loads(output.read_text())
    schemes = {"euler", "ssprk2", "ssprk3", "imex", "quasi_steady"}
    for problem in ("gray_scott", "autoimmune_3d"):
        rows = [r for r in result["rows"] if r["problem"] == problem]
        assert {r["scheme"] for r in rows} == schemes
        assert all(r["wall_s"] > 0 and r["steps"] > 0 and r["error"] >= 0 for r in rows)
        explicit = {r["setting"]: r["error"] for r in rows if r["scheme"] == "ssprk2"}
        assert explicit["safety 0.45"] < explicit["safety 0.9"]  # a smaller step, a smaller error
    gray_scott = {r["scheme"]: r["error"] for r in result["rows"] if r["problem"] == "gray_scott"}
    assert gray_scott["ssprk3"] < gray_scott["ssprk2"] < gray_scott["euler"]
    assert len(result["cheapest"]) == 2 * 2
    assert output.with_suffix(".png").stat().st_size > 0
