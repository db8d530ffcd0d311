"""Each scheme's order in time on the equations it solves, reactions included: a nonlinear
(Gray-Scott) reaction-diffusion system in 1D and 2D, float64, against a far finer ssprk3
reference whose own error is shown to be smaller than the smallest one measured."""

from __future__ import annotations

import numpy as np
import pytest

from engine import Grid, Model, Population, Simulation, Species
from engine.model import terms
from engine.runs.examples import gray_scott_model

END = 20.0  # s
STEPS = [0.4, 0.2, 0.1, 0.05]  # s, within the explicit limit (about 1.2 s here)


def solution(sim: Simulation, dt: float) -> dict[str, np.ndarray]:
    """The fields at END after END / dt steps of `dt` (s), one compiled loop for every dt."""
    fields = sim.initial_state().fields
    n = round(END / dt)
    return {k: np.asarray(v) for k, v in sim.advance_steps(fields, 0.0, END / n, n).items()}


def error(a: dict, b: dict) -> float:
    """Largest deviation relative to each field's largest size."""
    return max(float(np.max(np.abs(a[k] - b[k])) / np.max(np.abs(b[k]))) for k in b)


@pytest.fixture(scope="module", params=[(64,), (20, 24)], ids=["1D", "2D"])
def problem(request):
    model = gray_scott_model(request.param)
    fine = Simulation(model, stepper="explicit", scheme="ssprk3", dtype="float64")
    reference = solution(fine, STEPS[-1] / 16)
    reference_error = error(solution(fine, STEPS[-1] / 8), reference)
    return model, reference, reference_error


@pytest.mark.parametrize(
    ("options", "order"),
    [
        (dict(stepper="explicit", scheme="euler"), 1),
        (dict(stepper="explicit", scheme="ssprk2"), 2),
        (dict(stepper="explicit", scheme="ssprk3"), 3),
        (dict(stepper="imex"), 2),
    ],
    ids=["euler", "ssprk2", "ssprk3", "imex"],
)
def test_each_scheme_keeps_its_order_with_reactions(problem, convergence_order, options, order):
    model, reference, reference_error = problem
    sim = Simulation(model, dtype="float64", **options)
    errors = [error(solution(sim, dt), reference) for dt in STEPS]
    assert reference_error < 0.1 * min(errors)  # the reference is good enough to measure
    assert convergence_order(STEPS, errors) == pytest.approx(order, abs=0.15), errors


def test_fields_stay_non_negative_under_uptake_far_faster_than_diffusion():
    """Uptake 1000x faster than diffusion: dt = "auto" (the forward-Euler positivity limit,
    sinks included) keeps every stage non-negative while the sink empties the cells' voxels."""
    grid = Grid((24, 24), spacing=2.0)
    diffusion = 5.0
    transport = 2 * grid.ndim * diffusion / grid.spacing[0] ** 2
    y, x = grid.centres()
    cells = np.where((x > 16) & (y < 30), 1e-3, 0.0)
    il2 = Species(
        "IL2", diffusion=diffusion, initial=np.random.default_rng(3).uniform(size=grid.shape)
    )
    t_cells = Population("T", initial=cells)
    k_on = 1000 * transport * 0.602214076 / (1e-3 * 1e3)  # loss 1000x transport at 1e3 receptors
    uptake = terms.Uptake("IL2", by="T", k_on=k_on, receptors=1e3)
    model = Model(grid, species=(il2,), populations=(t_cells,), terms=(uptake,))
    sim = Simulation(model, stepper="explicit", scheme="ssprk3")
    state = sim.initial_state()
    assert sim.time_step(state) == pytest.approx(0.9 / (1001 * transport), rel=1e-4)
    for t_end in np.arange(1, 6) * 0.02:
        state = sim.advance(state, t_end)
        c = state.numpy()["IL2"]
        assert np.all(np.isfinite(c)) and c.min() >= 0.0, c.min()
    assert c[cells > 0].max() < 1e-3 * c[cells == 0].mean()


STIFF = """
[grid]
shape = [16, 16]
spacing = "10 um"
[time]
end = "1 h"
stepper = "explicit"
[species.IL2]
diffusion = "10 um^2/s"
decay = "1e-3 1/s"
[populations.T]
initial = 1e-3
[[terms]]
type = "uptake"
species = "IL2"
by = "T"
k_on = "3.1e7 1/M/s"
receptors = {receptors}
"""


@pytest.mark.parametrize("receptors", [1e4, 10.0])
def test_validate_points_to_imex_where_sinks_set_the_explicit_limit(tmp_path, capsys, receptors):
    from engine.cli.main import main

    config = tmp_path / "stiff.toml"
    config.write_text(STIFF.format(receptors=receptors))
    assert main(["validate", str(config)]) == 0
    noted = "IL2's sinks set most of the explicit limit" in capsys.readouterr().out
    assert noted == (receptors > 1e3)  # uptake 0.5 1/s against diffusion's 0.4 1/s, or not


@pytest.mark.parametrize("shape", [(48,), (24, 20)], ids=["1D", "2D"])
def test_imex_keeps_order_2_with_sinks_that_differ_from_voxel_to_voxel(shape, convergence_order):
    """Consumers in a random 20% of the voxels (uptake 1e-2 1/s) and secretors in 5%, with
    steps 2.5 to 20 times a voxel's diffusion time: the diffusion mixes the field between the
    voxels far faster than a step, which made a sink split from diffusion first order (the
    splitting's error, (k dt) relative to the uptake). Taken together, second order. The run
    starts from a field whose voxel-scale dips and peaks have formed (50 s from uniform): the
    initial layer in which they form lasts about a second, and no step of these lengths
    resolves it, which adds an error of first order once. With the sink's c-weighted mean
    exact (`spectral.exact_sink_rate`) the error is a hundredth of what it was with the
    largest sink, and a third-order part of opposite sign still shows at longer steps
    (apparent order 1.76 from 80 to 40 s, 1.94 from 5 to 2.5 s)."""
    rng = np.random.default_rng(7)
    grid = Grid(shape, spacing=10.0)  # h^2 / D = 1 s
    consumers = (rng.random(shape) < 0.2) * 1e-3
    secretors = (rng.random(shape) < 0.05) * 1e-3

    def model(initial):
        return Model(
            grid,
            species=(Species("c", diffusion=100.0, decay=1e-4, initial=initial),),
            populations=(Population("consumer", initial=consumers),),
            terms=(terms.Uptake("c", "consumer", k_on=10.0, receptors=0.602214076),),
            reactions=lambda f, t: ({"c": 20.0 * secretors}, {}),
        )

    def run(sim, end, dt):
        n = round(end / dt)
        fields = sim.advance_steps(sim.initial_state().fields, 0.0, end / n, n)
        return {k: np.asarray(v) for k, v in fields.items()}

    settle = Simulation(model(1.0), stepper="explicit", dtype="float64")
    settled = run(settle, 50.0, settle.time_step(settle.initial_state()))["c"]
    end, steps = 160.0, [20.0, 10.0, 5.0, 2.5]
    fine = Simulation(model(settled), stepper="explicit", dtype="float64")
    dt_fine = fine.time_step(fine.initial_state()) / 4
    reference = run(fine, end, dt_fine)
    reference_error = error(run(fine, end, 2 * dt_fine), reference)
    imex = Simulation(model(settled), stepper="imex", dtype="float64")
    errors = [error(run(imex, end, dt), reference) for dt in steps]
    assert reference_error < 0.1 * min(errors)
    assert convergence_order(steps, errors) == pytest.approx(2, abs=0.15), errors
