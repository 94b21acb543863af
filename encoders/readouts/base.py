"""What every readout is: core features (B, C, h, w) -> (B, n_neurons) for one session, and where each neuron reads.

Every readout has per-neuron `features` weights of shape (n_neurons, F) and a `bias` (n_neurons,),
an L1-style `regularizer()`, and answers where on the core's feature grid each neuron reads
(`spatial_maps`, `locations`), so figures and analyses ask the readout instead of branching on its type.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn


class Readout(nn.Module):
    """Base class: subclasses set `in_shape`, `n_neurons`, `features` (n_neurons, F), `bias` (n_neurons,)."""

    in_shape: tuple[int, int, int]
    n_neurons: int
    features: nn.Parameter
    bias: nn.Parameter

    def forward(self, features: Tensor, neurons: Tensor | None = None) -> Tensor:
        """(B, C, h, w) core features -> (B, n_neurons) pre-nonlinearity responses; with `neurons` (B,), (B,) for one neuron per image."""
        raise NotImplementedError

    def regularizer(self) -> Tensor:
        raise NotImplementedError

    def share_with(self, first: "Readout") -> None:
        """Take over parts that all sessions share from the first session's readout (default: none)."""

    def spatial_maps(self, core_features: Tensor) -> Tensor:
        """How much each neuron weights each grid position, (B, n_neurons, h, w), each map summing to 1."""
        raise NotImplementedError

    def locations(self, core_features: Tensor) -> Tensor:
        """Where each neuron reads, as (x, y) feature-grid cell indices (cell centres at 0, 1, ...), (n_neurons, 2).

        The centre of mass of the spatial maps averaged over the given images.
        """
        maps = self.spatial_maps(core_features).mean(0)
        _, h, w = maps.shape
        x = (maps.sum(1) * torch.arange(w, dtype=maps.dtype, device=maps.device)).sum(1)
        y = (maps.sum(2) * torch.arange(h, dtype=maps.dtype, device=maps.device)).sum(1)
        return torch.stack([x, y], dim=1) / maps.sum((1, 2)).clamp_min(1e-12)[:, None]
