"""Whether a config's run fits a machine's memory: checked by the runs that build it, not by
loading (a config is valid or not whatever machine reads it)."""

from __future__ import annotations

import math

from engine.config.errors import ConfigError
from engine.config.schema import Config
from engine.numerics.memory import PLANNING_FRACTION, STATE_COPIES


def check_memory(cfg: Config, available: int | None) -> None:
    """ConfigError naming grid.shape if the run's state estimate exceeds PLANNING_FRACTION of
    `available` bytes (None: unknown, not checked)."""
    if available is None:
        return
    need = cfg.memory_bytes()
    limit = PLANNING_FRACTION * available
    if need > limit:
        fields = max(len(cfg.field_names), 1)
        voxels = math.prod(cfg.grid.shape)
        per_value = 8 if cfg.time.dtype == "float64" else 4
        raise ConfigError(
            f"grid.shape: the run needs about {need / 1e9:.3g} GB ({fields} fields x "
            f"{voxels:.3g} voxels x {per_value} bytes x {STATE_COPIES} copies), more than "
            f"{PLANNING_FRACTION:.0%} of the available memory ({limit / 1e9:.3g} GB of "
            f"{available / 1e9:.3g} GB); use a smaller grid or more devices"
        )
