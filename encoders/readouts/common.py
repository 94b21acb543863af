"""What every readout shares: argument checks and the bias that starts each neuron at its mean rate."""

from __future__ import annotations

import torch
from torch import Tensor


def check_readout_args(in_shape: tuple[int, int, int], n_neurons: int) -> None:
    """Raise ValueError unless in_shape is (C, h, w) of positive ints and n_neurons is positive."""
    if len(in_shape) != 3 or any(isinstance(s, bool) or not isinstance(s, int) or s < 1 for s in in_shape):
        raise ValueError(f"in_shape must be (C, h, w) with positive integers, got {in_shape!r}")
    if isinstance(n_neurons, bool) or not isinstance(n_neurons, int) or n_neurons < 1:
        raise ValueError(f"n_neurons must be a positive integer, got {n_neurons!r}")


def initial_bias(mean_activity: Tensor | None, n_neurons: int, eps: float = 1e-3) -> Tensor:
    """Per-neuron bias b such that ELU(b) + 1 equals the mean training response.

    Inverse of f(x) = ELU(x) + 1: x = m - 1 for m >= 1, x = log(m) for m < 1 (m clamped to
    >= eps, since the model cannot predict rates <= 0). Assumes the model's output offset
    is 0; with ``ELU(y + offset) + 1`` subtract the offset from the result. None gives zeros
    (initial rate 1).
    """
    if mean_activity is None:
        return torch.zeros(n_neurons)
    mean = torch.as_tensor(mean_activity, dtype=torch.float32).detach().flatten()
    if mean.numel() != n_neurons:
        raise ValueError(f"mean_activity has {mean.numel()} values but n_neurons is {n_neurons}")
    mean = mean.clamp(min=eps)
    return torch.where(mean >= 1, mean - 1, torch.log(mean))
