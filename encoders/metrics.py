"""Per-neuron metrics of predicted against recorded responses, vectorised over neurons.

Conventions: predictions (images, neurons); responses averaged over repeats (images, neurons);
trials (images, repeats, neurons) with NaN for missing repeats.

A metric that is undefined for a neuron is NaN there, never 0 or -inf: correlations of a neuron
whose predictions or responses do not vary (or that has fewer than two values), and FEVE of a
neuron without explainable variance. Each such call warns once with a `NoVarianceWarning` that
names the neurons' indices (its `indices` attribute holds them, for callers that add session or
neuron ids); summaries over neurons (`neuron_mean`, `summarize`) skip NaN.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping

import numpy as np
import torch

MAX_LISTED = 10  # indices spelled out in a warning


class NoVarianceWarning(RuntimeWarning):
    """A metric is NaN for some neurons because there was no variance to measure against."""

    def __init__(self, message: str, metric: str = "", indices: list | None = None):
        super().__init__(message)
        self.metric = metric
        self.indices = list(indices or [])


def correlation(x: torch.Tensor, y: torch.Tensor, dim: int = 0, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation along `dim` (default: over images, one value per neuron).

    NaN (with a `NoVarianceWarning`) where x or y is constant along `dim`; the other entries and
    their gradients are unaffected, so it can be used in differentiable energies. `eps` bounds the
    denominator of the entries that do vary.
    """
    r, undefined = _pearson(x, y, dim, eps)
    if undefined.any():
        per_neuron = r.ndim == 1 and dim in (0, -max(x.ndim, y.ndim))
        _warn(
            "correlation", undefined, "no variance (constant predictions or responses)" if per_neuron
            else f"no variance along dim {dim} (constant x or y)", per_neuron,
        )
    return r


def single_trial_correlation(predictions: torch.Tensor, trials: torch.Tensor) -> torch.Tensor:
    """Correlation of predictions with every recorded single trial (prediction repeated per trial)."""
    valid = ~torch.isnan(trials)  # (N, R, n)
    pred = predictions[:, None, :].expand_as(trials)
    out, undefined = [], []
    for neuron in range(trials.shape[2]):
        mask = valid[:, :, neuron]
        r, bad = _pearson(pred[:, :, neuron][mask], trials[:, :, neuron][mask], 0)
        out.append(r)
        undefined.append(bad)
    _warn("single_trial_correlation", torch.stack(undefined), "no variance (constant predictions or trials)")
    return torch.stack(out)


def correlation_to_average(predictions: torch.Tensor, trials: torch.Tensor) -> torch.Tensor:
    """Correlation of predictions with the mean over repeats (Sensorium's 'correlation to average')."""
    r, undefined = _pearson(predictions, torch.nanmean(trials, dim=1), 0)
    _warn("correlation_to_average", undefined, "no variance (constant predictions or trial averages)")
    return r


def oracle_correlation(trials: torch.Tensor) -> torch.Tensor:
    """Leave-one-out oracle: each trial against the mean of the other repeats of the same image.

    Images with fewer than two repeats are left out. An upper bound for single-trial correlation.
    NaN for a neuron whose trials (or leave-one-out means) do not vary.
    """
    valid = ~torch.isnan(trials)
    counts = valid.sum(1, keepdim=True)  # (N, 1, n)
    filled = torch.nan_to_num(trials)
    loo = (filled.sum(1, keepdim=True) - filled) / (counts - 1).clamp_min(1)
    keep = valid & (counts > 1)
    out, undefined = [], []
    for neuron in range(trials.shape[2]):
        mask = keep[:, :, neuron]
        r, bad = _pearson(filled[:, :, neuron][mask], loo[:, :, neuron][mask], 0)
        out.append(r)
        undefined.append(bad)
    _warn("oracle_correlation", torch.stack(undefined), "no variance (constant trials, or no image with two repeats)")
    return torch.stack(out)


def feve(predictions: torch.Tensor, trials: torch.Tensor) -> torch.Tensor:
    """Fraction of explainable variance explained (Cadena et al. 2019), one value per neuron.

    FEVE = 1 - (MSE(trial, prediction) - noise variance) / (total variance - noise variance), where
    the noise variance is the mean over images of the across-repeat variance.

    NaN (with a `NoVarianceWarning`) for a neuron without explainable variance: constant trials
    (e.g. all zero), fewer than two trials, or noise variance at least the total variance. Constant
    predictions are fine here: FEVE then measures how far their level is off (about 0 at the mean).
    """
    valid = ~torch.isnan(trials)
    counts = valid.sum(1).clamp_min(1).to(trials.dtype)  # (N, n)
    filled = torch.nan_to_num(trials)
    image_mean = filled.sum(1) / counts
    noise_var = (((filled - image_mean[:, None]) ** 2) * valid).sum(1) / (counts - 1).clamp_min(1)
    noise_var = noise_var.mean(0)
    n_trials = valid.sum((0, 1)).to(trials.dtype)
    grand_mean = filled.sum((0, 1)) / n_trials.clamp_min(1)
    total_var = (((filled - grand_mean) ** 2) * valid).sum((0, 1)) / (n_trials - 1).clamp_min(1)
    mse = (((filled - predictions[:, None]) ** 2) * valid).sum((0, 1)) / n_trials.clamp_min(1)
    explainable = total_var - noise_var
    # constant-ness exactly (max == min over valid trials): rounding can leave a tiny explainable variance
    constant = n_trials < 2
    if trials.shape[0] * trials.shape[1] > 0:
        low = torch.where(valid, trials, torch.full_like(trials, float("inf"))).amin((0, 1))
        high = torch.where(valid, trials, torch.full_like(trials, -float("inf"))).amax((0, 1))
        constant = constant | (low == high)
    undefined = constant | ~(explainable > 0)
    out = 1 - (mse - noise_var) / torch.where(undefined, torch.ones_like(explainable), explainable)
    out = torch.where(undefined, torch.full_like(out, float("nan")), out)
    _warn("feve", constant, "no variance (constant trials, or fewer than two trials)")
    _warn("feve", undefined & ~constant, "no explainable variance (noise variance >= total variance)")
    return out


def poisson_loss(rates: torch.Tensor, responses: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Summed Poisson negative log-likelihood (without the log y! term), NaN responses masked."""
    mask = torch.isfinite(responses)
    targets = torch.where(mask, responses, torch.zeros_like(responses))
    loss = rates - targets * torch.log(rates + eps)
    return (loss * mask).sum()


def neuron_mean(values: torch.Tensor | np.ndarray) -> float:
    """Mean of a per-neuron metric over the neurons where it is defined (NaN skipped); NaN if none is."""
    if isinstance(values, torch.Tensor):
        values = values.detach().double().cpu().numpy()
    array = np.asarray(values, dtype=np.float64).ravel()
    finite = array[~np.isnan(array)]
    return float(finite.mean()) if finite.size else float("nan")


def summarize(metrics: Mapping[str, torch.Tensor | np.ndarray]) -> dict[str, float]:
    """NaN-aware mean over neurons of each per-neuron metric, e.g. {"correlation": 0.41, ...}."""
    return {name: neuron_mean(values) for name, values in metrics.items()}


# ---- internals ----------------------------------------------------------------------------------
def _pearson(x: torch.Tensor, y: torch.Tensor, dim: int, eps: float = 1e-8) -> tuple[torch.Tensor, torch.Tensor]:
    """Pearson r along `dim` and where it is undefined (x or y constant, or fewer than one value).

    Undefined entries are NaN through torch.where on safe operands, so their backward is zero and
    the gradients of the defined entries stay finite. NaN inputs give NaN, not a warning.
    """
    xc = x - x.mean(dim, keepdim=True)
    yc = y - y.mean(dim, keepdim=True)
    num = (xc * yc).sum(dim)
    product = xc.pow(2).sum(dim) * yc.pow(2).sum(dim)
    if torch.broadcast_shapes(x.shape, y.shape)[dim] == 0:
        undefined = torch.ones_like(num, dtype=torch.bool)
    else:
        with torch.no_grad():
            # exact constant-ness: x - mean(x) of a constant need not be exactly 0 in floating point
            undefined = (x.amax(dim) == x.amin(dim)) | (y.amax(dim) == y.amin(dim)) | (product == 0)
            undefined = undefined.expand_as(num)
    den = torch.where(undefined, torch.ones_like(product), product).sqrt().clamp_min(eps)
    r = torch.where(undefined, torch.full_like(num, float("nan")), num / den)
    return r, undefined


def _warn(metric: str, undefined: torch.Tensor, reason: str, per_neuron: bool = True) -> None:
    if not bool(undefined.any()):
        return
    if undefined.ndim == 0:
        warnings.warn(NoVarianceWarning(f"{metric} is NaN: {reason}", metric, []), stacklevel=3)
        return
    where = torch.nonzero(undefined.cpu())
    indices = where[:, 0].tolist() if undefined.ndim == 1 else [tuple(row) for row in where.tolist()]
    listed = ", ".join(str(i) for i in indices[:MAX_LISTED]) + (", ..." if len(indices) > MAX_LISTED else "")
    what = "neuron indices" if per_neuron else "positions"
    message = f"{metric} is NaN for {len(indices)} of {undefined.numel()} {what} [{listed}]: {reason}"
    warnings.warn(NoVarianceWarning(message, metric, indices), stacklevel=3)
