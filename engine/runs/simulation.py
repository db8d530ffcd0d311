"""`engine.Simulation`: the stepping layer's `Simulation`, made from a `Model` or a `Config`."""

from __future__ import annotations

import contextlib
import math
from pathlib import Path

from engine.config.build import build_model, time_options
from engine.config.errors import ConfigError
from engine.config.memory import check_memory
from engine.config.schema import Config
from engine.model.model import Model
from engine.numerics.memory import available_memory
from engine.runs.driver import run
from engine.stepping import simulation


@contextlib.contextmanager
def unstable_step_as_config_error():
    """A fixed time.dt beyond the stability limit (`stepping.simulation.UnstableStep`) raised
    as the config's error, as every other bad key of a config-built run is."""
    try:
        yield
    except simulation.UnstableStep as error:
        raise ConfigError(str(error)) from None


class Simulation(simulation.Simulation):
    """A `stepping.Simulation` of a `Model`, or of a `Config` (from `load_config`): then the
    config's [time] and [parallel] tables give the options (keywords override them), the run
    is checked to fit this machine's memory, and `run` writes it to a file.

    Options: see `engine.stepping.simulation.Simulation`.
    """

    def __init__(self, model: Model | Config, **options):
        self.config = model if isinstance(model, Config) else None
        if self.config is not None:
            check_memory(self.config, available_memory())
            options = {**time_options(self.config), **options}
            model = build_model(self.config)
        super().__init__(model, **options)

    def check_time_step(self, state) -> None:
        with unstable_step_as_config_error():
            super().check_time_step(state)

    def validate(self, state=None, span: float = math.inf) -> dict:
        """`stepping.Simulation.validate` (over the first frame interval for a config), and
        for a config the number of steps to time.end at the first step and the memory
        estimate (bytes)."""
        if self.config is not None and not math.isfinite(span):
            span = min(self.config.time.output_every or math.inf, self.config.time.end)
        report = super().validate(state, span)
        if self.config is not None:
            end = self.config.time.end
            report["steps"] = max(1, math.ceil(end / report["dt"])) if report["dt"] < end else 1
            report["memory_bytes"] = self.config.memory_bytes()
        return report

    def run(self, output: str | Path, **options) -> Path:
        """The CLI's run of a config-built simulation, writing frames and checkpoints to
        `output` (options: resume, overwrite, quiet); returns the output path."""
        return run(self, output, **options)
