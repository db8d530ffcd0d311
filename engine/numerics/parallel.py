"""Domain decomposition over devices with JAX's own SPMD machinery.

Fields are split into blocks over a device mesh laid on the leading grid axes (`mesh = [2, 2]`
splits z over 2 and y over 2 devices in 3D). Every stepper runs unchanged on sharded fields:
XLA's GSPMD partitioner turns the stencil's neighbour slices into halo exchanges between
neighbouring devices; conjugate-gradient dot products sum whole lines on each device and
gather the line sums (`dot`), so they add as on one device. Each spectral transform runs
along an axis made whole on every device by an all-to-all (`lay_out`), so it sums as one
device does. Output is written shard by shard (`host_parts`), so no process holds
more than its own devices' blocks of a field.
"""

from __future__ import annotations

import contextlib
import math
import os
import platform
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax
from jax.experimental import multihost_utils
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

MESH_AXES = ("shard_0", "shard_1", "shard_2")
"""Names of the mesh axes, laid on grid axes 0, 1, 2 (z, y, x in 3D)."""


def use_cpu_devices(count: int) -> None:
    """Split the host CPU into `count` JAX devices (`--devices N` without accelerators; in
    Python, call it before JAX first starts its backends), compiled without FMAs
    (`reproducible_cpu_math`), so that runs on any count agree bitwise."""
    jax.config.update("jax_num_cpu_devices", int(count))
    reproducible_cpu_math()


def reproducible_cpu_math() -> None:
    """Compile CPU code without fused multiply-adds (XLA's instruction set capped at AVX), so
    that a field split over CPU devices rounds as it does whole. XLA fuses element-wise work
    differently for different block shapes, so where a multiply-add becomes an FMA differs
    with the split: a unit in the last place here and there, which growth and chemotaxis
    carry on. FMAs make an explicit step faster (docs/performance-notes.md), so only the
    start-up of a process that splits the CPU asks for this (`use_cpu_devices`, multi-process
    runs); importing the engine never does. x86-64 only; takes effect only before JAX first
    starts its backends."""
    if platform.machine().lower() not in ("x86_64", "amd64"):
        return
    flags = os.environ.get("XLA_FLAGS", "")
    if "xla_cpu_max_isa" not in flags:
        os.environ["XLA_FLAGS"] = f"{flags} --xla_cpu_max_isa=AVX".strip()


def initialize_distributed(heartbeat_timeout: float = 100.0) -> None:
    """Join a multi-process run (one process per host or per GPU): JAX reads the coordinator,
    process count and id from the cluster environment (SLURM, Open MPI) or from
    JAX_COORDINATOR_ADDRESS, JAX_NUM_PROCESSES and JAX_PROCESS_ID. CPU devices of different
    processes talk through Gloo, compiled without FMAs as any CPU split is
    (`reproducible_cpu_math`). A process silent for `heartbeat_timeout` s (one that died)
    makes every other abort, rather than wait for it forever."""
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    reproducible_cpu_math()
    timeout = dict(heartbeat_timeout_seconds=max(1, math.ceil(heartbeat_timeout)))
    address = os.environ.get("JAX_COORDINATOR_ADDRESS")
    if address:
        jax.distributed.initialize(
            coordinator_address=address,
            num_processes=int(os.environ["JAX_NUM_PROCESSES"]),
            process_id=int(os.environ["JAX_PROCESS_ID"]),
            **timeout,
        )
    else:
        jax.distributed.initialize(**timeout)


class Processes:
    """The processes of a multi-process run, as the output writer needs them: this one's
    rank, their number, a barrier, and small arrays gathered from all of them."""

    def __init__(self):
        self.rank = jax.process_index()
        self.size = jax.process_count()
        self._barriers = 0

    def barrier(self) -> None:
        """Wait until every process is here."""
        self._barriers += 1
        multihost_utils.sync_global_devices(f"ilsim barrier {self._barriers}")

    def gather(self, values) -> np.ndarray:
        """`values` (a small array) of every process, stacked along a new first axis. Sent as
        raw bytes, so float64 stays float64 where JAX runs in float32."""
        values = np.ascontiguousarray(values)
        raw = np.asarray(multihost_utils.process_allgather(values.reshape(-1).view(np.uint8)))
        return raw.view(values.dtype).reshape(self.size, *values.shape)

    def any(self, flag: bool) -> bool:
        """Whether `flag` is true on any process."""
        return bool(np.any(self.gather(np.array(bool(flag)))))


def processes() -> Processes | None:
    """The processes of this run, None when it has one."""
    return Processes() if jax.process_count() > 1 else None


def auto_mesh_shape(grid_shape: Sequence[int], n_devices: int) -> tuple[int, ...]:
    """Devices per leading grid axis for `n_devices`: slabs along the first axis when they
    stay at least 4 voxels thick, else (3D) the most even split over the first two axes,
    else any slabs. The last grid axis is never split (see `device_mesh`)."""
    if n_devices == 1:
        return (1,)
    slabs = len(grid_shape) > 1 and grid_shape[0] % n_devices == 0
    if slabs and grid_shape[0] // n_devices >= 4:
        return (n_devices,)
    if len(grid_shape) > 2:
        for first in sorted(
            (d for d in range(1, n_devices + 1) if n_devices % d == 0),
            key=lambda d: abs(d - math.sqrt(n_devices)),
        ):
            second = n_devices // first
            if grid_shape[0] % first == 0 and grid_shape[1] % second == 0:
                return (first, second)
    if slabs:
        return (n_devices,)
    raise ValueError(
        f"parallel.mesh: cannot split a {'x'.join(map(str, grid_shape))} grid evenly over "
        f"{n_devices} devices; give parallel.mesh explicitly or use another device count"
    )


def device_mesh(spec, grid_shape: Sequence[int], devices: int | None = None) -> Mesh | None:
    """The mesh for a `[parallel]` mesh spec: None (one device), "auto" or devices per leading
    grid axis. `devices` caps the devices used ("auto" uses them all).

    The last grid axis is never split: its rows stay contiguous, and the spectral transforms
    always have an axis to work along locally (XLA's CPU FFT fails on a field split along
    every axis, and a distributed FFT would need an all-to-all per transformed axis)."""
    available = jax.devices()
    if devices is not None and devices > len(available):
        raise ValueError(
            f"--devices {devices}: only {len(available)} {available[0].platform} device(s) here"
        )
    if jax.process_count() > 1:  # every process must hold blocks of the fields, none all
        if devices not in (None, len(available)):
            raise ValueError(
                f"--devices {devices}: a multi-process run uses all {len(available)} devices "
                "of its processes; leave --devices out"
            )
        spec = "auto" if spec is None else spec
    if spec is None and devices in (None, 1):
        return None
    if spec is None or spec == "auto":
        spec = auto_mesh_shape(grid_shape, devices or len(available))
    spec = tuple(int(n) for n in spec)
    if len(spec) >= len(grid_shape):
        raise ValueError(
            f"parallel.mesh: {len(spec)} mesh axes for a {len(grid_shape)}D grid; give at most "
            f"{len(grid_shape) - 1} (the last grid axis stays whole)"
        )
    if any(n < 1 for n in spec):
        raise ValueError(f"parallel.mesh: devices per axis must be >= 1, got {list(spec)}")
    count = math.prod(spec)
    if count > len(available) or (devices is not None and count != devices):
        have = devices if devices is not None else len(available)
        raise ValueError(
            f"parallel.mesh: {list(spec)} needs {count} devices, {have} given; "
            'change the mesh or --devices (mesh = "auto" fits any count)'
        )
    if jax.process_count() > 1 and count != len(available):
        raise ValueError(
            f"parallel.mesh: {list(spec)} uses {count} of the {len(available)} devices of this "
            'multi-process run; give a mesh over all of them, or "auto"'
        )
    for axis, (n, size) in enumerate(zip(spec, grid_shape)):
        if size % n:
            raise ValueError(
                f"parallel.mesh: grid axis {axis} has {size} voxels, not divisible into {n} "
                "blocks; choose a mesh that divides the grid"
            )
    return Mesh(np.asarray(available[:count]).reshape(spec), MESH_AXES[: len(spec)])


def field_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
    """Blocks of a grid-shaped array over the mesh (the trailing grid axes stay whole)."""
    names = mesh.axis_names
    return NamedSharding(mesh, PartitionSpec(*names, *([None] * (ndim - len(names)))))


def place(tree, mesh: Mesh | None, grid_shape: Sequence[int]):
    """`tree` with every grid-shaped array split over the mesh and everything else replicated
    (unchanged without a mesh)."""
    if mesh is None:
        return tree
    blocks = field_sharding(mesh, len(grid_shape))
    replicated = NamedSharding(mesh, PartitionSpec())

    def put(x):
        shape = getattr(x, "shape", ())
        return jax.device_put(x, blocks if tuple(shape) == tuple(grid_shape) else replicated)

    return jax.tree.map(put, tree)


def read_blocks(dataset, sharding: NamedSharding | None, dtype):
    """An HDF5 dataset (or any sliceable array) as a device array laid out by `sharding`:
    each process reads only the blocks of its own devices; all of it without a sharding."""
    if sharding is None:
        return jax.device_put(np.asarray(dataset[()], dtype))
    return jax.make_array_from_callback(
        dataset.shape, sharding, lambda index: np.asarray(dataset[index], dtype)
    )


def host_parts(array) -> list[tuple[tuple[slice, ...], np.ndarray]]:
    """(index into the global array, values) of the blocks this process holds, each copied to
    host memory once: one per device shard of a sharded array, the whole of anything else."""
    shards = getattr(array, "addressable_shards", None)
    if shards is None or len(shards) <= 1:
        whole = np.asarray(array)
        return [(tuple(slice(0, n) for n in whole.shape), whole)]
    return [
        (tuple(slice(*i.indices(n)) for i, n in zip(s.index, array.shape)), np.asarray(s.data))
        for s in shards
        if s.replica_id == 0
    ]


def layout(mesh: Mesh | None):
    """Context in which a traced step sees `mesh` (for `lay_out`); a no-op without one. Enter
    it inside the jitted function."""
    if mesh is None:
        return contextlib.nullcontext()
    return jax.sharding.use_abstract_mesh(mesh.abstract_mesh)


def _current_mesh():
    """The mesh of `layout`, None outside one or inside `shard_map` (manual axes)."""
    mesh = jax.sharding.get_abstract_mesh()
    automatic = all(kind == AxisType.Auto for kind in mesh.axis_types)
    return None if mesh.empty or not automatic else mesh


def lay_out(x, whole_axis: int | None = None):
    """`x` (grid-shaped) in the fields' blocks over the current mesh, except that `whole_axis`,
    if given, is whole on every device: its mesh axis moves to the last grid axis it divides.
    A transform along `whole_axis` then sums each line on one device, in the order a single
    device does, instead of adding per-device partial sums. Unchanged outside a mesh, or
    where no other axis can take the split."""
    mesh = _current_mesh()
    if mesh is None:
        return x
    spec = [MESH_AXES[i] if MESH_AXES[i] in mesh.axis_names else None for i in range(x.ndim)]
    if whole_axis is not None and spec[whole_axis] is not None:
        name, spec[whole_axis] = spec[whole_axis], None
        free = [
            j
            for j in reversed(range(x.ndim))
            if spec[j] is None and j != whole_axis and x.shape[j] % mesh.shape[name] == 0
        ]
        if not free:
            return x
        spec[free[0]] = name
    return jax.lax.with_sharding_constraint(x, PartitionSpec(*spec))


def dot(a, b):
    """The sum of a * b over the grid (grid-shaped a, b), rounded alike whether they are whole
    or split over the current mesh: each line along the last axis sums on one device, then
    every device adds all the line sums in one order. A plain sum of a split array adds
    per-device partial sums, so CG solves on split fields rounded differently. Each sum runs
    behind a `fence`: then the line sums read a and b in the fields' blocks (whose last axis
    is whole) and are the same loop on one device and on many, and the second sum reads the
    whole array of line sums on every device."""
    a, b = lay_out(a), lay_out(b)
    if a.ndim < 2:
        return jnp.sum(a * b)
    lines = fence(lambda a, b: jnp.sum(a * b, axis=-1), a, b)
    return fence(jnp.sum, replicate(lines))


def mean(x):
    """The mean of `x` over the grid, rounded alike whether it is whole or split (`dot`); a
    scalar as it is."""
    x = jnp.asarray(x)
    if x.ndim == 0:
        return x
    return dot(x, jnp.ones_like(x)) / x.size


def fence(function, *arrays):
    """function(*arrays), computed as written from the arrays as they are stored: XLA fuses
    and simplifies element-wise work differently on split fields (how many voxels a loop
    covers, which collectives sit between two operations), and across this boundary it can
    do neither. It is the branch of a conditional whose predicate is false, but known only
    once the arrays are: optimization barriers do not last until fusion. On CPUs only: on
    accelerators FMAs stay, so split runs are not bitwise anyway, and a conditional may cost
    a round trip to the host there (not measured)."""
    if jax.default_backend() != "cpu":
        return function(*arrays)
    never = jnp.isnan(arrays[0][(0,) * arrays[0].ndim])
    return lax.cond(never, function, function, *arrays)


def replicate(x):
    """`x` whole on every device of the current mesh (unchanged outside one): a small operand,
    such as a transform matrix, that must not be split with the fields it multiplies."""
    if _current_mesh() is None:
        return x
    return jax.lax.with_sharding_constraint(x, PartitionSpec())
