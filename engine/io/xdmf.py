"""The XDMF sidecar `OUT.xdmf` beside `OUT.h5`, with which ParaView opens an ilsim file.

It holds a temporal collection of uniform grids, 3DCoRectMesh / 2DCoRectMesh (1D: a
2DCoRectMesh one cell of `depth` thick), cell-centred attributes read through a hyperslab of
`OUT.h5:/fields/<name>` per frame (a sweep's member k as `<name>[k]`), and the region masks,
hyperslabs of the same dimensions. Origin and spacing are listed z, y, x (the order ParaView's
reader reverses into VTK's x, y, z); the topology counts points, shape + 1 per axis. The
reference uses the h5 file's bare name so both files can move together. The writer rewrites
the sidecar on every checkpoint and on close, to the file's current name, so a file renamed
while open gets a matching sidecar; `write_xdmf` regenerates it. "lzf" compression is an
h5py-only filter that ParaView cannot decode (the writer warns, `LZF_WARNING`); use "gzip" or
"none" for ParaView.

Each cell type is a temporal collection of its own, `cells_<type>`, beside the fields' one
(`ilsim`), so ParaView shows a multiblock of the fields' mesh and one point set per type:
a Polyvertex grid over all `capacity` slots of a frame, X_Y_Z geometry read from hyperslabs
of /cells/<type>/position (`VTK_COLUMNS`), and point attributes alive, id and each state
variable. Empty slots are points too (their values meaningless): a Threshold on `alive`
between 1 and 1 keeps the live cells.
"""

from __future__ import annotations

import warnings
import xml.etree.ElementTree as ET
from pathlib import Path

import h5py
import numpy as np

from engine.io.layout import CELLS, check_format, open_read, read_cells, read_grid
from engine.io.replacing import replaced

VTK_COLUMNS = {3: (2, 1, 0), 2: (None, 1, 0), 1: (None, 0, None)}
"""Per grid dimension, the column of a cell position (stored z, y, x) that gives VTK's x, y
and z (None: 0), so that the cells lie on the fields' mesh as vtkXdmfReader builds it: a
3D mesh with VTK (x, y, z) = (x, y, z); a 2DCoRectMesh, listed (y, x), in the plane VTK
x = 0 with VTK (y, z) = (x, y); a 1D rod's mesh with VTK y = x, z across the rod."""


LZF_WARNING = (
    'output.compression = "lzf": ParaView cannot read the data of the XDMF sidecar (lzf is an '
    'h5py-only filter); use "gzip" or "none" for files ParaView should open'
)
"""The one-line warning (`warnings.warn`) of a writer or `write_xdmf` for an lzf file."""


def _number_type(dtype: np.dtype) -> tuple[str, str]:
    dtype = np.dtype(dtype)
    if dtype.kind == "b":
        return "UChar", "1"
    if dtype.kind == "f":
        return "Float", str(dtype.itemsize)
    if dtype.kind == "u":
        return ("UChar" if dtype.itemsize == 1 else "UInt"), str(dtype.itemsize)
    return ("Char" if dtype.itemsize == 1 else "Int"), str(dtype.itemsize)


def _dims(values) -> str:
    return " ".join(str(int(v)) for v in values)


def _floats(values) -> str:
    return " ".join(repr(float(v)) for v in values)


def xdmf_text(f: h5py.File, h5_name: str) -> str:
    """The XDMF document for an open ilsim file whose bare file name is `h5_name`."""
    grid = read_grid(f)
    fields = [(name, data.shape, data.dtype) for name, data in f["fields"].items()]
    regions = (
        [(name, data.shape, data.dtype) for name, data in f["regions"].items()]
        if ("regions" in f)
        else []
    )
    root = ET.Element("Xdmf", Version="2.0")
    domain = ET.SubElement(root, "Domain")
    series = ET.SubElement(
        domain, "Grid", Name="ilsim", GridType="Collection", CollectionType="Temporal"
    )
    for index, t in enumerate(f["time"][()]):
        uniform = _frame_grid(series, grid, index, t)
        for field in fields:
            for member in _members_of(field[1], grid.ndim):
                _field_attribute(uniform, grid, h5_name, field, index, member)
        for region in regions:
            _region_attribute(uniform, grid, h5_name, region)
    for info in read_cells(f):
        _cell_series(domain, f, h5_name, info)
    ET.indent(root, space=" ")
    return '<?xml version="1.0" ?>\n' + ET.tostring(root, encoding="unicode") + "\n"


def _mesh(grid) -> tuple[tuple[int, ...], tuple[float, ...], tuple[float, ...]]:
    """(cells, spacing, origin) of the mesh ParaView shows: the grid's, except that a 1D rod
    is a 2D mesh one cell (of the rod's depth) thick."""
    if grid.ndim == 1:
        return (
            (1, grid.shape[0]),
            (grid.depth, grid.spacing[0]),
            (-0.5 * grid.depth, grid.origin[0]),
        )
    return grid.shape, grid.spacing, grid.origin


def _frame_grid(series: ET.Element, grid, index: int, t: float) -> ET.Element:
    """The uniform grid of frame `index` at time t (s): its time, topology and geometry."""
    cells, spacing, origin = _mesh(grid)
    mesh_dims = 3 if len(cells) == 3 else 2
    uniform = ET.SubElement(series, "Grid", Name=f"frame_{index:06d}", GridType="Uniform")
    ET.SubElement(uniform, "Time", Value=repr(float(t)))
    ET.SubElement(
        uniform,
        "Topology",
        TopologyType=f"{mesh_dims}DCoRectMesh",
        Dimensions=_dims(np.add(cells, 1)),
    )
    geometry_type = "ORIGIN_DXDYDZ" if mesh_dims == 3 else "ORIGIN_DXDY"
    geometry = ET.SubElement(uniform, "Geometry", GeometryType=geometry_type)
    for name, values in (("Origin", origin), ("Spacing", spacing)):
        item = ET.SubElement(
            geometry,
            "DataItem",
            Name=name,
            Dimensions=str(mesh_dims),
            NumberType="Float",
            Precision="8",
            Format="XML",
        )
        item.text = _floats(values)  # z, y, x: ParaView reverses them into x, y, z
    return uniform


def _members_of(data_shape, ndim: int) -> list:
    """The member indices of a field dataset: [None] for a single run's."""
    return list(range(data_shape[0])) if len(data_shape) == ndim + 2 else [None]


def _field_attribute(
    uniform: ET.Element, grid, h5_name: str, field: tuple, index: int, member: int | None
) -> None:
    """A field, (name, dataset shape, dtype), at frame `index` (of sweep member `member`) as
    a cell attribute: a hyperslab of its dataset."""
    name, data_shape, dtype = field
    attribute = ET.SubElement(
        uniform,
        "Attribute",
        Name=name if member is None else f"{name}[{member}]",
        AttributeType="Scalar",
        Center="Cell",
    )
    lead = (index,) if member is None else (member, index)
    _mesh_slab(attribute, grid, f"{h5_name}:/fields/{name}", data_shape, dtype, lead)


def _mesh_slab(parent: ET.Element, grid, source: str, data_shape, dtype, lead: tuple = ()) -> None:
    """The grid-shaped block at the leading indices `lead` (member, frame) of the dataset
    `source` (of `data_shape` and `dtype`) as a hyperslab of the mesh's cell dimensions: a
    DataItem of other dimensions (a 1D rod's n, not 1 x n) vtkXdmfReader reads as one value."""
    slab = ET.SubElement(parent, "DataItem", ItemType="HyperSlab", Dimensions=_dims(_mesh(grid)[0]))
    selection = ET.SubElement(slab, "DataItem", Dimensions=f"3 {len(data_shape)}", Format="XML")
    selection.text = "  ".join(
        (
            _dims((*lead, *(0 for _ in grid.shape))),
            _dims((1,) * len(data_shape)),
            _dims((*(1 for _ in lead), *grid.shape)),
        )
    )
    _hdf_item(slab, source, data_shape, dtype)


def _cell_series(domain: ET.Element, f: h5py.File, h5_name: str, info) -> None:
    """Cell type `info` (a CellInfo) as a temporal collection of point sets, one per frame."""
    group = f[CELLS][info.name]
    arrays = {name: (data.shape, data.dtype) for name, data in group.items()}
    columns = VTK_COLUMNS[arrays["position"][0][2]]
    series = ET.SubElement(
        domain,
        "Grid",
        Name=f"cells_{info.name}",
        GridType="Collection",
        CollectionType="Temporal",
    )
    source = f"{h5_name}:/{CELLS}/{info.name}"
    for index, t in enumerate(f["time"][()]):
        points = ET.SubElement(
            series, "Grid", Name=f"cells_{info.name}_{index:06d}", GridType="Uniform"
        )
        ET.SubElement(points, "Time", Value=repr(float(t)))
        ET.SubElement(
            points,
            "Topology",
            TopologyType="Polyvertex",
            NumberOfElements=str(info.capacity),
            NodesPerElement="1",
        )
        geometry = ET.SubElement(points, "Geometry", GeometryType="X_Y_Z")
        for column in columns:
            parent = geometry
            if column is None:  # 0: a column times 0
                parent = ET.SubElement(
                    geometry,
                    "DataItem",
                    ItemType="Function",
                    Function="0 * $0",
                    Dimensions=str(info.capacity),
                )
            _cell_slab(parent, f"{source}/position", arrays["position"], index, column or 0)
        for name in ("alive", "id", *info.state):
            attribute = ET.SubElement(
                points, "Attribute", Name=name, AttributeType="Scalar", Center="Node"
            )
            _cell_slab(attribute, f"{source}/{name}", arrays[name], index)


def _cell_slab(
    parent: ET.Element, source: str, array: tuple, index: int, column: int | None = None
) -> None:
    """Frame `index` of a cell array, (shape, dtype) with shape (n_frames, capacity[, ndim]),
    as a hyperslab of its dataset `source`: every slot, and one `column` of a position."""
    shape, dtype = array
    capacity = shape[1]
    slab = ET.SubElement(parent, "DataItem", ItemType="HyperSlab", Dimensions=str(capacity))
    selection = ET.SubElement(slab, "DataItem", Dimensions=f"3 {len(shape)}", Format="XML")
    extra = () if column is None else (column,)
    ones = (1,) * len(extra)
    selection.text = "  ".join(
        _dims(v) for v in ((index, 0, *extra), (1, 1, *ones), (1, capacity, *ones))
    )
    _hdf_item(slab, source, shape, dtype)


def _region_attribute(uniform: ET.Element, grid, h5_name: str, region: tuple) -> None:
    """A region mask, (name, dataset shape, dtype), as a cell attribute: the whole mask as a
    hyperslab of the fields' dimensions."""
    name, data_shape, dtype = region
    attribute = ET.SubElement(
        uniform, "Attribute", Name=f"region_{name}", AttributeType="Scalar", Center="Cell"
    )
    _mesh_slab(attribute, grid, f"{h5_name}:/regions/{name}", data_shape, dtype)


def _hdf_item(parent: ET.Element, source: str, data_shape, dtype) -> None:
    """A DataItem reading the whole HDF5 dataset `source` ("file.h5:/group/name")."""
    number, precision = _number_type(dtype)
    item = ET.SubElement(
        parent,
        "DataItem",
        Dimensions=_dims(data_shape),
        NumberType=number,
        Precision=precision,
        Format="HDF",
    )
    item.text = source


def write_sidecar(f: h5py.File, h5_path) -> Path:
    """Write the sidecar of the open ilsim file `f` whose name is `h5_path` beside it, whole
    or not at all; returns its path."""
    h5_path = Path(h5_path)
    target = h5_path.with_suffix(".xdmf")
    with replaced(target) as partial:
        partial.write_text(xdmf_text(f, h5_path.name))
    return target


def write_xdmf(path) -> Path:
    """(Re)write the sidecar `path.with_suffix(".xdmf")` of an ilsim file; returns its path."""
    with open_read(path) as f:
        check_format(f, path)
        if any(data.compression == "lzf" for data in f["fields"].values()):
            warnings.warn(LZF_WARNING, stacklevel=2)
        return write_sidecar(f, Path(path))
