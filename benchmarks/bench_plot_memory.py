"""Memory of `ilsim plot` / `profile` / `movie` / `info` on a 3D output larger than memory budgets:
each command runs in a fresh process that reports its resident memory at start, after
importing the command line, and at its peak (VmHWM, reset after the imports).

    python benchmarks/bench_plot_memory.py [--size 512] [--frames 2] [--compression none]
                                           [--commands plot,profile,...] [--save]

The file (--frames of --size^3 float32, 1 GiB for the defaults) is written with
engine.io.OutputWriter into a temporary folder and removed afterwards. The budget for plotting
one frame is 300 MB above the process's start; --save writes the table to
benchmarks/results/plot_memory-cpu.txt. Linux only (/proc).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]

PROBE = r"""
import json, sys, time
def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
start = status("VmRSS")
from engine.cli.main import main
imported = status("VmRSS")
with open("/proc/self/clear_refs", "w") as f:  # reset VmHWM to the present RSS
    f.write("5")
began = time.perf_counter()
code = main(sys.argv[1:])
print(json.dumps({"rc": code, "start": start, "imported": imported, "peak": status("VmHWM"),
                  "seconds": time.perf_counter() - began}), file=sys.stderr)
"""


def write_file(path: Path, size: int, frames: int, compression: str) -> float:
    """A 3D output of `frames` frames of a Gaussian bump; returns the seconds it took."""
    from engine.io.layout import FieldInfo
    from engine.io.writer import OutputWriter
    from engine.numerics.grid import Grid

    grid = Grid((size,) * 3, spacing=2.0)
    attrs = dict(stepper="imex", backend="cpu", device="cpu", dtype="float32", config="")
    z, y, x = (grid.coordinates(a).astype(np.float32) for a in range(3))
    middle = np.float32(size)  # the centre (um) of a grid of spacing 2
    width = np.float32(0.1 * size * size)
    started = time.perf_counter()
    with OutputWriter(
        path, grid, [FieldInfo("IL2", "species")], "float32", attrs, {}, compression=compression
    ) as writer:
        for k in range(frames):
            values = np.empty(grid.shape, dtype=np.float32)
            across = (y[:, None] - middle) ** 2 + (x[None, :] - middle) ** 2
            for i in range(size):  # one plane at a time: the generator stays small as well
                values[i] = np.exp(-((z[i] - middle) ** 2 + across) / width) * (1 + k)
            writer.write_frame(60.0 * k, {"IL2": values})
            del values
    return time.perf_counter() - started


def commands(path: Path, folder: Path, size: int) -> dict[str, list[str]]:
    middle = f"{size:g}"
    return {
        "plot": ["plot", str(path), "--field", "IL2", "-o", str(folder / "map.png")],
        "plot-x-slice": [
            "plot", str(path), "--field", "IL2", "--slice", "x=10", "-o", str(folder / "x.png")
        ],
        "profile-radial": [
            "profile", str(path), "--field", "IL2", "--center", f"{middle},{middle},{middle}",
            "--radius", f"{size * 0.6:g}", "-o", str(folder / "radial.png"),
        ],
        "profile-line": [
            "profile", str(path), "--field", "IL2", "--from", "0,0,0", "--to",
            f"{2 * size},{2 * size},{2 * size}", "-o", str(folder / "line.png"),
        ],
        "movie": ["movie", str(path), "--field", "IL2", "-o", str(folder / "movie.gif")],
        "info": ["info", str(path)],
    }  # fmt: skip


def measure(argv: list[str]) -> dict:
    """Run `ilsim ARGV` in a fresh process; its memory report (bytes) and exit status."""
    env = dict(os.environ, PYTHONPATH=str(REPO), JAX_PLATFORMS="cpu")
    result = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], env=env, capture_output=True, text=True, cwd=REPO
    )
    report = json.loads(result.stderr.strip().splitlines()[-1])
    report["stderr"] = result.stderr
    return report


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--frames", type=int, default=2)
    parser.add_argument("--compression", default="none", choices=("none", "lzf", "gzip"))
    parser.add_argument("--commands", default="all")
    parser.add_argument("--save", action="store_true")
    args = parser.parse_args()
    lines = []
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        path = folder / "big.h5"
        seconds = write_file(path, args.size, args.frames, args.compression)
        mb = path.stat().st_size / 1e6
        lines.append(
            f"# python benchmarks/bench_plot_memory.py --size {args.size} --frames "
            f"{args.frames} --compression {args.compression}"
        )
        lines.append(
            f"file: {args.size}^3 float32 x {args.frames} frames, {mb:.0f} MB "
            f"({args.compression}), written in {seconds:.1f} s; {os.cpu_count()} CPUs, "
            f"Python {sys.version.split()[0]}"
        )
        lines.append(
            f"{'command':<16} {'start':>7} {'imports':>8} {'peak':>7} {'peak-start':>11} "
            f"{'peak-imports':>13} {'time':>7}"
        )
        chosen = commands(path, folder, args.size)
        names = list(chosen) if args.commands == "all" else args.commands.split(",")
        for name in names:
            report = measure(chosen[name])
            if report["rc"] != 0:
                raise SystemExit(f"{name} failed: {report['stderr']}")
            start, imported, peak = (report[k] / 1e6 for k in ("start", "imported", "peak"))
            lines.append(
                f"{name:<16} {start:6.0f}M {imported:7.0f}M {peak:6.0f}M {peak - start:10.0f}M "
                f"{peak - imported:12.0f}M {report['seconds']:6.2f}s"
            )
    text = "\n".join(lines)
    print(text)
    if args.save:
        out = REPO / "benchmarks" / "results" / "plot_memory-cpu.txt"
        out.write_text(text + "\n")
        print(f"wrote {out}")


if __name__ == "__main__":
    main()
