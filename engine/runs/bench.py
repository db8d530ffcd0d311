"""Benchmarks of the solver on the device JAX sees: the standard matrix `ilsim bench` runs,
the measuring pieces the developers' scripts in `benchmarks/` share, and the result's JSON,
table, comparison and figure. The JSON's keys and what the figures mean:
docs/benchmarking.md.

The benchmark model (`chain_model`): F species on a grid of 10 um voxels with zero-flux
walls, each diffusing (D = 100 um^2/s) and decaying (1e-3 1/s), coupled in a chain: field i
converts into field i + 1 at 1e-3 1/s. Its fields start uniformly random in [0, 1) nM.

Timing: every timed call advances as many steps as take about `call_seconds` (as a run
advances an output interval per call), after a call that compiles; the figure is the median
over `repeats` calls, per step. Throughput is counted in voxel-updates (voxels x fields per
step); its bandwidth is counted at the least traffic a step can have, each field read and
written once (2 x itemsize bytes per voxel and field), and compared with the device's copy
bandwidth measured in the same run.
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import math
import platform
import re
import resource
import statistics
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

import engine
from engine.io.replacing import replaced
from engine.model.model import Fields, Model, Species
from engine.model.terms import Conversion
from engine.numerics.grid import Grid
from engine.numerics.memory import device_memory, peak_process_bytes
from engine.post import plots
from engine.stepping.simulation import Simulation, State

SCHEMA = "ilsim-bench/1"
"""The `schema` of a result's JSON; a changed meaning of any key changes it."""

D, DECAY, RATE, SPACING = 100.0, 1e-3, 1e-3, 10.0
"""The chain model: diffusion (um^2/s), decay and conversion rates (1/s), voxel size (um)."""

STEPPERS = {
    "explicit": dict(stepper="explicit", scheme="ssprk3", compensated=True),
    "explicit-uncompensated": dict(stepper="explicit", scheme="ssprk3", compensated=False),
    "imex": dict(stepper="imex"),
}
"""The steppers of the matrix, as `Simulation` options: explicit is a run's default explicit
step (ssprk3, float32 increments added with stochastic rounding); uncompensated trades
conservation for speed (`time.compensated = false`), and is measured in float32 only: float64
steps are never rounded stochastically, so there it is the same program as explicit."""

UNBOUNDED_STEP = 60.0
"""The step (s) taken where a stepper's own limit is unbounded: imex solves diffusion and decay
alone (one field, no conversion) exactly at any step, where a run would take its output
interval as one step."""

IMPLICIT_LEAST_STEPS = 2
"""Least steps of a timed call of imex, whose steps are each far longer than explicit ones."""

LARGEST_FIELDS, LARGEST_DTYPE, LARGEST_STEPPERS = 6, "float32", ("explicit", "imex")
"""The largest grid is predicted for this many coupled fields, in this dtype, per stepper."""

REFERENCE_SIZE = 32
"""Voxels per axis of the 3D grid whose compiled peak memory seeds the largest-grid guess."""


@dataclasses.dataclass(frozen=True)
class Matrix:
    """The cases of a benchmark: every grid (voxels per axis) x fields x dtype x stepper.

    repeats: timed calls per case (their median is taken); call_seconds: about how long each
    timed call runs (s); least_steps: least explicit steps per call; quick: the quick matrix.
    """

    grids: tuple[tuple[int, ...], ...]
    fields: tuple[int, ...] = (1, 4)
    dtypes: tuple[str, ...] = ("float32", "float64")
    repeats: int = 5
    call_seconds: float = 0.5
    least_steps: int = 20
    quick: bool = False

    def steppers(self, dtype: str) -> tuple[str, ...]:
        """The steppers measured in `dtype`, explicit first (the unit of `explicit_steps`)."""
        return tuple(s for s in STEPPERS if dtype == "float32" or s != "explicit-uncompensated")


def standard_matrix(device_platform: str, quick=False, grids=None, fields=None) -> Matrix:
    """The documented matrix for a device of `device_platform` ("cpu", "gpu", ...): on a CPU 64^3,
    128^3, 512^2 and 2048^2, on an accelerator 256^3, 512^3 and 4096^2; `quick`: 16^3 and 64^2,
    the median of three calls of about 0.01 s. `grids` (shapes) and `fields` (counts) replace the
    matrix's (a smaller matrix for tests)."""
    if quick:
        matrix = Matrix(
            ((16,) * 3, (64,) * 2), repeats=3, call_seconds=0.01, least_steps=5, quick=True
        )
    elif device_platform == "cpu":
        matrix = Matrix(((64,) * 3, (128,) * 3, (512,) * 2, (2048,) * 2))
    else:
        matrix = Matrix(((256,) * 3, (512,) * 3, (4096,) * 2))
    if grids:
        matrix = dataclasses.replace(matrix, grids=tuple(tuple(g) for g in grids))
    if fields:
        matrix = dataclasses.replace(matrix, fields=tuple(fields))
    return matrix


def parse_grid(text: str) -> tuple[int, ...]:
    """'256^3' -> (256, 256, 256); '64x32' -> (64, 32)."""
    try:
        if "^" in text:
            size, ndim = text.split("^")
            shape = (int(size),) * int(ndim)
        else:
            shape = tuple(int(n) for n in text.split("x"))
    except ValueError:
        raise ValueError(f"grid {text!r}: expected N^D (128^3) or NxM (64x32)") from None
    if not shape or min(shape) < 1:
        raise ValueError(f"grid {text!r}: expected N^D (128^3) or NxM (64x32)")
    return shape


def grid_label(shape: tuple[int, ...]) -> str:
    """(256, 256, 256) -> '256^3'; (64, 32) -> '64x32'."""
    return f"{shape[0]}^{len(shape)}" if len(set(shape)) == 1 else "x".join(map(str, shape))


# --- measuring --------------------------------------------------------------------------------


def device_name() -> str:
    """The first device as '<platform>-<kind>' (characters other than letters, digits, '.',
    '_' and '-' made '_'): the suffix of each results file."""
    device = jax.devices()[0]
    return re.sub(r"[^\w.-]+", "_", f"{device.platform}-{device.device_kind}")


def median_seconds(function, repeats: int) -> float:
    """Median wall time (s) of `repeats` calls of `function` (which synchronises), after a
    warm-up call that compiles."""
    function()
    samples = []
    for _ in range(repeats):
        start = time.perf_counter()
        function()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples)


def timed_steps(advance, least_steps: int, call_seconds: float, repeats: int) -> dict:
    """Median seconds per step of `advance(steps)` (which synchronises), each timed call
    advancing as many steps as a probe call says take about `call_seconds`, at least
    `least_steps`: as a run advances a whole output interval per call, so that each call's
    fixed cost is spread over its steps as in a run. On the CPU that cost is chiefly the page
    faults of the call's fresh temporaries, which at a fixed small number of steps a call
    inflated the time per step (docs/performance-notes.md). Also returns the steps per call
    and the host's minor page faults per timed call."""
    advance(least_steps)  # compiles
    start = time.perf_counter()
    advance(least_steps)
    probe = time.perf_counter() - start
    steps = max(least_steps, math.ceil(call_seconds * least_steps / probe))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = median_seconds(lambda: advance(steps), repeats) / steps
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return dict(seconds=seconds, steps_per_call=steps, page_faults_per_call=faults / (repeats + 1))


def simulation_seconds(sim, fields, dt: float, least_steps, call_seconds, repeats) -> dict:
    """`timed_steps` of `sim` stepping `fields` by `dt` (s): the fields are donated, so each
    call continues from the last."""
    holder = {"fields": fields}

    def advance(steps):
        holder["fields"] = jax.block_until_ready(
            sim.advance_steps(holder["fields"], 0.0, dt, steps)
        )

    return timed_steps(advance, least_steps, call_seconds, repeats)


def copy_bandwidth(repeats: int, passes: int = 20) -> float:
    """Bytes/s of the device streaming a 256 MiB array through memory (read + write) in a
    device loop, in place, the buffer donated and reused between calls as a stepper's fields
    are. A fresh output per call instead adds a copy of the input and, on the CPU, the new
    pages' faults, and understates the rate (docs/performance-notes.md)."""
    stream = jax.jit(
        lambda x: jax.lax.fori_loop(0, passes, lambda i, y: y + 1, x), donate_argnums=0
    )
    holder = {"x": jnp.ones(2**26, jnp.float32)}
    nbytes = holder["x"].nbytes

    def run():
        holder["x"] = jax.block_until_ready(stream(holder["x"]))

    return 2 * nbytes * passes / median_seconds(run, repeats)


def chain_model(shape: tuple[int, ...], n_fields: int) -> Model:
    """The benchmark model (module docstring) on a grid of `shape` voxels, its fields
    starting at 0 (`random_fields` gives the benchmark's start)."""
    species = tuple(Species(f"c{i}", diffusion=D, decay=DECAY) for i in range(n_fields))
    terms = tuple(Conversion(f"c{i}", f"c{i + 1}", RATE) for i in range(n_fields - 1))
    return Model(Grid(shape, spacing=SPACING), species=species, terms=terms)


def random_fields(sim: Simulation, seed: int = 0) -> Fields:
    """`sim`'s fields, uniformly random in [0, 1) nM in its dtype, on its devices. Made with
    NumPy one field at a time: JAX's generators compile anew for every shape, which would
    cost more than timing a small case."""
    rng = np.random.default_rng(seed)
    shape = sim.model.grid.shape
    return {
        name: sim.load_fields({name: rng.random(shape, dtype=sim.dtype)})[name]
        for name in sim.model.names
    }


def compiled_case(shape, n_fields: int, dtype: str, options: dict) -> tuple[Simulation, dict]:
    """A `Simulation` made with `options` of the chain model of `n_fields` on `shape`, and
    its `compile_stats` (compile seconds, XLA's peak bytes), from compiling its loop for
    fields of that shape and dtype, none allocated; its calls reuse the compiled loop."""
    sim = Simulation(chain_model(shape, n_fields), dtype=dtype, **options)
    fields = {name: jax.ShapeDtypeStruct(shape, sim.dtype) for name in sim.model.names}
    return sim, sim.compile_stats(State(t=0.0, fields=fields))


def measure_case(
    shape,
    n_fields: int,
    dtype: str,
    options: dict,
    *,
    least_steps,
    call_seconds,
    repeats,
    memory: float | None = None,
) -> dict | None:
    """One case: the chain model of `n_fields` on `shape` stepped by a `Simulation` made with
    `options`, at its dt = "auto" (UNBOUNDED_STEP where that is unbounded). Returns its step
    `dt` (s), `seconds` per step, `steps_per_call` and `page_faults_per_call`
    (`simulation_seconds`), `compile_s` and XLA's `peak_bytes` of the compiled loop, and the
    `kernels` its steps ran on ("pallas" or "xla"); None, nothing allocated, where that peak
    exceeds `memory` (bytes)."""
    sim, stats = compiled_case(shape, n_fields, dtype, options)
    if None not in (memory, stats["peak_bytes"]) and stats["peak_bytes"] > memory:
        return None
    state = State(t=0.0, fields=random_fields(sim))
    dt = min(sim.step_bound(state), UNBOUNDED_STEP)
    timed = simulation_seconds(sim, state.fields, dt, least_steps, call_seconds, repeats)
    kernels = "pallas" if sim.stepper.fused else "xla"
    return dict(dt=dt, **timed, **stats, kernels=kernels)


def compiled_peak_bytes(stepper: str, shape, n_fields: int, dtype: str) -> int | None:
    """XLA's peak bytes of `stepper`'s compiled loop over the chain model of `n_fields` on
    `shape` (`compiled_case`: nothing allocated); None where XLA gives no memory analysis."""
    return compiled_case(shape, n_fields, dtype, STEPPERS[stepper])[1]["peak_bytes"]


def largest_grid(stepper: str, memory: float | None, *, confirm: bool = False) -> dict:
    """The largest cube of LARGEST_FIELDS coupled LARGEST_DTYPE fields that `stepper` can
    step within `memory` (bytes): sized from the compiled peak bytes per voxel and field at
    REFERENCE_SIZE^3, then compiled at that size and shrunk until its peak fits (the fixed
    part of the peak grows no faster than the grid). `confirm`: also run one step there, which
    takes most of `memory` (`confirm_step`). None figures where the memory or XLA's memory
    analysis is unknown."""
    entry = dict(fields=LARGEST_FIELDS, dtype=LARGEST_DTYPE, memory=memory)
    reference = (REFERENCE_SIZE,) * 3
    peak = compiled_peak_bytes(stepper, reference, LARGEST_FIELDS, LARGEST_DTYPE)
    if memory is None or peak is None:
        return dict(entry, predicted_shape=None, bytes_per_voxel_field=None, peak_bytes=None)
    per_voxel_field = peak / (LARGEST_FIELDS * math.prod(reference))
    n = math.floor((memory / (LARGEST_FIELDS * per_voxel_field)) ** (1 / 3))
    peak = compiled_peak_bytes(stepper, (n,) * 3, LARGEST_FIELDS, LARGEST_DTYPE)
    while peak > memory and n > 1:  # at most 10% a try: the peak can jump at some sizes
        n = min(n - 1, max(math.floor(0.9 * n), math.floor(n * (memory / peak) ** (1 / 3))))
        peak = compiled_peak_bytes(stepper, (n,) * 3, LARGEST_FIELDS, LARGEST_DTYPE)
    entry.update(
        predicted_shape=[n] * 3,
        bytes_per_voxel_field=peak / (LARGEST_FIELDS * n**3),
        peak_bytes=peak,
    )
    if confirm:
        entry["confirmed"] = confirm_step(stepper, (n,) * 3)
    return entry


def confirm_step(stepper: str, shape) -> dict:
    """One step of `stepper` over LARGEST_FIELDS fields on `shape` (made on the device, at
    their initial 0 nM: the values do not change the work or the memory): its `seconds`
    (compilation apart) and the device's `device_peak_bytes` in use (None where the device
    does not report it, or where the process had already reached a higher peak, which the
    device does not forget) with this process's peak resident set (`process_peak_bytes`,
    what a CPU's run holds), or the runtime's `error` (the first line) where it fails, such
    as running out of memory."""
    sim, _ = compiled_case(shape, LARGEST_FIELDS, LARGEST_DTYPE, STEPPERS[stepper])
    before = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    try:
        state = sim.initial_state()
        dt = min(sim.step_bound(state), UNBOUNDED_STEP)
        start = time.perf_counter()
        jax.block_until_ready(sim.advance_steps(state.fields, 0.0, dt, 1))
        seconds = time.perf_counter() - start
    except jax.errors.JaxRuntimeError as error:
        return dict(error=str(error).splitlines()[0])
    peak = (jax.devices()[0].memory_stats() or {}).get("peak_bytes_in_use")
    return dict(
        seconds=seconds,
        device_peak_bytes=peak if before is None or (peak or 0) > before else None,
        process_peak_bytes=peak_process_bytes(),
    )


# --- the standard benchmark -------------------------------------------------------------------


def case_options(stepper: str, kernels: str = "auto") -> dict:
    """The `Simulation` options of `stepper` (STEPPERS), its explicit steps on `kernels`
    ("auto", "xla" or "pallas"; the implicit steppers run on XLA's alone)."""
    options = dict(STEPPERS[stepper])
    return dict(options, kernels=kernels) if options["stepper"] == "explicit" else options


def run_benchmark(
    matrix: Matrix,
    *,
    confirm_largest: bool = False,
    echo=None,
    kernels: str = "auto",
    save=None,
) -> dict:
    """Every case of `matrix` on the device JAX sees, the explicit steps on `kernels`
    (`case_options`), the copy bandwidth and the largest grid of each of LARGEST_STEPPERS:
    the result that `write_result` saves (docs/benchmarking.md). `echo(line)`, where given,
    receives the table as it is measured (`HEADER`, `format_row`); `save(result)` the result
    so far after each case (`complete` false, `largest` empty) and the whole one at the end,
    so that a run stopped early keeps what it measured."""
    echo = echo or (lambda line: None)
    save = save or (lambda result: None)
    device = jax.devices()[0]
    memory = device_memory(device)
    result = dict(
        schema=SCHEMA,
        created=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        mode="quick" if matrix.quick else "full",
        device=dict(
            name=device_name(),
            platform=device.platform,
            kind=device.device_kind,
            count=jax.device_count(),
            memory=memory,
        ),
        versions=versions(),
        kernels=kernels,
        complete=False,
    )
    echo(
        f"ilsim bench ({result['mode']}) on {result['device']['name']}, jax {jax.__version__}, "
        f"kernels {kernels}"
    )
    bandwidth = copy_bandwidth(matrix.repeats)
    result["copy_bandwidth"] = bandwidth
    echo(f"copy bandwidth (in place): {bandwidth / 1e9:.1f} GB/s")
    echo(HEADER)
    rows, skipped = [], []
    result.update(rows=rows, skipped=skipped, largest={})
    for dtype in matrix.dtypes:
        for shape in matrix.grids:
            for n_fields in matrix.fields:
                unit = None
                for stepper in matrix.steppers(dtype):
                    least = matrix.least_steps if stepper != "imex" else IMPLICIT_LEAST_STEPS
                    case = measure_case(
                        shape,
                        n_fields,
                        dtype,
                        case_options(stepper, kernels),
                        least_steps=least,
                        call_seconds=matrix.call_seconds,
                        repeats=matrix.repeats,
                        memory=memory,
                    )
                    what = dict(grid=grid_label(shape), fields=n_fields, dtype=dtype)
                    what["stepper"] = stepper
                    if case is None:
                        skipped.append(what)
                        echo(f"{format_case(what)} skipped: does not fit in the memory")
                        save(result)
                        continue
                    if stepper == "explicit":
                        unit = case["seconds"]
                    rows.append(row_of(shape, n_fields, dtype, stepper, case, bandwidth, unit))
                    echo(format_row(rows[-1]))
                    save(result)
    if confirm_largest:
        echo(
            f"note: --largest runs one step of {LARGEST_FIELDS} {LARGEST_DTYPE} fields at each "
            "predicted size: it takes most of the device's memory"
        )
    result["largest"] = {
        s: largest_grid(s, memory, confirm=confirm_largest) for s in LARGEST_STEPPERS
    }
    for line in largest_lines(result):
        echo(line)
    result["complete"] = True
    save(result)
    return result


def row_of(shape, n_fields, dtype, stepper, case: dict, bandwidth: float, unit) -> dict:
    """A result row from `measure_case`'s `case`, the copy `bandwidth` (bytes/s) and the
    seconds per step of the explicit step of the same grid, fields and dtype (`unit`; None
    where that was skipped)."""
    voxels = math.prod(shape)
    updates = voxels * n_fields / case["seconds"]
    moved = 2 * np.dtype(dtype).itemsize * updates
    peak = case["peak_bytes"]
    return dict(
        grid=grid_label(shape),
        voxels=voxels,
        fields=n_fields,
        dtype=dtype,
        stepper=stepper,
        dt=case["dt"],
        seconds_per_step=case["seconds"],
        steps_per_call=case["steps_per_call"],
        updates_per_s=updates,
        bandwidth=moved,
        bandwidth_fraction=moved / bandwidth,
        explicit_steps=None if unit is None else case["seconds"] / unit,
        compile_s=case["compile_s"],
        peak_bytes=peak,
        peak_bytes_per_voxel_field=None if peak is None else peak / (voxels * n_fields),
        kernels=case["kernels"],
    )


def versions() -> dict:
    """The versions of ilsim, JAX, jaxlib, NumPy and Python."""
    return dict(
        ilsim=engine.__version__,
        jax=jax.__version__,
        jaxlib=jaxlib.__version__,
        numpy=np.__version__,
        python=platform.python_version(),
    )


# --- the result: table, files, comparison, figure ---------------------------------------------

HEADER = (
    f"{'grid':>9} {'F':>2} {'dtype':>7} {'stepper':>22} {'ms/step':>9} {'Gupd/s':>7} "
    f"{'of copy':>7} {'x explicit':>10} {'compile':>8} {'B/vox/F':>7}"
)
"""The table's header: grid, fields, dtype, stepper, milliseconds per step, 1e9 voxel-updates
per second, share of the copy bandwidth, the step's cost in explicit steps, compile seconds,
XLA's peak bytes per voxel and field."""


def format_case(case: dict) -> str:
    """A case's grid, fields, dtype and stepper: the first columns under `HEADER`."""
    return f"{case['grid']:>9} {case['fields']:>2} {case['dtype']:>7} {case['stepper']:>22}"


def format_row(row: dict) -> str:
    """One result row as a line of the table under `HEADER`."""
    peak, unit = row["peak_bytes_per_voxel_field"], row["explicit_steps"]
    return (
        f"{format_case(row)} {1e3 * row['seconds_per_step']:>9.3f} "
        f"{row['updates_per_s'] / 1e9:>7.3f} {row['bandwidth_fraction']:>7.1%} "
        f"{'-' if unit is None else f'{unit:.2f}':>10} "
        f"{row['compile_s']:>7.2f}s {'-' if peak is None else f'{peak:.1f}':>7}"
    )


def largest_lines(result: dict) -> list[str]:
    """The largest grids of `result`, a line each."""
    lines = []
    for stepper, entry in result["largest"].items():
        what = f"largest 3D grid of {entry['fields']} {entry['dtype']} fields, {stepper}"
        if entry["predicted_shape"] is None:
            lines.append(f"{what}: unknown (no memory size or no XLA memory analysis)")
            continue
        line = (
            f"{what}: {grid_label(tuple(entry['predicted_shape']))} "
            f"({entry['bytes_per_voxel_field']:.1f} B per voxel and field, "
            f"{entry['peak_bytes'] / 1e9:.2f} of {entry['memory'] / 1e9:.2f} GB)"
        )
        confirmed = entry.get("confirmed")
        if confirmed is not None and "error" in confirmed:
            line += f"; one step failed: {confirmed['error']}"
        elif confirmed is not None:
            line += f"; one step ran in {confirmed['seconds']:.3g} s"
            held = confirmed.get("device_peak_bytes") or confirmed.get("process_peak_bytes")
            if held is not None:
                line += f", peak {held / 1e9:.2f} GB measured"
        lines.append(line)
    return lines


def check_outputs(paths, overwrite: bool) -> None:
    """ValueError, one line, where an output path exists (without `overwrite`) or is a
    folder, its folder does not exist, a figure's format is unknown, or the JSON and the
    figure are one file: checked before a run, not after it."""
    json_path, figure_path = (Path(p) for p in paths)
    plots.check_figure_path(figure_path)  # its format and folder
    plots.check_folder(json_path)
    plots.check_replaceable([json_path, figure_path], overwrite)
    plots.check_apart({"-o": json_path, "--figure": figure_path})


def write_result(result: dict, path) -> Path:
    """`result` as JSON at `path`, replaced whole (written beside it, then renamed): a reader
    or a stopped run never sees half a file."""
    path = Path(path)
    with replaced(path) as partial:
        partial.write_text(json.dumps(result, indent=1) + "\n")
    return path


def load_result(path) -> dict:
    """A result written by `write_result`; ValueError, one line, for anything else."""
    path = Path(path)
    try:
        result = json.loads(path.read_text())
    except FileNotFoundError:
        raise ValueError(f"{path}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path}: not an ilsim bench JSON ({error})") from None
    if not isinstance(result, dict) or result.get("schema") != SCHEMA:
        raise ValueError(f'{path}: not an ilsim bench JSON (no "schema": "{SCHEMA}")')
    problem = _comparison_problem(result)
    if problem:
        raise ValueError(f"{path}: {problem}")
    return result


def _comparison_problem(result: dict) -> str | None:
    """What `comparison_lines` reads of `result` and finds missing or unusable, None where
    nothing: the device's name, the date, a positive copy bandwidth, and each row's case
    with positive seconds per step."""
    device = result.get("device")
    if not (isinstance(device, dict) and isinstance(device.get("name"), str)):
        return 'no "device" name'
    if not isinstance(result.get("created"), str):
        return 'no "created" date'
    if not _positive(result.get("copy_bandwidth")):
        return f"copy_bandwidth {result.get('copy_bandwidth')!r}: not a positive number"
    rows = result.get("rows")
    if not isinstance(rows, list):
        return 'no "rows" list'
    for i, row in enumerate(rows):
        case = isinstance(row, dict) and all(isinstance(row.get(k), t) for k, t in _CASE.items())
        if not (case and _positive(row.get("seconds_per_step"))):
            return f"rows[{i}]: not a case ({', '.join(_CASE)}) with a positive seconds_per_step"
    return None


_CASE = {"grid": str, "fields": int, "dtype": str, "stepper": str}
"""The keys of a row that name its case, with their types."""


def _positive(value) -> bool:
    return isinstance(value, int | float) and math.isfinite(value) and value > 0


def comparison(new: dict, old: dict) -> list[dict]:
    """The cases present in both results, in `new`'s order: their key (grid, fields, dtype,
    stepper), old and new seconds per step and `ratio`, new over old (above 1: slower)."""
    key = lambda row: (row["grid"], row["fields"], row["dtype"], row["stepper"])  # noqa: E731
    before = {key(row): row["seconds_per_step"] for row in old["rows"]}
    return [
        dict(
            zip(("grid", "fields", "dtype", "stepper"), key(row)),
            old=before[key(row)],
            new=row["seconds_per_step"],
            ratio=row["seconds_per_step"] / before[key(row)],
        )
        for row in new["rows"]
        if key(row) in before
    ]


def comparison_lines(new: dict, old: dict) -> list[str]:
    """The `comparison` of `new` with `old` as a table, after the two devices and the ratio
    of their copy bandwidths."""
    ratio = new["copy_bandwidth"] / old["copy_bandwidth"]

    def run(result):  # results before `kernels` was recorded ran XLA's
        kernels = result.get("kernels", "xla")
        return f"{result['device']['name']} ({result['created']}, kernels {kernels})"

    lines = [
        f"new: {run(new)}; old: {run(old)}",
        f"copy bandwidth: new/old {ratio:.3f}",
    ]
    cases = comparison(new, old)
    if not cases:
        return [*lines, "no case in common"]
    lines.append(
        f"{'grid':>9} {'F':>2} {'dtype':>7} {'stepper':>22} {'old ms':>9} {'new ms':>9} "
        f"{'new/old':>7}"
    )
    for c in cases:
        lines.append(
            f"{format_case(c)} {1e3 * c['old']:>9.3f} {1e3 * c['new']:>9.3f} {c['ratio']:>7.3f}"
        )
    return lines


def series(result: dict) -> dict:
    """{(dimensions, stepper, fields, dtype): (voxels, updates per s)} of `result`'s rows,
    sorted by voxels: the figure's lines."""
    points: dict = {}
    for row in result["rows"]:
        ndim = len(parse_grid(row["grid"]))
        key = (ndim, row["stepper"], row["fields"], row["dtype"])
        points.setdefault(key, []).append((row["voxels"], row["updates_per_s"]))
    return {key: tuple(zip(*sorted(p))) for key, p in sorted(points.items())}


def figure(result: dict) -> Figure:
    """Voxel-updates per second against voxels, log-log, a panel per number of dimensions
    and a line per (stepper, fields, dtype); a horizontal line per dtype marks the updates
    per second the copy bandwidth allows (each field read and written once)."""
    lines = series(result)
    dims = sorted({key[0] for key in lines})
    fig = Figure(figsize=(5 * len(dims) + 1, 6), layout="constrained")
    FigureCanvasAgg(fig)
    axes = fig.subplots(1, len(dims), squeeze=False)[0]
    colours = {key: f"C{i}" for i, key in enumerate(sorted({k[1:3] for k in lines}))}
    style, marker = {"float32": "-", "float64": "--"}, {"float32": "o", "float64": "s"}
    for ax, ndim in zip(axes, dims):
        for (d, stepper, fields, dtype), (voxels, updates) in lines.items():
            if d == ndim:
                ax.plot(
                    voxels,
                    updates,
                    style[dtype],
                    marker=marker[dtype],
                    color=colours[stepper, fields],
                    label=f"{stepper}, {fields} field{'s' * (fields > 1)}, {dtype}",
                )
        for dtype in sorted({key[3] for key in lines if key[0] == ndim}):
            ax.axhline(
                result["copy_bandwidth"] / (2 * np.dtype(dtype).itemsize),
                color="grey",
                linestyle=style[dtype],
                linewidth=1,
                label=f"copy bandwidth, {dtype}",
            )
        ax.set(xscale="log", yscale="log", xlabel="voxels", title=f"{ndim}D grids")
        ax.set_ylabel("voxel-updates / s (voxels x fields per step)")
    legend = {line.get_label(): line for ax in axes for line in ax.get_lines()}
    fig.legend(legend.values(), legend.keys(), loc="outside lower center", ncol=3, fontsize=7)
    fig.suptitle(f"ilsim bench, {result['device']['name']}")
    return fig


def save_figure(result: dict, path) -> Path:
    """`figure(result)` written to `path` (its suffix names the format)."""
    return plots.save(figure(result), path, dpi=120)
