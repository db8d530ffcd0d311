"""What importing the engine does to a fresh process, for tests/test_architecture.py: prints,
as JSON, which heavy libraries the files-and-figures modules loaded, whether `engine.Simulation`
loaded JAX, and whether matplotlib's backend, XLA_FLAGS and JAX's 64-bit mode were kept."""

from __future__ import annotations

import json
import os
import sys

import matplotlib


def main() -> None:
    backend = matplotlib.get_backend()
    flags = os.environ.get("XLA_FLAGS")
    import engine
    import engine.io.reader
    import engine.post.analysis
    import engine.post.plots  # noqa: F401

    light = sorted(m for m in ("jax", "pint", "pydantic") if m in sys.modules)
    engine.Simulation  # noqa: B018  (the heavy layers load on first use)
    import jax

    report = dict(
        light=light,
        heavy="jax" in sys.modules,
        backend_kept=matplotlib.get_backend() == backend,
        flags_kept=os.environ.get("XLA_FLAGS") == flags,
        x64=bool(jax.config.jax_enable_x64),
    )
    print(json.dumps(report))


if __name__ == "__main__":
    main()
