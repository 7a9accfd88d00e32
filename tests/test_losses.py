"""DGC loss terms and the exactly balanced pseudo-labels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from napari_dgc import losses


def test_compactness_is_zero_at_the_centroids_and_grows_away_from_them():
    centroids = torch.eye(3, 4)
    p = torch.eye(3)
    assert losses.compactness_loss(centroids.clone(), p, centroids) == pytest.approx(0.0)
    z = F.normalize(centroids + 0.5 * torch.ones(3, 4), dim=1)
    assert losses.compactness_loss(z, p, centroids) > 0.1


def test_orthogonality_is_zero_for_orthonormal_centroids():
    assert losses.orthogonality_loss(torch.eye(3, 5)) == pytest.approx(0.0)
    same = F.normalize(torch.ones(2, 4), dim=1)
    assert losses.orthogonality_loss(same) == pytest.approx(2.0)


def test_balance_paper_sign_rewards_even_usage_and_reference_sign_rewards_collapse():
    uniform = torch.full((10, 4), 0.25)
    collapsed = torch.zeros(10, 4)
    collapsed[:, 0] = 1.0
    assert losses.balance_loss(uniform) == pytest.approx(-math.log(4))
    assert losses.balance_loss(uniform) < losses.balance_loss(collapsed)
    assert losses.balance_loss(uniform, "reference") > losses.balance_loss(collapsed, "reference")
    with pytest.raises(ValueError):
        losses.balance_loss(uniform, "other")


@pytest.mark.parametrize("n_pixels, n_clusters", [(10, 3), (64, 4), (7, 2)])
def test_pseudo_labels_fill_every_cluster_exactly(n_pixels, n_clusters):
    torch.manual_seed(0)
    scores = torch.randn(n_pixels, n_clusters)
    counts = torch.bincount(losses.balanced_pseudo_labels(scores), minlength=n_clusters)
    expected = [n_pixels // n_clusters + (1 if k < n_pixels % n_clusters else 0) for k in range(n_clusters)]
    assert sorted(counts.tolist(), reverse=True) == expected


def test_pseudo_labels_follow_scores_when_these_are_balanced():
    scores = torch.full((6, 3), -5.0)
    truth = torch.tensor([2, 0, 1, 1, 2, 0])
    scores[torch.arange(6), truth] = 0.0
    assert torch.equal(losses.balanced_pseudo_labels(scores), truth)


def test_pseudo_labels_split_two_clusters_by_preference_margin():
    # Everyone prefers cluster 0; the half with the smallest margin must go to cluster 1.
    margin = torch.tensor([5.0, 0.1, 3.0, 0.2, 4.0, 0.3])
    scores = torch.stack([margin, torch.zeros(6)], dim=1)
    labels = losses.balanced_pseudo_labels(scores)
    assert labels.tolist() == [0, 1, 0, 1, 0, 1]


def test_uniform_assignment_pushes_a_collapsed_prediction_apart():
    logits = torch.zeros(8, 2)
    logits[:, 0] = 3.0
    logits.requires_grad_()
    loss = losses.uniform_assignment_loss(F.log_softmax(logits, dim=1))
    loss.backward()
    # Half of the pixels get the label 1: their gradient raises cluster 1's logit.
    assert (logits.grad[:, 1] < 0).sum() == 4


def test_consistency_is_symmetric_zero_for_equal_and_safe_when_empty():
    torch.manual_seed(0)
    a = F.log_softmax(torch.randn(5, 3), dim=1)
    b = F.log_softmax(torch.randn(5, 3), dim=1)
    assert losses.consistency_loss(a, a) == pytest.approx(0.0, abs=1e-7)
    assert losses.consistency_loss(a, b) > 0
    assert losses.consistency_loss(a, b) == pytest.approx(float(losses.consistency_loss(b, a)))
    expected = 0.5 * (F.kl_div(b, a, log_target=True, reduction="batchmean")
                      + F.kl_div(a, b, log_target=True, reduction="batchmean"))
    assert losses.consistency_loss(a, b) == pytest.approx(float(expected), rel=1e-5)
    empty = torch.zeros(0, 3)
    assert losses.consistency_loss(empty, empty) == 0.0
