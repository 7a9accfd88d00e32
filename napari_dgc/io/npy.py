"""NumPy ``.npy`` cubes, memory-mapped (band-last ``(rows, cols, bands)`` unless told).

Wavelengths come from an optional JSON sidecar ``<stem>.json`` with ``"wavelengths"`` (and
``"wavelength_units"``), as written by :func:`napari_dgc.datasets.synthetic.save_scene_npy`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from napari_dgc.errors import CubeFormatError, UnsupportedFormatError
from napari_dgc.io.bands import to_nanometres
from napari_dgc.io.cube import Cube


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
        The file is not a valid ``.npy`` (bad header, truncated data, object dtype).
    """
    with open(path, "rb") as handle:
        if handle.read(6) != b"\x93NUMPY":
            raise CubeFormatError(f"{path}: not a .npy file (it does not start with the NumPy signature)")
    try:
        data = np.load(path, mmap_mode="r", allow_pickle=False)
    except ValueError as error:
        raise CubeFormatError(f"{path}: not a valid or complete .npy file ({error})") from error
    except EOFError as error:
        raise CubeFormatError(f"{path}: the .npy file is truncated") from error
    if not isinstance(data, np.memmap):
        raise CubeFormatError(f"{path}: the .npy file cannot be memory-mapped")
    if data.ndim != 3:
        raise UnsupportedFormatError(
            f"{path}: holds a {data.ndim}-D array of shape {data.shape}; a cube needs 3 axes "
            "(rows, cols, bands)"
        )
    if not (np.issubdtype(data.dtype, np.integer) or np.issubdtype(data.dtype, np.floating)):
        raise CubeFormatError(f"{path}: unsupported data type {data.dtype} (need integers or floats)")
    axis = 2 if band_axis is None else band_axis
    provenance = {
        "dtype": data.dtype.str,
        "fortran_order": bool(data.flags.f_contiguous and not data.flags.c_contiguous),
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
        content = json.loads(sidecar.read_text(encoding="utf-8"))
        values = [float(v) for v in content["wavelengths"]]
    except (OSError, ValueError, TypeError, KeyError) as error:
        provenance["wavelength_note"] = (
            f"sidecar has no usable 'wavelengths' list ({type(error).__name__}): ignored"
        )
        return None
    if len(values) != n_bands:
        provenance["wavelength_note"] = (
            f"sidecar lists {len(values)} wavelengths for {n_bands} bands: ignored"
        )
        return None
    wavelengths, provenance["wavelength_units"] = to_nanometres(values, content.get("wavelength_units"))
    return wavelengths
