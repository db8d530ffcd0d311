"""Memory: the estimate of a run's state while stepping, and what a machine can give it."""

from __future__ import annotations

import os
import sys

STATE_COPIES = 8
"""Copies of the state a step holds at once (state, stages, temporaries): the memory estimate."""

FRAME_BYTES = 48
"""Bytes a run holds for each output frame besides its fields: the frame's time in the array
of output times (8) and in the list of the times still to come (a float and its pointer, 40)."""

PLANNING_FRACTION = 0.8
"""Share of a device's (or the host's available) memory a run may plan to use."""


def state_bytes(n_fields: int, n_voxels: int, itemsize: int) -> int:
    """Estimated bytes while stepping: fields (at least one) x voxels x bytes per value x
    STATE_COPIES."""
    return max(n_fields, 1) * n_voxels * itemsize * STATE_COPIES


def cells_bytes(n_values: int, itemsize: int) -> int:
    """Estimated bytes of individual cells while stepping, by the fields' rule: the numbers
    their arrays hold (per type: capacity x (ndim position + alive + id + state variables),
    each counted at the fields' `itemsize`, an upper bound for the bool and int32 ones) x
    bytes per value x STATE_COPIES (the loop's carry, the step's new arrays, temporaries)."""
    return n_values * itemsize * STATE_COPIES


def _status_bytes(key: str) -> int | None:
    """The `key` line of this process's /proc status (kB) in bytes, None where unknown."""
    try:
        with open("/proc/self/status") as file:
            for line in file:
                if line.startswith(f"{key}:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


def process_bytes() -> int | None:
    """Bytes of memory this process holds now (resident set), None when unknown."""
    return _status_bytes("VmRSS")


def peak_process_bytes() -> int | None:
    """The most bytes this process has held at once so far (peak resident set), None when
    unknown. On Linux this is the high-water mark of its own memory (VmHWM): `ru_maxrss`
    starts from the resident set of the process that started it, which after a fork from a
    large process is that process's."""
    peak = _status_bytes("VmHWM")
    if peak is not None:
        return peak
    try:
        import resource
    except ImportError:  # not on every platform
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # bytes there, KiB elsewhere


def predicted_peak_bytes(process: int, state: int, compiled: int, frame: int) -> int:
    """A run's peak memory on a CPU (bytes): what the process holds besides its state
    (`process` less `state`, both now), the compiled loop's peak (XLA's memory analysis:
    state, new state and temporaries, less donated buffers) and one frame of its fields
    copied to the host for writing while the next frames compute."""
    return process - state + compiled + frame


def available_memory() -> int | None:
    """Bytes of memory available on this machine (MemAvailable), None when unknown."""
    try:
        with open("/proc/meminfo") as file:
            for line in file:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def device_memory(device) -> float | None:
    """Bytes a computation may plan to use on a JAX `device`: PLANNING_FRACTION of what JAX may
    take of an accelerator's memory (its `bytes_limit`: 75% of a GPU by default,
    XLA_PYTHON_CLIENT_MEM_FRACTION), or of the host's available memory on a CPU (None when
    unknown)."""
    stats = device.memory_stats() if hasattr(device, "memory_stats") else None
    if stats and stats.get("bytes_limit"):
        return PLANNING_FRACTION * stats["bytes_limit"]
    available = available_memory()
    return None if available is None else PLANNING_FRACTION * available
