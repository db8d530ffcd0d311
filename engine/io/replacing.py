"""Writing a file whole or not at all: the one way ilsim replaces a sidecar, figure, movie or
bench result, so that a reader never sees half of one and an interrupted write leaves the
earlier file, if any, whole."""

from __future__ import annotations

import contextlib
from pathlib import Path


@contextlib.contextmanager
def replaced(path: Path):
    """A path beside `path`, with its suffix, to write to: renamed to `path` once the block
    ends, removed if it raises."""
    path = Path(path)
    partial = path.with_name(f"{path.stem}.partial{path.suffix}")
    try:
        yield partial
        partial.replace(path)
    finally:
        partial.unlink(missing_ok=True)
