"""ilsim: interleukin transport and immune-cell response on Cartesian grids, in JAX."""

from engine import analysis, parallel, regions
from engine.boundary import Boundary, Dirichlet, Neumann, Periodic, Robin
from engine.build import build_model
from engine.config import Config, ConfigError, load_config
from engine.ensemble import Ensemble, SweepResult, sweep
from engine.gradients import FitResult, Trajectory, fit, gradient, sensitivity, value_and_gradient
from engine.grid import Grid
from engine.io import open_output
from engine.model import Model, Population, Species
from engine.parameters import Parameters
from engine.simulation import Simulation, State
from engine.sources import Schedule, Source, point_source, region_source
from engine.terms import register_term

__version__ = "0.1.0"

__all__ = [
    "analysis",
    "parallel",
    "Config",
    "ConfigError",
    "build_model",
    "load_config",
    "open_output",
    "Boundary",
    "Dirichlet",
    "Ensemble",
    "FitResult",
    "Parameters",
    "SweepResult",
    "Trajectory",
    "fit",
    "gradient",
    "sensitivity",
    "sweep",
    "value_and_gradient",
    "Grid",
    "Model",
    "Neumann",
    "Periodic",
    "Population",
    "Robin",
    "Schedule",
    "Simulation",
    "Source",
    "Species",
    "State",
    "point_source",
    "region_source",
    "register_term",
    "regions",
]
