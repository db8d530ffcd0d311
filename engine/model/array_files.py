"""Arrays read from files: region masks, initial fields, cell positions. A file is a .npy array
or an HDF5 file, told apart by its suffix in any case (`is_npy`). The readers raise ValueError
with the reason alone ("empty (0 bytes)"); the caller names the file and the fix."""

from __future__ import annotations

from pathlib import Path

import numpy as np

SUFFIXES = (".npy", ".h5", ".hdf5")
"""The suffixes of array files (any case): a .npy array, else HDF5."""


def is_npy(path: str | Path) -> bool:
    """Whether `path` is read as a .npy array (suffix .npy, any case); else as HDF5."""
    return Path(path).suffix.lower() == ".npy"


def load_npy(path: str | Path) -> np.ndarray:
    """The array of a .npy file; ValueError saying why where it holds none (empty, not a .npy
    file, Python objects, unreadable)."""
    try:
        return np.load(path, allow_pickle=False)
    except EOFError:
        raise ValueError("empty (0 bytes)") from None
    except ValueError as error:
        if "Object arrays" in str(error):
            raise ValueError("holds Python objects, not numbers") from None
        if "pickled" in str(error):  # NumPy reads a file without the .npy header as a pickle
            raise ValueError("not a .npy file") from None
        raise ValueError(f"not a readable .npy file ({_first_line(error)})") from None
    except OSError as error:
        raise ValueError(f"cannot be read ({_first_line(error)})") from None


def open_hdf5(path: str | Path):
    """The HDF5 file at `path`, open to read (an h5py.File, a context manager); ValueError
    where it is not one."""
    import h5py

    try:
        return h5py.File(path, "r")
    except OSError as error:
        raise ValueError(f"not a readable HDF5 file ({_first_line(error)})") from None


def check_real(values) -> np.ndarray:
    """`values` (an array, or what an HDF5 dataset reads as) as a NumPy array where it holds
    booleans or real numbers, all finite; ValueError saying what it holds otherwise."""
    array = np.asarray(values)
    if array.dtype.kind not in "biuf":
        raise ValueError(f"holds {array.dtype} values, not booleans or real numbers")
    if not np.all(np.isfinite(array)):
        raise ValueError("holds NaN or infinite values")
    return array


def _first_line(error: Exception) -> str:
    """The first line of an error's message."""
    return (str(error).splitlines() or [""])[0]
