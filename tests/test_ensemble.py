"""Sweeps: N members advanced as one batch equal N single runs, in chunks and over devices;
their HDF5 file (member axis, /members table) reads whole, per member or as a statistic;
`ilsim sweep` writes it, resumes it, and refuses bad input with one line."""

from __future__ import annotations

import json
import subprocess

import numpy as np
import pytest

import engine
from engine.cli.batch import parse_vary
from engine.cli.main import main
from engine.config.errors import ConfigError
from engine.config.loading import load_config
from engine.config.toml import dump_toml
from engine.numerics.memory import PLANNING_FRACTION
from engine.post import plots
from engine.runs.driver import run
from engine.runs.sweep import MAX_MEMBERS, Ensemble, member_rows

# the shared IL-2/T-cell config (tests/conftest.py) on a 20 x 16 grid, its core moved along
CHANGES = {
    "grid.shape": [20, 16],
    "time.end": "12 min",
    "time.output_every": "4 min",
    "regions.core.sphere": {"center": ["100 um", "80 um"], "radius": "30 um"},
    "species.IL2.diffusion": "30 um^2/s",
    "terms[0].rate": "5 molecule/s",
    "terms[0].activators[0].hill": 2,
    "terms[1].k_on": "1e7 1/M/s",
    "sources[0].rate": "0.02 nM/s",
}


@pytest.fixture(scope="module")
def config(cells_config):
    return cells_config(CHANGES)


VARY = {
    "species.IL2.diffusion": [10.0, "60 um^2/s"],  # the "auto" dt is set by other rates
    "terms[0].activators[0].K": [0.1, 2.0],
}


def single_frames(cfg, overrides, times):
    """A single run of the config with `overrides`, frames at `times`."""
    sim = engine.Simulation(load_config(cfg, overrides))
    state, frames = sim.initial_state(), []
    for t in times:
        state = sim.advance(state, t)
        frames.append(state.numpy())
    return {k: np.stack([f[k] for f in frames]) for k in frames[0]}


def relative_difference(a, b) -> float:
    return float(np.max(np.abs(a - b)) / np.max(np.abs(b)))


@pytest.mark.parametrize(
    "stepper, dtype",
    [  # explicit by default (imex: the sweep file below); every stepper and dtype with -m slow
        ("explicit", "float32"),
        pytest.param("imex", "float32", marks=pytest.mark.slow),
        pytest.param("explicit", "float64", marks=pytest.mark.slow),
        pytest.param("imex", "float64", marks=pytest.mark.slow),
        pytest.param("quasi_steady", "float32", marks=pytest.mark.slow),
        pytest.param("quasi_steady", "float64", marks=pytest.mark.slow),
    ],
)
def test_every_member_of_a_sweep_equals_its_single_run(stepper, dtype, float64, config):
    """Within 1e-6 in float32 (quasi_steady's CG and Picard loops carry the batch's other
    summation order further than a fixed number of steps does: 1.1e-6 with CG converged to
    1e-5 rather than 1e-6). The implicit steppers' steps come from a float32 estimate of
    their error, which a batch rounds otherwise than a single run: where it sits at its
    threshold a member may take another step than its single run, so in float32 they agree
    to the tolerance (1e-3) the steps are chosen for."""
    cfg = load_config(config, {"time.stepper": stepper, "time.dtype": dtype})
    result = engine.sweep(cfg, VARY)
    assert set(result.members) == set(VARY)
    assert result.fields["IL2"].shape == (4, len(result.time), 20, 16)
    for m in range(4):
        overrides = {k: float(v[m]) for k, v in result.members.items()}
        single = single_frames(cfg, overrides, result.time)
        for name, frames in single.items():
            bound = 1e-12 if dtype != "float32" else 1e-6 if stepper == "explicit" else 1e-3
            assert relative_difference(result.fields[name][m], frames) < bound, (m, name)
    # the members differ: the batch did not run one member four times
    assert relative_difference(result.fields["IL2"][0, -1], result.fields["IL2"][3, -1]) > 0.05


def test_member_values_convert_units_and_combine_or_zip(config):
    cfg = load_config(config)
    ensemble = Ensemble(cfg, {"species.IL2.diffusion": ["1 um^2/ms", 20], "terms[1].k_on": [1]})
    np.testing.assert_allclose(ensemble.members["species.IL2.diffusion"], [1000.0, 20.0])
    keys, rows = member_rows({"a": [1, 2], "b": [3, 4]}, product=True)
    assert rows == [(1, 3), (1, 4), (2, 3), (2, 4)]
    assert member_rows({"a": [1, 2], "b": [3, 4]}, product=False)[1] == [(1, 3), (2, 4)]
    with pytest.raises(ConfigError, match=r"need as many of each key; got a \(2\), b \(1\)"):
        member_rows({"a": [1, 2], "b": [3]}, product=False)


def test_chunked_sweeps_equal_one_batch(config):
    cfg = load_config(config, {"time.end": "4 min"})
    vary = {"terms[1].k_on": [0.001, 0.01, 0.1]}
    whole = engine.sweep(cfg, vary)
    chunked = engine.sweep(cfg, vary, chunk=2)  # a batch of 2, then one of 1
    with pytest.raises(ValueError, match="--devices 99"):
        Ensemble(cfg, vary, devices=99)
    for name in whole.fields:
        np.testing.assert_allclose(chunked.fields[name], whole.fields[name], rtol=1e-6, atol=0)


@pytest.mark.parametrize(
    "vary, message",
    [
        ({"time.end": [600, 1200]}, "changes nothing in the model"),
        ({"species.IL7.decay": [1, 2]}, "no such key"),
        ({"species.IL2.boundary": [1, 2]}, "not a number"),
        ({"species.IL2.decay": [-1.0]}, "species.IL2.decay"),
        ({}, "nothing to vary"),
    ],
)
def test_bad_sweeps_are_one_line_config_errors(vary, message, config):
    with pytest.raises(ConfigError, match=message) as error:
        Ensemble(load_config(config), vary)
    assert "\n" not in str(error.value)


def test_vary_syntax():
    assert parse_vary("terms[0].rate=1,2.5,4") == ("terms[0].rate", [1, 2.5, 4])
    assert parse_vary("species.IL2.diffusion=10 um^2/s,1e-3 cm^2/h")[1] == [
        "10 um^2/s",
        "1e-3 cm^2/h",
    ]
    np.testing.assert_allclose(parse_vary("k=log:1:100:3")[1], [1, 10, 100])
    np.testing.assert_allclose(parse_vary("k=lin:0:1:5")[1], [0, 0.25, 0.5, 0.75, 1])
    with pytest.raises(ConfigError, match="log spacing"):
        parse_vary("k=log:0:1:3")
    with pytest.raises(ConfigError, match="lin:1:2: write lin:A:B:N or log:A:B:N"):
        parse_vary("k=lin:1:2")
    for empty in ("1,,2", "1,2,", ",1"):  # an empty value was dropped
        with pytest.raises(ConfigError, match=f"^--vary k={empty}: an empty value in the list"):
            parse_vary(f"k={empty}")
    assert len(parse_vary(f"k=lin:1:2:{MAX_MEMBERS}")[1]) == MAX_MEMBERS
    with pytest.raises(ConfigError, match=f"N is more than the {MAX_MEMBERS} members"):
        parse_vary(f"k=log:1:2:{MAX_MEMBERS + 1}")  # 10^8 took minutes and 20 GB


def test_a_sweep_has_at_most_max_members_and_their_fields_fit_the_memory(monkeypatch, config):
    """Refused before any member is made: more members than MAX_MEMBERS (their combinations
    were listed first, without end), or more than the memory holds."""
    assert len(member_rows({"a": [1] * 1000, "b": [1] * 100})[1]) == MAX_MEMBERS
    with pytest.raises(ConfigError, match=r"^sweep: 101000 members \(1000 x 101\), more than"):
        member_rows({"a": [1] * 1000, "b": [1] * 101})
    with pytest.raises(ConfigError, match=r"^sweep: 100001 members, more than the 100000"):
        member_rows({"a": [1] * (MAX_MEMBERS + 1), "b": [2] * (MAX_MEMBERS + 1)}, product=False)
    cfg = load_config(config)
    member = len(cfg.field_names) * np.prod(cfg.grid.shape) * cfg.bytes_per_value
    available = 2.5 * member / PLANNING_FRACTION
    monkeypatch.setattr("engine.runs.sweep.available_memory", lambda: available)
    assert Ensemble(cfg, {"terms[1].k_on": [0.001, 0.01]}).size == 2
    with pytest.raises(ConfigError, match="^sweep: the fields of 3 members need about .* GB"):
        Ensemble(cfg, {"terms[1].k_on": [0.001, 0.01, 0.1]})


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--vary", "terms[1].k_on=1,2", "--vary", "terms[1].k_on=3,4"],
         "--vary: terms[1].k_on, terms[1].k_on names a key twice; name each once"),
        (["--vary", "terms[1].k_on=1,,2"], "--vary terms[1].k_on=1,,2: an empty value in the list"),
        (["--vary", "terms[1].k_on=1,2", "--param", "terms[1].k_on"],
         "--param: only with --sensitivity; add --sensitivity or drop --param"),
        (["--vary", "terms[1].k_on=1,2", "--summary", "IL2"], "--summary: only with --sensitivity"),
    ],
)  # fmt: skip
def test_ilsim_sweep_refuses_what_it_would_drop_before_running(
    tmp_path, capsys, config, argv, message
):
    """A key varied twice (only its last values ran), an empty value (dropped), and the
    options of --sensitivity without it (ignored): one line, exit 2, nothing written."""
    (tmp_path / "model.toml").write_text(dump_toml(load_config(config)))
    assert main(["sweep", str(tmp_path / "model.toml"), *argv, "-o", str(tmp_path / "s.h5")]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and message in err
    assert [p.name for p in tmp_path.iterdir()] == ["model.toml"]


@pytest.fixture(scope="module")
def sweep_file(tmp_path_factory, config):
    folder = tmp_path_factory.mktemp("sweep")
    cfg = load_config(config, {"time.stepper": "imex"})
    path = engine.sweep(cfg, VARY, output=folder / "sweep.h5", quiet=True)
    return cfg, path


def test_the_sweep_file_holds_a_member_axis_and_the_members_table(sweep_file):
    cfg, path = sweep_file
    with engine.open_output(path) as out:
        assert out.is_sweep and out.n_members == 4
        assert out.field("IL2").shape == (4, 4, 20, 16)
        assert out.summary["IL2_total"].shape == (4, 4)
        np.testing.assert_allclose(out.members["species.IL2.diffusion"], [10, 10, 60, 60])
        np.testing.assert_allclose(out.members["terms[0].activators[0].K"], [0.1, 2, 0.1, 2])
        with pytest.raises(ValueError, match="choose a member"):
            out.frame("IL2", 0)
        whole = np.asarray(out.field("IL2")[:, -1])
        single = single_frames(
            cfg, {"species.IL2.diffusion": 60.0, "terms[0].activators[0].K": 2.0}, out.time
        )
        assert relative_difference(whole[3], single["IL2"][-1]) < 1e-6
    with engine.open_output(path, member=3) as third:
        np.testing.assert_array_equal(third.frame("IL2", -1), whole[3])
        assert third.summary["IL2_total"].shape == (4,)
    with engine.open_output(path, member="mean") as mean:
        np.testing.assert_allclose(mean.frame("IL2", -1), whole.mean(axis=0), rtol=1e-6)
    with pytest.raises(ValueError, match="out of range"):
        engine.open_output(path, member=4)
    text = path.with_suffix(".xdmf").read_text()
    assert 'Name="IL2[3]"' in text and "3 3 0 0" in text


def test_a_sweep_summary_plot_draws_every_member_thin_and_their_mean_thick(
    sweep_file, tmp_path, monkeypatch
):
    """Each summary of a sweep: a thin line per member and a thick one for their mean."""
    figures = []
    monkeypatch.setattr(plots, "save", lambda figure, path: figures.append(figure))
    with engine.open_output(sweep_file[1]) as out:
        plots.summary_plot(out, tmp_path / "summaries.png", size=(400, 300))
        totals = out.summary["IL2_total"]
    (axes,) = [a for a in figures[0].axes if a.get_title() == "IL2"]
    lines = [line for line in axes.get_lines() if line.get_color() == "C0"]
    assert [line.get_linewidth() for line in lines] == [0.7] * 4 + [2]
    for line, values in zip(lines, [*totals, totals.mean(axis=0)]):
        np.testing.assert_allclose(line.get_ydata(), values, rtol=1e-12)
    assert lines[-1].get_label() == "IL2_total (mean)"


def test_the_sweep_file_opens_in_xarray_with_member_coordinates(sweep_file):
    xarray = pytest.importorskip("xarray")
    _, path = sweep_file
    with engine.open_output(path) as out:
        data = out.to_xarray()
        assert data["IL2"].dims == ("member", "time", "y", "x")
        np.testing.assert_allclose(data["species.IL2.diffusion"], [10, 10, 60, 60])
        np.testing.assert_array_equal(data["IL2"][2, -1].values, out.field("IL2")[2, -1])
    raw = xarray.open_dataset(path, engine="h5netcdf")
    assert raw["IL2"].dims[:2] == ("member", "time")
    raw.close()


def test_a_sweep_resumes_from_its_checkpoint_like_a_straight_run(tmp_path, config):
    cfg = load_config(config, {"time.end": "8 min"})
    longer = load_config(config, {"time.end": "16 min"})
    vary = {"terms[1].k_on": [0.005, 0.05]}
    run(Ensemble(cfg, vary), tmp_path / "resumed.h5", quiet=True)
    run(Ensemble(longer, vary), tmp_path / "resumed.h5", resume=True, quiet=True)
    run(Ensemble(longer, vary), tmp_path / "straight.h5", quiet=True)
    with engine.open_output(tmp_path / "resumed.h5") as a:
        with engine.open_output(tmp_path / "straight.h5") as b:
            np.testing.assert_allclose(a.time, b.time)
            np.testing.assert_allclose(a.field("IL2")[()], b.field("IL2")[()], rtol=1e-6, atol=0)
    with pytest.raises(ValueError, match="members differ"):
        run(Ensemble(longer, {"terms[1].k_on": [1.0, 2.0]}), tmp_path / "straight.h5", resume=True)
    with pytest.raises(ValueError, match="holds a sweep; resume it with ilsim sweep --resume"):
        run(engine.Simulation(longer), tmp_path / "straight.h5", resume=True)
    run(engine.Simulation(cfg), tmp_path / "single.h5", quiet=True)
    with pytest.raises(ValueError, match="holds a single run; resume it with ilsim run --resume"):
        run(Ensemble(longer, vary), tmp_path / "single.h5", resume=True, quiet=True)


def test_a_multi_process_run_refuses_a_sweep(tmp_path, monkeypatch, config):
    import engine.runs.driver

    monkeypatch.setattr(engine.runs.driver, "processes", lambda: object())  # as if several
    ensemble = Ensemble(load_config(config), {"terms[1].k_on": [0.005, 0.05]})
    with pytest.raises(engine.runs.driver.RunError, match="a sweep runs in one process"):
        run(ensemble, tmp_path / "sweep.h5", quiet=True)
    assert not list(tmp_path.iterdir())


def test_ilsim_sweep_and_member_options(tmp_path, capsys, config):
    table, config = config, tmp_path / "model.toml"
    config.write_text(dump_toml(load_config(table, {"time.end": "4 min"})))
    out = tmp_path / "s.h5"
    code = main(
        [
            "sweep",
            str(config),
            "--vary",
            "terms[1].k_on=0.001,0.01",
            "--vary",
            "species.IL2.decay=1e-3,1e-2",
            "--zip",
            "-o",
            str(out),
            "--quiet",
        ]
    )
    assert code == 0
    with engine.open_output(out) as sweep:
        assert sweep.n_members == 2
    capsys.readouterr()
    assert main(["info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "members: 2" in printed and "species.IL2.decay" in printed
    assert main(["plot", str(out), "--field", "IL2", "-o", str(tmp_path / "a.png")]) == 2
    assert "--member" in capsys.readouterr().err
    for member in ("1", "std"):
        figure = tmp_path / f"m{member}.png"
        assert (
            main(["plot", str(out), "--field", "IL2", "--member", member, "-o", str(figure)]) == 0
        )
        assert figure.stat().st_size > 0
    assert main(["plot", str(out), "-o", str(tmp_path / "summaries.png")]) == 0
    assert (
        main(["sweep", str(config), "--vary", "time.end=300,600", "-o", str(tmp_path / "x.h5")])
        == 2
    )
    assert "changes nothing" in capsys.readouterr().err
    assert not (tmp_path / "x.h5").exists()
    assert main(["sweep", str(config), "--vary", "terms[1].k_on=1", "-o", str(out)]) == 2
    assert "exists" in capsys.readouterr().err


@pytest.mark.slow
def test_members_split_over_devices_equal_one_device(child, config):
    """Three members over two CPU devices (padded to four) equal the one-device sweep."""
    vary = {"terms[1].k_on": [0.001, 0.01, 0.1]}
    short = {**config, "time": {**config["time"], "end": "4 min"}}
    arguments = [json.dumps(table) for table in (short, vary)]
    done = subprocess.run(
        child("split_sweep", *arguments), capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result["devices"] == 2
    assert result["diff"] < 1e-6


STRIP = {  # diffusion alone sets the explicit "auto" dt: h^2 / (2 D) differs 6x between members
    "grid": {"shape": [12], "spacing": "10 um"},
    "time": {"end": "60 s", "output_every": "20 s", "stepper": "explicit", "dtype": "float64"},
    "regions": {"left": {"box": {"lower": [0], "upper": [30]}}},
    "species": {"c": {"diffusion": "10 um^2/s", "decay": "1e-3 1/s"}},
    "sources": [{"type": "region", "species": "c", "region": "left", "rate": "0.05 nM/s"}],
}


def test_each_member_takes_its_own_auto_dt_and_the_step_count_is_the_longest_members(float64):
    """Members whose "auto" dt differs (the diffusion sets it) each take their single run's
    steps, not the batch's shortest: in float64 a member equals its single run to rounding
    (another step size would differ by its time error, far above 1e-12), over several
    output times. The sweep's State.step counts the steps of its member that took most."""
    cfg = load_config(STRIP)
    vary = {"species.c.diffusion": [10.0, 60.0, 30.0]}
    ensemble = Ensemble(cfg, vary, chunk=2)  # a batch of 2, then one of 1
    state = ensemble.initial_state()
    singles = []
    for d in vary["species.c.diffusion"]:
        sim = engine.Simulation(load_config(STRIP, {"species.c.diffusion": d}))
        singles.append((sim, sim.initial_state()))
    for t in (20.0, 40.0, 60.0):
        state = ensemble.advance(state, t)
        singles = [(sim, sim.advance(s, t)) for sim, s in singles]
        for m, (_, single) in enumerate(singles):
            member = np.asarray(state.fields["c"][m])
            np.testing.assert_allclose(member, single.numpy()["c"], rtol=1e-12, atol=1e-300)
        assert state.step == max(s.step for _, s in singles)
    steps = [s.step for _, s in singles]
    assert steps[1] > 3 * steps[0]  # the members' dt differ


def test_a_sweep_without_output_writes_config_sweep_h5_here(tmp_path, capsys, monkeypatch, config):
    """Without -o, `ilsim sweep model.toml` writes ./model_sweep.h5, not the run's model.h5:
    an existing one is refused, named; and --sensitivity, at the config's values, refuses
    --vary."""
    (tmp_path / "model.toml").write_text(dump_toml(load_config(config)))
    monkeypatch.chdir(tmp_path)
    (tmp_path / "model_sweep.h5").write_bytes(b"earlier")
    vary = ["--vary", "terms[1].k_on=0.001,0.01"]
    assert main(["sweep", "model.toml", *vary, "--quiet"]) == 2
    assert capsys.readouterr().err == (
        "ilsim: error: model_sweep.h5 exists; pass --overwrite to replace it or --resume to "
        "continue\n"
    )
    assert main(["sweep", "model.toml", "--sensitivity", *vary]) == 2
    assert capsys.readouterr().err == (
        "ilsim: error: --sensitivity differentiates at the config's values; drop --vary\n"
    )
