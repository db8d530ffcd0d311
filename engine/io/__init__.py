"""The HDF5 output: its layout, the writer (frames, checkpoints, several processes), the reader
and the XDMF sidecar. NumPy and h5py only: no JAX.

Modules: `layout` (names, units, chunks, compression), `schema` (creating a file, checking one
for resume), `blocks` (fields as (index, block) parts, frame summaries), `turns` (processes
taking turns at one file), `writer` (`OutputWriter`), `checkpoint` (write, swap, read,
truncate on resume), `reader` (`Output`, `open_output`), `xdmf` (the ParaView sidecar),
`replacing` (writing a file whole or not at all).
"""
