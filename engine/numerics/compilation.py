"""XLA options for the compiled stepping loops (`jax.jit(..., compiler_options=...)`)."""

from __future__ import annotations

import jax

NO_HOISTING = {"xla_disable_hlo_passes": "while-loop-invariant-code-motion"}
"""XLA moves what a loop's body computes from loop invariants out of the loop and carries
the result through it: for a step, grid-sized arrays per field (the exponentials of a
field's mode rates, the voxel indices that stochastic rounding hashes), which made an imex
step of 6 fields hold 7.2 copies of the state instead of 3.7, and an explicit one 3.4
instead of 3.2. Recomputed in the step they cost less than reading them back
(docs/performance-notes.md)."""


def compiler_options() -> dict:
    """The options of every stepping program: no hoisting of loop invariants
    (`NO_HOISTING`), and on a GPU the transforms' matrix products by cuBLAS: XLA autotunes
    each matrix-product fusion as a Triton kernel while compiling, which took most of an
    imex loop's compile time; with cuBLAS the loop compiles in a fraction of it and steps as
    fast (docs/performance-notes.md)."""
    if jax.default_backend() == "gpu":
        return {**NO_HOISTING, "xla_gpu_enable_triton_gemm": False}
    return dict(NO_HOISTING)
