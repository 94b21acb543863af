"""Smoothness penalties on convolution filters."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def laplace_kernel(dtype: torch.dtype = torch.float32, device: torch.device | None = None) -> Tensor:
    """Return the 3x3 discrete Laplace operator as a conv2d weight of shape (1, 1, 3, 3)."""
    kernel = torch.tensor([[0.0, -1.0, 0.0], [-1.0, 4.0, -1.0], [0.0, -1.0, 0.0]], dtype=dtype, device=device)
    return kernel[None, None]


def laplace(weight: Tensor) -> Tensor:
    """Apply the Laplace operator to every 2D filter of a conv weight (out, in, kh, kw).

    Zero padding keeps the filter size, so energy at the filter border is penalised too
    (as in neuralpredictors' ``Laplace``).
    """
    out_ch, in_ch, kh, kw = weight.shape
    filters = weight.reshape(out_ch * in_ch, 1, kh, kw)
    kernel = laplace_kernel(weight.dtype, weight.device)
    return F.conv2d(filters, kernel, padding=kernel.shape[-1] // 2).reshape(out_ch, in_ch, kh, kw)


def laplace_l2_normalised(weight: Tensor) -> Tensor:
    """Laplace smoothness of conv filters, normalised by their energy.

    Computes ``sum(laplace(w)**2) / sum(w**2)`` with both sums over all filters, exactly like
    neuralpredictors' ``LaplaceL2norm`` (a ratio of totals, not a sum of per-filter ratios).
    The normalisation makes the penalty invariant to the filters' overall scale, so it
    rewards smooth shapes rather than simply shrinking the weights.
    """
    if weight.dim() != 4:
        raise ValueError(f"expected a conv2d weight of shape (out, in, kh, kw), got shape {tuple(weight.shape)}")
    return laplace(weight).pow(2).sum() / weight.pow(2).sum()
