"""benchmarks/bench_sweep.py runs end to end on a tiny case, so that it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "bench_sweep.py"
KEYS = {
    "members",
    "stepper",
    "grid",
    "steps",
    "sweep_cold_s",
    "sweep_warm_s",
    "separate_cold_s",
    "separate_warm_s",
    "ratio_cold",
    "ratio_warm",
    "max_rel_diff",
    "device",
}


@pytest.mark.slow  # runs the benchmark script in a process of its own
def test_bench_sweep_quick_writes_every_case(tmp_path):
    output = tmp_path / "sweep.json"
    argv = ["--quick", "--members", "2", "4", "--size", "16", "--end", "2 min"]
    done = subprocess.run(
        [sys.executable, str(SCRIPT), *argv, "--repeats", "1", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    rows = json.loads(output.read_text())["rows"]
    assert [(r["members"], r["stepper"]) for r in rows] == [
        (2, "explicit"),
        (4, "explicit"),
        (2, "imex"),
        (4, "imex"),
    ]
    for r in rows:
        assert KEYS <= set(r)
        assert r["grid"] == "16^2" and r["steps"] > 0
        assert min(r[k] for k in KEYS if k.endswith("_s")) > 0
        assert r["ratio_cold"] == r["separate_cold_s"] / r["sweep_cold_s"]
        assert 0 <= r["max_rel_diff"] <= 1e-5
    assert output.with_suffix(".png").stat().st_size > 0
    assert "largest relative difference" in done.stdout
