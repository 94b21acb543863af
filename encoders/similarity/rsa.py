"""Representational similarity analysis (Kriegeskorte et al. 2008) with correlation-distance RDMs.

An RDM entry is 1 - Pearson r between the response patterns (over units) of two stimuli; two
RDMs are compared on their upper triangles (i < j). Patterns are compared across units, so X
and Y may have different widths but need at least 2 units each.
"""

from __future__ import annotations

import torch
from torch import Tensor

from encoders.similarity.centering import as_pair, as_representation, pearson, upper_triangle


def correlation_rdm(X: Tensor) -> Tensor:
    """(stimuli, stimuli) RDM of correlation distances 1 - corr(x_i, x_j) between rows of X.

    Each stimulus pattern is centred over units and scaled to unit norm (as
    ``rsatoolbox.rdm.calc_rdm(..., method='correlation')``); values in [0, 2], zero diagonal.
    A stimulus with constant response over units has an undefined correlation (NaN).

    Args:
        X: (stimuli, units), units >= 2.
    """
    X = as_representation(X)
    if X.shape[1] < 2:
        raise ValueError(f"correlation RDMs need at least 2 units, got {X.shape[1]}")
    Z = X - X.mean(dim=1, keepdim=True)
    Z = Z / Z.norm(dim=1, keepdim=True)
    return 1.0 - Z @ Z.mT


def rsa_pearson(X: Tensor, Y: Tensor) -> Tensor:
    """Pearson correlation between the upper triangles of the correlation-distance RDMs of X and Y.

    Symmetric; in [-1, 1]; differentiable. Matches
    ``rsatoolbox.rdm.compare(rdm_x, rdm_y, method='corr')``.

    Args:
        X: (stimuli, units_x). Y: (stimuli, units_y); at least 3 stimuli and 2 units each.
    """
    X, Y = as_pair(X, Y, min_stimuli=3)
    return pearson(upper_triangle(correlation_rdm(X)), upper_triangle(correlation_rdm(Y)))


def rank_average(x: Tensor) -> Tensor:
    """Ranks 1..m of a 1-D tensor, ties sharing their average rank (like scipy.stats.rankdata)."""
    _, inverse, counts = torch.unique(x, sorted=True, return_inverse=True, return_counts=True)
    ends = counts.cumsum(0).to(torch.float64)
    return (ends - (counts - 1) / 2.0)[inverse]


def rsa_spearman(X: Tensor, Y: Tensor) -> Tensor:
    """Spearman correlation between the upper triangles of the correlation-distance RDMs.

    NOT differentiable: ranks are piecewise constant, so the result is returned detached
    (``requires_grad`` is False) rather than with a silently-zero gradient; use
    :func:`rsa_pearson` for optimisation. Ties get average ranks, matching
    ``rsatoolbox.rdm.compare(rdm_x, rdm_y, method='spearman')``. Symmetric; in [-1, 1].

    Args:
        X: (stimuli, units_x). Y: (stimuli, units_y); at least 3 stimuli and 2 units each.
    """
    X, Y = as_pair(X, Y, min_stimuli=3)
    with torch.no_grad():
        rx = rank_average(upper_triangle(correlation_rdm(X)))
        ry = rank_average(upper_triangle(correlation_rdm(Y)))
        return pearson(rx, ry)
