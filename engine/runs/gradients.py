"""Differentiating a run: gradients of any scalar function of its frames with respect to named
model parameters, fits of parameters to observed fields, and sensitivity tables.

A `Trajectory` is the run as a pure function of the parameter values: frames at given times,
in the steps a run at the config's values takes (its dt, or the steps its "auto" dt takes
there, frozen so that the derivative is that of one discrete map). Its loop is a `lax.scan`
over segments of about sqrt(n) steps, each rematerialised on the backward pass
(`jax.checkpoint`): reverse-mode memory grows as sqrt(n) states, not n.

Which steppers reverse-mode differentiation goes through (forward mode goes through all):

- explicit (every scheme): yes.
- imex: yes, except with chemotaxis, whose drift is sub-cycled a number of times that depends
  on the fields (a while loop; reverse mode cannot replay it). The CG solves of TR-BDF2 are
  differentiated implicitly (the adjoint is another solve), the spectral step exactly.
- quasi_steady: no. Its Picard iteration runs to convergence in a while loop; forward mode
  differentiates the converged iteration.
- adaptive stepping: no (the accepted steps depend on the values; fix dt instead).

With individual cells, the trajectory steps fields and cells as `Simulation.advance` does (a
cell step after every `cell_every` field steps, frozen as the steps are; the same random
numbers). Derivatives flow
through what is continuous in the parameters: the cells' secretion and uptake, their state
ODEs and the fields; not through where the random walk and chemotaxis put a cell (the voxel
it sits in is piecewise constant in its position) nor through division and death (events).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from dataclasses import dataclass

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from engine.config.errors import ConfigError
from engine.config.parameters import Parameters, numeric_keys
from engine.config.schema import Config
from engine.model.model import Fields
from engine.numerics import compilation
from engine.numerics.constants import MOLECULES_PER_UM3_PER_NM
from engine.post.analysis import format_time, text_table
from engine.runs.simulation import Simulation
from engine.stepping.simulation import in_precision, precision, steps_within, stretches
from engine.stepping.steppers import cells_after

MODES = ("reverse", "forward")


def _checkpointed_steps(step: Callable, fields: Fields, t0, dt, n: int, segment: int | None):
    """`n` (static) steps of `step(fields, t)` from t0: a scan over segments of `segment`
    steps (default about sqrt(n)), each segment recomputed on the backward pass."""
    length = segment or max(1, math.isqrt(n))
    outer, rest = divmod(n, length)

    def segment_of(count):
        @jax.checkpoint
        def run(carry):
            def one(c, _):
                u, i = c
                return (step(u, t0 + i * dt), i + 1), None

            return lax.scan(one, carry, None, length=count)[0]

        return run

    carry = (fields, jnp.zeros((), jnp.int32))
    if outer:
        whole = segment_of(length)
        carry = lax.scan(lambda c, _: (whole(c), None), carry, None, length=outer)[0]
    if rest:
        carry = segment_of(rest)(carry)
    return carry[0]


class Trajectory:
    """A config's run as a pure, differentiable function of some of its parameters:
    `trajectory(values)` -> {field: (n_times, *grid)} at `times`.

    Arguments:
        cfg: the config (float64 recommended for gradients).
        params: config keys of the parameters (`species.IL2.diffusion`, `terms[0].rate`), or
            their `Parameters`.
        times: frame times (s), increasing, within [0, time.end] (default: the run's output
            times).
        segment: steps per rematerialised segment (default about sqrt of the steps).
    """

    def __init__(self, cfg: Config, params, times=None, segment: int | None = None):
        from engine.runs.driver import output_times

        self.config = cfg
        self.sim = Simulation(cfg, mesh=None, kernels="xla")
        if self.sim.adaptive:
            raise ConfigError(
                "time.adaptive: gradients need fixed steps; set time.adaptive = false"
            )
        self.parameters = params if isinstance(params, Parameters) else Parameters.of(cfg, params)
        times = output_times(cfg.time.end, cfg.time.output_every) if times is None else times
        self.times = np.asarray(times, dtype=np.float64).reshape(-1)
        if self.times.size == 0 or self.times[0] < 0 or np.any(np.diff(self.times) <= 0):
            raise ValueError("times: give increasing frame times >= 0 s")
        self.segment = segment
        self._plan = self._intervals()

    @property
    def keys(self) -> tuple[str, ...]:
        return self.parameters.keys

    @property
    def values(self) -> np.ndarray:
        """The parameters' values in the config (engine units)."""
        return self.parameters.values

    def _intervals(self) -> list[tuple[int, tuple[tuple[int, float, int, int], ...]]]:
        """Runs of equal intervals between frames: (frames in the run, the interval's legs
        as (steps, step size s, field steps per cell step, parts of a cell step)), the steps
        `Simulation.advance` takes at the config's values (recorded from such a run where the
        accuracy target sets them); no legs for a frame at t = 0."""
        plan: list[tuple[int, tuple[tuple[int, float, int, int], ...]]] = []
        starts = np.concatenate([[0.0], self.times])
        sim = self.sim
        state = sim.initial_state()
        dt = None if sim.error_controlled else sim.time_step(state)
        every, parts = (1, 1) if dt is None else sim.cell_steps(state, dt)
        for a, b in zip(starts[:-1].tolist(), starts[1:].tolist()):
            legs: list = []
            if b > a and dt is None:
                state = sim.advance(state, b, legs)
            elif b > a:
                for start, end in stretches(sim.host_model.sources, a, b):
                    n = steps_within(end - start, dt)
                    legs.append((n, (end - start) / n, every, parts))
            segments = tuple(legs)
            if plan and plan[-1][1] == segments:
                plan[-1] = (plan[-1][0] + 1, segments)
            else:
                plan.append((1, segments))
        return plan

    @property
    def dtype(self):
        return self.sim.dtype

    @in_precision
    def __call__(self, values) -> dict[str, jax.Array]:
        sim = self.sim
        model = self.parameters.bind(sim.model, jnp.asarray(values, sim.dtype))
        fields = model.initial_fields(sim.dtype)
        frames = []
        t = 0.0
        ready = sim.stepper.prepare(model)
        key = jax.random.key(sim.seed)
        state = (fields, model.initial_cells(sim.dtype), jnp.zeros((), jnp.int32))
        for count, segments in self._plan:
            if not segments:  # a frame at t = 0
                frames.append(jax.tree.map(lambda x: x[None], fields))
                continue

            def interval(carry, _, segments=segments):
                state, time = carry
                for n, dt, every, parts in segments:
                    if not model.cells:

                        def step(s, time, dt=dt):
                            return sim.stepper.step(model, ready, s[0], time, dt), *s[1:]

                        state = _checkpointed_steps(step, state, time, dt, n, self.segment)
                    else:
                        every = min(every, n)
                        groups, rest = divmod(n, every)

                        def group(s, time, dt=dt, g=every, parts=parts):
                            return _cells_group(
                                sim.stepper, model, ready, s, time, dt, g, key, parts
                            )

                        state = _checkpointed_steps(
                            group, state, time, every * dt, groups, self.segment
                        )
                        if rest:
                            later = time + groups * every * dt
                            state = _cells_group(
                                sim.stepper, model, ready, state, later, dt, rest, key, parts
                            )
                    time = time + n * dt
                return (state, time), state[0]

            (state, _), block = lax.scan(
                interval, (state, jnp.asarray(t, sim.dtype)), None, length=count
            )
            frames.append(block)
            t += count * sum(n * dt for n, dt, *_ in segments)
        return {name: jnp.concatenate([f[name] for f in frames]) for name in model.names}


def _cells_group(stepper, model, ready, state, t0, dt, steps: int, key, parts: int):
    """`steps` (static) field steps of `dt` with the cells' exchange fixed at their start,
    then one cell step over them in `parts` (static) parts: one stretch of
    `steppers.advance_state`, as a scan."""
    fields, population, number = state
    coupled = model.coupled(population, fields)

    def one(u, i):
        return stepper.step(coupled, ready, u, t0 + i * dt, dt), None

    fields = lax.scan(one, fields, jnp.arange(steps))[0]
    population = cells_after(model, population, fields, steps, dt, key, number + steps, parts)
    return fields, population, number + steps


def _check_mode(trajectory: Trajectory, mode: str, forward: bool = True) -> None:
    """ConfigError where reverse mode cannot differentiate the run's stepper; its advice
    offers forward mode only where the caller has it (`forward`; fits have not)."""
    if mode not in MODES:
        raise ValueError(f"mode: {mode!r}; use reverse or forward")
    if mode == "forward":
        return
    sim = trajectory.sim
    drifting = any(p.chemotaxis_species for p in sim.model.populations)
    if sim.stepper.name == "quasi_steady":
        why, other = "relaxes species in a while loop", "imex"
    elif sim.stepper.name == "imex" and drifting:
        why, other = "sub-cycles chemotaxis a field-dependent number of times", "explicit"
    else:
        return
    if forward:
        advice = f'mode="forward" or time.stepper = "{other}"'
    else:
        advice = f"--set time.stepper={other} (fits differentiate in reverse mode)"
    raise ConfigError(
        f"time.stepper: {sim.stepper.name} {why}, which reverse mode cannot differentiate; "
        f"use {advice}"
    )


def in_config_precision(function):
    """Run `function(cfg, ...)` in the precision of the config's time.dtype."""

    @functools.wraps(function)
    def scoped(cfg: Config, *args, **kwargs):
        with precision(cfg.time.dtype):
            return function(cfg, *args, **kwargs)

    return scoped


@in_config_precision
def value_and_gradient(
    cfg: Config,
    loss: Callable[[dict], jax.Array],
    params,
    times=None,
    mode: str = "reverse",
    segment: int | None = None,
) -> tuple[float, dict[str, float]]:
    """(loss, {key: d loss / d parameter}) of a scalar `loss(frames)` of the run's frames
    ({field: (n_times, *grid)} at `times`, default the output times), parameters in engine
    units. `mode`: "reverse" (one backward pass for all parameters) or "forward" (one
    tangent per parameter; goes through every stepper)."""
    trajectory = Trajectory(cfg, params, times, segment)
    _check_mode(trajectory, mode)

    def objective(values):
        return loss(trajectory(values))

    values = jnp.asarray(trajectory.values, trajectory.sim.dtype)
    if mode == "reverse":
        compute = jax.value_and_grad(objective)
    else:
        compute = lambda v: (objective(v), jax.jacfwd(objective)(v))  # noqa: E731
    value, grad = jax.jit(compute, compiler_options=compilation.compiler_options())(values)
    return float(value), dict(zip(trajectory.keys, np.asarray(grad, dtype=np.float64).tolist()))


def gradient(cfg: Config, loss, params, times=None, mode: str = "reverse", segment=None):
    """{key: d loss / d parameter} (see `value_and_gradient`)."""
    return value_and_gradient(cfg, loss, params, times, mode, segment)[1]


# ----------------------------------------------------------------------------------------------
# sensitivity


@dataclass(frozen=True)
class Sensitivity:
    """d summary / d parameter of one parameter: its value (engine units), the derivative and
    the elasticity (value / summary x derivative: the % change of the summary per % change
    of the parameter)."""

    key: str
    value: float
    derivative: float
    elasticity: float


def sensitivity(cfg: Config, summary: str | None = None, params=None) -> list[Sensitivity]:
    """d(total of `summary` at time.end)/d(parameter) for every numeric model parameter (or
    `params`), in one backward pass; ranked by |elasticity|."""
    from engine.config.build import build_grid

    summary = summary or cfg.field_names[0]
    if summary not in cfg.field_names:
        raise ConfigError(
            f"summary: unknown field {summary!r}; fields: {', '.join(cfg.field_names)}"
        )
    keys = numeric_keys(cfg) if params is None else list(params)
    parameters = Parameters.of(cfg, keys, skip_invalid=params is None)
    grid = build_grid(cfg)
    factor = grid.voxel_volume * (MOLECULES_PER_UM3_PER_NM if summary in cfg.species else 1.0)

    def total(frames):
        return jnp.sum(frames[summary][-1]) * factor

    value, grads = value_and_gradient(cfg, total, parameters, times=[cfg.time.end])
    rows = [
        Sensitivity(k, float(v), grads[k], float(v) * grads[k] / value if value else 0.0)
        for k, v in zip(parameters.keys, parameters.values)
    ]
    return sorted(rows, key=lambda r: -abs(r.elasticity))


# ----------------------------------------------------------------------------------------------
# fitting


@dataclass(frozen=True)
class Observed:
    """Observed fields at times: {field: (n_times, *grid)} in the field's units."""

    times: np.ndarray
    fields: dict[str, np.ndarray]

    @classmethod
    def read(cls, source, names=None) -> Observed:
        """From an ilsim output file (path or open Output), a dict with "time" and fields,
        or an Observed; `names` picks fields (default: all of the source's)."""
        from engine.io.layout import unreadable
        from engine.io.reader import Output, open_output

        if isinstance(source, Observed):
            observed = source
        elif isinstance(source, dict):
            fields = {k: np.asarray(v, np.float64) for k, v in source.items() if k != "time"}
            observed = cls(np.asarray(source["time"], np.float64), fields)
        else:
            try:
                out = source if isinstance(source, Output) else open_output(source)
            except OSError as error:
                raise ValueError(f"data: {unreadable(source, error)}") from None
            try:
                fields = {
                    n: np.asarray(out.field(n)[: out.n_frames], np.float64) for n in out.fields
                }
                observed = cls(np.asarray(out.time, np.float64), fields)
            finally:
                if out is not source:
                    out.close()
        if names is not None:
            missing = [n for n in names if n not in observed.fields]
            if missing:
                raise ValueError(
                    f"data: no field {', '.join(missing)} in the observations; they hold "
                    f"{', '.join(observed.fields)}"
                )
            observed = cls(observed.times, {n: observed.fields[n] for n in names})
        return observed


@dataclass(frozen=True)
class FitResult:
    """Fitted parameters (engine units) with their standard errors from the Gauss-Newton
    approximation of the covariance (sigma^2 (J^T J)^-1 in log-parameters, sigma^2 the
    residual variance), the start values, and how the optimisation went."""

    keys: tuple[str, ...]
    values: np.ndarray
    std: np.ndarray
    start: np.ndarray
    covariance: np.ndarray  # of the log-parameters
    loss: float  # mean squared scaled residual at the fit
    iterations: int
    converged: bool

    def table(self) -> str:
        """The fitted values as a text table."""
        header = ("parameter", "fitted", "std error", "rel. error", "start")
        rows = [
            (k, f"{v:.6g}", f"{s:.3g}", f"{s / abs(v):.2%}" if v else "-", f"{s0:.6g}")
            for k, v, s, s0 in zip(self.keys, self.values, self.std, self.start)
        ]
        state = "converged" if self.converged else "NOT converged"
        return (
            f"{text_table(header, rows)}\n{state} after {self.iterations} iterations; mean "
            f"squared scaled residual {self.loss:.4g}"
        )


def _check_observed(data: Observed, names, grid_shape) -> None:
    """ValueError, naming the field and frame, where an observed field to fit is not the
    run's frames, (n_times, *grid), or holds a value that is not finite."""
    expected = (len(data.times), *grid_shape)
    for n in names:
        values = data.fields[n]
        if values.shape != expected:
            raise ValueError(
                f"data: field {n} has shape {values.shape}, the run's frames are {expected}"
            )
        finite = np.isfinite(values).reshape(len(values), -1).all(axis=1)
        if not finite.all():
            k = int(np.argmin(finite))
            raise ValueError(
                f"data: field {n}, frame {k + 1}/{len(values)} (t = {format_time(data.times[k])}) "
                "holds NaN or inf; fit observations of finite values"
            )


@in_config_precision
def fit(
    cfg: Config,
    observed,
    params,
    *,
    fields=None,
    max_iterations: int = 100,
    tolerance: float = 1e-6,
    segment: int | None = None,
) -> FitResult:
    """Fit the parameters `params` (config keys; the config's values are the start) to
    observed fields by least squares: residuals of each field scaled by its observed maximum,
    minimised over the log of each parameter (which keeps it positive) with L-BFGS (optax),
    through the differentiated solver. Stops when the gradient in log-parameters falls below
    `tolerance` or after `max_iterations`.

    `observed`: an ilsim output file, an Observed, or {"time": t, field: (n_times, *grid)};
    `fields` picks the observed fields to fit (default: those the model has)."""
    import optax

    data = Observed.read(observed, fields)
    names = fields or [n for n in data.fields if n in cfg.field_names]
    if not names:
        raise ValueError(
            f"data: none of the observed fields ({', '.join(data.fields)}) is a field of the "
            f"model ({', '.join(cfg.field_names)})"
        )
    _check_observed(data, names, cfg.grid.shape)
    trajectory = Trajectory(cfg, params, data.times, segment)
    _check_mode(trajectory, "reverse", forward=False)
    start = trajectory.values
    if np.any(start <= 0):
        bad = [k for k, v in zip(trajectory.keys, start) if v <= 0]
        raise ConfigError(f"{bad[0]}: fits start from a positive value (fitted as its log)")
    dtype = trajectory.sim.dtype
    scales = {n: max(float(np.max(np.abs(data.fields[n]))), 1e-300) for n in names}
    targets = {n: jnp.asarray(data.fields[n] / scales[n], dtype) for n in names}

    def residuals(log_values):
        frames = trajectory(jnp.exp(log_values))
        return jnp.concatenate([(frames[n] / scales[n] - targets[n]).ravel() for n in names])

    def objective(log_values):
        return jnp.mean(residuals(log_values) ** 2)

    optimiser = optax.lbfgs()
    value_and_grad = optax.value_and_grad_from_state(objective)

    @functools.partial(jax.jit, compiler_options=compilation.compiler_options())
    def iterate(u, state):
        value, grad = value_and_grad(u, state=state)
        updates, state = optimiser.update(
            grad, state, u, value=value, grad=grad, value_fn=objective
        )
        return optax.apply_updates(u, updates), state, value, jnp.linalg.norm(grad)

    u = jnp.log(jnp.asarray(start, dtype))
    # strong types from the start: the first update makes optax's weak-typed scalars strong,
    # which would compile `iterate` a second time
    state = jax.tree.map(lambda x: jnp.asarray(x, dtype=jnp.result_type(x)), optimiser.init(u))
    iterations = 0
    converged = False
    while iterations < max_iterations and not converged:
        u, state, _, norm = iterate(u, state)
        iterations += 1
        converged = float(norm) < tolerance
    jacobian = jax.jit(jax.jacfwd(residuals), compiler_options=compilation.compiler_options())
    jacobian = np.asarray(jacobian(u), np.float64)
    r = np.asarray(residuals(u), np.float64)
    dof = max(r.size - len(start), 1)
    covariance = float(r @ r) / dof * np.linalg.pinv(jacobian.T @ jacobian)
    values = np.exp(np.asarray(u, np.float64))
    return FitResult(
        keys=trajectory.keys,
        values=values,
        std=values * np.sqrt(np.clip(np.diag(covariance), 0, None)),
        start=start,
        covariance=covariance,
        loss=float(r @ r) / r.size,
        iterations=iterations,
        converged=converged,
    )
