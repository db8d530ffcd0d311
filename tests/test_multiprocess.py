"""Multi-process runs: two processes (two CPU devices each, joined by jax.distributed over
Gloo) run `ilsim run` on one file. Each writes only its own blocks; the file equals a
single-process run on four devices, and a two-process run resumes from its checkpoint."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest

from engine.io.checkpoint import latest_checkpoint

pytestmark = pytest.mark.slow  # processes of their own, joined by jax.distributed

# the shared uptake config (tests/conftest.py) on a 16 x 8 x 8 grid, explicit steps
CHANGES = {
    "grid.shape": [16, 8, 8],
    "time.output_every": "2 min",
    "time.stepper": "explicit",
    "time.dt": "auto",
    "species.IL2.diffusion": "10 um^2/s",  # few explicit steps: 4 CPU devices may share 2 cores
    "regions.core.sphere.center": ["40 um", "40 um", "40 um"],
    "output.checkpoint_every": "2 min",
    "parallel.mesh": "auto",
}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _launch(args, cwd, processes: int, devices: int) -> list[subprocess.Popen]:
    """Start `ilsim ARGS` as `processes` processes with `devices` CPU devices each."""
    env = {**os.environ, "JAX_NUM_CPU_DEVICES": str(devices), "JAX_PLATFORMS": "cpu"}
    if processes > 1:
        address = f"127.0.0.1:{_free_port()}"
        env.update(JAX_COORDINATOR_ADDRESS=address, JAX_NUM_PROCESSES=str(processes))
    return [
        subprocess.Popen(
            [sys.executable, "-m", "engine.cli", *args],
            cwd=cwd,
            env={**env, "JAX_PROCESS_ID": str(rank)},
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for rank in range(processes)
    ]


def _ilsim(args, cwd, processes: int, devices: int) -> None:
    """Run `ilsim ARGS` as `processes` processes with `devices` CPU devices each, to the end."""
    for child in _launch(args, cwd, processes, devices):
        _, err = child.communicate(timeout=300)
        assert child.returncode == 0, err[-3000:]


def _write_configs(tmp_path, distributed: bool, core_uptake_config):
    from engine.config.loading import load_config
    from engine.config.toml import dump_toml

    for name, end in (("short", "4 min"), ("long", "8 min")):
        changes = {**CHANGES, "time.end": end}
        if distributed:
            changes["parallel.distributed"] = True
        config = load_config(core_uptake_config(changes))
        (tmp_path / f"{name}{int(distributed)}.toml").write_text(dump_toml(config))


@pytest.fixture(scope="module")
def runs(tmp_path_factory, core_uptake_config):
    """Two-process runs (4 min, and resumed to 8 min) and one-process runs on four devices."""
    tmp_path = tmp_path_factory.mktemp("multiprocess")
    for distributed in (True, False):
        _write_configs(tmp_path, distributed, core_uptake_config)
    single = ["run", "long0.toml", "-o", "single.h5", "--devices", "4", "--quiet"]
    _ilsim(single, tmp_path, processes=1, devices=4)
    _ilsim(["run", "short1.toml", "-o", "multi.h5", "--quiet"], tmp_path, processes=2, devices=2)
    (tmp_path / "resumed.h5").write_bytes((tmp_path / "multi.h5").read_bytes())
    _ilsim(
        ["run", "long1.toml", "-o", "resumed.h5", "--resume", "--quiet"],
        tmp_path,
        processes=2,
        devices=2,
    )
    return tmp_path


def test_two_processes_write_the_file_a_single_process_writes(runs):
    with h5py.File(runs / "multi.h5") as multi, h5py.File(runs / "single.h5") as single:
        n = multi["time"].shape[0]
        assert n == 3  # 0, 2 and 4 min
        np.testing.assert_array_equal(multi["time"][:], single["time"][:n])
        for name in ("IL2", "T"):
            # explicit steps of the same blocks: bitwise the same numbers
            np.testing.assert_array_equal(multi["fields"][name][:], single["fields"][name][:n])
            for stat in ("total", "max"):
                got = multi["summary"][f"{name}_{stat}"][:]
                want = single["summary"][f"{name}_{stat}"][:n]
                np.testing.assert_allclose(got, want, rtol=1e-12)
        assert multi["fields"]["IL2"][-1].max() > 0  # the source reached the file
        np.testing.assert_array_equal(multi["regions"]["core"][()], single["regions"]["core"][()])
        assert multi["checkpoint"].attrs["complete"] == 1
        assert multi["checkpoint"].attrs["time"] == pytest.approx(240.0)
        assert "distributed = true" in multi.attrs["config"]
    assert (runs / "multi.xdmf").exists()
    assert not (runs / "multi.h5.partial").exists()


def test_a_two_process_run_resumes_from_its_checkpoint(runs):
    with h5py.File(runs / "resumed.h5") as resumed, h5py.File(runs / "single.h5") as single:
        np.testing.assert_array_equal(resumed["time"][:], single["time"][:])  # 5 frames
        for name in ("IL2", "T"):
            np.testing.assert_array_equal(resumed["fields"][name][:], single["fields"][name][:])
        assert resumed["checkpoint"].attrs["time"] == pytest.approx(480.0)


def test_a_bad_resume_is_refused_by_every_process_in_one_line(runs):
    (runs / "bad.h5").write_bytes((runs / "multi.h5").read_bytes())
    args = ["run", "long1.toml", "-o", "bad.h5", "--resume", "--quiet"]
    children = _launch([*args, "--set", 'time.dtype="float64"'], runs, processes=2, devices=2)
    errors = [child.communicate(timeout=300)[1] for child in children]
    assert [child.returncode for child in children] == [2, 2], errors
    for error in errors:
        assert "time.dtype: 'float64' now, 'float32' in the run bad.h5 holds" in error
        assert "Traceback" not in error
    with h5py.File(runs / "bad.h5") as f:
        assert f["time"].shape[0] == 3 and f["fields"]["IL2"].dtype == np.float32


def test_a_signal_to_one_process_stops_both_with_a_checkpoint(tmp_path, core_uptake_config):
    _write_configs(tmp_path, True, core_uptake_config)
    args = ["run", "long1.toml", "-o", "stopped.h5", "--quiet", "--set", 'time.end="10 h"']
    children = _launch(args, tmp_path, processes=2, devices=2)
    deadline = time.monotonic() + 240
    while not (tmp_path / "stopped.h5").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # the file moves into place once its first frame is written
    children[1].send_signal(signal.SIGINT)
    codes = [child.wait(timeout=240) for child in children]
    assert codes == [130, 130], [child.stderr.read()[-2000:] for child in children]
    with h5py.File(tmp_path / "stopped.h5") as f:
        frames = f["time"].shape[0]
        assert 1 <= frames < 301  # stopped early, every frame complete
        checkpoint = f["checkpoint"]
        assert checkpoint.attrs["complete"] == 1
        assert checkpoint.attrs["time"] == pytest.approx(f["time"][-1])
        assert np.all(np.isfinite(f["fields"]["IL2"][-1]))


def test_a_process_that_dies_makes_the_others_abort_and_the_run_resumes(
    tmp_path, core_uptake_config
):
    """SIGKILL to one process: the other stops hearing its heartbeats and aborts after
    parallel.heartbeat_timeout instead of waiting forever; the file keeps its completed
    frames and last checkpoint, and the run resumes from it on two processes."""
    _write_configs(tmp_path, True, core_uptake_config)
    every = ["--set", 'time.output_every="30 s"', "--set", 'output.checkpoint_every="30 s"']
    args = ["run", "long1.toml", "-o", "crash.h5", "--quiet", *every]
    settings = ["--set", 'parallel.heartbeat_timeout="5 s"']
    children = _launch([*args, *settings, "--set", 'time.end="10 h"'], tmp_path, 2, 2)
    deadline = time.monotonic() + 240
    while not (tmp_path / "crash.h5").exists() and time.monotonic() < deadline:
        time.sleep(0.2)  # the file moves into place once its first frame is written
    time.sleep(6)  # a few more frames, each with a checkpoint
    children[1].kill()
    killed = time.monotonic()
    code = children[0].wait(timeout=120)
    assert code != 0 and time.monotonic() - killed < 60, code
    with h5py.File(tmp_path / "crash.h5") as f:
        frames = f["time"].shape[0]
        assert frames >= 2, "no frame after the first: wait longer before the kill"
        assert np.all(np.isfinite(f["fields"]["IL2"][:frames]))
        checkpoint = latest_checkpoint(f)  # a kill may come while a checkpoint is written
        assert checkpoint is not None
        stopped = float(checkpoint.attrs["time"])
    end = f'time.end="{stopped + 60:g} s"'
    _ilsim([*args, *settings, "--resume", "--set", end], tmp_path, processes=2, devices=2)
    with h5py.File(tmp_path / "crash.h5") as f:
        assert f["time"][-1] == pytest.approx(stopped + 60)
        assert np.all(np.diff(f["time"][:]) == 30)  # every frame once, none lost or repeated
        assert np.all(np.isfinite(f["fields"]["IL2"][:]))
