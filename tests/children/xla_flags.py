"""XLA_FLAGS of a fresh process after `import engine`, for tests/test_parallel.py.

    python tests/children/xla_flags.py [DEVICES]

splits the CPU into DEVICES devices first (`parallel.use_cpu_devices`) when given, then prints
XLA_FLAGS (empty if unset)."""

from __future__ import annotations

import os
import sys

import engine


def main(argv: list[str]) -> None:
    if argv:
        engine.parallel.use_cpu_devices(int(argv[0]))
    print(os.environ.get("XLA_FLAGS", ""))


if __name__ == "__main__":
    main(sys.argv[1:])
