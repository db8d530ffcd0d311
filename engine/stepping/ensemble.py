"""Ensembles: N members of one model advanced together as one batch (`jax.vmap`, one
compilation), in chunks that fit device memory, the member axis split over the devices.

Only the model leaves that differ between members are batched. Each member takes the steps its
single run would take (its own "auto" dt: the batch steps as far as its longest member and the
others wait), so a member equals the single run of its model to rounding.
"""

from __future__ import annotations

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from engine.model.model import Model
from engine.numerics import compilation
from engine.numerics.memory import device_memory, state_bytes
from engine.stepping.simulation import (
    Simulation,
    State,
    difference_norm,
    field_sizes,
    in_precision,
    needs_estimate,
    next_leg,
    refuse_unstable_dt,
    run_scale,
    steps_within,
    stretches,
)
from engine.stepping.steppers import accurate_step, advance_fields, local_error_target

CPU_BATCH_BYTES = 4 * 2**20
"""Field state per device batch on a CPU (bytes): a larger batch streams from memory where
smaller ones stay in cache (the batch sizes compared: docs/performance-notes.md)."""


def _substitute(model: Model, leaves: dict[int, jax.Array]) -> Model:
    """`model` with the leaves at the given flat indices replaced."""
    flat, treedef = jax.tree.flatten(model)
    flat = list(flat)
    for i, value in leaves.items():
        flat[i] = value
    return jax.tree.unflatten(treedef, flat)


class Ensemble:
    """N members of one simulation's model, stepped together: the members differ in the model
    leaves `moved` ({flat leaf index: values (N, *leaf shape)}, from `Parameters`). The same
    interface as `Simulation` for the run driver (`initial_state`, `advance`, `load_fields`),
    with fields shaped (N, *grid). Each member takes the steps its single run would take.

    Arguments:
        sim: the simulation of the base model (one device, no adaptive stepping).
        moved: the member values of the leaves that differ between members.
        chunk: members per device batch (default: as many as fit the memory budget).
        devices: how many devices share the members (default: all).
    """

    def __init__(
        self,
        sim: Simulation,
        moved: dict[int, np.ndarray],
        chunk: int | None = None,
        devices: int | None = None,
    ):
        if sim.adaptive:
            raise ValueError(
                "time.adaptive: sweeps step with a fixed or auto dt; set time.adaptive = false"
            )
        if sim.mesh is not None:
            raise ValueError(
                "parallel.mesh: a sweep splits its members over the devices, not "
                "the grid; leave the mesh out"
            )
        if sim.model.cells:
            raise ValueError(
                "cells: sweeps of runs with cells are not supported yet; run each member "
                "with ilsim run --set"
            )
        if sim.stepper.fused:
            raise ValueError(
                "kernels: a sweep maps its steps over members, which the Pallas kernels "
                'cannot; make its Simulation with kernels="xla"'
            )
        if not moved:
            raise ValueError("sweep: the members do not differ; vary a number of the model")
        self.sim = sim
        self.model, self.dtype, self.stepper = sim.model, sim.dtype, sim.stepper
        self.moved = {i: np.asarray(v).astype(self.dtype) for i, v in moved.items()}
        self.size = len(next(iter(moved.values())))
        # every member's sources: the batch steps end at the edges of any member's doses
        self.sources = [
            source
            for m in range(self.size)
            for source in _substitute(sim.host_model, {i: v[m] for i, v in moved.items()}).sources
        ]
        available = jax.devices()
        if devices is not None and not 1 <= devices <= len(available):
            raise ValueError(
                f"--devices {devices}: give 1 to {len(available)} ({available[0].platform} "
                "devices here)"
            )
        self.devices = available[: devices or len(available)]
        self.chunk = self._chunk_size(chunk)

    def _chunk_size(self, chunk: int | None) -> int:
        count = len(self.devices)
        if chunk is None:
            budget = device_memory(self.devices[0])
            fields, voxels = len(self.model.names), self.model.grid.size
            state = fields * voxels * self.dtype.itemsize
            per_member = state_bytes(fields, voxels, self.dtype.itemsize)
            chunk = self.size if budget is None else max(1, int(budget // per_member)) * count
            if self.devices[0].platform == "cpu":
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

    @in_precision
    def load_fields(self, datasets):
        """Fields (N, *grid) read from a checkpoint's datasets, where the members live
        between steps."""
        fields = {k: np.asarray(d[()], self.dtype) for k, d in datasets.items()}
        return self._on_devices(fields) if self.chunk >= self.size else fields

    @in_precision
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

    @in_precision
    def check_time_step(self, state: State) -> None:
        """Refuse a fixed time.dt beyond any member's explicit stability limit
        (`Simulation.check_time_step`)."""
        if self.sim.fixed_explicit_step:
            limit = float(np.min(self._map(self._stable_dt, state.fields)))
            refuse_unstable_dt(self.sim.dt, limit)

    @functools.cached_property
    def _differences(self):
        """Each member's `simulation.difference_norm`, compiled once."""
        return jax.jit(jax.vmap(difference_norm, in_axes=(0, 0, None, 0, 0)))

    @functools.cached_property
    def _sizes(self):
        """Each member's `simulation.field_sizes`, compiled once."""
        return jax.jit(jax.vmap(field_sizes))

    @in_precision
    def step_bounds(self, state: State) -> np.ndarray:
        """The longest step (s) each member's single run would take before any accuracy
        target (`Simulation.step_bound`)."""
        if self.sim.dt != "auto":
            return np.full(self.size, float(self.sim.dt))
        stable = self._map(self._stable_dt, state.fields)
        return self.sim.safety * np.asarray(stable, dtype=np.float64)

    @in_precision
    def _accurate_steps(self, fields, t: np.ndarray, longest: np.ndarray, proposal, scale):
        """Each member's (step, proposal, scale) from `fields` at its t (s), at most `longest`
        (s), trying `proposal` first, against at least the run's `scale`
        (`Simulation._accurate_step`; the members' trials in one batch)."""
        sizes = self._map(lambda leaves, f: self._sizes(f), fields)
        scale = run_scale(scale, {k: np.asarray(v, np.float64) for k, v in sizes.items()})
        floor = {k: v.astype(self.dtype) for k, v in scale.items()}
        t0 = t.astype(self.dtype)
        target = local_error_target(self.sim.tolerance, self.sim.stepper.order, self.dtype)
        local = jnp.asarray(target, self.dtype)
        ones = np.ones(self.size, np.int32)
        span32 = longest.astype(self.dtype)
        ahead = self._map(self._advance_members, t0, fields, span32, ones)

        def error_at(h):
            if np.array_equal(h, longest):  # the step `ahead` took already
                full = ahead
            else:
                full = self._map(self._advance_members, t0, fields, h.astype(self.dtype), ones)
            half = self._map(
                self._advance_members, t0, fields, (h / 2).astype(self.dtype), 2 * ones
            )
            differences = self._map(
                lambda _, a, b, c, d: self._differences(a, b, local, c, d), full, half, ahead, floor
            )
            return np.asarray(differences, np.float64)

        step, proposal = accurate_step(error_at, longest, proposal, self.stepper.order)
        return step, proposal, scale

    @in_precision
    def advance(
        self, state: State, t_end: float, legs: list | None = None, donate: bool = False
    ) -> State:
        """Every member at `t_end` (s), each in the legs of steps its single run would take
        (`Simulation.advance`; the stretches between the schedule edges of every member's
        sources, so a sweep that varies a schedule steps at each member's edges). `legs`,
        where given, gets each batch leg's (steps, dt) per member appended. `state` is
        always left as it is (`donate`, `Simulation.advance`'s, changes nothing here)."""
        span = float(t_end) - state.t
        if span < 0:
            raise ValueError(f"advance: t_end {t_end} s is before the state's time {state.t} s")
        if span == 0:
            return state
        bounds = self.step_bounds(state)
        fields, steps, proposal = state.fields, state.step, state.dt
        none = np.full(self.size, np.nan)
        held = state.held if state.held is not None else (none, none)
        scale = state.scale
        controlled = self.sim.error_controlled
        for start, end in stretches(self.sources, state.t, float(t_end)):
            t = np.full(self.size, start)  # each member's own legs, as its single run's
            while np.any(t < end):
                going = t < end
                dt_max, stop = np.minimum(bounds, end - t), np.full(self.size, end)
                if controlled:  # as `Simulation.advance`, member by member
                    need, step = needs_estimate(t, end, held), None
                    if np.any(need):  # the others try anything (and take nothing)
                        longest = np.where(going, dt_max, end - start)
                        step, new, seen = self._accurate_steps(fields, t, longest, proposal, scale)
                        proposal = new if proposal is None else np.where(need, new, proposal)
                        scale = {  # the others' as it was (NaN: none yet)
                            k: np.where(need, v, np.nan if scale is None else scale[k])
                            for k, v in seen.items()
                        }
                    dt_max, stop, held = next_leg(t, end, dt_max, held, step, self.sources)
                n_steps = np.array(
                    [steps_within(b - a, d) if b > a else 0 for a, b, d in zip(t, stop, dt_max)]
                )
                dt = ((stop - t) / np.maximum(n_steps, 1)).astype(self.dtype)
                fields = self._map(
                    self._advance_members,
                    t.astype(self.dtype),
                    fields,
                    dt,
                    n_steps.astype(np.int32),
                )
                steps, t = steps + int(n_steps.max()), stop
        held = held if controlled else None
        return State(t=float(t_end), fields=fields, step=steps, dt=proposal, held=held, scale=scale)

    @functools.cached_property
    def _advance_members(self):
        sim, model = self.sim, self.model

        def one(leaves, t0, fields, dt, n):
            member = _substitute(model, leaves)
            return advance_fields(sim.stepper, member, fields, t0, dt, n, sim.compensated)

        vmapped = jax.vmap(one, in_axes=(0, 0, 0, 0, 0))
        return jax.jit(vmapped, compiler_options=compilation.compiler_options())
