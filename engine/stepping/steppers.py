"""Time steppers: pure `step(model, prepared, fields, t, dt) -> fields` functions.

Every stepper has the same interface, so every stepper runs in the one `advance_fields` loop
that `Simulation` and `Ensemble` share:

- `prepare(model)`: loop-invariant work done once per `advance` (face coefficients, ...).
- `step(model, prepared, fields, t, dt)`: one step from t to t + dt.
- `stable_dt(model, fields)`: the largest step (s) the scheme tolerates, before the safety factor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar, Protocol

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from engine.model.cells import Cells, step_population_over
from engine.model.model import Fields, Model
from engine.model.rhs import (
    chemotaxis_terms,
    diffusion_terms,
    euler_change,
    face_diffusivities,
    field_couplings,
    positivity_rate,
    reaction_terms,
    source_terms,
)
from engine.numerics import operators, rounding, solvers, spectral
from engine.stepping import kernels


class Stepper(Protocol):
    name: str
    fused: bool  # its steps run as the Pallas kernels (`kernels`), not XLA's fusion

    @property
    def order(self) -> int: ...

    def prepare(self, model: Model) -> Any:
        """Loop-invariant data of the steps (whatever their dt), made once per loop."""

    def step(self, model: Model, prepared: Any, fields: Fields, t, dt) -> Fields: ...

    def stable_dt(self, model: Model, fields: Fields): ...


# Shu-Osher form of the strong-stability-preserving Runge-Kutta schemes: stage k is
# a_k u^n + b_k E(u_{k-1}, t + c_k dt), where E is one forward-Euler step.
SSP_SCHEMES: dict[str, tuple[tuple[float, float, float], ...]] = {
    "euler": ((0.0, 1.0, 0.0),),
    "ssprk2": ((0.0, 1.0, 0.0), (0.5, 0.5, 1.0)),
    "ssprk3": ((0.0, 1.0, 0.0), (0.75, 0.25, 1.0), (1 / 3, 2 / 3, 0.5)),
}
SSP_ORDER = {"euler": 1, "ssprk2": 2, "ssprk3": 3}


def ghost_copies(couplings, fields: Fields, names) -> Fields:
    """The fields in `names` with one layer of ghost voxels per face, stored once
    (`operators.with_ghosts`, from each field's `field_couplings`): what stencils read their
    neighbours from."""
    return {name: operators.with_ghosts(fields[name], couplings[name]) for name in names}


def euler_increment(model: Model, couplings, fields: Fields, supply: Fields, t, dt):
    """The change over one forward-Euler step of the whole right-hand side:
    f_new - f = dt (transport + production + supply - loss_rate f).

    f_new is non-negative whenever dt is within the positivity limit (`positivity_rate`).
    `couplings`: `field_couplings(model)`.
    """
    # every term reads the fields from their ghost-padded copies (see operators.with_ghosts)
    padded = ghost_copies(couplings, fields, model.names)
    fields = {name: operators.interior_of(value) for name, value in padded.items()}
    gain = diffusion_terms(model, couplings, fields, padded)
    for name, drift in chemotaxis_terms(model, fields).items():
        gain[name] = gain[name] + drift
    production, loss = reaction_terms(model, fields, t)
    return euler_change(model.names, fields, gain, production, supply, loss, dt)


@dataclass(frozen=True)
class Explicit:
    """SSP Runge-Kutta (`euler`, `ssprk2`, `ssprk3`) of the whole right-hand side: order 1, 2
    and 3 with reactions, and non-negative at steps within the forward-Euler positivity limit
    (`stable_dt`), which SSP schemes inherit. Sinks far faster than transport make that limit
    small: the imex stepper takes them exactly.

    The step is formed as an increment of the state (stage k - u^n = b_k (previous increment +
    Euler increment)), so the loop can add it with compensated summation and conserve the total
    amount to float32 rounding over any number of steps."""

    scheme: str = "ssprk3"
    name: str = "explicit"
    fused: bool = False  # each stage's increment in one Pallas kernel (`kernels`)
    launch: kernels.Launch = kernels.DEFAULT_LAUNCH  # the fused kernels' tile and warps

    def __post_init__(self):
        if self.scheme not in SSP_SCHEMES:
            raise ValueError(
                f"time.scheme: unknown scheme {self.scheme!r}; use one of {', '.join(SSP_SCHEMES)}"
            )

    @property
    def order(self) -> int:
        return SSP_ORDER[self.scheme]

    def prepare(self, model: Model):
        """The face couplings, built once: rebuilt in the loop they cost small device
        kernels every step (XLA does not hoist a vector built from a scalar); the fused
        kernels take them as `kernels.face_rates`."""
        couplings = field_couplings(model)
        return kernels.face_rates(couplings) if self.fused else couplings

    def increment(self, model: Model, prepared, fields: Fields, t, dt) -> Fields:
        """u^{n+1} - u^n. The stages run as a device loop: its carry stores each stage's
        increment once, where XLA would otherwise fuse it into the next stage's consumers
        and recompute every earlier stage in each, which made ssprk3 several times costlier
        (docs/performance-notes.md)."""
        supply = source_terms(model, t, dt)
        scheme = SSP_SCHEMES[self.scheme]
        if len(scheme) == 1:
            return euler_increment(model, prepared, fields, supply, t, dt)
        weights = jnp.asarray([b for _, b, _ in scheme], jnp.result_type(dt))
        offsets = jnp.asarray([c for _, _, c in scheme], weights.dtype)

        def stage(k, total):
            u = {name: fields[name] + total[name] for name in fields}
            at = t + offsets[k] * dt
            euler = euler_increment(model, prepared, u, supply, at, dt)
            return {name: weights[k] * (total[name] + euler[name]) for name in fields}

        zeros = {name: jnp.zeros_like(value) for name, value in fields.items()}
        return lax.fori_loop(0, len(scheme), stage, zeros)

    def step(self, model: Model, prepared, fields: Fields, t, dt) -> Fields:
        if self.fused:
            return self.fused_step(model, prepared, fields, t, dt)
        change = self.increment(model, prepared, fields, t, dt)
        return {k: fields[k] + change[k] for k in fields}

    def fused_step(self, model: Model, prepared, fields: Fields, t, dt, rounding_step=None):
        """The step as one Pallas kernel per stage (`kernels.fused_stage`), the last adding
        the increment to the fields in its own pass, with stochastic rounding where
        `rounding_step` (`rounding.step_counter`) is given: a float32 step then conserves
        at the memory traffic of an uncompensated one."""
        supply = source_terms(model, t, dt)
        scheme = SSP_SCHEMES[self.scheme]
        total = None
        for k, (_, weight, offset) in enumerate(scheme):
            last = k == len(scheme) - 1
            total = kernels.fused_stage(
                model,
                prepared,
                fields,
                supply,
                t + offset * dt,
                dt,
                total,
                weight,
                add_fields=last,
                rounding_step=rounding_step if last else None,
                launch=self.launch,
            )
        return total

    def stable_dt(self, model: Model, fields: Fields):
        """1 / (largest transport + loss rate of a voxel + growth rate bound): the
        forward-Euler positivity limit, which SSP schemes inherit (their SSP coefficient is 1),
        and the explicit stability limit of growth."""
        return 1.0 / (positivity_rate(model, fields) + model.growth_rate())


# --- implicit-diffusion steppers -----------------------------------------------------------

TR_BDF2_GAMMA = 2 - 2**0.5
"""TR-BDF2 with this stage fraction solves the same matrix in both stages."""


def reaction_change(model: Model, prepared, fields: Fields, t, dt, names) -> Fields:
    """The change over dt of the fields in `names` under the linear part (diffusion, decay)
    with the reactions and supply: production and supply as forcing and sinks as per-voxel
    loss rates, both averaged between the start and a predictor (second order), solved with
    the linear part without splitting (`linear_change`). Exact for constant forcing and
    sinks, non-negative, and free of the errors that splitting a stiff diffusion from sharply
    localised secretion or from sinks that differ from voxel to voxel would cause."""
    supply = source_terms(model, t, dt)

    def forcing(production):  # only the fields that have any
        return {
            n: production.get(n, 0.0) + supply.get(n, 0.0)
            for n in names
            if n in production or n in supply
        }

    def sinks(loss):
        return {n: v for n, v in loss.items() if n in names}

    start, start_loss = reaction_terms(model, fields, t, decay=False)
    change = linear_change(
        model, prepared, fields, forcing(start), sinks(start_loss), dt, implicit=False
    )
    predictor = {k: v + change[k] if k in change else v for k, v in fields.items()}
    end, end_loss = reaction_terms(model, predictor, t + dt, decay=False)
    mean = {n: (start[n] + end[n]) / 2 for n in start}
    mean_loss = {n: (start_loss[n] + end_loss[n]) / 2 for n in sinks(start_loss)}
    return linear_change(model, prepared, fields, forcing(mean), mean_loss, dt, implicit=True)


def error_norm(errors: list[Fields], fields: Fields, tolerance: float):
    """Largest error relative to `tolerance` x each field's maximum (<= 1: step accepted);
    `fields`: the fields, or each field's size (0-d)."""
    worst = jnp.zeros(())  # 0 where there are no fields (a model of cells only)
    for error in errors:
        for name, e in error.items():
            scale = tolerance * jnp.maximum(jnp.max(jnp.abs(fields[name])), 1e-30)
            worst = jnp.maximum(worst, jnp.max(jnp.abs(e)) / scale)
    return worst


ERROR_TRIALS = 8
"""Most step-doubling trials `accurate_step` makes before it takes the step it has."""

LOCAL_SHARE = 0.1
"""The share of the per-step tolerance (`per_step_tolerance`) one step's local error may
take: the error over a trajectory is the sum of the local errors that the dynamics have not
yet damped (measured: 1.3 to 4.5 times the local target on V5, `infection_resolution` and
`il2_therapy`, 14 to 20 on `autoimmune`, whose feedback amplifies them; docs/numerics.md)."""

CALIBRATED_TOLERANCE = 1e-3
"""The tolerance (the default) at which a step's tolerance is `time.tolerance` itself."""


def per_step_tolerance(tolerance: float, order: int) -> float:
    """What one step's error may be, relative to each field's size, for a run whose error is
    in proportion to `tolerance`: the tolerance itself at `CALIBRATED_TOLERANCE`, and
    tolerance^((p+1)/p) around it (Hairer and Wanner's tolerance map). A scheme of order p
    errs by h^(p+1) per step and by h^p over a run, so a step error in fixed proportion to
    the tolerance gives a run error of tolerance^(p/(p+1)), which falls behind a tightening
    tolerance (imex on `infection_resolution`: 0.08 of it at 1e-2, 2.8x it at 1e-6)."""
    ratio = tolerance / CALIBRATED_TOLERANCE
    return CALIBRATED_TOLERANCE * ratio ** ((order + 1) / order)


RESOLVED_ULPS = 16
"""The least step-doubling difference error control asks for, in units of the dtype's
resolution (eps) relative to each field's size: rounding leaves 1-1.5 eps of noise in the
difference (float32, measured on V5, Gray-Scott and the seed scenarios), below which a target
would shrink the steps to `SHORTEST_SHARE` without making them any more accurate."""


def local_error_target(tolerance: float, order: int, dtype) -> float:
    """The step-doubling error one step may make under error control (dt = "auto" and
    adaptive), relative to each field's size: `LOCAL_SHARE` of `per_step_tolerance`, and no
    less than `RESOLVED_ULPS` of `dtype`'s resolution (in float32 that bounds tolerances below
    about 7e-5 for imex: the run's error cannot follow them; float64 can)."""
    resolved = RESOLVED_ULPS * float(np.finfo(dtype).eps)
    return max(LOCAL_SHARE * per_step_tolerance(tolerance, order), resolved)


def step_doubling_error(
    stepper: Stepper, model: Model, prepared, fields: Fields, t, h, tolerance, floor=None
):
    """One step of h against two of h/2 from `fields` at t: their largest difference relative
    to `tolerance` x each field's size (`error_norm`; <= 1: within the tolerance), the two
    half steps' result, and the sizes. A field's size is its maximum after the half steps, or
    its `floor` (its largest size over the run, 0-d) where that is larger. The difference is
    2^p - 1 times the half steps' local error where the scheme has reached its order p, and a
    bound on it where long steps over transients have not."""
    full = stepper.step(model, prepared, fields, t, h)
    half = stepper.step(model, prepared, fields, t, h / 2)
    half = stepper.step(model, prepared, half, t + h / 2, h / 2)
    sizes = {k: jnp.max(jnp.abs(v)) for k, v in half.items()}
    if floor is not None:
        sizes = {k: jnp.maximum(v, floor[k]) for k, v in sizes.items()}
    return error_norm([{k: half[k] - full[k] for k in fields}], sizes, tolerance), half, sizes


def step_factor(error, order: int, safety: float = 0.9):
    """How much to scale a step whose `error_norm` was `error` for the next one to meet it:
    safety x error^(-1/(p+1)), within 0.2x..5x."""
    return jnp.clip(safety * jnp.maximum(error, 1e-12) ** (-1 / (order + 1)), 0.2, 5.0)


SHORTEST_SHARE = 1e-4
"""The shortest step `accurate_step` takes, as a share of what is left of the stretch: a field
that starts from 0 has a relative error of order 1 at any step at first (its size vanishes
with the step), which would otherwise shrink the steps to milliseconds for a while."""


def accurate_step(error_at, longest, proposal, order: int):
    """(step, proposal) (s; arrays of one per member where `longest` is): the longest step
    of at most `longest` (what is left of the stretch, or the stepper's bound) whose
    step-doubling error norm `error_at(step)` (`step_doubling_error` at `local_error_target`,
    the array of every member's at once) is within 1, and the step the next
    leg should try. It tries the previous leg's `proposal` (None: `longest`), shrunk by
    `step_factor` (at the power of the step that the error followed between the last two
    trials, `observed_exponent`) until it is within 1 (at most `ERROR_TRIALS` trials, not below
    `SHORTEST_SHARE` of `longest`). What dt = "auto" takes for the implicit steppers: the
    local error it bounds is what the step really makes, reactions, their coupling to
    diffusion and doses alike, where a bound on the reaction rates alone misses feedback
    between fields and over-resolves sinks that the step solves exactly. Run on the host:
    each trial is two runs of the compiled loop (one step of h, two of h/2), with nothing
    else to compile."""
    longest = np.asarray(longest, np.float64)
    shortest = SHORTEST_SHARE * longest
    h = longest if proposal is None else np.clip(proposal, shortest, longest)
    error = np.asarray(error_at(h), np.float64)
    exponent = np.full_like(error, order + 1.0)
    for _ in range(ERROR_TRIALS - 1):
        over = (error > 1) & (h > shortest)
        if not np.any(over):
            break
        shrunk = h * np.minimum(np.asarray(step_factor(error, exponent - 1)), 0.9)
        tried, before = h, error
        h = np.where(over, np.maximum(shrunk, shortest), h)
        error = np.where(over, np.asarray(error_at(h), np.float64), error)
        exponent = np.where(over, observed_exponent(tried, before, h, error, order), exponent)
    return h, h * np.asarray(step_factor(error, order), np.float64)


def observed_exponent(h1, error1, h2, error2, order: int):
    """The power of the step that the error followed between two trials (h1, error1) and
    (h2, error2), within 1..order + 1: order + 1 once the scheme has reached its order, less
    over a transient or a schedule edge that the step does not resolve (there the error
    falls about in proportion to the step, and shrinking by the asymptotic rule takes many
    trials)."""
    with np.errstate(divide="ignore", invalid="ignore"):
        power = np.log(np.maximum(error1, 1e-300) / np.maximum(error2, 1e-300)) / np.log(h1 / h2)
    return np.clip(np.where(np.isfinite(power), power, order + 1.0), 1.0, order + 1.0)


def drift_substep(model: Model, fields: Fields, h) -> Fields:
    """Chemotactic drift alone over h, species frozen, sub-cycled within the upwind CFL
    limit, each sub-cycle a Heun (SSPRK2) step: second order, as the imex step's splitting
    needs (forward-Euler sub-cycles made imex first order with chemotaxis), and non-negative
    within the limit (SSP coefficient 1)."""
    drifting = [p for p in model.populations if p.chemotaxis_species is not None]
    if not drifting:
        return fields
    rates = [
        operators.chemotaxis_rate(
            fields[p.chemotaxis_species], p.chemotaxis_sensitivity, model.grid, model.boundary(p)
        )
        for p in drifting
    ]
    cycles = jnp.maximum(1, jnp.ceil(h * jnp.max(jnp.stack(rates)) / 0.9)).astype(jnp.int32)
    dh = h / cycles
    # read from stored ghost copies, as the explicit stepper's terms are: then XLA fuses the
    # fields' producers the same way whether the fields are split over devices or not, and a
    # split run rounds as a single-device one (bitwise, checked by tests/test_parallel.py)
    needed = {p.name for p in drifting} | {p.chemotaxis_species for p in drifting}
    couplings = field_couplings(model)

    def euler(u):
        padded = ghost_copies(couplings, u, needed)
        drift = chemotaxis_terms(
            model, {**u, **{k: operators.interior_of(v) for k, v in padded.items()}}
        )
        return {k: u[k] + dh * drift[k] if k in drift else u[k] for k in u}

    def body(_, u):  # SSPRK2 (Heun): second order, non-negative at the forward-Euler limit
        twice = euler(euler(u))
        return {k: (u[k] + twice[k]) / 2 if twice[k] is not u[k] else u[k] for k in u}

    return lax.fori_loop(0, cycles, body, fields)


def imex_change(model: Model, prepared, fields: Fields, t, dt, names) -> Fields:
    """The change of every field over one imex step of the fields in `names`: drift(dt/2),
    the linear part with the reactions (dt, `reaction_change`), drift(dt/2). The substeps'
    changes are summed apart from the fields, each rounded to its own size, so that the loop
    can add the total with compensated summation (`advance_fields`): a field that only
    diffuses then keeps its total to float32 rounding over any number of steps."""
    total: Fields = {}

    def add(change: Fields):
        for k, v in change.items():
            total[k] = total[k] + v if k in total else v

    def moved(old: Fields, new: Fields) -> Fields:
        # a substep that leaves a field alone returns it
        add({k: new[k] - old[k] for k in old if new[k] is not old[k]})
        return new

    u = moved(fields, drift_substep(model, fields, dt / 2))
    change = reaction_change(model, prepared, u, t, dt, names)
    add(change)  # the change itself, not the rounded difference of the sum and the field
    u = {k: v + change[k] if k in change else v for k, v in u.items()}
    moved(u, drift_substep(model, u, dt / 2))
    # u + change rounds to >= 0 where change >= -u: the sum of the rounded changes may not
    return {
        k: jnp.maximum(total[k], -v) if k in total else jnp.zeros_like(v) for k, v in fields.items()
    }


@dataclass(frozen=True)
class ImplicitDiffusion:
    """Loop-invariant data of one field's implicit diffusion-decay-supply solve."""

    spectral: Any  # `spectral.Propagation`, or None: TR-BDF2 with CG
    faces: Any  # face coefficients for the CG solves


def prepare_diffusion(model: Model, names) -> dict[str, ImplicitDiffusion]:
    """Implicit diffusion data of each field in `names`."""
    faces = face_diffusivities(model)
    prepared = {}
    for f in model.fields:
        if f.name in names:
            D, decay, boundary = model.diffusivity(f), model.decay(f), model.boundary(f)
            propagation = None
            if spectral.eligible(D, decay, boundary):
                dtype = jnp.result_type(D)
                propagation = spectral.propagation(D, decay, model.grid, boundary, dtype)
            prepared[f.name] = ImplicitDiffusion(propagation, faces[f.name])
    return prepared


def linear_change(
    model: Model,
    prepared: dict,
    fields: Fields,
    forcing: Fields,
    sinks: Fields,
    dt,
    implicit: bool,
) -> Fields:
    """The change over dt of each prepared field under M f - sink f + forcing,
    M = div(D grad) - decay, with the forcing (field units/s) and the sink (1/s, per voxel)
    held over the step (a field without either has none): exact in spectral space for M with
    the sink's voxel-to-voxel part solved by conjugate gradients (`spectral.reaction_change`;
    `implicit` False: taken at the start, a predictor), or TR-BDF2 with the sink in its
    implicit solves. Formed as a change, whose rounding scales with the change rather than
    with the field (conservation in float32); a change below -f (rounding below 0:
    transforms, CG tolerance, sinks beyond the spectral part's exact rate) is clipped there."""
    out = {}
    for f in model.fields:
        if f.name in prepared:
            p, boundary, c = prepared[f.name], model.boundary(f), fields[f.name]
            supply, sink = forcing.get(f.name), sinks.get(f.name)
            if supply is not None:
                supply = jnp.broadcast_to(jnp.asarray(supply, c.dtype), c.shape)
            if p.spectral is not None:
                change = spectral.reaction_change(
                    c, supply, sink, dt, p.spectral, boundary, implicit
                )
            else:
                supply = jnp.zeros_like(c) if supply is None else supply
                decay = model.decay(f) if sink is None else model.decay(f) + sink
                change = _tr_bdf2_change(c, decay, supply, dt, p.faces, model.grid, boundary)
            out[f.name] = jnp.maximum(change, -c)
    return out


def _tr_bdf2_change(c, decay, supply, dt, faces, grid, boundary):
    """The change over one L-stable, second-order TR-BDF2 step of
    dc/dt = div(D grad c) - decay c + supply. Both stages solve
    (1 + h decay) x - h L x = rhs, h = gamma dt / 2, L the linear part of div(D grad); written
    for the changes a = stage - c and b = new - c, their right-hand sides are the rate at c,
    R = div(D grad c) - decay c + supply: 2 h R, then a / (gamma (2 - gamma)) + h R."""
    gamma = TR_BDF2_GAMMA
    h = gamma * dt / 2
    shift = 1 + h * decay
    rate = operators.diffusion(c, faces, grid, boundary) - decay * c + supply
    zero = jnp.zeros_like(c)
    stage = solvers.solve_change(shift, h, 2 * h * rate, faces, grid, boundary, zero, c)
    rhs = stage / (gamma * (2 - gamma)) + h * rate
    return solvers.solve_change(shift, h, rhs, faces, grid, boundary, stage, c)


def diffusion_accuracy_dt(model: Model, names, tolerance: float):
    """Largest step (s) for which TR-BDF2 integrates a mode of 8-voxel wavelength, the finest
    feature worth resolving, to `tolerance` per step (`per_step_tolerance`; its error per step
    is about (dt lambda)^3 / 12); unlimited when every field in `names` is diffused exactly in
    spectral space."""
    dt = jnp.inf
    for f in model.fields:
        D, boundary = model.diffusivity(f), model.boundary(f)
        if f.name in names and not spectral.eligible(D, model.decay(f), boundary):
            mode_rate = jnp.max(D) * (2 * jnp.pi / (8 * min(model.grid.spacing))) ** 2
            dt = jnp.minimum(dt, (12 * tolerance) ** (1 / 3) / mode_rate)
    return dt


def dose_dt(model: Model):
    """Largest step (s) that resolves the shortest scheduled dose in four steps: a dose
    shorter than a step would be delivered in the right amount but smeared over the step."""
    dt = jnp.inf
    for source in model.sources:
        dt = jnp.minimum(dt, source.schedule.duration / 4)
    return dt


@dataclass(frozen=True)
class Imex:
    """Second order: chemotactic drift (dt/2), the linear part with the reactions (dt),
    drift (dt/2). The linear part (diffusion, decay) takes the sinks as per-voxel loss rates
    and production and sources as forcing, both averaged between the start and a predictor
    (exponential trapezoidal rule, `reaction_change`): no splitting between diffusion and
    reactions. It is exact in spectral space for constant D and decay on neumann, dirichlet
    and periodic faces, with the sinks' voxel-to-voxel part solved by conjugate gradients,
    and TR-BDF2 with Jacobi-preconditioned CG otherwise (robin faces, varying D or decay),
    the sinks inside its implicit solves. Stable and non-negative at any dt."""

    tolerance: float = 1e-3
    name: str = "imex"
    order: int = 2
    fused: ClassVar[bool] = False

    def prepare(self, model: Model):
        return prepare_diffusion(model, model.names)

    def increment(self, model: Model, prepared, fields: Fields, t, dt) -> Fields:
        return imex_change(model, prepared, fields, t, dt, model.names)

    def step(self, model: Model, prepared, fields: Fields, t, dt) -> Fields:
        change = self.increment(model, prepared, fields, t, dt)
        return {k: fields[k] + change[k] for k in fields}

    def stable_dt(self, model: Model, fields: Fields):
        """No stability limit: the longest step that resolves the doses and the fine modes
        that CG diffuses; within it, the accuracy target sets the step (`accurate_step`)."""
        tolerance = per_step_tolerance(self.tolerance, self.order)
        diffusion = diffusion_accuracy_dt(model, model.names, tolerance)
        return jnp.minimum(diffusion, dose_dt(model))


@dataclass(frozen=True)
class QuasiSteady:
    """Species relax to their steady state at every step (cytokines equilibrate in seconds,
    cells respond over hours); populations then advance by the imex step with the species
    frozen, and the species relax again to the new populations.

    The steady state is found by Picard iteration on the nonlinear reactions, each iteration a
    converged CG solve of  (loss - div D grad) c = production + supply. Every species needs a
    sink (decay, uptake) or an absorbing face for that problem to have a unique solution."""

    tolerance: float = 1e-3
    name: str = "quasi_steady"
    fused: ClassVar[bool] = False
    order: int = 1
    max_iterations: int = 50

    def prepare(self, model: Model):
        populations = tuple(p.name for p in model.populations)
        preconditioners = {
            s.name: spectral.preconditioner(
                model.diffusivity(s),
                model.grid,
                model.boundary(s),
                jnp.result_type(model.diffusivity(s)),
            )
            for s in model.species
        }
        return face_diffusivities(model), preconditioners, prepare_diffusion(model, populations)

    def relax(
        self, model: Model, faces, preconditioners, fields: Fields, t, supply: Fields
    ) -> Fields:
        """The species' steady state for the current populations and a supply (nM/s)."""
        if not model.species:
            return fields
        float32 = next(iter(fields.values())).dtype == jnp.float32
        floor = 1e-4 if float32 else 1e-10  # relative change: 100 or 10 CG tolerances

        def picard(u):
            production, loss = reaction_terms(model, u, t)
            out = dict(u)
            for s in model.species:
                rhs = production.get(s.name, 0.0) + supply.get(s.name, 0.0)
                rhs = jnp.broadcast_to(jnp.asarray(rhs, u[s.name].dtype), model.grid.shape)
                solution = solvers.solve_shifted(
                    loss[s.name],
                    1.0,
                    rhs,
                    faces[s.name],
                    model.grid,
                    model.boundary(s),
                    u[s.name],
                    preconditioners[s.name],
                )
                out[s.name] = jnp.maximum(solution, 0)
            return out

        def change(old, new):
            return jnp.max(
                jnp.stack(
                    [
                        jnp.max(jnp.abs(new[s.name] - old[s.name]))
                        / (jnp.max(jnp.abs(new[s.name])) + 1e-30)
                        for s in model.species
                    ]
                )
            )

        def body(carry):
            i, u, _ = carry
            new = picard(u)
            return i + 1, new, change(u, new)

        first = picard(fields)
        _, relaxed, _ = lax.while_loop(
            lambda carry: (carry[0] < self.max_iterations) & (carry[2] > floor),
            body,
            (1, first, change(fields, first)),
        )
        return relaxed

    def increment(self, model: Model, prepared, fields: Fields, t, dt) -> Fields:
        """The populations' change over an imex step (`imex_change`), between the
        species' steady states; a species' change is from its state at t to its new steady
        state."""
        faces, preconditioners, diffusion = prepared
        populations = tuple(p.name for p in model.populations)
        supply = source_terms(model, t, dt)  # the step's mean dose sets both steady states
        relaxed = self.relax(model, faces, preconditioners, fields, t, supply)
        change = imex_change(model, diffusion, relaxed, t, dt, populations)
        moved = {k: v + change[k] if k in populations else v for k, v in relaxed.items()}
        final = self.relax(model, faces, preconditioners, moved, t + dt, supply)
        return {k: change[k] if k in populations else final[k] - v for k, v in fields.items()}

    def step(self, model: Model, prepared, fields: Fields, t, dt) -> Fields:
        change = self.increment(model, prepared, fields, t, dt)
        return {k: fields[k] + change[k] for k in fields}

    def stable_dt(self, model: Model, fields: Fields):
        """As `Imex.stable_dt` for the populations (species are always at steady state)."""
        populations = tuple(p.name for p in model.populations)
        tolerance = per_step_tolerance(self.tolerance, self.order)
        diffusion = diffusion_accuracy_dt(model, populations, tolerance)
        return jnp.minimum(diffusion, dose_dt(model))


STEPPERS = {"explicit": Explicit, "imex": Imex, "quasi_steady": QuasiSteady}


def make_stepper(
    name: str,
    scheme: str = "ssprk3",
    tolerance: float = 1e-3,
    fused: bool = False,
    launch: kernels.Launch = kernels.DEFAULT_LAUNCH,
) -> Stepper:
    """A stepper by name. `scheme` picks the explicit scheme; `tolerance` is the accuracy
    target that sets dt = "auto" for the implicit steppers (the explicit one is bound by
    stability well before accuracy); `fused`: the explicit stages as Pallas kernels, launched
    as `launch` says."""
    if name not in STEPPERS:
        raise ValueError(
            f"time.stepper: unknown stepper {name!r}; use one of {', '.join(STEPPERS)}"
        )
    if name == "explicit":
        return Explicit(scheme=scheme, fused=fused, launch=launch)
    if fused:
        raise ValueError(f'kernels: "pallas" fuses explicit steps only, not {name}; use "xla"')
    return STEPPERS[name](tolerance=tolerance)


def advance_fields(
    stepper: Stepper,
    model: Model,
    fields: Fields,
    t0,
    dt,
    n_steps,
    compensated: bool = True,
) -> Fields:
    """`n_steps` steps of `dt` from t0 of a model without cells (`advance_state`)."""
    return advance_state(stepper, model, fields, {}, t0, dt, n_steps, 0, None, 1, compensated)[0]


def advance_state(
    stepper: Stepper,
    model: Model,
    fields: Fields,
    population: dict[str, Cells],
    t0,
    dt,
    n_steps,
    first_step,
    key,
    cell_every=1,
    compensated: bool = True,
    cell_parts=1,
) -> tuple[Fields, dict[str, Cells]]:
    """`n_steps` steps of `dt` from t0, the whole loop on the device (`lax.fori_loop`),
    numbered from `first_step` (the run's step count).

    With cells, the steps run in stretches of `cell_every` (the last one shorter): the
    fields step with the cells' secretion and uptake as they are at the stretch's start
    (`Model.coupled`, loop-invariant within it), then the cells step over the stretch on the
    fields at its end, in `cell_parts` parts (`cells_after`). A cell step ending at step n
    draws from `fold_in(key, n)`: the same numbers however a run is cut into loops or
    resumed.

    In float32, a stepper that forms its step as an increment has it added with stochastic
    rounding (`rounding.add_stochastically`, its random numbers drawn by t0 and i) unless
    `compensated` is False: increments below half an ulp of the state would otherwise be
    lost, and lost systematically (peaks lose their negative increments), breaking
    conservation."""
    prepared = stepper.prepare(model)
    compensate = (
        compensated
        and hasattr(stepper, "increment")
        and any(v.dtype == jnp.float32 for v in fields.values())
    )
    salts = rounding.streams(fields)

    def field_step(i, u, coupled):
        t = t0 + i * dt
        if not compensate:
            return stepper.step(coupled, prepared, u, t, dt)
        step = rounding.step_counter(t0, i)
        if stepper.fused:  # the rounding inside the kernel's last pass
            return stepper.fused_step(coupled, prepared, u, t, dt, step)
        change = stepper.increment(coupled, prepared, u, t, dt)
        return {k: rounding.add_stochastically(u[k], change[k], step, salts[k]) for k in u}

    if not population:
        fields = _loop(n_steps, lambda i, u: field_step(i, u, model), fields)
        return fields, population

    def stretch(j, carry):
        """`cell_every` field steps (fewer at the end) with the exchange of the cells as they
        are at the stretch's start, loop-invariant, then one step of the cells."""
        u, population = carry
        coupled = model.coupled(population, u)
        start = j * cell_every
        stop = jnp.minimum(start + cell_every, n_steps)
        u = lax.fori_loop(start, stop, lambda i, u: field_step(i, u, coupled), u)
        population = cells_after(
            model, population, u, stop - start, dt, key, first_step + stop, cell_parts
        )
        return u, population

    stretches = (n_steps + cell_every - 1) // cell_every
    fields, population = lax.fori_loop(0, stretches, stretch, (fields, population))
    return fields, population


def cells_after(model: Model, population, fields: Fields, steps, dt, key, end, parts=1) -> dict:
    """The cells' step over the `steps` field steps of `dt` (s) that end the run's step
    number `end` (exclusive), on `fields`, with the key `fold_in(key, end - 1)`, in `parts`
    equal parts (`step_population_over`)."""
    step_key = jax.random.fold_in(key, end - 1)
    return step_population_over(
        model.cells,
        population,
        fields,
        model.grid,
        model.periodic_axes,
        steps * dt,
        step_key,
        parts,
    )


PAIRS_PER_BLOCK = 4
"""Pairs of steps per inner loop on accelerators. A loop whose trip count XLA cannot know
makes the host read its condition from the device, waiting for the device to finish, before
every iteration; an inner loop of a fixed count lets the host queue its iterations ahead."""


def _loop(n_steps, body, carry):
    """lax.fori_loop(0, n_steps, body, carry), on accelerators (`operators.stored_ghosts`
    False) two steps per iteration in blocks of a fixed count. Such a stencil reads its
    fields' neighbours directly and cannot overwrite its input, so XLA would copy each result
    back into the loop's buffer; two steps per iteration write alternately into each other's
    input, which on a GPU makes the fused stencil faster than the stored copy
    (docs/performance-notes.md). The blocks (`PAIRS_PER_BLOCK`) spare the host a wait on the
    device at all but one in that many iterations."""
    if operators.stored_ghosts():
        return lax.fori_loop(0, n_steps, body, carry)

    def pair(j, c):
        return body(2 * j + 1, body(2 * j, c))

    def block(b, c):
        first = b * PAIRS_PER_BLOCK
        return lax.fori_loop(0, PAIRS_PER_BLOCK, lambda k, c: pair(first + k, c), c)

    n_pairs = n_steps // 2
    n_blocks = n_pairs // PAIRS_PER_BLOCK
    carry = lax.fori_loop(0, n_blocks, block, carry)
    carry = lax.fori_loop(n_blocks * PAIRS_PER_BLOCK, n_pairs, pair, carry)
    return lax.cond(n_steps % 2 == 1, lambda c: body(n_steps - 1, c), lambda c: c, carry)


def advance_adaptive(
    stepper: Stepper,
    model: Model,
    fields: Fields,
    t0,
    t_end,
    dt,
    tolerance: float,
    max_steps,
    scale: Fields,
):
    """Steps from t0 to t_end with the step size controlled by the local error, estimated by
    step doubling: one step of h against two of h/2, whose difference bounds the error of the
    two half steps (kept when within `tolerance`). Richardson's estimate, the difference over
    2^p - 1, holds only where the scheme has reached its order p; imex's long steps over
    reaction transients are short of it (1.2 to 1.6 measured), and with that estimate the
    error over a run exceeded the tolerance. This captures the coupling between reactions and
    diffusion as well as the reactions' own error, which an embedded pair of the reaction part
    alone misses. The next step is scaled by
    0.9 error^(-1/(p+1)) within 0.2x..5x. Errors are relative to each field's largest size
    over the run (`scale`, 0-d per field, at t0; carried on with each accepted step). One
    device loop.

    Returns the fields, the last proposed dt, the accepted and rejected step counts, and the
    scale at t_end."""
    span = t_end - t0
    order = stepper.order
    prepared = stepper.prepare(model)
    local = local_error_target(tolerance, order, next(iter(fields.values())).dtype)

    def cond(carry):
        t, _, _, accepted, rejected, _ = carry
        return (t_end - t > 1e-6 * span) & (accepted + rejected < max_steps)

    def body(carry):
        t, dt, u, accepted, rejected, scale = carry
        h = jnp.minimum(dt, t_end - t)
        error, half, sizes = step_doubling_error(stepper, model, prepared, u, t, h, local, scale)
        ok = error <= 1
        u = {k: jnp.where(ok, half[k], u[k]) for k in u}
        scale = {k: jnp.where(ok, sizes[k], v) for k, v in scale.items()}  # sizes >= scale
        factor = step_factor(error, order)
        t = jnp.where(ok, t + h, t)
        return t, h * factor, u, accepted + ok, rejected + (1 - ok), scale

    zero = jnp.zeros((), jnp.int32)
    _, dt, fields, accepted, rejected, scale = lax.while_loop(
        cond, body, (jnp.asarray(t0, dt.dtype), dt, fields, zero, zero, scale)
    )
    return fields, dt, accepted, rejected, scale
