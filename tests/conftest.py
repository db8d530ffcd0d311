"""Shared fixtures: 64-bit mode for reference runs, a convergence-order fit, the configs that
several test files build on, and the command line of a child process (tests/children/*.py)
for the cases that need a fresh JAX; and one compilation per distinct program in a run."""

from __future__ import annotations

import copy
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path

import jax
import numpy as np
import pytest

CHILDREN = Path(__file__).resolve().parent / "children"


@pytest.hookimpl(tryfirst=True)
def pytest_cmdline_main(config):
    """A run that selects the slow cases runs them in this one process, not in the default
    run's two workers: they start processes and devices of their own, and wait on them."""
    expression = config.option.markexpr or ""
    if "slow" in expression and "not slow" not in expression:
        config.option.numprocesses = None
        config.option.dist = "no"


def pytest_configure(config):
    """JAX's compilation cache in a folder of this run only (made now, shared with the
    workers, removed at the end): the many tests that build the same program again (a
    Simulation per time step, per sweep member, per `ilsim` call in the same process, on
    either worker) load it instead of compiling it again. A hit is the same executable, so no
    number changes; tracing still runs (trace counts hold). ILSIM_TEST_COMPILE_CACHE=0
    compiles every program afresh."""
    if os.environ.get("ILSIM_TEST_COMPILE_CACHE", "1") == "0":
        return
    folder = getattr(config, "workerinput", {}).get("jax_cache_folder")
    if folder is None:
        config.jax_cache_folder = folder = tempfile.mkdtemp(prefix="ilsim-tests-jax-cache-")
    jax.config.update("jax_compilation_cache_dir", folder)
    jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.1)


@pytest.hookimpl(optionalhook=True)
def pytest_configure_node(node):
    """An xdist worker uses the controller's cache folder."""
    folder = getattr(node.config, "jax_cache_folder", None)
    if folder is not None:
        node.workerinput["jax_cache_folder"] = folder


def pytest_unconfigure(config):
    folder = getattr(config, "jax_cache_folder", None)
    if folder is not None:
        shutil.rmtree(folder, ignore_errors=True)


# IL-2 secreted by T cells in a core region (self-activated), taken up by them, and supplied
# by a source in the core: every kind of parameter (transport, Hill, uptake, source) on a
# small 2D grid (tests/test_gradients.py, test_ensemble.py, test_kernels.py).
CELLS_CONFIG = {
    "grid": {"shape": [12, 10], "spacing": "10 um"},
    "time": {"end": "10 min", "output_every": "5 min", "stepper": "explicit"},
    "regions": {"core": {"sphere": {"center": ["60 um", "50 um"], "radius": "25 um"}}},
    "species": {"IL2": {"diffusion": "20 um^2/s", "decay": "1e-3 1/s"}},
    "populations": {"T": {"initial": {"region": "core", "value": 1e-4}, "motility": "0.5 um^2/s"}},
    "terms": [
        {
            "type": "secretion",
            "species": "IL2",
            "by": "T",
            "rate": "10 molecule/s",
            "activators": [{"of": "IL2", "K": 0.5, "hill": 1}],
        },
        {"type": "uptake", "species": "IL2", "by": "T", "k_on": 0.01, "receptors": 1000},
    ],
    "sources": [{"type": "region", "species": "IL2", "region": "core", "rate": "0.01 nM/s"}],
}

# IL-2 from a source in a core region, taken up by T cells everywhere, on a small 3D grid
# that splits over devices (tests/test_parallel.py, test_multiprocess.py).
CORE_UPTAKE_CONFIG = {
    "grid": {"shape": [16, 16, 8], "spacing": "10 um"},
    "time": {"end": "6 min", "output_every": "3 min", "stepper": "imex"},
    "regions": {"core": {"sphere": {"center": ["80 um", "80 um", "40 um"], "radius": "30 um"}}},
    "species": {"IL2": {"diffusion": "100 um^2/s", "decay": "1e-3 1/s"}},
    "populations": {"T": {"motility": "1 um^2/s", "initial": 1e-4}},
    "terms": [
        {"type": "uptake", "species": "IL2", "by": "T", "k_on": "1e9 1/M/s", "receptors": 1e3}
    ],
    "sources": [{"type": "region", "species": "IL2", "region": "core", "rate": "1 nM/s"}],
}


def _with_changes(base: dict, changes: dict | None) -> dict:
    """A deep copy of the config table `base` with `changes` ({dotted path: value}, as
    `load_config` overrides spell them, `terms[0].rate`) set; missing tables are made."""
    config = copy.deepcopy(base)
    for path, value in (changes or {}).items():
        keys = [int(k) if k.isdigit() else k for k in re.findall(r"[^.\[\]]+", path)]
        *parents, last = keys
        table = config
        for key in parents:
            table = table[key] if isinstance(key, int) else table.setdefault(key, {})
        table[last] = copy.deepcopy(value)
    return config


@pytest.fixture(scope="session")
def cells_config():
    """`cells_config(changes)`: a new copy of CELLS_CONFIG with `changes` set."""
    return lambda changes=None: _with_changes(CELLS_CONFIG, changes)


@pytest.fixture(scope="session")
def core_uptake_config():
    """`core_uptake_config(changes)`: a new copy of CORE_UPTAKE_CONFIG with `changes` set."""
    return lambda changes=None: _with_changes(CORE_UPTAKE_CONFIG, changes)


def _convergence_order(h, err) -> float:
    """Least-squares slope of log(err) against log(h): the measured order of convergence."""
    h = np.asarray(h, dtype=float)
    err = np.asarray(err, dtype=float)
    if h.shape != err.shape or h.ndim != 1 or h.size < 2:
        raise ValueError(f"convergence_order: need two equal 1-D sequences, got {h} and {err}")
    if not (np.all(h > 0) and np.all(err > 0)):
        raise ValueError(f"convergence_order: steps and errors must be positive, got {h}, {err}")
    slope, _ = np.polyfit(np.log(h), np.log(err), 1)
    return float(slope)


@pytest.fixture
def convergence_order():
    """`convergence_order(h, err)`: fitted slope of log err vs log h."""
    return _convergence_order


@pytest.fixture(scope="module")
def x64_module():
    """JAX 64-bit mode for every test of a module (`pytestmark =
    pytest.mark.usefixtures("x64_module")`), restored afterwards: switched on at import, it
    would leak into every module collected after."""
    previous = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)
    yield
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def float64():
    """Switches on JAX 64-bit mode for the test (restoring the previous setting afterwards) and
    returns the dtype name to pass to `Simulation`."""
    previous = bool(jax.config.jax_enable_x64)
    jax.config.update("jax_enable_x64", True)
    yield "float64"
    jax.config.update("jax_enable_x64", previous)


@pytest.fixture
def child():
    """`child(name, *args)`: the command line that runs tests/children/NAME.py with `args` in
    a fresh Python (for `subprocess`), where JAX starts with its own device count or flags."""

    def command(name: str, *args) -> list[str]:
        return [sys.executable, str(CHILDREN / f"{name}.py"), *map(str, args)]

    return command


@pytest.fixture
def write_text_stops_halfway(monkeypatch):
    """Path.write_text writes half its text, then raises KeyboardInterrupt: a write stopped
    midway (Ctrl-C), for checking what a file that is replaced whole is left as."""

    def stopped(self, text, *args, **kwargs):
        with open(self, "w") as file:
            file.write(text[: len(text) // 2])
        raise KeyboardInterrupt

    monkeypatch.setattr(Path, "write_text", stopped)
