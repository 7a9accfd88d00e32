"""DGC loss terms and the exactly balanced pseudo-labels."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from napari_dgc.training import losses


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
    expected = 0.5 * (
        F.kl_div(b, a, log_target=True, reduction="batchmean")
        + F.kl_div(a, b, log_target=True, reduction="batchmean")
    )
    assert losses.consistency_loss(a, b) == pytest.approx(float(expected), rel=1e-5)
    empty = torch.zeros(0, 3)
    assert losses.consistency_loss(empty, empty) == 0.0


def test_pseudo_labels_follow_a_non_uniform_target():
    torch.manual_seed(0)
    scores = torch.randn(100, 3)
    target = torch.tensor([0.7, 0.2, 0.1])
    counts = torch.bincount(losses.balanced_pseudo_labels(scores, target), minlength=3)
    assert counts.tolist() == [70, 20, 10]


def test_target_quotas_round_to_the_pixel_count():
    assert losses.target_quotas(torch.tensor([1.0, 1.0, 1.0]), 10).tolist() == [4, 3, 3]
    assert losses.target_quotas(torch.tensor([0.55, 0.3, 0.15]), 7).tolist() == [4, 2, 1]
    assert int(losses.target_quotas(torch.tensor([0.33, 0.33, 0.34]), 101).sum()) == 101


def test_imbalanced_target_keeps_the_predicted_split_that_uniform_labels_break():
    # 8 pixels clearly in cluster 0, 2 clearly in cluster 1: a 0.8 / 0.2 target agrees with
    # every prediction, the uniform target must relabel 3 of them.
    scores = torch.full((10, 2), -5.0)
    truth = torch.tensor([0] * 8 + [1] * 2)
    scores[torch.arange(10), truth] = 0.0
    assert torch.equal(losses.balanced_pseudo_labels(scores, torch.tensor([0.8, 0.2])), truth)
    assert int((losses.balanced_pseudo_labels(scores) != truth).sum()) == 3


def test_floored_usage_target_raises_small_shares_and_keeps_large_ones_proportional():
    usage = torch.tensor([0.9, 0.08, 0.02], dtype=torch.float64)
    target = losses.floored_usage_target(usage, 0.5)  # floor 0.5 / 3
    floor = 0.5 / 3
    torch.testing.assert_close(target[1:], torch.full((2,), floor, dtype=torch.float64))
    assert float(target.sum()) == pytest.approx(1.0)
    assert float(target[0]) == pytest.approx(1 - 2 * floor)
    balanced = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    torch.testing.assert_close(losses.floored_usage_target(balanced, 0.5), balanced)
    torch.testing.assert_close(
        losses.floored_usage_target(usage, 1.0), torch.full((3,), 1 / 3, dtype=torch.float64)
    )


def test_floored_usage_target_lifts_a_share_pushed_under_the_floor_by_rescaling():
    usage = torch.tensor([0.80, 0.15, 0.05], dtype=torch.float64)
    target = losses.floored_usage_target(usage, 0.54)  # floor 0.18: lifting one pushes the 0.15 down
    assert float(target.min()) == pytest.approx(0.18)
    assert float(target.sum()) == pytest.approx(1.0)
    assert float(target[0]) == pytest.approx(0.64)


def test_fidelity_is_zero_when_embeddings_keep_the_input_similarities():
    torch.manual_seed(0)
    inputs = torch.randn(50, 6)
    rotation, _ = torch.linalg.qr(torch.randn(8, 8))
    # Any rotation of the normalised inputs (in a larger space) keeps every cosine similarity.
    z = F.pad(F.normalize(inputs, dim=1), (0, 2)) @ rotation
    assert losses.fidelity_loss(z, 3.0 * inputs) == pytest.approx(0.0, abs=1e-10)


def test_fidelity_penalises_collapsed_embeddings_and_pulls_them_apart():
    torch.manual_seed(1)
    inputs = torch.randn(40, 5)
    z = F.normalize(torch.ones(40, 5) + 0.01 * torch.randn(40, 5), dim=1).requires_grad_()
    loss = losses.fidelity_loss(z, inputs)
    assert loss > 0.5  # every pair is ~1 in embedding space, ~0 on average in input space
    loss.backward()
    moved = F.normalize(z.detach() - 0.5 * z.grad / z.grad.norm(), dim=1)
    assert losses.fidelity_loss(moved, inputs) < loss
