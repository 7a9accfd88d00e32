"""Semantic classes built from learned clusters, and per-cluster statistics to build them.

DGC learns ``K`` abstract clusters; a person merges them into named semantic classes
(e.g. clusters 0 and 3 → "background"). A :class:`ClassMapping` records that merge and turns
cluster label maps into class maps: class ``i`` (1-based, in the order of
:attr:`ClassMapping.classes`) gets value ``i``, and ``0`` marks pixels of clusters that are not
assigned to any class yet.

Mapping files are JSON, either this project's form::

    {"format": "napari-dgc-class-mapping", "version": 1, "n_clusters": 4,
     "classes": [{"name": "background", "color": "#808080", "clusters": [0, 3]}, ...]}

or the reference implementation's ``{label: [cluster ids]}`` form, e.g.
``{"0": [0, 3], "1": [1, 2]}``, whose integer labels are mask values (0 background,
1 tissue, 2 lesion) and become classes named after :data:`DEFAULT_CLASS_NAMES`.
A mapping file must assign every cluster exactly once. Mapping files are read with
:func:`napari_dgc.safe_json.read_json` (bounded size and depth); a mapping may have at most
:data:`~napari_dgc.config.MAX_CLUSTERS` clusters (the most a model can learn) and
:data:`MAX_CLASSES` classes, so a hostile count is refused before anything is allocated.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from napari_dgc.atomic import atomic_write_json
from napari_dgc.config import MAX_CLUSTERS
from napari_dgc.errors import MappingError
from napari_dgc.safe_json import read_json

MAPPING_FORMAT = "napari-dgc-class-mapping"
MAPPING_VERSION = 1

#: Most classes a mapping may have: class-map values 1..254 fit one byte next to 0
#: ("unassigned") and 255 (the masks' "ignore" value).
MAX_CLASSES = 254

#: Class names of the mask values 0, 1, 2 (the leaf data's convention).
DEFAULT_CLASS_NAMES = ("background", "tissue", "lesion")

_NAMED_COLORS = {"background": "#808080", "tissue": "#2ca02c", "lesion": "#d62728"}
_PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#bcbd22",
    "#17becf",
    "#f0e442",
)
_COLOR_PATTERN = re.compile(r"^#[0-9a-fA-F]{6}$")


def default_class_color(name: str, index: int) -> str:
    """Colour for a new class: fixed colours for the usual names, else a palette entry.

    Parameters
    ----------
    name : str
        Class name ("background", "tissue" and "lesion" have fixed colours).
    index : int
        Position of the class, picks the palette entry for other names.

    Returns
    -------
    str
        ``"#rrggbb"``.
    """
    return _NAMED_COLORS.get(name.strip().lower(), _PALETTE[index % len(_PALETTE)])


def color_to_rgb(color: str) -> tuple[int, int, int]:
    """``"#rrggbb"`` → ``(r, g, b)`` integers in 0..255."""
    return int(color[1:3], 16), int(color[3:5], 16), int(color[5:7], 16)


@dataclass
class SemanticClass:
    """A named, coloured class and the clusters merged into it."""

    name: str
    color: str
    clusters: list[int] = field(default_factory=list)


@dataclass
class ClassMapping:
    """Clusters ``0..n_clusters-1`` merged into semantic classes.

    The mapping may be *partial* while a person builds it (clusters not yet in any class map
    to 0, "unassigned"); :meth:`validate` with ``complete=True`` (used for every mapping file
    read or written) demands that every cluster belongs to exactly one class.
    """

    classes: list[SemanticClass]
    n_clusters: int

    # ------------------------------------------------------------------ validation
    def validate(self, *, complete: bool = False, source: str | os.PathLike | None = None) -> None:
        """Check names, colours and cluster ids.

        Parameters
        ----------
        complete : bool
            Also require every cluster to be assigned.
        source : path-like, optional
            File the mapping came from (named in error messages).

        Raises
        ------
        MappingError
            For a cluster count outside ``1..MAX_CLUSTERS``, more than :data:`MAX_CLASSES`
            classes, an empty or repeated class name, a malformed colour, a cluster id outside
            ``0..n_clusters-1``, a cluster in two classes, or (with ``complete``) clusters
            left out.
        """
        where = f"{source}: " if source is not None else ""
        check_cluster_count(self.n_clusters, where)
        if len(self.classes) > MAX_CLASSES:
            raise MappingError(
                f"{where}{len(self.classes)} classes; a mapping may have at most {MAX_CLASSES}"
            )
        names = [c.name.strip().lower() for c in self.classes]
        for cls, name in zip(self.classes, names):
            if not name:
                raise MappingError(f"{where}a class has an empty name")
            if names.count(name) > 1:
                raise MappingError(f"{where}class name {cls.name!r} is used twice")
            if not isinstance(cls.color, str) or not _COLOR_PATTERN.match(cls.color):
                raise MappingError(f"{where}class {cls.name!r} has colour {cls.color!r}; use '#rrggbb'")
        owner: dict[int, str] = {}
        for cls in self.classes:
            for cluster in cls.clusters:
                if not 0 <= cluster < self.n_clusters:
                    raise MappingError(
                        f"{where}class {cls.name!r} names cluster {cluster}, but the model has "
                        f"only clusters 0..{self.n_clusters - 1}"
                    )
                if cluster in owner:
                    raise MappingError(
                        f"{where}cluster {cluster} is in both {owner[cluster]!r} and {cls.name!r}"
                    )
                owner[cluster] = cls.name
        if complete:
            missing = self.unassigned_clusters()
            if missing:
                raise MappingError(
                    f"{where}cluster(s) {missing} of 0..{self.n_clusters - 1} belong to no class; "
                    "every cluster must be assigned"
                )

    def unassigned_clusters(self) -> list[int]:
        """Clusters that belong to no class, ascending."""
        assigned = {c for cls in self.classes for c in cls.clusters}
        return [c for c in range(self.n_clusters) if c not in assigned]

    # ------------------------------------------------------------------ editing
    def assign(self, clusters: Iterable[int], class_index: int | None) -> None:
        """Move clusters into class ``class_index`` (0-based), or out of every class for ``None``."""
        moved = {int(c) for c in clusters}
        for cls in self.classes:
            cls.clusters = [c for c in cls.clusters if c not in moved]
        if class_index is not None:
            target = self.classes[class_index]
            target.clusters = sorted(set(target.clusters) | moved)
        self.validate()

    def class_of_cluster(self, cluster: int) -> int | None:
        """0-based index of the class holding ``cluster``, or ``None``."""
        for index, cls in enumerate(self.classes):
            if cluster in cls.clusters:
                return index
        return None

    # ------------------------------------------------------------------ applying
    def lookup_table(self) -> np.ndarray:
        """Cluster id → class value (1-based class index, 0 = unassigned), ``uint8``/``int32``."""
        self.validate()
        dtype = np.uint8 if len(self.classes) < 255 else np.int32
        table = np.zeros(self.n_clusters, dtype=dtype)
        for value, cls in enumerate(self.classes, start=1):
            table[cls.clusters] = value
        return table

    def apply(self, cluster_labels: np.ndarray) -> np.ndarray:
        """Turn a cluster label map (values ``0..n_clusters-1``) into a class map.

        Raises
        ------
        MappingError
            If the map holds cluster ids the mapping does not know.
        """
        labels = np.asarray(cluster_labels)
        if labels.size and (labels.min() < 0 or labels.max() >= self.n_clusters):
            raise MappingError(
                f"the cluster map holds ids {int(labels.min())}..{int(labels.max())}, but the "
                f"mapping covers clusters 0..{self.n_clusters - 1}"
            )
        return self.lookup_table()[labels]

    def legend(self) -> dict:
        """JSON-serialisable legend of class-map values (0 = unassigned)."""
        entries = [{"value": 0, "name": "unassigned", "color": None, "clusters": self.unassigned_clusters()}]
        entries += [
            {"value": value, "name": cls.name, "color": cls.color, "clusters": list(cls.clusters)}
            for value, cls in enumerate(self.classes, start=1)
        ]
        return {"kind": "classes", "n_clusters": self.n_clusters, "values": entries}

    # ------------------------------------------------------------------ JSON
    def to_json(self) -> dict:
        """Return the mapping in napari-dgc's JSON form (see the module docstring)."""
        return {
            "format": MAPPING_FORMAT,
            "version": MAPPING_VERSION,
            "n_clusters": self.n_clusters,
            "classes": [
                {"name": c.name, "color": c.color, "clusters": sorted(int(i) for i in c.clusters)}
                for c in self.classes
            ],
        }

    @classmethod
    def from_json(
        cls,
        document: Mapping[str, Any],
        n_clusters: int | None = None,
        *,
        source: str | os.PathLike | None = None,
        complete: bool = True,
    ) -> ClassMapping:
        """Build a mapping from either JSON form.

        Parameters
        ----------
        document : mapping
            Parsed JSON: this project's form or the reference's ``{label: [cluster ids]}``.
        n_clusters : int, optional
            Number of clusters of the model the mapping is for. Required for the reference
            form; for this project's form it must agree with the stored count.
        source : path-like, optional
            File named in error messages.
        complete : bool
            Require every cluster to be assigned (always, for files); ``False`` accepts a
            partial mapping being built in the GUI.

        Raises
        ------
        MappingError
            For a malformed document or a mapping inconsistent with ``n_clusters``.
        """
        where = f"{source}: " if source is not None else ""
        if not isinstance(document, Mapping):
            raise MappingError(f"{where}a class mapping must be a JSON object")
        if document.get("format") == MAPPING_FORMAT:
            mapping = cls._from_project_form(document, n_clusters, where)
        else:
            if n_clusters is None:
                raise MappingError(
                    f"{where}a {{label: [cluster ids]}} mapping does not store the cluster count; "
                    "give the model's number of clusters"
                )
            check_cluster_count(n_clusters, where)
            mapping = cls(classes=_classes_from_reference_form(document, where), n_clusters=int(n_clusters))
        mapping.validate(complete=complete, source=source)
        return mapping

    @classmethod
    def _from_project_form(
        cls, document: Mapping[str, Any], n_clusters: int | None, where: str
    ) -> ClassMapping:
        version = document.get("version")
        if version != MAPPING_VERSION:
            raise MappingError(f"{where}unsupported class-mapping version {_short(version)}")
        stored = document.get("n_clusters")
        check_cluster_count(stored, where)
        classes_entry = document.get("classes")
        if not isinstance(classes_entry, list) or len(classes_entry) > MAX_CLASSES:
            raise MappingError(f"{where}'classes' must be a list of at most {MAX_CLASSES} class objects")
        try:
            classes = [
                SemanticClass(
                    name=str(entry["name"]),
                    color=str(entry["color"]),
                    clusters=[_cluster_id(c, where) for c in entry["clusters"]],
                )
                for entry in classes_entry
            ]
        except (KeyError, TypeError) as error:
            raise MappingError(f"{where}malformed class mapping ({error!r} missing or wrong)") from None
        if n_clusters is not None and stored != n_clusters:
            raise MappingError(f"{where}the mapping is for {stored} clusters, but the model has {n_clusters}")
        return cls(classes=classes, n_clusters=stored)

    @classmethod
    def load(cls, path: str | os.PathLike, n_clusters: int | None = None) -> ClassMapping:
        """Read a mapping file (either form); see :meth:`from_json`."""
        path = Path(path)
        document = read_json(path, error=MappingError, what="class mapping")
        return cls.from_json(document, n_clusters, source=path)

    def save(self, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the mapping (project form) atomically; it must be complete.

        Raises
        ------
        MappingError
            If clusters are unassigned.
        FileExistsError
            If ``path`` exists and ``overwrite`` is false.
        """
        path = Path(path)
        self.validate(complete=True)
        if path.exists() and not overwrite:
            raise FileExistsError(f"{path} exists; refusing to overwrite it")
        atomic_write_json(path, self.to_json())
        return path


def _short(value: Any, limit: int = 60) -> str:
    """``repr(value)`` cut to ``limit`` characters: values from files can be huge."""
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def check_cluster_count(n_clusters: Any, where: str = "") -> None:
    """Refuse a cluster count that is not an integer in ``1..MAX_CLUSTERS``.

    Checked before anything is sized by the count (a lookup table, a confusion matrix), so a
    hostile file or option cannot make napari-dgc allocate terabytes.

    Parameters
    ----------
    n_clusters : Any
        The count, as read from a file or given by a caller.
    where : str
        Prefix of the message, e.g. ``"mapping.json: "``.

    Raises
    ------
    MappingError
        Naming the count and the valid range.
    """
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)):
        raise MappingError(f"{where}the number of clusters must be an integer, got {_short(n_clusters)}")
    if not 1 <= n_clusters <= MAX_CLUSTERS:
        raise MappingError(
            f"{where}the number of clusters must be between 1 and {MAX_CLUSTERS} (the most a model "
            f"learns), got {n_clusters}"
        )


def _cluster_id(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise MappingError(f"{where}cluster ids must be integers, got {_short(value)}")
    return int(value)


def _classes_from_reference_form(document: Mapping[str, Any], where: str) -> list[SemanticClass]:
    if len(document) > MAX_CLASSES:
        raise MappingError(f"{where}{len(document)} labels; a mapping may have at most {MAX_CLASSES} classes")
    entries = []
    for key, clusters in document.items():
        if not isinstance(clusters, list):
            raise MappingError(f"{where}label {key!r} must map to a list of cluster ids")
        try:
            label = int(key)
        except (TypeError, ValueError):
            label = None
        entries.append((label, str(key), [_cluster_id(c, where) for c in clusters]))
    if all(label is not None for label, _, _ in entries):
        # Integer labels are mask values: order by value, name the usual ones.
        entries.sort(key=lambda entry: entry[0])
        named = [
            (
                DEFAULT_CLASS_NAMES[label] if 0 <= label < len(DEFAULT_CLASS_NAMES) else f"class {label}",
                clusters,
            )
            for label, _, clusters in entries
        ]
    else:
        named = [(key, clusters) for _, key, clusters in entries]
    return [
        SemanticClass(name=name, color=default_class_color(name, index), clusters=sorted(clusters))
        for index, (name, clusters) in enumerate(named)
    ]


# ---------------------------------------------------------------------- cluster statistics
@dataclass
class ClusterStatistics:
    """Pixel counts and spectra of each cluster in one cube.

    Attributes
    ----------
    counts : np.ndarray
        ``(K,)`` int64 pixels per cluster.
    mean, std : np.ndarray
        ``(K, bands)`` float64 mean spectrum and its standard deviation (NaN for empty clusters).
    """

    counts: np.ndarray
    mean: np.ndarray
    std: np.ndarray

    @property
    def shares(self) -> np.ndarray:
        """Fraction of the cube's pixels in each cluster."""
        return self.counts / max(int(self.counts.sum()), 1)

    @staticmethod
    def pooled(parts: Iterable[ClusterStatistics]) -> ClusterStatistics:
        """Combine statistics of several cubes as if their pixels were one set."""
        parts = list(parts)
        counts = sum(p.counts for p in parts)
        sums = sum(np.nan_to_num(p.mean) * p.counts[:, None] for p in parts)
        squares = sum(np.nan_to_num(p.std**2 + p.mean**2) * p.counts[:, None] for p in parts)
        return ClusterStatistics(counts, *_mean_std(counts, sums, squares))


def _mean_std(counts: np.ndarray, sums: np.ndarray, squares: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(invalid="ignore", divide="ignore"):
        mean = sums / counts[:, None]
        variance = np.maximum(squares / counts[:, None] - mean**2, 0.0)
    return mean, np.sqrt(variance)


def cluster_statistics(
    pixels: Any,
    cluster_labels: np.ndarray,
    n_clusters: int,
    *,
    band_axis: int = -1,
    block_pixels: int = 1 << 16,
) -> ClusterStatistics:
    """Pixel count, mean spectrum and spread of every cluster, streamed over row blocks.

    Parameters
    ----------
    pixels : Cube or array-like
        A :class:`~napari_dgc.io.Cube`, or a 3-D array (numpy, memmap or lazy array such as
        a napari layer's data) with the bands on ``band_axis``. Only one block of rows is
        read at a time.
    cluster_labels : np.ndarray
        ``(rows, cols)`` integer cluster ids ``0..n_clusters-1``.
    n_clusters : int
        Number of clusters ``K``.
    band_axis : int
        Band axis of an array input (ignored for a ``Cube``).
    block_pixels : int
        About how many pixels to read per block.

    Returns
    -------
    ClusterStatistics

    Raises
    ------
    MappingError
        If the label map's shape differs from the cube's or holds ids outside ``0..K-1``.
    """
    labels = np.asarray(cluster_labels)
    if hasattr(pixels, "read_window"):
        shape_hw, n_bands = tuple(pixels.shape_hw), pixels.n_bands
        read_rows = lambda r: pixels.read_window(r, slice(None))  # noqa: E731
    else:
        band_axis = band_axis % 3
        shape = tuple(int(n) for n in pixels.shape)
        shape_hw = tuple(n for axis, n in enumerate(shape) if axis != band_axis)
        n_bands = shape[band_axis]
        row_axis = 1 if band_axis == 0 else 0

        def read_rows(rows: slice) -> np.ndarray:
            index = [slice(None)] * 3
            index[row_axis] = rows
            block = np.asarray(pixels[tuple(index)], dtype=np.float64)
            return np.moveaxis(block, band_axis, -1)

    if labels.shape != shape_hw:
        raise MappingError(f"the cluster map has shape {labels.shape}, the cube {shape_hw}")
    if labels.size and (labels.min() < 0 or labels.max() >= n_clusters):
        raise MappingError(f"the cluster map holds ids outside 0..{n_clusters - 1}")
    counts = np.bincount(labels.ravel().astype(np.int64), minlength=n_clusters)
    sums = np.zeros((n_clusters, n_bands))
    squares = np.zeros((n_clusters, n_bands))
    step = max(1, block_pixels // max(shape_hw[1], 1))
    for start in range(0, shape_hw[0], step):
        rows = slice(start, min(start + step, shape_hw[0]))
        block = np.asarray(read_rows(rows), dtype=np.float64).reshape(-1, n_bands)
        ids = labels[rows].ravel()
        # Sorting the pixels by cluster turns the per-cluster sums into contiguous segment
        # sums (np.add.reduceat), linear in pixels x bands whatever K is.
        order = np.argsort(ids, kind="stable")
        grouped = block[order]
        block_counts = np.bincount(ids, minlength=n_clusters)
        present = np.flatnonzero(block_counts)
        starts = np.concatenate([[0], np.cumsum(block_counts)[:-1]])[present]
        sums[present] += np.add.reduceat(grouped, starts, axis=0)
        squares[present] += np.add.reduceat(grouped * grouped, starts, axis=0)
    return ClusterStatistics(counts.astype(np.int64), *_mean_std(counts, sums, squares))


def class_statistics(statistics: ClusterStatistics, mapping: ClassMapping) -> ClusterStatistics:
    """Pool the clusters of each class of ``mapping``: row ``i`` is class ``i`` (0-based).

    Counts add up; mean and standard deviation are those of all the class's pixels together
    (NaN for a class without pixels).

    Raises
    ------
    MappingError
        If ``mapping`` is for another number of clusters than ``statistics``.
    """
    if mapping.n_clusters != len(statistics.counts):
        raise MappingError(
            f"the mapping is for {mapping.n_clusters} clusters, the statistics have {len(statistics.counts)}"
        )
    parts = []
    for cls in mapping.classes:
        members = np.asarray(cls.clusters, dtype=np.int64)
        counts = statistics.counts[members]
        mean = np.nan_to_num(statistics.mean[members])
        squares = np.nan_to_num(statistics.std[members] ** 2 + statistics.mean[members] ** 2)
        parts.append((counts.sum(), (mean * counts[:, None]).sum(0), (squares * counts[:, None]).sum(0)))
    n_bands = statistics.mean.shape[1]
    counts = np.array([p[0] for p in parts], dtype=np.int64)
    sums = np.array([p[1] for p in parts]).reshape(len(parts), n_bands)
    squares = np.array([p[2] for p in parts]).reshape(len(parts), n_bands)
    return ClusterStatistics(counts, *_mean_std(counts, sums, squares))
