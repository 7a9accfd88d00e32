"""Segment whole cubes of any size tile by tile, streaming from the (memory-mapped) cube.

Each tile is read together with a *halo* of ``model.receptive_radius`` pixels on every side that
lies inside the image, run through the model, and only its interior is kept. Every layer of the
model is local (convolutions, windowed mean-shift) and treats pixels outside its input as the
whole-image pass treats pixels outside the image, so:

* an interior pixel of a tile sees exactly the context it sees in a whole-image pass, because
  the halo covers its receptive field;
* a pixel near the *image* border sees the same padding, because the tile's window stops at the
  image border exactly as the whole image does.

Hence the tiled labels equal the whole-cube labels (see ``tests/test_segmentation.py``), while
memory is bounded by one tile whatever the cube size: the only full-size arrays are the
outputs (labels 4 bytes per pixel; probabilities ``4 K`` and embeddings ``4 D`` bytes per pixel
when asked for).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Iterator

import numpy as np

from napari_dgc.errors import ConfigError

if TYPE_CHECKING:
    from napari_dgc.io import Cube
    from napari_dgc.model import DGCModel

ProgressCallback = Callable[[int, int], None]


@dataclass
class Segmentation:
    """Result of :func:`segment_cube`.

    Attributes
    ----------
    labels : np.ndarray
        ``(rows, cols)`` int32 cluster ids ``0..K-1`` (nearest centroid).
    probabilities : np.ndarray or None
        ``(K, rows, cols)`` float32 soft assignments, when asked for.
    embeddings : np.ndarray or None
        ``(D, rows, cols)`` float32 unit-norm pixel embeddings after mean-shift, when asked for.
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    embeddings: np.ndarray | None = None


def tile_windows(
    shape_hw: tuple[int, int], tile: int, halo: int
) -> Iterator[tuple[slice, slice, slice, slice]]:
    """Yield the tiles covering an image, row by row.

    Parameters
    ----------
    shape_hw : (int, int)
        Image ``(rows, cols)``.
    tile : int
        Side of a tile's interior (the kept part).
    halo : int
        Context added on each side, clipped to the image.

    Yields
    ------
    (rows, cols, inner_rows, inner_cols) : tuple of slice
        ``rows``/``cols``: the window to read (tile plus halo) in image coordinates;
        ``inner_rows``/``inner_cols``: the tile interior in the window's coordinates.
    """
    n_rows, n_cols = shape_hw
    for top in range(0, n_rows, tile):
        bottom = min(top + tile, n_rows)
        read_top, read_bottom = max(top - halo, 0), min(bottom + halo, n_rows)
        for left in range(0, n_cols, tile):
            right = min(left + tile, n_cols)
            read_left, read_right = max(left - halo, 0), min(right + halo, n_cols)
            yield (
                slice(read_top, read_bottom),
                slice(read_left, read_right),
                slice(top - read_top, bottom - read_top),
                slice(left - read_left, right - read_left),
            )


def segment_cube(
    model: "DGCModel",
    cube: "Cube | np.ndarray",
    *,
    tile: int = 256,
    return_probabilities: bool = False,
    return_embeddings: bool = False,
    device: str = "cpu",
    progress: ProgressCallback | None = None,
) -> Segmentation:
    """Segment a whole cube by tiles with a halo of the model's receptive radius.

    Parameters
    ----------
    model : DGCModel
        Trained model; it is run in evaluation mode (and left in the mode it came in).
    cube : Cube or np.ndarray
        A :class:`~napari_dgc.io.Cube` (read window by window) or a band-last
        ``(rows, cols, bands)`` array.
    tile : int
        Side of the tile interior in pixels. The result does not depend on it; larger tiles
        waste less on halos, smaller ones need less memory.
    return_probabilities, return_embeddings : bool
        Also return the soft assignments ``(K, rows, cols)`` / embeddings ``(D, rows, cols)``.
    device : str
        Torch device to run the model on.
    progress : callable, optional
        Called as ``progress(done_tiles, total_tiles)`` after each tile.

    Returns
    -------
    Segmentation

    Raises
    ------
    ConfigError
        If ``tile`` is not positive or the cube's band count differs from the model's.
    """
    import torch

    if tile < 1:
        raise ConfigError(f"the tile size must be a positive number of pixels, got {tile}")
    read_window, shape_hw, n_bands, source = _window_reader(cube)
    if n_bands != model.n_bands:
        raise ConfigError(
            f"{source}: the cube has {n_bands} bands, the model was trained on {model.n_bands}"
        )
    n_rows, n_cols = shape_hw
    labels = np.empty(shape_hw, dtype=np.int32)
    probabilities = (
        np.empty((model.config.n_clusters, n_rows, n_cols), np.float32)
        if return_probabilities
        else None
    )
    embeddings = (
        np.empty((model.config.embed_dim, n_rows, n_cols), np.float32)
        if return_embeddings
        else None
    )
    windows = list(tile_windows(shape_hw, tile, model.receptive_radius))
    was_training = model.training
    model.eval()
    try:
        with torch.inference_mode():
            for done, (rows, cols, inner_rows, inner_cols) in enumerate(windows, start=1):
                window = torch.from_numpy(read_window(rows, cols)).to(device)
                # A band-last view, not a copy: the model flattens it back to pixels for free.
                pixels = window.permute(2, 0, 1).unsqueeze(0)
                embedded = model.embed(pixels)
                soft = model.assign(embedded)
                target = (slice(rows.start + inner_rows.start, rows.start + inner_rows.stop),
                          slice(cols.start + inner_cols.start, cols.start + inner_cols.stop))
                labels[target] = soft[0, :, inner_rows, inner_cols].argmax(dim=0).cpu().numpy()
                if probabilities is not None:
                    probabilities[(slice(None), *target)] = (
                        soft[0, :, inner_rows, inner_cols].cpu().numpy()
                    )
                if embeddings is not None:
                    embeddings[(slice(None), *target)] = (
                        embedded[0, :, inner_rows, inner_cols].cpu().numpy()
                    )
                if progress is not None:
                    progress(done, len(windows))
    finally:
        model.train(was_training)
    return Segmentation(labels, probabilities, embeddings)


def segment_array(model: "DGCModel", array: np.ndarray, **options) -> Segmentation:
    """Segment an in-memory band-last ``(rows, cols, bands)`` array.

    Same as :func:`segment_cube` (and takes the same keyword ``options``); kept as the
    explicit entry point for arrays, e.g. a napari image layer moved to band-last.
    """
    return segment_cube(model, np.asarray(array), **options)


def _window_reader(
    cube: "Cube | np.ndarray",
) -> tuple[Callable[[slice, slice], np.ndarray], tuple[int, int], int, str]:
    """Return ``(read_window, shape_hw, n_bands, name)`` for a Cube or a band-last array."""
    if isinstance(cube, np.ndarray):
        if cube.ndim != 3:
            raise ConfigError(f"a band-last (rows, cols, bands) array is needed, got {cube.shape}")

        def read_array(rows: slice, cols: slice) -> np.ndarray:
            return np.ascontiguousarray(cube[rows, cols], dtype=np.float32)

        return read_array, (cube.shape[0], cube.shape[1]), cube.shape[2], "the array"
    return cube.read_window, tuple(cube.shape_hw), cube.n_bands, str(cube.path)
