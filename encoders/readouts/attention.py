"""Attention readout (Pierzchlewicz et al. 2023): each neuron pools the core features with a learned query."""

from __future__ import annotations

import math

import torch
from torch import Tensor, nn

from encoders.readouts.base import Readout
from encoders.readouts.common import check_readout_args, initial_bias
from encoders.readouts.positional import sinusoidal_2d


class AttentionReadout(Readout):
    """Multi-head attention pooling over space with one learned query per neuron.

    features + fixed positional encoding -> dropout -> shared bias-free linear map to keys
    and values (embed_dim each) -> per head, softmax over the h*w positions of
    ``key . query / sqrt(head_dim) / temperature`` -> attention-weighted values (B, n, embed_dim)
    -> per-neuron weights dot product + per-neuron bias.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        n_neurons: int,
        mean_activity: Tensor | None = None,
        embed_dim: int = 64,
        heads: int = 4,
        temperature: float = 1.0,
        dropout: float = 0.1,
        gamma_features: float = 0.0076,
        gamma_query: float = 0.0,
        pool: int = 1,
        query_init: str = "normal",
        shared_key_value: bool = False,
    ) -> None:
        """
        Args:
            in_shape: (C, h, w) of the core output; C must be a multiple of 4 so that the
                positional encoding can be added.
            n_neurons: neurons of this recording session.
            mean_activity: (n_neurons,) mean training response, used to initialise the bias
                (see ``encoders.readouts.common.initial_bias``).
            embed_dim: size of keys, values and queries; must be divisible by heads.
            heads: number of attention heads.
            temperature: divides the attention logits; > 1 gives broader attention.
            dropout: dropout probability on the position-encoded features.
            gamma_features: weight of the L1 penalty (sum) on the per-neuron feature weights.
            gamma_query: weight of the L1 penalty (sum) on the queries.
            pool: average-pool the core features over pool x pool windows before attending: pool**2 times
                fewer positions, the readout's cost scales with them.
            query_init: "normal" draws every query entry from N(0, 1); "constant" sets every entry to
                1 / C (C = in_shape channels), as nnvision's SharedMultiHeadAttention2d (Pierzchlewicz et al.
                2023): all neurons then start with the same query, hence the same attention map.
            shared_key_value: one key/value projection for every session of a model (the paper's single
                readout over all neurons): the sessions' neurons then learn it together from all the data.
        """
        super().__init__()
        check_readout_args(in_shape, n_neurons)
        channels, h, w = in_shape
        if channels % 4 != 0:
            raise ValueError(f"in_shape channels must be a multiple of 4 for the positional encoding, got {channels}")
        if isinstance(embed_dim, bool) or not isinstance(embed_dim, int) or embed_dim < 1:
            raise ValueError(f"embed_dim must be a positive integer, got {embed_dim!r}")
        if isinstance(heads, bool) or not isinstance(heads, int) or heads < 1:
            raise ValueError(f"heads must be a positive integer, got {heads!r}")
        if embed_dim % heads != 0:
            raise ValueError(f"embed_dim ({embed_dim}) must be divisible by heads ({heads})")
        if temperature <= 0:
            raise ValueError(f"temperature must be > 0, got {temperature}")
        if not 0.0 <= dropout < 1.0:
            raise ValueError(f"dropout must be in [0, 1), got {dropout}")
        if isinstance(pool, bool) or not isinstance(pool, int) or not 1 <= pool <= min(h, w):
            raise ValueError(f"pool must be an integer from 1 to the feature size {min(h, w)}, got {pool!r}")
        if gamma_features < 0 or gamma_query < 0:
            raise ValueError(f"gamma_features and gamma_query must be >= 0, got {gamma_features}, {gamma_query}")
        if query_init not in ("normal", "constant"):
            raise ValueError(f"query_init must be 'normal' or 'constant', got {query_init!r}")

        self.in_shape = tuple(in_shape)
        self.n_neurons = n_neurons
        self.embed_dim = embed_dim
        self.heads = heads
        self.temperature = temperature
        self.scale = 1.0 / math.sqrt(embed_dim // heads)
        self.gamma_features = gamma_features
        self.gamma_query = gamma_query

        self.pool = pool
        self.positions = (h // pool, w // pool)
        self.register_buffer("position_encoding", sinusoidal_2d(channels, *self.positions))
        self.dropout = nn.Dropout(dropout)
        self.shared_key_value = bool(shared_key_value)
        self.to_key_value = nn.Linear(channels, 2 * embed_dim, bias=False)
        if query_init == "normal":
            self.query = nn.Parameter(torch.randn(n_neurons, embed_dim))
        else:
            self.query = nn.Parameter(torch.full((n_neurons, embed_dim), 1.0 / channels))
        self.features = nn.Parameter(torch.full((n_neurons, embed_dim), 1.0 / embed_dim))
        self.bias = nn.Parameter(initial_bias(mean_activity, n_neurons))

    def share_with(self, first: "AttentionReadout") -> None:
        if self.shared_key_value:
            self.to_key_value = first.to_key_value

    def _keys_values(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Per-head keys and values, each (B, heads, h*w, head_dim)."""
        if features.shape[1:] != self.in_shape:
            raise ValueError(f"expected features of shape (B, *{self.in_shape}), got {tuple(features.shape)}")
        batch = features.shape[0]
        if self.pool > 1:
            features = nn.functional.avg_pool2d(features, self.pool)
        x = self.dropout(features + self.position_encoding)
        key, value = self.to_key_value(x.flatten(2).transpose(1, 2)).chunk(2, dim=-1)  # (B, hw, E) each
        key = key.reshape(batch, -1, self.heads, self.embed_dim // self.heads).transpose(1, 2)
        value = value.reshape(batch, -1, self.heads, self.embed_dim // self.heads).transpose(1, 2)
        return key, value

    def _attend(self, features: Tensor) -> tuple[Tensor, Tensor]:
        """Return attention weights (B, heads, h*w, n) and per-head values (B, heads, h*w, head_dim)."""
        key, value = self._keys_values(features)
        query = self.query.reshape(self.n_neurons, self.heads, -1).permute(1, 2, 0)  # (heads, head_dim, n)
        # plain broadcast matmuls: torch.einsum picked a path ~10x slower on CPU here
        logits = torch.matmul(key, query) * (self.scale / self.temperature)  # (B, heads, hw, n)
        return logits.softmax(dim=2), value

    def forward(self, features: Tensor, neurons: Tensor | None = None) -> Tensor:
        """Map core features (B, C, h, w) to pre-nonlinearity responses (B, n_neurons).

        With `neurons` (B,) long, image b is read out for neuron `neurons[b]` only and the result
        is (B,): one query per image instead of all, so batched MEIs do not pay for every neuron.
        """
        if neurons is None:
            attention, value = self._attend(features)
            pooled = torch.matmul(attention.transpose(2, 3), value)  # (B, heads, n, head_dim)
            pooled = pooled.transpose(1, 2).flatten(2)  # (B, n, embed_dim), heads in query order
            return (pooled * self.features).sum(-1) + self.bias
        key, value = self._keys_values(features)
        query = self.query[neurons].reshape(len(neurons), self.heads, -1, 1)  # (B, heads, head_dim, 1)
        attention = (torch.matmul(key, query) * (self.scale / self.temperature)).softmax(dim=2)  # (B, heads, hw, 1)
        pooled = torch.matmul(attention.transpose(2, 3), value).flatten(1)  # (B, embed_dim)
        return (pooled * self.features[neurons]).sum(-1) + self.bias[neurons]

    def spatial_maps(self, core_features: Tensor) -> Tensor:
        """Attention weights averaged over heads, (B, n_neurons, h, w); each map sums to 1.

        Uses the current mode, so call in eval mode to get maps without dropout.
        """
        features = core_features
        attention, _ = self._attend(features)
        maps = attention.mean(dim=1).transpose(1, 2).reshape(features.shape[0], self.n_neurons, *self.positions)
        if self.pool > 1:  # back on the core's grid; each pooled weight spread evenly over its window
            _, h, w = self.in_shape
            maps = nn.functional.interpolate(maps, scale_factor=self.pool, mode="nearest") / self.pool**2
            maps = nn.functional.pad(maps, (0, w - maps.shape[-1], 0, h - maps.shape[-2]))
        return maps

    def regularizer(self) -> Tensor:
        """gamma_features * sum|feature weights| + gamma_query * sum|queries|."""
        return self.gamma_features * self.features.abs().sum() + self.gamma_query * self.query.abs().sum()
