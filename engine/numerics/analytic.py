"""Analytic solutions of the validation cases (DESIGN.md section 6), in float64 NumPy."""

from __future__ import annotations

import numpy as np
from scipy import special

from engine.numerics.constants import MOLECULES_PER_UM3_PER_NM


def heat_kernel(r2, t: float, D: float, ndim: int, mass: float = 1.0, t0: float = 0.0):
    """Gaussian of total `mass` spread from a point at time -t0 (r2: squared distance, um^2)."""
    width = 4 * D * (t + t0)
    return mass * np.exp(-r2 / width) / (np.pi * width) ** (ndim / 2)


def point_source_steady_state(r, q: float, D: float, k: float, ndim: int, depth: float = 1.0):
    """Steady state of a point source q (molecules/s) with decay k (1/s), in nM.

    3D: q / (4 pi D r) exp(-r / lambda); 2D: q / (2 pi D depth) K0(r / lambda), lambda = sqrt(D/k).
    """
    screening = np.sqrt(D / k)
    if ndim == 3:
        amount = q / (4 * np.pi * D * r) * np.exp(-r / screening)
    elif ndim == 2:
        amount = q / (2 * np.pi * D * depth) * special.k0(r / screening)
    else:
        raise ValueError("point sources have closed forms in 2D and 3D")
    return amount / MOLECULES_PER_UM3_PER_NM
