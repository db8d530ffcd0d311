"""Pieces every benchmark script shares: where results go, and the measuring pieces of
`engine.runs.bench` (the device's name, timing) that `ilsim bench` runs on."""

from __future__ import annotations

from pathlib import Path

from engine.runs.bench import device_name, median_seconds, simulation_seconds, timed_steps

RESULTS = Path(__file__).parent / "results"

__all__ = ["RESULTS", "device_name", "median_seconds", "simulation_seconds", "timed_steps"]
