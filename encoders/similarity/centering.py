"""Small helpers shared by the similarity measures: input checks, centring, stable linear algebra.

Conventions used throughout ``encoders.similarity``: a representation is a 2-D tensor of shape
(stimuli, units); two representations compared with each other must share the stimulus axis
(same number of rows, same stimulus order) but may have different numbers of units. Everything
is computed in float64.
"""

from __future__ import annotations

import torch
from torch import Tensor

DTYPE = torch.float64


def as_representation(X: Tensor, name: str = "X", min_stimuli: int = 2) -> Tensor:
    """Validate one (stimuli, units) representation and cast it to float64.

    Raises:
        ValueError: if ``X`` is not a 2-D tensor with at least ``min_stimuli`` rows and one column.
    """
    if not isinstance(X, Tensor):
        raise ValueError(f"{name} must be a torch.Tensor, got {type(X).__name__}")
    if X.ndim != 2:
        raise ValueError(f"{name} must be 2-D (stimuli, units), got shape {tuple(X.shape)}")
    if X.shape[0] < min_stimuli:
        raise ValueError(f"{name} needs at least {min_stimuli} stimuli, got {X.shape[0]}")
    if X.shape[1] < 1:
        raise ValueError(f"{name} needs at least one unit, got shape {tuple(X.shape)}")
    return X.to(DTYPE)


def as_pair(X: Tensor, Y: Tensor, min_stimuli: int = 2) -> tuple[Tensor, Tensor]:
    """Validate two representations of the same stimuli and cast both to float64.

    Raises:
        ValueError: on non-2-D inputs or a different number of stimuli (rows).
    """
    X = as_representation(X, "X", min_stimuli)
    Y = as_representation(Y, "Y", min_stimuli)
    if X.shape[0] != Y.shape[0]:
        raise ValueError(
            f"X and Y must have the same number of stimuli (rows): got {X.shape[0]} and "
            f"{Y.shape[0]}"
        )
    if X.device != Y.device:
        raise ValueError(f"X and Y are on different devices: {X.device} and {Y.device}")
    return X, Y


def center(X: Tensor) -> Tensor:
    """Subtract the mean over stimuli (rows) from every unit (column)."""
    return X - X.mean(dim=0, keepdim=True)


def center_gram(K: Tensor) -> Tensor:
    """Double-centre an (n, n) Gram matrix: H K H with H = I - 11ᵀ/n."""
    return K - K.mean(dim=0, keepdim=True) - K.mean(dim=1, keepdim=True) + K.mean()


def upper_triangle(M: Tensor) -> Tensor:
    """Entries strictly above the diagonal of a square matrix, row by row (i < j)."""
    i, j = torch.triu_indices(M.shape[0], M.shape[1], offset=1, device=M.device)
    return M[i, j]


def pearson(a: Tensor, b: Tensor) -> Tensor:
    """Pearson correlation of two 1-D tensors (differentiable)."""
    a = a - a.mean()
    b = b - b.mean()
    return (a @ b) / (a.norm() * b.norm())


def pearson_columns(A: Tensor, B: Tensor) -> Tensor:
    """Pearson correlation between matching columns of two (n, k) tensors, shape (k,).

    A column with zero variance gets r = 0 instead of NaN (its covariance is also zero).
    """
    A = A - A.mean(dim=0, keepdim=True)
    B = B - B.mean(dim=0, keepdim=True)
    denom = (A.pow(2).sum(0) * B.pow(2).sum(0)).sqrt()
    tiny = torch.finfo(A.dtype).tiny
    return (A * B).sum(0) / denom.clamp_min(tiny)


def nuclear_norm(A: Tensor, rtol: float | None = None) -> Tensor:
    """Nuclear norm ||A||_* (sum of singular values) with a gradient that stays finite.

    Why not differentiate through ``torch.linalg.svd``: its backward divides by differences of
    singular values as soon as U or V enter the graph (NaN for repeated ones), and a sqrt of
    eigenvalues has an infinite slope at the zero ones (rank-deficient A). The nuclear norm
    itself needs none of that: by Danskin's theorem on
    ||A||_* = max_{||W||_op <= 1} <W, A>, its (sub)gradient is the maximiser W = U Vᵀ. We therefore
    build the value as Σ_i u_iᵀ A v_i with the singular vectors detached, which has exactly that
    gradient. Singular values below ``rtol * s_max`` (numerically zero) are kept in the value but
    excluded from the gradient, giving the minimum-norm subgradient U_r V_rᵀ, which is finite and
    deterministic for rank-deficient A.

    Args:
        A: a 2-D tensor.
        rtol: relative threshold on singular values; default ``max(A.shape) * eps(dtype)``.
    """
    U, S, Vh = torch.linalg.svd(A.detach(), full_matrices=False)
    if rtol is None:
        rtol = max(A.shape) * torch.finfo(A.dtype).eps
    keep = S > rtol * S.max().clamp_min(torch.finfo(A.dtype).tiny)
    U, Vh = U[:, keep], Vh[keep]
    # (Uᵀ A V)_ii == s_i in value; only the dependence on A through this product carries gradient.
    kept = (U * (A @ Vh.mT)).sum()
    return kept + S[~keep].sum()


def safe_sqrt(x: Tensor, floor: float = 1e-12) -> Tensor:
    """sqrt(max(x, 0)) whose gradient is 0 (not inf) where x <= ``floor``.

    Used for distances that reach 0 at their optimum (X = Y), where sqrt has an infinite slope.
    """
    return torch.where(x > floor, x.clamp_min(floor).sqrt(), x.clamp(0.0, floor).detach().sqrt())


def safe_arccos(x: Tensor, margin: float = 1e-12) -> Tensor:
    """arccos of a cosine clipped to [-1, 1]; the gradient is 0 within ``margin`` of ±1.

    The true slope of arccos is infinite at ±1 (reached at X = Y for NBS); zero is a valid
    (Clarke) subgradient there because ±1 is the extremum of the cosine.
    """
    inner = torch.arccos(x.clamp(-1.0 + margin, 1.0 - margin))
    # add back, without gradient, what the clamp cut off so the value is exact
    exact = torch.arccos(x.detach().clamp(-1.0, 1.0))
    return inner + (exact - inner.detach())
