"""Boundary conditions per field and per face: neumann, dirichlet, periodic, robin.

Faces are named `<axis>_min` / `<axis>_max` (`x_min`, `z_max`, ...). Kinds and values are static:
they decide the compiled program.
"""

from __future__ import annotations

from dataclasses import dataclass

from engine.numerics.grid import AXIS_NAMES


@dataclass(frozen=True)
class Neumann:
    """Zero flux through the face."""


@dataclass(frozen=True)
class Dirichlet:
    """Fixed value on the face (field units)."""

    value: float = 0.0


@dataclass(frozen=True)
class Robin:
    """Flux into the domain h * (outside - c_face); h in um/s, outside in field units."""

    h: float
    outside: float = 0.0

    def __post_init__(self):
        if not self.h >= 0:
            raise ValueError(f"robin.h: must be >= 0, got {self.h}")


@dataclass(frozen=True)
class Periodic:
    """Wraps around: the face joins the opposite face of the same axis."""


Face = Neumann | Dirichlet | Robin | Periodic


@dataclass(frozen=True)
class Boundary:
    """One (low, high) face condition per grid axis, in array axis order."""

    faces: tuple[tuple[Face, Face], ...]

    def __post_init__(self):
        for axis, (low, high) in enumerate(self.faces):
            if isinstance(low, Periodic) != isinstance(high, Periodic):
                name = AXIS_NAMES[len(self.faces)][axis]
                raise ValueError(
                    f"boundary.{name}: periodic must be set on both {name}_min and {name}_max"
                )

    @classmethod
    def uniform(cls, ndim: int, face: Face | None = None) -> Boundary:
        """The same condition on every face (default neumann)."""
        face = Neumann() if face is None else face
        return cls(tuple((face, face) for _ in range(ndim)))

    @classmethod
    def from_faces(cls, ndim: int, default: Face | None = None, **faces: Face) -> Boundary:
        """`default` on every face, overridden by name: `from_faces(2, x_min=Dirichlet(1.0))`."""
        names = AXIS_NAMES[ndim]
        valid = {f"{a}_{side}" for a in names for side in ("min", "max")}
        unknown = sorted(set(faces) - valid)
        if unknown:
            raise ValueError(f"boundary.{unknown[0]}: unknown face; valid faces: {sorted(valid)}")
        default = Neumann() if default is None else default
        return cls(
            tuple((faces.get(f"{a}_min", default), faces.get(f"{a}_max", default)) for a in names)
        )

    def is_periodic(self, axis: int) -> bool:
        return isinstance(self.faces[axis][0], Periodic)

    @property
    def inhomogeneous(self) -> bool:
        """Whether a face drives the field: a dirichlet value other than 0, or a robin face
        with h > 0 and an outside value other than 0; then div(D grad c) of c = 0 is not 0."""
        return any(
            (isinstance(f, Dirichlet) and f.value != 0)
            or (isinstance(f, Robin) and f.h > 0 and f.outside != 0)
            for pair in self.faces
            for f in pair
        )
