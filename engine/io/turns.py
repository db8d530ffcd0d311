"""Turn-taking of the processes of a multi-process run that write one file: each opens the file
only for its own writes, one process after another with the first first, so that a plain h5py
on a shared file system suffices; what is shared (metadata, summaries, times) the first process
writes alone, from values combined over every process."""

from __future__ import annotations

from pathlib import Path

import h5py
import numpy as np

MESSAGE_BYTES = 1024
"""Room for the first process's error message, sent to the others."""


class Turns:
    """The processes (`engine.numerics.parallel.Processes`: rank, size, barrier, gather) that
    write one file together."""

    def __init__(self, processes):
        self.processes = processes

    @property
    def first(self) -> bool:
        """Whether this is the first process, the one that writes what is shared."""
        return self.processes.rank == 0

    def barrier(self) -> None:
        self.processes.barrier()

    def each(self, path: Path, write) -> None:
        """write(file, first) by every process, the first first, one at a time."""
        for rank in range(self.processes.size):
            if rank == self.processes.rank:
                with h5py.File(path, "r+") as f:
                    write(f, rank == 0)
            self.processes.barrier()

    def first_only(self, path: Path, write) -> None:
        """write(file) by the first process alone; the others wait for it."""
        if self.first:
            with h5py.File(path, "r+") as f:
                write(f)
        self.processes.barrier()

    def raise_first_failure(self, failure: BaseException | None) -> None:
        """Raise on every process what the first one met (`failure` there, None elsewhere):
        the error itself on the first, a ValueError with its message on the others."""
        message = np.zeros(MESSAGE_BYTES, np.uint8)
        if failure is not None:
            text = (str(failure) or type(failure).__name__).encode()[:MESSAGE_BYTES]
            message[: len(text)] = np.frombuffer(text, np.uint8)
        first_message = self.processes.gather(message)[0]
        if first_message.any():
            raise failure or ValueError(bytes(first_message).rstrip(b"\0").decode(errors="replace"))

    def from_first(self, values) -> np.ndarray:
        """The first process's `values` (float64, the same shape on every process)."""
        return self.processes.gather(np.asarray(values, np.float64))[0]

    def combine(self, stats: dict[str, tuple[float, float]]) -> dict[str, tuple[float, float]]:
        """Each field's (total, max) of this process's blocks combined over every process
        (sum, max), all fields in one exchange. (Sweeps, whose summaries are per member, run
        in one process.)"""
        if not stats:
            return stats
        every = self.processes.gather(np.array(list(stats.values()), np.float64))
        totals, peaks = every[:, :, 0].sum(axis=0), every[:, :, 1].max(axis=0)
        return {n: (float(totals[i]), float(peaks[i])) for i, n in enumerate(stats)}
