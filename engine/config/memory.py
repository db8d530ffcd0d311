"""Whether a config's run fits a machine's memory: checked by the runs that build it, not by
loading (a config is valid or not whatever machine reads it)."""

from __future__ import annotations

import math

from engine.config.errors import ConfigError
from engine.config.schema import Config
from engine.numerics.memory import FRAME_BYTES, PLANNING_FRACTION, STATE_COPIES, cells_bytes


def check_memory(cfg: Config, available: int | None) -> None:
    """ConfigError if the run's state estimate (`Config.memory_bytes`: fields and cells) or its
    output times (FRAME_BYTES a frame) exceed PLANNING_FRACTION of `available` bytes (None:
    unknown, not checked). The error names grid.shape, or the largest cell type's capacity
    when the cells need more than the fields, or time.output_every."""
    need = cfg.memory_bytes()
    fields = max(len(cfg.field_names), 1)
    voxels = math.prod(cfg.grid.shape)
    per_value = cfg.bytes_per_value
    what = f"{fields} fields x {voxels:.3g} voxels x {per_value} bytes x {STATE_COPIES} copies"
    key, fix = "grid.shape", "use a smaller grid or more devices"
    values = cfg.cell_values()
    if values:
        what += f", plus {values:.3g} cell values x {per_value} bytes x {STATE_COPIES} copies"
        if cells_bytes(values, per_value) > need / 2:
            ndim = cfg.grid.ndim
            name = max(
                cfg.cells, key=lambda n: cfg.cells[n].capacity * cfg.cells[n].values_per_cell(ndim)
            )
            key, fix = f"cells.{name}.capacity", "lower the cell types' capacities"
    check_fits(need, available, key, what, fix)
    t = cfg.time
    if t.output_every is not None:
        frames = t.end / t.output_every + 2  # at most; a float, as it may pass any integer
        check_fits(
            frames * FRAME_BYTES,
            available,
            "time.output_every",
            f"{frames:.3g} frames, time.end {t.end:g} s / output_every {t.output_every:g} s, "
            f"x {FRAME_BYTES} bytes for their times alone",
            "use a larger output_every or a shorter time.end",
        )


def check_fits(need: float, available: int | None, key: str, what: str, fix: str) -> None:
    """ConfigError `key: the run needs about N GB (what), more than 80% of the available
    memory (...); fix` if `need` bytes exceed PLANNING_FRACTION of `available` (None: unknown,
    not checked)."""
    if available is None or need <= PLANNING_FRACTION * available:
        return
    limit = PLANNING_FRACTION * available
    raise ConfigError(
        f"{key}: the run needs about {need / 1e9:.3g} GB ({what}), more than "
        f"{PLANNING_FRACTION:.0%} of the available memory ({limit / 1e9:.3g} GB of "
        f"{available / 1e9:.3g} GB); {fix}"
    )
