"""A parameter sweep run as one batch (`Ensemble`) against the same members run one by one as
separate `Simulation`s, cold (compilation included) and warm.

    python benchmarks/bench_sweep.py [--quick] [--members 8 64] [--steppers explicit imex]
        [--size 64] [--end "1 h"] [--diffusion 10 20] [--separate-runs 8] [--repeats 3]

The case: a size^2 tissue (10 um voxels), float32, IL-2 diffusing and decaying, supplied at a
constant rate inside a central disc and taken up by a uniform T-cell population (which moves).
The sweep varies species.IL2.diffusion over N values evenly spaced in [--diffusion] um^2/s.
With dt = "auto" each member takes the steps its single run would take: the batch loops as
long as its longest member (`steps`), the others wait (`member_steps`: the sum of the members'
own steps, the work of the separate runs).

Per N and stepper:
- sweep cold: `Ensemble(...)` (configs and models of every member), its initial state and the
  first advance to the end, synchronised: what a user waits for, compilation included;
- sweep warm: the advance again from the same initial state (median of --repeats);
- separate cold: `Simulation(load_config(cfg, {key: value}))`, initial state and advance, one
  fresh simulation per member (each traces and compiles: what a loop in a script costs);
- separate warm: the same simulations advanced again (median of --repeats each).
At most --separate-runs members are run separately (evenly spaced over the values, the ends
included); with more members their times are scaled by N / runs, which the output says.
Ratios: separate / sweep (above 1 the sweep is faster). Each separately run member is compared
with its member of the sweep: the largest relative difference (max |a - b| / max |b| over the
fields) must be below 1e-5, or the benchmark stops: the two sides would not do the same work.

Writes benchmarks/results/sweep-<device>.json and a plot of the speed-up against N (.png).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path

import jax
import numpy as np
from common import RESULTS, device_name

from engine.config.loading import load_config
from engine.config.schema import Config
from engine.runs.simulation import Simulation
from engine.runs.sweep import Ensemble

KEY = "species.IL2.diffusion"
TOLERANCE = 1e-5  # largest relative difference allowed between a member and its single run


def base_config(size: int, end: str, stepper: str) -> Config:
    """The benchmark case on a size x size grid of 10 um voxels."""
    centre = f"{5 * size} um"
    return load_config(
        {
            "grid": {"shape": [size, size], "spacing": "10 um"},
            "time": {"end": end, "dt": "auto", "stepper": stepper, "dtype": "float32"},
            "regions": {
                "core": {"sphere": {"center": [centre, centre], "radius": f"{1.5 * size} um"}}
            },
            "species": {"IL2": {"diffusion": "10 um^2/s", "decay": "1.36e-4 1/s"}},
            "populations": {"T": {"initial": "1e4 1/mm^3", "motility": "1 um^2/s"}},
            "terms": [
                {
                    "type": "uptake",
                    "species": "IL2",
                    "by": "T",
                    "k_on": "3.1e7 1/M/s",
                    "receptors": 1e3,
                }
            ],
            "sources": [
                {"type": "region", "species": "IL2", "region": "core", "rate": "0.01 nM/s"}
            ],
        }
    )


def ready(fields) -> dict[str, np.ndarray]:
    """Wait for `fields` and copy them to the host."""
    return {k: np.asarray(v) for k, v in jax.block_until_ready(fields).items()}


def timed_median(function, repeats: int) -> float:
    """Median wall time (s) of `repeats` calls of `function`, which synchronises and returns
    the seconds of its timed part (set-up done inside it is left out)."""
    return statistics.median(function() for _ in range(repeats))


def relative_difference(a: dict, b: dict) -> float:
    """max |a - b| / max |b|, the largest over the fields."""
    return max(
        float(np.max(np.abs(a[k] - b[k])) / max(float(np.max(np.abs(b[k]))), 1e-30)) for k in b
    )


def measure_sweep(cfg: Config, values: list[str], repeats: int):
    """(cold s, warm s, batch steps, sum of the members' own steps, final fields)."""
    start = time.perf_counter()
    ensemble = Ensemble(cfg, {KEY: values}, product=True)
    initial = ensemble.initial_state()
    legs: list = []
    state = ensemble.advance(initial, cfg.time.end, legs)
    fields = ready(state.fields)
    cold = time.perf_counter() - start
    span = cfg.time.end
    member_steps = int(sum(n.sum() for n, _ in legs))

    def warm():  # Ensemble.advance keeps its input: every call starts from `initial`
        start = time.perf_counter()
        jax.block_until_ready(ensemble.advance(initial, span).fields)
        return time.perf_counter() - start

    return cold, timed_median(warm, repeats), state.step, member_steps, fields


def measure_separate(cfg: Config, value: str, repeats: int):
    """(cold s, warm s, steps, final fields) of the single run of one member."""
    start = time.perf_counter()
    sim = Simulation(load_config(cfg, {KEY: value}))
    state = sim.advance(sim.initial_state(), cfg.time.end)
    fields = ready(state.fields)
    cold = time.perf_counter() - start

    def warm():  # donating its input, as a run: a fresh initial state each time, not timed
        initial = sim.initial_state()
        jax.block_until_ready(initial.fields)
        start = time.perf_counter()
        jax.block_until_ready(sim.advance(initial, cfg.time.end, donate=True).fields)
        return time.perf_counter() - start

    return cold, timed_median(warm, repeats), state.step, fields


def run_case(cfg: Config, members: int, stepper: str, args) -> dict:
    low, high = args.diffusion
    diffusion = np.linspace(low, high, members)
    values = [f"{d:.6g} um^2/s" for d in diffusion]
    sweep_cold, sweep_warm, steps, member_steps, sweep_fields = measure_sweep(
        cfg, values, args.repeats
    )
    runs = min(members, args.separate_runs)
    chosen = np.unique(np.round(np.linspace(0, members - 1, runs)).astype(int))
    cold, warm, differences = [], [], []
    for k in chosen:
        c, w, _, fields = measure_separate(cfg, values[k], args.repeats)
        cold.append(c)
        warm.append(w)
        differences.append(relative_difference({n: v[k] for n, v in sweep_fields.items()}, fields))
    scale = members / len(chosen)
    separate_cold, separate_warm = scale * sum(cold), scale * sum(warm)
    max_rel_diff = max(differences)
    if not max_rel_diff <= TOLERANCE:
        raise RuntimeError(
            f"N={members}, {stepper}: a member of the sweep differs from its single run by "
            f"{max_rel_diff:.2e} (relative, > {TOLERANCE:g}): the two sides do not compute the "
            "same thing, so their times cannot be compared"
        )
    return dict(
        members=members,
        stepper=stepper,
        grid=f"{args.size}^2",
        steps=int(steps),
        member_steps=member_steps,
        diffusion=[float(low), float(high)],
        sweep_cold_s=sweep_cold,
        sweep_warm_s=sweep_warm,
        separate_cold_s=separate_cold,
        separate_warm_s=separate_warm,
        separate_runs=len(chosen),
        ratio_cold=separate_cold / sweep_cold,
        ratio_warm=separate_warm / sweep_warm,
        max_rel_diff=max_rel_diff,
        device=device_name(),
    )


def plot(rows: list[dict], name: str, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for colour, stepper in enumerate(dict.fromkeys(r["stepper"] for r in rows)):
        mine = sorted((r for r in rows if r["stepper"] == stepper), key=lambda r: r["members"])
        n = [r["members"] for r in mine]
        style = dict(color=f"C{colour}")
        ax.plot(n, [r["ratio_cold"] for r in mine], "o-", label=f"{stepper}, cold", **style)
        ax.plot(n, [r["ratio_warm"] for r in mine], "s--", label=f"{stepper}, warm", **style)
    ax.axhline(1.0, color="gray", lw=0.8)
    ax.set_xscale("log", base=2)
    sizes = sorted({r["members"] for r in rows})
    ax.set_xticks(sizes, [str(m) for m in sizes])
    ax.set_yscale("log")
    ax.set_xlabel("members N")
    ax.set_ylabel("speed-up: N separate runs / one sweep")
    ax.yaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    grid = rows[0]["grid"] if rows else ""
    ax.set_title(f"ilsim sweep vs separate runs, {grid}, {name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


HEADER = (
    f"{'N':>4} {'stepper':>9} {'steps':>6} {'sweep cold':>10} {'sweep warm':>10} "
    f"{'sep. cold':>10} {'sep. warm':>10} {'x cold':>7} {'x warm':>7} {'rel diff':>9}"
)


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--members", type=int, nargs="+", help="sweep sizes N (default 8 64)")
    parser.add_argument("--steppers", nargs="+", default=["explicit", "imex"])
    parser.add_argument("--size", type=int, help="voxels per axis (default 64)")
    parser.add_argument("--end", help='simulated time (default "1 h")')
    parser.add_argument(
        "--diffusion", type=float, nargs=2, help="IL-2 diffusivity range, um^2/s (default 10 20)"
    )
    parser.add_argument("--separate-runs", type=int, help="members run separately (default 8)")
    parser.add_argument("--repeats", type=int, help="timed warm calls (default 3)")
    parser.add_argument("--quick", action="store_true", help="a small case in under a minute")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default: results/)")
    args = parser.parse_args(argv)
    defaults = dict(members=[8, 64], size=64, end="1 h", diffusion=[10.0, 20.0])
    defaults.update(separate_runs=8, repeats=3)
    if args.quick:  # a small case; options given explicitly still apply
        defaults.update(members=[4, 16], size=32, end="15 min", separate_runs=4, repeats=2)
    for key, value in defaults.items():
        if getattr(args, key) is None:
            setattr(args, key, value)
    name = device_name()
    print(
        f"device: {name}; jax {jax.__version__}; {args.size}^2, float32, end {args.end}; "
        f"{KEY} in [{args.diffusion[0]:g}, {args.diffusion[1]:g}] um^2/s; times in s"
    )
    rows = []
    for stepper in args.steppers:
        cfg = base_config(args.size, args.end, stepper)
        measure_separate(cfg, "10 um^2/s", 1)  # the process's one-off start-up, not timed
        for members in args.members:
            if not rows:
                print(HEADER)
            r = run_case(cfg, members, stepper, args)
            rows.append(r)
            print(
                f"{members:>4} {stepper:>9} {r['steps']:>6} {r['sweep_cold_s']:>10.2f} "
                f"{r['sweep_warm_s']:>10.3f} {r['separate_cold_s']:>10.2f} "
                f"{r['separate_warm_s']:>10.3f} {r['ratio_cold']:>7.2f} {r['ratio_warm']:>7.2f} "
                f"{r['max_rel_diff']:>9.1e}",
                flush=True,
            )
    for r in rows:
        if r["separate_runs"] < r["members"]:
            print(
                f"N={r['members']} {r['stepper']}: {r['separate_runs']} of the {r['members']} "
                f"separate runs timed, their sum scaled by {r['members'] / r['separate_runs']:g}"
            )
    worst = max(r["max_rel_diff"] for r in rows)
    print(f"largest relative difference, sweep member vs its single run: {worst:.1e}")
    output = args.output or RESULTS / f"sweep-{name}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    result = dict(
        device=name,
        jax=jax.__version__,
        size=args.size,
        end=args.end,
        key=KEY,
        repeats=args.repeats,
        rows=rows,
    )
    output.write_text(json.dumps(result, indent=1))
    plot(rows, name, output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png')}")
    return output


if __name__ == "__main__":
    main()
