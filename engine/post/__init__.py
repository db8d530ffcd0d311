"""Post-processing of output files: analysis and figures. NumPy, h5py and matplotlib only."""
