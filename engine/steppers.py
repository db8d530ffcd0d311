"""Time steppers: pure `step(model, prepared, fields, t, dt) -> fields` functions.

Every stepper has the same interface, so the run loop, `Simulation` and later the implicit
steppers share one `advance_fields` loop:

- `prepare(model, dt)`: loop-invariant work done once per `advance` (face coefficients, ...).
- `step(model, prepared, fields, t, dt)`: one step from t to t + dt.
- `stable_dt(model, fields)`: the largest step (s) the scheme tolerates, before the safety factor.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from jax import lax

from engine.model import (
    Fields,
    Model,
    chemotaxis_terms,
    diffusion_terms,
    face_diffusivities,
    reaction_terms,
    source_terms,
    transport_rate,
)


class Stepper(Protocol):
    name: str

    @property
    def order(self) -> int: ...

    def prepare(self, model: Model, dt) -> Any: ...

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


def positive_euler(model: Model, faces, fields: Fields, supply: Fields, t, dt) -> Fields:
    """One forward-Euler step with the linear sinks implicit per voxel (as BioFVM):

        f_new = (f + dt (transport + production + supply)) / (1 + dt loss_rate)

    Non-negative for any loss rate whenever dt is within the explicit transport limit.
    """
    gain = diffusion_terms(model, faces, fields)
    for name, drift in chemotaxis_terms(model, fields).items():
        gain[name] = gain[name] + drift
    production, loss = reaction_terms(model, fields, t)
    out = {}
    for name in model.names:
        new = fields[name] + dt * (gain[name] + production.get(name, 0.0) + supply.get(name, 0.0))
        out[name] = new / (1 + dt * loss[name]) if name in loss else new
    return out


@dataclass(frozen=True)
class Explicit:
    """SSP Runge-Kutta (`euler`, `ssprk2`, `ssprk3`) built from positivity-preserving Euler
    stages. Order 1, 2, 3 for transport and production; the implicit treatment of linear sinks
    is first order in the sink rate (exact positivity is worth it for stiff uptake)."""

    scheme: str = "ssprk3"
    name: str = "explicit"

    def __post_init__(self):
        if self.scheme not in SSP_SCHEMES:
            raise ValueError(
                f"time.scheme: unknown scheme {self.scheme!r}; use one of {', '.join(SSP_SCHEMES)}"
            )

    @property
    def order(self) -> int:
        return SSP_ORDER[self.scheme]

    def prepare(self, model: Model, dt):
        return face_diffusivities(model)

    def step(self, model: Model, prepared, fields: Fields, t, dt) -> Fields:
        supply = source_terms(model, t, dt)
        stage = fields
        for a, b, c in SSP_SCHEMES[self.scheme]:
            euler = positive_euler(model, prepared, stage, supply, t + c * dt, dt)
            stage = euler if a == 0.0 else {k: a * fields[k] + b * euler[k] for k in fields}
        return stage

    def stable_dt(self, model: Model, fields: Fields):
        """1 / (transport rate + reaction rate bound): the forward-Euler positivity limit,
        which SSP schemes inherit (their SSP coefficient is 1)."""
        return 1.0 / (transport_rate(model, fields) + model.reaction_rate)


STEPPERS = {"explicit": Explicit}


def make_stepper(name: str, scheme: str = "ssprk3") -> Stepper:
    if name not in STEPPERS:
        raise ValueError(
            f"time.stepper: unknown stepper {name!r}; use one of {', '.join(STEPPERS)}"
        )
    return STEPPERS[name](scheme=scheme)


def advance_fields(stepper: Stepper, model: Model, fields: Fields, t0, dt, n_steps) -> Fields:
    """`n_steps` steps of `dt` from t0, the whole loop on the device (`lax.fori_loop`)."""
    prepared = stepper.prepare(model, dt)

    def body(i, u):
        return stepper.step(model, prepared, u, t0 + i * dt, dt)

    return lax.fori_loop(0, n_steps, body, fields)
