"""Work against precision: every stepper and scheme over a range of its step or tolerance, the
error of each run against a converged reference and the wall time it took, on the 3D seed
scenarios (coarsened) and on a nonlinear reaction-diffusion system (Gray-Scott).

    python benchmarks/bench_work_precision.py [--quick] [--size 32] [--end "3 d"]
        [--configs infection_resolution_3d il2_therapy_3d autoimmune_3d] [--no-gray-scott]

Settings: the explicit schemes (euler, ssprk2, ssprk3) at dt = "auto" with `safety` 0.9
(the default), 0.45, 0.225 and 0.1125 of the positivity limit; imex at `time.tolerance` 1e-2,
1e-3 (the default) and 1e-4 (float32 resolves none below about 7e-5:
`steppers.RESOLVED_ULPS`); quasi_steady at 1e-2 and 1e-3. All in float32, as a user runs
them. The scenarios' reference is imex in float64 at a tolerance of 1e-6
(`bench_time_to_solution.REFERENCE`); Gray-Scott's (2D, 64 x 64, 40 s) is ssprk3 in float64 at
a fixed step of 1/16 of the finest explicit one. The error of a run is its largest deviation
over the output frames relative to each field's largest size (`bench_time_to_solution.
Deviation`), the wall time includes set-up and compilation. The summary names, per problem,
the cheapest setting within 1% and within 0.1%. Writes benchmarks/results/work_precision-
<device>.json and a log-log plot of error against wall time.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import jax
import numpy as np
from bench_time_to_solution import REFERENCE, SEED_SCENARIOS, Deviation, Run, scenario
from common import RESULTS, device_name
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import engine
from engine.runs.driver import output_times
from engine.runs.examples import gray_scott_model

SAFETIES = (0.9, 0.45, 0.225, 0.1125)
TOLERANCES = (1e-2, 1e-3, 1e-4)
THRESHOLDS = (1e-2, 1e-3)
GRAY_SCOTT = dict(shape=(64, 64), end=40.0, every=4.0)


def settings(quick: bool) -> list[tuple[str, str, dict]]:
    """(scheme, setting label, Simulation options) of every run."""
    safeties = SAFETIES[:2] if quick else SAFETIES
    tolerances = TOLERANCES[:2] if quick else TOLERANCES
    runs = [
        (scheme, f"safety {s:g}", dict(stepper="explicit", scheme=scheme, safety=s))
        for scheme in ("euler", "ssprk2", "ssprk3")
        for s in safeties
    ]
    runs += [("imex", f"tolerance {t:g}", dict(stepper="imex", tolerance=t)) for t in tolerances]
    runs += [
        ("quasi_steady", f"tolerance {t:g}", dict(stepper="quasi_steady", tolerance=t))
        for t in tolerances[:2]
    ]
    return runs


def measure(problem: str, reference: Run, runs: dict, times) -> list[dict]:
    """Advance the reference and every run frame by frame; each run's error and timing."""
    deviations = {key: Deviation() for key in runs}
    for t in times:
        reference.advance(t)
        fields = reference.fields()
        for key, run in runs.items():
            run.advance(t)
            deviations[key].add(run.fields(), fields)
    rows = []
    for (scheme, setting), run in runs.items():
        errors = deviations[scheme, setting].relative()
        rows.append(
            dict(
                problem=problem,
                scheme=scheme,
                setting=setting,
                error=max(errors.values()),
                errors=errors,
                **run.timing(),
            )
        )
    return rows


def scenario_rows(name: str, args, chosen) -> list[dict]:
    cfg = scenario(name, args.size, args.end)
    reference = Run.start(cfg, **REFERENCE)
    runs = {(s, label): Run.start(cfg, dtype="float32", **o) for s, label, o in chosen}
    return measure(name, reference, runs, output_times(cfg.time.end, cfg.time.output_every)[1:])


def gray_scott_rows(chosen, quick: bool) -> list[dict]:
    shape = (32,) if quick else GRAY_SCOTT["shape"]
    model = gray_scott_model(shape)
    finest = engine.Simulation(model, stepper="explicit", scheme="ssprk3")
    limit = finest.stable_dt(finest.initial_state())
    fixed_dt = min(SAFETIES) * limit / 16
    reference = Run.start(model, stepper="explicit", scheme="ssprk3", dtype="float64", dt=fixed_dt)
    runs = {(s, label): Run.start(model, dtype="float32", **o) for s, label, o in chosen}
    times = np.arange(1, round(GRAY_SCOTT["end"] / GRAY_SCOTT["every"]) + 1) * GRAY_SCOTT["every"]
    return measure("gray_scott", reference, runs, times)


def cheapest(rows: list[dict]) -> list[dict]:
    """Per problem and threshold, the fastest setting whose error is within it (None if none)."""
    summary = []
    for problem in dict.fromkeys(r["problem"] for r in rows):
        for threshold in THRESHOLDS:
            within = [r for r in rows if r["problem"] == problem and r["error"] <= threshold]
            best = min(within, key=lambda r: r["wall_s"], default=None)
            summary.append(
                dict(
                    problem=problem,
                    threshold=threshold,
                    **(
                        {k: best[k] for k in ("scheme", "setting", "wall_s", "error", "steps")}
                        if best
                        else dict(scheme=None)
                    ),
                )
            )
    return summary


def plot(rows: list[dict], device: str, path: Path) -> Figure:
    """Error against wall time, log-log, one panel per problem, one line per scheme; saved to
    `path` and returned."""
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    figure = Figure(figsize=(4.2 * len(problems), 3.8), layout="constrained")
    FigureCanvasAgg(figure)
    for index, problem in enumerate(problems):
        axes = figure.add_subplot(1, len(problems), index + 1)
        for scheme in dict.fromkeys(r["scheme"] for r in rows):
            mine = [r for r in rows if r["problem"] == problem and r["scheme"] == scheme]
            mine = [r for r in mine if r["error"] > 0 and math.isfinite(r["error"])]
            if mine:
                axes.loglog(
                    [r["wall_s"] for r in mine], [r["error"] for r in mine], "o-", label=scheme
                )
        for threshold in THRESHOLDS:
            axes.axhline(threshold, color="grey", linewidth=0.6, linestyle=":")
        axes.set(title=problem, xlabel="wall time (s)", ylabel="error over the trajectory")
        axes.legend(fontsize="small")
    figure.suptitle(f"work against precision, {device}")
    figure.savefig(path, dpi=110)
    return figure


def main(argv=None) -> Path:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--configs", nargs="*", default=SEED_SCENARIOS)
    parser.add_argument("--size", type=int, default=32, help="voxels per axis of the scenarios")
    parser.add_argument("--end", default=None, help='simulated time, e.g. "12 h" (default: config)')
    parser.add_argument("--no-gray-scott", action="store_true")
    parser.add_argument("--quick", action="store_true", help="16^3 for 1 h, two settings each")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default: results/)")
    args = parser.parse_args(argv)
    if args.quick:
        args.size, args.end = 16, "1 h"
    device = device_name()
    output = args.output or RESULTS / f"work_precision-{device}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    chosen = settings(args.quick)
    result = dict(
        device=device,
        jax=jax.__version__,
        size=args.size,
        end=args.end or "as config",
        reference=REFERENCE,
        rows=[],
        cheapest=[],
    )
    print(f"device: {device}; {args.size}^3, end {result['end']}")
    print(f"{'problem':>24} {'scheme':>12} {'setting':>17} {'wall s':>8} {'steps':>8} {'error':>9}")
    problems = [] if args.no_gray_scott else [lambda: gray_scott_rows(chosen, args.quick)]
    problems += [lambda name=name: scenario_rows(name, args, chosen) for name in args.configs]
    for rows_of in problems:
        for row in rows_of():
            result["rows"].append(row)
            print(
                f"{row['problem']:>24} {row['scheme']:>12} {row['setting']:>17} "
                f"{row['wall_s']:>8.2f} {row['steps']:>8} {row['error']:>9.2e}",
                flush=True,
            )
        result["cheapest"] = cheapest(result["rows"])
        output.write_text(json.dumps(result, indent=1, default=float))  # kept if stopped early
    for best in result["cheapest"]:
        within = f"within {best['threshold']:.1%}"
        if best["scheme"] is None:
            print(f"{best['problem']:>24} {within}: no setting")
        else:
            print(
                f"{best['problem']:>24} {within}: {best['scheme']} {best['setting']}, "
                f"{best['wall_s']:.2f} s (error {best['error']:.2e})"
            )
    plot(result["rows"], device, output.with_suffix(".png"))
    print(f"wrote {output} and {output.with_suffix('.png')}")
    return output


if __name__ == "__main__":
    main()
