"""Dataset-level normalisation statistics, gathered once by streaming over all cubes.

One per-band offset (mean) and scale (standard deviation) for the whole dataset, never per
crop or per cube: a material must get the same features in a scene full of leaves and in a
scene full of background. Each cube contributes an equal share of a pixel budget, read as a
few full-width row blocks spread over its height and subsampled, so only one block of one
cube and the small sample are in memory at a time. With ``brightness_norm`` the statistics are
those of brightness-normalised pixels
(each spectrum divided by its mean over the bands), matching :meth:`DGCModel.normalize_pixels`.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from napari_dgc.errors import CubeFormatError
from napari_dgc.training.sampling import SampledCube

#: Smallest scale relative to the median band scale; constant bands get this scale, so they
#: normalise to a constant instead of dividing by zero.
RELATIVE_SCALE_FLOOR = 1e-3

#: Brightness below this fraction of the dataset's median brightness is clamped before the
#: division, so near-black pixels (noise) are not blown up to full-scale spectra.
RELATIVE_BRIGHTNESS_FLOOR = 0.05


@dataclass(frozen=True)
class BandStatistics:
    """Per-band normalisation of a dataset.

    Attributes
    ----------
    offset, scale : numpy.ndarray
        ``(bands,)`` float64: normalised = (raw [/ brightness] - offset) / scale.
    brightness_floor : float
        Smallest brightness divided by (only used with brightness normalisation).
    n_pixels : int
        Pixels the statistics were computed from.
    constant_bands : numpy.ndarray
        Indices of bands that were constant over the sample.
    """

    offset: np.ndarray
    scale: np.ndarray
    brightness_floor: float
    n_pixels: int
    constant_bands: np.ndarray


def _sample_rows(source: SampledCube, budget: int, blocks: int) -> list[slice]:
    """Row blocks spread over the cube holding about ``budget`` pixels in total."""
    height, width = source.shape_hw
    rows_needed = max(1, min(height, int(np.ceil(budget / width))))
    blocks = max(1, min(blocks, rows_needed))
    block_rows = int(np.ceil(rows_needed / blocks))
    starts = np.linspace(0, height - block_rows, blocks).round().astype(int)
    return [slice(int(start), int(start) + block_rows) for start in np.unique(starts)]


def read_pixel_sample(sources: list[SampledCube], max_pixels: int, blocks_per_cube: int = 8) -> np.ndarray:
    """Raw pixels ``(N, bands)`` of every cube: an equal share of ``max_pixels`` each, read as
    ``blocks_per_cube`` full-width row blocks spread over its height and subsampled, one block
    in memory at a time.

    Raises
    ------
    CubeFormatError
        A sampled pixel is NaN / infinite (from :meth:`SampledCube.read_window`).
    """
    n_bands = sources[0].n_bands
    budget = max(1, max_pixels // len(sources))
    samples = []
    for source in sources:
        blocks = _sample_rows(source, budget, blocks_per_cube)
        per_block = max(1, budget // len(blocks))
        for rows in blocks:
            window = source.read_window(rows, slice(0, source.shape_hw[1])).reshape(-1, n_bands)
            samples.append(window[:: max(1, window.shape[0] // per_block)])
    return np.concatenate(samples)


def compute_band_statistics(
    sources: list[SampledCube], brightness_norm: bool, max_pixels: int = 50_000, blocks_per_cube: int = 8
) -> BandStatistics:
    """Stream a pixel sample of every cube and return the dataset's per-band statistics.

    Parameters
    ----------
    sources : list of SampledCube
        The dataset (all cubes with the same band count).
    brightness_norm : bool
        Compute the statistics of brightness-normalised pixels.
    max_pixels : int
        Pixel budget over the whole dataset (:func:`read_pixel_sample`).
    blocks_per_cube : int
        Row blocks read per cube.

    Returns
    -------
    BandStatistics

    Raises
    ------
    CubeFormatError
        A sampled pixel is NaN / infinite, or every band is constant over the dataset.
    """
    pixels = read_pixel_sample(sources, max_pixels, blocks_per_cube).astype(np.float64)
    brightness_floor = 0.0
    if brightness_norm:
        brightness = np.abs(pixels.mean(axis=1, keepdims=True))
        brightness_floor = max(float(np.median(brightness)) * RELATIVE_BRIGHTNESS_FLOOR, 1e-12)
        pixels /= np.maximum(brightness, brightness_floor)
    mean = pixels.mean(axis=0)
    std = pixels.std(axis=0)
    reference = float(np.median(std[std > 0])) if np.any(std > 0) else 0.0
    if reference <= 0:
        names = ", ".join(source.name for source in sources[:3])
        more = ", ..." if len(sources) > 3 else ""
        raise CubeFormatError(
            f"every band is constant over the dataset ({names}{more}): there is nothing to cluster"
        )
    floor = reference * RELATIVE_SCALE_FLOOR
    return BandStatistics(
        offset=mean,
        scale=np.maximum(std, floor),
        brightness_floor=brightness_floor,
        n_pixels=int(pixels.shape[0]),
        constant_bands=np.nonzero(std <= floor)[0],
    )
