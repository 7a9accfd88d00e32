"""Metrics against scikit-learn and hand-computed cases."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn import metrics as skm

from napari_dgc import metrics
from napari_dgc.errors import DGCError


@pytest.fixture
def random_pairs(rng):
    """Pairs of label maps: random, correlated, with gaps in the label values, 1-D and 2-D."""
    truth = rng.integers(0, 4, size=(30, 40))
    noisy = np.where(rng.random(truth.shape) < 0.3, rng.integers(0, 6, truth.shape), truth * 2)
    return [
        (truth, noisy),
        (truth, rng.integers(0, 3, size=truth.shape)),
        (rng.integers(0, 2, 500), rng.integers(0, 7, 500)),
        (truth, truth + 10),  # identical partition, different values
        (np.zeros(50, int), rng.integers(0, 3, 50)),
    ]


def test_nmi_ari_match_sklearn(random_pairs):
    for first, second in random_pairs:
        assert metrics.normalized_mutual_info(first, second) == pytest.approx(
            skm.normalized_mutual_info_score(first.ravel(), second.ravel()), abs=1e-12
        )
        assert metrics.adjusted_rand_index(first, second) == pytest.approx(
            skm.adjusted_rand_score(first.ravel(), second.ravel()), abs=1e-12
        )


def test_degenerate_partitions_match_sklearn():
    ones = np.zeros(20, int)
    for first, second in [(ones, ones), (ones, ones + 3), (np.arange(20), np.arange(20))]:
        assert metrics.normalized_mutual_info(first, second) == pytest.approx(
            skm.normalized_mutual_info_score(first, second)
        )
        assert metrics.adjusted_rand_index(first, second) == pytest.approx(
            skm.adjusted_rand_score(first, second)
        )


def test_variation_of_information_hand_computed():
    # A splits 4 pixels into {0,1},{2,3}; B puts all in one cluster: VI = H(A) = log 2.
    first = np.array([0, 0, 1, 1])
    assert metrics.variation_of_information(first, np.zeros(4, int)) == pytest.approx(np.log(2))
    assert metrics.variation_of_information(first, first + 5) == pytest.approx(0.0)
    # Independent halves: A = {0,0,1,1}, B = {0,1,0,1}: H(A)=H(B)=log 2, MI=0 -> 2 log 2.
    assert metrics.variation_of_information(first, np.array([0, 1, 0, 1])) == pytest.approx(2 * np.log(2))


def test_variation_of_information_from_sklearn_entropies(random_pairs):
    for first, second in random_pairs:
        mi = skm.mutual_info_score(first.ravel(), second.ravel())
        entropies = skm.mutual_info_score(first.ravel(), first.ravel()) + skm.mutual_info_score(
            second.ravel(), second.ravel()
        )
        assert metrics.variation_of_information(first, second) == pytest.approx(entropies - 2 * mi, abs=1e-12)


def test_confusion_matrix_matches_sklearn_and_ignores(rng):
    truth = rng.integers(0, 3, size=(20, 20))
    predicted = rng.integers(0, 3, size=(20, 20))
    expected = skm.confusion_matrix(truth.ravel(), predicted.ravel(), labels=[0, 1, 2])
    np.testing.assert_array_equal(metrics.confusion_matrix(truth, predicted), expected)

    truth_with_gaps = truth.copy()
    truth_with_gaps[:5] = 255
    keep = truth_with_gaps.ravel() != 255
    expected = skm.confusion_matrix(truth.ravel()[keep], predicted.ravel()[keep], labels=[0, 1, 2])
    result = metrics.confusion_matrix(truth_with_gaps, predicted, ignore=255)
    np.testing.assert_array_equal(result, expected)


def test_confusion_matrix_bad_input():
    with pytest.raises(DGCError, match="shape"):
        metrics.confusion_matrix(np.zeros((2, 3), int), np.zeros((3, 2), int))
    with pytest.raises(DGCError, match="negative"):
        metrics.confusion_matrix(np.array([0, -1]), np.array([0, 0]))
    with pytest.raises(DGCError, match="only 2"):
        metrics.confusion_matrix(np.array([0, 2]), np.array([0, 0]), n_classes=2)
    with pytest.raises(DGCError, match="integer"):
        metrics.confusion_matrix(np.array([0.5, 1.0]), np.array([0, 0]))


def test_iou_dice_accuracy_hand_computed():
    # truth:     0 0 0 1 1 2
    # predicted: 0 0 1 1 1 1
    truth = np.array([0, 0, 0, 1, 1, 2])
    predicted = np.array([0, 0, 1, 1, 1, 1])
    confusion = metrics.confusion_matrix(truth, predicted, n_predicted=3)
    np.testing.assert_allclose(metrics.iou_per_class(confusion), [2 / 3, 2 / 4, 0.0])
    np.testing.assert_allclose(metrics.dice_per_class(confusion), [4 / 5, 4 / 6, 0.0])
    assert metrics.mean_iou(confusion) == pytest.approx((2 / 3 + 1 / 2 + 0) / 3)
    assert metrics.overall_accuracy(confusion) == pytest.approx(4 / 6)
    # A class absent from both truth and prediction is left out of the mean.
    confusion4 = metrics.confusion_matrix(truth, predicted, n_classes=4, n_predicted=4)
    assert np.isnan(metrics.iou_per_class(confusion4)[3])
    assert metrics.mean_iou(confusion4) == pytest.approx(metrics.mean_iou(confusion))
    jaccard = skm.jaccard_score(truth, predicted, average=None, labels=[0, 1, 2])
    np.testing.assert_allclose(metrics.iou_per_class(confusion), jaccard)
    with pytest.raises(DGCError, match="square"):
        metrics.iou_per_class(np.zeros((2, 3)))


def test_hungarian_and_many_to_one_mappings():
    # 3 classes, 4 clusters: clusters 2 and 3 both cover class 0; cluster 0 is class 2.
    confusion = np.array(
        [
            [0, 1, 40, 30],
            [2, 50, 0, 0],
            [60, 0, 0, 5],
        ]
    )
    np.testing.assert_array_equal(metrics.hungarian_mapping(confusion), [2, 1, 0, -1])
    np.testing.assert_array_equal(metrics.many_to_one_mapping(confusion), [2, 1, 0, 0])
    empty_cluster = np.array([[5, 0], [0, 0]])
    np.testing.assert_array_equal(metrics.many_to_one_mapping(empty_cluster), [0, -1])
    labels = np.array([[0, 3], [1, 2]])
    np.testing.assert_array_equal(
        metrics.apply_mapping(labels, metrics.hungarian_mapping(confusion), unmapped=255),
        [[2, 255], [1, 0]],
    )


def test_evaluate_clustering_permuted_perfect_and_unmatched_cluster():
    truth = np.repeat([0, 1, 2], 10)
    scores = metrics.evaluate_clustering(truth, (truth + 1) % 3)
    assert scores.accuracy == 1.0 and scores.mean_iou == 1.0 and scores.nmi == pytest.approx(1)
    np.testing.assert_array_equal(scores.hungarian, [2, 0, 1])  # cluster -> class

    # Class 0 split into two clusters: Hungarian leaves one unmatched (its pixels are errors
    # of class 0), many-to-one merges them back.
    clusters = truth.copy()
    clusters[:4] = 3
    scores = metrics.evaluate_clustering(truth, clusters)
    assert scores.accuracy == pytest.approx(26 / 30)
    np.testing.assert_allclose(scores.iou, [6 / 10, 1.0, 1.0])
    np.testing.assert_allclose(scores.dice, [12 / 16, 1.0, 1.0])
    assert scores.many_to_one_accuracy == 1.0 and scores.many_to_one_mean_iou == 1.0
    assert scores.to_dict()["iou"] == pytest.approx([0.6, 1.0, 1.0])


def test_evaluate_clustering_with_ignore_value(rng):
    truth = rng.integers(0, 2, size=(10, 10))
    clusters = 1 - truth
    truth_masked = truth.copy()
    truth_masked[0] = 255
    clusters[0] = 0  # disagrees with the truth everywhere on the ignored row
    scores = metrics.evaluate_clustering(truth_masked, clusters, ignore=255)
    assert scores.accuracy == 1.0 and scores.nmi == pytest.approx(1.0)


def test_usage_entropy_and_active_clusters():
    labels = np.array([0, 0, 1, 1, 3, 3])
    usage = metrics.cluster_usage(labels, 4)
    np.testing.assert_allclose(usage, [1 / 3, 1 / 3, 0, 1 / 3])
    assert metrics.usage_entropy(usage) == pytest.approx(np.log(3))
    assert metrics.usage_entropy(usage, normalized=True) == pytest.approx(np.log(3) / np.log(4))
    assert metrics.usage_entropy(np.array([5.0, 0.0])) == 0.0
    assert metrics.active_clusters(labels, 4) == 3
    assert metrics.active_clusters(np.array([0] * 99 + [1]), 2, min_fraction=0.05) == 1
    with pytest.raises(DGCError, match="0..3"):
        metrics.cluster_usage(np.array([4]), 4)


def test_calinski_harabasz_matches_sklearn_and_handles_degenerate_partitions(rng):
    from napari_dgc.metrics import calinski_harabasz

    features = rng.normal(size=(300, 5))
    labels = rng.integers(0, 4, 300) * 7  # ids need not be 0..k-1
    features[labels == 7] += 3.0
    assert calinski_harabasz(features, labels) == pytest.approx(
        skm.calinski_harabasz_score(features, labels), rel=1e-10
    )
    separated = calinski_harabasz(features, labels)
    assert separated > calinski_harabasz(features, rng.permutation(labels))
    assert calinski_harabasz(features, np.zeros(300)) == 0.0  # one cluster separates nothing
    assert calinski_harabasz(np.ones((6, 2)), np.array([0, 0, 0, 1, 1, 1])) == 1.0
