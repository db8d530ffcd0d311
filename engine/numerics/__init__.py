"""The numerical core: grid, boundaries, finite-volume operators, spectral transforms, linear
solvers and the device layout (sharding). Imports nothing else of the engine."""
