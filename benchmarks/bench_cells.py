"""Cost of individual cells: seconds per step against the number of cells, beside the field
step of the same run.

    python benchmarks/bench_cells.py [--quick] [--size 128] [--cells 1000 10000 100000 1000000]
        [--stepper explicit] [--repeats 3] [--output FILE.json]

The case: a size^3 tissue of 10 um voxels, float32, IL-2 (D = 10 um^2/s, decay) and one cell
type at random positions that does everything a cell can: random motility (1 um^2/s),
chemotaxis up the IL-2 gradient, secretion, uptake through receptors that are a state
variable, a state ODE modulated by local IL-2, division and death (capacity 1.25 x the count:
every slot costs work, alive or not). The fields step by dt = 1 s (explicit: the stability
limit is 1.7 s); the cells step every `Simulation.cell_every` field steps (3 here: half a
voxel of random motion), their exchange with the voxels rebuilt after each. Each case is
timed as `timed_steps` times a run's loop; the field step alone is the same model without
cells. Per count: seconds per field step, the cells' share (step - field step), that share
per cell (ns per cell and field step) and in units of the field step (the target on a 2-core
CPU: 1e5 cells add at most one field step).

Writes benchmarks/results/cells-<device>.json and a plot (.png) of the cost per step against
the number of cells.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, device_name, timed_steps  # noqa: E402

from engine.model.cells import CellSecretion, CellType, CellUptake, Fate, StateTerm  # noqa: E402
from engine.model.model import Model, Species  # noqa: E402
from engine.model.terms import Hill  # noqa: E402
from engine.numerics.grid import Grid  # noqa: E402
from engine.stepping.simulation import Simulation  # noqa: E402


def model(size: int, count: int) -> Model:
    grid = Grid((size,) * 3, spacing=10.0)
    il2 = Species("IL2", diffusion=10.0, decay=1.36e-4, initial=0.01)
    if count == 0:
        return Model(grid, species=(il2,))
    rng = np.random.default_rng(0)
    cells = CellType(
        "T",
        capacity=count + count // 4,  # room for the few divisions; the work scales with it
        initial=rng.uniform(grid.lower, grid.upper, (count, 3)),
        state={"R": 1500.0},
        motility=1.0,
        chemotaxis_species="IL2",
        chemotaxis_sensitivity=100.0,
        secretion=(CellSecretion("IL2", 5.0),),
        uptake=(CellUptake("IL2", k_on=0.01, receptors_state="R"),),
        state_terms=(StateTerm("R", production=1.0, decay=1e-4, modulators=(Hill("IL2", 0.01),)),),
        division=Fate(1e-6),
        death=Fate(1e-6),
    )
    return Model(grid, species=(il2,), cells=(cells,))


def seconds_per_step(size: int, count: int, stepper: str, dt: float, repeats: int) -> dict:
    sim = Simulation(model(size, count), stepper=stepper, dt=dt)
    holder = {"state": sim.initial_state()}

    def advance(steps):
        state = holder["state"]
        holder["state"] = sim.advance(state, state.t + steps * dt, donate=True)
        jax.block_until_ready(holder["state"].fields)

    return timed_steps(advance, least_steps=4, call_seconds=1.0, repeats=repeats)


def plot(rows: list[dict], field_step: float, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    counts = [r["cells"] for r in rows]
    fig, ax = plt.subplots(figsize=(6, 4), layout="constrained")
    ax.loglog(counts, [r["cells_ms"] for r in rows], "o-", label="cells' share of a step")
    ax.axhline(field_step * 1e3, color="k", ls="--", label="field step (no cells)")
    ax.set_xlabel("cells")
    ax.set_ylabel("ms per step")
    ax.set_title(f"cells on a {rows[0]['grid']} grid, {rows[0]['device']}")
    ax.legend()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="32^3, 1e3 and 1e4 cells, 1 repeat")
    parser.add_argument("--size", type=int, default=128)
    parser.add_argument("--cells", type=int, nargs="+", default=[1000, 10_000, 100_000, 1_000_000])
    parser.add_argument("--stepper", default="explicit", choices=["explicit", "imex"])
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--output", type=Path)
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.cells, args.repeats = 32, [1000, 10_000], 1
    device = device_name()
    dt = 1.0  # s: below the explicit limit h^2 / (6 D) of 10 um voxels and D = 10 um^2/s
    field = seconds_per_step(args.size, 0, args.stepper, dt, args.repeats)["seconds"]
    print(f"{args.size}^3 {args.stepper} field step: {field * 1e3:.3f} ms ({device})")
    print(f"{'cells':>9} {'ms/step':>9} {'cells ms':>9} {'ns/cell':>8} {'field steps':>11}")
    rows = []
    for count in args.cells:
        step = seconds_per_step(args.size, count, args.stepper, dt, args.repeats)
        total = step["seconds"]
        share = max(total - field, 0.0)
        row = dict(
            cells=count,
            grid=f"{args.size}^3",
            stepper=args.stepper,
            step_ms=total * 1e3,
            field_step_ms=field * 1e3,
            cells_ms=share * 1e3,
            ns_per_cell_step=share / count * 1e9,
            field_steps=share / field,
            steps_per_call=step["steps_per_call"],
            device=device,
        )
        rows.append(row)
        print(
            f"{count:>9} {total * 1e3:>9.3f} {share * 1e3:>9.3f} "
            f"{row['ns_per_cell_step']:>8.1f} {row['field_steps']:>11.2f}"
        )
    output = args.output or RESULTS / f"cells-{device}.json"
    output.write_text(json.dumps(dict(device=device, jax=jax.__version__, rows=rows), indent=1))
    plot(rows, field, output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png')}")


if __name__ == "__main__":
    main()
