"""Calibration and preparation of cubes: band crop, white/dark reference correction, binning.

A :class:`Preparation` turns a raw :class:`~napari_dgc.io.cube.Cube` into a prepared ``Cube``
(:meth:`Preparation.apply`) whose values are computed lazily, window by window, in this order:

1. **band crop**: only the bands in a wavelength range (``prep.bands``) or an index range
   (``prep.band_indices``) are kept;
2. **reference correction**: ``reflectance = (raw - dark) / (white - dark)``, with the white and
   dark references averaged from rows of reference cubes, one spectrum per column (push-broom
   cameras) or one spectrum for the whole reference;
3. **spatial binning**: blocks of ``N x N`` pixels are averaged into one.

The prepared cube has the same interface as any other cube (``read_window``, ``shape_hw``,
``n_bands``, ``wavelengths``), so training, segmentation and the panels read it through one
code path and see the same prepared pixels. The settings are the ``prep`` group of
:class:`~napari_dgc.config.TrainConfig`; a run stores its references
(:mod:`napari_dgc.run_folder.preparation_file`) so that segmenting with it later applies the very
same correction, whether or not the reference files still exist.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from napari_dgc.config import ReferenceAveraging, parse_span
from napari_dgc.errors import ConfigError, CubeFormatError
from napari_dgc.io.cube import Cube
from napari_dgc.io.lazy import LazyArray

if TYPE_CHECKING:
    from collections.abc import Mapping

    from napari_dgc.config import PrepConfig

#: Reference rows averaged per read (bounds the memory of a tall reference).
_REFERENCE_ROWS_PER_READ = 64


@dataclass(frozen=True)
class Reference:
    """A white or dark reference, averaged from rows of a reference cube.

    Attributes
    ----------
    spectra : numpy.ndarray
        ``(columns, bands)`` float32 over the *raw* bands: one spectrum per column, or a single
        row (``columns == 1``) that applies to every column.
    source : str
        The file (and rows) it was averaged from, for messages.
    """

    spectra: np.ndarray
    source: str


def read_reference(
    path: str | os.PathLike,
    rows: tuple[int, int] | None,
    averaging: ReferenceAveraging | str,
    what: str,
) -> Reference:
    """Average rows of a reference cube into a :class:`Reference`.

    Parameters
    ----------
    path : path-like
        The reference cube (any format :func:`napari_dgc.io.open_cube` reads).
    rows : (int, int) or None
        ``(start, stop)`` rows to average (stop excluded); ``None``: all rows.
    averaging : ReferenceAveraging or str
        ``"columns"``: one spectrum per column; ``"spectrum"``: one spectrum for all pixels.
    what : str
        ``"white"`` or ``"dark"``, for messages.

    Raises
    ------
    CubeFormatError
        The file cannot be read, the rows are outside it, or a value is NaN or infinite; the
        message names the file and the problem.
    """
    from napari_dgc.io import open_cube

    cube = open_cube(path)
    height, width = cube.shape_hw
    start, stop = (0, height) if rows is None else rows
    if stop > height:
        raise CubeFormatError(
            f"{cube.path}: the {what} reference rows {start}:{stop} lie outside its {height} rows"
        )
    total = np.zeros((width, cube.n_bands), dtype=np.float64)
    for top in range(start, stop, _REFERENCE_ROWS_PER_READ):
        bottom = min(stop, top + _REFERENCE_ROWS_PER_READ)
        window = cube.read_window(slice(top, bottom), slice(0, width))
        if not np.isfinite(window).all():
            row, col, band = np.argwhere(~np.isfinite(window))[0]
            raise CubeFormatError(
                f"{cube.path}: the {what} reference holds a NaN or infinite value "
                f"(row {top + row}, column {col}, band {band})"
            )
        total += window.sum(axis=0, dtype=np.float64)
    spectra = total / (stop - start)
    if ReferenceAveraging(averaging) == ReferenceAveraging.SPECTRUM:
        spectra = spectra.mean(axis=0, keepdims=True)
    source = f"{cube.path}" + ("" if rows is None else f" (rows {start}:{stop})")
    return Reference(spectra.astype(np.float32), source)


@dataclass(frozen=True)
class Preparation:
    """What is done to every cube before the model sees it (see the module docstring).

    Build it with :meth:`from_settings` (reads the reference files) or, for a trained run,
    with :func:`napari_dgc.run_folder.preparation_file.run_preparation` (the run's stored
    references).

    Attributes
    ----------
    bands_nm : (float, float) or None
        Keep the bands whose wavelength lies in this closed range.
    band_indices : (int, int) or None
        Keep bands ``start .. stop - 1``.
    binning : int
        Side of the pixel blocks averaged into one (1: none).
    white, dark : Reference or None
        The references of the correction.
    """

    bands_nm: tuple[float, float] | None = None
    band_indices: tuple[int, int] | None = None
    binning: int = 1
    white: Reference | None = None
    dark: Reference | None = None

    @classmethod
    def from_settings(
        cls, prep: PrepConfig, references: Mapping[str, Reference] | None = None
    ) -> Preparation:
        """The preparation the ``prep`` settings describe.

        Parameters
        ----------
        prep : PrepConfig
            The settings (``TrainConfig.prep``).
        references : mapping of str to Reference, optional
            ``"white"``/``"dark"`` references to use instead of reading the settings' files
            (a run's stored references).

        Raises
        ------
        DGCError
            A reference file that cannot be read or holds NaN values, or a reference the
            settings name that ``references`` lacks.
        """
        loaded: dict[str, Reference | None] = {}
        for what in ("white", "dark"):
            file = getattr(prep, what)
            if file is None:
                loaded[what] = None
            elif references is not None:
                if what not in references:
                    raise CubeFormatError(f"the {what} reference {file} is not stored with the run")
                loaded[what] = references[what]
            else:
                rows_text = getattr(prep, f"{what}_rows")
                rows = None if rows_text is None else parse_span(rows_text, f"prep.{what}_rows", integer=True)
                loaded[what] = read_reference(file, rows, prep.reference, what)
        return cls(
            bands_nm=None if prep.bands is None else parse_span(prep.bands, "prep.bands", integer=False),
            band_indices=(
                None
                if prep.band_indices is None
                else parse_span(prep.band_indices, "prep.band_indices", integer=True)
            ),
            binning=prep.binning,
            white=loaded["white"],
            dark=loaded["dark"],
        )

    @property
    def is_identity(self) -> bool:
        """Whether cubes are used as they are (no setting of the ``prep`` group given)."""
        return (
            self.bands_nm is None
            and self.band_indices is None
            and self.binning == 1
            and self.white is None
            and self.dark is None
        )

    def apply(self, cube: Cube | np.ndarray, name: str = "array") -> Cube | np.ndarray:
        """The prepared cube of ``cube`` (``cube`` itself when there is nothing to do).

        Parameters
        ----------
        cube : Cube or numpy.ndarray
            An opened cube, or a band-last ``(rows, cols, bands)`` array.
        name : str
            Name of an array cube in messages.

        Returns
        -------
        Cube or numpy.ndarray
            A :class:`Cube` whose windows are prepared when they are read; its ``path``,
            ``format`` and ``provenance`` are the raw cube's (``provenance["preparation"]``
            says what was done).

        Raises
        ------
        DGCError
            A band range outside the cube, references of another band count or width, a
            white reference not above the dark one, or a binning larger than the cube; the
            message names the file and the problem.
        """
        if self.is_identity:
            return cube
        if isinstance(cube, np.ndarray):
            if cube.ndim != 3:
                raise CubeFormatError(
                    f"{name}: a cube array must be (rows, cols, bands), got shape {cube.shape}"
                )
            cube = Cube(data=cube, band_axis=2, wavelengths=None, path=Path(name), format="array")
        bands = self._band_selection(cube)
        offset, gain = self._correction(cube, bands)
        rows, cols = cube.shape_hw
        if self.binning > min(rows, cols):
            raise ConfigError(
                f"{cube.path}: binning {self.binning} x {self.binning} is larger than the cube "
                f"({rows} x {cols} pixels)"
            )
        data = PreparedArray(cube, bands, offset, gain, self.binning)
        return Cube(
            data=data,
            band_axis=2,
            wavelengths=None if cube.wavelengths is None else cube.wavelengths[bands],
            path=cube.path,
            format=cube.format,
            provenance={**cube.provenance, "preparation": self.describe()},
        )

    def describe(self) -> dict:
        """JSON facts of what is done (for provenance)."""
        return {
            "bands_nm": None if self.bands_nm is None else list(self.bands_nm),
            "band_indices": None if self.band_indices is None else list(self.band_indices),
            "white": None if self.white is None else self.white.source,
            "dark": None if self.dark is None else self.dark.source,
            "binning": self.binning,
        }

    def _band_selection(self, cube: Cube) -> slice:
        """The raw bands kept, as a slice."""
        n_bands = cube.n_bands
        if self.band_indices is not None:
            start, stop = self.band_indices
            if stop > n_bands:
                raise ConfigError(
                    f"{cube.path}: prep.band_indices {start}:{stop} lies outside its {n_bands} bands"
                )
            return slice(start, stop)
        if self.bands_nm is None:
            return slice(0, n_bands)
        if cube.wavelengths is None:
            raise ConfigError(
                f"{cube.path}: the cube has no wavelengths, so a band range in nm cannot be "
                "applied; give the range by index (prep.band_indices)"
            )
        low, high = self.bands_nm
        kept = np.flatnonzero((cube.wavelengths >= low) & (cube.wavelengths <= high))
        wavelengths = cube.wavelengths
        if kept.size == 0:
            raise ConfigError(
                f"{cube.path}: no band lies in {low:g}-{high:g} nm "
                f"(the cube has {wavelengths.min():.1f}-{wavelengths.max():.1f} nm)"
            )
        if kept[-1] - kept[0] + 1 != kept.size:
            raise ConfigError(
                f"{cube.path}: the bands in {low:g}-{high:g} nm are not contiguous (wavelengths "
                "not in order); give the range by index (prep.band_indices)"
            )
        return slice(int(kept[0]), int(kept[-1]) + 1)

    def _correction(self, cube: Cube, bands: slice) -> tuple[np.ndarray | None, np.ndarray | None]:
        """``(offset, gain)`` over the kept bands such that prepared = (raw - offset) * gain.

        Each is ``(columns, bands)`` (one row applies to every column) or ``None``.
        """
        spectra = {}
        for what, reference in (("white", self.white), ("dark", self.dark)):
            if reference is None:
                continue
            columns, n_bands = reference.spectra.shape
            if n_bands != cube.n_bands:
                raise CubeFormatError(
                    f"{reference.source}: the {what} reference has {n_bands} bands, the cube "
                    f"{cube.path} has {cube.n_bands}"
                )
            if columns not in (1, cube.shape_hw[1]):
                raise CubeFormatError(
                    f"{reference.source}: the {what} reference is {columns} columns wide, the cube "
                    f"{cube.path} {cube.shape_hw[1]}; use a reference as wide as the cube or "
                    "prep.reference=spectrum"
                )
            spectra[what] = reference.spectra[:, bands]
        offset = spectra.get("dark")
        if "white" not in spectra:
            return offset, None
        span = spectra["white"] - (0.0 if offset is None else offset)
        if not (span > 0).all():
            column, band = np.argwhere(~(span > 0))[0]
            where = f"band {bands.start + band}"
            if cube.wavelengths is not None:
                where += f" ({cube.wavelengths[bands.start + band]:.1f} nm)"
            if span.shape[0] > 1:
                where += f", column {column}"
            against = "the dark reference" if offset is not None else "zero"
            raise CubeFormatError(
                f"{self.white.source}: the white reference is not above {against} at {where} "
                "(reflectance would be undefined)"
            )
        return offset, (1.0 / span).astype(np.float32)


class PreparedArray(LazyArray):
    """A band-last ``(rows, cols, bands)`` float32 view of a raw cube, prepared when read.

    Parameters
    ----------
    cube : Cube
        The raw cube.
    bands : slice
        Raw bands kept.
    offset, gain : numpy.ndarray or None
        ``(columns or 1, kept bands)``: prepared = (raw - offset) * gain, per raw column.
    binning : int
        Side of the averaged pixel blocks.
    """

    def __init__(
        self,
        cube: Cube,
        bands: slice,
        offset: np.ndarray | None,
        gain: np.ndarray | None,
        binning: int,
    ) -> None:
        self.cube = cube
        self.bands = bands
        self.offset = offset
        self.gain = gain
        self.binning = binning
        rows, cols = cube.shape_hw
        self.shape = (rows // binning, cols // binning, bands.stop - bands.start)
        self.dtype = np.dtype(np.float32)

    def _read(self, selection: tuple) -> np.ndarray:
        row_sel, col_sel, band_sel = selection
        # Read the raw rows and columns spanning the selection, prepare them, then pick.
        (top, bottom), (left, right) = _span(row_sel, self.shape[0]), _span(col_sel, self.shape[1])
        if bottom <= top or right <= left:
            block = np.empty((max(0, bottom - top), max(0, right - left), self.shape[2]), np.float32)
        else:
            block = self.window(top, bottom, left, right)
        return block[_relative(row_sel, top)][:, _relative(col_sel, left)][:, :, band_sel]

    def window(self, top: int, bottom: int, left: int, right: int) -> np.ndarray:
        """Prepared rows ``top:bottom`` and columns ``left:right`` (binned pixels), all kept bands."""
        b = self.binning
        columns = slice(left * b, right * b)
        block = self.cube.read_window(slice(top * b, bottom * b), columns)[:, :, self.bands]
        if self.offset is not None:
            block = block - _columns(self.offset, columns)  # a new array, then corrected in place
            if self.gain is not None:
                block *= _columns(self.gain, columns)
        elif self.gain is not None:
            block = block * _columns(self.gain, columns)
        if b > 1:
            block = _block_mean(block, b)
        return np.ascontiguousarray(block, dtype=np.float32)


def _columns(values: np.ndarray, columns: slice) -> np.ndarray:
    """The per-column ``values`` of raw ``columns`` (a single row applies to all)."""
    return values if values.shape[0] == 1 else values[columns]


def _block_mean(block: np.ndarray, b: int) -> np.ndarray:
    """Mean of the ``b x b`` pixel blocks of a ``(rows, cols, bands)`` block whose sides are
    multiples of ``b`` (strided adds: faster than a mean over reshaped axes).
    """
    total = block[0::b, 0::b].copy()
    for i in range(b):
        for j in range(b):
            if i or j:
                total += block[i::b, j::b]
    total *= np.float32(1.0 / (b * b))
    return total


def _span(item: slice | np.ndarray, length: int) -> tuple[int, int]:
    """The smallest ``(start, stop)`` range holding every index a normalised selection picks
    (:class:`~napari_dgc.io.lazy.LazyArray` gives slices with a positive step, else index arrays).
    """
    if isinstance(item, slice):
        count = len(range(item.start, item.stop, item.step))
        return (item.start, item.start + (count - 1) * item.step + 1) if count else (0, 0)
    return (int(item.min()), int(item.max()) + 1) if len(item) else (0, 0)


def _relative(item: slice | np.ndarray, start: int) -> slice | np.ndarray:
    """A normalised selection shifted so that index ``start`` becomes 0."""
    if isinstance(item, slice):
        return slice(item.start - start, max(0, item.stop - start), item.step)
    return np.asarray(item, dtype=np.intp) - start
