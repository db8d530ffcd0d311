"""Regenerate the results tables of benchmarks/README.md from the JSON files in results/.

    python benchmarks/make_readme.py

Everything between the results markers of the README is replaced; nothing is typed by hand.
"""

from __future__ import annotations

import json
from pathlib import Path

HERE = Path(__file__).parent
START, END = "<!-- results:start -->", "<!-- results:end -->"
TARGETS = {  # (grid, fields, dtype) of the euler cases the targets name: minimum ratio to Numba
    ("256^3", 1, "float32"): 0.8,
    ("128^3", 4, "float32"): 1.0,
}
ACCELERATOR_TARGETS = {  # the same on a GPU: minimum fraction of the measured copy bandwidth
    ("512^3", 1, "float32"): 0.7,
}


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


def _ratio(row: dict, key: str) -> str:
    return f"{row[key] / row['seconds']:.2f}" if key in row else "-"


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


def solver_section(path: Path) -> list[str]:
    result = json.loads(path.read_text())
    lines = [
        f"### Solver throughput: `{result['device']}` (jax {result['jax']}"
        f"{', kernels ' + result['kernels'] if result.get('kernels', 'xla') != 'xla' else ''}"
        f", {path.name})",
        "",
        f"{_copy_bandwidth(result, 1)}. Ratios to NumPy, Numba (on the CPU) and a plain jnp "
        "stencil (XLA, on the device) are "
        "given for the explicit steps, which do the same work as the references; `euler "
        "steps` is the cost of one step in euler steps; `steps/call` the steps each timed call "
        "advanced (- : 20 explicit or 2 implicit steps, before the count was fitted to "
        "about 0.5 s a call).",
        "",
    ]
    rows = []
    for r in result["rows"]:
        explicit = r["stepper"] in ("euler", "euler-compensated", "ssprk3")
        rows.append(
            [
                r["grid"],
                str(r["fields"]),
                r["dtype"],
                r["stepper"],
                f"{1e3 * r['seconds']:.2f}",
                str(r.get("steps_per_call", "-")),
                f"{r['updates_per_s'] / 1e9:.3f}",
                f"{r['bandwidth_fraction']:.0%}",
                _ratio(r, "numpy_s") if explicit else "-",
                _ratio(r, "numba_s") if explicit else "-",
                _ratio(r, "xla_s") if explicit else "-",
                f"{r['euler_steps']:.1f}" if "euler_steps" in r else "-",
                f"{r['compile_s']:.1f}",
                f"{r['peak_bytes'] / 2**20:.0f}" if r.get("peak_bytes") else "-",
            ]
        )
    header = "grid|F|dtype|stepper|ms/step|steps/call|Gupd/s|of copy bw|x NumPy|x Numba|x XLA|"
    header += "euler steps|compile s|peak MiB"
    lines += _table(header.split("|"), rows)
    targets = []
    accelerator = not result["device"].startswith("cpu")
    for r in result["rows"]:
        case = (r["grid"], r["fields"], r["dtype"])
        if r["stepper"] != "euler":
            continue
        if accelerator and case in ACCELERATOR_TARGETS:
            goal = ACCELERATOR_TARGETS[case]
            measured = f"{r['bandwidth_fraction']:.0%} of the copy bandwidth (target {goal:.0%})"
            met = r["bandwidth_fraction"] >= goal
            if met and "copy_method" not in result:
                met = None  # against an understated copy bandwidth: not established
            targets.append(_verdict(r, measured, met))
        if not accelerator and case in TARGETS and "numba_s" in r:
            goal, ratio = TARGETS[case], r["numba_s"] / r["seconds"]
            measured = f"{ratio:.2f}x the Numba stencil (target {goal:.1f}x)"
            targets.append(_verdict(r, measured, ratio >= goal))
    return lines + ([""] + targets if targets else []) + [""]


def _verdict(row: dict, measured: str, met: bool | None) -> str:
    """One line of the targets list under a solver table (met None: not established)."""
    case = f"{row['grid']}, {row['fields']} field(s), {row['dtype']}, explicit euler"
    verdict = {True: "met", False: "missed", None: "not established (see the copy bandwidth)"}
    return f"- {case}: {measured}: {verdict[met]}."


def _reference_text(result: dict) -> str:
    """The reference run of a time-to-solution result, in words."""
    if "reference" not in result:  # results written before the reference was recorded
        return "explicit ssprk3, float64, half the stable step"
    reference = result["reference"]
    if reference is None:
        return "none: this run measured wall times only"
    return ", ".join(f"{k} {v}" for k, v in reference.items())


def time_to_solution_section(path: Path) -> list[str]:
    result = json.loads(path.read_text())
    trajectory = result.get("error_measure") == "trajectory"
    measure = (
        "largest over fields of max_t ||u - u_ref||_2 / max_t ||u_ref||_2 over the output "
        "frames; `end error`: the largest relative L2 difference at the end"
        if trajectory
        else "largest over fields of the relative L2 difference at the end"
    )
    lines = [
        f"### Time to solution: `{result['device']}` ({result['size']}^3, end "
        f"{result['end']}, {path.name})",
        "",
        f"Error against the reference ({_reference_text(result)}): {measure}; runs in float32.",
        "",
    ]

    def error(r: dict, key: str) -> str:
        return "-" if r.get(key) is None or r["stepper"] == "reference" else f"{r[key]:.2e}"

    header = ["scenario", "stepper", "wall s", "compile s", "steps", "error"]
    rows = []
    for r in result["rows"]:
        row = [r["scenario"], r["stepper"], f"{r['wall_s']:.1f}", f"{r['compile_s']:.1f}"]
        row += [str(r["steps"]), error(r, "error")]
        rows.append(row + ([error(r, "end_error")] if trajectory else []))
    return lines + _table(header + (["end error"] if trajectory else []), rows)


def scaling_section(path: Path) -> list[str]:
    result = json.loads(path.read_text())
    lines = [
        f"### Scaling: `{result['device']}` ({result['stepper']}, {path.name})",
        "",
        "`no exchange`: the same per-device work with each block advanced as an independent "
        "domain (no halo exchange); `comm` = 1 - no exchange / sharded.",
        "",
    ]
    rows = [
        [
            r["scaling"],
            str(r["devices"]),
            "x".join(map(str, r["shape"])),
            f"{1e3 * r['seconds']:.2f}",
            f"{1e3 * r['seconds_without_exchange']:.2f}",
            f"{r['communication_share']:.0%}",
        ]
        for r in result["rows"]
    ]
    header = ["scaling", "devices", "grid", "ms/step", "no exchange ms", "comm"]
    return lines + _table(header, rows)


def implicit_section(path: Path) -> list[str]:
    result = json.loads(path.read_text())
    lines = [
        f"### Cost of one implicit step: `{result['device']}` ({path.name})",
        "",
        "imex at 50x the explicit limit, one field, float32; the unit is one explicit ssprk3 "
        "step; `steps/call` as in the solver tables (- : 10 explicit or 2 imex steps a call).",
        "",
    ]
    rows = [
        [
            f"{r['size']}^3",
            r["case"],
            r["solve"],
            f"{1e3 * r['seconds']:.1f}",
            str(r.get("steps_per_call", "-")),
            f"{r['ratio']:.1f}",
        ]
        for r in result["rows"]
    ]
    header = ["grid", "case", "solve", "ms/step", "steps/call", "explicit steps"]
    return lines + _table(header, rows)


def sweep_section(path: Path) -> list[str]:
    result = json.loads(path.read_text())
    rows = result["rows"]
    low, high = rows[0]["diffusion"] if rows else (0, 0)
    lines = [
        f"### Sweep against separate runs: `{result['device']}` ({rows[0]['grid'] if rows else ''}"
        f", end {result['end']}, {path.name})",
        "",
        f"N members varying `{result['key']}` over [{low:g}, {high:g}] um^2/s, float32; times in "
        "s. Cold: set-up, compilation and the run; warm: the run again. `x` = separate / sweep "
        "(above 1 the sweep is faster); `runs`: separate runs timed (their sum scaled to N); "
        "`rel diff`: largest relative difference between a member and its single run.",
        "",
    ]
    body = [
        [
            str(r["members"]),
            r["stepper"],
            f"{r['steps']} ({r['member_steps']})",
            f"{r['sweep_cold_s']:.2f}",
            f"{r['separate_cold_s']:.2f}",
            f"{r['ratio_cold']:.2f}",
            f"{r['sweep_warm_s']:.3f}",
            f"{r['separate_warm_s']:.3f}",
            f"{r['ratio_warm']:.2f}",
            f"{r['separate_runs']}",
            f"{r['max_rel_diff']:.1e}",
        ]
        for r in rows
    ]
    header = "N|stepper|steps (members' own)|sweep cold|separate cold|x cold|sweep warm|"
    header += "separate warm|x warm|runs|rel diff"
    return lines + _table(header.split("|"), body)


def pallas_section(path: Path) -> list[str]:
    result = json.loads(path.read_text())
    shape = "x".join(map(str, result["shape"]))
    lines = [
        f"### Pallas kernels of the one-field euler step: `{result['device']}` ({shape}, "
        f"jax {result['jax']}, {path.name})",
        "",
        f"{_copy_bandwidth(result, 0)}; `of copy bw` at the minimal 8 bytes per voxel-step; "
        "`max diff` from the plain stencil.",
        "",
    ]
    rows = [
        [
            r["kernel"],
            f"{1e3 * r['seconds']:.3f}",
            f"{r['fraction']:.0%}",
            "-" if r["error"] is None else f"{r['error']:.1e}",
        ]
        for r in result["rows"]
    ]
    return lines + _table(["kernel", "ms/step", "of copy bw", "max diff"], rows)


SECTIONS = [
    ("bench_solver-*.json", solver_section),
    ("pallas_stencil-*.json", pallas_section),
    ("implicit_step_cost-*.json", implicit_section),
    ("time_to_solution-*.json", time_to_solution_section),
    ("scaling-*.json", scaling_section),
    ("sweep-*.json", sweep_section),
]


def results_markdown(results: Path) -> str:
    lines = []
    for pattern, section in SECTIONS:
        for path in sorted(results.glob(pattern)):
            lines += section(path) + [""]
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
