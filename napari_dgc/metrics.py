"""Clustering and segmentation metrics, in plain numpy/scipy.

Two kinds of comparison:

* **cluster map vs. ground truth** (classes): confusion matrix, per-class and mean IoU, Dice,
  overall accuracy, after mapping clusters to classes either one-to-one (Hungarian matching,
  :func:`hungarian_mapping`) or many-to-one (each cluster to the class it overlaps most,
  :func:`many_to_one_mapping`); :func:`evaluate_clustering` does all of it at once;
* **two label maps of equal standing** (e.g. two checkpoints, for stability): normalised mutual
  information, adjusted Rand index, variation of information; these do not depend on the
  label values, only on the partition;
* **a label map vs. the data it partitions**: :func:`calinski_harabasz` (how far apart the
  clusters' mean spectra are, relative to the spread within the clusters).

Ground-truth maps may hold an ``ignore`` value (e.g. 255 = unlabelled); those pixels are left
out of every count. All functions accept label maps of any shape; they are flattened.
Entropies and the variation of information are in nats.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from napari_dgc.errors import DGCError

IgnoreValues = int | Sequence[int] | None


def _valid_mask(truth: np.ndarray, ignore: IgnoreValues) -> np.ndarray | None:
    if ignore is None:
        return None
    return ~np.isin(truth, np.atleast_1d(np.asarray(ignore)))


def _flatten_pair(
    first: np.ndarray, second: np.ndarray, ignore: IgnoreValues
) -> tuple[np.ndarray, np.ndarray]:
    first = np.asarray(first)
    second = np.asarray(second)
    if first.shape != second.shape:
        raise DGCError(f"label maps differ in shape: {first.shape} and {second.shape}; they must match")
    for name, labels in (("first", first), ("second", second)):
        if not np.issubdtype(labels.dtype, np.integer) and labels.dtype != bool:
            raise DGCError(f"the {name} label map has dtype {labels.dtype}; integer labels needed")
    valid = _valid_mask(first, ignore)
    if valid is not None:
        return first[valid].ravel(), second[valid].ravel()
    return first.ravel(), second.ravel()


def _dense_ids(labels: np.ndarray) -> tuple[np.ndarray, int]:
    """Relabel to 0..n-1 (bincount for small non-negative ids, which avoids a sort)."""
    if labels.size and labels.min() >= 0 and labels.max() < 4096:
        counts = np.bincount(labels.astype(np.int64))
        present = np.flatnonzero(counts)
        lookup = np.zeros(counts.size, dtype=np.int64)
        lookup[present] = np.arange(present.size)
        return lookup[labels], int(present.size)
    values, inverse = np.unique(labels, return_inverse=True)
    return inverse.ravel(), int(values.size)


def contingency_table(first: np.ndarray, second: np.ndarray, *, ignore: IgnoreValues = None) -> np.ndarray:
    """Count co-occurrences of the distinct labels of two maps.

    Parameters
    ----------
    first, second : np.ndarray
        Integer label maps of the same shape.
    ignore : int or sequence of int, optional
        Values of ``first`` whose pixels are left out.

    Returns
    -------
    np.ndarray
        ``(n_first, n_second)`` int64 counts over the labels that occur (absent labels have
        no row or column), in ascending label order.
    """
    first, second = _flatten_pair(first, second, ignore)
    first_ids, n_first = _dense_ids(first)
    second_ids, n_second = _dense_ids(second)
    counts = np.bincount(first_ids * n_second + second_ids, minlength=n_first * n_second)
    return counts.reshape(n_first, n_second).astype(np.int64)


def confusion_matrix(
    truth: np.ndarray,
    predicted: np.ndarray,
    *,
    n_classes: int | None = None,
    n_predicted: int | None = None,
    ignore: IgnoreValues = None,
) -> np.ndarray:
    """Confusion matrix indexed by the label values themselves.

    Parameters
    ----------
    truth : np.ndarray
        Integer class map, values ``0..n_classes-1`` (plus ``ignore`` values).
    predicted : np.ndarray
        Integer cluster or class map of the same shape, values ``0..n_predicted-1``.
    n_classes, n_predicted : int, optional
        Number of rows / columns; default: the largest value present + 1.
    ignore : int or sequence of int, optional
        Values of ``truth`` whose pixels are left out.

    Returns
    -------
    np.ndarray
        ``(n_classes, n_predicted)`` int64; entry ``[i, j]`` counts pixels of class ``i``
        predicted as ``j``.

    Raises
    ------
    DGCError
        For negative labels or labels beyond the given counts.
    """
    truth, predicted = _flatten_pair(truth, predicted, ignore)
    sizes = []
    for name, labels, size in (("truth", truth, n_classes), ("prediction", predicted, n_predicted)):
        if labels.size and labels.min() < 0:
            raise DGCError(f"the {name} holds negative label {labels.min()}")
        largest = int(labels.max()) + 1 if labels.size else 0
        if size is None:
            size = largest
        elif largest > size:
            raise DGCError(f"the {name} holds label {largest - 1}, but only {size} are expected")
        sizes.append(int(size))
    rows, cols = sizes
    flat = truth.astype(np.int64) * cols + predicted.astype(np.int64)
    return np.bincount(flat, minlength=rows * cols).reshape(rows, cols).astype(np.int64)


def _overlap_scores(
    intersection: np.ndarray, truth_total: np.ndarray, predicted_total: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """IoU and Dice per class from matched counts; ``nan`` where a class is absent from both."""
    intersection = intersection.astype(np.float64)
    total = truth_total + predicted_total
    with np.errstate(invalid="ignore", divide="ignore"):
        iou = np.where(total > 0, intersection / (total - intersection), np.nan)
        dice = np.where(total > 0, 2.0 * intersection / total, np.nan)
    return iou, dice


def iou_per_class(confusion: np.ndarray) -> np.ndarray:
    """Intersection over union per class of a square confusion matrix.

    Returns
    -------
    np.ndarray
        float64 per row; ``nan`` for a class absent from both truth and prediction.
    """
    confusion = _square(confusion)
    return _overlap_scores(np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0))[0]


def dice_per_class(confusion: np.ndarray) -> np.ndarray:
    """Dice coefficient (F1) per class of a square confusion matrix; ``nan`` where undefined."""
    confusion = _square(confusion)
    return _overlap_scores(np.diag(confusion), confusion.sum(axis=1), confusion.sum(axis=0))[1]


def mean_iou(confusion: np.ndarray) -> float:
    """Mean IoU over the classes present in truth or prediction."""
    return _nanmean(iou_per_class(confusion))


def overall_accuracy(confusion: np.ndarray) -> float:
    """Fraction of pixels on the diagonal of a square confusion matrix."""
    confusion = _square(confusion)
    total = confusion.sum()
    return float(np.trace(confusion) / total) if total else float("nan")


def _square(confusion: np.ndarray) -> np.ndarray:
    confusion = np.asarray(confusion)
    if confusion.ndim != 2 or confusion.shape[0] != confusion.shape[1]:
        raise DGCError(f"a square confusion matrix is needed, got shape {confusion.shape}")
    return confusion


def hungarian_mapping(confusion: np.ndarray) -> np.ndarray:
    """One-to-one cluster→class matching that maximises the matched pixel count.

    Parameters
    ----------
    confusion : np.ndarray
        ``(n_classes, n_clusters)`` counts (truth rows, cluster columns).

    Returns
    -------
    np.ndarray
        int64 per cluster: its class, or ``-1`` for clusters left unmatched (when there are
        more clusters than classes).
    """
    confusion = np.asarray(confusion)
    # Imported here: scipy.optimize takes ~0.3 s to import, and every CLI command and panel
    # imports this module while few of them match clusters to classes.
    from scipy.optimize import linear_sum_assignment

    class_ids, cluster_ids = linear_sum_assignment(confusion, maximize=True)
    mapping = np.full(confusion.shape[1], -1, dtype=np.int64)
    mapping[cluster_ids] = class_ids
    return mapping


def many_to_one_mapping(confusion: np.ndarray) -> np.ndarray:
    """Map each cluster to the class it overlaps most (several clusters may share a class).

    Clusters with no pixels map to ``-1``. Ties go to the lowest class index.
    """
    confusion = np.asarray(confusion)
    mapping = confusion.argmax(axis=0).astype(np.int64)
    mapping[confusion.sum(axis=0) == 0] = -1
    return mapping


def apply_mapping(labels: np.ndarray, mapping: np.ndarray, *, unmapped: int = -1) -> np.ndarray:
    """Replace each cluster id by ``mapping[id]``; ids mapped to ``-1`` become ``unmapped``."""
    lookup = np.asarray(mapping, dtype=np.int64).copy()
    lookup[lookup < 0] = unmapped
    return lookup[np.asarray(labels)]


def mapped_confusion(confusion: np.ndarray, mapping: np.ndarray) -> np.ndarray:
    """Class×class confusion after mapping clusters (columns) to classes.

    Returns
    -------
    np.ndarray
        ``(n_classes, n_classes + 1)`` int64: the last column holds the pixels of clusters
        mapped to ``-1``, so row sums still equal the class sizes.
    """
    confusion = np.asarray(confusion)
    n_classes = confusion.shape[0]
    mapped = np.zeros((n_classes, n_classes + 1), dtype=np.int64)
    for cluster, target in enumerate(np.asarray(mapping)):
        mapped[:, target if target >= 0 else n_classes] += confusion[:, cluster]
    return mapped


def _entropy(counts: np.ndarray) -> float:
    counts = np.asarray(counts, dtype=np.float64).ravel()
    total = counts.sum()
    if total <= 0:
        return 0.0
    p = counts[counts > 0] / total
    return float(-(p * np.log(p)).sum())


def _mutual_information(table: np.ndarray) -> float:
    total = table.sum()
    if total == 0:
        return 0.0
    rows, cols = np.nonzero(table)
    joint = table[rows, cols] / total
    outer = table.sum(axis=1)[rows].astype(np.float64) * table.sum(axis=0)[cols] / total**2
    return float(max((joint * (np.log(joint) - np.log(outer))).sum(), 0.0))


def normalized_mutual_info(first: np.ndarray, second: np.ndarray, *, ignore: IgnoreValues = None) -> float:
    """Normalised mutual information, arithmetic-mean normalisation (scikit-learn's default).

    Two single-cluster maps score 1; a single cluster against anything else scores 0.
    """
    table = contingency_table(first, second, ignore=ignore)
    if table.shape[0] == table.shape[1] and table.shape[0] <= 1:
        return 1.0
    information = _mutual_information(table)
    if information <= 0:
        return 0.0
    mean_entropy = 0.5 * (_entropy(table.sum(axis=1)) + _entropy(table.sum(axis=0)))
    return float(information / max(mean_entropy, np.finfo(np.float64).eps))


def adjusted_rand_index(first: np.ndarray, second: np.ndarray, *, ignore: IgnoreValues = None) -> float:
    """Adjusted Rand index (Hubert and Arabie); 1 for identical partitions, ~0 for chance."""
    table = contingency_table(first, second, ignore=ignore).astype(np.float64)
    total = table.sum()
    if total == 0 or (table.shape[0] == table.shape[1] and table.shape[0] in (1, total)):
        return 1.0

    def pairs(x: np.ndarray | float) -> np.ndarray | float:
        return x * (x - 1) / 2.0

    index = pairs(table).sum()
    row_pairs = pairs(table.sum(axis=1)).sum()
    col_pairs = pairs(table.sum(axis=0)).sum()
    expected = row_pairs * col_pairs / pairs(total)
    maximum = 0.5 * (row_pairs + col_pairs)
    if maximum == expected:
        return 1.0
    return float((index - expected) / (maximum - expected))


def variation_of_information(first: np.ndarray, second: np.ndarray, *, ignore: IgnoreValues = None) -> float:
    """Variation of information ``H(A|B) + H(B|A)`` in nats; 0 for identical partitions."""
    table = contingency_table(first, second, ignore=ignore)
    entropy_sum = _entropy(table.sum(axis=1)) + _entropy(table.sum(axis=0))
    return float(max(entropy_sum - 2.0 * _mutual_information(table), 0.0))


def cluster_usage(labels: np.ndarray, n_clusters: int) -> np.ndarray:
    """Fraction of pixels in each cluster ``0..n_clusters-1`` (float64, sums to 1)."""
    labels = np.asarray(labels).ravel()
    if labels.size and (labels.min() < 0 or labels.max() >= n_clusters):
        raise DGCError(f"cluster labels must lie in 0..{n_clusters - 1}")
    counts = np.bincount(labels.astype(np.int64), minlength=n_clusters).astype(np.float64)
    return counts / max(counts.sum(), 1.0)


def usage_entropy(usage: np.ndarray, *, normalized: bool = False) -> float:
    """Entropy of a cluster-usage distribution (fractions or probability mass per cluster).

    Parameters
    ----------
    usage : np.ndarray
        Non-negative mass per cluster, e.g. :func:`cluster_usage` or the mean soft assignment.
    normalized : bool
        Divide by ``log K`` so that uniform usage gives 1.

    Returns
    -------
    float
        Entropy in nats (or in ``[0, 1]`` when normalised).
    """
    usage = np.asarray(usage, dtype=np.float64).ravel()
    entropy = _entropy(usage)
    if normalized:
        return entropy / np.log(usage.size) if usage.size > 1 else 0.0
    return entropy


def active_clusters(labels: np.ndarray, n_clusters: int, *, min_fraction: float = 0.0) -> int:
    """Number of clusters holding more than ``min_fraction`` of the pixels."""
    return int((cluster_usage(labels, n_clusters) > min_fraction).sum())


def calinski_harabasz(features: np.ndarray, labels: np.ndarray) -> float:
    """Calinski–Harabasz index of a partition of ``features``.

    Parameters
    ----------
    features : np.ndarray
        ``(N, F)`` one row per sample (e.g. a pixel's normalised spectrum).
    labels : np.ndarray
        ``N`` cluster ids (any values).

    Returns
    -------
    float
        ``(B / (k - 1)) / (W / (N - k))`` with ``B`` and ``W`` the between- and within-cluster
        sums of squares and ``k`` the clusters present: higher means better separated. As
        :func:`sklearn.metrics.calinski_harabasz_score`, except that fewer than two clusters
        (or no more samples than clusters) give 0.0 instead of an error; 1.0 when the samples
        of every cluster are identical (``W = 0``), as scikit-learn returns.
    """
    features = np.asarray(features, dtype=np.float64)
    ids, dense = np.unique(np.asarray(labels).ravel(), return_inverse=True)
    n_samples, n_clusters = dense.size, ids.size
    if n_clusters < 2 or n_samples <= n_clusters:
        return 0.0
    counts = np.bincount(dense, minlength=n_clusters)
    means = np.stack([features[dense == cluster].mean(axis=0) for cluster in range(n_clusters)])
    between = float((counts * ((means - features.mean(axis=0)) ** 2).sum(axis=1)).sum())
    within = float(((features - means[dense]) ** 2).sum())
    if within == 0:
        return 1.0
    return between * (n_samples - n_clusters) / (within * (n_clusters - 1))


@dataclass(frozen=True, eq=False)  # array fields: no element-wise ==
class ClusteringScores:
    """Scores of a cluster map against ground-truth classes.

    ``accuracy``, ``iou``, ``mean_iou`` and ``dice`` are after one-to-one Hungarian matching
    (unmatched clusters count as errors); the ``many_to_one_*`` fields after mapping each
    cluster to the class it overlaps most. NMI and ARI need no mapping.
    """

    nmi: float
    ari: float
    accuracy: float
    iou: np.ndarray
    mean_iou: float
    dice: np.ndarray
    hungarian: np.ndarray
    many_to_one: np.ndarray
    many_to_one_accuracy: float
    many_to_one_mean_iou: float

    def to_dict(self) -> dict:
        """JSON-serialisable form (arrays as lists, ``nan`` as ``None``)."""

        def plain(value):
            if isinstance(value, np.ndarray):
                return [plain(v) for v in value.tolist()]
            if isinstance(value, float) and np.isnan(value):
                return None
            return value

        return {name: plain(getattr(self, name)) for name in self.__dataclass_fields__}


def evaluate_clustering(
    truth: np.ndarray,
    clusters: np.ndarray,
    *,
    n_classes: int | None = None,
    n_clusters: int | None = None,
    ignore: IgnoreValues = None,
) -> ClusteringScores:
    """Score a cluster map against a class map (see :class:`ClusteringScores`).

    Parameters
    ----------
    truth : np.ndarray
        Class map, values ``0..n_classes-1`` plus optional ``ignore`` values.
    clusters : np.ndarray
        Cluster map of the same shape, values ``0..n_clusters-1``.
    n_classes, n_clusters : int, optional
        Defaults: the largest value present + 1.
    ignore : int or sequence of int, optional
        Truth values to leave out (e.g. 255 for unlabelled pixels).
    """
    confusion = confusion_matrix(truth, clusters, n_classes=n_classes, n_predicted=n_clusters, ignore=ignore)
    total = confusion.sum()

    def scores_after(mapping: np.ndarray) -> tuple[float, np.ndarray, np.ndarray]:
        mapped = mapped_confusion(confusion, mapping)
        intersection = np.diag(mapped[:, :-1])
        iou, dice = _overlap_scores(intersection, mapped.sum(axis=1), mapped[:, :-1].sum(axis=0))
        accuracy = float(intersection.sum() / total) if total else float("nan")
        return accuracy, iou, dice

    hungarian = hungarian_mapping(confusion)
    accuracy, iou, dice = scores_after(hungarian)
    many = many_to_one_mapping(confusion)
    many_accuracy, many_iou, _ = scores_after(many)
    return ClusteringScores(
        nmi=normalized_mutual_info(truth, clusters, ignore=ignore),
        ari=adjusted_rand_index(truth, clusters, ignore=ignore),
        accuracy=accuracy,
        iou=iou,
        mean_iou=_nanmean(iou),
        dice=dice,
        hungarian=hungarian,
        many_to_one=many,
        many_to_one_accuracy=many_accuracy,
        many_to_one_mean_iou=_nanmean(many_iou),
    )


def _nanmean(values: np.ndarray) -> float:
    return float(np.nanmean(values)) if np.isfinite(values).any() else float("nan")
