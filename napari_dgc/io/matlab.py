"""MATLAB ``.mat`` cubes: v5 (read with SciPy) and v7.3 (HDF5, read lazily with h5py).

The cube is the largest numeric 3-D variable, or the variable named by ``key``. A 2-D
``bands x pixels`` matrix (as in unmixing data sets such as Samson) needs the spatial shape:
given by the caller, or stored in the file as whole-number scalars named like ``lines`` /
``cols`` or ``nRow`` / ``nCol`` whose product is the matrix's pixel count. Its pixels are
reshaped in MATLAB's column-major order, ``matrix.reshape(rows, cols, bands, order="F")`` on
the ``pixels x bands`` orientation. The band axis is the axis whose length matches a
wavelength vector stored next to the cube, else the shortest axis.
"""

from __future__ import annotations

import math
import re
import struct
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_dgc.errors import CubeFormatError
from napari_dgc.io.bands import choose_band_axis, to_nanometres
from napari_dgc.io.cube import Cube
from napari_dgc.io.lazy import AxisPermuted, Deferred

_WAVELENGTH_NAME = re.compile(r"^(wave.*|wl|wls|wvl|lambda.*|bands?_?(nm|wavelengths?))$", re.IGNORECASE)
_ROWS_NAME = re.compile(r"^(lines|rows|nrows?|height)$", re.IGNORECASE)
_COLS_NAME = re.compile(r"^(cols|columns|ncols?|samples|width)$", re.IGNORECASE)
# MATLAB classes (v7.3 attribute) that hold numbers usable as intensities.
_NUMERIC_CLASSES = {
    "double",
    "single",
    "int8",
    "uint8",
    "int16",
    "uint16",
    "int32",
    "uint32",
    "int64",
    "uint64",
}


@dataclass
class _Variable:
    """One numeric MATLAB variable: ``shape`` in MATLAB axis order, ``array`` lazy or loaded."""

    name: str
    shape: tuple[int, ...]
    array: Any

    @property
    def size(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64))

    def load(self) -> np.ndarray:
        return np.asarray(self.array[...])


def open_mat(
    path: Path,
    *,
    key: str | None = None,
    shape: tuple[int, int] | None = None,
    band_axis: int | None = None,
) -> Cube:
    """Open a cube stored in a MATLAB ``.mat`` file (v5 or v7.3).

    Parameters
    ----------
    path : pathlib.Path
        The ``.mat`` file.
    key : str, optional
        Variable holding the cube (default: the largest numeric 3-D variable).
    shape : (int, int), optional
        ``(rows, cols)`` for a 2-D ``bands x pixels`` (or ``pixels x bands``) matrix, whose
        pixels are in MATLAB column-major order.
    band_axis : int, optional
        Override the band axis of a 3-D variable.

    Raises
    ------
    CubeFormatError
        Corrupt or truncated file, unknown ``key``, no 3-D variable (a 2-D matrix without
        ``shape`` or stored row/column counts that fit it), a ``shape`` that does not fit the
        matrix.

    Notes
    -----
    A 2-D matrix opened without ``shape`` takes the row and column counts stored in the file
    (``lines``/``cols``, ``nRow``/``nCol``, ...) when both are whole positive numbers whose
    product is the matrix's pixel count; ``provenance["shape_source"]`` says so and
    ``provenance["pixel_shape"]`` holds ``[rows, cols]`` of every reshaped matrix.
    """
    variables, fmt = _read_variables(path)
    stored = _stored_shape(variables) if shape is None else None
    shape_source = "given by the caller" if shape is not None else None
    if key is not None:
        if key not in variables:
            raise CubeFormatError(
                f"{path}: no numeric variable {key!r} (numeric variables: {_listing(variables)})"
            )
        chosen = variables[key]
    else:
        chosen = _largest(variables, path, shape, stored)
    if len(chosen.shape) == 2 and shape is None and stored is not None and _fits(chosen, stored[0]):
        shape, (rows_name, cols_name) = stored
        shape_source = f"stored in the file as {rows_name!r} and {cols_name!r}"

    wavelength_var = _wavelength_variable(variables, exclude=chosen.name)
    provenance: dict = {"key": chosen.name, "variables": _listing(variables)}
    if len(chosen.shape) == 2:
        data, band_axis_found = _reshape_matrix(chosen, shape, path), 2
        provenance["band_axis_reason"] = (
            f"2-D matrix {chosen.shape[0]} x {chosen.shape[1]} reshaped to {shape[0]} x {shape[1]} "
            f"pixels in MATLAB column-major order (shape {shape_source})"
        )
        provenance["pixel_shape"] = [int(shape[0]), int(shape[1])]
        provenance["shape_source"] = shape_source
    elif len(chosen.shape) == 3:
        if shape is not None:
            raise CubeFormatError(
                f"{path}: variable {chosen.name!r} is already 3-D {chosen.shape}; do not pass a shape"
            )
        data = chosen.array
        if band_axis is not None:
            band_axis_found = band_axis
            provenance["band_axis_reason"] = "given by the caller"
        else:
            n_wl = wavelength_var.size if wavelength_var else None
            band_axis_found, provenance["band_axis_reason"] = choose_band_axis(chosen.shape, n_wl)
    else:
        raise CubeFormatError(
            f"{path}: variable {chosen.name!r} has {len(chosen.shape)} dimensions {chosen.shape}; "
            "a cube needs 3 (or a 2-D bands x pixels matrix with a shape)"
        )

    n_bands = data.shape[band_axis_found]
    wavelengths = None
    if wavelength_var is not None:
        provenance["wavelength_key"] = wavelength_var.name
        if wavelength_var.size == n_bands:
            wavelengths, provenance["wavelength_units"] = to_nanometres(wavelength_var.load().ravel(), None)
        else:
            provenance["wavelength_note"] = (
                f"{wavelength_var.name!r} has {wavelength_var.size} values for {n_bands} bands: ignored"
            )
    provenance["dtype"] = np.dtype(data.dtype).str
    return Cube(
        data=data,
        band_axis=band_axis_found,
        wavelengths=wavelengths,
        path=path,
        format=fmt,
        provenance=provenance,
    )


def _read_variables(path: Path) -> tuple[dict[str, _Variable], str]:
    """All numeric variables of the file, read lazily, and ``"mat"`` or ``"mat-v7.3"``."""
    import h5py

    if h5py.is_hdf5(path):
        return _hdf5_variables(path), "mat-v7.3"
    with open(path, "rb") as handle:
        head = handle.read(128)
    if b"7.3 MAT-file" in head:
        raise CubeFormatError(f"{path}: a MATLAB v7.3 file whose HDF5 part is missing or truncated")
    if len(head) == 128 and head[126:128] in (b"IM", b"MI"):
        return _v5_variables(path, "<" if head[126:128] == b"IM" else ">"), "mat"
    # No MATLAB 5 header: perhaps a MATLAB v4 file, which has no compression, so reading it
    # whole costs no more memory than its size on disk.
    contents = _loadmat(path)
    variables = {
        name: _Variable(name, tuple(value.shape), value)
        for name, value in contents.items()
        if not name.startswith("__") and isinstance(value, np.ndarray) and _is_numeric(value.dtype)
    }
    return variables, "mat"


def _loadmat(path: Path, **kwargs: Any) -> dict:
    import scipy.io

    try:
        return scipy.io.loadmat(path, squeeze_me=False, mat_dtype=False, **kwargs)
    except PermissionError:
        raise
    except Exception as error:  # SciPy signals corrupt files with many exception types
        raise CubeFormatError(
            f"{path}: not a readable MATLAB file ({type(error).__name__}: {error})"
        ) from error


# ---------------------------------------------------------------------- MATLAB v5 headers
#: MATLAB v5/v7 files cannot store a variable of more than 2^31 - 1 bytes; one that claims
#: more is corrupt or hostile and is refused before anything is decompressed.
MAX_V5_VARIABLE_BYTES = 2**31 - 1
# Decompressed bytes that always hold a variable's array header (flags, dims, name, data tag).
_V5_HEADER_BYTES = 64 * 1024
# Compressed bytes read to find that header (zlib expands at most ~1000x, so this is plenty).
_V5_COMPRESSED_HEAD = 256 * 1024
_MI_COMPRESSED, _MI_MATRIX, _MI_INT8, _MI_INT32, _MI_UINT32 = 15, 14, 1, 5, 6
# Storage types of numeric data (what SciPy returns with mat_dtype=False).
_MI_DTYPES = {1: "i1", 2: "u1", 3: "i2", 4: "u2", 5: "i4", 6: "u4", 7: "f4", 9: "f8", 12: "i8", 13: "u8"}
# mxCLASS codes of numeric arrays (double .. uint64); sparse, cell, struct, char are not cubes.
_MX_NUMERIC = range(6, 16)
_MX_COMPLEX_FLAG = 0x800


def _v5_variables(path: Path, endian: str) -> dict[str, _Variable]:
    """The numeric variables of a MATLAB v5/v7 file, from their headers only.

    Each compressed variable is inflated only as far as its array header; its values are
    decompressed (by SciPy, that variable alone) when the cube is first read, after its stated
    size has been checked against :data:`MAX_V5_VARIABLE_BYTES`.
    """
    size = path.stat().st_size
    variables: dict[str, _Variable] = {}
    with open(path, "rb") as handle:
        position = 128
        while position + 8 <= size:
            handle.seek(position)
            mdtype, nbytes = struct.unpack(endian + "II", handle.read(8))
            if mdtype >> 16:  # "small data element": its bytes are in the tag itself
                position += 8
                continue
            end = position + 8 + nbytes
            if end > size:
                raise CubeFormatError(
                    f"{path}: not a readable MATLAB file (truncated: the element at byte {position} "
                    f"needs {end} bytes, the file has {size})"
                )
            if mdtype == _MI_COMPRESSED:
                body = _inflate_head(handle.read(min(nbytes, _V5_COMPRESSED_HEAD)), path, position)
                header = _v5_matrix_header(body, endian, path, position)
            elif mdtype == _MI_MATRIX:
                tag = struct.pack(endian + "II", mdtype, nbytes)
                header = _v5_matrix_header(
                    tag + handle.read(min(nbytes, _V5_HEADER_BYTES)), endian, path, position
                )
            else:
                header = None
            if header is not None and not header[0].startswith("__"):
                name, shape, dtype = header
                variables[name] = _Variable(
                    name, shape, Deferred(shape, dtype, _v5_loader(path, name, shape))
                )
            position = end
    return variables


def _inflate_head(compressed: bytes, path: Path, position: int) -> bytes:
    try:
        return zlib.decompressobj().decompress(compressed, _V5_HEADER_BYTES)
    except zlib.error as error:
        raise CubeFormatError(
            f"{path}: not a readable MATLAB file (compressed variable at byte {position}: {error})"
        ) from None


def _v5_matrix_header(
    body: bytes, endian: str, path: Path, position: int
) -> tuple[str, tuple[int, ...], np.dtype] | None:
    """``(name, shape, stored dtype)`` of a numeric real array element, else None.

    ``body`` starts with the miMATRIX tag. The data's stated byte count must equal the shape
    times the item size, and the size must stay within :data:`MAX_V5_VARIABLE_BYTES`.
    """

    def broken(problem: str) -> CubeFormatError:
        return CubeFormatError(f"{path}: not a readable MATLAB file (variable at byte {position}: {problem})")

    def element(offset: int) -> tuple[int, bytes, int]:
        if offset + 8 > len(body):
            raise broken("its header is cut short")
        first, second = struct.unpack_from(endian + "II", body, offset)
        if first >> 16:  # small data element
            count = first >> 16
            if count > 4:
                raise broken("a malformed small data element")
            return first & 0xFFFF, body[offset + 4 : offset + 4 + count], offset + 8
        if offset + 8 + second > len(body):
            raise broken("its header is cut short or too long")
        return first, body[offset + 8 : offset + 8 + second], offset + 8 + (second + 7) // 8 * 8

    if len(body) < 8 or struct.unpack_from(endian + "I", body, 0)[0] != _MI_MATRIX:
        raise broken("no array element")
    flags_type, flags, offset = element(8)
    if flags_type != _MI_UINT32 or len(flags) != 8:
        raise broken("malformed array flags")
    word = struct.unpack_from(endian + "I", flags, 0)[0]
    if (word & 0xFF) not in _MX_NUMERIC or word & _MX_COMPLEX_FLAG:
        return None  # not a real numeric array: not a cube, skipped as SciPy's result was
    dims_type, dims, offset = element(offset)
    if dims_type != _MI_INT32 or len(dims) % 4 or not 8 <= len(dims) <= 4 * 32:
        raise broken("malformed dimensions")
    shape = struct.unpack(endian + f"{len(dims) // 4}i", dims)
    if min(shape) < 0:
        raise broken(f"negative dimension in {shape}")
    name_type, name_bytes, offset = element(offset)
    if name_type != _MI_INT8:
        raise broken("malformed name")
    name = name_bytes.decode("latin-1")
    if offset + 8 > len(body):
        if 0 in shape:
            return None  # an empty array may have no data element; it is no cube anyway
        raise broken(f"variable {name!r} has no data")
    first, second = struct.unpack_from(endian + "II", body, offset)
    data_type, stated = (first & 0xFFFF, first >> 16) if first >> 16 else (first, second)
    if data_type not in _MI_DTYPES:
        raise broken(f"variable {name!r} has no numeric data (storage type {data_type})")
    dtype = np.dtype(_MI_DTYPES[data_type])  # SciPy returns the storage type, in native order
    needed = math.prod(shape) * dtype.itemsize
    if needed > MAX_V5_VARIABLE_BYTES:
        raise CubeFormatError(
            f"{path}: variable {name!r} claims {'x'.join(map(str, shape))} values of {dtype.itemsize} "
            f"bytes ({needed} bytes); a MATLAB v5/v7 file holds at most {MAX_V5_VARIABLE_BYTES} bytes "
            "per variable, so the file is corrupt or hostile and is not decompressed"
        )
    if stated != needed:
        raise broken(f"variable {name!r} states {stated} data bytes for shape {shape}, not {needed}")
    return name, tuple(shape), dtype


def _v5_loader(path: Path, name: str, shape: tuple[int, ...]) -> Callable[[], np.ndarray]:
    """Read one variable with SciPy (which skips the others without decompressing them)."""

    def load() -> np.ndarray:
        value = _loadmat(path, variable_names=[name]).get(name)
        if not isinstance(value, np.ndarray) or tuple(value.shape) != shape:
            raise CubeFormatError(f"{path}: variable {name!r} cannot be read as its header describes")
        return value

    return load


def _hdf5_variables(path: Path) -> dict[str, _Variable]:
    """The numeric top-level datasets of a v7.3 file, read lazily through h5py.

    A user's file must not make napari-dgc read other files: a top-level external link, or a
    dataset whose values live in external files or are a virtual dataset (a view of other
    files), is refused with an error naming the variable.
    """
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise CubeFormatError(f"{path}: corrupt or truncated MATLAB v7.3 (HDF5) file ({error})") from error
    variables = {}
    for name in handle:
        if name.startswith("#"):
            continue
        link = handle.get(name, getlink=True)
        if isinstance(link, h5py.ExternalLink):
            raise CubeFormatError(
                f"{path}: variable {name!r} is an HDF5 external link to {link.filename!r}; "
                "links to other files are not followed"
            )
        try:
            item = handle[name]
        except (KeyError, OSError, RuntimeError) as error:  # e.g. a dangling soft link
            raise CubeFormatError(f"{path}: variable {name!r} cannot be opened ({error})") from error
        if not isinstance(item, h5py.Dataset):
            continue
        if item.is_virtual or item.external:
            kind = "a virtual dataset" if item.is_virtual else "stored in external files"
            raise CubeFormatError(
                f"{path}: variable {name!r} is {kind}; values outside the file are not read"
            )
        matlab_class = item.attrs.get("MATLAB_class", b"double")
        matlab_class = matlab_class.decode() if isinstance(matlab_class, bytes) else str(matlab_class)
        if (
            matlab_class not in _NUMERIC_CLASSES
            or not _is_numeric(item.dtype)
            or item.attrs.get("MATLAB_empty", 0)
        ):
            continue
        # HDF5 stores MATLAB arrays with the axis order reversed.
        reversed_axes = tuple(reversed(range(item.ndim)))
        variables[name] = _Variable(name, tuple(reversed(item.shape)), AxisPermuted(item, reversed_axes))
    return variables


def _is_numeric(dtype: np.dtype) -> bool:
    return np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)


def _listing(variables: dict[str, _Variable]) -> str:
    return ", ".join(f"{v.name} {'x'.join(map(str, v.shape))}" for v in variables.values()) or "none"


def _largest(
    variables: dict[str, _Variable],
    path: Path,
    shape: tuple[int, int] | None,
    stored: tuple[tuple[int, int], tuple[str, str]] | None = None,
) -> _Variable:
    """The cube variable: the largest 3-D one, or with ``shape`` the matrix that fits it.

    Without ``shape``, the largest 2-D matrix is the cube when it is larger than every 3-D
    variable and the ``stored`` row/column counts of the file fit it.
    """
    cubes = [v for v in variables.values() if len(v.shape) == 3]
    matrices = [v for v in variables.values() if len(v.shape) == 2 and min(v.shape) > 1]
    if shape is None and stored is not None:
        fitting = [v for v in matrices if _fits(v, stored[0])]
        largest_fitting = max(fitting, key=lambda v: v.size, default=None)
        if largest_fitting is not None and all(largest_fitting.size > v.size for v in cubes):
            return largest_fitting
    if shape is not None:
        fitting = [v for v in matrices if shape[0] * shape[1] in v.shape]
        if not fitting:
            raise CubeFormatError(
                f"{path}: no 2-D matrix has {shape[0]} x {shape[1]} = {shape[0] * shape[1]} pixels "
                f"along one axis (numeric variables: {_listing(variables)})"
            )
        return max(fitting, key=lambda v: v.size)
    largest_matrix = max(matrices, key=lambda v: v.size, default=None)
    largest_cube = max(cubes, key=lambda v: v.size, default=None)
    if largest_matrix is not None and (largest_cube is None or largest_matrix.size > largest_cube.size):
        also = f", or key={largest_cube.name!r} for its 3-D array" if largest_cube else ""
        raise CubeFormatError(
            f"{path}: the largest variable {largest_matrix.name!r} is a 2-D "
            f"{largest_matrix.shape[0]} x {largest_matrix.shape[1]} matrix (bands x pixels?); "
            f"pass shape=(rows, cols) (CLI: --shape ROWS COLS){_shape_hint(variables)}{also}"
        )
    if largest_cube is None:
        raise CubeFormatError(f"{path}: holds no 3-D array (numeric variables: {_listing(variables)})")
    return largest_cube


def _stored_shape(variables: dict[str, _Variable]) -> tuple[tuple[int, int], tuple[str, str]] | None:
    """``((rows, cols), (rows variable, cols variable))`` stored in the file as scalars, or None.

    A stored count that is not a whole positive number (Inf, NaN, -3, 2.5) counts as absent
    rather than being turned into an error.
    """
    scalars = {name: v for name, v in variables.items() if v.size == 1}
    rows = next((v for name, v in scalars.items() if _ROWS_NAME.match(name)), None)
    cols = next((v for name, v in scalars.items() if _COLS_NAME.match(name)), None)
    if rows is None or cols is None:
        return None
    r, c = (float(v.load().ravel()[0]) for v in (rows, cols))
    if not all(np.isfinite(n) and n >= 1 and n == int(n) for n in (r, c)):
        return None
    return (int(r), int(c)), (rows.name, cols.name)


def _fits(matrix: _Variable, shape: tuple[int, int]) -> bool:
    """Whether a 2-D ``matrix`` has ``rows x cols`` pixels along one axis."""
    return len(matrix.shape) == 2 and shape[0] * shape[1] in matrix.shape


def _shape_hint(variables: dict[str, _Variable]) -> str:
    """E.g. " -- the file's 'lines' and 'cols' say (95, 95)" when such scalars exist."""
    stored = _stored_shape(variables)
    if stored is None:
        return ""
    (r, c), (rows_name, cols_name) = stored
    return f" -- the file's {rows_name!r} and {cols_name!r} say ({r}, {c})"


def _reshape_matrix(matrix: _Variable, shape: tuple[int, int] | None, path: Path) -> np.ndarray:
    """Turn a ``bands x pixels`` or ``pixels x bands`` matrix into ``(rows, cols, bands)``."""
    if shape is None:
        raise CubeFormatError(
            f"{path}: variable {matrix.name!r} is a 2-D {matrix.shape[0]} x {matrix.shape[1]} "
            "matrix (bands x pixels?); pass shape=(rows, cols) (CLI: --shape ROWS COLS)"
        )
    rows, cols = (int(n) for n in shape)
    if rows < 1 or cols < 1:
        raise CubeFormatError(f"{path}: shape must be positive, got {shape}")
    values = matrix.load()
    if values.shape[1] == rows * cols:
        values = values.T
    elif values.shape[0] != rows * cols:
        raise CubeFormatError(
            f"{path}: shape {rows} x {cols} = {rows * cols} pixels does not fit "
            f"{matrix.name!r} of shape {values.shape[0]} x {values.shape[1]}"
        )
    return values.reshape(rows, cols, values.shape[1], order="F")


def _wavelength_variable(variables: dict[str, _Variable], exclude: str) -> _Variable | None:
    """A vector variable whose name says it holds wavelengths (``wavelengths``, ``wl``, ...)."""
    for name, variable in variables.items():
        if name == exclude or not _WAVELENGTH_NAME.match(name):
            continue
        if variable.size > 1 and sorted(variable.shape)[:-1] == [1] * (len(variable.shape) - 1):
            return variable
    return None
