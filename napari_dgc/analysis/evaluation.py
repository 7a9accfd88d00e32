"""Scoring merged classes against ground-truth masks: IoU, mean IoU, confusion matrices.

Mapping classes are compared with mask classes by *name* (case-insensitive): the mask legend's
classes come first (in value order), then mapping classes the masks do not know (their pixels
count as errors and the report notes them). Predicted pixels of unassigned clusters land in an
extra "unassigned" column of the confusion matrix: they are misses for their true class. Mask
pixels valued :data:`~napari_dgc.analysis.masks.IGNORE_VALUE` are left out.

Scores are given per cube and *pooled* (confusion matrices summed over cubes, so large cubes
weigh more). The arithmetic is :mod:`napari_dgc.metrics`.
"""

from __future__ import annotations

import csv
import io
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from napari_dgc import metrics
from napari_dgc.analysis.classes import ClassMapping, SemanticClass, check_cluster_count, default_class_color
from napari_dgc.analysis.masks import IGNORE_VALUE, Mask
from napari_dgc.atomic import atomic_write_json, atomic_write_text
from napari_dgc.errors import MappingError, MaskError

UNASSIGNED = "unassigned"
SUGGESTION_METHODS = ("auto", "hungarian", "many-to-one")
POOLED = "pooled"


@dataclass
class ClassScores:
    """Scores of one cube (or of all cubes pooled).

    Attributes
    ----------
    class_names : list of str
        Row order of ``confusion`` and ``iou``.
    confusion : np.ndarray
        ``(C, C + 1)`` int64: pixels of true class ``i`` predicted as class ``j``; the last
        column counts pixels of unassigned clusters.
    iou : np.ndarray
        ``(C,)`` float64 IoU per class; NaN for a class absent from both mask and prediction.
    ignored_pixels : int
        Mask pixels marked "ignore".
    """

    class_names: list[str]
    confusion: np.ndarray
    iou: np.ndarray
    ignored_pixels: int

    @classmethod
    def from_confusion(cls, class_names: list[str], confusion: np.ndarray, ignored: int) -> ClassScores:
        """Derive the IoU from a ``(C, C + 1)`` confusion matrix."""
        # As a square matrix the unassigned column becomes a class no pixel truly has, so
        # its pixels count as misses of their true class and as nobody's false positives.
        square = np.vstack([confusion, np.zeros((1, confusion.shape[1]), dtype=confusion.dtype)])
        iou = metrics.iou_per_class(square)[: len(class_names)]
        return cls(list(class_names), confusion, iou, int(ignored))

    @property
    def mean_iou(self) -> float:
        """Mean IoU over the classes present in mask or prediction (NaN if none)."""
        present = self.iou[~np.isnan(self.iou)]
        return float(present.mean()) if present.size else float("nan")

    @property
    def n_pixels(self) -> int:
        """Scored (non-ignored) pixels."""
        return int(self.confusion.sum())

    @property
    def accuracy(self) -> float:
        """Fraction of scored pixels whose class is right."""
        total = self.n_pixels
        diagonal = np.trace(self.confusion[:, : len(self.class_names)])
        return float(diagonal / total) if total else float("nan")

    def to_json(self) -> dict:
        """JSON-serialisable scores (NaN as ``null``)."""
        return {
            "iou": {name: _plain(value) for name, value in zip(self.class_names, self.iou)},
            "mean_iou": _plain(self.mean_iou),
            "accuracy": _plain(self.accuracy),
            "pixels": self.n_pixels,
            "ignored_pixels": self.ignored_pixels,
            "confusion": {
                "rows": "true class",
                "columns": "predicted class",
                "true_classes": list(self.class_names),
                "predicted_classes": list(self.class_names) + [UNASSIGNED],
                "counts": self.confusion.tolist(),
            },
        }


def _plain(value: float) -> float | None:
    return None if np.isnan(value) else float(value)


@dataclass
class EvaluationReport:
    """Per-cube and pooled scores of one mapping against the masks."""

    class_names: list[str]
    per_cube: dict[str, ClassScores]
    pooled: ClassScores
    mapping: ClassMapping
    mapping_source: str
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        """The report as written by :func:`write_report` (JSON)."""
        return {
            "format": "napari-dgc-evaluation",
            "version": 1,
            "mapping_source": self.mapping_source,
            "mapping": self.mapping.to_json(),
            "classes": list(self.class_names),
            "pooled": self.pooled.to_json(),
            "per_cube": {name: scores.to_json() for name, scores in self.per_cube.items()},
            "notes": list(self.notes),
        }

    def csv_text(self) -> str:
        """One row per cube and class (plus a mean-IoU row per cube and the pooled rows)."""
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["cube", "class", "iou", "intersection", "union", "true_pixels", "predicted_pixels"])
        for cube, scores in [*self.per_cube.items(), (POOLED, self.pooled)]:
            n = len(scores.class_names)
            truth = scores.confusion.sum(axis=1)
            predicted = scores.confusion[:, :n].sum(axis=0)
            for i, name in enumerate(scores.class_names):
                hit = int(scores.confusion[i, i])
                union = int(truth[i] + predicted[i] - hit)
                writer.writerow(
                    [cube, name, _csv_number(scores.iou[i]), hit, union, int(truth[i]), int(predicted[i])]
                )
            writer.writerow([cube, "mean IoU", _csv_number(scores.mean_iou), "", "", scores.n_pixels, ""])
        return buffer.getvalue()

    def format_table(self) -> str:
        """Plain-text table: one row per class, one column per cube, then the pooled column."""
        columns = [*self.per_cube.items()] + ([(POOLED, self.pooled)] if len(self.per_cube) > 1 else [])
        width = max([len(n) for n in self.class_names] + [len("mean IoU")]) + 2
        col_width = max([len(c) for c, _ in columns] + [7]) + 2
        lines = ["class".ljust(width) + "".join(c.rjust(col_width) for c, _ in columns)]
        for i, name in enumerate(self.class_names):
            lines.append(name.ljust(width) + "".join(_cell(s.iou[i], col_width) for _, s in columns))
        lines.append("mean IoU".ljust(width) + "".join(_cell(s.mean_iou, col_width) for _, s in columns))
        return "\n".join(lines)


def _csv_number(value: float) -> str:
    return "" if np.isnan(value) else f"{value:.6f}"


def _cell(value: float, width: int) -> str:
    return ("-" if np.isnan(value) else f"{value:.4f}").rjust(width)


# ---------------------------------------------------------------------- class correspondence
def _class_names(masks: Sequence[Mask], mapping: ClassMapping | None) -> list[str]:
    names: list[str] = []
    known: set[str] = set()
    for mask in masks:
        for _, name in sorted(mask.legend.items()):
            if name.lower() not in known:
                names.append(name)
                known.add(name.lower())
    for cls in mapping.classes if mapping is not None else ():
        if cls.name.lower() not in known:
            names.append(cls.name)
            known.add(cls.name.lower())
    return names


def _truth_indices(mask: Mask, names: list[str]) -> tuple[np.ndarray, int]:
    """Mask values → index into ``names``; ignored pixels → -1. Also the ignored count."""
    index_of = {name.lower(): i for i, name in enumerate(names)}
    lookup = np.full(max(max(mask.legend), IGNORE_VALUE) + 1, -1, dtype=np.int64)
    for value, name in mask.legend.items():
        lookup[value] = index_of[name.lower()]
    indices = lookup[mask.values]
    ignored = int(np.count_nonzero(indices < 0))
    return indices, ignored


def _check_pair(cube: str, clusters: np.ndarray, mask: Mask, n_clusters: int) -> None:
    where = mask.source if mask.source is not None else f"the mask of {cube!r}"
    if clusters.shape != mask.values.shape:
        raise MaskError(
            f"{where}: mask shape {mask.values.shape} differs from the cluster map of {cube!r} "
            f"{clusters.shape}"
        )
    if clusters.size and (clusters.min() < 0 or clusters.max() >= n_clusters):
        raise MappingError(
            f"the cluster map of {cube!r} holds ids {int(clusters.min())}..{int(clusters.max())}, "
            f"but the mapping covers clusters 0..{n_clusters - 1}"
        )


def _paired_cubes(
    cluster_maps: Mapping[str, np.ndarray], masks: Mapping[str, Mask], notes: list[str]
) -> list[str]:
    cubes = [name for name in cluster_maps if name in masks]
    if not cubes:
        raise MaskError(
            f"no cube has both a cluster map and a mask (cluster maps: {sorted(cluster_maps)}, "
            f"masks: {sorted(masks)})"
        )
    without_mask = [name for name in cluster_maps if name not in masks]
    if without_mask:
        notes.append(f"not scored (no mask): {', '.join(without_mask)}")
    return cubes


# ---------------------------------------------------------------------- evaluation
def evaluate_classes(
    cluster_maps: Mapping[str, np.ndarray],
    masks: Mapping[str, Mask],
    mapping: ClassMapping,
    *,
    mapping_source: str = "given",
) -> EvaluationReport:
    """Score a cluster→class mapping against ground-truth masks, per cube and pooled.

    Parameters
    ----------
    cluster_maps : mapping of str to np.ndarray
        Cube name → ``(rows, cols)`` cluster ids ``0..K-1``.
    masks : mapping of str to Mask
        Cube name → its mask; cubes without a mask are skipped (and noted).
    mapping : ClassMapping
        The merge to score; may be partial (unassigned clusters count as misses).
    mapping_source : str
        Where the mapping came from, recorded in the report.

    Returns
    -------
    EvaluationReport

    Raises
    ------
    MaskError
        If no cube has a mask, or a mask's shape differs from its cluster map.
    MappingError
        If a cluster map holds ids beyond the mapping's clusters.
    """
    notes: list[str] = []
    cubes = _paired_cubes(cluster_maps, masks, notes)
    names = _class_names([masks[c] for c in cubes], mapping)
    legend_names = {n.lower() for c in cubes for n in masks[c].legend.values()}
    extra = [cls.name for cls in mapping.classes if cls.name.lower() not in legend_names]
    if extra:
        notes.append(f"class(es) {', '.join(extra)} are not in the mask legend; their pixels count as errors")
    if mapping.unassigned_clusters():
        notes.append(f"unassigned cluster(s) {mapping.unassigned_clusters()} count as misses")
    index_of = {name.lower(): i for i, name in enumerate(names)}
    # Class-map value v (1-based class) → column; 0 (unassigned) → the last column.
    column_of_value = np.array(
        [len(names)] + [index_of[cls.name.lower()] for cls in mapping.classes], dtype=np.int64
    )
    table = mapping.lookup_table()
    per_cube: dict[str, ClassScores] = {}
    for cube in cubes:
        clusters = np.asarray(cluster_maps[cube])
        _check_pair(cube, clusters, masks[cube], mapping.n_clusters)
        truth, ignored = _truth_indices(masks[cube], names)
        predicted = column_of_value[table[clusters]]
        confusion = metrics.confusion_matrix(
            truth, predicted, n_classes=len(names), n_predicted=len(names) + 1, ignore=-1
        )
        per_cube[cube] = ClassScores.from_confusion(names, confusion, ignored)
    pooled = ClassScores.from_confusion(
        names,
        sum(s.confusion for s in per_cube.values()),
        sum(s.ignored_pixels for s in per_cube.values()),
    )
    return EvaluationReport(names, per_cube, pooled, mapping, mapping_source, notes)


def suggest_mapping(
    cluster_maps: Mapping[str, np.ndarray],
    masks: Mapping[str, Mask],
    n_clusters: int,
    *,
    method: str = "auto",
) -> tuple[ClassMapping, str, list[str]]:
    """The best automatic cluster→class mapping against the masks (pooled over cubes).

    Parameters
    ----------
    cluster_maps, masks : mapping
        As for :func:`evaluate_classes`.
    n_clusters : int
        Number of clusters ``K``.
    method : {"auto", "hungarian", "many-to-one"}
        ``"hungarian"``: one-to-one matching maximising matched pixels (with more clusters
        than classes, the extra clusters stay unassigned); ``"many-to-one"``: each cluster to
        the class it overlaps most. ``"auto"`` picks Hungarian when ``K`` is at most the
        number of mask classes, else many-to-one, so no cluster is left out.

    Returns
    -------
    mapping : ClassMapping
        One class per mask class, named and ordered as the legend.
    method : str
        The method used.
    notes : list of str
        Clusters left unassigned and why.

    Raises
    ------
    MappingError
        For an unknown method, ``n_clusters`` outside ``1..MAX_CLUSTERS`` (checked before
        anything is allocated), or cluster ids beyond ``n_clusters``.
    MaskError
        If no cube has a mask, or a mask's shape differs from its cluster map.
    """
    if method not in SUGGESTION_METHODS:
        raise MappingError(f"unknown suggestion method {method!r}; use one of {SUGGESTION_METHODS}")
    # Before the (classes x n_clusters) confusion matrix is allocated.
    check_cluster_count(n_clusters)
    notes: list[str] = []
    cubes = _paired_cubes(cluster_maps, masks, notes)
    names = _class_names([masks[c] for c in cubes], None)
    confusion = np.zeros((len(names), n_clusters), dtype=np.int64)
    for cube in cubes:
        clusters = np.asarray(cluster_maps[cube])
        _check_pair(cube, clusters, masks[cube], n_clusters)
        truth, _ = _truth_indices(masks[cube], names)
        confusion += metrics.confusion_matrix(
            truth, clusters, n_classes=len(names), n_predicted=n_clusters, ignore=-1
        )
    if method == "auto":
        method = "hungarian" if n_clusters <= len(names) else "many-to-one"
    if method == "hungarian":
        assignment = metrics.hungarian_mapping(confusion)
    else:
        assignment = metrics.many_to_one_mapping(confusion)
    classes = [
        SemanticClass(name, default_class_color(name, i), [int(c) for c in np.flatnonzero(assignment == i)])
        for i, name in enumerate(names)
    ]
    left_out = [int(c) for c in np.flatnonzero(assignment < 0)]
    if left_out:
        reason = "no labelled pixels" if method == "many-to-one" else "more clusters than classes"
        notes.append(f"cluster(s) {left_out} left unassigned ({reason})")
    return ClassMapping(classes=classes, n_clusters=n_clusters), method, notes


def write_report(
    report: EvaluationReport,
    *,
    json_path: str | os.PathLike | None = None,
    csv_path: str | os.PathLike | None = None,
    overwrite: bool = False,
) -> list[Path]:
    """Write the report as JSON and/or CSV, atomically.

    Raises
    ------
    FileExistsError
        If an output exists and ``overwrite`` is false; then nothing is written.
    """
    targets = [(Path(p), kind) for p, kind in ((json_path, "json"), (csv_path, "csv")) if p is not None]
    if not overwrite:
        for path, _ in targets:
            if path.exists():
                raise FileExistsError(f"{path} exists; refusing to overwrite it")
    for path, kind in targets:
        if kind == "json":
            atomic_write_json(path, report.to_json())
        else:
            atomic_write_text(path, report.csv_text())
    return [path for path, _ in targets]
