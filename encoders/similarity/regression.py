"""Cross-validated ridge regression from a model representation X to neural responses Y."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from encoders.similarity.centering import as_pair, pearson_columns

# Relative penalties: α = λ · (mean non-zero eigenvalue of the training XᵀX), so the grid does not
# depend on the scale of X.
DEFAULT_LAMBDAS: tuple[float, ...] = tuple(10.0**k for k in range(-4, 5))


@dataclass(frozen=True)
class RidgeResult:
    """Outcome of :func:`ridge_cv`.

    Attributes:
        per_neuron_r: (units_y,) Pearson r between out-of-fold predictions and responses.
        r2: scalar pooled R² = 1 - Σ(Y - Ŷ)² / Σ(Y - mean_stimuli(Y))² over all neurons.
        lambdas: (n_folds, units_y) relative λ chosen by inner CV for each outer fold and neuron.
        predictions: (stimuli, units_y) out-of-fold predictions Ŷ.
    """

    per_neuron_r: Tensor
    r2: Tensor
    lambdas: Tensor
    predictions: Tensor


def kfold_indices(n: int, n_folds: int, seed: int) -> list[Tensor]:
    """Test indices of ``n_folds`` disjoint folds covering range(n), deterministic given ``seed``.

    Raises:
        ValueError: unless 2 <= n_folds <= n.
    """
    if n_folds < 2 or n_folds > n:
        raise ValueError(f"need 2 <= n_folds <= {n} samples, got n_folds={n_folds}")
    g = torch.Generator().manual_seed(seed)
    return list(torch.tensor_split(torch.randperm(n, generator=g), n_folds))


def _penalty_scale(Xc: Tensor) -> Tensor:
    """Mean non-zero eigenvalue of XcᵀXc (≈ trace / rank), the unit of the relative λ grid.

    Not detached: α depends on X, and the gradient of the fitted model accounts for that.
    """
    scale = Xc.pow(2).sum() / min(Xc.shape)
    return scale.clamp_min(torch.finfo(Xc.dtype).tiny)


@torch.no_grad()
def _inner_cv_errors(X: Tensor, Y: Tensor, alphas: Tensor, inner_folds: int, seed: int) -> Tensor:
    """Summed validation squared error, shape (n_alphas, units_y), over inner folds of (X, Y).

    One eigendecomposition per fold (of XaᵀXa, or of XaXaᵀ when units > stimuli; cheaper than
    an SVD of Xa) evaluates every α at once: Ŷ = (Xb V) diag(1 / (λ + α)) (Vᵀ Xaᵀ Ya).
    """
    errors = torch.zeros(alphas.shape[0], Y.shape[1], dtype=X.dtype, device=X.device)
    for val in kfold_indices(X.shape[0], inner_folds, seed):
        train = torch.ones(X.shape[0], dtype=torch.bool, device=X.device)
        train[val] = False
        mx, my = X[train].mean(0), Y[train].mean(0)
        Xa, Ya, Xb, Yb = X[train] - mx, Y[train] - my, X[val] - mx, Y[val] - my
        if Xa.shape[1] <= Xa.shape[0]:
            lam, V = torch.linalg.eigh(Xa.mT @ Xa)
            left, right = Xb @ V, V.mT @ (Xa.mT @ Ya)
        else:
            lam, V = torch.linalg.eigh(Xa @ Xa.mT)
            left, right = (Xb @ Xa.mT) @ V, V.mT @ Ya
        shrink = 1.0 / (lam.clamp_min(0.0)[None, :] + alphas[:, None])  # (n_alphas, rank)
        pred = left[None] @ (shrink[:, :, None] * right[None])  # (n_alphas, n_val, units_y)
        errors += (pred - Yb[None]).pow(2).sum(1)
    return errors


def _ridge_fit_predict(Xtr: Tensor, Ytr: Tensor, Xte: Tensor, alpha: Tensor) -> Tensor:
    """Closed-form ridge (intercept unpenalised) fitted on (Xtr, Ytr), predicting at Xte.

    Uses ``torch.linalg.solve`` (primal when units_x <= stimuli, dual otherwise), whose gradient
    is stable for rank-deficient X because α > 0.
    """
    mx, my = Xtr.mean(0), Ytr.mean(0)
    Xa, Ya = Xtr - mx, Ytr - my
    n, d = Xa.shape
    if d <= n:
        eye = torch.eye(d, dtype=Xa.dtype, device=Xa.device)
        W = torch.linalg.solve(Xa.mT @ Xa + alpha * eye, Xa.mT @ Ya)
    else:
        eye = torch.eye(n, dtype=Xa.dtype, device=Xa.device)
        W = Xa.mT @ torch.linalg.solve(Xa @ Xa.mT + alpha * eye, Ya)
    return (Xte - mx) @ W + my


def ridge_cv(
    X: Tensor,
    Y: Tensor,
    n_folds: int = 5,
    inner_folds: int = 5,
    lambdas: tuple[float, ...] = DEFAULT_LAMBDAS,
    seed: int = 0,
) -> RidgeResult:
    """K-fold cross-validated ridge regression predicting Y (neurons) from X (model features).

    Convention: asymmetric, X → Y. Stimuli are split into ``n_folds`` outer folds
    (:func:`kfold_indices`, deterministic given ``seed``). In each outer training set, X and Y
    are centred by their training means (unpenalised intercept) and one λ per neuron is picked
    from the relative log grid ``lambdas`` (α = λ · mean non-zero eigenvalue of XᵀX) by
    ``inner_folds``-fold inner cross-validation; the model refitted on the whole outer training
    set predicts the held-out fold. Differentiable w.r.t. X and Y through the closed-form fit;
    the choice of λ (an argmin) is not differentiated.

    Args:
        X: (stimuli, units_x) model representation (predictor).
        Y: (stimuli, units_y) neural responses (predicted).
        n_folds: outer folds (>= 2). inner_folds: folds for λ selection (>= 2).
        lambdas: relative penalties to choose from (all > 0).
        seed: seeds the fold assignment.
    """
    X, Y = as_pair(X, Y)
    n = X.shape[0]
    if inner_folds < 2:
        raise ValueError(f"inner_folds must be >= 2, got {inner_folds}")
    if len(lambdas) == 0 or min(lambdas) <= 0:
        raise ValueError(f"lambdas must be a non-empty sequence of positive values, got {lambdas}")
    if n < n_folds or n - (n + n_folds - 1) // n_folds < 2 * inner_folds:
        raise ValueError(
            f"{n} stimuli are too few for {n_folds} outer x {inner_folds} inner folds"
        )
    grid = torch.tensor(lambdas, dtype=X.dtype, device=X.device)
    folds = kfold_indices(n, n_folds, seed)
    rows, preds, chosen = [], [], []
    for f, test in enumerate(folds):
        train = torch.ones(n, dtype=torch.bool, device=X.device)
        train[test] = False
        Xtr, Ytr = X[train], Y[train]
        alphas = grid * _penalty_scale(Xtr - Xtr.mean(0))
        best = _inner_cv_errors(Xtr, Ytr, alphas.detach(), inner_folds, seed + 1 + f).argmin(0)
        chosen.append(grid[best])
        cols, parts = [], []
        for a in best.unique():
            sel = (best == a).nonzero().squeeze(1)
            cols.append(sel)
            parts.append(_ridge_fit_predict(Xtr, Ytr[:, sel], X[test], alphas[a]))
        # scatter the λ-groups back into neuron order without in-place ops on graph tensors
        pred = torch.cat(parts, dim=1)[:, torch.argsort(torch.cat(cols))]
        rows.append(test)
        preds.append(pred)
    predictions = torch.cat(preds, dim=0)[torch.argsort(torch.cat(rows))]
    sse = (Y - predictions).pow(2).sum()
    sst = (Y - Y.mean(0)).pow(2).sum()
    return RidgeResult(
        per_neuron_r=pearson_columns(predictions, Y),
        r2=1.0 - sse / sst,
        lambdas=torch.stack(chosen),
        predictions=predictions,
    )


def ridge_r2(X: Tensor, Y: Tensor) -> Tensor:
    """Pooled out-of-fold R² of cross-validated ridge from X (model) to Y (neurons).

    :func:`ridge_cv` with 5 outer x 5 inner folds, seed 0 and the default λ grid.
    Asymmetric; <= 1, can be negative.

    Args:
        X: (stimuli, units_x) predictor. Y: (stimuli, units_y) predicted.
    """
    return ridge_cv(X, Y).r2
