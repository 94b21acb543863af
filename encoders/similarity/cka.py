"""Centred kernel alignment (Kornblith et al. 2019), linear and RBF, biased and unbiased HSIC.

CKA(K, L) = HSIC(K, L) / sqrt(HSIC(K, K) HSIC(L, L)) with K, L stimulus-by-stimulus Gram
matrices. Symmetric in X and Y; invariant to orthogonal transforms and isotropic scaling of
either representation; linear CKA is also invariant to translation (features are centred).
"""

from __future__ import annotations

import torch
from torch import Tensor

from encoders.similarity.centering import as_pair, center, center_gram, upper_triangle


def cka_linear(X: Tensor, Y: Tensor) -> Tensor:
    """Linear CKA with the biased HSIC estimator (Kornblith et al. 2019, eq. 5).

    CKA = ||Ycᵀ Xc||_F² / (||Xcᵀ Xc||_F ||Ycᵀ Yc||_F), X and Y centred over stimuli. Computed in
    feature space (cost n·d²) or stimulus space (cost n²·d), whichever is cheaper; both are
    exact. Symmetric; in [0, 1]; 1 iff Yc = c Xc Q for orthogonal Q.

    Args:
        X: (stimuli, units_x). Y: (stimuli, units_y).
    """
    X, Y = as_pair(X, Y)
    Xc, Yc = center(X), center(Y)
    n, dx, dy = X.shape[0], X.shape[1], Y.shape[1]
    if n < max(dx, dy):
        K, L = Xc @ Xc.mT, Yc @ Yc.mT
        return (K * L).sum() / (K.norm() * L.norm())
    return (Xc.mT @ Yc).pow(2).sum() / ((Xc.mT @ Xc).norm() * (Yc.mT @ Yc).norm())


def _hsic_unbiased_linear(A: Tensor, B: Tensor) -> Tensor:
    """Unbiased HSIC (Song et al. 2012, eq. 5) of linear kernels K = AAᵀ, L = BBᵀ, times n(n-3).

    With K̃, L̃ the Gram matrices with zeroed diagonals:
    n(n-3)·HSIC_u = tr(K̃L̃) + (1ᵀK̃1)(1ᵀL̃1)/((n-1)(n-2)) - 2/(n-2)·1ᵀK̃L̃1.
    Every term is evaluated in O(n·d) through A and B, without forming n×n matrices.
    """
    n = A.shape[0]
    diag_k = A.pow(2).sum(1)
    diag_l = B.pow(2).sum(1)
    tr_kl = (A.mT @ B).pow(2).sum() - (diag_k * diag_l).sum()
    sum_a, sum_b = A.sum(0), B.sum(0)
    k1 = A @ sum_a - diag_k  # K̃1
    l1 = B @ sum_b - diag_l  # L̃1
    sum_k, sum_l = k1.sum(), l1.sum()
    return tr_kl + sum_k * sum_l / ((n - 1) * (n - 2)) - 2.0 / (n - 2) * (k1 @ l1)


def cka_linear_unbiased(X: Tensor, Y: Tensor) -> Tensor:
    """Linear CKA with the unbiased HSIC estimator of Song et al. (2012).

    X and Y are centred over stimuli first (as in Kornblith et al.'s reference code); the
    estimator itself is then applied to the linear Gram matrices. Removes the upward bias of the
    biased estimator when units ≳ stimuli; can be slightly negative for unrelated
    representations. Symmetric. Needs at least 4 stimuli.

    Args:
        X: (stimuli, units_x). Y: (stimuli, units_y).
    """
    X, Y = as_pair(X, Y, min_stimuli=4)
    Xc, Yc = center(X), center(Y)
    hxy = _hsic_unbiased_linear(Xc, Yc)
    hxx = _hsic_unbiased_linear(Xc, Xc)
    hyy = _hsic_unbiased_linear(Yc, Yc)
    return hxy / (hxx * hyy).sqrt()


def rbf_gram(X: Tensor, bandwidth_factor: float = 1.0) -> Tensor:
    """RBF Gram matrix exp(-||x_i - x_j||² / (2σ²)) with the median-heuristic bandwidth.

    σ = bandwidth_factor · median_{i<j} ||x_i - x_j||, using the lower median of the
    n(n-1)/2 off-diagonal distances (``torch.median``). The bandwidth depends on X and is
    differentiated through.
    """
    if bandwidth_factor <= 0:
        raise ValueError(f"bandwidth_factor must be positive, got {bandwidth_factor}")
    sq_norms = X.pow(2).sum(1)
    sq_dist = (sq_norms[:, None] + sq_norms[None, :] - 2.0 * (X @ X.mT)).clamp_min(0.0)
    # squared distances avoid sqrt'(0) = inf on the diagonal; median commutes with sqrt.
    sq_dist = sq_dist * (1.0 - torch.eye(X.shape[0], dtype=X.dtype, device=X.device))
    sigma_sq = bandwidth_factor**2 * torch.median(upper_triangle(sq_dist))
    return torch.exp(-sq_dist / (2.0 * sigma_sq))


def cka_rbf(X: Tensor, Y: Tensor, bandwidth_factor: float = 1.0) -> Tensor:
    """RBF-kernel CKA with the biased HSIC estimator and median-heuristic bandwidths.

    Each representation gets its own σ = bandwidth_factor · (median pairwise distance between
    its stimulus patterns), see :func:`rbf_gram`. Symmetric; invariant to translation,
    orthogonal transforms and isotropic scaling (σ scales with the data). Memory O(n²).

    Args:
        X: (stimuli, units_x). Y: (stimuli, units_y).
        bandwidth_factor: multiplies the median distance.
    """
    X, Y = as_pair(X, Y)
    K = center_gram(rbf_gram(X, bandwidth_factor))
    L = center_gram(rbf_gram(Y, bandwidth_factor))
    return (K * L).sum() / (K.norm() * L.norm())
