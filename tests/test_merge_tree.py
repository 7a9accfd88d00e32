"""The merge tree of learned clusters (navigable granularity, issue 13 item 4)."""

from __future__ import annotations

import numpy as np
import pytest

from napari_dgc.analysis.classes import ClusterStatistics
from napari_dgc.analysis.merge_tree import MergeTreeError, merge_tree, spectral_angles

BANDS = 16
_x = np.linspace(0.0, 1.0, BANDS)
#: Three materials with distinct spectral shapes.
BACKGROUND = 1.0 + 0.0 * _x
TISSUE = 0.6 + np.exp(-((_x - 0.7) ** 2) / 0.02)
LESION = 0.05 + np.exp(-((_x - 0.15) ** 2) / 0.01)


def statistics(spectra: list[np.ndarray], counts: list[int]) -> ClusterStatistics:
    mean = np.array(spectra, dtype=float)
    return ClusterStatistics(np.array(counts, dtype=np.int64), mean, np.zeros_like(mean))


def test_clusters_of_one_material_merge_first_whatever_their_brightness():
    # Clusters 0, 3: background at two brightnesses (shading); 1, 4: tissue; 2: a small lesion.
    stats = statistics(
        [BACKGROUND, 0.8 * TISSUE, LESION, 0.3 * BACKGROUND, 1.4 * TISSUE + 0.01], [500, 300, 20, 400, 250]
    )
    tree = merge_tree(stats)
    assert tree.n_active == 5 and len(tree.merges) == 4
    assert [d for _, _, d in tree.merges] == sorted(d for _, _, d in tree.merges)
    np.testing.assert_array_equal(tree.mapping_at(5), [0, 2, 4, 1, 3])  # by size, largest first
    assert tree.mapping_at(3).tolist() == [0, 1, 2, 0, 1]  # background 900, tissue 550, lesion 20
    two = tree.mapping_at(2)
    assert two[0] == two[3] and two[1] == two[4] and len(set(two.tolist())) == 2
    assert tree.mapping_at(1).tolist() == [0] * 5


def test_each_level_differs_from_the_next_by_one_merge():
    rng = np.random.default_rng(0)
    stats = statistics(list(rng.uniform(0.1, 1.0, (8, BANDS))), list(rng.integers(10, 1000, 8)))
    tree = merge_tree(stats)
    for n in range(8, 1, -1):
        finer, coarser = tree.mapping_at(n), tree.mapping_at(n - 1)
        assert len(set(finer.tolist())) == n
        # Every finer class lies within one coarser class: levels nest.
        assert all(len(set(coarser[finer == c].tolist())) == 1 for c in range(n))


def test_a_small_distinct_cluster_is_not_merged_for_being_small():
    # Average linkage: the 5-pixel lesion stays apart until the very last merge.
    stats = statistics([BACKGROUND, 1.1 * BACKGROUND, TISSUE, LESION], [1000, 900, 800, 5])
    tree = merge_tree(stats)
    assert tree.mapping_at(2).tolist() == [0, 0, 0, 1]


def test_a_small_border_cluster_goes_with_the_material_whose_clusters_are_nearer_on_average():
    # The K = 6 leaf runs: background (a large cluster and a small one), a small cluster of
    # mixed background-lesion border pixels, a lesion, tissue. Spectra on an arc of angles
    # (radians): background 0, background' 0.08, border 0.22, lesion 0.41; tissue far off.
    # The border is nearer the lesion (0.19) than the large background cluster (0.22), but
    # nearer the background's clusters on average (0.18): it belongs with the background, and
    # a background weighted by its pixels (0.218, the large cluster alone) would lose it.
    def on_arc(angle: float, brightness: float) -> np.ndarray:
        spectrum = np.zeros(BANDS)
        spectrum[:2] = np.cos(angle), np.sin(angle)
        return brightness * spectrum

    tissue = np.zeros(BANDS)
    tissue[2] = 3.0
    stats = statistics(
        [on_arc(0.0, 0.6), on_arc(0.08, 0.5), on_arc(0.22, 1.2), on_arc(0.41, 2.0), tissue],
        [20000, 400, 1000, 800, 9000],
    )
    three = merge_tree(stats).mapping_at(3)
    assert three[0] == three[1] == three[2]  # background, background', border
    assert len({three[0], three[3], three[4]}) == 3  # lesion and tissue classes of their own


def test_empty_clusters_join_the_largest_class_and_levels_are_checked():
    stats = statistics([BACKGROUND, np.full(BANDS, np.nan), TISSUE], [10, 0, 30])
    tree = merge_tree(stats)
    assert tree.n_active == 2 and tree.active_clusters.tolist() == [0, 2]
    assert tree.mapping_at(2).tolist() == [1, 0, 0]
    with pytest.raises(MergeTreeError, match=r"levels 1..2 \(2 of 3 clusters have pixels\)"):
        tree.mapping_at(3)
    with pytest.raises(MergeTreeError, match="levels 1..2"):
        tree.mapping_at(0)


def test_one_active_cluster_says_there_is_nothing_to_merge():
    with pytest.raises(MergeTreeError, match="only 1 of 3 clusters has pixels: there is nothing to merge"):
        merge_tree(statistics([BACKGROUND, TISSUE, LESION], [0, 40, 0]))


def test_spectral_angles():
    angles = spectral_angles(np.array([[1.0, 0.0], [2.0, 0.0], [0.0, 3.0], [0.0, 0.0]]))
    np.testing.assert_allclose(angles[0], [0.0, 0.0, np.pi / 2, np.pi / 2], atol=1e-7)
    np.testing.assert_allclose(angles, angles.T)
