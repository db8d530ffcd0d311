"""Runs of configs: the run driver (frames, checkpoints, resume), sweeps, gradients and fits."""
