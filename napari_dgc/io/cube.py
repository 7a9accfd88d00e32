"""The :class:`Cube`: a lazily read hyperspectral cube with its band axis, wavelengths and origin.

Every format module (:mod:`~napari_dgc.io.envi`, :mod:`~napari_dgc.io.matlab`, ...) returns a
``Cube`` whose ``data`` is *not* read at open: a numpy memmap, or a lazy array-like from
:mod:`napari_dgc.io.lazy`, or (only for small in-memory formats such as MATLAB v5) an array.
Reads go through :meth:`Cube.read_window` and :meth:`Cube.read_bands`, which return float32
and touch only the requested part of the file.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_dgc.errors import CubeFormatError

# Row blocks of about this many bytes bound the memory a full-cube scan maps at once.
_BLOCK_BYTES = 64 * 2**20


@dataclass
class Cube:
    """A hyperspectral cube opened lazily from a file.

    Attributes
    ----------
    data : array-like
        3-D lazy array (numpy memmap, :class:`~napari_dgc.io.lazy.LazyArray` or, for small
        in-memory formats, an ndarray). Its two spatial axes are always in ``(rows, cols)``
        order; ``band_axis`` says where the bands are.
    band_axis : int
        Axis of ``data`` that holds the bands (0, 1 or 2).
    wavelengths : numpy.ndarray or None
        Band centres in nanometres (float64, one per band), or ``None`` when unknown.
    path : pathlib.Path
        File (or folder, for a PNG folder) the cube was opened from.
    format : str
        ``"envi"``, ``"mat"``, ``"mat-v7.3"``, ``"npy"``, ``"tiff"`` or ``"png-folder"``.
    provenance : dict
        JSON-serialisable facts about how the cube was read (interleave, stored dtype, byte
        order, MATLAB key, how the band axis was decided, ...).
    """

    data: Any
    band_axis: int
    wavelengths: np.ndarray | None
    path: Path
    format: str
    provenance: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.path = Path(self.path)
        if len(self.data.shape) != 3:
            raise CubeFormatError(f"{self.path}: a cube needs 3 axes, got shape {tuple(self.data.shape)}")
        if self.band_axis not in (0, 1, 2):
            raise ValueError(f"band_axis must be 0, 1 or 2, got {self.band_axis}")
        if self.wavelengths is not None:
            self.wavelengths = np.asarray(self.wavelengths, dtype=np.float64).reshape(-1)
            if self.wavelengths.size != self.n_bands:
                raise CubeFormatError(
                    f"{self.path}: {self.wavelengths.size} wavelengths for {self.n_bands} bands"
                )

    # ------------------------------------------------------------------ properties
    @property
    def n_bands(self) -> int:
        """Number of spectral bands."""
        return int(self.data.shape[self.band_axis])

    @property
    def shape_hw(self) -> tuple[int, int]:
        """Spatial shape ``(rows, cols)``."""
        rows, cols = (int(n) for axis, n in enumerate(self.data.shape) if axis != self.band_axis)
        return rows, cols

    @property
    def dtype(self) -> np.dtype:
        """Data type as stored in the file (reads convert to float32)."""
        return np.dtype(self.data.dtype)

    @property
    def nbytes(self) -> int:
        """Size of the cube's values in bytes, as stored."""
        return int(np.prod(self.data.shape, dtype=np.int64)) * self.dtype.itemsize

    # ------------------------------------------------------------------ reading
    def prefetch_rows(self, rows: slice) -> None:
        """Ask the operating system to start reading image rows ``rows`` in the background.

        A later :meth:`read_window` of those rows then finds them in the page cache instead of
        waiting for the disk, so a caller can overlap reading with computing (tiled
        segmentation prefetches the next tiles' rows). Only memory-mapped files whose rows
        are contiguous runs of bytes (band-last ``.npy``, ENVI BIP/BIL) can be read ahead by
        rows; for every other cube this does nothing. ``rows`` is a slice without a step.
        """
        data = self.data
        if not (
            isinstance(data, np.memmap)
            and data.flags.c_contiguous
            and self.band_axis != 0
            and hasattr(os, "posix_fadvise")
        ):
            return
        first, stop, _ = rows.indices(self.shape_hw[0])
        if stop <= first:
            return
        row_bytes = data.strides[0]
        with open(data.filename, "rb") as file:
            os.posix_fadvise(
                file.fileno(),
                data.offset + first * row_bytes,
                (stop - first) * row_bytes,
                os.POSIX_FADV_WILLNEED,
            )

    def read_window(self, rows: slice, cols: slice) -> np.ndarray:
        """Read a spatial window with all bands.

        Parameters
        ----------
        rows, cols : slice
            Spatial window (ordinary Python slices; steps are allowed).

        Returns
        -------
        numpy.ndarray
            ``(h, w, bands)`` float32, C-contiguous. Non-finite values are returned as stored;
            see :meth:`check_finite`.
        """
        index = self._index(band=slice(None), rows=rows, cols=cols)
        block = np.asarray(self._fresh_data()[index])
        return np.ascontiguousarray(np.moveaxis(block, self.band_axis, -1), dtype=np.float32)

    def read_bands(self, indices: Sequence[int]) -> np.ndarray:
        """Read whole bands, touching only those bands' bytes where the layout allows.

        Parameters
        ----------
        indices : sequence of int
            Band indices (any order, repeats allowed).

        Returns
        -------
        numpy.ndarray
            ``(len(indices), rows, cols)`` float32.
        """
        indices = np.asarray(indices, dtype=np.int64).reshape(-1)
        if indices.size and (indices.min() < -self.n_bands or indices.max() >= self.n_bands):
            raise IndexError(
                f"{self.path}: band index out of range 0..{self.n_bands - 1}: {indices.tolist()}"
            )
        indices = np.where(indices < 0, indices + self.n_bands, indices)
        rows, cols = self.shape_hw
        out = np.empty((indices.size, rows, cols), dtype=np.float32)
        for row_block in self._row_blocks():
            index = self._index(band=indices, rows=row_block, cols=slice(None))
            block = np.asarray(self._fresh_data()[index])
            out[:, row_block, :] = np.moveaxis(block, self.band_axis, 0)
        return out

    def bands_first(self) -> Any:
        """Return a lazy ``(bands, rows, cols)`` view of :attr:`data` (for napari layers)."""
        if self.band_axis == 0:
            return self.data
        order = (self.band_axis,) + tuple(a for a in range(3) if a != self.band_axis)
        return self.data.transpose(order)

    def iter_row_blocks(self, block_bytes: int = _BLOCK_BYTES) -> Iterator[tuple[slice, np.ndarray]]:
        """Yield ``(rows, window)`` pairs covering the cube in blocks of whole rows.

        Each ``window`` is :meth:`read_window` of those rows, so memory stays bounded by
        ``block_bytes`` (in float32) however large the cube is.
        """
        rows, cols = self.shape_hw
        for row_block in self._row_blocks(block_bytes):
            yield row_block, self.read_window(row_block, slice(0, cols))

    def check_finite(self) -> None:
        """Scan the whole cube (block by block) and fail on NaN or infinite values.

        Opening never scans (it must not read a large cube); call this before training or
        rely on the reads' float32 results being checked by the caller. Integer cubes pass
        without reading.

        Raises
        ------
        CubeFormatError
            Naming the file, the number of non-finite values and the first one's position.
        """
        if not np.issubdtype(self.dtype, np.floating):
            return
        count = 0
        first: tuple[int, int, int] | None = None
        for row_block, window in self.iter_row_blocks():
            bad = ~np.isfinite(window)
            n_bad = int(bad.sum())
            if n_bad and first is None:
                r, c, b = np.argwhere(bad)[0]
                first = (int(r) + row_block.start, int(c), int(b))
            count += n_bad
        if count:
            row, col, band = first
            raise CubeFormatError(
                f"{self.path}: {count} NaN or infinite value(s) in the cube "
                f"(first at row {row}, column {col}, band {band})"
            )

    # ------------------------------------------------------------------ helpers
    def _index(self, band: Any, rows: Any, cols: Any) -> tuple:
        spatial = iter((rows, cols))
        return tuple(band if axis == self.band_axis else next(spatial) for axis in range(3))

    def _row_blocks(self, block_bytes: int = _BLOCK_BYTES) -> Iterator[slice]:
        # Sized by all bands of a row, as stored or as float32 (whichever is larger): with a
        # band-interleaved layout even a 3-band read touches every stored byte of its rows.
        rows, cols = self.shape_hw
        row_bytes = max(1, cols * self.n_bands * max(4, self.dtype.itemsize))
        step = max(1, block_bytes // row_bytes)
        for start in range(0, rows, step):
            yield slice(start, min(rows, start + step))

    def _fresh_data(self) -> Any:
        """A new memory map of the same file (or ``data`` itself when it is not one).

        Reading through a short-lived map releases the touched pages when the read is done,
        so scanning a band-interleaved 1 GB cube does not leave 1 GB mapped in the process.
        """
        data = self.data
        if not (isinstance(data, np.memmap) and isinstance(data.base, mmap.mmap)):
            return data
        order = "F" if data.flags.f_contiguous and not data.flags.c_contiguous else "C"
        return np.memmap(
            data.filename, dtype=data.dtype, mode="r", offset=data.offset, shape=data.shape, order=order
        )


def require_finite(window: np.ndarray, top: int, left: int, source: str) -> np.ndarray:
    """Return ``window`` (band-last, read at row ``top``, column ``left`` of ``source``) if every
    value is finite; else raise the one error training and segmentation give for such pixels.
    """
    if not np.isfinite(window).all():
        bad = np.argwhere(~np.isfinite(window))[0]
        raise CubeFormatError(
            f"{source}: NaN or infinite value at pixel (row {top + bad[0]}, col {left + bad[1]}), "
            f"band {bad[2]}; replace or mask such pixels first"
        )
    return window
