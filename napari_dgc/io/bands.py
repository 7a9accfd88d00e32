"""Band bookkeeping shared by the format readers: wavelength units and the band axis."""

from __future__ import annotations

import re
from collections.abc import Sequence

import numpy as np

_MICROMETRE = {
    "micrometers",
    "micrometer",
    "micrometres",
    "micrometre",
    "microns",
    "micron",
    "um",
    "µm",
    "μm",
}
_NANOMETRE = {"nanometers", "nanometer", "nanometres", "nanometre", "nm"}
_WAVENUMBER = {"wavenumber", "wavenumbers", "cm-1", "cm^-1", "1/cm"}
_UNKNOWN = {"", "unknown", "none"}

# Values all below this are taken as micrometres when the unit is not stated (no imaging
# spectrometer measures below 30 nm; 30 µm is far beyond thermal infrared).
_MICROMETRE_GUESS_LIMIT = 30.0

_WAVELENGTH_IN_NAME = re.compile(r"(\d+(?:\.\d+)?)\s*nm", re.IGNORECASE)


def to_nanometres(values: Sequence[float] | np.ndarray, unit: str | None) -> tuple[np.ndarray | None, str]:
    """Convert band centres to nanometres.

    Parameters
    ----------
    values : sequence of float
        Band centres as given by the file.
    unit : str or None
        The file's unit ("Nanometers", "Micrometers", "um", "µm", "wavenumber", ...).
        Missing or "Unknown": values all below 30 are taken as micrometres, others as nm.
        Anything that is not a string (a list from a malformed file) is not a wavelength unit.

    Returns
    -------
    wavelengths : numpy.ndarray or None
        float64 nm, or ``None`` when the unit is not a wavelength (e.g. "Index").
    note : str
        How the unit was interpreted (for provenance).
    """
    array = np.asarray(values, dtype=np.float64).reshape(-1)
    if unit is not None and not isinstance(unit, str):
        # Files are untrusted: an ENVI "{...}" list or a JSON list/number is not a unit.
        return (
            None,
            f"a {type(unit).__name__} given as the unit is not a wavelength unit: wavelengths ignored",
        )
    key = (unit or "").strip().lower()
    if key in _NANOMETRE:
        return array, f"unit {unit!r}: nm"
    if key in _MICROMETRE:
        return array * 1000.0, f"unit {unit!r}: micrometres, multiplied by 1000"
    if key in _WAVENUMBER:
        if np.any(array <= 0):
            return None, f"unit {unit!r} with non-positive values: wavelengths ignored"
        return 1e7 / array, f"unit {unit!r}: wavenumbers (cm^-1), converted to nm as 1e7 / value"
    if key in _UNKNOWN:
        if array.size and np.nanmax(array) < _MICROMETRE_GUESS_LIMIT:
            return array * 1000.0, "no unit stated; values below 30 taken as micrometres"
        return array, "no unit stated; values taken as nm"
    return None, f"unit {unit!r} is not a wavelength unit: wavelengths ignored"


def wavelength_in_name(name: str) -> float | None:
    """Return the wavelength written in a file name such as ``coffee_1293nm.png``, or None."""
    matches = _WAVELENGTH_IN_NAME.findall(name)
    return float(matches[-1]) if matches else None


def choose_band_axis(shape: Sequence[int], n_wavelengths: int | None) -> tuple[int, str]:
    """Decide which axis of a 3-D array holds the bands.

    The axis whose length equals the number of wavelengths wins (the last one on a tie);
    without a usable wavelength vector the shortest axis wins (the last one on a tie), since
    imaged scenes are normally larger than their band count.

    Returns
    -------
    axis : int
        The band axis.
    reason : str
        One sentence for provenance and ``napari-dgc info``.
    """
    if n_wavelengths:
        matching = [axis for axis, n in enumerate(shape) if n == n_wavelengths]
        if matching:
            axis = matching[-1]
            return axis, f"axis {axis} has the wavelength vector's length {n_wavelengths}"
    smallest = min(shape)
    axis = max(a for a, n in enumerate(shape) if n == smallest)
    return axis, f"axis {axis} is the shortest axis ({smallest}); no wavelength vector decided it"
