"""Pieces every benchmark script shares: where results go, the device's name, timing."""

from __future__ import annotations

import math
import resource
import statistics
import time
from pathlib import Path

import jax

RESULTS = Path(__file__).parent / "results"


def device_name() -> str:
    """The first device as '<platform>-<kind>', the suffix of each results file."""
    device = jax.devices()[0]
    return f"{device.platform}-{device.device_kind}".replace(" ", "_")


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
