"""npe2 reader: open a hyperspectral cube as a band-first Image layer plus a pseudo-RGB layer."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np

from napari_dgc import layer_metadata as layer_keys
from napari_dgc.errors import CubeFormatError, UnsupportedFormatError
from napari_dgc.io import Cube, format_for_path, open_cube
from napari_dgc.io.pseudo_rgb import choose_rgb_bands, stretch_channels

LayerDataTuple = tuple
ReaderFunction = Callable[[str | Sequence[str]], list[LayerDataTuple]]


def napari_get_reader(path: str | Sequence[str]) -> ReaderFunction | None:
    """Return a reader for ``path`` if it is a cube napari-dgc reads, else None (npe2 contract).

    A file napari-dgc does not handle (a plain RGB image, a 2-D TIFF, a 2-D ``.npy``, a folder
    without wavelength-named PNGs) is declined so other readers can try. A broken file of a
    handled format is accepted and its reader raises the :class:`CubeFormatError`, which
    napari shows as a notification.
    """
    if not isinstance(path, (str, Path)):
        if len(path) != 1:
            return None
        path = path[0]
    if format_for_path(path) is None:
        return None
    try:
        cube = open_cube(path)
    except UnsupportedFormatError:
        return None
    except CubeFormatError as error:
        return _raising_reader(error)
    return lambda _path: cube_layer_data(cube)


def _raising_reader(error: CubeFormatError) -> ReaderFunction:
    def read(_path: str | Sequence[str]) -> list[LayerDataTuple]:
        raise error

    return read


def cube_layer_data(cube: Cube, name: str | None = None) -> list[LayerDataTuple]:
    """Layer data tuples for a cube: the lazy band-first cube and its pseudo-RGB.

    Parameters
    ----------
    cube : Cube
        An opened cube.
    name : str, optional
        Layer name of the cube (default: the file or folder name without extension).

    Returns
    -------
    list of tuple
        ``[(cube_data, cube_kwargs, "image"), (rgb, rgb_kwargs, "image")]``. The cube layer is
        ``(bands, rows, cols)``, lazy, hidden, with ``metadata`` keys ``wavelengths`` (list of
        nm or None), ``dgc_cube_path``, ``dgc_band_axis`` (0), ``dgc_format`` and
        ``dgc_provenance``. The pseudo-RGB layer is named ``"{name} (pseudo-RGB)"`` and its
        metadata has ``dgc_cube_layer`` (the cube layer's name), ``dgc_cube_path`` and the
        chosen bands (``dgc_rgb_bands``, ``dgc_rgb_wavelengths``, ``dgc_rgb_method``).
    """
    if name is None:
        name = cube.path.name if cube.path.is_dir() else cube.path.stem
    wavelengths = None if cube.wavelengths is None else [float(w) for w in cube.wavelengths]
    choice = choose_rgb_bands(cube.wavelengths, cube.n_bands)
    middle = cube.n_bands // 2
    bands = cube.read_bands(list(choice.indices) + [middle])
    cube_kwargs = {
        "name": name,
        "visible": False,
        # napari's band slider is labelled "band" (not "-3"); the panels show its wavelength.
        "axis_labels": ("band", "y", "x"),
        "contrast_limits": _contrast_limits(bands[3]),
        "metadata": {
            "wavelengths": wavelengths,
            layer_keys.CUBE_PATH: str(cube.path),
            layer_keys.BAND_AXIS: 0,
            layer_keys.FORMAT: cube.format,
            layer_keys.PROVENANCE: cube.provenance,
        },
    }
    rgb_kwargs = {
        "name": f"{name} (pseudo-RGB)",
        "rgb": True,
        "metadata": {
            layer_keys.CUBE_LAYER: name,
            layer_keys.CUBE_PATH: str(cube.path),
            layer_keys.RGB_BANDS: list(choice.indices),
            layer_keys.RGB_WAVELENGTHS: None if choice.wavelengths is None else list(choice.wavelengths),
            layer_keys.RGB_METHOD: choice.method,
        },
    }
    return [
        (cube.bands_first(), cube_kwargs, "image"),
        (stretch_channels(bands[:3]), rgb_kwargs, "image"),
    ]


def _contrast_limits(band: np.ndarray) -> tuple[float, float]:
    # Given explicitly so napari does not scan a lazy cube to find its value range.
    finite = band[np.isfinite(band)]
    if finite.size == 0:
        return (0.0, 1.0)
    low, high = (float(v) for v in np.percentile(finite, [0.5, 99.5]))
    return (low, high) if high > low else (low, low + 1.0)
