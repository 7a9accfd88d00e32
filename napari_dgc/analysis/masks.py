"""Ground-truth masks: reading PNG/TIFF/NPY rasters and LabelMe polygons, matching them to cubes.

Mask convention (the one of class maps too; ``docs/formats.md``, "Label maps")
---------------------------------------------------------------------------
A mask is a ``(rows, cols)`` integer map of the cube's pixels:

* values ``0 .. 254`` are classes, any number of them, named by a *legend*: the legend file
  ``<stem>.legend.json`` next to the mask (written by napari-dgc for masks and class maps, with
  names and colours), else one given by the caller, else the default names
  (``0 background, 1 tissue, 2 lesion``, the leaf data's convention, and ``class N`` beyond);
* value ``0`` is the pixels of no named class: "background" in a mask, "unassigned" in a class
  map. A class map read as a mask (its legend says ``"kind": "classes"``) therefore scores its
  named classes ``1, 2, ...`` and leaves its unassigned pixels out (they become ignored);
* :data:`IGNORE_VALUE` (255) marks unlabelled pixels, which every score leaves out;
* with a legend (given or from a file), a value it does not name is an error
  (:class:`~napari_dgc.errors.MaskError` naming the file and the values), never silently
  dropped; so is any value outside ``0..255``.

A binary 0/255 image therefore does *not* mean background/tissue: 255 means "ignore". Save such
masks as 0/1, or pass a legend such as ``{0: "background", 255: "tissue"}`` (then pixels are
not ignored).

LabelMe JSON files hold ``imageHeight``, ``imageWidth`` and ``shapes`` (``label``, ``points``
``[[x, y], ...]``, ``shape_type`` ``polygon`` or ``rectangle``). Pixels covered by no shape are
background (value 0); shapes are painted in file order, so a lesion drawn after its leaf wins.
A label must be a legend name (case-insensitive) or ``"ignore"``.

Mask files come from users, so their size is bounded before anything is decoded: a label
image or LabelMe canvas may have at most :data:`MAX_MASK_PIXELS` pixels and a LabelMe file at
most :data:`MAX_LABELME_POINTS` points in all (JSON is read with
:func:`napari_dgc.safe_json.read_json`).

Masks are matched to cubes by file-name stem: ``leaf_01.png``, ``leaf_01_mask.png``,
``leaf_01-gt.tif`` or ``leaf_01.json`` all belong to the cube ``leaf_01.hdr``.
"""

from __future__ import annotations

import math
import os
import stat
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_dgc.analysis.classes import DEFAULT_CLASS_NAMES, MAX_CLASSES, default_class_color
from napari_dgc.errors import MaskError
from napari_dgc.safe_json import read_json

IGNORE_VALUE = 255
DEFAULT_LEGEND: dict[int, str] = dict(enumerate(DEFAULT_CLASS_NAMES))
#: Largest class value of a mask or class map (255 is "ignore").
MAX_CLASS_VALUE = IGNORE_VALUE - 1
#: Suffix of the legend file next to a label map: ``leaf_mask.png`` → ``leaf_mask.legend.json``.
LEGEND_SUFFIX = ".legend.json"
RASTER_SUFFIXES = (".png", ".tif", ".tiff", ".npy")
MASK_SUFFIXES = RASTER_SUFFIXES + (".json",)
#: Stem endings that mark a mask of the cube with the remaining stem.
MASK_STEM_SUFFIXES = ("_mask", "-mask", ".mask", "_gt", "-gt", "_labels", "-labels", "_label", "-label")
#: Largest label image or LabelMe canvas, in pixels (16384 x 16384); larger ones are refused
#: before they are decoded or allocated.
MAX_MASK_PIXELS = 2**28
#: Most polygon/rectangle points a LabelMe file may hold in all (filling a polygon costs
#: pixels x points; hand-drawn files hold a few thousand).
MAX_LABELME_POINTS = 100_000


@dataclass
class Mask:
    """A ground-truth class map of one cube.

    Attributes
    ----------
    values : np.ndarray
        ``(rows, cols)`` int32: legend values, or :data:`IGNORE_VALUE` for unlabelled pixels.
    legend : dict of int to str
        Class name of each value.
    source : pathlib.Path, str or None
        File the mask was read from, or a description such as a napari layer name.
    """

    values: np.ndarray
    legend: dict[int, str] | None = None
    source: Path | str | None = None
    colors: dict[int, str] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.values = np.asarray(self.values)
        if self.legend is None:
            validate_mask_values(self.values, None, source=self.source)
            self.legend = default_legend(np.unique(self.values))
        validate_mask_values(self.values, self.legend, source=self.source)
        self.values = self.values.astype(np.int32, copy=False)
        self.colors = {int(v): c for v, c in self.colors.items() if int(v) in self.legend and c}


def default_legend(values: Iterable[int]) -> dict[int, str]:
    """Names of mask values without a legend: :data:`DEFAULT_LEGEND`, then ``class N``.

    Every value ``0..254`` among ``values`` is a class (:data:`IGNORE_VALUE` is left out);
    ``0, 1, 2`` are always named (``background``, ``tissue``, ``lesion``), present or not.
    """
    present = sorted({int(v) for v in values} - {IGNORE_VALUE} - set(DEFAULT_LEGEND))
    return {**DEFAULT_LEGEND, **{v: f"class {v}" for v in present}}


def legend_colors(legend: Mapping[int, str], colors: Mapping[int, str] | None = None) -> dict[int, str]:
    """A ``"#rrggbb"`` colour for every legend value: ``colors`` where given, else by class name.

    Named like the class colours of a mapping (:func:`~napari_dgc.analysis.classes.default_class_color`),
    so a mask's "background" is grey in the merge panel, the mask layer and the saved legend.
    """
    colors = dict(colors or {})
    return {
        value: colors.get(value) or default_class_color(name, index)
        for index, (value, name) in enumerate(sorted(legend.items()))
    }


def _describe(source: str | os.PathLike | None) -> str:
    return str(source) if source is not None else "the mask"


def validate_mask_values(
    values: np.ndarray,
    legend: Mapping[int, str] | None,
    *,
    shape: Sequence[int] | None = None,
    source: str | os.PathLike | None = None,
) -> None:
    """Check a mask's dimensionality, dtype, shape and values.

    Parameters
    ----------
    values : np.ndarray
        Candidate mask.
    legend : mapping of int to str or None
        Allowed class values; ``None`` allows every class value ``0..254``.
    shape : sequence of int, optional
        The cube's ``(rows, cols)``; the mask must match it.
    source : path-like, optional
        File named in error messages.

    Raises
    ------
    MaskError
        For a non-2-D or non-integer mask, a shape different from the cube's, or values that
        are neither legend values nor :data:`IGNORE_VALUE`.
    """
    where = _describe(source)
    if values.ndim != 2:
        raise MaskError(f"{where}: a mask must be a 2-D image, got shape {values.shape}")
    if values.dtype == bool:
        values = values.astype(np.uint8)
    if not np.issubdtype(values.dtype, np.integer):
        if not np.issubdtype(values.dtype, np.floating) or not np.all(np.mod(values, 1) == 0):
            raise MaskError(f"{where}: mask values must be integers, got dtype {values.dtype}")
    if shape is not None and tuple(values.shape) != tuple(shape):
        raise MaskError(f"{where}: mask shape {tuple(values.shape)} differs from the cube's {tuple(shape)}")
    present = np.unique(values)
    if legend is None:
        outside = [v.item() for v in present if not 0 <= v.item() <= IGNORE_VALUE]
        if outside:
            shown = ", ".join(str(v) for v in outside[:10]) + (" ..." if len(outside) > 10 else "")
            raise MaskError(
                f"{where}: mask value(s) {shown} out of range; classes are 0..{MAX_CLASS_VALUE} "
                f"and {IGNORE_VALUE} means ignore"
            )
        return
    allowed = set(legend) | {IGNORE_VALUE}
    unknown = [v.item() for v in present if v.item() not in allowed]
    if unknown:
        shown = ", ".join(str(v) for v in unknown[:10]) + (" ..." if len(unknown) > 10 else "")
        raise MaskError(
            f"{where}: unknown mask value(s) {shown}; allowed are "
            f"{', '.join(f'{v} ({n})' for v, n in sorted(legend.items()))} and {IGNORE_VALUE} (ignore)"
        )


def read_label_image(path: str | os.PathLike) -> np.ndarray:
    """Read a single-channel integer image (PNG, TIFF or NPY) without any interpretation.

    Colour PNG/TIFF files whose three channels are equal (grey saved as RGB) are accepted.

    Raises
    ------
    MaskError
        For an unsupported suffix, an unreadable file or a real colour image.
    """
    path = Path(path)
    suffix = path.suffix.lower()
    require_regular_file(path, MaskError)
    if suffix == ".npy":
        from napari_dgc.io.npy import read_npy_header

        # The header is checked against the file first, so np.load allocates no more than
        # the file holds (a hostile shape would otherwise overflow or exhaust memory).
        header = read_npy_header(path, error=MaskError)
        _check_pixels(path, header.shape)
        array = np.load(path, allow_pickle=False)
    elif suffix in (".tif", ".tiff"):
        array = _read_tiff(path)
    elif suffix == ".png":
        array = _read_png(path)
    else:
        raise MaskError(f"{path}: unsupported label image type {suffix!r}; use PNG, TIFF or NPY")
    # Single-channel images may carry a length-1 channel axis (first or last).
    if array.ndim == 3 and array.shape[-1] == 1:
        array = array[..., 0]
    elif array.ndim == 3 and array.shape[0] == 1:
        array = array[0]
    if array.ndim == 3 and array.shape[-1] in (3, 4):
        colour = array[..., :3]
        if not (
            np.array_equal(colour[..., 0], colour[..., 1]) and np.array_equal(colour[..., 0], colour[..., 2])
        ):
            raise MaskError(f"{path}: a colour image is not a label map; save one integer value per pixel")
        array = colour[..., 0]
    return array


def require_regular_file(path: Path, error: type[MaskError] = MaskError) -> None:
    """Refuse a path that is missing or not a regular file (a FIFO would block the reader).

    Raises
    ------
    MaskError
        Or ``error``: naming the file.
    """
    try:
        mode = path.stat().st_mode
    except FileNotFoundError:
        raise error(f"{path}: no such file") from None
    except OSError as failure:
        raise error(f"{path}: cannot be read ({failure.strerror or failure})") from None
    if not stat.S_ISREG(mode):
        raise error(f"{path}: not a regular file (a folder, FIFO, socket or device); not read")


def _check_pixels(path: Path, shape: Sequence[int]) -> None:
    pixels = math.prod(int(n) for n in shape[:2]) if len(shape) >= 2 else math.prod(shape)
    if pixels > MAX_MASK_PIXELS or math.prod(shape) > 4 * MAX_MASK_PIXELS:
        raise MaskError(
            f"{path}: a {'x'.join(map(str, shape))} image is larger than the {MAX_MASK_PIXELS} pixels "
            "a label image may have"
        )


def _read_tiff(path: Path) -> np.ndarray:
    import tifffile

    try:
        with tifffile.TiffFile(path) as tif:
            series = tif.series[0]
            _check_pixels(path, series.shape)
            return series.asarray()
    except MaskError:
        raise
    except (ValueError, OSError, IndexError, KeyError, EOFError) as error:  # TiffFileError is a ValueError
        raise MaskError(f"{path}: cannot read the image ({error})") from None


def _read_png(path: Path) -> np.ndarray:
    from PIL import Image

    try:
        # Pillow refuses a header claiming more than ~179M pixels (DecompressionBombError).
        with Image.open(path) as image:
            _check_pixels(path, (image.height, image.width))
            # Palette PNGs hold indices; convert nothing so the indices are the values.
            return np.asarray(image)
    except MaskError:
        raise
    except (OSError, ValueError, Image.DecompressionBombError) as error:
        raise MaskError(f"{path}: cannot read the image ({error})") from None


def read_mask(
    path: str | os.PathLike,
    *,
    shape: Sequence[int] | None = None,
    legend: Mapping[int, str] | None = None,
) -> Mask:
    """Read a ground-truth mask from PNG, TIFF, NPY or a LabelMe JSON file.

    Parameters
    ----------
    path : path-like
        Mask file.
    shape : sequence of int, optional
        The cube's ``(rows, cols)``; a mask (or LabelMe image size) that differs is an error.
    legend : mapping of int to str, optional
        Value → class name. Default: the legend file next to the mask
        (:func:`read_label_legend`, which also gives the colours), else every value ``0..254``
        present, named by :func:`default_legend` (LabelMe files: :data:`DEFAULT_LEGEND`).

    Returns
    -------
    Mask

    Raises
    ------
    MaskError
        See :func:`validate_mask_values`, :func:`read_label_legend` and
        :func:`rasterize_labelme`.
    """
    path = Path(path)
    if not path.exists():
        raise MaskError(f"{path}: no such mask file")
    require_regular_file(path)
    if path.suffix.lower() == ".json":
        legend = dict(DEFAULT_LEGEND if legend is None else legend)
        values = rasterize_labelme(path, legend=legend, shape=shape)
        return Mask(values=values, legend=legend, source=path)
    values = read_label_image(path)
    colors: dict[int, str] = {}
    legend_file = label_legend_path(path)
    if legend_file.exists():
        named, colors, unassigned = read_label_legend(legend_file)
        if unassigned is not None:
            # A class map: its unassigned pixels are no ground truth; they are left out.
            values = np.where(values == unassigned, IGNORE_VALUE, values)
        legend = dict(named if legend is None else legend)
    elif legend is not None:
        legend = dict(legend)
    validate_mask_values(values, legend, shape=shape, source=path)
    return Mask(values=values, legend=legend, source=path, colors=colors)


def label_legend_path(path: str | os.PathLike) -> Path:
    """The legend file of a label map: ``<stem>.legend.json`` next to it."""
    path = Path(path)
    return path.with_name(path.stem + LEGEND_SUFFIX)


def read_label_legend(path: str | os.PathLike) -> tuple[dict[int, str], dict[int, str], int | None]:
    """Read a legend file written with a mask or class map (``napari-dgc segment``, File ▸ Save).

    Parameters
    ----------
    path : path-like
        The ``<stem>.legend.json`` file: ``{"kind": ..., "values": [{"value", "name", "color"},
        ...]}``.

    Returns
    -------
    names : dict of int to str
        Class name of each value (``0..254``).
    colors : dict of int to str
        ``"#rrggbb"`` of each value that has one.
    unassigned : int or None
        For a class map (``"kind": "classes"``), the value of its unassigned pixels (0), which
        a mask leaves out; else ``None``.

    Raises
    ------
    MaskError
        For a file that is not such a legend, a cluster-map legend (not ground truth), values
        outside ``0..254``, repeated values or names, or malformed names or colours.
    """
    import re

    path = Path(path)
    document = read_json(path, error=MaskError, what="legend file")
    if not isinstance(document, dict) or not isinstance(document.get("values"), list):
        raise MaskError(f"{path}: not a label-map legend (needs a 'values' list)")
    kind = document.get("kind")
    if kind == "clusters":
        raise MaskError(
            f"{path}: the legend of a cluster map; a mask needs classes (merge the clusters into "
            "classes first, e.g. napari-dgc segment --classes)"
        )
    entries = document["values"]
    if len(entries) > IGNORE_VALUE + 1:
        raise MaskError(f"{path}: {len(entries)} legend entries; at most {MAX_CLASSES + 1} classes")
    names: dict[int, str] = {}
    colors: dict[int, str] = {}
    unassigned = None
    for number, entry in enumerate(entries):
        value = entry.get("value") if isinstance(entry, dict) else None
        name = entry.get("name") if isinstance(entry, dict) else None
        color = entry.get("color") if isinstance(entry, dict) else None
        if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= IGNORE_VALUE:
            raise MaskError(f"{path}: legend entry {number} has value {value!r}; use 0..{IGNORE_VALUE}")
        if not isinstance(name, str) or not name.strip():
            raise MaskError(f"{path}: legend entry {number} (value {value}) has no name")
        if color is not None and not (isinstance(color, str) and re.fullmatch(r"#[0-9a-fA-F]{6}", color)):
            raise MaskError(f"{path}: legend entry {number} has colour {color!r}; use '#rrggbb' or null")
        if value == IGNORE_VALUE:
            continue  # "ignore" is the convention's, whatever the file calls it
        if kind == "classes" and value == 0:
            unassigned = 0
            continue
        if value in names or name.strip().lower() in {n.lower() for n in names.values()}:
            raise MaskError(f"{path}: legend entry {number} repeats value {value} or name {name!r}")
        names[value] = name.strip()
        if color is not None:
            colors[value] = color
    if not names:
        raise MaskError(f"{path}: the legend names no class")
    return names, colors, unassigned


def rasterize_labelme(
    path: str | os.PathLike,
    *,
    legend: Mapping[int, str] | None = None,
    shape: Sequence[int] | None = None,
) -> np.ndarray:
    """Paint a LabelMe file's polygons and rectangles into a mask.

    Parameters
    ----------
    path : path-like
        LabelMe JSON file.
    legend : mapping of int to str, optional
        Value → class name; shape labels are looked up by name (case-insensitive).
    shape : sequence of int, optional
        The cube's ``(rows, cols)``; the file's ``imageHeight``/``imageWidth`` must match.

    Returns
    -------
    np.ndarray
        ``(imageHeight, imageWidth)`` int32 mask, 0 where no shape lies.

    Raises
    ------
    MaskError
        For a file that is not LabelMe JSON, an image size different from ``shape``, an
        unknown label or an unsupported shape type.
    """
    path = Path(path)
    legend = dict(DEFAULT_LEGEND if legend is None else legend)
    document = read_json(path, error=MaskError, what="LabelMe file")
    not_labelme = MaskError(f"{path}: not a LabelMe file (needs imageHeight, imageWidth and shapes)")
    if not isinstance(document, dict):
        raise not_labelme
    try:
        height, width = _whole_number(document["imageHeight"]), _whole_number(document["imageWidth"])
        shapes = document["shapes"]
    except (KeyError, TypeError, ValueError, OverflowError):
        raise not_labelme from None
    if not isinstance(shapes, list):
        raise not_labelme
    if height < 1 or width < 1 or height * width > MAX_MASK_PIXELS:
        raise MaskError(
            f"{path}: the LabelMe image size {height}x{width} is not between 1x1 and {MAX_MASK_PIXELS} pixels"
        )
    if shape is not None and (height, width) != tuple(shape):
        raise MaskError(
            f"{path}: the LabelMe file is for a {height}x{width} image, but the cube is {shape[0]}x{shape[1]}"
        )
    value_of = {name.strip().lower(): value for value, name in legend.items()}
    value_of.setdefault("ignore", IGNORE_VALUE)
    polygons = [_labelme_polygon(path, number, entry, value_of) for number, entry in enumerate(shapes)]
    # LabelMe points are (x, y); painted as (row, col).
    return _fill_polygons([(points[:, ::-1], value) for points, value in polygons], (height, width), 0, path)


def _fill_polygons(
    polygons: Sequence[tuple[np.ndarray, int]], shape: Sequence[int], outside: int, source: object
) -> np.ndarray:
    """Paint ``(points (n, 2) row/col, value)`` polygons in order over ``outside`` (int32 mask).

    Raises
    ------
    MaskError
        If the polygons hold more than :data:`MAX_LABELME_POINTS` points in all.
    """
    n_points = sum(len(points) for points, _ in polygons)
    if n_points > MAX_LABELME_POINTS:
        raise MaskError(f"{source}: {n_points} points in all; at most {MAX_LABELME_POINTS} are rasterized")
    from skimage.draw import polygon as fill_polygon

    mask = np.full(tuple(shape), outside, dtype=np.int32)
    for points, value in polygons:
        rows, cols = fill_polygon(points[:, 0], points[:, 1], shape=tuple(shape))
        mask[rows, cols] = value
    return mask


#: Shape types :func:`mask_from_shapes` fills (napari's names; lines and paths enclose nothing).
AREA_SHAPE_TYPES = ("polygon", "rectangle", "ellipse")
#: Points an ellipse is drawn with.
_ELLIPSE_POINTS = 72


@dataclass(frozen=True)
class DrawnShape:
    """A shape drawn over a cube (e.g. in a napari Shapes layer), in the cube's pixel coordinates.

    Attributes
    ----------
    kind : str
        One of :data:`AREA_SHAPE_TYPES`. A rectangle or ellipse is given by the four corners of
        its (possibly rotated) bounding box, in order, as napari stores them.
    points : np.ndarray
        ``(n, 2)`` float ``(row, col)`` vertices.
    label : str, int or None
        Its class: a class name (case-insensitive; ``"ignore"`` for :data:`IGNORE_VALUE`), a
        mask value, or ``None`` for "by order" (the ``i``-th shape gets value ``i + 1``).
    """

    kind: str
    points: np.ndarray
    label: str | int | None = None


def _shape_polygon(number: int, shape: DrawnShape, source: object) -> np.ndarray:
    """The (row, col) polygon that a drawn shape covers."""
    points = np.asarray(shape.points, dtype=np.float64)
    if shape.kind not in AREA_SHAPE_TYPES:
        raise MaskError(
            f"{source}: shape {number} is a {shape.kind}, which encloses no pixels; draw "
            f"{', '.join(AREA_SHAPE_TYPES)}"
        )
    if points.ndim != 2 or points.shape[1] != 2 or not np.isfinite(points).all():
        raise MaskError(f"{source}: shape {number} needs finite (row, col) vertices")
    if len(points) < 3 or (shape.kind != "polygon" and len(points) != 4):
        raise MaskError(f"{source}: shape {number} ({shape.kind}) has {len(points)} vertices")
    if shape.kind == "ellipse":
        # Inscribed in the (rotated) box: centre plus the half edges as conjugate semi-axes.
        centre = points.mean(axis=0)
        half_u, half_v = (points[1] - points[0]) / 2, (points[2] - points[1]) / 2
        angles = np.linspace(0.0, 2 * np.pi, _ELLIPSE_POINTS, endpoint=False)[:, None]
        return centre + np.cos(angles) * half_u + np.sin(angles) * half_v
    return points


def mask_from_shapes(
    shapes: Sequence[DrawnShape],
    shape: Sequence[int],
    *,
    legend: Mapping[int, str] | None = None,
    source: str | os.PathLike | None = None,
) -> Mask:
    """Rasterise drawn polygons, rectangles and ellipses into a mask.

    Shapes are painted in order (a lesion drawn after its leaf wins). Pixels under no shape
    are :data:`IGNORE_VALUE`: a few drawn regions score only what was drawn, the usual way of
    annotating with shapes (draw a "background" shape under the others to label the rest).
    LabelMe files, whose convention is background there, go through :func:`rasterize_labelme`.

    Parameters
    ----------
    shapes : sequence of DrawnShape
        The shapes, in the mask's ``(row, col)`` pixel coordinates.
    shape : sequence of int
        ``(rows, cols)`` of the mask.
    legend : mapping of int to str, optional
        Value → class name to start from (default :data:`DEFAULT_LEGEND`). A shape's class
        name missing from it gets the next free value; a value missing from it is named by
        :func:`default_legend`.
    source : str or path-like, optional
        Where the shapes come from (a layer name), for messages and :attr:`Mask.source`.

    Returns
    -------
    Mask
        Its legend names every value it holds.

    Raises
    ------
    MaskError
        For a shape that encloses nothing (lines, paths) or has bad vertices, a value outside
        ``0..255``, more than :data:`MAX_CLASS_VALUE` classes, or too many points.
    """
    source = source if source is not None else "the shapes"
    legend = dict(DEFAULT_LEGEND if legend is None else legend)
    value_of = {name.strip().lower(): value for value, name in legend.items()}
    polygons = []
    for number, drawn in enumerate(shapes):
        label = drawn.label
        if isinstance(label, str) and label.strip().lstrip("-").isdigit():
            label = int(label)  # a features column of numbers read as text
        if label is None or isinstance(label, (int, np.integer)):
            value = number + 1 if label is None else int(label)
            if not 0 <= value <= IGNORE_VALUE:
                raise MaskError(f"{source}: shape {number} has class value {value}; use 0..{IGNORE_VALUE}")
            if value != IGNORE_VALUE and value not in legend:
                legend[value] = default_legend([value])[value]
                value_of.setdefault(legend[value].lower(), value)
        else:
            name = str(label).strip()
            if name.lower() == "ignore":
                value = IGNORE_VALUE
            elif name.lower() in value_of:
                value = value_of[name.lower()]
            elif not name:
                raise MaskError(f"{source}: shape {number} has an empty class name")
            else:
                value = max((v for v in legend if v != IGNORE_VALUE), default=0) + 1
                if value > MAX_CLASS_VALUE:
                    raise MaskError(
                        f"{source}: shape {number} ({name!r}) needs a value past {MAX_CLASS_VALUE}"
                    )
                legend[value], value_of[name.lower()] = name, value
        polygons.append((_shape_polygon(number, drawn, source), value))
    values = _fill_polygons(polygons, shape, IGNORE_VALUE, source)
    return Mask(values=values, legend=legend, source=str(source))


def _whole_number(value: object) -> int:
    """An image size from JSON: an integer (or a float with no fraction), never a bool."""
    if isinstance(value, bool) or not isinstance(value, (int, float)) or value != int(value):
        raise ValueError(f"{value!r} is not a whole number")
    return int(value)


def _is_xy(point: object) -> bool:
    return (
        isinstance(point, list)
        and len(point) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in point)
    )


def _labelme_polygon(
    path: Path, number: int, entry: object, value_of: Mapping[str, int]
) -> tuple[np.ndarray, int]:
    """One LabelMe shape as ``(points (n, 2) float64 x/y, mask value)``, checked."""
    if not isinstance(entry, dict):
        raise MaskError(f"{path}: shape {number} is a {type(entry).__name__}, not a LabelMe shape object")
    label = str(entry.get("label", "")).strip().lower()
    if label not in value_of:
        raise MaskError(
            f"{path}: shape {number} has label {entry.get('label')!r}; known labels are "
            f"{', '.join(sorted(value_of))}"
        )
    kind = entry.get("shape_type") or "polygon"
    raw_points = entry.get("points", [])
    if not isinstance(raw_points, list) or not all(_is_xy(point) for point in raw_points):
        raise MaskError(
            f"{path}: shape {number} ({entry.get('label')!r}) has points that are not [x, y] number pairs"
        )
    try:
        points = np.asarray(raw_points, dtype=np.float64).reshape(-1, 2)
    except OverflowError:  # an integer beyond float range
        raise MaskError(f"{path}: shape {number} ({entry.get('label')!r}) has a point out of range") from None
    if not np.isfinite(points).all():
        raise MaskError(f"{path}: shape {number} ({entry.get('label')!r}) has a NaN or infinite point")
    if kind == "rectangle" and len(points) == 2:
        (x0, y0), (x1, y1) = points
        points = np.array([[x0, y0], [x1, y0], [x1, y1], [x0, y1]])
    elif kind != "polygon" or len(points) < 3:
        raise MaskError(
            f"{path}: shape {number} ({entry.get('label')!r}) is a {kind} with {len(points)} "
            "points; only polygons (3+ points) and rectangles are supported"
        )
    return points, value_of[label]


def cube_stem(name: str | os.PathLike) -> str:
    """The name a cube's masks are matched by: the file name without its suffix(es)."""
    name = Path(name).name
    for suffix in (
        ".hdr",
        ".raw",
        ".img",
        ".dat",
        ".bil",
        ".bsq",
        ".bip",
        ".mat",
        ".npy",
        ".tif",
        ".tiff",
        ".png",
        ".json",
    ):
        if name.lower().endswith(suffix):
            return name[: -len(suffix)]
    return name


def mask_stem(path: str | os.PathLike) -> str:
    """The cube stem a mask file belongs to (suffixes such as ``_mask`` removed)."""
    stem = cube_stem(path)
    for ending in MASK_STEM_SUFFIXES:
        if stem.lower().endswith(ending):
            return stem[: -len(ending)]
    return stem


def match_masks(
    mask_paths: Iterable[str | os.PathLike], cube_names: Iterable[str]
) -> tuple[dict[str, Path], list[Path]]:
    """Pair mask files with cubes by file-name stem.

    Parameters
    ----------
    mask_paths : iterable of path-like
        Mask files.
    cube_names : iterable of str
        Cube file names or napari layer names.

    Returns
    -------
    matched : dict of str to Path
        Cube name → its mask file.
    unmatched : list of Path
        Mask files that belong to none of the cubes.

    Raises
    ------
    MaskError
        If two mask files claim the same cube.
    """
    cubes_by_stem = {cube_stem(name).lower(): name for name in cube_names}
    matched: dict[str, Path] = {}
    unmatched: list[Path] = []
    for path in map(Path, mask_paths):
        cube = cubes_by_stem.get(mask_stem(path).lower()) or cubes_by_stem.get(cube_stem(path).lower())
        if cube is None:
            unmatched.append(path)
        elif cube in matched:
            raise MaskError(f"{path} and {matched[cube]} are both masks of the cube {cube!r}")
        else:
            matched[cube] = path
    return matched, unmatched


def parse_legend(names: str) -> dict[int, str]:
    """``"background,tissue,lesion"`` → ``{0: "background", 1: "tissue", 2: "lesion"}``."""
    parts = [part.strip() for part in names.split(",")]
    if not parts or any(not part for part in parts):
        raise MaskError(f"mask class names {names!r}: give comma-separated, non-empty names")
    if len(parts) >= IGNORE_VALUE:
        raise MaskError(f"at most {IGNORE_VALUE - 1} mask classes are supported")
    return dict(enumerate(parts))
