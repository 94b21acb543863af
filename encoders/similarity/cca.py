"""Canonical correlation analysis (mean canonical correlation) and SVCCA (Raghu et al. 2017)."""

from __future__ import annotations

import torch
from torch import Tensor

from encoders.similarity.centering import as_pair, center, nuclear_norm

# Relative ridge on the covariance before whitening: keeps Cholesky (and its gradient) defined for
# rank-deficient inputs; biases canonical correlations by ~RIDGE·mean_eigenvalue/eigenvalue.
RIDGE = 1e-10


def _cholesky_factor(Xc: Tensor) -> Tensor:
    """Lower Cholesky factor of XcᵀXc + ε·I, ε = RIDGE · mean eigenvalue (treated as a constant)."""
    C = Xc.mT @ Xc
    eps = RIDGE * (torch.diagonal(C).mean().detach().clamp_min(torch.finfo(C.dtype).tiny))
    return torch.linalg.cholesky(C + eps * torch.eye(C.shape[0], dtype=C.dtype, device=C.device))


def canonical_correlations_sum(X: Tensor, Y: Tensor) -> tuple[Tensor, int]:
    """Sum of the canonical correlations of centred X and Y, and their count min(rank Xc, rank Yc).

    Canonical correlations are the singular values of Lx⁻¹ Xcᵀ Yc Ly⁻ᵀ (Cholesky whitening);
    the sum is a nuclear norm with a finite gradient for repeated singular values, see
    :func:`~encoders.similarity.centering.nuclear_norm`.
    """
    Xc, Yc = center(X), center(Y)
    Lx, Ly = _cholesky_factor(Xc), _cholesky_factor(Yc)
    M = torch.linalg.solve_triangular(Lx, Xc.mT @ Yc, upper=False)
    M = torch.linalg.solve_triangular(Ly, M.mT, upper=False).mT
    with torch.no_grad():
        k = int(min(torch.linalg.matrix_rank(Xc), torch.linalg.matrix_rank(Yc)))
    return nuclear_norm(M), max(k, 1)


def cca_mean(X: Tensor, Y: Tensor) -> Tensor:
    """Mean canonical correlation between X and Y (both centred over stimuli), in [0, 1].

    Averages the min(rank Xc, rank Yc) canonical correlations. Symmetric; invariant to any
    invertible linear transform of either representation (not only orthogonal ones), so it
    saturates at 1 when units_x or units_y >= stimuli - 1. A 1e-10 relative ridge on each
    covariance keeps the gradient finite for rank-deficient inputs.

    Args:
        X: (stimuli, units_x). Y: (stimuli, units_y).
    """
    X, Y = as_pair(X, Y, min_stimuli=3)
    total, k = canonical_correlations_sum(X, Y)
    return total / k


def svd_reduce(X: Tensor, variance: float = 0.99) -> Tensor:
    """Centred X projected on its fewest top principal axes explaining ``variance`` of it.

    The principal axes are computed without gradient and treated as constants, so the gradient
    flows only through the projection of X (the choice of subspace is not differentiated; this
    keeps it finite for repeated singular values, where the axes are not unique).
    """
    if not 0.0 < variance <= 1.0:
        raise ValueError(f"variance must be in (0, 1], got {variance}")
    Xc = center(X)
    with torch.no_grad():
        _, S, Vh = torch.linalg.svd(Xc, full_matrices=False)
        ratio = S.pow(2).cumsum(0) / S.pow(2).sum()
        # fewest components reaching the threshold; small tolerance so 0.99 of exactly-0.99 counts
        k = int((ratio < variance - 1e-12).sum()) + 1
        k = min(k, Vh.shape[0])
    return Xc @ Vh[:k].mT


def svcca(X: Tensor, Y: Tensor, variance: float = 0.99) -> Tensor:
    """SVCCA (Raghu et al. 2017): mean canonical correlation after keeping, in each
    representation separately, the top principal components explaining ``variance`` (99%) of
    its variance. Symmetric; in [0, 1]. See :func:`svd_reduce` for the gradient convention.

    Args:
        X: (stimuli, units_x). Y: (stimuli, units_y).
        variance: fraction of variance kept in each representation.
    """
    X, Y = as_pair(X, Y, min_stimuli=3)
    return cca_mean(svd_reduce(X, variance), svd_reduce(Y, variance))
