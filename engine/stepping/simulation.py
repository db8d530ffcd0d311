"""`Simulation`: a model, a stepper and a time step, advanced by one jitted device loop."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import time
from dataclasses import dataclass, field

import jax
import jax.numpy as jnp
import numpy as np

from engine.model.cells import Cells, cell_parts, cells_dt
from engine.model.model import Fields, Model
from engine.model.rhs import draining_loss_rates
from engine.model.sources import model_edges
from engine.model.terms import Custom, Uptake
from engine.numerics import compilation, parallel
from engine.numerics.boundary import Dirichlet, Robin
from engine.stepping import kernels as kernels_module
from engine.stepping.steppers import (
    Explicit,
    accurate_step,
    advance_adaptive,
    advance_state,
    error_norm,
    local_error_target,
    make_stepper,
)

DTYPES = ("float32", "float64")


@dataclass(frozen=True)
class State:
    """Fields at time `t` (s) after `step` steps; `dt` (s) is the step that adaptive or
    error-controlled stepping proposes to try next (None until one has run); `held`: the
    (step s, until s) of error control's last estimate while it still holds (`holds`), so
    that the next `advance` goes on with it rather than estimating again at every output
    (one of each per member of a sweep, NaN where none holds); `scale`: each field's largest
    size (max |value|) error control has met so far in the run (`run_scale`; an array of
    one per member of a sweep; None before its first estimate)."""

    t: float
    fields: Fields
    step: int = 0
    dt: float | None = None
    cells: dict[str, Cells] = field(default_factory=dict)
    held: tuple | None = None
    scale: dict | None = None

    def numpy(self) -> dict[str, np.ndarray]:
        return {name: np.asarray(value) for name, value in self.fields.items()}

    def cells_numpy(self) -> dict[str, dict[str, np.ndarray]]:
        """Each cell type's arrays on the host: position, alive, id, each state variable,
        next_id and overflow."""
        return {name: cells_to_numpy(c) for name, c in self.cells.items()}


def cells_to_numpy(cells: Cells) -> dict[str, np.ndarray]:
    return {
        "position": np.asarray(cells.position),
        "alive": np.asarray(cells.alive),
        "id": np.asarray(cells.id).astype(np.int64),
        **{k: np.asarray(v) for k, v in cells.state.items()},
        "next_id": np.asarray(cells.next_id).astype(np.int64),
        "overflow": np.asarray(cells.overflow).astype(np.int64),
    }


def cells_from_numpy(arrays: dict, state_names, dtype) -> Cells:
    """`Cells` from host arrays (`cells_to_numpy`, a checkpoint's)."""
    return Cells(
        position=jnp.asarray(arrays["position"], dtype),
        alive=jnp.asarray(arrays["alive"], bool),
        id=jnp.asarray(arrays["id"], jnp.int32),
        state={k: jnp.asarray(arrays[k], dtype) for k in state_names},
        next_id=jnp.asarray(arrays["next_id"], jnp.int32),
        overflow=jnp.asarray(arrays["overflow"], jnp.int32),
    )


class CapacityExceeded(ValueError):
    """Cells were born with no free slot left: the run must stop (bad input: the capacity)."""


def precision(dtype) -> contextlib.AbstractContextManager:
    """The JAX precision a computation in `dtype` needs: 64-bit mode for float64, switched on
    only inside the context (nothing else in the process sees it)."""
    return jax.enable_x64(True) if jnp.dtype(dtype) == jnp.float64 else contextlib.nullcontext()


def in_precision(method):
    """Run a method of an object with a `dtype` in that dtype's `precision`."""

    @functools.wraps(method)
    def scoped(self, *args, **kwargs):
        with precision(self.dtype):
            return method(self, *args, **kwargs)

    return scoped


def stretches(sources, t0: float, t1: float) -> list[tuple[float, float]]:
    """[t0, t1] cut at the sources' schedule edges (`model_edges`): the stretches a run steps
    through, so that the supply is smooth within every step."""
    times = [t0, *model_edges(sources, t0, t1), t1]
    return list(zip(times[:-1], times[1:]))


def steps_within(span: float, dt_max: float) -> int:
    """The fewest equal steps of at most `dt_max` (s) that cover `span` (s)."""
    return max(1, math.ceil(span / dt_max * (1 - 1e-12))) if math.isfinite(dt_max) else 1


STEPS_PER_ESTIMATE = 16
"""Most steps error-controlled stepping (`Simulation.error_controlled`) takes on one
estimate of its step before it estimates again: the dynamics may change within a stretch."""


def estimate_reach(sources, t: float, step: float) -> float:
    """Until when (s) an estimate made at t (s) of the step (s) error control takes holds:
    `STEPS_PER_ESTIMATE` steps on, or the next edge of a source's schedule before that,
    where the dynamics change."""
    edges = model_edges(sources, t, t + STEPS_PER_ESTIMATE * step)
    return float(edges[0] if edges else t + STEPS_PER_ESTIMATE * step)


def holds(step, until, t):
    """Whether an estimate of `step` (s) that holds `until` (s) still holds at t (s), by more
    than a sliver of a step (arrays of members alike; NaN: none)."""
    return until - t > 1e-6 * step


NOT_HELD = (math.nan, math.nan)
"""`State.held` where no estimate holds, as `next_leg` takes it."""


def needs_estimate(t, end, held):
    """Whether error control estimates its step afresh at t (s) on the way to `end` (s): the
    `held` estimate (step, until when, s; NaN: none) no longer `holds`, and the run has still
    to go (one run's floats, or a sweep's members' arrays alike)."""
    return np.logical_and(t < end, np.logical_not(holds(*held, t)))


def next_leg(t, end, dt_max, held, step, sources):
    """Error control's next leg from t (s) towards `end` (s), in steps of at most dt_max (s):
    (dt_max, stop (s), held), one run (floats) or a sweep's members (arrays) alike. `step`:
    the step (s) estimated afresh where `needs_estimate` (elsewhere ignored), which holds
    until `estimate_reach` unless `end` cut it short."""
    step_held, until = held
    need = needs_estimate(t, end, held)
    if np.any(need):
        reach = np.vectorize(functools.partial(estimate_reach, sources))(t, step)
        kept = step < end - t
        step_held = np.where(need, np.where(kept, step, np.nan), step_held)
        until = np.where(need, np.where(kept, reach, np.nan), until)
        dt_max = np.where(need, step, dt_max)
    has = np.isfinite(step_held)
    dt_max = np.where(has, np.minimum(dt_max, step_held), dt_max)
    stop = np.where(has, np.minimum(end, until), end)
    return dt_max, stop, (step_held, until)


class UnstableStep(ValueError):
    """A fixed time step beyond the explicit stepper's stability limit (bad input)."""


class Simulation:
    """Builds the stepper for a model and advances states with it.

    Arguments:
        model: the `Model` to simulate.
        stepper: "explicit" | "imex" | "quasi_steady".
        scheme: explicit scheme, "euler" | "ssprk2" | "ssprk3".
        dt: time step (s), or "auto" for `safety` times the stepper's largest step (stability
            for explicit, the accuracy target `tolerance` for the implicit steppers),
            re-evaluated as the run goes (rates change with the fields).
        dtype: "float32" (default) or "float64" (JAX's 64-bit mode is switched on inside this
            simulation's calls only).
        safety: fraction of the stable step used by dt = "auto".
        tolerance: accuracy target of the implicit steppers' dt = "auto" and of adaptive
            stepping: the error over the run, relative to each field's largest size over the
            run (`State.scale`), is in proportion to it (`steppers.per_step_tolerance`).
        adaptive: control the step size by the local error (step doubling) instead of a fixed
            or "auto" dt (which then only sets the first step).
        max_steps: bound on the steps (accepted and rejected) of one adaptive `advance`.
        compensated: add float32 steps' increments with stochastic rounding
            (`rounding.add_stochastically`), whose errors have mean zero, so that the total is
            conserved to rounding over any number of steps, for some arithmetic per voxel;
            False rounds to nearest (float64 never needs it).
        mesh: split the fields over devices: None (one device), "auto", or devices per
            leading grid axis ([2, 2]); see `engine.parallel`.
        devices: how many devices to use (default: all for "auto", one without a mesh).
        kernels: "auto" (default: `default_kernels`), "xla", or "pallas" for each explicit
            stage as one Pallas kernel (`engine.stepping.kernels`; on a GPU only it is fast).
        kernel_launch: the Pallas kernels' tile and warps (`kernels.Launch`; by default its
            defaults), to tune them on a GPU (`benchmarks/bench_kernel_tiles.py`).
        seed: the seed of the cells' random numbers (motion, division, death): step n of a
            run draws from fold_in(key(seed), n), so a run is reproducible and resumes
            bitwise.

    A model with cells runs on one device with a fixed or "auto" dt (not adaptive, not the
    Pallas kernels); each step advances the fields with the cells' exchange frozen, then the
    cells (`steppers.advance_state`).
    """

    def __init__(
        self,
        model: Model,
        *,
        stepper: str = "explicit",
        scheme: str = "ssprk3",
        dt: float | str = "auto",
        dtype: str = "float32",
        safety: float = 0.9,
        tolerance: float = 1e-3,
        adaptive: bool = False,
        max_steps: int = 10_000_000,
        compensated: bool = True,
        mesh=None,
        devices: int | None = None,
        kernels: str = "auto",
        kernel_launch: kernels_module.Launch | None = None,
        seed: int = 0,
    ):
        number = isinstance(dt, int | float) and not isinstance(dt, bool)
        if not (dt == "auto" or (number and math.isfinite(dt) and dt > 0)):
            raise ValueError(f'time.dt: must be "auto" or a positive number of seconds, got {dt!r}')
        if not 0 < safety <= 1:
            raise ValueError(f"time.safety: must be in (0, 1], got {safety}")
        if dtype not in DTYPES:
            raise ValueError(f"time.dtype: unknown dtype {dtype!r}; use float32 or float64")
        self.dtype = jnp.dtype(dtype)
        if model.cells:
            refuse_with_cells(mesh, devices, adaptive, kernels)
        self.seed = int(seed)
        self.mesh = parallel.device_mesh(mesh, model.grid.shape, devices)
        self._grid_shape = tuple(model.grid.shape)
        self.host_model = model  # its numbers as given: where the schedules' edges are read
        with precision(self.dtype):
            self.model = self.place(model.cast(self.dtype))
        if not 0 < tolerance < 1:
            raise ValueError(f"time.tolerance: must be in (0, 1), got {tolerance}")
        if kernels not in ("auto", "xla", "pallas"):
            raise ValueError(f'kernels: must be "auto", "xla" or "pallas", got {kernels!r}')
        if kernels == "auto":
            kernels = default_kernels(model, stepper, scheme, adaptive, self.mesh)
        fused = kernels == "pallas"
        if fused and self.mesh is not None:
            raise ValueError('kernels: "pallas" runs on one device; use "xla" with a mesh')
        if fused:
            kernels_module.require_fusable(model)
        if kernel_launch is not None and not fused:
            raise ValueError('kernel_launch: only the Pallas kernels take it; add kernels="pallas"')
        if stepper == "quasi_steady":
            refuse_without_steady_state(model)
        launch = kernel_launch or kernels_module.DEFAULT_LAUNCH
        self.stepper = make_stepper(stepper, scheme, tolerance, fused, launch)
        self.adaptive = adaptive
        self.tolerance = tolerance
        self.max_steps = max_steps
        self.compensated = compensated
        self.rejected_steps = 0  # by adaptive stepping, over the simulation's life
        self.dt = dt
        self.safety = safety
        self.trace_count = 0
        self._step_numbers = jax.device_put((np.int32(0), np.int32(1)))
        options = compilation.compiler_options()
        self._advance = jax.jit(
            self._advance_traced, donate_argnums=(1, 2), compiler_options=options
        )
        self._stable_dt = jax.jit(self._stable_dt_traced)
        self._difference = jax.jit(difference_norm)
        self._sizes = jax.jit(field_sizes)
        self._advance_adaptive = jax.jit(
            self._adaptive_traced, donate_argnums=1, compiler_options=options
        )

    def place(self, tree):
        """`tree` (fields, a model) on this simulation's devices: grid-shaped arrays split
        over the mesh, the rest replicated; unchanged on one device."""
        return parallel.place(tree, self.mesh, self._grid_shape)

    @in_precision
    def load_fields(self, datasets) -> Fields:
        """Fields read from arrays or HDF5 datasets ({name: dataset}, a checkpoint) onto this
        simulation's devices: each process reads only its own devices' blocks."""
        for name, data in datasets.items():
            if tuple(data.shape[-len(self._grid_shape) :]) != tuple(self._grid_shape):
                raise ValueError(
                    f"{name!r} has shape {tuple(data.shape)}, not the grid's "
                    f"{tuple(self._grid_shape)}; not this run's"
                )
        sharding = None
        if self.mesh is not None:
            sharding = parallel.field_sharding(self.mesh, len(self._grid_shape))
        return {k: parallel.read_blocks(d, sharding, self.dtype) for k, d in datasets.items()}

    def _keep_layout(self, fields: Fields) -> Fields:
        """Pin the fields' blocks to the mesh, so that every chunk returns them as it got them."""
        if self.mesh is None:
            return fields
        blocks = parallel.field_sharding(self.mesh, len(self._grid_shape))
        return {k: jax.lax.with_sharding_constraint(v, blocks) for k, v in fields.items()}

    def _stable_dt_traced(self, model, fields, cells):
        """The stepper's limit with the cells' exchange, and the cells' `cells_dt`. The
        implicit steppers solve the cells' first-order uptake, frozen over a step, exactly:
        their accuracy target leaves it out (the explicit positivity limit keeps it)."""
        exact = self.stepper.name != "explicit"
        dt = self.stepper.stable_dt(model.coupled(cells, fields, linear_sinks=not exact), fields)
        if not model.cells:
            return dt, jnp.inf
        periodic = model.periodic_axes
        motion = cells_dt(model.cells, cells, fields, model.grid, periodic)
        return jnp.minimum(dt, motion), motion

    def _advance_traced(
        self, model, fields, cells, t0, dt, n_steps, first_step, cell_every, cell_parts
    ):
        self.trace_count += 1  # runs only while tracing: counts compilations
        key = jax.random.key(self.seed)
        with parallel.layout(self.mesh):
            fields, cells = advance_state(
                self.stepper,
                model,
                fields,
                cells,
                t0,
                dt,
                n_steps,
                first_step,
                key,
                cell_every,
                self.compensated,
                cell_parts,
            )
        return self._keep_layout(fields), cells

    def _adaptive_traced(self, model, fields, t0, t_end, dt, scale):
        self.trace_count += 1
        with parallel.layout(self.mesh):
            return advance_adaptive(
                self.stepper, model, fields, t0, t_end, dt, self.tolerance, self.max_steps, scale
            )

    @in_precision
    def initial_state(self) -> State:
        if self.mesh is None:
            fields = self.model.initial_fields(self.dtype)
            return State(t=0.0, fields=fields, cells=self.model.initial_cells(self.dtype))
        # made in place on the devices: no device ever holds a whole field
        blocks = parallel.field_sharding(self.mesh, len(self._grid_shape))
        make = jax.jit(lambda model: model.initial_fields(self.dtype), out_shardings=blocks)
        return State(t=0.0, fields=make(self.model))

    @in_precision
    def validate(self, state: State | None = None, span: float = math.inf) -> dict:
        """What a run would do: the stiffest reaction (field and rate, 1/s, a saturable sink
        at its emptied field's rate: `draining_loss_rates`), the explicit stability limit (s)
        and the step this stepper takes (s) over the next `span` (s, `time_step`); with cells,
        how many field steps a cell step spans, in how many parts it is taken (`cell_steps`)
        and each type's (count, capacity)."""
        state = self.initial_state() if state is None else state
        model = self.model.coupled(state.cells, state.fields)
        loss = draining_loss_rates(model, state.fields, state.t)
        rates = {name: float(jnp.max(rate)) for name, rate in loss.items()}
        stiffest = max(rates, key=rates.get, default=None)
        report = dict(
            stiffest_field=stiffest,
            stiffest_rate=max(rates.get(stiffest, 0.0), float(self.model.growth_rate())),
            explicit_limit=float(Explicit().stable_dt(model, state.fields)),
            dt=self.time_step(state, span),
            stepper=self.stepper.name,
        )
        if self.model.cells:
            report["cell_every"], report["cell_parts"] = self.cell_steps(state, report["dt"])
            report["cells"] = {k: (int(c.count), c.alive.shape[0]) for k, c in state.cells.items()}
        return report

    @in_precision
    def load_cells(self, arrays: dict) -> dict[str, Cells]:
        """Every cell type's `Cells` from host arrays ({type: arrays}, a checkpoint's)."""
        return {
            c.name: cells_from_numpy(arrays[c.name], c.state_names, self.dtype)
            for c in self.model.cells
        }

    @property
    def fixed_explicit_step(self) -> bool:
        """Whether every step is the explicit stepper's fixed time.dt (not "auto", not
        adaptive): a step its stability limit bounds."""
        return self.stepper.name == "explicit" and self.dt != "auto" and not self.adaptive

    def check_time_step(self, state: State) -> None:
        """Refuse a fixed time.dt beyond the explicit stepper's stability limit for `state`
        (`refuse_unstable_dt`): such a run blows up within a few steps."""
        if self.fixed_explicit_step:
            refuse_unstable_dt(self.dt, self.stable_dt(state))

    @in_precision
    def stable_dt(self, state: State) -> float:
        """The stepper's largest stable step (s) for `state` (its cells' uptake included,
        and the cells' `cells_dt`), before the safety factor."""
        return float(self._stable_dt(self.model, state.fields, state.cells)[0])

    @in_precision
    def cell_steps(self, state: State, dt: float) -> tuple[int, int]:
        """(field steps of `dt` (s) per cell step, equal parts each cell step is taken in)
        from `state`: as many field steps as fit in `cells_dt` (at least 1), so that cells
        cost little where a stability limit holds the fields' step far below theirs; one
        part, unless a fixed dt is longer than `cells_dt`, then as many as bring each within
        it (`model.cells.cell_parts`)."""
        if not self.model.cells:
            return 1, 1
        return self._cell_steps(self._steps(state)[1], dt)

    def _cell_steps(self, cells_limit: float, dt: float) -> tuple[int, int]:
        """`cell_steps` for the cells' limit `cells_limit` (s)."""
        every = self._cell_every(cells_limit, dt)
        return every, cell_parts(every * dt, cells_limit)

    def _cell_every(self, cells_limit: float, dt: float) -> int:
        """Field steps of `dt` (s) per cell step: as many as fit in `cells_limit` (s); one
        where nothing limits the cells' step but they change (a state growing from 0 that
        nothing gives a size), so that they change with the fields, not with the output;
        one under error control, whose estimates would see the cells' less frequent
        changes as transients of the fields and shorten the step (3x more steps)."""
        if self.error_controlled:
            return 1
        if not math.isfinite(cells_limit):
            return 1 if any(map(changes, self.host_model.cells)) else 2**30
        steps = self.safety * cells_limit / dt * (1 + 1e-9) if dt > 0 else 1.0
        return int(min(max(1.0, math.floor(steps)), 2**30))

    @property
    def error_controlled(self) -> bool:
        """Whether dt = "auto" is set by the local error (`steppers.accurate_step`): the
        implicit steppers' accuracy target, estimated every `STEPS_PER_ESTIMATE` steps at
        most and at every schedule edge (`advance`, `next_leg`)."""
        return self.dt == "auto" and self.stepper.name != "explicit" and not self.adaptive

    def time_step(self, state: State, span: float = math.inf) -> float:
        """The step (s) `advance` aims for over the next `span` (s) from `state`: the fixed
        dt, safety x the stable step, or the step that meets the accuracy target
        (`error_controlled`, trying at most `span`, which must then be finite unless
        `step_bound` is)."""
        bound, _ = self._steps(state)
        if not self.error_controlled:
            return bound
        return self._accurate_step(state, min(bound, span))[0]

    def step_bound(self, state: State) -> float:
        """The longest step (s) `advance` takes from `state` before any accuracy target: the
        fixed dt, or safety x the stepper's limit (stability; the implicit steppers' limits
        for doses and CG-diffused fine modes)."""
        return self._steps(state)[0]

    @in_precision
    def _steps(self, state: State) -> tuple[float, float]:
        """(`step_bound`, the cells' `cells_dt`) for `state`, computed once."""
        if self.dt != "auto" and not self.model.cells:
            return self.dt, math.inf
        stable, cells_limit = (
            float(x) for x in self._stable_dt(self.model, state.fields, state.cells)
        )
        return (self.dt if self.dt != "auto" else self.safety * stable), cells_limit

    @in_precision
    def _accurate_step(self, state: State, longest: float):
        """(step, proposal, scale): `steppers.accurate_step` from `state`, at most `longest`
        (s), trying its proposal first, its errors measured against at least the run's
        `scale` (`State.scale`, with the fields' sizes now); a trial of `longest` itself
        reuses the step `ahead` took."""
        if not math.isfinite(longest):
            raise ValueError("time_step: give the span to step over; the step is unbounded")
        fields, cells, t = state.fields, state.cells, state.t
        scale = self._scale_now(state)
        floor = {k: jnp.asarray(v, self.dtype) for k, v in scale.items()}
        target = local_error_target(self.tolerance, self.stepper.order, self.dtype)
        local = jnp.asarray(target, self.dtype)
        ahead = self._trial_steps(fields, cells, t, longest, 1)

        def error_at(h):
            h = float(h)
            full = ahead if h == longest else self._trial_steps(fields, cells, t, h, 1)
            half = self._trial_steps(fields, cells, t, h / 2, 2)
            return float(self._difference(full, half, local, ahead, floor))

        dt, proposal = accurate_step(error_at, longest, state.dt, self.stepper.order)
        return float(dt), float(proposal), scale

    def _scale_now(self, state: State) -> dict:
        """`state.scale` with the fields' sizes at `state` (`run_scale`), floats."""
        sizes = {k: float(v) for k, v in self._sizes(state.fields).items()}
        return run_scale(state.scale, sizes)

    def _trial_steps(self, fields, cells, t: float, dt: float, n_steps: int) -> Fields:
        """The fields after `n_steps` steps of `dt` (s) from t on copies of `fields` and
        `cells` (the loop donates what it is given), the cells' exchange as it is."""
        fields, cells = jax.tree.map(jnp.copy, (fields, cells))
        return self.advance_cells_and_fields(fields, cells, t, dt, n_steps, 0, 2**30)[0]

    @in_precision
    def advance(
        self, state: State, t_end: float, legs: list | None = None, donate: bool = False
    ) -> State:
        """The state at `t_end` (s), in steps no longer than `time_step` that end at every
        start and end of a source's dose in between (`stretches`), equal within each stretch,
        or with error control equal within each leg of at most `STEPS_PER_ESTIMATE` steps
        on one estimate of the step, which holds across calls (`State.held`). With cells, in
        legs of `_cell_steps_per_leg` cell steps, each setting the steps afresh.
        `legs`, where given, gets each leg's (steps, dt, cell_every, cell_parts) appended: the
        run's steps,
        to be replayed (`runs.gradients.Trajectory`).

        `state` is left as it is, unless `donate`: then its buffers are given to the
        computation (no copy: the least memory) and only the returned state may be used.
        A fixed dt is taken as given, stable or not (`check_time_step` refuses one beyond
        the explicit stability limit, as `run` does before it starts). Daughters that find
        no free slot are counted in each type's `Cells.overflow`, not raised (that would wait
        on the device): `check_capacity` raises on them, as `run` does at every frame.
        """
        span = float(t_end) - state.t
        if span < 0:
            raise ValueError(f"advance: t_end {t_end} s is before the state's time {state.t} s")
        if span == 0:
            return state
        if not donate:
            fields, cells = jax.tree.map(jnp.copy, (state.fields, state.cells))
            state = dataclasses.replace(state, fields=fields, cells=cells)
        if self.adaptive:
            for _, end in stretches(self.host_model.sources, state.t, float(t_end)):
                state = self._advance_adaptively(state, end)
            return state
        bound, cells_limit = self._steps(state)
        fields, cells, steps, proposal = state.fields, state.cells, state.step, state.dt
        held, scale = state.held or NOT_HELD, state.scale
        sources = self.host_model.sources
        cell_steps = self._cell_steps_per_leg()
        for start, end in stretches(sources, state.t, float(t_end)):
            t = start
            while t < end:
                if cell_steps and t > state.t:
                    bound, cells_limit = self._steps(State(t=t, fields=fields, cells=cells))
                dt_max, stop = min(bound, end - t), end
                if self.error_controlled:
                    step = None
                    if needs_estimate(t, end, held):
                        here = State(t=t, fields=fields, cells=cells, dt=proposal, scale=scale)
                        step, proposal, scale = self._accurate_step(here, dt_max)
                    dt_max, stop, held = next_leg(t, end, dt_max, held, step, sources)
                    dt_max, stop = float(dt_max), float(stop)
                n_steps = steps_within(stop - t, dt_max)
                refuse_uncountable_steps(n_steps, stop - t, self.stepper.name)
                dt = (stop - t) / n_steps
                every, parts = self._cell_steps(cells_limit, dt) if self.model.cells else (1, 1)
                if cell_steps and every * cell_steps < n_steps:
                    n_steps = every * cell_steps
                    stop = t + n_steps * dt
                fields, cells = self.advance_cells_and_fields(
                    fields, cells, t, dt, n_steps, steps, every, parts
                )
                if legs is not None:
                    legs.append((n_steps, dt, every, parts))
                steps, t = steps + n_steps, stop
        held = None if math.isnan(held[0]) else tuple(float(x) for x in held)
        return State(
            t=float(t_end),
            fields=fields,
            step=steps,
            dt=proposal,
            cells=cells,
            held=held,
            scale=scale,
        )

    def _cell_steps_per_leg(self) -> int:
        """How many cell steps `advance` takes before it sets the step and the cells' step
        afresh (0: no cells): the cells' receptors, states and positions change the uptake
        and the cells' own limit. One for the explicit stepper at dt = "auto", whose
        stability limit the uptake sets; else `STEPS_PER_ESTIMATE`."""
        if not self.model.cells:
            return 0
        explicit_auto = self.dt == "auto" and not self.error_controlled
        return 1 if explicit_auto else STEPS_PER_ESTIMATE

    def _advance_adaptively(self, state: State, t_end: float) -> State:
        dt = state.dt if state.dt is not None else min(self.time_step(state), t_end - state.t)
        dt = min(dt, t_end - state.t)
        scale = self._scale_now(state)
        fields, dt, accepted, rejected, scale = self._advance_adaptive(
            self.model,
            state.fields,
            jnp.asarray(state.t, self.dtype),
            jnp.asarray(t_end, self.dtype),
            jnp.asarray(dt, self.dtype),
            {k: jnp.asarray(v, self.dtype) for k, v in scale.items()},
        )
        accepted, rejected = int(accepted), int(rejected)
        if accepted + rejected >= self.max_steps:
            raise RuntimeError(
                f"adaptive stepping took {self.max_steps} steps before t = {t_end} s; "
                "raise time.tolerance or max_steps"
            )
        self.rejected_steps += rejected
        scale = {k: float(v) for k, v in scale.items()}
        return State(t=t_end, fields=fields, step=state.step + accepted, dt=float(dt), scale=scale)

    @in_precision
    def compile_stats(self, state: State, n_steps: int = 1) -> dict:
        """Seconds XLA takes to compile `advance` for `state`'s fields, and the compiled loop's
        peak memory in bytes (arguments, outputs and temporaries, less donated buffers)."""
        dt = jnp.asarray(1.0, self.dtype)
        start = time.perf_counter()
        compiled = self._advance.lower(
            self.model,
            state.fields,
            state.cells,
            jnp.asarray(state.t, self.dtype),
            dt,
            jnp.int32(n_steps),
            jnp.int32(state.step),
            jnp.int32(1),
            jnp.int32(1),
        ).compile()
        seconds = time.perf_counter() - start
        memory = compiled.memory_analysis()
        peak = None
        if memory is not None:
            peak = (
                memory.argument_size_in_bytes
                + memory.output_size_in_bytes
                + memory.temp_size_in_bytes
                - memory.alias_size_in_bytes
            )
        return dict(compile_s=seconds, peak_bytes=peak)

    @in_precision
    def advance_steps(self, fields: Fields, t0: float, dt: float, n_steps: int) -> Fields:
        """`n_steps` steps of `dt` (s) from time t0, in one device loop (donates `fields`),
        of a model without cells (`advance` steps cells too)."""
        zero, one = self._step_numbers  # on the device already: no transfer per call
        return self.advance_cells_and_fields(fields, {}, t0, dt, n_steps, zero, one, one)[0]

    @in_precision
    def advance_cells_and_fields(
        self, fields, cells, t0, dt, n_steps, first_step, cell_every=1, cell_parts=1
    ):
        """`n_steps` steps of `dt` (s) from time t0 of fields and cells in one device loop
        (donates both), numbered from `first_step` (the cells' random numbers); the cells
        step every `cell_every` field steps and after the last, each step in `cell_parts`
        parts (`steppers.advance_state`). Returns (fields, cells)."""
        return self._advance(
            self.model,
            fields,
            cells,
            jnp.asarray(t0, self.dtype),
            jnp.asarray(dt, self.dtype),
            jnp.asarray(n_steps, jnp.int32),
            jnp.asarray(first_step, jnp.int32),
            jnp.asarray(cell_every, jnp.int32),
            jnp.asarray(cell_parts, jnp.int32),
        )


def difference_norm(full: Fields, half: Fields, tolerance, ahead: Fields, floor: Fields):
    """`steppers.error_norm` of two half steps' difference from one full step, each field's
    size the largest of the half steps', `ahead`'s (the fields a step to the stretch's end
    reaches: a field that starts from 0 is measured against the size it grows to, not the
    vanishing one it has) and `floor`'s (its size over the run so far, `run_scale`: a field
    decayed far below its peak is not resolved relative to its own vanishing size)."""
    sizes = {
        k: jnp.maximum(jnp.maximum(jnp.max(jnp.abs(half[k])), jnp.max(jnp.abs(ahead[k]))), floor[k])
        for k in half
    }
    return error_norm([{k: half[k] - full[k] for k in half}], sizes, tolerance)


def field_sizes(fields: Fields) -> Fields:
    """Each field's size: its largest |value| (0-d arrays)."""
    return {name: jnp.max(jnp.abs(value)) for name, value in fields.items()}


def run_scale(scale: dict | None, sizes: dict) -> dict:
    """Each field's largest size over the run: `State.scale` (None: none yet) updated with
    the fields' `sizes` now (floats, or arrays of a sweep's members)."""
    return dict(sizes) if scale is None else {k: np.fmax(scale[k], v) for k, v in sizes.items()}


def default_kernels(model: Model, stepper: str, scheme: str, adaptive: bool, mesh) -> str:
    """ "pallas" for a one-device, fixed-step explicit run of several stages (ssprk2, ssprk3)
    on a 3D grid on a GPU, of a model the kernels fuse: there a kernel per stage ran ssprk3
    1.2-2.0x faster than XLA's fusion, its float32 compensation at no extra pass (one field
    at 512^3, 1.75 against 3.43 ms; docs/performance-notes.md); "xla" elsewhere: for euler,
    whose one stage XLA fuses as well, and on 2D grids, not measured."""
    gpu = jax.default_backend() == "gpu"
    several_stages = stepper == "explicit" and scheme in ("ssprk2", "ssprk3")
    one_device = mesh is None and not model.cells and not adaptive
    if gpu and several_stages and one_device and model.grid.ndim == 3:
        return "pallas" if kernels_module.fusable(model) else "xla"
    return "xla"


def changes(cell_type) -> bool:
    """Whether a cell type's cells change as they step: they move, divide, die or have
    state terms (else a cell step leaves them as they are)."""
    moves = cell_type.motility != 0 or cell_type.chemotaxis_species is not None
    fates = cell_type.division is not None or cell_type.death is not None
    return bool(moves or fates or cell_type.state_terms)


MAX_STEPS_PER_LOOP = 2**31 - 1
"""The most steps one device loop counts (int32)."""


def refuse_uncountable_steps(n_steps: int, span: float, stepper: str) -> None:
    """ValueError naming time.dt where covering `span` (s) takes more steps than a device
    loop counts: a step that short (a stiff rate under the explicit stepper) never ends."""
    if n_steps > MAX_STEPS_PER_LOOP:
        advice = 'time.stepper = "imex"' if stepper == "explicit" else "a longer time.dt"
        raise ValueError(
            f"time.dt: {span:g} s would take {n_steps:.3g} steps of {span / n_steps:.3g} s, more "
            f"than a device loop counts (2^31); the stiffest rate sets that step: use {advice}"
        )


def refuse_without_steady_state(model: Model) -> None:
    """ValueError naming a species that nothing removes (no decay, uptake by a population
    or by cells, Python reactions, nor a dirichlet or robin face): it has no steady state for the
    quasi_steady stepper to hold it at (its total grows with any supply, else any uniform
    level is one)."""
    if model.reactions is not None or any(isinstance(t, Custom) for t in model.terms):
        return  # Python reactions may remove any field
    taken = {t.species for t in model.terms if isinstance(t, Uptake)}
    taken |= {u.species for c in model.cells for u in c.uptake}
    for s in model.species:
        faces = [f for pair in model.boundary(s).faces for f in pair]
        absorbing = any(isinstance(f, Dirichlet | Robin) for f in faces)
        if not (np.any(np.asarray(s.decay) > 0) or s.name in taken or absorbing):
            raise ValueError(
                f"time.stepper: quasi_steady holds species at their steady state, and "
                f"{s.name} has none without a loss; give species.{s.name}.decay, an uptake, "
                'or a dirichlet or robin face, or use time.stepper = "imex"'
            )


def refuse_with_cells(mesh, devices, adaptive: bool, kernels: str) -> None:
    """ValueError naming the option that runs with cells do not support."""
    if mesh is not None or (devices is not None and devices > 1):
        raise ValueError(
            "parallel.mesh: runs with cells use one device; remove parallel.mesh and --devices"
        )
    if adaptive:
        raise ValueError('time.adaptive: not supported with cells; use a fixed dt or "auto"')
    if kernels == "pallas":
        raise ValueError('kernels: "pallas" does not step cells; use "xla"')


def check_capacity(state: State) -> None:
    """CapacityExceeded naming the cell type and the key to raise if any daughter found no
    free slot by `state` (the run stops: cells are never silently dropped)."""
    for name, cells in state.cells.items():
        refused = int(cells.overflow)
        if refused:
            alive = int(cells.count)
            raise CapacityExceeded(
                f"cells.{name}.capacity: {refused} daughters found no free slot by "
                f"t = {state.t:g} s ({alive} cells alive); raise cells.{name}.capacity"
            )


def refuse_unstable_dt(dt: float, limit: float) -> None:
    """UnstableStep naming time.dt if the fixed step `dt` (s) exceeds the explicit stability
    limit `limit` (s)."""
    if dt > limit * (1 + 1e-6):
        raise UnstableStep(
            f"time.dt: {dt:g} s exceeds the explicit stepper's stability limit, {limit:.4g} s "
            f'at the start; use time.dt = "auto", a step of at most {limit:.4g} s, or '
            'time.stepper = "imex"'
        )
