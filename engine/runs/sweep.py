"""Parameter sweeps: a config's members (`--vary`) advanced together as one `Ensemble`.

Each member is the config with some keys set to other values; its model leaves come from the
config's one map of keys to model leaves (`config.parameters.Parameters`), so a member equals
the single run of its config to rounding.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engine.config.errors import ConfigError
from engine.config.loading import load_config
from engine.config.parameters import Parameters, config_value, display_key
from engine.config.schema import Config
from engine.numerics.memory import PLANNING_FRACTION, available_memory
from engine.runs.driver import output_times, run
from engine.runs.simulation import Simulation, unstable_step_as_config_error
from engine.stepping import ensemble

MAX_MEMBERS = 100_000
"""Most members of one sweep: each member's config is validated on its own (about a
millisecond each), and its file holds every member's frames."""


def member_rows(vary: dict, product: bool = True) -> tuple[tuple[str, ...], list[tuple]]:
    """The keys and, per member, their values: every combination (`product`) or the lists
    zipped (all of one length); at most MAX_MEMBERS members."""
    if not vary:
        raise ConfigError("sweep: nothing to vary; give at least one KEY=V1,V2,...")
    keys = tuple(display_key(k) for k in vary)
    lists = [list(v) if isinstance(v, list | tuple | np.ndarray) else [v] for v in vary.values()]
    for key, values in zip(keys, lists):
        if not values:
            raise ConfigError(f"{key}: no values to vary over; give at least one")
    lengths = [len(v) for v in lists]
    if not product and len(set(lengths)) > 1:
        raise ConfigError(
            "sweep: paired values (--zip, product = False) need as many of each key; got "
            + ", ".join(f"{k} ({n})" for k, n in zip(keys, lengths))
            + "; give each the same number, or combine them (no --zip)"
        )
    count = math.prod(lengths) if product else lengths[0]
    if count > MAX_MEMBERS:
        combined = f" ({' x '.join(map(str, lengths))})" if product and len(lengths) > 1 else ""
        raise ConfigError(
            f"sweep: {count} members{combined}, more than the {MAX_MEMBERS} a sweep takes; "
            "vary fewer values or split the sweep"
        )
    return keys, list(itertools.product(*lists) if product else zip(*lists))


def check_members_memory(cfg: Config, count: int, available: int | None) -> None:
    """ConfigError where the fields of `count` members of `cfg` (a sweep holds them all
    between its batches) exceed PLANNING_FRACTION of `available` bytes (None: unknown, not
    checked)."""
    need = count * len(cfg.field_names) * math.prod(cfg.grid.shape) * cfg.bytes_per_value
    if available is None or need <= PLANNING_FRACTION * available:
        return
    raise ConfigError(
        f"sweep: the fields of {count} members need about {need / 1e9:.3g} GB, more than "
        f"{PLANNING_FRACTION:.0%} of the available memory ({available / 1e9:.3g} GB); vary "
        "fewer values or use a smaller grid.shape"
    )


class Ensemble(ensemble.Ensemble):
    """The members of a sweep of `cfg`, stepped together (`stepping.ensemble.Ensemble`).

    Arguments:
        cfg: the base config.
        vary: {key: [values]} with values in engine units or as in the config ("50 um^2/s").
        product: every combination of the values (default), or the lists zipped.
        chunk: members per device batch (default: as many as fit the memory budget).
        devices: how many devices share the members (default: all).
    """

    def __init__(
        self,
        cfg: Config,
        vary: dict,
        product: bool = True,
        chunk: int | None = None,
        devices: int | None = None,
    ):
        if cfg.time.adaptive:
            raise ConfigError(
                "time.adaptive: sweeps step with a fixed or auto dt; set time.adaptive = false"
            )
        self.config = cfg
        keys, rows = member_rows(vary, product)
        check_members_memory(cfg, len(rows), available_memory())
        parameters = Parameters.of(cfg, keys)
        # each member's config, validated as its single run's would be, gives its values
        configs = [load_config(cfg, dict(zip(keys, row))) for row in rows]
        self.keys = parameters.keys
        self.values = np.array(
            [[config_value(c, k) for k in self.keys] for c in configs], dtype=np.float64
        ).reshape(len(rows), len(self.keys))
        super().__init__(
            Simulation(cfg, mesh=None, kernels="xla"),
            parameters.member_leaves(self.values),
            chunk,
            devices,
        )

    @property
    def members(self) -> dict[str, np.ndarray]:
        """Each varied key's value per member (engine units)."""
        return {key: self.values[:, p] for p, key in enumerate(self.keys)}

    def check_time_step(self, state) -> None:
        with unstable_step_as_config_error():
            super().check_time_step(state)


@dataclass(frozen=True)
class SweepResult:
    """An in-memory sweep: frames at `time` (s) of every field, (N, n_frames, *grid), and
    each varied key's value per member (engine units)."""

    time: np.ndarray
    fields: dict[str, np.ndarray]
    members: dict[str, np.ndarray]


def sweep(
    cfg: Config,
    vary: dict,
    product: bool = True,
    output: str | Path | None = None,
    **options,
):
    """Run every member of a sweep (see `Ensemble`) to time.end, frames at the output times.

    With `output`, the frames go to one HDF5 file with a leading member axis and a /members
    table (as `ilsim sweep`; options: overwrite, resume, quiet, chunk, devices) and its path is
    returned; without, a `SweepResult` in memory (options: chunk, devices).
    """
    chunk, devices = options.pop("chunk", None), options.pop("devices", None)
    members = Ensemble(cfg, vary, product, chunk=chunk, devices=devices)
    if output is not None:
        return run(members, output, **options)
    if options:
        raise TypeError(f"sweep: {', '.join(options)} only apply with output=")
    times = output_times(cfg.time.end, cfg.time.output_every)
    state = members.initial_state()
    frames = []
    for t in times:
        state = members.advance(state, t)
        frames.append({name: np.asarray(value) for name, value in state.fields.items()})
    fields = {name: np.stack([f[name] for f in frames], axis=1) for name in frames[0]}
    return SweepResult(times, fields, members.members)
