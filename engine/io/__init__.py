"""The HDF5 output: its layout, the writer (frames, checkpoints, several processes), the reader
and the XDMF sidecar. NumPy and h5py only: no JAX."""
