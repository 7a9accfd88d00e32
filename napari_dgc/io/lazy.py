"""Small lazy array-likes for cube storages numpy cannot memory-map.

napari and :class:`~napari_dgc.io.cube.Cube` only need ``shape``, ``dtype``, ``ndim``,
``size`` and ``__getitem__`` from a layer's data, so these classes read exactly the part an
index asks for: one band of a PNG folder or a multi-page TIFF, or a hyperslab of an HDF5
(MATLAB v7.3) dataset whose axes are presented in a different order.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np


class LazyArray:
    """Base class: index normalisation, ``__array__`` and ``transpose`` for lazy arrays.

    Subclasses set ``shape`` and ``dtype`` and implement :meth:`_read`, which receives one
    selection per axis (a ``slice`` with non-negative bounds or a 1-D integer array) and
    returns the selected block with every axis kept.
    """

    shape: tuple[int, ...]
    dtype: np.dtype

    @property
    def ndim(self) -> int:
        """Number of dimensions."""
        return len(self.shape)

    @property
    def size(self) -> int:
        """Number of elements."""
        return int(np.prod(self.shape, dtype=np.int64))

    def __len__(self) -> int:
        return self.shape[0]

    def __array__(self, dtype: Any = None, copy: Any = None) -> np.ndarray:
        block = self[...]
        return block if dtype is None else block.astype(dtype)

    def __getitem__(self, key: Any) -> np.ndarray:
        selection, dropped = _normalize_key(key, self.shape)
        block = self._read(selection)
        return block.reshape([n for axis, n in enumerate(block.shape) if axis not in dropped])

    def transpose(self, *axes: int | Sequence[int]) -> AxisPermuted:
        """Lazy view with permuted axes (same meaning as :meth:`numpy.ndarray.transpose`)."""
        if len(axes) == 1 and not isinstance(axes[0], int):
            axes = tuple(axes[0])
        order = tuple(axes) if axes else tuple(reversed(range(self.ndim)))
        return AxisPermuted(self, order)

    def _read(self, selection: tuple) -> np.ndarray:  # pragma: no cover - abstract
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} shape={self.shape} dtype={self.dtype}>"


def _normalize_key(key: Any, shape: tuple[int, ...]) -> tuple[tuple, set[int]]:
    """Turn a numpy-style index into one selection per axis and the axes an int removes."""
    if not isinstance(key, tuple):
        key = (key,)
    if any(k is Ellipsis for k in key):
        position = next(i for i, k in enumerate(key) if k is Ellipsis)
        fill = (slice(None),) * (len(shape) - len(key) + 1)
        key = key[:position] + fill + key[position + 1 :]
    if len(key) > len(shape):
        raise IndexError(f"too many indices ({len(key)}) for an array of shape {shape}")
    key = key + (slice(None),) * (len(shape) - len(key))
    selection: list = []
    dropped: set[int] = set()
    for axis, (item, length) in enumerate(zip(key, shape)):
        if isinstance(item, slice):
            start, stop, step = item.indices(length)
            # A reversed slice's stop can be -1, which a source would read as "the end".
            selection.append(slice(start, stop, step) if step > 0 else np.arange(length)[item])
        elif isinstance(item, (int, np.integer)):
            index = int(item) + length if item < 0 else int(item)
            if not 0 <= index < length:
                raise IndexError(f"index {item} is out of bounds for axis {axis} of size {length}")
            selection.append(np.array([index]))
            dropped.add(axis)
        else:
            indices = np.asarray(item)
            if indices.size == 0:
                indices = indices.astype(np.intp)  # [] arrives as float64
            elif indices.dtype == bool:
                indices = np.flatnonzero(indices)
            if indices.ndim != 1 or not np.issubdtype(indices.dtype, np.integer):
                raise IndexError(f"unsupported index {item!r} for a lazy array")
            indices = np.where(indices < 0, indices + length, indices)
            if indices.size and (indices.min() < 0 or indices.max() >= length):
                raise IndexError(f"index out of bounds for axis {axis} of size {length}")
            selection.append(indices)
    return tuple(selection), dropped


def _apply(array: Any, selection: tuple) -> np.ndarray:
    """Index ``array`` with per-axis selections, reading integer lists one entry at a time.

    Basic slicing goes to the source in one call (h5py reads just that hyperslab); integer
    lists are gathered entry by entry so any source that supports slicing works.
    """
    for axis, item in enumerate(selection):
        if isinstance(item, np.ndarray):
            parts = []
            for index in item:
                sub = list(selection)
                sub[axis] = slice(int(index), int(index) + 1)
                parts.append(_apply(array, tuple(sub)))
            if parts:
                return np.concatenate(parts, axis=axis)
            return np.empty([_selected_length(s, n) for s, n in zip(selection, array.shape)], array.dtype)
    return np.asarray(array[tuple(selection)])


def _selected_length(item: slice | np.ndarray, length: int) -> int:
    """How many entries a normalised selection picks from an axis of ``length``."""
    return len(range(*item.indices(length))) if isinstance(item, slice) else len(item)


class AxisPermuted(LazyArray):
    """Present ``source`` with its axes reordered, reading only the selected part.

    Parameters
    ----------
    source : array-like
        Anything that supports basic slicing and has ``shape`` and ``dtype`` (an h5py
        dataset, a memmap, another :class:`LazyArray`).
    axes : sequence of int
        ``axes[i]`` is the source axis shown as axis ``i``.
    """

    def __init__(self, source: Any, axes: Sequence[int]):
        if sorted(axes) != list(range(len(source.shape))):
            raise ValueError(f"axes {tuple(axes)} are not a permutation of {len(source.shape)} axes")
        self.source = source
        self.axes = tuple(int(a) for a in axes)
        self.shape = tuple(int(source.shape[a]) for a in self.axes)
        self.dtype = np.dtype(source.dtype)

    def _read(self, selection: tuple) -> np.ndarray:
        source_selection = [None] * len(self.axes)
        for shown_axis, source_axis in enumerate(self.axes):
            source_selection[source_axis] = selection[shown_axis]
        block = _apply(self.source, tuple(source_selection))
        return np.transpose(block, self.axes)


class BandStack(LazyArray):
    """A ``(bands, rows, cols)`` stack whose bands are read one by one on demand.

    Parameters
    ----------
    n_bands : int
        Number of bands.
    shape_hw : tuple of int
        ``(rows, cols)`` of every band.
    dtype : numpy dtype
        Data type every band has.
    read_band : callable
        ``read_band(i)`` returns band ``i`` as a ``(rows, cols)`` array.
    cache_bytes : int
        Decoded bands are kept up to this many bytes (least recently used dropped first), so
        repeated window reads of a small cube do not decode every file again.
    """

    def __init__(
        self,
        n_bands: int,
        shape_hw: tuple[int, int],
        dtype: Any,
        read_band: Callable[[int], np.ndarray],
        cache_bytes: int = 256 * 2**20,
    ):
        self.shape = (int(n_bands), int(shape_hw[0]), int(shape_hw[1]))
        self.dtype = np.dtype(dtype)
        self._read_band = read_band
        self._cache: OrderedDict[int, np.ndarray] = OrderedDict()
        self._cache_limit = max(0, cache_bytes // max(1, self.shape[1] * self.shape[2] * self.dtype.itemsize))

    def band(self, index: int) -> np.ndarray:
        """Return band ``index`` as a ``(rows, cols)`` array (cached)."""
        if index in self._cache:
            self._cache.move_to_end(index)
            return self._cache[index]
        plane = np.asarray(self._read_band(index))
        if plane.shape != self.shape[1:]:
            raise ValueError(f"band {index} has shape {plane.shape}, expected {self.shape[1:]}")
        plane = plane.astype(self.dtype, copy=False)
        if self._cache_limit:
            self._cache[index] = plane
            if len(self._cache) > self._cache_limit:
                self._cache.popitem(last=False)
        return plane

    def _read(self, selection: tuple) -> np.ndarray:
        bands = np.arange(self.shape[0])[selection[0]]
        rows, cols = selection[1], selection[2]
        planes = [_apply(self.band(int(b)), (rows, cols)) for b in bands]
        if not planes:
            return np.empty(
                (0, _selected_length(rows, self.shape[1]), _selected_length(cols, self.shape[2])), self.dtype
            )
        return np.stack(planes)


class Deferred(LazyArray):
    """An array of known shape and dtype that is read in full on first access, then kept.

    For storages that can only be decoded as a whole (a compressed single TIFF page, a
    MATLAB v5 variable): opening the cube (and ``napari-dgc info``) reads nothing, and the
    values are decoded once, when something first indexes them.

    Parameters
    ----------
    shape : tuple of int
        Shape of the array ``load`` returns.
    dtype : numpy dtype
        Its data type.
    load : callable
        ``load()`` returns the whole array (it may raise a
        :class:`~napari_dgc.errors.DGCError` naming the file).
    """

    def __init__(self, shape: Sequence[int], dtype: Any, load: Callable[[], np.ndarray]):
        self.shape = tuple(int(n) for n in shape)
        self.dtype = np.dtype(dtype)
        self._load = load
        self._values: np.ndarray | None = None

    def values(self) -> np.ndarray:
        """The whole array, decoded on the first call."""
        if self._values is None:
            values = np.asarray(self._load())
            if values.shape != self.shape:
                raise ValueError(f"decoded shape {values.shape} differs from the stated {self.shape}")
            self._values = values.astype(self.dtype, copy=False)
        return self._values

    def _read(self, selection: tuple) -> np.ndarray:
        return _apply(self.values(), selection)
