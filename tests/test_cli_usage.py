"""Usage errors of the command line: one line naming the help of the command concerned; what a
command raises as its exit status and one line."""

from __future__ import annotations

import signal
import subprocess
import sys

import pytest

from engine.cli import files
from engine.cli.main import main


@pytest.mark.parametrize(
    ("argv", "hint"),
    [
        (["frobnicate"], "(see ilsim --help)"),
        (["run"], "(see ilsim run --help)"),
        (["plot", "out.h5", "--bogus"], "(see ilsim plot --help)"),
    ],
)
def test_a_usage_error_is_one_line_pointing_to_the_right_help(capsys, argv, hint):
    with pytest.raises(SystemExit) as stop:
        main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("ilsim: error: ") and err.rstrip().endswith(hint)


@pytest.mark.parametrize(
    ("raised", "status", "line"),
    [
        (ValueError("bad value\nmore detail"), 2, "ilsim: error: bad value"),
        (OSError("unreadable\nmore detail"), 2, "ilsim: error: unreadable"),
        (KeyboardInterrupt(), 130, "ilsim: info interrupted"),
        (
            RuntimeError("a bug"),
            1,
            "ilsim: internal error: RuntimeError: a bug (set ILSIM_DEBUG=1 for the traceback)",
        ),
    ],
)
def test_what_a_command_raises_is_one_line_and_its_exit_status(
    monkeypatch, capsys, raised, status, line
):
    """DESIGN 4: bad input exits 2, an interrupt 130, an internal error 1, each with one line on
    stderr and no traceback; main gives back the signal handlers it took over."""

    def handler(args):
        raise raised

    monkeypatch.setattr(files, "_info", handler)
    monkeypatch.delenv("ILSIM_DEBUG", raising=False)
    before = {sig: signal.getsignal(sig) for sig in (signal.SIGINT, signal.SIGTERM)}
    assert main(["info", "out.h5"]) == status
    assert capsys.readouterr().err == line + "\n"
    assert {sig: signal.getsignal(sig) for sig in before} == before


def test_the_command_module_loads_no_command_before_console_runs():
    """The console script imports engine.cli.main, then calls console: the command groups
    (and NumPy, h5py) load inside it, where an interrupt exits 130 in one line (one that
    came while they loaded printed a traceback and ended the process by SIGINT)."""
    code = "import sys, engine.cli.main; print(sorted(m for m in sys.modules if m in NAMES))"
    names = ["numpy", "h5py", "jax", "engine.cli.files", "engine.cli.simulate"]
    shown = subprocess.run(
        [sys.executable, "-c", f"NAMES = {names!r}; {code}"],
        capture_output=True,
        text=True,
        check=True,
    )
    assert shown.stdout.strip() == "[]"


@pytest.mark.parametrize("raised, status", [(KeyboardInterrupt, 130), (None, 0), (None, 2)])
def test_console_exits_with_main_s_status_and_ignores_sigint_once_done(
    monkeypatch, capsys, raised, status
):
    from engine.cli import main as cli

    def run():
        if raised:
            raise raised
        return status

    handlers, exits = [], []

    def leave(code):
        exits.append(code)
        raise SystemExit(code)

    monkeypatch.setattr(cli, "main", run)
    monkeypatch.setattr(cli.signal, "signal", lambda sig, handler: handlers.append((sig, handler)))
    monkeypatch.setattr(cli.os, "_exit", leave)
    monkeypatch.setattr(cli.sys, "exit", leave)
    with pytest.raises(SystemExit):
        cli.console()
    assert exits == [status]
    if raised:
        assert capsys.readouterr().err == "ilsim: interrupted\n" and handlers == []
    else:
        assert handlers == [(signal.SIGINT, signal.SIG_IGN)]


CONFIG = """
[grid]
shape = [8, 8]
spacing = "10 um"

[time]
end = "1 min"
output_every = "30 s"

[regions.spot]
sphere = { center = [40, 40], radius = 15 }

[species.IL6]
diffusion = 50
"""


@pytest.mark.parametrize(
    ("argv", "start"),
    [
        (["run", "--set", "species.IL6.diffusion=1e39"], "species.IL6.diffusion: 1e+39 does not"),
        (["validate", "--set", "grid.spacing=1e300"], "grid.spacing[0]: 1e+300 does not fit"),
        (["run", "--set", 'time.end="1e30 s"'], "time.output_every: the run needs about"),
        (
            ["run", "--set", "regions.spot={spots={count=100000000000,radius=5,seed=1}}"],
            "regions.spot.spots.count: 100000000000 spots on a grid of 64 voxels",
        ),
        (
            ["run", "--set", 'species.IL6.initial={file="empty.npy"}'],
            "species.IL6.initial.file: cannot read",
        ),
        (["demo", "--size", "100000"], "--size 100000: the run needs about"),
    ],
    ids=["beyond_float32", "huge_spacing", "frames", "spots", "empty_initial", "demo_size"],
)
def test_bad_input_is_one_line_naming_the_key_and_leaves_no_file(
    monkeypatch, capsys, tmp_path, argv, start
):
    """Values beyond the run's dtype, more frames or spots than fit, an unreadable initial
    file and a demo grid beyond memory: exit 2, one line naming the key, nothing written."""
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("ILSIM_DEBUG", raising=False)
    (tmp_path / "cfg.toml").write_text(CONFIG)
    (tmp_path / "empty.npy").write_bytes(b"")
    if argv[0] != "demo":
        argv = [argv[0], "cfg.toml", *argv[1:], *(["-o", "out.h5"] if argv[0] == "run" else [])]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"ilsim: error: {start}") and err.count("\n") == 1, err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cfg.toml", "empty.npy"]
