"""`ilsim run` / `ilsim validate`: output files, exit codes, interruption, kill and resume."""

import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest

import engine
from engine.cli.main import main
from engine.config.loading import load_config
from engine.config.toml import dump_toml

CONFIG = """
[grid]
shape = [{n}, {n}]
spacing = "10 um"

[time]
end = "{end}"
stepper = "{stepper}"
dt = {dt}
output_every = "{every}"
dtype = "float32"

[regions.lesion]
sphere = {{ center = ["{c} um", "{c} um"], radius = "60 um" }}

[species.IL2]
diffusion = "100 um^2/s"
decay = "1e-3 1/s"
{il2_initial}
[populations.T]
initial = {{ region = "lesion", value = 1e-3 }}
motility = "1 um^2/s"

[[terms]]
type = "secretion"
species = "IL2"
by = "T"
rate = "10 molecule/s"

[[terms]]
type = "uptake"
species = "IL2"
by = "T"
k_on = "3.1e7 1/M/s"
receptors = 1e3

[output]
{checkpoint}
"""


def write_config(
    folder: Path,
    n=24,
    end="20 min",
    stepper="imex",
    dt='"auto"',
    every="2 min",
    checkpoint="4 min",
    il2_initial=None,
) -> Path:
    """The test case in `folder`; `il2_initial`: IL-2 in the lesion at the start (nM; none by
    default: the T cells secrete it); `checkpoint`: output.checkpoint_every (None: unset)."""
    path = folder / "case.toml"
    initial = (
        "" if il2_initial is None else f"initial = {{ region = 'lesion', value = {il2_initial} }}"
    )
    path.write_text(
        CONFIG.format(
            n=n,
            end=end,
            stepper=stepper,
            dt=dt,
            every=every,
            c=5 * n,
            checkpoint="" if checkpoint is None else f'checkpoint_every = "{checkpoint}"',
            il2_initial=initial,
        )
    )
    return path


def ilsim_argv(*args) -> list[str]:
    """The command line of `ilsim ARGS` in a fresh Python."""
    return [sys.executable, "-m", "engine.cli", *map(str, args)]


def child_env() -> dict:
    """This process's environment for an `ilsim` child, HDF5 file locking off."""
    return dict(os.environ, HDF5_USE_FILE_LOCKING="FALSE")


def ilsim(*args, **kwargs):
    return subprocess.run(
        ilsim_argv(*args),
        env=child_env(),
        capture_output=True,
        text=True,
        **kwargs,
    )


def test_run_writes_every_frame_and_matches_the_python_api(tmp_path, capsys):
    config = write_config(tmp_path)
    out = tmp_path / "out.h5"
    assert main(["run", str(config), "-o", str(out), "--quiet"]) == 0
    assert capsys.readouterr().out == ""  # --quiet
    with engine.open_output(out) as result:
        np.testing.assert_allclose(result.time, 120.0 * np.arange(11))
        assert set(result.fields) == {"IL2", "T"}
        final = result.frame("IL2", -1)
    sim = engine.Simulation(engine.load_config(config))
    state = sim.initial_state()
    for t in 120.0 * np.arange(1, 11):  # the same chunks as the run (dt auto per chunk)
        state = sim.advance(state, t)
    assert final.shape == (24, 24)
    assert state.numpy()["IL2"] == pytest.approx(final, rel=1e-6)
    assert not (tmp_path / "out.h5.partial").exists()


@pytest.mark.parametrize("fields", [["T"], ["IL2", "T"]])
def test_a_run_writes_the_output_fields_with_their_kinds_units_and_totals(tmp_path, fields):
    """output.fields lists what the file holds (no other field); a population is stored as
    one, in cells/um^3 with its total in cells, a species in nM with its total in molecules
    (DESIGN section 3), each total the frame's sum times the voxel volume."""
    config = write_config(tmp_path, n=8, end="4 min")
    out = tmp_path / "out.h5"
    listed = "[" + ", ".join(f'"{name}"' for name in fields) + "]"
    assert (
        main(["run", str(config), "-o", str(out), "--quiet", "--set", f"output.fields={listed}"])
        == 0
    )
    kinds = {"IL2": ("species", "nM", "molecules"), "T": ("population", "cells/um^3", "cells")}
    with engine.open_output(out) as result:
        assert result.fields == tuple(fields)
        volume = result.grid.voxel_volume
        for name in fields:
            kind, units, total_units = kinds[name]
            assert (result.kinds[name], result.units[name]) == (kind, units)
            assert result.summary_units[f"{name}_total"] == total_units
            per_nm = 0.602214076 if kind == "species" else 1.0  # molecules/um^3 per nM
            totals = [
                result.frame(name, i).sum(dtype=np.float64) * volume * per_nm for i in range(3)
            ]
            np.testing.assert_allclose(result.summary[f"{name}_total"], totals, rtol=1e-6)
        assert result.summary["T_total"][0] > 0  # the T cells of the lesion


def test_run_with_the_fused_kernels_writes_the_xla_run(tmp_path):
    """--kernels pallas (here in Pallas' interpreter): the same frames as the default run."""
    config = write_config(tmp_path, n=12, end="4 min", stepper="explicit", checkpoint="2 min")
    runs = {}
    for kernels in ("xla", "pallas"):
        out = tmp_path / f"{kernels}.h5"
        assert main(["run", str(config), "-o", str(out), "--quiet", "--kernels", kernels]) == 0
        with engine.open_output(out) as result:
            runs[kernels] = result.frame("IL2", -1), result.frame("T", -1)
    for fused, xla in zip(runs["pallas"], runs["xla"]):
        np.testing.assert_allclose(fused, xla, rtol=1e-5, atol=1e-7 * np.abs(xla).max())


def test_the_output_defaults_to_the_config_name_with_h5_in_the_current_folder(
    tmp_path, capsys, monkeypatch
):
    """Without -o, `ilsim run case.toml` writes ./case.h5: an existing one is refused, named."""
    config = write_config(tmp_path)
    monkeypatch.chdir(tmp_path)
    (tmp_path / "case.h5").write_bytes(b"precious")
    assert main(["run", config.name, "--quiet"]) == 2
    assert (
        capsys.readouterr().err
        == "ilsim: error: case.h5 exists; pass --overwrite to replace it or --resume to continue\n"
    )


def test_existing_output_is_never_clobbered(tmp_path, capsys):
    config = write_config(tmp_path)
    out = tmp_path / "out.h5"
    out.write_bytes(b"precious")
    assert main(["run", str(config), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--overwrite" in err
    assert out.read_bytes() == b"precious"
    assert main(["run", str(config), "-o", str(out), "--quiet", "--overwrite"]) == 0
    assert h5py.is_hdf5(out)


def test_an_existing_sidecar_is_not_clobbered_either(tmp_path, capsys):
    config, out = write_config(tmp_path), tmp_path / "out.h5"
    sidecar = out.with_suffix(".xdmf")
    sidecar.write_text("mine")
    assert main(["run", str(config), "-o", str(out), "--quiet"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "out.xdmf exists" in err and "--overwrite" in err
    assert sidecar.read_text() == "mine" and not out.exists()
    assert main(["run", str(config), "-o", str(out), "--quiet", "--overwrite"]) == 0
    assert "Xdmf" in sidecar.read_text()


@pytest.mark.parametrize(
    "override, refusal",
    [
        ("species.IL2.diffusion=50 um^2/s", "species.IL2.diffusion: 50.0 now, 100.0 in the run"),
        ("time.output_every=3 min", "time.output_every: 180.0 now, 120.0 in the run"),
        ("time.end=4 min", "time.end: 240 s is before"),
    ],
)
def test_resume_refuses_a_config_that_differs_from_the_run(tmp_path, capsys, override, refusal):
    """The frames in the file were made by its config: a resume under another one would
    describe them wrongly (only a later time.end, or another checkpoint_every, may differ)."""
    config, out = write_config(tmp_path, end="6 min", every="2 min"), tmp_path / "out.h5"
    assert main(["run", str(config), "-o", str(out), "--quiet"]) == 0
    before = out.read_bytes()
    args = ["run", str(config), "-o", str(out), "--resume", "--quiet", "--set", override]
    assert main(args) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and refusal in err, err
    assert out.read_bytes() == before
    later = ["--set", "time.end=8 min", "--set", "output.checkpoint_every=1 min"]
    assert main(["run", str(config), "-o", str(out), "--resume", "--quiet", *later]) == 0
    with engine.open_output(out) as done:
        np.testing.assert_allclose(done.time, 120.0 * np.arange(5))


def test_resume_refuses_a_region_whose_mask_file_changed(tmp_path, capsys):
    """The config's text is the same, but a mask file it names is not: the frames were made
    with the mask the file stores (resume overwrote it with the new one)."""
    config, out, mask = write_config(tmp_path, end="4 min"), tmp_path / "out.h5", tmp_path / "v.npy"
    config.write_text(config.read_text() + f'\n[regions.vessels]\nfile = "{mask}"\n')
    used = np.zeros((24, 24), bool)
    used[2:5, 3:7] = True
    np.save(mask, used)
    assert main(["run", str(config), "-o", str(out), "--quiet"]) == 0
    before = out.read_bytes()
    np.save(mask, np.roll(used, 1, axis=0))
    later = ["--set", "time.end=6 min"]
    assert main(["run", str(config), "-o", str(out), "--resume", "--quiet", *later]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "regions.vessels: its mask differs" in err, err
    assert out.read_bytes() == before
    np.save(mask, used)
    assert main(["run", str(config), "-o", str(out), "--resume", "--quiet", *later]) == 0
    with engine.open_output(out) as done:
        np.testing.assert_allclose(done.time, 120.0 * np.arange(4))
        np.testing.assert_array_equal(done.regions["vessels"], used)


@pytest.fixture(scope="module")
def finished_run(tmp_path_factory) -> tuple[Path, Path]:
    """(config, output) of a 4-minute run, to copy."""
    folder = tmp_path_factory.mktemp("finished")
    config, out = write_config(folder, end="4 min"), folder / "out.h5"
    assert main(["run", str(config), "-o", str(out), "--quiet"]) == 0
    return config, out


def _drop_checkpoint_field(f):
    del f["checkpoint/IL2"]


def _shrink_checkpoint_field(f):
    del f["checkpoint/IL2"]
    f["checkpoint/IL2"] = np.zeros((4, 4), np.float32)


def _drop_time(f):
    del f["time"]


def _set_config(value):
    def damage(f):
        f.attrs["config"] = value

    return damage


@pytest.mark.parametrize(
    "damage, message",
    [
        (_drop_checkpoint_field, "the checkpoint holds no field 'IL2'; not this run's"),
        (_shrink_checkpoint_field, "'IL2' has shape (4, 4), not the grid's (24, 24)"),
        (_drop_time, "an ilsim file without /time"),
        (_set_config(7), "holds no config text"),
        (_set_config("[grid\nshape = 1"), "its config is not valid TOML"),
    ],
)
def test_resume_refuses_a_damaged_file_in_one_line_naming_it(
    finished_run, tmp_path, capsys, damage, message
):
    """Each was an internal error (KeyError, AttributeError: status 1) or a raw JAX or TOML
    message naming no file."""
    config, out = finished_run[0], tmp_path / "out.h5"
    shutil.copy(finished_run[1], out)
    with h5py.File(out, "r+") as f:
        damage(f)
    capsys.readouterr()
    later = ["--set", "time.end=6 min"]
    assert main(["run", str(config), "-o", str(out), "--resume", "--quiet", *later]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and str(out) in err and message in err, err


SECRETION_ONLY = [{"type": "secretion", "species": "IL2", "by": "T", "rate": 10}]


@pytest.mark.parametrize(
    "key, value, named",
    [
        ("time.dt", "1 s", "time.dt"),
        ("time.stepper", "explicit", "time.stepper"),
        ("time.dtype", "float64", "time.dtype"),
        ("time.seed", 7, "time.seed"),
        ("grid.spacing", "5 um", "grid.spacing"),
        ("terms[1].receptors", 2e3, "terms[1].receptors"),
        ("terms", SECRETION_ONLY, "terms[1]"),  # a term removed
        ("populations.T.initial.value", 2e-3, "populations.T.initial"),
        ("output.fields", ["IL2"], "output.fields"),
    ],
)
def test_resume_refuses_any_change_but_the_end_and_the_checkpoint_interval(
    tmp_path, key, value, named
):
    """Every key of the config that made a file's frames is fixed on resume (a run that
    changed its step, stepper, dtype, grid or any model number, or dropped a term, would
    append frames of another run), naming the key; only time.end and
    output.checkpoint_every may change."""
    from engine.runs.driver import RunError, refuse_changed_config

    config = write_config(tmp_path, dt='"0.5 s"')
    out = tmp_path / "out.h5"
    with h5py.File(out, "w") as f:
        f.attrs["config"] = dump_toml(load_config(config))
    later = {"time.end": "40 min", "output.checkpoint_every": "1 min"}
    refuse_changed_config(out, load_config(config, overrides=later))
    with pytest.raises(RunError, match=rf"^{re.escape(named)}[.:]"):
        refuse_changed_config(out, load_config(config, overrides={**later, key: value}))


def test_a_step_too_short_to_count_is_refused_and_leaves_no_file(tmp_path, capsys):
    """An explicit step set by a rate of 1e12 1/s would take 1e15 steps (more than a loop's
    int32 counts): one line naming time.dt and the stepper to use; no file, partial or
    sidecar."""
    config, out = write_config(tmp_path), tmp_path / "out.h5"
    stiff = ["--set", "time.stepper=explicit", "--set", "species.IL2.decay=1e12 1/s"]
    assert main(["run", str(config), "-o", str(out), "--quiet", *stiff]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "imex" in err
    assert err.startswith("ilsim: error: time.dt: ")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["case.toml"]


def test_frames_that_outgrow_the_disk_are_announced(tmp_path, capsys, monkeypatch):
    """A run whose frames, uncompressed, take more than the disk has free says so in one
    note before it starts (compression may still fit them)."""
    from engine.runs import driver

    usage = shutil.disk_usage(tmp_path)
    monkeypatch.setattr(driver.shutil, "disk_usage", lambda path: usage._replace(free=1000))
    config = write_config(tmp_path, end="4 min")
    assert main(["run", str(config), "-o", str(tmp_path / "out.h5"), "--quiet"]) == 0
    err = capsys.readouterr().err.strip()
    assert err.startswith("ilsim: note: the 3 frames take 1.38e-05 GB uncompressed")
    assert len(err.splitlines()) == 1


UNSTABLE = ["--set", "time.stepper=explicit", "--set", "time.dt=1 s"]  # limit: 0.25 s

BAD_INPUT = pytest.mark.parametrize(
    "args, fragment",
    [
        (["run", "{missing}"], "missing.toml"),
        (["run", "{config}", "--set", "time.end=-1"], "time.end"),
        (["run", "{config}", "--set", "species.IL2.diffusion=5 s"], "species.IL2.diffusion"),
        (["run", "{config}", "--set", "nonsense"], "nonsense"),
        (["run", "{config}", "--resume"], "nothing to resume"),
        (["run", "{config}", "--bogus"], "--bogus"),
        (["validate", "{config}", "--set", "terms[0].species=IL7"], "terms[0].species"),
        (["run", "{broken}"], "broken.toml"),
        (["run", "{config}", "-o", "/nonexistent-folder/out.h5"], "cannot write"),
        (["run", "{config}", "-o", "{folder}", "--overwrite"], "is a folder"),
        # the sidecar's own path: the run wrote the file, then its sidecar over it (exit 0)
        (["run", "{config}", "-o", "{xdmf}"], "x.xdmf: .xdmf is the suffix of the run's"),
        (["sweep", "{config}", "--vary", "terms[0].rate=1,2", "-o", "{xdmf}"], ".xdmf is the"),
        (["run", "{config}", "-o", "{y}", "--overwrite"], "y.xdmf (the run's sidecar) is a"),
        (["validate", "{folder}"], "is a folder; give the config's .toml file"),
        (["run", "{config}", "--resume", "-o", "{config}"], "not a readable HDF5 file"),
        (["run", "{config}", "--kernels", "pallas"], "explicit steps only"),
        (["run", "{config}", "--devices", "0"], "--devices 0: must be >= 1"),
        (["run", "{config}", *UNSTABLE], "time.dt"),
        (["validate", "{config}", *UNSTABLE], "stability limit, 0.2468 s"),  # sinks count
        # stable for the member with D = 10 um^2/s (limit 2.5 s), not for D = 100 (0.25 s)
        (
            [
                "sweep",
                "{config}",
                *UNSTABLE,
                "--vary",
                "species.IL2.diffusion=10,100",
                "-o",
                "{out}",
            ],
            "time.dt",
        ),
    ],
)


def bad_input(tmp_path, args) -> tuple[Path, list[str]]:
    """The config (and a broken one) the BAD_INPUT cases name, and their arguments."""
    config = write_config(tmp_path)
    broken = tmp_path / "broken.toml"
    broken.write_text("[grid\nshape = [4, 4]\n")
    names = dict(
        config=config,
        missing=tmp_path / "missing.toml",
        broken=broken,
        out=tmp_path / "x.h5",
        folder=tmp_path,
        xdmf=tmp_path / "x.xdmf",
        y=tmp_path / "y.h5",
    )
    (tmp_path / "y.xdmf").mkdir()
    args = [a.format(**names) for a in args]
    if args[0] == "run" and "-o" not in args:
        args += ["-o", str(tmp_path / "x.h5")]
    return config, args


def exit_status(argv) -> int:
    """`ilsim ARGV` in this process: what main returns, or the status argparse exits with."""
    try:
        return main(argv)
    except SystemExit as exit:
        return exit.code


@BAD_INPUT
def test_bad_input_returns_2_with_one_line(tmp_path, capsys, args, fragment):
    """In this process; the same cases as a process of their own (exit status) with -m slow."""
    config, args = bad_input(tmp_path, args)
    before = config.read_text()
    status = exit_status(args)
    err = capsys.readouterr().err
    assert config.read_text() == before
    assert status == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in err
    assert not (tmp_path / "x.h5").exists() and not (tmp_path / "x.xdmf").exists()
    assert not (tmp_path / "y.h5").exists()


@pytest.mark.slow
@BAD_INPUT
def test_bad_input_exits_2_with_one_line(tmp_path, args, fragment):
    config, args = bad_input(tmp_path, args)
    before = config.read_text()
    result = ilsim(*args)
    assert config.read_text() == before
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and fragment in lines[0] and "Traceback" not in result.stderr
    assert not (tmp_path / "x.h5").exists()


def test_validate_reports_without_running(tmp_path, capsys):
    """dt = "auto" as its share of the explicit limit (time.safety, 0.9 by default) and the
    state estimate (`Config.memory_bytes`) in MB (1e6 bytes)."""
    config = write_config(tmp_path, n=64, stepper="explicit")
    assert main(["validate", str(config)]) == 0
    printed = capsys.readouterr().out
    assert "explicit stability limit" in printed and "steps to 1200 s" in printed
    assert "memory estimate" in printed and "[grid]" in printed
    assert not list(tmp_path.glob("*.h5"))
    assert re.search(r"^explicit stability limit: [\d.]+ s \(dt is 0\.90 of it\)$", printed, re.M)
    megabytes = load_config(config).memory_bytes() / 1e6
    assert megabytes > 0.1 and f"memory estimate: {megabytes:.1f} MB\n" in printed


def test_validate_counts_the_steps_to_the_end(tmp_path):
    """`Simulation.validate` of a config: ceil(end / dt) steps (20 min in steps of 0.07 s:
    17142.9, so 17143), and one step when the stable step outlasts the run."""
    cfg = engine.load_config(write_config(tmp_path, stepper="explicit", dt=0.07))
    assert engine.Simulation(cfg).validate()["steps"] == 17143
    cfg = engine.load_config(write_config(tmp_path, stepper="explicit", end="0.1 s"))
    report = engine.Simulation(cfg).validate()
    assert report["dt"] > 0.1 and report["steps"] == 1


@pytest.mark.slow  # compiles the accuracy estimate
def test_validate_tries_the_step_over_the_first_frame_interval(tmp_path):
    """The step the accuracy target allows is tried over the first frame interval (10 s),
    which the run's first step cannot outlast, not over the whole run."""
    cfg = engine.load_config(write_config(tmp_path, n=8, every="10 s", il2_initial=1.0))
    assert engine.Simulation(cfg).validate()["dt"] == 10.0


def test_a_config_simulation_refuses_what_its_config_cannot_run(tmp_path, monkeypatch):
    """A run that does not fit the memory, and a fixed explicit time.dt beyond the stability
    limit (0.2468 s here), are the config's errors, naming the key, as the CLI reports them."""
    config = write_config(tmp_path, stepper="explicit", dt=5.0)
    sim = engine.Simulation(engine.load_config(config))
    with pytest.raises(engine.ConfigError, match=r"^time\.dt: 5 s exceeds .* 0\.2468 s"):
        sim.check_time_step(sim.initial_state())
    monkeypatch.setattr("engine.runs.simulation.available_memory", lambda: 100)
    with pytest.raises(engine.ConfigError, match=r"^grid\.shape: the run needs about"):
        engine.Simulation(engine.load_config(config))


@pytest.mark.slow
def test_ilsim_validate_reports_without_running(tmp_path):
    config = write_config(tmp_path, stepper="explicit")
    result = ilsim("validate", config)
    assert result.returncode == 0, result.stderr
    assert "explicit stability limit" in result.stdout and "steps to 1200 s" in result.stdout
    assert "memory estimate" in result.stdout and "[grid]" in result.stdout


def test_a_diverging_run_stops_naming_the_field(tmp_path, capsys):
    """A run that blows up although its step was stable at the start (IL-2 amplifying itself,
    dc/dt = k c^2: infinite by t = 1 / (k c0) = 20 s, less its losses) stops with exit
    status 1, keeping the frames before."""
    engine.register_term("runaway", lambda fields, p: ({"IL2": p["k"] * fields["IL2"] ** 2}, {}))
    config = write_config(tmp_path, stepper="explicit", end="10 min", every="10 s")
    text = config.read_text().replace('decay = "1e-3 1/s"', 'decay = "1e-3 1/s"\ninitial = 1.0')
    config.write_text(
        text + '[[terms]]\ntype = "custom"\nname = "runaway"\nparams = { k = 0.05 }\n'
    )
    assert main(["run", str(config), "-o", str(tmp_path / "bad.h5"), "--quiet"]) == 1
    err = capsys.readouterr().err
    assert "field IL2 became NaN or infinite" in err and "smaller time.dt" in err
    with h5py.File(tmp_path / "bad.h5") as f:  # frames before the failure are kept
        assert f["time"].shape[0] >= 2


def _start_long_run(tmp_path):
    config = write_config(
        tmp_path, n=64, end="6 h", stepper="explicit", every="10 min", checkpoint="1 h"
    )
    out = tmp_path / "long.h5"
    process = subprocess.Popen(
        ilsim_argv("run", config, "-o", out, "--quiet"),
        env=child_env(),
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 120
    while time.time() < deadline:  # wait until a few frames are on disk
        if out.exists():
            try:
                with h5py.File(out, "r") as f:
                    if f["time"].shape[0] >= 3:
                        break
            except (OSError, KeyError):
                pass
        time.sleep(0.2)
    else:
        process.kill()
        pytest.fail("the run wrote no frames in 120 s")
    return config, out, process


@pytest.mark.parametrize("checkpoint", ["4 min", None])
def test_an_interrupted_or_killed_run_resumes_like_an_uninterrupted_run(
    tmp_path, capsys, monkeypatch, checkpoint
):
    """In this process (with real signals to a process of its own: the two tests below, -m
    slow): SIGINT after the fourth frame stops the run at the next frame, with a checkpoint
    and status 130; the file as it was on disk right after that frame (what a kill then
    leaves) opens with every frame; both resume to the frames of an uninterrupted run. Also
    without output.checkpoint_every: a run checkpoints its first frame, so that a kill
    before its first timed checkpoint leaves a file to resume."""
    from engine.io.writer import OutputWriter

    config = write_config(tmp_path, n=12, stepper="explicit", checkpoint=checkpoint)
    out, killed = tmp_path / "stopped.h5", tmp_path / "killed.h5"
    write_frame = OutputWriter.write_frame

    def then_interrupt(writer, *args, **kwargs):
        write_frame(writer, *args, **kwargs)
        if writer.n_frames == 4:
            shutil.copy(out, killed)
            os.kill(os.getpid(), signal.SIGINT)

    monkeypatch.setattr(OutputWriter, "write_frame", then_interrupt)
    assert main(["run", str(config), "-o", str(out), "--quiet"]) == 130
    assert "--resume" in capsys.readouterr().err
    monkeypatch.undo()
    for partial in (out, killed):
        with engine.open_output(partial) as stopped:
            frames = len(stopped.time)
            assert 4 <= frames < 11
            np.testing.assert_allclose(stopped.time, 120.0 * np.arange(frames))
            for index in range(frames):
                assert np.all(np.isfinite(stopped.frame("IL2", index)))
        assert main(["run", str(config), "-o", str(partial), "--resume", "--quiet"]) == 0
    reference = tmp_path / "reference.h5"
    assert main(["run", str(config), "-o", str(reference), "--quiet"]) == 0
    for partial in (out, killed):
        with engine.open_output(partial) as a, engine.open_output(reference) as b:
            np.testing.assert_allclose(a.time, b.time)
            for name in ("IL2", "T"):
                np.testing.assert_allclose(a.frame(name, -1), b.frame(name, -1), rtol=1e-6, atol=0)


def test_a_new_file_takes_its_name_with_its_first_checkpoint_and_sidecar(tmp_path, monkeypatch):
    """A run killed just as OUT.h5 appears resumes: the file is renamed from OUT.h5.partial
    once its first frame and checkpoint are in (renamed with the frame alone, neither
    --resume nor a rerun took it), and the sidecar, written with the rename, shows the new
    run (a replaced run's sidecar of 11 frames stayed beside it)."""
    from engine.io.writer import OutputWriter

    config = write_config(tmp_path, n=12, stepper="explicit")
    out, killed = tmp_path / "out.h5", tmp_path / "killed.h5"
    assert main(["run", str(config), "-o", str(out), "--quiet"]) == 0  # replaced below
    move_to, sidecar_frames = OutputWriter.move_to, []

    def then_copy(writer, path):
        move_to(writer, path)
        shutil.copy(out, killed)  # what a kill right after the rename leaves
        sidecar_frames.append(out.with_suffix(".xdmf").read_text().count("<Time "))

    monkeypatch.setattr(OutputWriter, "move_to", then_copy)
    assert main(["run", str(config), "-o", str(out), "--overwrite", "--quiet"]) == 0
    monkeypatch.undo()
    assert sidecar_frames == [1]
    with h5py.File(killed, "r") as f:
        assert f["time"].shape == (1,) and "checkpoint" in f
    assert main(["run", str(config), "-o", str(killed), "--resume", "--quiet"]) == 0
    with engine.open_output(killed) as a, engine.open_output(out) as b:
        np.testing.assert_array_equal(a.time, b.time)
        for name in ("IL2", "T"):
            np.testing.assert_array_equal(a.frame(name, -1), b.frame(name, -1))
    assert sorted(p.name for p in tmp_path.iterdir() if p.suffix != ".toml") == [
        "killed.h5",
        "killed.xdmf",
        "out.h5",
        "out.xdmf",
    ]


@pytest.mark.parametrize(
    "every, expected",
    [
        ("4 min", [0, 240, 480, 720, 960, 1200]),
        ("5 min", [0, 360, 720, 1080, 1200]),
        (None, [0, 1200]),
    ],
)
def test_checkpoints_come_every_checkpoint_every_and_at_the_first_and_last_frames(
    tmp_path, monkeypatch, every, expected
):
    """output.checkpoint_every (here with frames every 2 min): a checkpoint at the first
    frame, then at the first frame at least checkpoint_every after the last one, and at the
    end; unset, the first frame and the end (the wall-time interval, 10 min, is far off). A
    run that checkpoints too rarely loses more work to a kill than the config allows."""
    from engine.io.writer import OutputWriter

    config = write_config(tmp_path, n=8, checkpoint=every)
    times = []
    write_checkpoint = OutputWriter.write_checkpoint

    def record(writer, t, *args, **kwargs):
        times.append(t)
        write_checkpoint(writer, t, *args, **kwargs)

    monkeypatch.setattr(OutputWriter, "write_checkpoint", record)
    assert main(["run", str(config), "-o", str(tmp_path / "out.h5"), "--quiet"]) == 0
    np.testing.assert_allclose(times, expected)


@pytest.mark.parametrize("every, il2_initial", [("1 min", None), ("2 min", 20.0)])
def test_an_error_controlled_run_resumes_with_its_held_estimate_bitwise(
    tmp_path, every, il2_initial
):
    """imex at dt = "auto" in frames of a few steps: the checkpoint keeps the estimate of the
    step that still holds (`State.held`) and the fields' largest sizes over the run
    (`State.scale`: with IL-2 in the lesion at the start, its peak is long gone by the
    checkpoint), and the run resumed from it takes the steps of an uninterrupted one, to the
    bit (estimating afresh at the resume would not: 3e-6 apart; nor would the second case's
    estimates against IL-2's size at the resume: 3e-6)."""
    from engine.io.checkpoint import read_checkpoint

    resumed, straight = tmp_path / "resumed", tmp_path / "straight"
    resumed.mkdir(), straight.mkdir()
    options = dict(n=12, every=every, checkpoint=every, il2_initial=il2_initial)
    shorter = write_config(resumed, end="10 min", **options)
    assert main(["run", str(shorter), "-o", str(resumed / "o.h5"), "--quiet"]) == 0
    saved = read_checkpoint(resumed / "o.h5")
    held = saved.held
    assert held is not None and held[1] > 600.0  # it holds beyond the checkpoint
    if il2_initial is not None:  # the IL-2 of the start sets its scale still
        assert saved.scale["IL2"] >= il2_initial > 4 * np.max(saved.fields["IL2"])
    longer = write_config(resumed, end="20 min", **options)
    assert main(["run", str(longer), "-o", str(resumed / "o.h5"), "--resume", "--quiet"]) == 0
    config = write_config(straight, end="20 min", **options)
    assert main(["run", str(config), "-o", str(straight / "o.h5"), "--quiet"]) == 0
    with engine.open_output(resumed / "o.h5") as a, engine.open_output(straight / "o.h5") as b:
        np.testing.assert_array_equal(a.time, b.time)
        for name in ("IL2", "T"):
            np.testing.assert_array_equal(a.field(name)[()], b.field(name)[()])


@pytest.mark.slow
def test_sigint_checkpoints_and_resume_completes_like_an_uninterrupted_run(tmp_path):
    config, out, process = _start_long_run(tmp_path)
    process.send_signal(signal.SIGINT)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert "--resume" in err
    with engine.open_output(out) as partial:
        frames = len(partial.time)
        assert 3 <= frames < 37
        np.testing.assert_allclose(partial.time, 600.0 * np.arange(frames))
        assert np.all(np.isfinite(partial.frame("IL2", frames - 1)))
    resumed = ilsim("run", config, "-o", out, "--resume", "--quiet")
    assert resumed.returncode == 0, resumed.stderr
    reference = tmp_path / "reference.h5"
    assert ilsim("run", config, "-o", reference, "--quiet").returncode == 0
    with engine.open_output(out) as a, engine.open_output(reference) as b:
        np.testing.assert_allclose(a.time, b.time)
        for name in ("IL2", "T"):
            np.testing.assert_allclose(a.frame(name, -1), b.frame(name, -1), rtol=1e-6, atol=0)


@pytest.mark.slow
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
@pytest.mark.parametrize("after", [0.3, 1.5])
def test_a_signal_while_the_run_starts_exits_130_with_one_line(tmp_path, sig, after):
    """Whenever it comes (importing, building, compiling, the first frames), Ctrl-C or
    SIGTERM stops the run with status 130 and one line: none lost (Python drops a
    KeyboardInterrupt raised inside JAX's garbage-collection callback), no traceback, and
    any file left resumable."""
    config, out = write_config(tmp_path, n=32), tmp_path / "o.h5"
    process = subprocess.Popen(
        ilsim_argv("run", config, "-o", out, "--quiet"),
        env=child_env(),
        stderr=subprocess.PIPE,
        text=True,
    )
    time.sleep(after)
    process.send_signal(sig)
    _, err = process.communicate(timeout=120)
    assert process.returncode == 130, err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
    if out.exists():
        resumed = ilsim("run", config, "-o", out, "--resume", "--quiet")
        assert resumed.returncode == 0, resumed.stderr


@pytest.mark.slow  # a process of its own: JAX's platform is chosen once per process
def test_a_backend_that_is_not_here_is_bad_input(tmp_path):
    import jax

    if jax.default_backend() == "gpu":
        pytest.skip("a GPU is here")
    result = ilsim("run", write_config(tmp_path), "-o", tmp_path / "o.h5", "--backend", "gpu")
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip() == "ilsim: error: --backend gpu: no gpu device is available here"


@pytest.mark.slow
def test_sigkill_leaves_every_flushed_frame_readable(tmp_path):
    config, out, process = _start_long_run(tmp_path)
    time.sleep(1.0)
    process.kill()
    process.wait(timeout=60)
    with engine.open_output(out) as partial:
        frames = len(partial.time)
        assert frames >= 3
        for index in range(frames):
            assert np.all(np.isfinite(partial.frame("IL2", index)))
    resumed = ilsim("run", config, "-o", out, "--resume", "--quiet")  # from the last checkpoint
    assert resumed.returncode == 0, resumed.stderr
    with engine.open_output(out) as done:
        np.testing.assert_allclose(done.time, 600.0 * np.arange(37))


def test_a_3d_run_opens_in_xarray_with_named_dimensions(tmp_path):
    xarray = pytest.importorskip("xarray")
    config = write_config(tmp_path, n=12, end="4 min", every="1 min")
    text = config.read_text().replace("shape = [12, 12]", "shape = [10, 12, 12]")
    text = text.replace('center = ["60 um", "60 um"]', 'center = ["50 um", "60 um", "60 um"]')
    config.write_text(text)
    out = tmp_path / "cube.h5"
    assert main(["run", str(config), "-o", str(out), "--quiet"]) == 0
    with xarray.open_dataset(out, engine="h5netcdf") as ds:
        assert ds["IL2"].dims == ("time", "z", "y", "x")
        assert ds["IL2"].shape == (5, 10, 12, 12)
        np.testing.assert_allclose(ds["z"].values, 5.0 + 10.0 * np.arange(10))
    with h5py.File(out) as f:
        for key in (
            "format",
            "format_version",
            "ilsim_version",
            "created",
            "backend",
            "device",
            "dtype",
            "stepper",
            "config",
        ):
            assert key in f.attrs, key
        assert engine.load_config(__import__("tomllib").loads(f.attrs["config"])).grid.shape == (
            10,
            12,
            12,
        )
    import xml.etree.ElementTree as ET

    assert ET.parse(out.with_suffix(".xdmf")).getroot().tag == "Xdmf"


class _AskedProcesses:
    """Stands in for the processes of a multi-process run: records what it was asked."""

    def __init__(self, others_bad: bool):
        self.others_bad = others_bad
        self.asked = []

    def any(self, flag: bool) -> bool:
        self.asked.append(flag)
        return flag or self.others_bad


@pytest.mark.parametrize("here_bad, others_bad", [(True, False), (False, True), (False, False)])
def test_every_process_asks_the_others_whether_a_field_diverged(here_bad, others_bad):
    """A process that finds a bad block must still join the others' question, else they wait
    for it forever; and a bad block elsewhere stops this process too."""
    from engine.runs.driver import Diverged, _check_finite

    block = np.array([np.nan if here_bad else 1.0])
    processes = _AskedProcesses(others_bad)
    if here_bad or others_bad:
        with pytest.raises(Diverged, match="IL2" if here_bad else "of another process"):
            _check_finite({"IL2": [((slice(0, 1),), block)]}, 60.0, processes)
    else:
        _check_finite({"IL2": [((slice(0, 1),), block)]}, 60.0, processes)
    assert processes.asked == [here_bad]


@pytest.mark.slow
def test_validate_predicts_the_peak_memory_of_the_run_within_20_percent(tmp_path, child):
    """`ilsim validate`'s predicted peak against the measured peak (maximum resident set) of
    `ilsim run`, each in a process of its own: infection_resolution_3d at 96^3 (six float32
    fields, 21 MB in all), for two minutes. This process holds a gigabyte more than the run
    while it measures, as it does after many tests: the measured peak must be the run's own."""
    config_dir = Path(__file__).resolve().parents[1] / "configs"
    config = tmp_path / "case.toml"
    cube = {"grid.shape": [96, 96, 96], "time.end": "2 min", "time.output_every": "1 min"}
    config.write_text(dump_toml(load_config(config_dir / "infection_resolution_3d.toml", cube)))
    checked = ilsim("validate", config)
    assert checked.returncode == 0, checked.stderr
    predicted = re.search(r"peak memory: ([\d.]+) MB predicted", checked.stdout)
    assert predicted, checked.stdout
    run = ilsim_argv("run", config, "-o", tmp_path / "o.h5", "--quiet")
    ballast = np.ones(2**27)  # noqa: F841 (held, 1 GB resident)
    measuring = subprocess.run(
        child("peak_memory", *run),
        env=child_env(),
        capture_output=True,
        text=True,
    )
    status, peak = map(int, measuring.stdout.split())
    assert status == 0, measuring.stderr
    measured = peak / 1e6
    assert abs(float(predicted[1]) / measured - 1) < 0.2, (predicted[1], measured)
