"""DGC loss terms."""

from __future__ import annotations

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
