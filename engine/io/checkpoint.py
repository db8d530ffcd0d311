"""The checkpoint of an ilsim file: the full state, step, time and dt that `--resume` continues
from, and the frames a resumed run drops.

A checkpoint is written into /checkpoint_next, marked complete, then swapped with /checkpoint
(through /checkpoint_swap), so that a kill at any point leaves one complete checkpoint:
`latest_checkpoint` finds it, `settle_checkpoints` puts the copies back in order.
"""

from __future__ import annotations

import dataclasses
import math

import h5py
import numpy as np

from engine.io.layout import (
    CELLS,
    CHECKPOINT,
    CHECKPOINT_GROUPS,
    CHECKPOINT_NEXT,
    CHECKPOINT_SWAP,
    attr_value,
    decode_attr,
    frame_chunks,
    open_read,
)


def _datasets(group: h5py.Group) -> dict[str, h5py.Dataset]:
    """Every dataset in `group` and its subgroups, by path relative to it."""
    found = {}

    def visit(name: str, item) -> None:
        if isinstance(item, h5py.Dataset):
            found[name] = item

    group.visititems(visit)
    return found


def latest_checkpoint(f: h5py.File):
    """The complete checkpoint group with the latest time (None: none complete): /checkpoint,
    or the other copy where a kill came while they were being swapped."""
    groups = [f[name] for name in CHECKPOINT_GROUPS if name in f]
    complete = [g for g in groups if int(g.attrs.get("complete", 1)) == 1 and "time" in g.attrs]
    return max(complete, key=lambda g: float(g.attrs["time"]), default=None)


def settle_checkpoints(f: h5py.File) -> None:
    """After a kill while the checkpoints were being swapped: the latest complete one as
    /checkpoint, the other as /checkpoint_next (to be written next)."""
    latest = latest_checkpoint(f)
    if latest is not None and latest.name != f"/{CHECKPOINT}":
        if CHECKPOINT in f:
            del f[CHECKPOINT]
        f.move(latest.name, CHECKPOINT)
    if CHECKPOINT_SWAP in f:
        if CHECKPOINT_NEXT in f:
            del f[CHECKPOINT_SWAP]
        else:
            f.move(CHECKPOINT_SWAP, CHECKPOINT_NEXT)


def prepare_checkpoint(
    f: h5py.File, shapes: dict[str, tuple], dtypes: dict[str, np.dtype], compression: dict
) -> None:
    """/checkpoint_next with a dataset per field (a name with slashes, cells/<type>/<array>,
    in subgroups), reused when the names, shapes and dtypes match, marked incomplete until
    `commit_checkpoint`."""
    settle_checkpoints(f)
    group = f.get(CHECKPOINT_NEXT)
    present = {} if group is None else _datasets(group)
    reusable = group is not None and set(present) == set(shapes)
    if reusable:
        reusable = all(
            present[name].shape == shape and present[name].dtype == dtypes[name]
            for name, shape in shapes.items()
        )
    if not reusable:
        if group is not None:
            del f[CHECKPOINT_NEXT]
        group = f.create_group(CHECKPOINT_NEXT, track_order=True)
        for name, shape in shapes.items():
            chunked = dict(chunks=frame_chunks(shape), **compression)
            group.create_dataset(
                name,
                shape=shape,
                dtype=dtypes[name],
                **(chunked if shape and math.prod(shape) else {}),
            )
    group.attrs["complete"] = 0  # written in place: no growth, marked meanwhile


def commit_checkpoint(f: h5py.File, t: float, step: int, dt, held=None, scale=None) -> None:
    """Mark /checkpoint_next (its data written) complete at time t (s) after `step` steps with
    the proposed step size dt (s; one per member of a sweep; None: NaN in the file), error
    control's held estimate (`State.held`: its step and until when, s; None: NaN) and the
    run's scale of each field (`State.scale`; None: left out), then swap it with
    /checkpoint. Flushed."""
    group = f[CHECKPOINT_NEXT]
    group.attrs["time"] = float(t)
    group.attrs["step"] = int(step)
    group.attrs["dt"] = _nan_for_none(dt)
    step_held, until = (None, None) if held is None else held
    group.attrs["held_step"] = _nan_for_none(step_held)
    group.attrs["held_until"] = _nan_for_none(until)
    for key in SCALE_ATTRS:  # the spare copy may hold an earlier checkpoint's
        group.attrs.pop(key, None)
    if scale is not None:
        group.attrs[SCALE_ATTRS[0]] = attr_value(list(scale))
        group.attrs[SCALE_ATTRS[1]] = np.array([scale[k] for k in scale], np.float64)
    group.attrs["complete"] = 1
    f.flush()
    if CHECKPOINT in f:
        f.move(CHECKPOINT, CHECKPOINT_SWAP)
    f.move(CHECKPOINT_NEXT, CHECKPOINT)
    if CHECKPOINT_SWAP in f:
        f.move(CHECKPOINT_SWAP, CHECKPOINT_NEXT)
    f.flush()


SCALE_ATTRS = ("scale_fields", "scale")
"""The checkpoint's attributes holding `State.scale`: the field names, and their scales in that
order (one row per field, of one per member for a sweep)."""


@dataclasses.dataclass(frozen=True)
class Checkpoint:
    """A file's latest complete checkpoint, everything `--resume` continues from.

    time (s) and step: where the run was; dt: the step (s) error control proposed next (an
    array of a sweep's members), or None; fields: {name: array}; held: error control's
    `State.held` (step, until when; s), or None (none held, or a file written before estimates
    were held); scale: error control's `State.scale` ({field: size}, None where the run had
    none); cells: {type: {position, alive, id, <state>..., next_id, overflow (0-d int64)}},
    {} when the run has no cells."""

    time: float
    step: int
    dt: float | np.ndarray | None
    fields: dict
    held: tuple | None
    scale: dict | None
    cells: dict


def read_checkpoint(path, load=None) -> Checkpoint:
    """The `Checkpoint` of a file, read in one opening (a process that resumes reads it all
    before any process truncates the file). `load` turns the checkpoint's datasets
    ({name: h5py.Dataset}) into the arrays, reading only what it needs (`Simulation.load_fields`
    reads each process's own blocks); by default all of them. ValueError when the file holds
    no complete checkpoint, or naming the file where `load` refuses what it holds."""
    with open_read(path) as f:
        group = latest_checkpoint(f)
        if group is None:
            if any(name in f for name in CHECKPOINT_GROUPS):
                raise ValueError(f"{path}: the checkpoint was being written when the run stopped")
            raise ValueError(f"{path}: holds no checkpoint")
        datasets = {k: d for k, d in group.items() if isinstance(d, h5py.Dataset)}
        if load is not None:
            try:
                fields = load(datasets)
            except ValueError as error:
                raise ValueError(f"{path}: {error}") from None
        else:
            fields = {k: d[()] for k, d in datasets.items()}
        return Checkpoint(
            time=float(group.attrs["time"]),
            step=int(group.attrs["step"]),
            dt=_none_for_nan(group.attrs["dt"]),
            fields=fields,
            held=_held(group.attrs),
            scale=_scale(group.attrs),
            cells=_cells(group),
        )


def _held(attrs):
    if "held_step" not in attrs:
        return None
    step, until = (_none_for_nan(attrs[k]) for k in ("held_step", "held_until"))
    return None if step is None else (step, until)


def _scale(attrs) -> dict | None:
    if SCALE_ATTRS[1] not in attrs:
        return None
    values = np.asarray(attrs[SCALE_ATTRS[1]], np.float64)
    names = decode_attr(attrs[SCALE_ATTRS[0]])
    return {name: float(v) if v.ndim == 0 else v for name, v in zip(names, values)}


def _cells(group: h5py.Group) -> dict[str, dict[str, np.ndarray]]:
    if not isinstance(group.get(CELLS), h5py.Group):
        return {}
    return {
        name: {key: data[()] for key, data in arrays.items()}
        for name, arrays in group[CELLS].items()
    }


def _nan_for_none(value):
    return math.nan if value is None else np.asarray(value, np.float64)


def _none_for_nan(value):
    """A float, an array (a sweep's members), or None where every value is NaN."""
    value = np.asarray(value, np.float64)
    return None if np.all(np.isnan(value)) else float(value) if value.ndim == 0 else value


def truncate_frames(f: h5py.File, after: float = math.inf) -> None:
    """Drop the frames later than `after` (s): those written after the checkpoint a run
    resumes from, which it writes again. Also drops the data of a frame that a kill left half
    written (a frame counts once /time has its time)."""
    time = f["time"]
    keep = int(np.searchsorted(time[()], after, side="right"))
    axis = 1 if "members" in f.attrs else 0  # a sweep's fields lead with the member axis
    for group in ("fields", "summary"):
        for data in f[group].values():
            if data.shape[axis] != keep:
                data.resize(keep, axis=axis)
    for cells in f[CELLS].values() if CELLS in f else ():
        for data in cells.values():
            if not data.is_scale and data.shape[0] != keep:  # not the slots or axes
                data.resize(keep, axis=0)
    if time.shape[0] != keep:
        time.resize(keep, axis=0)
