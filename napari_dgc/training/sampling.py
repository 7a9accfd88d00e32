"""Overlapping crop pairs with exact scene correspondence, streamed cube by cube.

A *pair* is two ``S x S`` crops of the same cube whose footprints overlap by a random fraction
of the crop area (``overlap_min`` .. ``overlap_max``). Each crop is described by the integer
scene coordinates of every output pixel, so geometric augmentation (a small random affine per
crop, nearest-neighbour sampling) never blurs spectra and the overlap stays *exact*: the
consistency loss compares output pixels of the two crops that show the same scene pixel.

The pixels of a pair are read once: both crops gather from the pair's *unique* scene pixels,
so the per-pixel spectral stage runs once per scene pixel even where the crops overlap.

:class:`PairStream` visits the cubes in a seeded order, takes ``pairs_per_cube`` pairs from
each before moving on, reads only the window a pair needs, and places pairs by a scrambled
Halton sequence per cube so that crops cover each cube evenly over the run. Its whole state
is JSON-serialisable (:meth:`PairStream.state_dict`), so a resumed run draws the same pairs.
With ``read_ahead`` it plans the next batch as soon as one is returned and reads its windows in
a background thread while the caller computes on the current one (the same pairs either way).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from scipy.stats import qmc

from napari_dgc.config import DataConfig
from napari_dgc.errors import ConfigError, CubeFormatError
from napari_dgc.io.cube import require_finite
from napari_dgc.io.preparation import Preparation


class SampledCube:
    """A cube that crop pairs are sampled from: a band-last array or a lazy :class:`~napari_dgc.io.Cube`.

    Parameters
    ----------
    cube : numpy.ndarray or Cube
        ``(rows, cols, bands)`` array, or an object with ``read_window(rows, cols)``,
        ``shape_hw`` and ``n_bands`` (a :class:`napari_dgc.io.Cube`).
    name : str
        Name used in error messages (the file path, or ``"array 0"``).
    """

    def __init__(self, cube, name: str) -> None:
        self.name = name
        if isinstance(cube, np.ndarray):
            if cube.ndim != 3:
                raise CubeFormatError(
                    f"{name}: a cube array must be (rows, cols, bands), got shape {cube.shape}"
                )
            self._array = cube
            self.shape_hw = (int(cube.shape[0]), int(cube.shape[1]))
            self.n_bands = int(cube.shape[2])
        else:
            self._array = None
            self._cube = cube
            self.shape_hw = tuple(int(v) for v in cube.shape_hw)
            self.n_bands = int(cube.n_bands)

    def read_window(self, rows: slice, cols: slice) -> np.ndarray:
        """Read ``(h, w, bands)`` float32; raise CubeFormatError on NaN / Inf values."""
        if self._array is not None:
            window = np.asarray(self._array[rows, cols], dtype=np.float32)
        else:
            window = np.asarray(self._cube.read_window(rows, cols), dtype=np.float32)
        return require_finite(window, rows.start or 0, cols.start or 0, self.name)


def open_sources(cubes: Sequence, preparation: Preparation | None = None) -> list[SampledCube]:
    """Wrap arrays, :class:`~napari_dgc.io.Cube` objects and paths as :class:`SampledCube`.

    Paths are opened lazily with :func:`napari_dgc.io.open_cube` (metadata only). With a
    ``preparation`` (band crop, reference correction, binning) every cube is read prepared.
    All cubes must have the same band count (after the preparation).
    """
    if len(cubes) == 0:
        raise ConfigError("the dataset is empty: give at least one cube")
    prepare = (lambda cube, name: cube) if preparation is None else preparation.apply
    sources = []
    for index, cube in enumerate(cubes):
        if isinstance(cube, (str, Path)):
            from napari_dgc.io import open_cube

            sources.append(SampledCube(prepare(open_cube(cube), str(cube)), str(cube)))
        elif isinstance(cube, np.ndarray):
            sources.append(SampledCube(prepare(cube, f"array {index}"), f"array {index}"))
        else:
            name = str(getattr(cube, "path", f"cube {index}"))
            sources.append(SampledCube(prepare(cube, name), name))
    first = sources[0]
    for source in sources[1:]:
        if source.n_bands != first.n_bands:
            raise CubeFormatError(
                f"{source.name} has {source.n_bands} bands but {first.name} has "
                f"{first.n_bands}; all cubes of a dataset need the same bands"
            )
    return sources


@dataclass
class CropPair:
    """One crop pair, ready for the model.

    Attributes
    ----------
    pixels : numpy.ndarray
        ``(P, bands)`` float32 raw spectra of the pair's unique scene pixels.
    index_a, index_b : numpy.ndarray
        ``(S, S)`` int64: row of ``pixels`` shown at each output pixel of crop A / B.
    match_a, match_b : numpy.ndarray
        ``(M,)`` int64 flat output positions (``row * S + col``) in crop A and crop B that show
        the same scene pixel.
    coords_a, coords_b : numpy.ndarray
        ``(S, S, 2)`` int64 scene (row, col) of each output pixel (for tests and diagnostics).
    spectral_shift : int
        Band shift applied to the pair's spectra (augmentation; same for both crops).
    cube_index : int
        Which cube of the dataset the pair comes from.
    """

    pixels: np.ndarray
    index_a: np.ndarray
    index_b: np.ndarray
    match_a: np.ndarray
    match_b: np.ndarray
    coords_a: np.ndarray
    coords_b: np.ndarray
    spectral_shift: int
    cube_index: int


def _crop_coordinates(
    top: int, left: int, size: int, shape_hw: tuple[int, int], rng: np.random.Generator | None
) -> np.ndarray:
    """Scene (row, col) of every output pixel of a crop, optionally under a random affine.

    The affine (rotation +-10 deg, scale 0.9-1.1, translation +-10 % of the crop) maps output
    pixels to scene positions around the crop centre, rounded to the nearest scene pixel and
    clamped into the image.
    """
    grid = np.arange(size, dtype=np.float64) - (size - 1) / 2.0
    rows, cols = np.meshgrid(grid, grid, indexing="ij")
    if rng is not None:
        angle = np.deg2rad(rng.uniform(-10.0, 10.0))
        scale = rng.uniform(0.9, 1.1)
        shift_r, shift_c = rng.uniform(-0.1, 0.1, size=2) * size
        cos, sin = math.cos(angle) * scale, math.sin(angle) * scale
        rows, cols = cos * rows - sin * cols + shift_r, sin * rows + cos * cols + shift_c
    centre_r, centre_c = top + (size - 1) / 2.0, left + (size - 1) / 2.0
    scene_r = np.clip(np.rint(rows + centre_r), 0, shape_hw[0] - 1).astype(np.int64)
    scene_c = np.clip(np.rint(cols + centre_c), 0, shape_hw[1] - 1).astype(np.int64)
    return np.stack([scene_r, scene_c], axis=-1)


def plan_pair(
    shape_hw: tuple[int, int],
    crop_size: int,
    overlap_range: tuple[float, float],
    position: tuple[float, float],
    rng: np.random.Generator,
    augment: bool,
) -> tuple[np.ndarray, np.ndarray]:
    """Choose the scene coordinates of two overlapping crops.

    Parameters
    ----------
    shape_hw : tuple of int
        Cube size ``(rows, cols)``; each side must be at least ``crop_size``.
    crop_size : int
        Crop side ``S``.
    overlap_range : tuple of float
        Range of the overlapped fraction of the crop area (before augmentation).
    position : tuple of float
        Point in ``[0, 1)^2`` (quasi-random) placing the pair's bounding box in the cube.
    rng : numpy.random.Generator
        Source of the overlap fraction, direction and augmentation.
    augment : bool
        Apply a random affine to each crop.

    Returns
    -------
    tuple of numpy.ndarray
        ``(S, S, 2)`` scene coordinates of crop A and of crop B.
    """
    height, width = shape_hw
    fraction = rng.uniform(*overlap_range)
    # Split the area fraction between the two axes: row share a in [fraction, 1], col share b.
    row_share = fraction ** rng.uniform(0.0, 1.0)
    col_share = fraction / row_share
    shift_r = min(int(round(crop_size * (1.0 - row_share))), height - crop_size)
    shift_c = min(int(round(crop_size * (1.0 - col_share))), width - crop_size)
    sign_r, sign_c = rng.choice([-1, 1], size=2)
    box_top = int(position[0] * (height - crop_size - shift_r + 1))
    box_left = int(position[1] * (width - crop_size - shift_c + 1))
    tops = (box_top, box_top + shift_r) if sign_r > 0 else (box_top + shift_r, box_top)
    lefts = (box_left, box_left + shift_c) if sign_c > 0 else (box_left + shift_c, box_left)
    coords = [
        _crop_coordinates(top, left, crop_size, shape_hw, rng if augment else None)
        for top, left in zip(tops, lefts)
    ]
    return coords[0], coords[1]


def match_pixels(coords_a: np.ndarray, coords_b: np.ndarray, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Flat output positions of crop A and crop B that show the same scene pixel.

    Every pixel of B whose scene pixel appears in A is matched once (to one of the A pixels
    showing it, if nearest-neighbour up-scaling shows it twice).
    """
    flat_a = (coords_a[..., 0] * width + coords_a[..., 1]).ravel()
    flat_b = (coords_b[..., 0] * width + coords_b[..., 1]).ravel()
    order = np.argsort(flat_a, kind="stable")
    sorted_a = flat_a[order]
    where = np.searchsorted(sorted_a, flat_b)
    where_clipped = np.minimum(where, len(sorted_a) - 1)
    found = sorted_a[where_clipped] == flat_b
    return order[where_clipped[found]], np.nonzero(found)[0]


def gather_pair(
    source: SampledCube, coords_a: np.ndarray, coords_b: np.ndarray, spectral_shift: int, cube_index: int
) -> CropPair:
    """Read the window a pair needs and index its unique scene pixels."""
    size = coords_a.shape[0]
    both = np.concatenate([coords_a.reshape(-1, 2), coords_b.reshape(-1, 2)])
    top, left = both.min(axis=0)
    bottom, right = both.max(axis=0) + 1
    window = source.read_window(slice(int(top), int(bottom)), slice(int(left), int(right)))
    local = (both[:, 0] - top) * (right - left) + (both[:, 1] - left)
    unique, inverse = np.unique(local, return_inverse=True)
    # Gather rows and columns from the window itself: an in-memory cube's window is a strided
    # view, and flattening it first would copy the whole window (~3x the pixels a pair uses).
    pixels = window[unique // (right - left), unique % (right - left)]
    match_a, match_b = match_pixels(coords_a, coords_b, source.shape_hw[1])
    return CropPair(
        pixels=pixels,
        index_a=inverse[: size * size].reshape(size, size),
        index_b=inverse[size * size :].reshape(size, size),
        match_a=match_a,
        match_b=match_b,
        coords_a=coords_a,
        coords_b=coords_b,
        spectral_shift=spectral_shift,
        cube_index=cube_index,
    )


def check_crop_fits(sources: Sequence[SampledCube], crop_size: int) -> None:
    """Raise :class:`CubeFormatError` naming the first cube smaller than the crop."""
    for source in sources:
        if min(source.shape_hw) < crop_size:
            raise CubeFormatError(
                f"{source.name} is {source.shape_hw[0]} x {source.shape_hw[1]} pixels, "
                f"smaller than the {crop_size} x {crop_size} crop; use a smaller crop size"
            )


def batch_share(size: int, rank: int, world_size: int) -> slice:
    """The pairs of a ``size``-pair batch that rank ``rank`` of ``world_size`` trains on.

    Raises
    ------
    ConfigError
        If ``size`` is not a multiple of ``world_size`` (equal shares keep every rank's random
        draws, and so the checkpointed generator states, the same).
    """
    if size % world_size:
        raise ConfigError(
            f"the batch of {size} crop pairs cannot be split evenly over {world_size} processes; "
            f"use a batch size that is a multiple of {world_size} (--batch-size)"
        )
    share = size // world_size
    return slice(rank * share, (rank + 1) * share)


class PairStream:
    """Endless, reproducible stream of :class:`CropPair` over a dataset of cubes.

    Parameters
    ----------
    sources : list of SampledCube
        The dataset.
    crop_size : int
        Crop side in pixels.
    overlap_range : tuple of float
        Overlap fraction range of a pair.
    pairs_per_cube : int
        Consecutive pairs drawn from a cube before the next one is read.
    seed : int
        Seed of every random choice.
    augment : bool
        Random affine per crop and a random spectral shift of up to ``max_spectral_shift``
        bands per pair.
    max_spectral_shift : int
        Largest spectral shift (bands) of the augmentation.
    read_ahead : bool
        After each :meth:`next_batch`, plan the next batch of the same size and read this
        rank's share of it in one background thread, so the reading overlaps the caller's
        compute. The pairs, and :meth:`state_dict`, are exactly those without it; call
        :meth:`close` (or use the stream as a context manager) to end the thread.
    """

    def __init__(
        self,
        sources: list[SampledCube],
        crop_size: int,
        overlap_range: tuple[float, float],
        pairs_per_cube: int,
        seed: int,
        augment: bool = True,
        max_spectral_shift: int = 2,
        *,
        read_ahead: bool = False,
    ) -> None:
        check_crop_fits(sources, crop_size)
        self.sources = sources
        self.crop_size = crop_size
        self.overlap_range = overlap_range
        self.pairs_per_cube = pairs_per_cube
        self.seed = seed
        self.augment = augment
        self.max_spectral_shift = max_spectral_shift
        self.rng = np.random.default_rng([seed, 1])
        self.epoch = 0
        self.order_position = 0
        self.pairs_from_current = 0
        self.halton_counts = [0] * len(sources)
        self._order = self._epoch_order(0)
        self._halton: qmc.Halton | None = None
        self._halton_cube = -1
        self.read_ahead = read_ahead
        self._executor: ThreadPoolExecutor | None = None  # started by the first read-ahead
        self._ahead: _ReadAhead | None = None

    @classmethod
    def for_config(
        cls, sources: list[SampledCube], data: DataConfig, seed: int, *, read_ahead: bool = False
    ) -> PairStream:
        """The stream a run's ``data`` settings describe (crop size, overlaps, augmentation)."""
        return cls(
            sources,
            data.crop_size,
            (data.overlap_min, data.overlap_max),
            data.pairs_per_cube,
            seed,
            data.augment,
            data.max_spectral_shift,
            read_ahead=read_ahead,
        )

    def _epoch_order(self, epoch: int) -> list[int]:
        return np.random.default_rng([self.seed, 2, epoch]).permutation(len(self.sources)).tolist()

    def _position(self, cube_index: int) -> tuple[float, float]:
        if self._halton_cube != cube_index:
            self._halton = qmc.Halton(
                d=2, scramble=True, seed=np.random.default_rng([self.seed, 3, cube_index])
            )
            self._halton.fast_forward(self.halton_counts[cube_index])
            self._halton_cube = cube_index
        self.halton_counts[cube_index] += 1
        point = self._halton.random(1)[0]
        return float(point[0]), float(point[1])

    def next_pair(self) -> CropPair:
        """Draw the next pair (reads one window of one cube; drops any batch read ahead)."""
        self._discard_read_ahead()
        return gather_pair(*self._plan_next())

    def next_batch(
        self, size: int, rank: int = 0, world_size: int = 1, *, whole: bool = False
    ) -> list[CropPair]:
        """The next ``size`` pairs of the stream, or rank ``rank``'s share of them.

        Data-parallel training splits every batch of the one stream into ``world_size``
        contiguous shares (rank ``r`` takes pairs ``r * size / world_size`` onwards): every rank
        plans all ``size`` pairs, so the stream's state stays that of one process and is the same
        on every rank, but reads only the windows of its own share (all of them with ``whole``).

        Parameters
        ----------
        size : int
            Pairs in the whole batch; a multiple of ``world_size``.
        rank, world_size : int
            This process's rank and the number of processes.
        whole : bool
            Return (and read) the whole batch instead of the share.

        Returns
        -------
        list of CropPair
            ``size`` pairs with ``whole`` (or in one process), else ``size // world_size``.

        Raises
        ------
        Exception
            Whatever reading a window raised, also when the read ran ahead in the background.
        """
        share = batch_share(size, rank, world_size)
        wanted = range(size) if whole else range(share.start, share.stop)
        ahead, self._ahead = self._ahead, None
        if ahead is not None and ahead.size != size:
            # Planned for another batch size: go back to where it started and plan anew.
            ahead.future.cancel()
            self._restore(ahead.state)
            ahead = None
        if ahead is None:
            planned = [self._plan_next() for _ in range(size)]
            read = {}
        else:
            # Planning does not depend on the rank or on ``whole``: only the pairs of this
            # request that were not read ahead are read now.
            planned = ahead.planned
            try:
                read = ahead.future.result()
            except BaseException:
                self._restore(ahead.state)  # the failed batch was not returned: not in the state
                raise
        pairs = [read[index] if index in read else gather_pair(*planned[index]) for index in wanted]
        if self.read_ahead:
            self._start_read_ahead(size, share)
        return pairs

    def _start_read_ahead(self, size: int, share: slice) -> None:
        """Plan the next ``size`` pairs now and read ``share`` of them in the background thread."""
        state = self._state()
        planned = [self._plan_next() for _ in range(size)]
        if self._executor is None:
            self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="dgc-read-ahead")
        indices = range(share.start, share.stop)  # the next batch is most likely a plain share
        future = self._executor.submit(_gather_many, planned, indices)
        self._ahead = _ReadAhead(size, planned, state, future)

    def _discard_read_ahead(self) -> None:
        """Drop the batch read ahead, if any, and rewind the stream to before its planning."""
        ahead, self._ahead = self._ahead, None
        if ahead is not None:
            ahead.future.cancel()  # a read already running just finishes; its pairs are dropped
            self._restore(ahead.state)

    def close(self) -> None:
        """Drop any batch read ahead and end the read-ahead thread (waits for a running read).

        The stream stays usable: a later :meth:`next_batch` with ``read_ahead`` starts a new
        thread (close the stream again after it).
        """
        self._discard_read_ahead()
        executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> PairStream:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def _plan_next(self) -> tuple[SampledCube, np.ndarray, np.ndarray, int, int]:
        """Advance the stream by one pair and return what :func:`gather_pair` reads for it."""
        if self.pairs_from_current >= self.pairs_per_cube:
            self.pairs_from_current = 0
            self.order_position += 1
            if self.order_position >= len(self._order):
                self.epoch += 1
                self.order_position = 0
                self._order = self._epoch_order(self.epoch)
        cube_index = self._order[self.order_position]
        self.pairs_from_current += 1
        source = self.sources[cube_index]
        position = self._position(cube_index)
        coords_a, coords_b = plan_pair(
            source.shape_hw, self.crop_size, self.overlap_range, position, self.rng, self.augment
        )
        shift = 0
        if self.augment and self.max_spectral_shift > 0:
            shift = int(self.rng.integers(-self.max_spectral_shift, self.max_spectral_shift + 1))
        return source, coords_a, coords_b, shift, cube_index

    def state_dict(self) -> dict:
        """JSON-serialisable state: continuing from it draws the same pairs.

        It is the state after the last batch returned: a batch planned ahead is not in it.
        """
        if self._ahead is not None:
            return copy.deepcopy(self._ahead.state)
        return self._state()

    def _state(self) -> dict:
        return {
            "rng": self.rng.bit_generator.state,
            "epoch": self.epoch,
            "order_position": self.order_position,
            "pairs_from_current": self.pairs_from_current,
            "halton_counts": list(self.halton_counts),
        }

    def load_state_dict(self, state: dict) -> None:
        """Restore a state saved by :meth:`state_dict` (dropping any batch read ahead)."""
        if len(state["halton_counts"]) != len(self.sources):
            raise ConfigError(
                f"the saved sampler covers {len(state['halton_counts'])} cubes, the dataset "
                f"has {len(self.sources)}; resume with the same cubes"
            )
        self._discard_read_ahead()
        self._restore(state)

    def _restore(self, state: dict) -> None:
        self.rng.bit_generator.state = state["rng"]
        self.epoch = int(state["epoch"])
        self.order_position = int(state["order_position"])
        self.pairs_from_current = int(state["pairs_from_current"])
        self.halton_counts = [int(v) for v in state["halton_counts"]]
        self._order = self._epoch_order(self.epoch)
        self._halton_cube = -1


@dataclass
class _ReadAhead:
    """A batch planned ahead: its ``size`` plans, the stream's state before planning it, and
    the future of the pairs read in the background (``{index in the batch: pair}``).
    """

    size: int
    planned: list[tuple[SampledCube, np.ndarray, np.ndarray, int, int]]
    state: dict
    future: Future


def _gather_many(planned: list, indices: range) -> dict[int, CropPair]:
    """Read the pairs ``indices`` of a planned batch (the read-ahead thread's work)."""
    return {index: gather_pair(*planned[index]) for index in indices}
