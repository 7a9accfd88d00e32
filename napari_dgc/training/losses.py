"""The DGC loss terms on the model's embeddings and assignments (the anchor term, a cross-entropy
against fixed labels, is :meth:`~napari_dgc.training.trainer.Trainer._anchor_term`).

All functions take flat per-pixel tensors: embeddings ``z`` ``(N, D)`` (unit norm),
probabilities ``p`` ``(N, K)`` and their logarithms ``log_p`` ``(N, K)`` (from ``log_softmax``,
so no ``log(0)``), and the centroids ``(K, D)`` (unit norm).
"""

from __future__ import annotations

import torch


def compactness_loss(z: torch.Tensor, p: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of ``sum_k p_ik (1 - cos(z_i, c_k))``."""
    return (p * (1.0 - z @ centroids.T)).sum(dim=1).mean()


def orthogonality_loss(centroids: torch.Tensor) -> torch.Tensor:
    """``sum_{i != j} (c_i . c_j)^2`` over the unit-norm centroids."""
    gram = centroids @ centroids.T
    off_diagonal = gram - torch.diag_embed(torch.diagonal(gram))
    return (off_diagonal**2).sum()


def consistency_loss(log_p_a: torch.Tensor, log_p_b: torch.Tensor) -> torch.Tensor:
    """Symmetric KL divergence ``(KL(a||b) + KL(b||a)) / 2`` averaged over matched pixels.

    Row ``i`` of both inputs must show the *same scene location* in the two crops. Returns 0
    when there are no matched pixels.
    """
    if log_p_a.shape[0] == 0:
        return log_p_a.sum() * 0.0
    difference = log_p_a - log_p_b
    return 0.5 * ((log_p_a.exp() - log_p_b.exp()) * difference).sum(dim=1).mean()
