"""NumPy ``.npy`` cubes, memory-mapped (band-last ``(rows, cols, bands)`` unless told).

Wavelengths come from an optional JSON sidecar ``<stem>.json`` with ``"wavelengths"`` (and
``"wavelength_units"``), as written by :func:`napari_dgc.datasets.synthetic.save_scene_npy`.
"""

from __future__ import annotations

import math
import tokenize
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from napari_dgc.errors import CubeFormatError, DGCError, UnsupportedFormatError
from napari_dgc.io.bands import to_nanometres
from napari_dgc.io.cube import Cube
from napari_dgc.safe_json import read_json

# What numpy's header parser raises for a malformed header (it tokenizes and evaluates a
# Python literal; tokenize.TokenError found by tests/test_fuzz_parsers.py).
_HEADER_ERRORS = (
    ValueError,
    SyntaxError,
    TypeError,
    OverflowError,
    MemoryError,
    RecursionError,
    EOFError,
    tokenize.TokenError,
)


@dataclass(frozen=True)
class NpyHeader:
    """The facts a ``.npy`` header states, checked against the file (see :func:`read_npy_header`)."""

    shape: tuple[int, ...]
    dtype: np.dtype
    fortran_order: bool
    offset: int

    @property
    def nbytes(self) -> int:
        """Bytes of data the header describes (a Python int, so it cannot overflow)."""
        return math.prod(self.shape) * self.dtype.itemsize


def read_npy_header(path: Path, *, error: type[DGCError] = CubeFormatError) -> NpyHeader:
    """Read and check a ``.npy`` header before any array is mapped or allocated.

    The shape must be non-negative, the dtype must hold no Python objects, and the file must
    hold at least the bytes the header describes, so a hostile header can neither make numpy
    allocate or map more than the file holds nor overflow its size arithmetic.

    Parameters
    ----------
    path : pathlib.Path
        The ``.npy`` file.
    error : type of DGCError
        Exception class raised for every problem (``MaskError`` for a mask, ...).

    Returns
    -------
    NpyHeader

    Raises
    ------
    DGCError
        Of class ``error``, naming the file: no NumPy signature, a malformed or unsupported
        header, a negative size, an object dtype, or a file shorter than its header says.
    """
    with open(path, "rb") as handle:
        if handle.read(6) != b"\x93NUMPY":
            raise error(f"{path}: not a .npy file (it does not start with the NumPy signature)")
        handle.seek(0)
        try:
            version = np.lib.format.read_magic(handle)
            if version == (1, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_1_0(handle)
            elif version == (2, 0):
                shape, fortran_order, dtype = np.lib.format.read_array_header_2_0(handle)
            else:
                raise error(f"{path}: unsupported .npy format version {version[0]}.{version[1]}")
        except _HEADER_ERRORS as failure:
            if isinstance(failure, DGCError):
                raise
            raise error(f"{path}: not a valid or complete .npy file ({failure})") from None
        offset = handle.tell()
    if any(n < 0 for n in shape):
        raise error(f"{path}: not a valid .npy file (negative size in its header's shape {shape})")
    if dtype.hasobject:
        raise error(f"{path}: the .npy file holds Python objects, which napari-dgc never loads")
    header = NpyHeader(tuple(int(n) for n in shape), dtype, bool(fortran_order), offset)
    available = path.stat().st_size - offset
    if header.nbytes > available:
        raise error(
            f"{path}: not a valid or complete .npy file (its header describes {header.nbytes} bytes "
            f"of data for shape {header.shape}, but {available} follow)"
        )
    return header


def open_npy(path: Path, *, band_axis: int | None = None) -> Cube:
    """Open a 3-D ``.npy`` array as a memory-mapped cube without reading its values.

    Parameters
    ----------
    path : pathlib.Path
        The ``.npy`` file.
    band_axis : int, optional
        Axis holding the bands; default 2 (the engine's band-last convention).

    Raises
    ------
    UnsupportedFormatError
        The array is not 3-D (nothing napari-dgc can treat as a cube).
    CubeFormatError
        The file is not a valid ``.npy`` (bad header, truncated data, object dtype) or holds
        no values.
    """
    header = read_npy_header(path)
    shape, dtype = header.shape, header.dtype
    if len(shape) != 3:
        raise UnsupportedFormatError(
            f"{path}: holds a {len(shape)}-D array of shape {shape}; a cube needs 3 axes (rows, cols, bands)"
        )
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        raise CubeFormatError(f"{path}: unsupported data type {dtype} (need integers or floats)")
    if 0 in shape:
        raise CubeFormatError(f"{path}: the array of shape {shape} holds no values")
    # What np.load(mmap_mode="r") does, after the header has been checked against the file.
    data = np.memmap(
        path,
        dtype=dtype,
        mode="r",
        offset=header.offset,
        shape=shape,
        order="F" if header.fortran_order else "C",
    )
    axis = 2 if band_axis is None else band_axis
    provenance = {
        "dtype": data.dtype.str,
        "fortran_order": header.fortran_order,
        "band_axis_reason": "given by the caller"
        if band_axis is not None
        else "band-last convention for .npy",
    }
    wavelengths = _sidecar_wavelengths(path.with_suffix(".json"), data.shape[axis], provenance)
    return Cube(
        data=data, band_axis=axis, wavelengths=wavelengths, path=path, format="npy", provenance=provenance
    )


def _sidecar_wavelengths(sidecar: Path, n_bands: int, provenance: dict) -> np.ndarray | None:
    """Wavelengths from an optional JSON sidecar; an unusable sidecar is noted, not fatal."""
    if not sidecar.is_file():
        return None
    provenance["sidecar"] = str(sidecar)
    try:
        content = read_json(sidecar, what="wavelength sidecar")
        values = [float(v) for v in content["wavelengths"]]
    except DGCError as error:
        provenance["wavelength_note"] = f"sidecar has no usable 'wavelengths' list ({error}): ignored"
        return None
    except (ValueError, TypeError, KeyError, IndexError, OverflowError) as error:
        provenance["wavelength_note"] = (
            f"sidecar has no usable 'wavelengths' list ({type(error).__name__}): ignored"
        )
        return None
    if len(values) != n_bands:
        provenance["wavelength_note"] = (
            f"sidecar lists {len(values)} wavelengths for {n_bands} bands: ignored"
        )
        return None
    units = content.get("wavelength_units") if isinstance(content, dict) else None
    wavelengths, provenance["wavelength_units"] = to_nanometres(values, units)
    return wavelengths
