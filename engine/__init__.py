"""ilsim: interleukin transport and immune-cell response on Cartesian grids, in JAX.

The public names below are imported on first use, so that `import engine` (and the light
layers, `engine.io` and `engine.post`) loads neither JAX nor pint until a name that needs them
is touched. The layers, lowest first: `numerics`, `model`, `stepping`, `config`, `io`,
`runs`, `post`, `cli` (docs/architecture.md).
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

_PUBLIC = {
    "analysis": "engine.post.analysis",
    "parallel": "engine.numerics.parallel",
    "regions": "engine.model.regions",
    "terms": "engine.model.terms",
    "Boundary": "engine.numerics.boundary",
    "Dirichlet": "engine.numerics.boundary",
    "Neumann": "engine.numerics.boundary",
    "Periodic": "engine.numerics.boundary",
    "Robin": "engine.numerics.boundary",
    "Grid": "engine.numerics.grid",
    "Model": "engine.model.model",
    "Population": "engine.model.model",
    "Species": "engine.model.model",
    "Schedule": "engine.model.sources",
    "Source": "engine.model.sources",
    "point_source": "engine.model.sources",
    "region_source": "engine.model.sources",
    "State": "engine.stepping.simulation",
    "CapacityExceeded": "engine.stepping.simulation",
    "check_capacity": "engine.stepping.simulation",
    "Config": "engine.config.schema",
    "ConfigError": "engine.config.errors",
    "load_config": "engine.config.loading",
    "build_model": "engine.config.build",
    "register_term": "engine.config.build",
    "Parameters": "engine.config.parameters",
    "open_output": "engine.io.reader",
    "Simulation": "engine.runs.simulation",
    "Ensemble": "engine.runs.sweep",
    "SweepResult": "engine.runs.sweep",
    "sweep": "engine.runs.sweep",
    "FitResult": "engine.runs.gradients",
    "Trajectory": "engine.runs.gradients",
    "fit": "engine.runs.gradients",
    "gradient": "engine.runs.gradients",
    "sensitivity": "engine.runs.gradients",
    "value_and_gradient": "engine.runs.gradients",
}

_MODULES = {"analysis", "parallel", "regions", "terms"}

__all__ = sorted(_PUBLIC)


def __getattr__(name: str):
    try:
        module = importlib.import_module(_PUBLIC[name])
    except KeyError:
        raise AttributeError(f"module 'engine' has no attribute {name!r}") from None
    value = module if name in _MODULES else getattr(module, name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted([*globals(), *_PUBLIC])
