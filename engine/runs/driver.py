"""The run driver: a simulation advanced in compiled chunks between output times, frames and
checkpoints written to HDF5 while the device computes, with safe failure and resume.

Safety: a new file is written under a temporary name and renamed into place once its first
frame and checkpoint are on disk (so a file under its name always resumes); an existing file
is never replaced without `overwrite`; SIGINT and SIGTERM finish the frame in hand, write a
checkpoint, close the file and raise `Interrupted` (the CLI exits 130); `resume` continues
from the checkpoint, dropping frames written after it.
"""

from __future__ import annotations

import math
import os
import shutil
import signal
import sys
import time
import tomllib
import warnings
from contextlib import contextmanager
from pathlib import Path

import h5py
import jax
import numpy as np

import engine
from engine.config.toml import dump_toml
from engine.io.checkpoint import (
    read_checkpoint,
    truncate_frames,
)
from engine.io.layout import CellInfo, FieldInfo, check_format, open_read, unreadable
from engine.io.writer import PARTIAL, OutputWriter
from engine.model.model import Species
from engine.numerics.parallel import Processes, host_parts, processes
from engine.stepping.simulation import Simulation, State, check_capacity

CHECKPOINT_WALL_S = 600.0
"""Wall time (s) between checkpoints where `output.checkpoint_every` is not set (a run
also checkpoints at its first frame and its end): a run killed outright (SIGKILL, a lost
node) resumes having lost at most this much work."""

RESUMABLE_CHANGES = ("time.end", "output.checkpoint_every")
"""The config keys a `--resume` may change: the rest made the frames already written."""


class RunError(ValueError):
    """Bad input to a run (existing output, nothing to resume): exit status 2."""


class Diverged(RuntimeError):
    """A field became NaN or infinite."""


class Interrupted(Exception):
    """The run stopped on SIGINT/SIGTERM after saving a checkpoint."""


def output_times(end: float, every: float | None) -> np.ndarray:
    """Frame times (s): 0, every `every`, and the end."""
    if every is None:
        return np.array([0.0, end])
    count = math.floor(end / every * (1 + 1e-12))
    times = every * np.arange(count + 1)
    return times if math.isclose(times[-1], end) else np.append(times, end)


def _field_infos(sim: Simulation, names) -> list[FieldInfo]:
    kinds = {f.name: f for f in sim.model.fields}
    return [
        FieldInfo(n, "species", "nM")
        if isinstance(kinds[n], Species)
        else FieldInfo(n, "population", "cells/um^3")
        for n in names
    ]


def _check_finite(fields: dict[str, list], t: float, processes: Processes | None) -> None:
    """Raise Diverged (on every process) if a block of any process is not finite."""
    bad = [n for n, parts in fields.items() if not all(np.all(np.isfinite(b)) for _, b in parts)]
    # every process asks the others, also one that found a bad block (else they would wait)
    if bad if processes is None else processes.any(bool(bad)):
        name = bad[0] if bad else "of another process"
        raise Diverged(
            f"field {name} became NaN or infinite by t = {t:g} s; use a smaller time.dt, "
            'time.dt = "auto", or another time.stepper (imex, quasi_steady)'
        )


def warn_if_frames_outgrow_disk(frames: int, values: int, sim, folder: Path) -> None:
    """A warning where `frames` frames of `values` numbers each (and a sweep's members)
    would take more, uncompressed, than the disk holding `folder` has free."""
    members = sim.size if hasattr(sim, "members") else 1
    needed = frames * values * members * sim.dtype.itemsize
    free = shutil.disk_usage(folder).free
    if needed > free:
        warnings.warn(
            f"the {frames} frames take {needed / 1e9:.3g} GB uncompressed, and {folder} has "
            f"{free / 1e9:.3g} GB free; compression may fit them, else raise "
            "time.output_every or list fewer output.fields",
            stacklevel=2,
        )


def refuse_changed_config(output: Path, cfg) -> None:
    """RunError naming the first key (other than `RESUMABLE_CHANGES`) whose value in `cfg`
    differs from the config that made `output`'s frames."""
    try:
        with open_read(output) as f:
            text = f.attrs.get("config")
    except OSError as error:
        raise RunError(f"{unreadable(output, error)}; nothing to resume") from None
    if not isinstance(text, str | bytes):
        raise RunError(f"{output}: holds no config text; it is not an ilsim run to resume")
    try:
        stored = _flat(tomllib.loads(text if isinstance(text, str) else text.decode()))
    except (tomllib.TOMLDecodeError, UnicodeDecodeError) as error:
        raise RunError(
            f"{output}: its config is not valid TOML ({error}); it is not an ilsim run to resume"
        ) from None
    given = _flat(tomllib.loads(dump_toml(cfg)))
    for key in sorted(set(stored) | set(given)):
        old, new = stored.get(key), given.get(key)
        if old != new and key not in RESUMABLE_CHANGES:
            key = key.removesuffix(".value")  # a coefficient's or an initial value's key
            raise RunError(
                f"{key}: {_shown(new)} now, {_shown(old)} in the run {output} holds; resume "
                f"with its config (only {' and '.join(RESUMABLE_CHANGES)} may change) or "
                "start a new output"
            )


def refuse_changed_regions(output: Path, masks: dict[str, np.ndarray]) -> None:
    """RunError naming the first region whose mask, as the config now builds it (a mask file
    changed), differs from the one stored in `output`: its frames were made with that."""
    with open_read(output) as f:
        stored = f.get("regions", {})
        for name, mask in masks.items():
            if name in stored and not np.array_equal(stored[name][()] != 0, mask != 0):
                raise RunError(
                    f"regions.{name}: its mask differs from the one the run {output} was made "
                    f"with (/regions/{name} there); restore the mask or start a new output"
                )


def _flat(tree, prefix: str = "") -> dict:
    """A parsed TOML document as {dotted path ([i] for array entries): value}."""
    if isinstance(tree, dict):
        items = [(f"{prefix}.{k}" if prefix else k, v) for k, v in tree.items()]
    elif isinstance(tree, list) and any(isinstance(v, dict | list) for v in tree):
        items = [(f"{prefix}[{i}]", v) for i, v in enumerate(tree)]
    else:
        return {prefix: tree}
    return {k: v for key, value in items for k, v in _flat(value, key).items()}


def _shown(value) -> str:
    return "unset" if value is None else repr(value)


@contextmanager
def _stop_requests():
    """Turn SIGINT/SIGTERM into a flag checked between frames (the frame in hand finishes),
    raised already by the signals the CLI's handler received (`cli.main.Interrupts`) but
    whose KeyboardInterrupt Python dropped."""
    requested = []
    previous = {}

    def handler(signum, frame):
        requested.append(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, handler)
        requested += getattr(previous[sig], "received", [])
    try:
        yield requested
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def _progress(total: float, quiet: bool):
    if quiet or not sys.stderr.isatty():
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="s sim", file=sys.stderr, dynamic_ncols=True, leave=True)


def run(
    sim,
    output: str | Path,
    *,
    resume: bool = False,
    overwrite: bool = False,
    quiet: bool = False,
) -> Path:
    """Run a config-built simulation (`runs.simulation.Simulation`, or a sweep's
    `runs.sweep.Ensemble`: anything with a `config`) to time.end, writing frames and
    checkpoints to `output`."""
    cfg = sim.config
    if cfg is None:
        raise RunError("run: the simulation needs a config (engine.Simulation(load_config(...)))")
    output = Path(output)
    team = processes()  # several: each writes its own blocks, the first all the rest
    if team is not None and hasattr(sim, "members"):
        raise RunError("run: a sweep runs in one process, its members split over its devices")
    first = team is None or team.rank == 0
    if resume and overwrite:
        raise RunError("--resume and --overwrite exclude each other")
    if output.is_dir():
        raise RunError(f"{output} is a folder; give a file path, such as {output / 'run.h5'}")
    sidecar = output.with_suffix(".xdmf")
    if sidecar == output:
        raise RunError(
            f"{output}: .xdmf is the suffix of the run's ParaView sidecar, written beside "
            f"the HDF5 file; give the HDF5 path, such as {output.with_suffix('.h5')}"
        )
    if sidecar.is_dir():
        raise RunError(f"{sidecar} (the run's sidecar) is a folder; choose another -o path")
    if output.exists() and not (resume or overwrite):
        raise RunError(f"{output} exists; pass --overwrite to replace it or --resume to continue")
    if sidecar.exists() and not output.exists() and not overwrite:
        raise RunError(
            f"{sidecar} exists (the sidecar of {output}); pass --overwrite to replace it "
            "or choose another -o path"
        )
    if resume and not output.exists():
        raise RunError(f"{output} does not exist; nothing to resume")
    folder = output.parent if str(output.parent) else Path(".")
    if not folder.is_dir() or not os.access(folder, os.W_OK):
        raise RunError(f"{output}: cannot write in {folder}; choose another -o path")
    names = cfg.output.fields or list(sim.model.names)
    times = output_times(cfg.time.end, cfg.time.output_every)
    if first:
        warn_if_frames_outgrow_disk(len(times), len(names) * sim.model.grid.size, sim, folder)
    every_checkpoint = cfg.output.checkpoint_every

    if resume:
        refuse_changed_config(output, cfg)
        with open_read(output) as f:
            check_format(f, output)
        refuse_changed_regions(output, _region_masks(sim))
        saved = read_checkpoint(output, load=sim.load_fields)
        missing = [name for name in sim.model.names if name not in saved.fields]
        if missing:
            field = missing[0]
            raise RunError(f"{output}: the checkpoint holds no field {field!r}; not this run's")
        if saved.time > cfg.time.end * (1 + 1e-12):
            raise RunError(
                f"time.end: {cfg.time.end:g} s is before {output}'s checkpoint at "
                f"t = {saved.time:g} s; resume with a later time.end"
            )
        cells = sim.load_cells(saved.cells) if sim.model.cells else {}
        if team is not None:
            team.barrier()  # every process has read its blocks
        if first:
            with h5py.File(output, "a") as f:
                truncate_frames(f, after=saved.time)
        state = State(
            t=saved.time,
            fields=saved.fields,
            step=saved.step,
            dt=saved.dt,
            cells=cells,
            held=saved.held,
            scale=saved.scale,
        )
        path = output
    else:
        state = sim.initial_state()
        sim.check_time_step(state)
        path = output.with_name(output.name + PARTIAL)
    device = jax.devices()[0]
    attrs = dict(
        ilsim_version=engine.__version__,
        backend=device.platform,
        device=getattr(device, "device_kind", str(device)),
        dtype=str(sim.dtype),
        stepper=sim.stepper.name,
        config=dump_toml(cfg),
    )
    masks = {n: m.astype(np.uint8) for n, m in _region_masks(sim).items()} if first else {}
    writer = OutputWriter(
        path,
        sim.model.grid,
        _field_infos(sim, names),
        str(sim.dtype),
        attrs,
        masks,
        compression=cfg.output.compression,
        resume=resume,
        members=getattr(sim, "members", None),
        processes=team,
        cells=[CellInfo(c.name, c.capacity, c.state_names) for c in sim.model.cells],
    )
    bar = _progress(cfg.time.end, quiet or not first)
    started = time.perf_counter()
    last_checkpoint = state.t
    last_checkpoint_wall = time.perf_counter() if resume else None  # None: checkpoint now
    fixed_dt = None if cfg.time.dt == "auto" else cfg.time.dt  # the step of a fixed time.dt
    targets = [t for t in times if t > state.t * (1 + 1e-12)]
    write_current = not resume  # a resumed state's frame is already in the file
    try:
        with _stop_requests() as requests:
            while True:
                # every process stops at the same frame, when any of them was asked to
                stop = bool(requests) if team is None else team.any(bool(requests))
                # this chunk's blocks, copied to host memory shard by shard (waits for it only)
                host = {name: host_parts(value) for name, value in state.fields.items()}
                cells = state.cells_numpy()
                check_capacity(state)  # stops before a frame that lost daughters
                # dispatch the next chunk before writing: the device computes while the host
                # compresses and writes (the input buffers are donated, the copy is ours)
                following = None
                if targets and not stop:
                    following = sim.advance(state, targets.pop(0), donate=True)
                if write_current:
                    _check_finite(host, state.t, team)
                    writer.write_frame(state.t, {n: host[n] for n in names}, cells)
                write_current = True
                if bar is not None:
                    bar.update(state.t - bar.n)
                    rate = state.step / max(time.perf_counter() - started, 1e-9)
                    rejected = getattr(sim, "rejected_steps", 0)  # adaptive steps; a sweep has none
                    note = f", {rejected} rejected" if rejected else ""
                    bar.set_postfix_str(f"{rate:.3g} steps/s{note}", refresh=False)
                if last_checkpoint_wall is None:  # the first frame of a new run
                    due = True
                elif every_checkpoint is None:
                    due = time.perf_counter() - last_checkpoint_wall >= CHECKPOINT_WALL_S
                else:
                    due = state.t - last_checkpoint >= every_checkpoint * (1 - 1e-12)
                if following is None or stop or due:
                    dt = state.dt if state.dt is not None else fixed_dt
                    writer.write_checkpoint(
                        state.t, state.step, dt, host, cells, state.held, state.scale
                    )
                    last_checkpoint, last_checkpoint_wall = state.t, time.perf_counter()
                if path != output:  # first frame and checkpoint in: move the file into place
                    writer.move_to(output)
                    path = output
                if stop:
                    raise Interrupted(
                        f"interrupted at t = {state.t:g} s; continue with the same command "
                        "and --resume"
                    )
                if following is None:
                    return output
                state = following
    finally:
        writer.close()
        if bar is not None:
            bar.close()
        if path != output and first:  # stopped before its first checkpoint: leave nothing
            path.unlink(missing_ok=True)


def _region_masks(sim: Simulation) -> dict[str, np.ndarray]:
    from engine.config.build import build_grid, region_mask

    grid = build_grid(sim.config)
    return {name: region_mask(grid, r, name) for name, r in sim.config.regions.items()}
