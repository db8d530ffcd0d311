"""benchmarks/bench_cells.py runs end to end on a tiny case, so that it cannot rot."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

SCRIPT = Path(__file__).parent.parent / "benchmarks" / "bench_cells.py"


@pytest.mark.slow  # runs the benchmark script in a process of its own
def test_bench_cells_quick_writes_every_count_and_the_figure(tmp_path):
    output = tmp_path / "cells.json"
    done = subprocess.run(
        [sys.executable, str(SCRIPT), "--quick", "--output", str(output)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert done.returncode == 0, done.stderr
    result = json.loads(output.read_text())
    rows = result["rows"]
    assert [r["cells"] for r in rows] == [1000, 10_000]
    for r in rows:
        assert r["grid"] == "32^3" and r["step_ms"] > 0 and r["field_step_ms"] > 0
        assert r["cells_ms"] == pytest.approx(max(r["step_ms"] - r["field_step_ms"], 0))
        assert r["field_steps"] == pytest.approx(r["cells_ms"] / r["field_step_ms"])
    assert output.with_suffix(".png").stat().st_size > 10_000
    assert "field step" in done.stdout
