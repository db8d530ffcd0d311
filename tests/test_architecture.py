"""The engine's shape: layers that import downwards only (the import-linter contracts in
pyproject.toml), no private names across modules, and imports without side effects."""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import types
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "engine"


def test_the_import_contracts_hold(child):
    """`lint-imports` on the package, in a process of its own: in this one, import-linter's
    output stream could be one that an earlier test's capture had closed."""
    done = subprocess.run(
        child("lint_imports", "--no-cache"), cwd=ROOT, capture_output=True, text=True, timeout=120
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-2000:]
    assert "Contracts: 2 kept, 0 broken." in done.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("module", "line", "broken"),
    [
        ("numerics/grid.py", "from engine.runs import driver", "Layers import downwards only"),
        ("stepping/steppers.py", "import engine.config.schema", "Layers import downwards only"),
        ("post/analysis.py", "import jax", "Files and figures need neither JAX"),
    ],
)
def test_an_upward_import_breaks_the_contracts(tmp_path, child, module, line, broken):
    """A copy of the package with one forbidden import added fails `lint-imports`."""
    shutil.copytree(PACKAGE, tmp_path / "engine", ignore=shutil.ignore_patterns("__pycache__"))
    target = tmp_path / "engine" / module
    target.write_text(target.read_text() + f"\n{line}\n")
    shutil.copy(ROOT / "pyproject.toml", tmp_path)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    done = subprocess.run(
        child("lint_imports", "--no-cache"),
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 1, done.stdout[-2000:] + done.stderr[-2000:]
    assert f"{broken}" in done.stdout and "BROKEN" in done.stdout


def _imported_modules(tree: ast.Module) -> dict[str, str]:
    """Local name -> engine module, for the engine modules a module imports as modules."""
    names = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("engine.") and alias.asname:
                    names[alias.asname] = alias.name
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("engine"):
            for alias in node.names:
                names[alias.asname or alias.name] = f"{node.module}.{alias.name}"
    return names


def private_names_used(path: Path) -> list[str]:
    """`from engine.x import _name` and `module._name` (module an imported engine module) in
    one source file."""
    tree = ast.parse(path.read_text())
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("engine"):
            found += [f"{node.module}.{a.name}" for a in node.names if a.name.startswith("_")]
    modules = {n for n, full in _imported_modules(tree).items() if full.count(".") >= 1}
    for node in ast.walk(tree):
        if (
            isinstance(node, ast.Attribute)
            and isinstance(node.value, ast.Name)
            and node.value.id in modules
            and node.attr.startswith("_")
            and not node.attr.startswith("__")
        ):
            found.append(f"{node.value.id}.{node.attr}")
    return found


def test_no_module_imports_another_modules_private_name():
    used = {
        str(path.relative_to(ROOT)): private_names_used(path)
        for path in sorted(PACKAGE.rglob("*.py"))
    }
    assert {path: names for path, names in used.items() if names} == {}


def test_the_private_name_check_finds_one(tmp_path):
    source = tmp_path / "module.py"
    source.write_text(
        "from engine.numerics.grid import _hidden\nfrom engine.numerics import grid\n"
        "grid._other(1)\n"
    )
    assert private_names_used(source) == ["engine.numerics.grid._hidden", "grid._other"]


def test_every_public_name_resolves_and_is_listed():
    """`engine`'s lazy names (DESIGN.md section 5, and the modules the docs name) are all in
    `__all__` and `dir(engine)` and each resolves, a module to the module itself; any other
    name is an AttributeError, so `hasattr` and `from engine import ...` work as usual."""
    import engine

    documented = {"load_config", "Simulation", "open_output", "sweep", "gradient", "fit"}
    modules = {"analysis", "parallel", "regions", "terms"}
    assert documented | modules <= set(engine.__all__) <= set(dir(engine))
    for name in engine.__all__:
        value = getattr(engine, name)
        assert isinstance(value, types.ModuleType) == (name in modules), name
    assert engine.regions.__name__ == "engine.model.regions"
    assert not hasattr(engine, "no_such_name")


@pytest.mark.slow
def test_importing_engine_has_no_side_effects(child):
    """In a fresh process: files and figures load neither JAX nor pint nor pydantic; nothing
    changes XLA_FLAGS, matplotlib's backend or JAX's 64-bit mode."""
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "MPLBACKEND")}
    done = subprocess.run(
        child("import_probe"), capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    assert report == dict(light=[], heavy=True, backend_kept=True, flags_kept=True, x64=False)
