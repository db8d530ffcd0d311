"""Sources of species: point and region supplies with schedules (always, a window, doses).

The supply over a step is the schedule integrated over [t, t + dt], not sampled, so the amount
delivered equals rate x duration however the steps fall on the dose edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from engine.numerics.constants import MOLECULES_PER_UM3_PER_NM
from engine.numerics.grid import Grid


@jax.tree_util.register_dataclass
@dataclass(frozen=True)
class Schedule:
    """On from `start` for `duration` (s), repeated every `every` (s) for `count` doses;
    inf means forever / never repeated / unbounded. The default is always on."""

    start: float = 0.0
    duration: float = float("inf")
    every: float = float("inf")
    count: float = float("inf")


def on_time(schedule: Schedule, t, dt):
    """Seconds of [t, t + dt] during which the schedule is on.

    Worked out in the frame of t, from the dose running at (or next after) t, so that no two
    large times are subtracted: an always-on source gets exactly dt, and the amount a dose
    delivers is exact to the rounding of t itself (1e-7 of a day in float32)."""
    since = t - schedule.start
    dose = jnp.where(since > 0, jnp.floor(since / schedule.every), 0.0)
    remaining = schedule.count - dose
    offset = -jnp.where(dose > 0, since - dose * schedule.every, since)  # dose start - t

    def clip(x):
        return jnp.clip(x, 0.0, dt)

    current = clip(offset + schedule.duration) - clip(offset)
    current = jnp.where(remaining >= 1, current, 0.0)
    # later doses start at offset + every, 2 every, ...: on-time in [0, x] of those
    x = jnp.maximum(dt - offset - schedule.every, 0.0)
    later = remaining - 1
    begun = jnp.floor(x / schedule.every)  # later doses begun before x, less one
    done = jnp.minimum(begun, later)
    full = jnp.where(done > 0, done * schedule.duration, 0.0)
    partial = jnp.minimum(x - jnp.where(begun > 0, begun * schedule.every, 0.0), schedule.duration)
    return current + jnp.where(later >= 1, full + jnp.where(begun < later, partial, 0.0), 0.0)


def schedule_edges(schedule: Schedule, t0: float, t1: float) -> list[float]:
    """Times (s) strictly inside (t0, t1) where the schedule switches on or off: the steps of
    a run end there, so that no step straddles a dose's start or end. Host floats."""
    start, duration, every, count = (float(x) for x in jax.tree.leaves(schedule))
    if math.isinf(every) or count <= 1:
        doses = range(1 if count >= 1 else 0)
    else:  # only the doses that touch (t0, t1)
        first = max(0, math.floor((t0 - start - duration) / every))
        last = math.ceil((t1 - start) / every)
        doses = range(first, int(min(last, count - 1)) + 1)
    edges = []
    for k in doses:
        on = start + k * every if k else start  # (0 x an infinite period is no time)
        edges += [on, on + duration]
    return sorted(e for e in set(edges) if t0 < e < t1 and math.isfinite(e))


def model_edges(sources, t0: float, t1: float) -> list[float]:
    """`schedule_edges` of every source, merged and sorted."""
    return sorted({e for s in sources for e in schedule_edges(s.schedule, t0, t1)})


@jax.tree_util.register_dataclass
@dataclass(frozen=True, eq=False)
class Source:
    """A supply of `species` at `rate` (nM/s, scalar or per voxel) while `schedule` is on."""

    species: str = field(metadata=dict(static=True))
    rate: float | np.ndarray = 0.0
    schedule: Schedule = Schedule()

    def mean_rate(self, t, dt):
        """Mean supply (nM/s) over [t, t + dt]."""
        return self.rate * (on_time(self.schedule, t, dt) / dt)


def point_source(grid: Grid, species: str, position, rate: float, schedule=Schedule()) -> Source:
    """`rate` molecules/s released at `position` (um), spread over the voxel containing it."""
    field_rate = np.zeros(grid.shape)
    field_rate[grid.index_of(position)] = rate / (grid.voxel_volume * MOLECULES_PER_UM3_PER_NM)
    return Source(species, field_rate, schedule)


def region_source(species: str, mask: np.ndarray, rate: float, schedule=Schedule()) -> Source:
    """`rate` nM/s inside a region mask."""
    return Source(species, np.where(mask, rate, 0.0), schedule)
