"""Parameter sweeps: N members of one config advanced together as one batch (`jax.vmap`, one
compilation), in chunks that fit device memory, the member axis split over the devices.

Each member is the config with some keys set to other values (`--vary`); its model is built
from that config exactly as a single run's would be, and only the leaves that differ between
members are batched. Each member takes the steps its single run would take (its own "auto" dt:
the batch steps as far as its longest member and the others wait), so a member of a sweep equals
the single run of its config to rounding.
"""

from __future__ import annotations

import functools
import itertools
import math
from dataclasses import dataclass
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from engine import spectral
from engine.config import Config, ConfigError, _available_memory, load_config
from engine.model import Model
from engine.parameters import (
    MODEL_SECTIONS,
    config_number,
    config_value,
    differs,
    display_key,
    model_leaves,
)
from engine.simulation import Simulation, State, refuse_unstable_dt
from engine.steppers import advance_fields


def member_rows(vary: dict, product: bool = True) -> tuple[tuple[str, ...], list[tuple]]:
    """The keys and, per member, their values: every combination (`product`) or the lists
    zipped (all of one length)."""
    if not vary:
        raise ConfigError("sweep: nothing to vary; give at least one KEY=V1,V2,...")
    keys = tuple(display_key(k) for k in vary)
    lists = [list(v) if isinstance(v, list | tuple | np.ndarray) else [v] for v in vary.values()]
    for key, values in zip(keys, lists):
        if not values:
            raise ConfigError(f"{key}: no values to vary over; give at least one")
    if product:
        return keys, list(itertools.product(*lists))
    lengths = {len(v) for v in lists}
    if len(lengths) > 1:
        raise ConfigError(
            "sweep: with product = False every key needs as many values; got "
            + ", ".join(f"{k} ({len(v)})" for k, v in zip(keys, lists))
        )
    return keys, list(zip(*lists))


CPU_BATCH_BYTES = 4 * 2**20
"""Field state per device batch on a CPU: a larger batch streams from memory where smaller ones
stay in cache (measured on a 2-core CPU, 64 members of a 256^2 two-field model, float32: batches
of 8 (4 MB) ran 4x faster than one batch of 64, and 1.8x faster than batches of 16 or of 1)."""


def _substitute(model: Model, leaves: dict[int, jax.Array]) -> Model:
    """`model` with the leaves at the given flat indices replaced."""
    flat, treedef = jax.tree.flatten(model)
    flat = list(flat)
    for i, value in leaves.items():
        flat[i] = value
    return jax.tree.unflatten(treedef, flat)


class Ensemble:
    """N members of one config, stepped together; the same interface as `Simulation` for the
    run driver (`initial_state`, `advance`, `place`), with fields shaped (N, *grid).

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
        for key in keys:
            config_number(cfg, key, (*MODEL_SECTIONS, "regions"))  # a number of the model
        configs = [load_config(cfg, dict(zip(keys, row))) for row in rows]
        self.keys = keys
        self.values = np.array(
            [[config_value(c, k) for k in keys] for c in configs], dtype=np.float64
        ).reshape(len(rows), len(keys))
        self.sim = Simulation(cfg, mesh=None)
        self.model, self.dtype, self.stepper = self.sim.model, self.sim.dtype, self.sim.stepper
        self.moved = {i: v.astype(self.dtype) for i, v in self._member_leaves(configs).items()}
        self.size = len(rows)
        available = jax.devices()
        if devices is not None and not 1 <= devices <= len(available):
            raise ValueError(
                f"--devices {devices}: give 1 to {len(available)} ({available[0].platform} "
                "devices here)"
            )
        self.devices = available[: devices or len(available)]
        self.chunk = self._chunk_size(chunk)

    @property
    def members(self) -> dict[str, np.ndarray]:
        """Each varied key's value per member (engine units)."""
        return {key: self.values[:, p] for p, key in enumerate(self.keys)}

    def _member_leaves(self, configs: list[Config]) -> dict[int, np.ndarray]:
        """The leaves in which some member's model differs from the config's, stacked
        (N, *leaf shape), by flat index."""
        base, treedef = model_leaves(self.config)
        stacks = {}
        members = []
        for c, row in zip(configs, self.values):
            leaves, structure = model_leaves(c)
            if structure != treedef:
                changed = ", ".join(f"{k}={v:g}" for k, v in zip(self.keys, row))
                raise ConfigError(
                    f"sweep: {changed} changes the model's structure, not a number in it; "
                    "members of a sweep share their terms, fields and boundaries"
                )
            members.append(leaves)
        for i, leaf in enumerate(base):
            column = [m[i] for m in members]
            if any(differs(v, leaf) for v in column):
                stacks[i] = np.stack(column)
        if not stacks:
            raise ConfigError(
                f"sweep: {', '.join(self.keys)} changes nothing in the model; vary numbers of "
                "species, populations, terms, sources or regions"
            )
        return stacks

    def _chunk_size(self, chunk: int | None) -> int:
        count = len(self.devices)
        if chunk is None:
            budget = _device_memory(self.devices[0])
            per_member = self.config.memory_bytes()
            chunk = self.size if budget is None else max(1, int(budget // per_member)) * count
            if self.devices[0].platform == "cpu":
                state = len(self.model.names) * self.model.grid.size * self.dtype.itemsize
                chunk = min(chunk, max(1, CPU_BATCH_BYTES // state) * count)
        if chunk < 1:
            raise ValueError(f"sweep: chunk must be >= 1, got {chunk}")
        chunk = min(chunk, self.size)
        return math.ceil(chunk / count) * count  # a whole number of members per device

    # -- the Simulation interface of the run driver ---------------------------------------

    def _sharding(self, ndim: int) -> NamedSharding | None:
        if len(self.devices) == 1:
            return None
        mesh = Mesh(np.asarray(self.devices), ("member",))
        return NamedSharding(mesh, PartitionSpec("member", *([None] * (ndim - 1))))

    def _on_devices(self, tree):
        def put(x):
            sharding = self._sharding(np.ndim(x))
            return jnp.asarray(x) if sharding is None else jax.device_put(x, sharding)

        return jax.tree.map(put, tree)

    def _chunks(self):
        """(start, stop, padded size) of each device batch."""
        for start in range(0, self.size, self.chunk):
            stop = min(start + self.chunk, self.size)
            count = len(self.devices)
            yield start, stop, math.ceil((stop - start) / count) * count

    def _batch(self, tree, start: int, stop: int, padded: int):
        """Rows start:stop of every array in `tree`, padded with copies of the last row to a
        whole number per device, on the devices."""

        def rows(x):
            x = x[start:stop]
            if padded > stop - start:
                last = x[-1:]
                x = np.concatenate([np.asarray(x)] + [np.asarray(last)] * (padded - len(x)))
            return x

        return self._on_devices(jax.tree.map(rows, tree))

    @functools.cached_property
    def _leaf_batches(self) -> list[dict[int, jax.Array]]:
        """The members' moved leaves of each device batch, on the devices (put there once)."""
        return [self._batch(self.moved, *chunk) for chunk in self._chunks()]

    def _map(self, compute, *per_member):
        """`compute(leaves, *per_member)` over every chunk, each argument's rows of the chunk;
        results joined (N, ...): device arrays when one chunk holds every member, host arrays
        otherwise."""
        results = []
        for (start, stop, padded), leaves in zip(self._chunks(), self._leaf_batches):
            args = self._batch(per_member, start, stop, padded)
            out = compute(leaves, *args)
            out = jax.tree.map(lambda x, n=stop - start: x[:n], out)
            results.append(out if self.chunk >= self.size else jax.tree.map(np.asarray, out))
        if len(results) == 1:
            return results[0]
        return jax.tree.map(lambda *parts: np.concatenate(parts), *results)

    def load_fields(self, datasets):
        """Fields (N, *grid) read from a checkpoint's datasets, where the members live
        between steps."""
        fields = {k: np.asarray(d[()], self.dtype) for k, d in datasets.items()}
        return self._on_devices(fields) if self.chunk >= self.size else fields

    def initial_state(self) -> State:
        compute = jax.jit(
            jax.vmap(lambda leaves: _substitute(self.model, leaves).initial_fields(self.dtype))
        )
        return State(t=0.0, fields=self._map(compute))

    @functools.cached_property
    def _stable_dt(self):
        """Each member's largest stable step, compiled once (every advance asks for it)."""
        model, stepper = self.model, self.stepper
        return jax.jit(jax.vmap(lambda leaves, f: stepper.stable_dt(_substitute(model, leaves), f)))

    def check_time_step(self, state: State) -> None:
        """Refuse a fixed time.dt beyond any member's explicit stability limit
        (`Simulation.check_time_step`)."""
        if self.sim.fixed_explicit_step:
            limit = float(np.min(self._map(self._stable_dt, state.fields)))
            refuse_unstable_dt(self.sim.dt, limit)

    def time_steps(self, state: State) -> np.ndarray:
        """The step (s) each member's single run would aim for."""
        if self.sim.dt != "auto":
            return np.full(self.size, float(self.sim.dt))
        stable = self._map(self._stable_dt, state.fields)
        return self.sim.safety * np.asarray(stable, dtype=np.float64)

    def advance(self, state: State, t_end: float) -> State:
        """Every member at `t_end` (s), each in the equal steps its single run would take."""
        span = float(t_end) - state.t
        if span < 0:
            raise ValueError(f"advance: t_end {t_end} s is before the state's time {state.t} s")
        if span == 0:
            return state
        dt_max = self.time_steps(state)
        n_steps = np.array(
            [max(1, math.ceil(span / d * (1 - 1e-12))) if math.isfinite(d) else 1 for d in dt_max]
        )
        dt = (span / n_steps).astype(self.dtype)
        t0 = jnp.asarray(state.t, self.dtype)

        def compute(leaves, fields, dt, n):
            return self._advance_members(leaves, fields, t0, dt, n)

        fields = self._map(compute, state.fields, dt, n_steps.astype(np.int32))
        return State(t=float(t_end), fields=fields, step=state.step + int(n_steps.max()))

    @functools.cached_property
    def _advance_members(self):
        sim, model = self.sim, self.model

        def one(leaves, fields, t0, dt, n):
            member = _substitute(model, leaves)
            return advance_fields(sim.stepper, member, fields, t0, dt, n, sim.compensated)

        vmapped = jax.vmap(one, in_axes=(0, 0, None, 0, 0))
        return jax.jit(vmapped, compiler_options=spectral.compiler_options())


def _device_memory(device) -> float | None:
    """Bytes a sweep may plan to use on `device`: 80% of an accelerator's memory, or of the
    host's available memory on a CPU."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return 0.8 * stats["bytes_limit"]
    available = _available_memory()
    return None if available is None else 0.8 * available


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
    from engine.run import output_times, run

    chunk, devices = options.pop("chunk", None), options.pop("devices", None)
    ensemble = Ensemble(cfg, vary, product, chunk=chunk, devices=devices)
    if output is not None:
        return run(ensemble, output, **options)
    if options:
        raise TypeError(f"sweep: {', '.join(options)} only apply with output=")
    times = output_times(cfg.time.end, cfg.time.output_every)
    state = ensemble.initial_state()
    frames = []
    for t in times:
        state = ensemble.advance(state, t)
        frames.append({name: np.asarray(value) for name, value in state.fields.items()})
    fields = {name: np.stack([f[name] for f in frames], axis=1) for name in frames[0]}
    return SweepResult(times, fields, ensemble.members)
