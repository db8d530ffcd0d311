"""Processes that read or write an ilsim HDF5 file, for tests/test_io.py:
`python tests/children/writer.py COMMAND PATH` with COMMAND

- read: print the frame count and IL2[1][0, 0] of a file another process holds open for
  writing;
- exit: write three frames, then exit without closing the file;
- forever: write 48^3 frames back to back, printing each frame's index once it is written,
  until killed."""

from __future__ import annotations

import os
import sys

import numpy as np

from engine.io.layout import FieldInfo
from engine.io.reader import open_output
from engine.io.writer import OutputWriter
from engine.numerics.grid import Grid


def read(path: str) -> None:
    with open_output(path) as out:
        print(len(out.time), float(out.frame("IL2", 1)[0, 0]))


def exit_without_closing(path: str) -> None:
    grid = Grid((6, 8), spacing=2.0)
    writer = OutputWriter(path, grid, [FieldInfo("IL2", "species")], "float32", {}, {})
    for k in range(3):
        writer.write_frame(10.0 * k, {"IL2": np.full(grid.shape, k + 1.0)})
    os._exit(0)  # no close, no flush beyond write_frame's own


def forever(path: str) -> None:
    grid = Grid((48, 48, 48), spacing=2.0)
    base = np.random.default_rng(0).random(grid.shape).astype(np.float32)
    fields = [FieldInfo("IL2", "species")]
    with OutputWriter(path, grid, fields, "float32", {}, {}) as writer:
        for k in range(10**6):
            writer.write_frame(10.0 * k, {"IL2": base + k})
            print(k, flush=True)


def main(argv: list[str]) -> None:
    command, path = argv
    {"read": read, "exit": exit_without_closing, "forever": forever}[command](path)


if __name__ == "__main__":
    main(sys.argv[1:])
