"""Compiled CPU kernels of the forward-only (inference) path: segmentation and evaluation.

Numba compiles each kernel on first use (a few seconds; the machine code is cached on disk
when the package folder or the user's cache folder is writable) and releases the GIL while it
runs, so tiles on several threads run in parallel. Each kernel visits pixels in a fixed order,
so its result does not depend on the caller's threads. Training keeps PyTorch's operations,
which it needs for gradients.

**Mean-shift** (:func:`mean_shift_cpu`). The PyTorch inference path
(:func:`napari_dgc.model.meanshift._mean_shift_inference`) spends an iteration in ~50 separate
element-wise passes over the embeddings (a product and a sum per neighbour offset, a
multiply-add per neighbour); each is cheap arithmetic on data that has to come back from the
cache. Here one loop nest does a whole iteration pixel by pixel: the dot product with a
neighbour, its Gaussian weight and both multiply-adds happen while the two ``D``-vectors are
at hand. Every pair of pixels ``p, q = p + o`` in a window has one dot product
``z_p . z_q``, used for the weight of ``q`` in the mean of ``p`` and of ``p`` in the mean of
``q``: the loop visits each pair once (the offsets after the centre in row-major order) and
adds to both means, half the dot products of a per-pixel gather.

**Spectral input** (:func:`spectral_input_cpu`). The model's first step is one matrix product
of every raw spectrum with a ``(bands, bins)`` matrix (normalisation and box resampling folded
together, :meth:`napari_dgc.model.network.DGCModel.spectral_input`). A box bin averages ~``bands /
bins`` neighbouring bands, so each column's non-zeros are one short run of rows: the kernel
multiplies only those runs, ~1 multiply-add per band instead of ``bins``.
"""

from __future__ import annotations

import math

import numba
import numpy as np

#: Floating-point licences for the compiler: re-association lets it vectorise the dot product
#: over the embedding (the sums are then taken in another order, a rounding difference) and
#: contraction fuses multiply-adds. No-NaN/no-Inf assumptions are *not* given: a NaN input
#: must stay visible.
_FASTMATH = {"reassoc", "contract", "nsz"}

#: Smallest norm a mean is divided by (as ``F.normalize``'s ``eps``).
_NORM_EPS = np.float32(1e-12)


@numba.njit(nogil=True, cache=True, fastmath=_FASTMATH)
def _iterate(
    embeddings: np.ndarray,
    valid: np.ndarray,
    inv_bw_sq: np.float32,
    radius: int,
    iterations: int,
) -> np.ndarray:  # pragma: no cover - compiled; tested through mean_shift_cpu
    height, width, dim = embeddings.shape
    masked = valid.shape[0] > 0
    source = embeddings.copy()
    target = np.empty_like(source)
    for _ in range(iterations):
        target[:] = source  # every pixel's own weight is exp((z.z - 1) / h^2) = 1
        for y in range(height):
            for x in range(width):
                # 1D views: the loops over the embedding then vectorise.
                source_p, target_p = source[y, x], target[y, x]
                valid_p = valid[y, x] if masked else np.float32(1.0)
                for dy in range(radius + 1):
                    qy = y + dy
                    if qy >= height:
                        break
                    for dx in range(-radius, radius + 1):
                        qx = x + dx
                        if (dy == 0 and dx <= 0) or qx < 0 or qx >= width:
                            continue  # not after p in row-major order, or a zero vector
                        source_q, target_q = source[qy, qx], target[qy, qx]
                        dot = np.float32(0.0)
                        for c in range(dim):
                            dot += source_p[c] * source_q[c]
                        weight = np.float32(math.exp((dot - np.float32(1.0)) * inv_bw_sq))
                        weight_of_q = weight * valid[qy, qx] if masked else weight
                        weight_of_p = weight * valid_p
                        for c in range(dim):
                            target_p[c] += weight_of_q * source_q[c]
                        for c in range(dim):
                            target_q[c] += weight_of_p * source_p[c]
        for y in range(height):
            for x in range(width):
                mean = target[y, x]
                norm = np.float32(0.0)
                for c in range(dim):
                    norm += mean[c] * mean[c]
                scale = np.float32(1.0) / max(np.float32(math.sqrt(norm)), _NORM_EPS)
                for c in range(dim):
                    mean[c] *= scale
        source, target = target, source
    return source


def mean_shift_cpu(
    embeddings: np.ndarray,
    inv_bw_sq: float,
    radius: int,
    iterations: int,
    valid: np.ndarray | None = None,
) -> np.ndarray:
    """Run mean-shift iterations on one image of channels-last unit embeddings.

    Same iteration as :func:`napari_dgc.model.meanshift._mean_shift_inference` (unnormalised
    Gaussian weights ``exp((z_p . z_q - 1) / h^2)``, the centre's weight 1, the mean rescaled
    to unit length), equal up to float rounding.

    Parameters
    ----------
    embeddings : np.ndarray
        ``(H, W, D)`` float32 unit vectors, C-contiguous.
    inv_bw_sq : float
        ``1 / h^2`` for the bandwidth ``h``.
    radius : int
        Window radius ``r``: neighbours within ``r`` pixels along both axes.
    iterations : int
        Number of iterations.
    valid : np.ndarray, optional
        ``(H, W)`` float32 1/0 mask of pixels inside the image: an invalid neighbour gets
        weight zero (a pixel always keeps its own). None: every pixel is inside.

    Returns
    -------
    np.ndarray
        ``(H, W, D)`` float32, a new array.
    """
    mask = np.empty((0, 0), np.float32) if valid is None else valid
    return _iterate(embeddings, mask, np.float32(inv_bw_sq), radius, iterations)


#: Bands a bin's window advances by: one AVX-512 vector of float32, so the compiler turns each
#: step of a window's dot product into one vector multiply-add.
WINDOW_STEP = 16


@numba.njit(nogil=True, cache=True, fastmath=_FASTMATH)
def _windowed_product(
    raw: np.ndarray,
    window_starts: np.ndarray,
    window_weights: np.ndarray,
    offset: np.ndarray,
    brightness_floor: np.float32,
    brightness_norm: bool,
) -> np.ndarray:  # pragma: no cover - compiled; tested through spectral_input_cpu
    n_pixels, n_bands = raw.shape
    n_bins, width = window_weights.shape
    out = np.empty((n_pixels, n_bins), np.float32)
    inverse_bands = np.float32(1.0 / n_bands)
    for p in range(n_pixels):
        spectrum, row = raw[p], out[p]
        for j in range(n_bins):
            start, weights = window_starts[j], window_weights[j]
            total = np.float32(0.0)
            for step in range(0, width, WINDOW_STEP):
                for i in range(WINDOW_STEP):  # a literal trip count: one vector operation
                    total += spectrum[start + step + i] * weights[step + i]
            row[j] = total
        if brightness_norm:
            band_sum = np.float32(0.0)
            for i in range(n_bands):
                band_sum += spectrum[i]
            brightness = max(abs(band_sum * inverse_bands), brightness_floor)
            for j in range(n_bins):
                row[j] = row[j] / brightness - offset[j]
        else:
            for j in range(n_bins):
                row[j] -= offset[j]
    return out


def bin_windows(matrix: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Each column's non-zero rows as one window of a common width, for :func:`spectral_input_cpu`.

    Returns ``(starts, weights)``: ``weights[j]`` are ``matrix[starts[j] : starts[j] + width, j]``,
    ``width`` the longest run from a column's first to its last non-zero rounded up to
    :data:`WINDOW_STEP`, every window inside the matrix; None when ``width`` exceeds the rows
    (too few bands for the kernel to pay).
    """
    n_rows = matrix.shape[0]
    nonzero = matrix != 0
    has_rows = nonzero.any(axis=0)
    first = np.where(has_rows, nonzero.argmax(axis=0), 0)
    stop = np.where(has_rows, n_rows - nonzero[::-1].argmax(axis=0), 0)
    width = -(-max(1, int((stop - first).max())) // WINDOW_STEP) * WINDOW_STEP
    if width > n_rows:
        return None
    starts = np.minimum(first, n_rows - width).astype(np.int64)  # the window may reach back
    weights = np.stack([matrix[start : start + width, column] for column, start in enumerate(starts)])
    return starts, np.ascontiguousarray(weights, dtype=np.float32)


def spectral_input_cpu(
    raw: np.ndarray,
    windows: tuple[np.ndarray, np.ndarray],
    offset: np.ndarray,
    brightness_floor: float,
    brightness_norm: bool,
) -> np.ndarray:
    """``raw @ matrix`` (divided by each pixel's brightness), minus ``offset``, by bin windows.

    Equals :meth:`napari_dgc.model.network.DGCModel.spectral_input`'s matrix product up to float
    rounding: with ``brightness_norm`` each row is divided by
    ``max(|mean(raw row)|, brightness_floor)`` before ``offset`` is subtracted.

    Parameters
    ----------
    raw : np.ndarray
        ``(P, bands)`` float32 spectra, C-contiguous.
    windows : (np.ndarray, np.ndarray)
        :func:`bin_windows` of the ``(bands, bins)`` matrix.
    offset : np.ndarray
        ``(bins,)`` float32 subtracted at the end.
    brightness_floor : float
        Smallest brightness divided by.
    brightness_norm : bool
        Divide by the brightness (the per-pixel mean over the bands) first.

    Returns
    -------
    np.ndarray
        ``(P, bins)`` float32.
    """
    starts, weights = windows
    return _windowed_product(
        raw, starts, weights, offset.astype(np.float32), np.float32(brightness_floor), bool(brightness_norm)
    )
