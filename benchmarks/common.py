"""Pieces every benchmark script shares: where results go, the device's name, timing."""

from __future__ import annotations

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
