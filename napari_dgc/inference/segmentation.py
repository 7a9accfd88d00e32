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
memory is bounded by the tiles in flight whatever the cube size: the only full-size arrays are
the outputs (labels 4 bytes per pixel; probabilities ``4 K`` and embeddings ``4 D`` bytes per
pixel when asked for; the spectral input ``4 L`` bytes per pixel when asked for).

Tiles are independent, so ``workers`` threads segment several at once (PyTorch releases the GIL
inside its operations); at most ``workers`` tiles are read or computed at any time.

The first step of the model, normalising each spectrum and resampling it to
``model.spectral_length`` bins, depends only on the model's normalisation buffers and the fixed
resampling, which every checkpoint of a training run shares. :class:`SpectralInput` holds that
step's result for a whole cube (``return_spectral_input=True``); passing it to
:func:`segment_cube` instead of the cube skips reading the raw bands and the input matrix
product. It remembers a fingerprint of the normalisation and is refused by a model whose
normalisation differs.
"""

from __future__ import annotations

import hashlib
import os
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from napari_dgc.errors import ConfigError, CubeFormatError
from napari_dgc.io.cube import require_finite

if TYPE_CHECKING:
    import torch

    from napari_dgc.io import Cube
    from napari_dgc.model.network import DGCModel

ProgressCallback = Callable[[int, int], None]


@dataclass(frozen=True)
class SpectralInput:
    """A cube's normalised, resampled spectra: the model's input after its first step.

    Attributes
    ----------
    values : np.ndarray
        ``(rows, cols, model.spectral_length)`` float32, read-only.
    fingerprint : str
        :func:`spectral_input_fingerprint` of the model that computed it; only models with the
        same fingerprint may use it.
    """

    values: np.ndarray
    fingerprint: str

    @property
    def nbytes(self) -> int:
        """Memory held by :attr:`values`."""
        return self.values.nbytes


def spectral_input_fingerprint(model: DGCModel) -> str:
    """Identify everything the model's spectral input depends on.

    That is the band count, the brightness normalisation switch and floor, the per-band offset
    and scale and the resampling matrix. Every checkpoint of one training run shares them, so
    they share the fingerprint; a model with any other normalisation gets another one.
    """
    digest = hashlib.sha256()
    digest.update(f"{model.n_bands}|{model.spectral_length}|{model.config.brightness_norm}".encode())
    tensors = (model.band_offset, model.band_scale, model.brightness_floor, model.resampling)
    for tensor in tensors:
        digest.update(b"-" if tensor is None else tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


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
    spectral_input : SpectralInput or None
        The cube's spectral input, when asked for (to segment it again at other checkpoints).
    """

    labels: np.ndarray
    probabilities: np.ndarray | None = None
    embeddings: np.ndarray | None = None
    spectral_input: SpectralInput | None = None


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


def usable_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


#: Raw spectra a tile reads at once: its window goes through the spectral input in row strips
#: of about this size, so a tile never holds its raw window (94 MiB for a 256-pixel tile with
#: its halo at 301 bands) whole.
STRIP_BYTES = 16 * 2**20


def default_workers() -> int:
    """Tiles segmented at once when the caller does not say: PyTorch's thread budget.

    ``torch.get_num_threads()`` is the number of cores by default and what an application set
    (the training panel lowers it while training), capped at :func:`usable_cores`.
    """
    import torch

    return max(1, min(torch.get_num_threads(), usable_cores()))


def segment_cube(
    model: DGCModel,
    cube: Cube | np.ndarray | SpectralInput,
    *,
    tile: int = 256,
    return_probabilities: bool = False,
    return_embeddings: bool = False,
    return_spectral_input: bool = False,
    device: str | None = None,
    progress: ProgressCallback | None = None,
    workers: int | None = None,
) -> Segmentation:
    """Segment a whole cube by tiles with a halo of the model's receptive radius.

    Parameters
    ----------
    model : DGCModel
        Trained model; it is run in evaluation mode (and left in the mode it came in).
    cube : Cube, np.ndarray or SpectralInput
        A :class:`~napari_dgc.io.Cube` (read window by window), a band-last
        ``(rows, cols, bands)`` array, or a cube's :class:`SpectralInput` computed by a model
        with the same normalisation (a checkpoint of the same run).
    tile : int
        Side of the tile interior in pixels. The result does not depend on it; larger tiles
        waste less on halos, smaller ones need less memory.
    return_probabilities, return_embeddings : bool
        Also return the soft assignments ``(K, rows, cols)`` / embeddings ``(D, rows, cols)``.
    return_spectral_input : bool
        Also return the cube's :class:`SpectralInput` (``4 * model.spectral_length`` bytes per
        pixel). Ignored when ``cube`` already is one.
    device : str, optional
        Torch device the model is on and the tiles go to (``"cpu"``, ``"cuda"``); default: the
        model's own device.
    progress : callable, optional
        Called as ``progress(done_tiles, total_tiles)`` after each tile, in the calling thread.
    workers : int, optional
        Tiles segmented at once by a pool of threads; each in-flight tile holds its window and
        the model's intermediates. Default :func:`default_workers`. The labels do not depend
        on it.

    Returns
    -------
    Segmentation

    Raises
    ------
    ConfigError
        If ``tile`` or ``workers`` is not positive, the cube's band count differs from the
        model's, the model is not on ``device``, or a :class:`SpectralInput` comes from a model
        with another normalisation.
    CubeFormatError
        If the cube has no pixels, or a pixel is NaN or infinite (refused as training refuses
        it: such a pixel would change the labels of every pixel that sees it, silently).
    """
    import torch

    if tile < 1:
        raise ConfigError(f"the tile size must be a positive number of pixels, got {tile}")
    workers = default_workers() if workers is None else workers
    if workers < 1:
        raise ConfigError(f"the number of workers must be at least 1, got {workers}")
    device = _model_device(model, device)
    read_window, shape_hw, prepared, source = _window_reader(cube)
    if prepared:
        if cube.fingerprint != spectral_input_fingerprint(model):
            raise ConfigError(
                "this spectral input was computed with another normalisation than the model's "
                "(a checkpoint of another run?); segment the cube itself"
            )
        return_spectral_input = False
    elif cube_bands(cube) != model.n_bands:
        raise ConfigError(
            f"{source}: the cube has {cube_bands(cube)} bands, the model was trained on {model.n_bands}"
        )
    n_rows, n_cols = shape_hw
    if n_rows < 1 or n_cols < 1:
        raise CubeFormatError(f"{source}: the cube has no pixels ({n_rows} x {n_cols}); nothing to segment")
    labels = np.empty(shape_hw, dtype=np.int32)
    probabilities = (
        np.empty((model.config.n_clusters, n_rows, n_cols), np.float32) if return_probabilities else None
    )
    embeddings = np.empty((model.config.embed_dim, n_rows, n_cols), np.float32) if return_embeddings else None
    spectral = (
        np.empty((n_rows, n_cols, model.spectral_length), np.float32) if return_spectral_input else None
    )

    def segment_tile(rows: slice, cols: slice, inner_rows: slice, inner_cols: slice) -> None:
        # Grad mode is per thread: a pool thread needs its own inference mode.
        with torch.inference_mode():
            height, width = rows.stop - rows.start, cols.stop - cols.start
            if prepared:
                sequences = _tensor(read_window(rows, cols), device).reshape(height * width, -1)
            else:
                # Row strips of raw spectra: a large tile's window never sits in memory whole.
                sequences = torch.empty(height * width, model.spectral_length, device=device)
                strip = max(1, STRIP_BYTES // (4 * width * model.n_bands))
                for top in range(rows.start, rows.stop, strip):
                    bottom = min(top + strip, rows.stop)
                    raw = _tensor(_finite(read_window(slice(top, bottom), cols), top, cols, source), device)
                    sequences[(top - rows.start) * width : (bottom - rows.start) * width] = (
                        model.spectral_input(raw.reshape(-1, model.n_bands))
                    )
            embedded = model.embed_sequences(sequences, 1, height, width)
            soft = model.assign(embedded)
            target = (
                slice(rows.start + inner_rows.start, rows.start + inner_rows.stop),
                slice(cols.start + inner_cols.start, cols.start + inner_cols.stop),
            )
            kept = soft[0, :, inner_rows, inner_cols]
            labels[target] = kept.argmax(dim=0).cpu().numpy()
            if probabilities is not None:
                probabilities[(slice(None), *target)] = kept.cpu().numpy()
            if embeddings is not None:
                embeddings[(slice(None), *target)] = embedded[0, :, inner_rows, inner_cols].cpu().numpy()
            if spectral is not None:
                spectral[target] = sequences.reshape(height, width, -1)[inner_rows, inner_cols].cpu().numpy()

    windows = list(tile_windows(shape_hw, tile, model.receptive_radius))
    prefetch_rows = None if prepared else getattr(cube, "prefetch_rows", None)
    was_training = model.training
    model.eval()
    try:
        _run_tiles(segment_tile, windows, min(workers, len(windows)), progress, prefetch_rows)
    finally:
        model.train(was_training)
    spectral_input = None
    if spectral is not None:
        spectral.flags.writeable = False  # shared between segmentations, e.g. in a cache
        spectral_input = SpectralInput(spectral, spectral_input_fingerprint(model))
    return Segmentation(labels, probabilities, embeddings, spectral_input)


def _finite(window: np.ndarray, top: int, cols: slice, source: str) -> np.ndarray:
    """``window`` (read at row ``top``, columns ``cols``) if every value is finite."""
    return require_finite(window, top, cols.start or 0, source)


def _tensor(window: np.ndarray, device: torch.device) -> torch.Tensor:
    """A window read from a cube or array as a tensor on ``device``."""
    import torch

    # A read-only view (a window contiguous in a read-only array or memory map) would make
    # torch warn; the copy is what a non-contiguous window costs anyway.
    return torch.from_numpy(window if window.flags.writeable else window.copy()).to(device)


def _model_device(model: DGCModel, device: str | None) -> torch.device:
    """The device the tiles go to: ``device`` if the model is there, the model's by default."""
    import torch

    model_device = model.centroids.device
    if device is None:
        return model_device
    wanted = torch.device(device)
    if wanted.type != model_device.type or (wanted.index is not None and wanted.index != model_device.index):
        raise ConfigError(
            f"the model is on {model_device} but device {device!r} was asked for; "
            "move it there first (model.to(device))"
        )
    return model_device


def _run_tiles(
    segment_tile: Callable[..., None],
    windows: list[tuple[slice, slice, slice, slice]],
    workers: int,
    progress: ProgressCallback | None,
    prefetch_rows: Callable[[slice], None] | None = None,
) -> None:
    """Call ``segment_tile(*window)`` for every window, ``workers`` at a time at most.

    ``prefetch_rows(rows)``, when given, is called for the rows of the next ``workers`` windows
    whenever a window starts, so the disk reads them while the tiles in flight compute.
    """

    def start(index: int) -> None:
        if prefetch_rows is not None:
            for ahead in windows[index + 1 : index + 1 + workers]:
                prefetch_rows(ahead[0])

    if workers <= 1:
        for done, window in enumerate(windows, start=1):
            start(done - 1)
            segment_tile(*window)
            if progress is not None:
                progress(done, len(windows))
        return
    done = 0
    pending: set[Future] = set()
    remaining = enumerate(windows)
    with ThreadPoolExecutor(workers, thread_name_prefix="segment-tile") as pool:
        try:
            while True:
                # Submit no more than `workers` tiles: each holds a window and intermediates.
                for index, window in remaining:
                    start(index)
                    pending.add(pool.submit(segment_tile, *window))
                    if len(pending) >= workers:
                        break
                if not pending:
                    return
                finished, pending = wait(pending, return_when=FIRST_COMPLETED)
                for future in finished:
                    future.result()  # re-raises a tile's error here, in the caller
                    done += 1
                    if progress is not None:
                        progress(done, len(windows))
        finally:
            for future in pending:
                future.cancel()


def segment_array(model: DGCModel, array: np.ndarray, **options) -> Segmentation:
    """Segment an in-memory band-last ``(rows, cols, bands)`` array.

    Same as :func:`segment_cube` (and takes the same keyword ``options``); kept as the
    explicit entry point for arrays, e.g. a napari image layer moved to band-last.
    """
    return segment_cube(model, np.asarray(array), **options)


def cube_bands(cube: Cube | np.ndarray) -> int:
    """Band count of a :class:`~napari_dgc.io.Cube` or a band-last ``(rows, cols, bands)`` array."""
    return cube.n_bands if hasattr(cube, "n_bands") else int(np.shape(cube)[-1])


def _window_reader(
    cube: Cube | np.ndarray | SpectralInput,
) -> tuple[Callable[[slice, slice], np.ndarray], tuple[int, int], bool, str]:
    """Return ``(read_window, shape_hw, is_spectral_input, name)`` for any input of segment_cube."""
    if isinstance(cube, (np.ndarray, SpectralInput)):
        array = cube.values if isinstance(cube, SpectralInput) else cube
        if array.ndim != 3:
            raise ConfigError(f"a band-last (rows, cols, bands) array is needed, got {array.shape}")

        def read_array(rows: slice, cols: slice) -> np.ndarray:
            return np.ascontiguousarray(array[rows, cols], dtype=np.float32)

        return (read_array, (array.shape[0], array.shape[1]), isinstance(cube, SpectralInput), "the array")
    return cube.read_window, tuple(cube.shape_hw), False, str(cube.path)
