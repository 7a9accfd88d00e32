"""Hyperspectral cube I/O: :func:`open_cube` opens ENVI, MATLAB, NPY, TIFF and PNG folders lazily.

Opening reads headers only; values are read through :meth:`Cube.read_window` and
:meth:`Cube.read_bands`. See ``docs/formats.md`` for what each format reader accepts.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_dgc.errors import CubeFormatError, DGCError, UnsupportedFormatError
from napari_dgc.io.cube import Cube

__all__ = ["Cube", "open_cube", "describe_cube", "format_for_path"]


def format_for_path(path: str | os.PathLike) -> str | None:
    """Name the reader napari-dgc would use for ``path`` from its name alone, or None.

    Cheap (no file is opened): ``"png-folder"`` for a folder, ``"envi"`` for a header or a
    data file with a header next to it, ``"mat"``, ``"npy"`` or ``"tiff"`` by extension.
    """
    from napari_dgc.io.envi import DATA_EXTENSIONS, find_header

    path = Path(path)
    suffix = path.suffix.lower()
    if path.is_dir():
        return "png-folder"
    if suffix == ".hdr":
        return "envi"
    if suffix == ".mat":
        return "mat"
    if suffix == ".npy":
        return "npy"
    if suffix in (".tif", ".tiff"):
        return "tiff"
    if suffix in DATA_EXTENSIONS and find_header(path) is not None:
        return "envi"
    return None


def open_cube(
    path: str | os.PathLike,
    *,
    key: str | None = None,
    shape: tuple[int, int] | None = None,
    band_axis: int | None = None,
) -> Cube:
    """Open a hyperspectral cube without reading its values.

    Parameters
    ----------
    path : path-like
        An ENVI header or data file, a ``.mat``, ``.npy``, multi-page ``.tif``/``.tiff``, or
        a folder of one PNG per band with the wavelength in each name (``scene_1293nm.png``).
    key : str, optional
        MATLAB variable to use (default: the largest 3-D numeric array).
    shape : (int, int), optional
        ``(rows, cols)`` for a MATLAB 2-D ``bands x pixels`` matrix, whose pixels are taken
        in MATLAB column-major order.
    band_axis : int, optional
        Override the band axis of a ``.npy``, ``.mat`` or TIFF array (ENVI's interleave and
        PNG folders fix it).

    Returns
    -------
    Cube

    Raises
    ------
    UnsupportedFormatError
        ``path`` is not a format napari-dgc reads (the napari reader declines it).
    CubeFormatError
        A file of a supported format that is missing, empty, unreadable, broken or holds no
        usable cube, or a path that is neither a regular file nor a folder (a FIFO would block
        forever). Every message names the file and the problem.
    """
    path = Path(path).expanduser()
    if not path.exists():
        raise CubeFormatError(f"{path}: no such file or folder")
    if not (path.is_file() or path.is_dir()):
        # A FIFO would block the reader forever and a device never ends: only regular files
        # (and folders, for PNG bands) are cubes.
        raise CubeFormatError(f"{path}: not a regular file or folder (a FIFO, socket or device); not read")
    kind = format_for_path(path)
    if kind is None:
        raise UnsupportedFormatError(f"{path}: not a hyperspectral cube format napari-dgc reads")
    if band_axis is not None and band_axis not in (0, 1, 2):
        raise CubeFormatError(f"{path}: band_axis must be 0, 1 or 2, got {band_axis}")
    if path.is_file() and path.stat().st_size == 0:
        raise CubeFormatError(f"{path}: the file is empty (0 bytes)")
    openers: dict[str, Callable[[], Cube]] = {
        "envi": lambda: _envi().open_envi(path),
        "mat": lambda: _matlab().open_mat(path, key=key, shape=shape, band_axis=band_axis),
        "npy": lambda: _npy().open_npy(path, band_axis=band_axis),
        "tiff": lambda: _tiff().open_tiff(path, band_axis=band_axis),
        "png-folder": lambda: _png_folder().open_png_folder(path),
    }
    try:
        return openers[kind]()
    except DGCError:
        raise
    except PermissionError as error:
        raise CubeFormatError(f"{error.filename or path}: cannot be read (permission denied)") from error
    except OSError as error:
        raise CubeFormatError(
            f"{error.filename or path}: cannot be read ({error.strerror or error})"
        ) from error


# Format modules are imported on first use: opening a .npy never imports h5py or tifffile.
def _envi():
    from napari_dgc.io import envi

    return envi


def _matlab():
    from napari_dgc.io import matlab

    return matlab


def _npy():
    from napari_dgc.io import npy

    return npy


def _tiff():
    from napari_dgc.io import tiff

    return tiff


def _png_folder():
    from napari_dgc.io import png_folder

    return png_folder


def describe_cube(cube: Cube) -> str:
    """Describe a cube in a few human-readable lines (used by ``napari-dgc info``).

    Reports format, spatial shape, stored dtype, band count and band axis (with the ENVI
    interleave), wavelength range, the cube's size in bytes, the size on disk and the path.
    """
    rows, cols = cube.shape_hw
    layout = f"axis {cube.band_axis} of {tuple(int(n) for n in cube.data.shape)}"
    if "interleave" in cube.provenance:
        layout += f", interleave {cube.provenance['interleave'].upper()}"
    if "band_axis_reason" in cube.provenance:
        layout += f" ({cube.provenance['band_axis_reason']})"
    if cube.wavelengths is not None and cube.wavelengths.size:
        wl = cube.wavelengths
        wavelength_text = f"{wl.min():.1f}-{wl.max():.1f} nm"
        if wl.size > 1:
            wavelength_text += f" (mean step {np.mean(np.abs(np.diff(wl))):.2f} nm)"
    else:
        wavelength_text = "unknown"
    lines = [
        f"path:        {cube.path}",
        f"format:      {cube.format}",
        f"shape:       {rows} rows x {cols} cols x {cube.n_bands} bands",
        f"dtype:       {cube.dtype.name} ({cube.dtype.str})",
        f"bands:       {cube.n_bands} on {layout}",
        f"wavelengths: {wavelength_text}",
        f"data size:   {_human_bytes(cube.nbytes)}",
        f"on disk:     {_human_bytes(_size_on_disk(cube))}",
    ]
    if "key" in cube.provenance:
        lines.insert(2, f"key:         {cube.provenance['key']}")
    return "\n".join(lines)


def _size_on_disk(cube: Cube) -> int:
    files = [Path(p) for p in cube.provenance.get("files", [])]
    if not files:
        files = [cube.path]
        if "data_file" in cube.provenance:
            files.append(Path(cube.provenance["data_file"]))
    return sum(f.stat().st_size for f in files if f.is_file())


def _human_bytes(n: int) -> str:
    if n < 1024:
        return f"{n} B"
    exponent = min(3, int(np.log2(n) // 10))
    return f"{n / 1024**exponent:.1f} {('KiB', 'MiB', 'GiB')[exponent - 1]} ({n} bytes)"
