"""A merge tree of learned clusters: navigable granularity from ``K`` classes down to one.

DGC learns more clusters than a person wants classes (the papers' DGC-4 vs DGC-2). A
:class:`MergeTree` merges the clusters of one clustering step by step, always the two closest
groups, so every level ``n`` (``n_active .. 1``) is a partition of the clusters into ``n``
classes and level ``n - 1`` differs from level ``n`` by one merge: a "granularity" slider moves
along it and never reshuffles what it does not merge.

Distance
--------
Groups are compared by the *spectral angle* between the mean spectra of their clusters
(``arccos`` of the cosine similarity, i.e. the Euclidean distance of L2-normalised spectra).
The angle ignores brightness: shading, leaf curvature and illumination scale a spectrum
without changing its material, which is why k-means on per-pixel L2-normalised spectra is the
strongest simple baseline on close-range scenes (``docs/benchmarks.md``). Groups are linked by
*average linkage* (UPGMA, SciPy's ``method="average"``): the distance of two groups is the mean
angle over all pairs of their clusters, each cluster counting once whatever its size. So a
group is as far from another as its clusters are on average; unlike Ward's criterion, a small
but spectrally distinct cluster (a lesion) is not merged early for being small, and unlike
single linkage no chain of near clusters pulls two materials together. Clusters are not
weighted by their pixels: with pixel weights the largest cluster of a material stands for the
whole group, and a small cluster of mixed border pixels (mostly background, some lesion) that
lies between the background's clusters and the lesion's went with the lesion, because the
large background cluster was farther from it than the lesion cluster (measured on K = 6 leaf
runs: docs/benchmarks.md, "Granularity").

Only per-cluster statistics are needed (:class:`~napari_dgc.analysis.classes.ClusterStatistics`:
counts and mean spectra), so the tree is built in microseconds from what the merge panel
already holds. Clusters without pixels take no part in the merging; :meth:`MergeTree.mapping_at`
puts them in the largest class, so every mapping is complete.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from scipy.cluster.hierarchy import linkage
from scipy.spatial.distance import squareform

from napari_dgc.analysis.classes import ClusterStatistics
from napari_dgc.errors import DGCError


class MergeTreeError(DGCError):
    """No merge tree can be built (fewer than two clusters have pixels) or a level is out of range."""


@dataclass(frozen=True)
class MergeTree:
    """Clusters merged pairwise, the closest groups first.

    Attributes
    ----------
    n_clusters : int
        ``K``: clusters ``0..K-1`` of the clustering.
    counts : np.ndarray
        ``(K,)`` pixels of each cluster.
    merges : tuple of (int, int, float)
        ``(a, b, distance)`` in merge order. Groups are numbered like a SciPy linkage matrix:
        ``0..n_active-1`` are the active clusters in ascending id order
        (:attr:`active_clusters`), group ``n_active + i`` is made by merge ``i``.
    active_clusters : np.ndarray
        Ids of the clusters with pixels, ascending.
    """

    n_clusters: int
    counts: np.ndarray
    merges: tuple[tuple[int, int, float], ...]
    active_clusters: np.ndarray

    @property
    def n_active(self) -> int:
        """Clusters with pixels: the finest level of the tree."""
        return len(self.active_clusters)

    def mapping_at(self, n_classes: int) -> np.ndarray:
        """Class of every cluster at the level with ``n_classes`` classes.

        Parameters
        ----------
        n_classes : int
            ``1 .. n_active``.

        Returns
        -------
        np.ndarray
            ``(K,)`` int64 class index ``0..n_classes-1`` of each cluster. Classes are ordered by
            pixel count, largest first (ties: smallest cluster id first); clusters without
            pixels are in class 0.

        Raises
        ------
        MergeTreeError
            If ``n_classes`` is outside ``1 .. n_active``.
        """
        if not 1 <= n_classes <= self.n_active:
            raise MergeTreeError(
                f"{n_classes} classes: the merge tree has levels 1..{self.n_active} "
                f"({self.n_active} of {self.n_clusters} clusters have pixels)"
            )
        members: dict[int, list[int]] = {i: [int(c)] for i, c in enumerate(self.active_clusters)}
        for step, (a, b, _) in enumerate(self.merges[: self.n_active - n_classes]):
            members[self.n_active + step] = members.pop(a) + members.pop(b)
        groups = sorted(members.values(), key=lambda ids: (-int(self.counts[ids].sum()), min(ids)))
        classes = np.zeros(self.n_clusters, dtype=np.int64)
        for index, ids in enumerate(groups):
            classes[ids] = index
        return classes


def spectral_angles(spectra: np.ndarray) -> np.ndarray:
    """Pairwise spectral angles (radians, ``0..pi``) between the rows of ``spectra``.

    Parameters
    ----------
    spectra : np.ndarray
        ``(n, bands)`` spectra; an all-zero row is at angle ``pi / 2`` from every other.

    Returns
    -------
    np.ndarray
        ``(n, n)`` symmetric, zero diagonal.
    """
    norms = np.linalg.norm(spectra, axis=1, keepdims=True)
    unit = spectra / np.where(norms > 0, norms, 1.0)
    angles = np.arccos(np.clip(unit @ unit.T, -1.0, 1.0))
    np.fill_diagonal(angles, 0.0)
    return angles


def merge_tree(statistics: ClusterStatistics) -> MergeTree:
    """Build the merge tree of a clustering from its per-cluster statistics.

    See the module docstring for the distance (spectral angle of mean spectra) and the linkage
    (average, each cluster counting once).

    Parameters
    ----------
    statistics : ClusterStatistics
        Pixel counts and mean spectra of the ``K`` clusters (pooled over cubes with
        :meth:`ClusterStatistics.pooled` for a clustering of several cubes).

    Returns
    -------
    MergeTree

    Raises
    ------
    MergeTreeError
        If fewer than two clusters have pixels: there is nothing to merge.
    """
    counts = np.asarray(statistics.counts, dtype=np.int64)
    active = np.flatnonzero(counts > 0)
    if len(active) < 2:
        raise MergeTreeError(
            f"only {len(active)} of {len(counts)} clusters has pixels: there is nothing to merge "
            "(train longer or choose another checkpoint)"
        )
    angles = spectral_angles(np.asarray(statistics.mean, dtype=np.float64)[active])
    linkage_matrix = linkage(squareform(angles, checks=False), method="average")
    merges = [(int(a), int(b), float(distance)) for a, b, distance, _ in linkage_matrix]
    return MergeTree(len(counts), counts, tuple(merges), active)
