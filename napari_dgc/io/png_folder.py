"""A folder of one grayscale PNG per band, wavelength in each file name (``coffee_1293nm.png``)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from napari_dgc.errors import CubeFormatError, UnsupportedFormatError
from napari_dgc.io.bands import wavelength_in_name
from napari_dgc.io.cube import Cube
from napari_dgc.io.lazy import BandStack

# PIL modes of single-channel images and the dtype their pixels have.
_GRAYSCALE_MODES = {"L": np.uint8, "I;16": np.uint16, "I;16B": np.uint16, "I": np.int32, "F": np.float32}


def open_png_folder(folder: Path) -> Cube:
    """Open a folder of band PNGs as a lazy cube ``(bands, rows, cols)``, sorted by wavelength.

    Only PNGs whose names carry a wavelength in nm are used (others, such as a preview
    image, are ignored and listed in the provenance). Opening reads the PNG headers only.

    Raises
    ------
    UnsupportedFormatError
        No PNG in the folder has a wavelength in its name.
    CubeFormatError
        Unreadable PNG, colour PNGs, bands of different sizes or types, repeated wavelengths,
        or a PNG whose header claims more pixels than Pillow's decompression-bomb limit.
    """
    from PIL import Image, UnidentifiedImageError

    # A PNG header can claim 10^10 pixels in a few bytes; Pillow refuses such files when it
    # opens them, and the refusal becomes a one-line error naming the file.
    unreadable = (UnidentifiedImageError, OSError, Image.DecompressionBombError, ValueError)

    pngs = sorted(p for p in folder.iterdir() if p.suffix.lower() == ".png" and p.is_file())
    bands = [(wavelength_in_name(p.stem), p) for p in pngs]
    ignored = [p.name for w, p in bands if w is None]
    bands = sorted((w, p) for w, p in bands if w is not None)
    if len(bands) < 2:
        raise UnsupportedFormatError(
            f"{folder}: not a band folder (needs at least two PNGs named with their wavelength, "
            "like scene_1293nm.png)"
        )
    wavelengths = np.array([w for w, _ in bands])
    repeated = wavelengths[1:][np.diff(wavelengths) == 0]
    if repeated.size:
        raise CubeFormatError(f"{folder}: more than one PNG for wavelength {repeated[0]:g} nm")

    headers = []
    for _, png in bands:
        try:
            with Image.open(png) as image:
                headers.append((image.mode, image.size))
        except unreadable as error:
            raise CubeFormatError(f"{png}: not a readable PNG ({error})") from error
    mode, (width, height) = headers[0]
    for (band_mode, size), (_, png) in zip(headers, bands):
        if band_mode not in _GRAYSCALE_MODES:
            raise CubeFormatError(f"{png}: a {band_mode} (colour) PNG; band images must be grayscale")
        if (band_mode, size) != (mode, (width, height)):
            raise CubeFormatError(
                f"{png}: {band_mode} {size[0]}x{size[1]} differs from the first band "
                f"{bands[0][1].name} ({mode} {width}x{height})"
            )
    files = [png for _, png in bands]

    def read_band(index: int) -> np.ndarray:
        try:
            with Image.open(files[index]) as image:
                return np.asarray(image)
        except unreadable as error:
            raise CubeFormatError(f"{files[index]}: cannot be decoded ({error})") from error

    data = BandStack(len(files), (height, width), _GRAYSCALE_MODES[mode], read_band)
    provenance = {"files": [str(f) for f in files], "png_mode": mode, "ignored_files": ignored}
    return Cube(
        data=data,
        band_axis=0,
        wavelengths=wavelengths,
        path=folder,
        format="png-folder",
        provenance=provenance,
    )
