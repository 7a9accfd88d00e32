"""Multi-page TIFF cubes (one page per band) and single-page multi-sample TIFFs."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np

from napari_dgc.errors import CubeFormatError, UnsupportedFormatError
from napari_dgc.io.cube import Cube
from napari_dgc.io.lazy import BandStack, Deferred

_PHOTOMETRIC_RGB = 2


def open_tiff(path: Path, *, band_axis: int | None = None) -> Cube:
    """Open a 3-D TIFF as a cube: memory-mapped when uncompressed, else read page by page.

    The band axis is the sample axis of a single-page ``(rows, cols, samples)`` TIFF and the
    page axis of a multi-page TIFF, unless ``band_axis`` says otherwise. TIFF has no standard
    place for wavelengths, so the cube has none.

    Raises
    ------
    UnsupportedFormatError
        A 2-D image, an RGB(A) picture, or more than 3 dimensions (declined by the reader).
    CubeFormatError
        Not a readable TIFF, pages of different sizes (which would silently drop bands), a
        file shorter than its pages' data, or a data type that is not integer or float.
    """
    import tifffile

    try:
        tif = tifffile.TiffFile(path)
        all_series = list(tif.series)
        series = all_series[0]
        shape, axes = tuple(series.shape), series.axes
        photometric = int(series.pages[0].photometric)
    except (tifffile.TiffFileError, ValueError, IndexError, EOFError, KeyError) as error:
        raise CubeFormatError(f"{path}: not a readable TIFF file ({error})") from error
    if len(all_series) > 1:
        # tifffile splits pages of different sizes or types into separate series; reading
        # only the first would silently drop the others' bands.
        tif.close()
        shapes = ", ".join("x".join(map(str, s.shape)) for s in all_series[:4])
        more = ", ..." if len(all_series) > 4 else ""
        raise CubeFormatError(
            f"{path}: its pages differ in size or type ({len(all_series)} groups: {shapes}{more}); "
            "a cube needs every band page alike"
        )
    if len(shape) != 3:
        tif.close()
        raise UnsupportedFormatError(
            f"{path}: a {len(shape)}-D TIFF of shape {shape} (axes {axes}); a cube needs 3 axes"
        )
    if axes.endswith("S") and photometric == _PHOTOMETRIC_RGB and shape[-1] in (3, 4):
        tif.close()
        raise UnsupportedFormatError(f"{path}: an RGB picture, not a hyperspectral cube")
    dtype = np.dtype(tif.byteorder + series.dtype.char)
    if not (np.issubdtype(dtype, np.integer) or np.issubdtype(dtype, np.floating)):
        tif.close()
        raise CubeFormatError(f"{path}: unsupported TIFF data type {dtype}")

    provenance = {"axes": axes, "dtype": dtype.str, "pages": len(tif.pages)}
    if series.dataoffset is not None:
        needed = series.dataoffset + int(np.prod(shape, dtype=object)) * dtype.itemsize
        size = path.stat().st_size
        if needed > size:
            tif.close()
            raise CubeFormatError(
                f"{path}: the TIFF is truncated (its pages' data end at byte {needed}, the file has {size})"
            )
        data = np.memmap(path, dtype=dtype, mode="r", offset=series.dataoffset, shape=shape)
        provenance["storage"] = "contiguous, memory-mapped"
        tif.close()
    elif len(series.pages) == shape[0]:
        pages = series.pages
        data = BandStack(shape[0], shape[1:], dtype, lambda i: _decode(path, lambda: pages[i].asarray()))
        provenance["storage"] = "compressed or scattered pages, read one page at a time"
    else:
        # Decoded on first read, so opening (and ``info``) reads headers only.
        data = Deferred(shape, dtype, lambda: _decode(path, series.asarray))
        provenance["storage"] = "compressed single page, read into memory when first used"
    default_axis = 2 if axes.endswith("S") else 0
    provenance["band_axis_reason"] = (
        "given by the caller"
        if band_axis is not None
        else ("samples of a single page" if default_axis == 2 else "one page per band")
    )
    return Cube(
        data=data,
        band_axis=default_axis if band_axis is None else band_axis,
        wavelengths=None,
        path=path,
        format="tiff",
        provenance=provenance,
    )


def _decode(path: Path, read: Callable[[], np.ndarray]) -> np.ndarray:
    """Run a tifffile read, turning its errors on a broken file into one naming the file."""
    try:
        return read()
    except (ValueError, IndexError, EOFError, KeyError, OSError) as error:  # TiffFileError is a ValueError
        raise CubeFormatError(f"{path}: a TIFF page cannot be decoded ({error})") from error
