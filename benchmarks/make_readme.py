"""Regenerate the results of benchmarks/README.md from the JSON files in results/.

    python benchmarks/make_readme.py

Everything between the results markers of the README is replaced; nothing there is typed by
hand. Each target gets one table, made from the results file that is current for it
(`CURRENT`), and a verdict computed from that file. Other files in results/ are earlier
readings and experiments, discussed in docs/performance-notes.md; when a rerun should replace
a current file under another name, change its entry in `CURRENT`.
"""

from __future__ import annotations

import functools
import json
import math
from pathlib import Path

HERE = Path(__file__).parent
START, END = "<!-- results:start -->", "<!-- results:end -->"

TARGETS = {  # (grid, fields, dtype) of the euler cases the targets name: minimum ratio to Numba
    ("256^3", 1, "float32"): 0.8,
    ("128^3", 4, "float32"): 1.0,
}
ACCELERATOR_TARGETS = {  # on a GPU: minimum fraction of the measured copy bandwidth, euler
    ("512^3", 1, "float32"): 0.9,  # compensated and not
    ("512^3", 4, "float32"): 0.9,
}
CELLS_TARGETS = {  # device kind: (cells, most field steps their share of a step may cost)
    "cpu": (100_000, 1.0),
}
CELLS_GPU_TARGET_MS = 1.0
"""Milliseconds per step of 1e6 cells on one GPU."""
TIME_TO_SOLUTION_TARGET = 60.0
"""Wall seconds (compilation included) for each 3D seed scenario at 128^3, 24 simulated hours
with imex, on one GPU."""

DEFAULT_SETTINGS = (("imex", "tolerance 0.001"), ("ssprk3", "safety 0.9"))
"""The work-precision rows run at a stepper's defaults (imex; explicit, whose scheme is ssprk3)."""
SHIPPED_ERROR_TARGET = 0.01
"""Largest error over the trajectory of each seed scenario run as shipped (imex, its
`time.tolerance`) against a converged float64 reference."""

CURRENT = {
    "cpu": ["bench_solver-cpu-cpu-targets.json", "bench_solver-cpu-cpu.json"],
    "gpu": [
        "bench_solver-gpu-NVIDIA_H200-stages_xla.json",
        "bench_solver-gpu-NVIDIA_H200-stages_pallas.json",
    ],
    "gpu_bound": ["pallas_stencil-gpu-NVIDIA_H200.json"],
    "time_to_solution": [
        "time_to_solution-cpu-cpu-32-heun_drift.json",
        "time_to_solution-cpu-cpu-32-autoimmune-heun_drift.json",
        "time_to_solution-gpu-NVIDIA_H200.json",
    ],
    "work_precision": ["work_precision-cpu-cpu.json"],
    "tolerance": ["tolerance-cpu-cpu.json"],
    "implicit": ["implicit_step_cost-cpu-cpu.json"],
    "vessels": [
        "vessels_and_consumers-cpu-cpu-64.json",
        "vessels_and_consumers-cpu-cpu-128.json",
    ],
    "sweep": ["sweep-cpu-cpu.json", "sweep-cpu-cpu-256.json"],
    "scaling": ["scaling-cpu-cpu-cpu_devices.json", "scaling-gpu-NVIDIA_H200.json"],
    "cells": ["cells-cpu-cpu.json"],
}
"""The results file(s) current for each section, in the order shown."""


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _load(results: Path, key: str) -> list[tuple[str, dict]]:
    """(file name, parsed JSON) of each current file of a section that exists."""
    paths = [results / name for name in CURRENT[key]]
    return [(p.name, json.loads(p.read_text())) for p in paths if p.is_file()]


def _missing(key: str) -> list[str]:
    return [f"No results yet ({', '.join(CURRENT[key])} missing).", ""]


def _section(title: str, key: str):
    """Make a section from its body, which gets the section's current files (`_load`) and
    the results folder: its heading, then the body, or a line naming the missing files."""

    def make(body):
        @functools.wraps(body)
        def section(results: Path) -> list[str]:
            loaded = _load(results, key)
            heading = [f"### {title}", ""]
            return heading + (body(loaded, results) if loaded else _missing(key))

        return section

    return make


def _span(values, fmt: str) -> str:
    """'a-b' of the values (one value alone when they agree in this format)."""
    low, high = format(min(values), fmt), format(max(values), fmt)
    return low if low == high else f"{low}-{high}"


def _copy_bandwidth(result: dict, digits: int) -> str:
    """The run's copy bandwidth, flagged where it was measured before `copy_method`."""
    bandwidth = f"{result['copy_bandwidth'] / 1e9:.{digits}f}"
    text = f"Copy bandwidth measured in the same run: {bandwidth} GB/s"
    if "copy_method" not in result:
        text += (
            " (measured with a fresh output per call, which understates it: on 2 CPU cores "
            "0.4-0.56x the in-place rate, so fractions of it read up to 2.5x high; on a GPU "
            "the difference is not measured)"
        )
    return text


def _verdict(row: dict, measured: str, met: bool | None) -> str:
    """One line of a targets list (met None: not established)."""
    case = f"{row['grid']}, {row['fields']} field(s), {row['dtype']}, explicit {row['stepper']}"
    verdict = {True: "met", False: "missed", None: "not established (see the copy bandwidth)"}
    return f"- **Target** {case}: {measured}: **{verdict[met]}**."


def solver_verdicts(result: dict) -> list[str]:
    """The verdict of every target case a solver result holds."""
    accelerator = not result["device"].startswith("cpu")
    lines = []
    for r in result["rows"]:
        case = (r["grid"], r["fields"], r["dtype"])
        if r["stepper"] not in ("euler", "euler-compensated"):
            continue
        if accelerator and case in ACCELERATOR_TARGETS:
            goal = ACCELERATOR_TARGETS[case]
            measured = f"{r['bandwidth_fraction']:.0%} of the copy bandwidth (target {goal:.0%})"
            met = r["bandwidth_fraction"] >= goal
            if met and "copy_method" not in result:
                met = None  # against an understated copy bandwidth: not established
            lines.append(_verdict(r, measured, met))
        if not accelerator and case in TARGETS and "numba_s" in r and r["stepper"] == "euler":
            goal, ratio = TARGETS[case], r["numba_s"] / r["seconds"]
            measured = f"{ratio:.2f}x the Numba stencil (target {goal:.1f}x)"
            lines.append(_verdict(r, measured, ratio >= goal))
    return lines


def _ms(row: dict | None) -> str:
    return "-" if row is None else f"{1e3 * row['seconds']:.2f}"


def _ratio(row: dict | None, key: str) -> str:
    return "-" if row is None or key not in row else f"{row[key] / row['seconds']:.2f}"


def _compensation(result: dict) -> str:
    """How a result's compensated steps conserved."""
    if result.get("compensation") == "stochastic_rounding":
        return "each step's sum rounded stochastically"
    return "Kahan summation, as before stochastic rounding"


def _cost(row: dict | None, plain: dict | None) -> str:
    """`row`'s time over `plain`'s, e.g. "1.12x"."""
    return "-" if None in (row, plain) else f"{row['seconds'] / plain['seconds']:.2f}x"


@_section("CPU: explicit step against NumPy and Numba (targets)", "cpu")
def cpu_section(loaded: list[tuple[str, dict]], results: Path) -> list[str]:
    """The CPU solver matrix as one row per (grid, fields): the explicit steps of both dtypes
    side by side, the ratios to the references for euler."""
    lines = []
    for name, result in loaded:
        lines += [
            f"`{result['device']}`, jax {result['jax']}, `{name}`. "
            f"{_copy_bandwidth(result, 1)}. Milliseconds per step; `x Numba`, `x NumPy`: the "
            "reference's time over the engine's for the same euler step (above 1 the engine "
            "is faster); `bw`: euler's share of the copy bandwidth; `comp.`: the float32 "
            f"default, which conserves ({_compensation(result)}), and its cost over the same "
            "scheme rounded to nearest.",
            "",
        ]
        by_case = {(r["grid"], r["fields"], r["dtype"], r["stepper"]): r for r in result["rows"]}
        cases = dict.fromkeys((r["grid"], r["fields"]) for r in result["rows"])
        rows = []
        for grid, fields in cases:
            f32 = {s: by_case.get((grid, fields, "float32", s)) for s in ("euler", "ssprk3")}
            comp = by_case.get((grid, fields, "float32", "euler-compensated"))
            comp3 = by_case.get((grid, fields, "float32", "ssprk3-compensated"))
            f64 = by_case.get((grid, fields, "float64", "euler"))
            euler = f32["euler"]
            bw = "-" if euler is None else f"{euler['bandwidth_fraction']:.0%}"
            rows.append(
                [grid, str(fields), _ms(euler), _ratio(euler, "numba_s"), _ratio(euler, "numpy_s")]
                + [bw, _ms(comp), _cost(comp, euler), _ms(f32["ssprk3"]), _ms(comp3)]
                + [_cost(comp3, f32["ssprk3"]), _ms(f64), _ratio(f64, "numba_s")]
            )
        header = ["grid", "F", "euler f32", "x Numba", "x NumPy", "bw", "comp. f32", "cost"]
        header += ["ssprk3 f32", "comp. f32", "cost", "euler f64", "x Numba f64"]
        lines += _table(header, rows) + [""] + solver_verdicts(result) + [""]
    return lines


@_section("GPU: explicit step against the copy bandwidth (target)", "gpu")
def gpu_section(loaded: list[tuple[str, dict]], results: Path) -> list[str]:
    lines = []
    for name, result in loaded:
        lines += [
            f"`{result['device']}`, jax {result['jax']}, `{name}`, the explicit steps on "
            f"{KERNELS[result.get('kernels', 'xla')]}. {_copy_bandwidth(result, 1)}. `bw`: the "
            "share of it at the minimal traffic of a step (each field read and written once; "
            "ssprk3's three stages move at least 4x that); `x XLA`: a plain jnp stencil's time "
            "over the engine's.",
            "",
        ]
        rows = [
            [r["grid"], str(r["fields"]), r["dtype"], r["stepper"], _ms(r)]
            + [f"{r['updates_per_s'] / 1e9:.0f}", f"{r['bandwidth_fraction']:.0%}"]
            + [_ratio(r, "xla_s"), f"{r['compile_s']:.1f}"]
            for r in result["rows"]
        ]
        header = ["grid", "F", "dtype", "stepper", "ms/step", "Gupd/s", "bw", "x XLA", "compile s"]
        lines += _table(header, rows) + [""] + solver_verdicts(result) + [""]
    for name, bound in _load(results, "gpu_bound"):
        bare = [r for r in bound["rows"] if r.get("layout") in STENCIL_LAYOUTS]
        copies = [r for r in bound["rows"] if "copy" in r.get("layout", "")]
        engine = [r for r in bound["rows"] if r["kernel"].startswith("engine euler (xla)")]
        if bare and engine:
            best = min(bare, key=_seconds)
            line = (
                f"- Bound (`{name}`, {'x'.join(map(str, bound['shape']))}, one field): the "
                f"fastest hand-written Pallas kernel of the bare step, `{best['kernel']}`, ran "
                f"{1e3 * best['seconds']:.3f} ms per step ({best['fraction']:.0%} of that run's "
                f"copy bandwidth), the engine's step {1e3 * engine[0]['seconds']:.3f} ms "
                f"({engine[0]['fraction']:.0%}) in the same run."
            )
            for layout in sorted({r["layout"] for r in copies}):
                fastest = min((r for r in copies if r["layout"] == layout), key=_seconds)
                line += (
                    f" The fastest {layout} through Pallas (`{fastest['kernel']}`), the ceiling "
                    f"of such kernels: {fastest['fraction']:.0%}."
                )
            if "copy_method" not in bound and loaded:  # against an understated copy rate
                in_place = max(result["copy_bandwidth"] for _, result in loaded)
                moved = 8 * math.prod(bound["shape"]) / best["seconds"]
                line += (
                    f" That copy bandwidth was measured with a fresh output per call: against "
                    f"the in-place {in_place / 1e9:.0f} GB/s above the kernel moves "
                    f"{moved / in_place:.0%}."
                )
            lines.append(line)
    return lines + [""]


KERNELS = {"xla": "XLA's fusion", "pallas": "the Pallas kernels (one per stage)"}
STENCIL_LAYOUTS = ("march", "block", "tma stencil")
"""The hand-written kernels of the bare step in `bench_pallas_stencil.py`, not its copies."""


def _seconds(row: dict) -> float:
    return row["seconds"]


def _reference_text(result: dict) -> str:
    """The reference run of a time-to-solution result, in words."""
    if "reference" not in result:  # results written before the reference was recorded
        return "explicit ssprk3, float64, half the stable step"
    reference = result["reference"]
    if reference is None:
        return "none: wall times only"
    return ", ".join(f"{k} {v}" for k, v in reference.items())


@_section("Time to solution: the 3D seed scenarios", "time_to_solution")
def time_to_solution_section(loaded: list[tuple[str, dict]], results: Path) -> list[str]:
    lines = []
    for name, result in loaded:
        trajectory = result.get("error_measure") == "trajectory"
        measure = (
            "the largest over fields of max_t ||u - u_ref|| / max_t ||u_ref|| over the output "
            "frames (relative L2)"
            if trajectory
            else "the largest relative L2 difference at the end"
        )
        lines += [
            f"`{result['device']}`, {result['size']}^3, end {result['end']}, float32, "
            f"`{name}`. Reference: {_reference_text(result)}; `error`: {measure}. Wall times "
            "include compilation.",
            "",
        ]

        def error(r: dict) -> str:
            value = r.get("error")
            return "-" if value is None or r["stepper"] == "reference" else f"{value:.1e}"

        rows = [
            [r["scenario"], r["stepper"], f"{r['wall_s']:.1f}", f"{r['compile_s']:.1f}"]
            + [str(r["steps"]), error(r)]
            for r in result["rows"]
        ]
        lines += _table(["scenario", "stepper", "wall s", "compile s", "steps", "error"], rows)
        lines += [""] + _time_verdicts(result) + [""]
    return lines


def _time_verdicts(result: dict) -> list[str]:
    """Per stepper, its errors and wall times; the GPU target's verdict where it applies."""
    lines = []
    steppers = dict.fromkeys(r["stepper"] for r in result["rows"] if r["stepper"] != "reference")
    for stepper in steppers:
        rows = [r for r in result["rows"] if r["stepper"] == stepper]
        errors = [r["error"] for r in rows if r.get("error") is not None]
        walls = [r["wall_s"] for r in rows]
        text = f"- {stepper}: {_span(walls, '.1f')} s"
        if errors:
            text += f", error {_span([100 * e for e in errors], '.2g')}%"
        target = (
            not result["device"].startswith("cpu")
            and result["size"] == 128
            and result["end"] == "24 h"
            and stepper == "imex"
        )
        if target:
            met = max(walls) < TIME_TO_SOLUTION_TARGET
            text += (
                f". **Target** each scenario under {TIME_TO_SOLUTION_TARGET:.0f} s: "
                f"**{'met' if met else 'missed'}**"
            )
        shipped = result["end"] == "as config" and stepper == "imex"  # the configs' settings
        if shipped and errors:
            met = max(errors) <= SHIPPED_ERROR_TARGET
            text += (
                f". **Target** each scenario at its shipped settings within "
                f"{SHIPPED_ERROR_TARGET:.0%} over its whole run: **{'met' if met else 'missed'}**"
            )
        lines.append(text + ".")
    return lines


@_section("Work against precision: the cheapest setting within 1% and 0.1%", "work_precision")
def work_precision_section(loaded: list[tuple[str, dict]], results: Path) -> list[str]:
    lines = []
    for name, result in loaded:
        lines += [
            f"`{result['device']}`, jax {result['jax']}, `{name}` (plot: the same name with "
            f"`.png`): the seed scenarios at {result['size']}^3, end {result['end']}, and "
            f"Gray-Scott (2D); float32; reference {_reference_text(result)}. Every stepper "
            "and scheme over a range of settings; `error`: each field's largest deviation over "
            "the frames relative to its largest size; wall time with set-up and compilation.",
            "",
        ]
        rows = []
        for best in result["cheapest"]:
            within = f"{best['threshold']:.1%}"
            if best["scheme"] is None:
                rows.append([best["problem"], within, "none", "-", "-", "-"])
                continue
            rows.append(
                [best["problem"], within, f"{best['scheme']} {best['setting']}"]
                + [f"{best['wall_s']:.2f}", str(best["steps"]), f"{best['error']:.1e}"]
            )
        header = ["problem", "within", "cheapest setting", "wall s", "steps", "error"]
        lines += _table(header, rows) + [""]
        defaults = [r for r in result["rows"] if (r["scheme"], r["setting"]) in DEFAULT_SETTINGS]
        lines += [
            f"- {r['problem']}, {r['scheme']} at its default ({r['setting']}): error "
            f"{r['error']:.1e} in {r['wall_s']:.2f} s."
            for r in defaults
        ] + [""]
    return lines


@_section("Error against the tolerance: imex, float64", "tolerance")
def tolerance_section(loaded: list[tuple[str, dict]], results: Path) -> list[str]:
    lines = []
    for name, result in loaded:
        steps = "adaptive steps" if result["adaptive"] else 'dt = "auto"'
        lines += [
            f"`{result['device']}`, jax {result['jax']}, `{name}`: the seed scenarios at "
            f"{result['size']}^3, end {result['end']}, imex with {steps} in float64; "
            f"reference {_reference_text(result)}. Each cell: the error over the trajectory "
            "(as above) / `time.tolerance`, and the steps; `check`: the reference against one "
            "at twice its step.",
            "",
        ]
        tolerances = sorted({r["tolerance"] for r in result["rows"]}, reverse=True)
        rows = []
        for scenario, check in result["reference_check"].items():
            cells = {r["tolerance"]: r for r in result["rows"] if r["scenario"] == scenario}
            rows.append(
                [scenario]
                + [f"{cells[t]['ratio']:.2f} ({cells[t]['steps']})" for t in tolerances]
                + [f"{check:.1e}"]
            )
        lines += _table(["scenario", *[f"{t:g}" for t in tolerances], "check"], rows) + [""]
        ratios = [r["ratio"] for r in result["rows"]]
        lines += [f"- error / tolerance: {_span(ratios, '.2f')} over every run.", ""]
    return lines


@_section("Implicit step cost", "implicit")
def implicit_section(loaded: list[tuple[str, dict]], results: Path) -> list[str]:
    lines = []
    for name, result in loaded:
        lines += [
            f"`{result['device']}`, jax {result.get('jax', '?')}, `{name}`. One field, float32, "
            "imex at 50x the explicit limit; the unit is one explicit ssprk3 step.",
            "",
        ]
        rows = [
            [f"{r['size']}^3", r["case"], r["solve"], f"{1e3 * r['seconds']:.1f}"]
            + [f"{r['ratio']:.1f}"]
            for r in result["rows"]
        ]
        lines += _table(["grid", "case", "solve", "ms/step", "explicit steps"], rows) + [""]
        implicit = [r for r in result["rows"] if r["case"].startswith("imex")]
        if implicit:
            per_time = [r["ratio"] / 50 for r in implicit]
            lines += [
                f"- One imex step costs {_span([r['ratio'] for r in implicit], '.1f')} explicit "
                f"steps and covers 50: per simulated second {_span(per_time, '.2f')} of the "
                "explicit stepper's time.",
                "",
            ]
    return lines


VESSELS_TARGET_SECONDS = 9.2
"""Whole-process seconds for the vessels problem at 64^3 within 1% with the defaults on this
CPU (a tenth of what BioFVM needs for 1.4% at 6 h alone); in proportion to the voxels at
other sizes."""


@_section("Voxel-scale sinks and pulsed vessels against BioFVM", "vessels")
def vessels_section(loaded: list[tuple[str, dict]], results: Path) -> list[str]:
    lines = []
    for name, result in loaded:
        size = result["size"]
        lines += [
            f"`{result['device']}`, `{name}`: {size}^3, whole-process `ilsim run`; error at "
            "3, 6 and 12 h against imex float64 at tolerance "
            f"{result['reference']['options']['time.tolerance']:g}.",
            "",
        ]
        rows = [
            [r["run"], f"{100 * r['error']:.3g}%", f"{r['seconds']:.1f}"] for r in result["runs"]
        ]
        lines += _table(["run", "error", "seconds"], rows) + [""]
        default = next((r for r in result["runs"] if r["run"] == "imex-1e-3"), None)
        if default is not None:
            target = VESSELS_TARGET_SECONDS * (size / 64) ** 3
            met = default["error"] <= 0.01 and default["seconds"] <= target
            lines += [
                f"- Target: the defaults within 1% in {target:.1f} s or less: "
                f"{'met' if met else 'missed'} ({100 * default['error']:.3g}% in "
                f"{default['seconds']:.1f} s). BioFVM 1.0.4 at 64^3 on this machine: "
                + ", ".join(
                    f"{100 * b['error']:.2g}% in {b['seconds']:g} s (dt {b['dt_min']:g} min)"
                    for b in result["biofvm_64"]
                )
                + ".",
                "",
            ]
    return lines


@_section("Sweep against separate runs", "sweep")
def sweep_section(loaded: list[tuple[str, dict]], results: Path) -> list[str]:
    first = loaded[0][1]
    lines = [
        f"`{first['device']}`, jax {first['jax']}, `{'`, `'.join(n for n, _ in loaded)}`. N "
        f"members varying `{first['key']}`, float32; seconds. Cold: set-up, compilation and "
        "the run; warm: the run again. `x` = separate / sweep (above 1 the sweep is faster).",
        "",
    ]
    rows, cold, warm = [], [], []
    for _, result in loaded:
        for r in result["rows"]:
            rows.append(
                [r["grid"], result["end"], str(r["members"]), r["stepper"]]
                + [f"{r['sweep_cold_s']:.2f}", f"{r['separate_cold_s']:.2f}"]
                + [f"{r['ratio_cold']:.2f}", f"{r['sweep_warm_s']:.3f}"]
                + [f"{r['separate_warm_s']:.3f}", f"{r['ratio_warm']:.2f}"]
                + [f"{r['max_rel_diff']:.0e}"]
            )
            cold.append(r["ratio_cold"])
            warm.append(r["ratio_warm"])
    header = ["grid", "end", "N", "stepper", "sweep cold", "separate cold", "x cold"]
    header += ["sweep warm", "separate warm", "x warm", "rel diff"]
    lines += _table(header, rows) + [""]
    return lines + [
        f"- Cold the sweep is {_span(cold, '.1f')}x faster; warm {_span(warm, '.2f')}x. "
        "`rel diff`: largest relative difference between a member and its single run.",
        "",
    ]


@_section("Scaling over devices", "scaling")
def scaling_section(loaded: list[tuple[str, dict]], results: Path) -> list[str]:
    lines = [
        "`no exchange`: the same per-device work with each block advanced as an independent "
        "domain; `comm` = 1 - no exchange / sharded.",
        "",
    ]
    rows = [
        [f"`{result['device']}`", result["stepper"], r["scaling"], str(r["devices"])]
        + ["x".join(map(str, r["shape"])), f"{1e3 * r['seconds']:.2f}"]
        + [f"{1e3 * r['seconds_without_exchange']:.2f}", f"{r['communication_share']:.0%}"]
        for _, result in loaded
        for r in result["rows"]
    ]
    header = ["device", "stepper", "scaling", "devices", "grid", "ms/step", "no exchange ms"]
    lines += _table(header + ["comm"], rows) + [""]
    for name, result in loaded:
        split = [r for r in result["rows"] if r["devices"] > 1]
        if split:
            share = [100 * r["communication_share"] for r in split]
            devices = _span([r["devices"] for r in split], "d")
            lines.append(
                f"- `{result['device']}` (`{name}`): over {devices} devices the halo exchange "
                f"takes {_span(share, '.0f')}% of a step."
            )
        else:
            lines.append(
                f"- `{result['device']}` (`{name}`): one device only; scaling over several is "
                "not measured yet."
            )
    return lines + [""]


@_section("Individual cells beside the field step", "cells")
def cells_section(loaded: list[tuple[str, dict]], results: Path) -> list[str]:
    lines = []
    for name, result in loaded:
        rows = result["rows"]
        lines += [
            f"`{result['device']}`, jax {result.get('jax', '?')}, `{name}`: {rows[0]['grid']}, "
            f"{rows[0]['stepper']} fields at dt = 1 s, cells every few field steps "
            "(`bench_cells.py`); `cells ms` = step with cells - field step.",
            "",
        ]
        table = [
            [f"{r['cells']:,}", f"{r['step_ms']:.2f}", f"{r['field_step_ms']:.2f}"]
            + [f"{r['cells_ms']:.2f}", f"{r['ns_per_cell_step']:.0f}", f"{r['field_steps']:.2f}"]
            for r in rows
        ]
        header = ["cells", "ms/step", "field step ms", "cells ms", "ns per cell", "field steps"]
        lines += _table(header, table) + [""]
        kind = "cpu" if result["device"].startswith("cpu") else "gpu"
        if kind == "cpu":
            count, most = CELLS_TARGETS["cpu"]
            row = next((r for r in rows if r["cells"] == count), None)
            if row is not None:
                met = row["field_steps"] <= most
                lines.append(
                    f"- **Target** {count:,} cells add at most {most:g} field step: "
                    f"{row['field_steps']:.2f}, **{'met' if met else 'missed'}**."
                )
        else:
            row = next((r for r in rows if r["cells"] == 1_000_000), None)
            if row is not None:
                met = row["cells_ms"] < CELLS_GPU_TARGET_MS
                lines.append(
                    f"- **Target** 1,000,000 cells under {CELLS_GPU_TARGET_MS:g} ms per step: "
                    f"{row['cells_ms']:.2f} ms, **{'met' if met else 'missed'}**."
                )
        lines.append("")
    return lines


SECTIONS = [
    cpu_section,
    gpu_section,
    time_to_solution_section,
    work_precision_section,
    tolerance_section,
    implicit_section,
    vessels_section,
    sweep_section,
    scaling_section,
    cells_section,
]


def results_markdown(results: Path) -> str:
    lines = []
    for section in SECTIONS:
        lines += section(results)
    return "\n".join(lines).rstrip() + "\n"


def main() -> None:
    readme = HERE / "README.md"
    text = readme.read_text()
    before, rest = text.split(START, 1)
    _, after = rest.split(END, 1)
    body = results_markdown(HERE / "results")
    readme.write_text(f"{before}{START}\n{body}{END}{after}")
    print(f"updated {readme}")


if __name__ == "__main__":
    main()
