"""The DGC loss terms and the balanced pseudo-labels of the uniform-assignment term.

All functions take flat per-pixel tensors: embeddings ``z`` ``(N, D)`` (unit norm),
probabilities ``p`` ``(N, K)`` and their logarithms ``log_p`` ``(N, K)`` (from ``log_softmax``,
so no ``log(0)``), and the centroids ``(K, D)`` (unit norm).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F


def compactness_loss(z: torch.Tensor, p: torch.Tensor, centroids: torch.Tensor) -> torch.Tensor:
    """Mean over pixels of ``sum_k p_ik (1 - cos(z_i, c_k))``."""
    return (p * (1.0 - z @ centroids.T)).sum(dim=1).mean()


def orthogonality_loss(centroids: torch.Tensor) -> torch.Tensor:
    """``sum_{i != j} (c_i . c_j)^2`` over the unit-norm centroids."""
    gram = centroids @ centroids.T
    off_diagonal = gram - torch.diag_embed(torch.diagonal(gram))
    return (off_diagonal**2).sum()


def marginal_entropy(p: torch.Tensor) -> torch.Tensor:
    """Entropy (nats) of the mean cluster usage ``mean_i p_i``."""
    usage = p.mean(dim=0)
    return -(usage * torch.log(usage.clamp_min(1e-12))).sum()


def balance_loss(p: torch.Tensor, sign: str = "paper") -> torch.Tensor:
    """Balance term on the marginal cluster usage.

    Parameters
    ----------
    p : torch.Tensor
        ``(N, K)`` probabilities.
    sign : {"paper", "reference"}
        ``"paper"``: ``-H`` (minimising it maximises the entropy of cluster usage, the papers'
        stated intent). ``"reference"``: ``+H``, as the reference implementation adds it, which
        rewards collapse; kept only to measure the difference.
    """
    entropy = marginal_entropy(p)
    if sign == "paper":
        return -entropy
    if sign == "reference":
        return entropy
    raise ValueError(f"unknown balance sign {sign!r}")


def target_quotas(target: torch.Tensor, n_pixels: int) -> torch.Tensor:
    """Pixel counts proportional to the marginal ``target`` that sum to ``n_pixels``.

    Largest-remainder rounding; ties go to the lower cluster index, so equal targets give
    ``N // K`` pixels each plus one for the first ``N % K`` clusters.
    """
    ideal = target.double().cpu() / target.double().sum() * n_pixels
    quota = ideal.floor().long()
    shortfall = n_pixels - int(quota.sum())
    if shortfall > 0:
        remainder = ideal - quota
        order = sorted(range(len(quota)), key=lambda k: (-float(remainder[k]), k))
        quota[order[:shortfall]] += 1
    return quota


@torch.no_grad()
def balanced_pseudo_labels(scores: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Hard pseudo-labels that give cluster ``k`` exactly ``target_k * N`` pixels, chosen
    greedily to agree with ``scores`` as far as the quotas allow.

    Without ``target`` every cluster gets ``N // K`` pixels (+1 for the first ``N % K``), the
    papers' exactly balanced labels. Clusters are filled one at a time, least used first: each
    takes the still unassigned pixels with the largest margin of its score over the best score
    among the clusters not yet filled; the last cluster takes the rest. For ``K = 2`` this is
    the optimal split with the given quotas.

    Parameters
    ----------
    scores : torch.Tensor
        ``(N, K)`` preference of each pixel for each cluster (e.g. log-probabilities).
    target : torch.Tensor, optional
        ``(K,)`` positive target share of each cluster (normalised here).

    Returns
    -------
    torch.Tensor
        ``(N,)`` int64 labels.
    """
    n_pixels, n_clusters = scores.shape
    if target is None:
        target = torch.ones(n_clusters)
    quota = target_quotas(target, n_pixels)
    labels = torch.full((n_pixels,), -1, dtype=torch.long, device=scores.device)
    free = torch.ones(n_pixels, dtype=torch.bool, device=scores.device)
    order = torch.argsort(scores.softmax(dim=1).sum(dim=0)).tolist()
    remaining = list(order)
    for cluster in order[:-1]:
        remaining.remove(cluster)
        free_index = torch.nonzero(free).squeeze(1)
        free_scores = scores[free_index]
        margin = free_scores[:, cluster] - free_scores[:, remaining].max(dim=1).values
        take = free_index[torch.topk(margin, int(quota[cluster])).indices]
        labels[take] = cluster
        free[take] = False
    labels[free] = order[-1]
    return labels


def uniform_assignment_loss(log_p: torch.Tensor, target: torch.Tensor | None = None) -> torch.Tensor:
    """Cross-entropy of the predictions against pseudo-labels with the cluster shares
    ``target`` (exactly N/K each without it, as in the papers).
    """
    return F.nll_loss(log_p, balanced_pseudo_labels(log_p.detach(), target))


def floored_usage_target(usage: torch.Tensor, floor: float) -> torch.Tensor:
    """Target marginal for the pseudo-labels: the observed cluster ``usage`` with every share
    raised to at least ``floor / K`` (then renormalised).

    The floor keeps the anti-collapse role of the exactly balanced labels (a dying cluster is
    still handed ``floor / K`` of the pixels it fits best), while clusters above it keep the
    share the data gives them instead of being forced to ``1 / K``. ``floor = 1`` gives the
    papers' uniform target.
    """
    n_clusters = usage.shape[0]
    shares = usage / usage.sum()
    if floor >= 1.0:
        return torch.full_like(shares, 1.0 / n_clusters)
    minimum = floor / n_clusters
    # Raise the small shares to the floor and shrink the others proportionally so the sum stays
    # one; repeat while shrinking pushes another share under the floor (at most K rounds).
    fixed = torch.zeros(n_clusters, dtype=torch.bool, device=usage.device)
    for _ in range(n_clusters):
        below = (shares < minimum) & ~fixed
        if not bool(below.any()):
            break
        fixed |= below
        free_mass = shares[~fixed].sum()
        shares = torch.where(
            fixed,
            torch.full_like(shares, minimum),
            shares * (1.0 - minimum * int(fixed.sum())) / free_mass.clamp_min(1e-12),
        )
    return shares


def consistency_loss(log_p_a: torch.Tensor, log_p_b: torch.Tensor) -> torch.Tensor:
    """Symmetric KL divergence ``(KL(a||b) + KL(b||a)) / 2`` averaged over matched pixels.

    Row ``i`` of both inputs must show the *same scene location* in the two crops. Returns 0
    when there are no matched pixels.
    """
    if log_p_a.shape[0] == 0:
        return log_p_a.sum() * 0.0
    difference = log_p_a - log_p_b
    return 0.5 * ((log_p_a.exp() - log_p_b.exp()) * difference).sum(dim=1).mean()


def fidelity_loss(z: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """Mean squared difference between the pixels' cosine similarities in embedding space and
    in input space.

    Parameters
    ----------
    z : torch.Tensor
        ``(M, D)`` unit-norm embeddings of a sample of pixels.
    inputs : torch.Tensor
        ``(M, L)`` the same pixels' normalised spectral inputs (any scale; they are
        L2-normalised here).

    Notes
    -----
    Not in the papers. The clustering terms alone let the encoder move every pixel to whichever
    centroid it started nearest, so the partition of the first steps is locked in even where
    the spectra disagree with it (deep clustering's "feature drift"; IDEC, Guo et al. 2017,
    keeps an autoencoder's reconstruction loss for this). Matching the similarity structure of
    the inputs anchors the embedding to the spectra without a decoder's extra parameters.
    """
    target = F.normalize(inputs, dim=1)
    return ((z @ z.T - target @ target.T) ** 2).mean()
