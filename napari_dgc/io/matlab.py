"""MATLAB ``.mat`` cubes: v5 (read with SciPy) and v7.3 (HDF5, read lazily with h5py).

The cube is the largest numeric 3-D variable, or the variable named by ``key``. A 2-D
``bands x pixels`` matrix (as in unmixing data sets such as Samson) needs the spatial shape:
its pixels are reshaped in MATLAB's column-major order, ``matrix.reshape(rows, cols, bands,
order="F")`` on the ``pixels x bands`` orientation. The band axis is the axis whose length
matches a wavelength vector stored next to the cube, else the shortest axis.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from napari_dgc.errors import CubeFormatError
from napari_dgc.io.bands import choose_band_axis, to_nanometres
from napari_dgc.io.cube import Cube
from napari_dgc.io.lazy import AxisPermuted

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
        ``shape``), a ``shape`` that does not fit the matrix.
    """
    variables, fmt = _read_variables(path)
    if key is not None:
        if key not in variables:
            raise CubeFormatError(
                f"{path}: no numeric variable {key!r} (numeric variables: {_listing(variables)})"
            )
        chosen = variables[key]
    else:
        chosen = _largest(variables, path, shape)

    wavelength_var = _wavelength_variable(variables, exclude=chosen.name)
    provenance: dict = {"key": chosen.name, "variables": _listing(variables)}
    if len(chosen.shape) == 2:
        data, band_axis_found = _reshape_matrix(chosen, shape, path), 2
        provenance["band_axis_reason"] = (
            f"2-D matrix {chosen.shape[0]} x {chosen.shape[1]} reshaped to {shape[0]} x {shape[1]} "
            "pixels in MATLAB column-major order"
        )
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
    """All numeric variables of the file (v7.3 ones lazy), and ``"mat"`` or ``"mat-v7.3"``."""
    import h5py

    if h5py.is_hdf5(path):
        return _hdf5_variables(path), "mat-v7.3"
    with open(path, "rb") as handle:
        head = handle.read(128)
    if b"7.3 MAT-file" in head:
        raise CubeFormatError(f"{path}: a MATLAB v7.3 file whose HDF5 part is missing or truncated")
    import scipy.io

    try:
        contents = scipy.io.loadmat(path, squeeze_me=False, mat_dtype=False)
    except PermissionError:
        raise
    except Exception as error:  # SciPy signals corrupt files with many exception types
        raise CubeFormatError(
            f"{path}: not a readable MATLAB file ({type(error).__name__}: {error})"
        ) from error
    variables = {
        name: _Variable(name, tuple(value.shape), value)
        for name, value in contents.items()
        if not name.startswith("__") and isinstance(value, np.ndarray) and _is_numeric(value.dtype)
    }
    return variables, "mat"


def _hdf5_variables(path: Path) -> dict[str, _Variable]:
    import h5py

    try:
        handle = h5py.File(path, "r")
    except OSError as error:
        raise CubeFormatError(f"{path}: corrupt or truncated MATLAB v7.3 (HDF5) file ({error})") from error
    variables = {}
    for name, item in handle.items():
        if not isinstance(item, h5py.Dataset) or name.startswith("#"):
            continue
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


def _largest(variables: dict[str, _Variable], path: Path, shape: tuple[int, int] | None) -> _Variable:
    """The cube variable: the largest 3-D one, or with ``shape`` the matrix that fits it."""
    cubes = [v for v in variables.values() if len(v.shape) == 3]
    matrices = [v for v in variables.values() if len(v.shape) == 2 and min(v.shape) > 1]
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


def _shape_hint(variables: dict[str, _Variable]) -> str:
    """E.g. " -- the file's 'lines' and 'cols' say (95, 95)" when such scalars exist."""
    scalars = {name: v for name, v in variables.items() if v.size == 1}
    rows = next((v for name, v in scalars.items() if _ROWS_NAME.match(name)), None)
    cols = next((v for name, v in scalars.items() if _COLS_NAME.match(name)), None)
    if rows is None or cols is None:
        return ""
    r, c = int(rows.load().ravel()[0]), int(cols.load().ravel()[0])
    return f" -- the file's {rows.name!r} and {cols.name!r} say ({r}, {c})"


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
