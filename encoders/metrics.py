"""Per-neuron metrics of predicted against recorded responses, vectorised over neurons.

Conventions: predictions (images, neurons); responses averaged over repeats (images, neurons);
trials (images, repeats, neurons) with NaN for missing repeats.
"""

from __future__ import annotations

import torch


def correlation(x: torch.Tensor, y: torch.Tensor, dim: int = 0, eps: float = 1e-8) -> torch.Tensor:
    """Pearson correlation along `dim` (default: over images, one value per neuron)."""
    x = x - x.mean(dim, keepdim=True)
    y = y - y.mean(dim, keepdim=True)
    num = (x * y).sum(dim)
    den = (x.pow(2).sum(dim) * y.pow(2).sum(dim)).sqrt()
    return num / den.clamp_min(eps)


def single_trial_correlation(predictions: torch.Tensor, trials: torch.Tensor) -> torch.Tensor:
    """Correlation of predictions with every recorded single trial (prediction repeated per trial)."""
    valid = ~torch.isnan(trials)  # (N, R, n)
    pred = predictions[:, None, :].expand_as(trials)
    out = []
    for neuron in range(trials.shape[2]):
        mask = valid[:, :, neuron]
        out.append(correlation(pred[:, :, neuron][mask], trials[:, :, neuron][mask]))
    return torch.stack(out)


def correlation_to_average(predictions: torch.Tensor, trials: torch.Tensor) -> torch.Tensor:
    """Correlation of predictions with the mean over repeats (Sensorium's 'correlation to average')."""
    return correlation(predictions, torch.nanmean(trials, dim=1))


def oracle_correlation(trials: torch.Tensor) -> torch.Tensor:
    """Leave-one-out oracle: each trial against the mean of the other repeats of the same image.

    Images with fewer than two repeats are left out. An upper bound for single-trial correlation.
    """
    valid = ~torch.isnan(trials)
    counts = valid.sum(1, keepdim=True)  # (N, 1, n)
    filled = torch.nan_to_num(trials)
    loo = (filled.sum(1, keepdim=True) - filled) / (counts - 1).clamp_min(1)
    keep = valid & (counts > 1)
    out = []
    for neuron in range(trials.shape[2]):
        mask = keep[:, :, neuron]
        out.append(correlation(filled[:, :, neuron][mask], loo[:, :, neuron][mask]))
    return torch.stack(out)


def feve(predictions: torch.Tensor, trials: torch.Tensor) -> torch.Tensor:
    """Fraction of explainable variance explained (Cadena et al. 2019), one value per neuron.

    FEVE = 1 - (MSE(trial, prediction) - noise variance) / (total variance - noise variance), where
    the noise variance is the mean over images of the across-repeat variance.
    """
    valid = ~torch.isnan(trials)
    counts = valid.sum(1).clamp_min(1).to(trials.dtype)  # (N, n)
    filled = torch.nan_to_num(trials)
    image_mean = filled.sum(1) / counts
    noise_var = (((filled - image_mean[:, None]) ** 2) * valid).sum(1) / (counts - 1).clamp_min(1)
    noise_var = noise_var.mean(0)
    n_trials = valid.sum((0, 1)).to(trials.dtype)
    grand_mean = filled.sum((0, 1)) / n_trials
    total_var = (((filled - grand_mean) ** 2) * valid).sum((0, 1)) / (n_trials - 1)
    mse = (((filled - predictions[:, None]) ** 2) * valid).sum((0, 1)) / n_trials
    return 1 - (mse - noise_var) / (total_var - noise_var)


def poisson_loss(rates: torch.Tensor, responses: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Summed Poisson negative log-likelihood (without the log y! term), NaN responses masked."""
    mask = torch.isfinite(responses)
    targets = torch.where(mask, responses, torch.zeros_like(responses))
    loss = rates - targets * torch.log(rates + eps)
    return (loss * mask).sum()
