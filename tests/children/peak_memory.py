"""The peak resident memory of a command, for tests/test_run.py:
`python tests/children/peak_memory.py COMMAND...` runs COMMAND, then prints its exit status
and its peak resident set in bytes.

A process started from a large one (pytest, after many tests) inherits that process's
resident set as the start of its `ru_maxrss`: the kernel keeps the high-water mark of the
memory it replaced at exec. Started from this small process, the command's `ru_maxrss` is
its own."""

from __future__ import annotations

import os
import subprocess
import sys

if __name__ == "__main__":
    process = subprocess.Popen(sys.argv[1:])
    _, status, usage = os.wait4(process.pid, 0)
    peak = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024)  # KiB on Linux
    print(os.waitstatus_to_exitcode(status), peak)
