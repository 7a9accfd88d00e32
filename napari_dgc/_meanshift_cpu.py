"""Compiled forward-only mean-shift for CPU inference (segmentation, evaluation).

The PyTorch inference path (:func:`napari_dgc._meanshift._mean_shift_inference`) spends an
iteration in ~50 separate element-wise passes over the embeddings (a product and a sum per
neighbour offset, a multiply-add per neighbour); each pass is cheap arithmetic on data that has
to come back from the cache, so it runs at a few GFLOP/s. Here one loop nest does a whole
iteration pixel by pixel: the dot product with a neighbour, its Gaussian weight and both
multiply-adds happen while the two ``D``-vectors are in registers.

Every pair of pixels ``p, q = p + o`` in a window has one dot product ``z_p . z_q``, used for
the weight of ``q`` in the mean of ``p`` and the weight of ``p`` in the mean of ``q``. The loop
visits each pair once (the offsets after the centre in row-major order) and adds to both means,
so it computes half the dot products a per-pixel gather would. Pixels are visited in a fixed
order, so the result does not depend on the caller's threads.

Numba compiles the kernel on first use (about a second; the machine code is cached on disk
when the package folder or the user's cache folder is writable) and releases the GIL while it
runs, so tiles on several threads run in parallel.
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

    Same iteration as :func:`napari_dgc._meanshift._mean_shift_inference` (unnormalised
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
