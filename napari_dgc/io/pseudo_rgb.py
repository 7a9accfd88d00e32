"""Pseudo-RGB previews of hyperspectral cubes, reading only three bands.

Bands nearest 640 / 550 / 460 nm become red / green / blue when the cube covers those
wavelengths. Otherwise (NIR-only cameras, unknown wavelengths) three bands at 90 %, 50 % and
10 % of the band range are used, longest wavelength as red, so the preview still shows
contrast. Each channel is stretched between robust percentiles computed on a subsample.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_dgc.io.cube import Cube

DEFAULT_TARGETS_NM = (640.0, 550.0, 460.0)
# Fractions of the band range used when the targets are not covered (red, green, blue).
FALLBACK_POSITIONS = (0.9, 0.5, 0.1)
# A target this far outside the covered wavelengths still counts as covered (edge bands).
_COVER_TOLERANCE_NM = 10.0
# Percentiles are computed on at most this many pixels per channel (a regular subsample).
_MAX_PERCENTILE_SAMPLES = 250_000


@dataclass(frozen=True)
class RGBBands:
    """The three bands chosen for a pseudo-RGB and why.

    Attributes
    ----------
    indices : tuple of int
        Band indices used as red, green, blue.
    wavelengths : tuple of float or None
        Their wavelengths in nm (None when the cube has none).
    method : str
        ``"nearest"`` (bands nearest the targets) or ``"spread"`` (the fallback).
    """

    indices: tuple[int, int, int]
    wavelengths: tuple[float, float, float] | None
    method: str


def choose_rgb_bands(
    wavelengths: np.ndarray | None, n_bands: int, targets_nm: Sequence[float] = DEFAULT_TARGETS_NM
) -> RGBBands:
    """Pick the red, green and blue bands of a cube.

    Parameters
    ----------
    wavelengths : numpy.ndarray or None
        Band centres in nm.
    n_bands : int
        Number of bands.
    targets_nm : sequence of 3 float
        Wavelengths to show as red, green, blue.

    Returns
    -------
    RGBBands
    """
    if len(targets_nm) != 3:
        raise ValueError(f"targets_nm needs 3 wavelengths (red, green, blue), got {len(targets_nm)}")
    if wavelengths is not None and len(wavelengths) == n_bands and n_bands:
        wl = np.asarray(wavelengths, dtype=np.float64)
        low, high = np.nanmin(wl) - _COVER_TOLERANCE_NM, np.nanmax(wl) + _COVER_TOLERANCE_NM
        if all(low <= t <= high for t in targets_nm):
            indices = tuple(int(np.nanargmin(np.abs(wl - t))) for t in targets_nm)
            return RGBBands(indices, tuple(float(wl[i]) for i in indices), "nearest")
        by_wavelength = np.argsort(wl, kind="stable")
        indices = tuple(int(by_wavelength[round(p * (n_bands - 1))]) for p in FALLBACK_POSITIONS)
        return RGBBands(indices, tuple(float(wl[i]) for i in indices), "spread")
    indices = tuple(int(round(p * (n_bands - 1))) for p in FALLBACK_POSITIONS)
    return RGBBands(indices, None, "spread")


def stretch_channels(bands: np.ndarray, percentiles: tuple[float, float] = (1, 99)) -> np.ndarray:
    """Stretch each of three ``(3, rows, cols)`` bands to [0, 1] between robust percentiles.

    Percentiles ignore NaN and infinite values and are computed on a regular subsample of at
    most 250 000 pixels. Non-finite pixels become 0; a constant channel becomes 0.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols, 3)`` float32 in [0, 1].
    """
    low_pct, high_pct = percentiles
    if not 0 <= low_pct < high_pct <= 100:
        raise ValueError(f"percentiles must satisfy 0 <= low < high <= 100, got {percentiles}")
    channels, rows, cols = bands.shape
    step = max(1, int(np.ceil(np.sqrt(rows * cols / _MAX_PERCENTILE_SAMPLES))))
    rgb = np.zeros((rows, cols, channels), dtype=np.float32)
    for c in range(channels):
        band = bands[c]
        sample = band[::step, ::step]
        sample = sample[np.isfinite(sample)]
        if sample.size == 0:
            continue
        low, high = np.percentile(sample, [low_pct, high_pct])
        if high <= low:
            continue
        with np.errstate(invalid="ignore"):
            scaled = np.clip((band - np.float32(low)) / np.float32(high - low), 0.0, 1.0)
        rgb[..., c] = np.where(np.isfinite(band), scaled, 0.0)
    return rgb


def pseudo_rgb(
    cube: Cube,
    targets_nm: Sequence[float] = DEFAULT_TARGETS_NM,
    percentiles: tuple[float, float] = (1, 99),
) -> np.ndarray:
    """Make a pseudo-RGB image of a cube, reading only the three chosen bands.

    Parameters
    ----------
    cube : Cube
        The cube.
    targets_nm : sequence of 3 float
        Wavelengths shown as red, green, blue (see :func:`choose_rgb_bands` for the fallback).
    percentiles : (float, float)
        Lower and upper percentile mapped to 0 and 1 in each channel.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols, 3)`` float32 in [0, 1].
    """
    choice = choose_rgb_bands(cube.wavelengths, cube.n_bands, targets_nm)
    return stretch_channels(cube.read_bands(choice.indices), percentiles)
