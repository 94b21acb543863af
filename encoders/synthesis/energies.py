"""Energies: differentiable `energy(images) -> (batch,)` on model-space images; optimisers minimise them.

Image b of a batch has its own target (a neuron, or a response vector), so one batch makes MEIs
or reconstructions for many targets at once. Every energy works on an EncodingModel or an
Ensemble (anything with `model(images, session)`, `sessions`, `neuron_ids`), in the model's
current mode: callers put models in eval mode (dropout, batch-norm statistics).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from encoders.errors import EncodersError
from encoders.metrics import correlation
from encoders.synthesis.targets import Target, check_sessions, resolve_targets

METRICS = ("mse", "correlation")


def _check_batch(images: torch.Tensor, expected: int, what: str) -> None:
    if images.ndim != 4 or images.shape[0] != expected:
        raise ValueError(f"{what} has {expected} targets and needs images (B={expected}, C, H, W), got {tuple(images.shape)}")


class NeuronActivation:
    """Image b drives neuron `targets[b]`: energy = -rate (or +rate with minimize=True).

    Minimising the energy therefore maximises the response (MEIs); `minimize=True` makes
    inhibitory images. Targets are grouped by session: the model runs once per session on that
    session's images and each image's own column is gathered, so the cost does not grow with a
    Python loop over neurons. Ids are validated here, before any optimisation.
    """

    def __init__(self, model: nn.Module, targets: Sequence[Target], minimize: bool = False):
        self.model = model
        self.targets = [(str(s), str(n)) for s, n in targets]
        self.minimize = minimize
        resolved = resolve_targets(model, self.targets)
        groups: dict[str, tuple[list[int], list[int]]] = {}
        for row, (session, column) in enumerate(resolved):
            rows, columns = groups.setdefault(session, ([], []))
            rows.append(row)
            columns.append(column)
        self.groups = {s: (torch.tensor(r), torch.tensor(c)) for s, (r, c) in groups.items()}
        order = torch.cat([rows for rows, _ in self.groups.values()])
        self._inverse = torch.argsort(order)  # from session-grouped order back to target order

    def __len__(self) -> int:
        return len(self.targets)

    def activation(self, images: torch.Tensor) -> torch.Tensor:
        """Rate of each image's target neuron, (B,)."""
        _check_batch(images, len(self), "NeuronActivation")
        parts = []
        for session, (rows, columns) in self.groups.items():
            rows, columns = rows.to(images.device), columns.to(images.device)
            # paired mode: each image computes only its own neuron (not the whole session)
            parts.append(self.model(images[rows], session, columns))
        return torch.cat(parts)[self._inverse.to(images.device)]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        activation = self.activation(images)
        return activation if self.minimize else -activation


class ResponseDistance:
    """Distance between the predicted responses of image b and the target responses b of a session.

    metric:
      - "mse": mean squared difference over the session's neurons (rates in spikes per bin); the
        reconstruction must match absolute rates, which the fixed image norm can make impossible.
      - "correlation" (default): 1 - Pearson correlation over neurons; matches the population
        pattern and ignores an overall gain, so it suits norm-constrained images.
    """

    def __init__(self, model: nn.Module, session: str, targets: torch.Tensor, metric: str = "correlation"):
        check_sessions(model, [session])
        if metric not in METRICS:
            raise EncodersError(f"metric must be one of {list(METRICS)}, got {metric!r}")
        n_neurons = len(model.neuron_ids(session))
        if targets.ndim != 2 or targets.shape[1] != n_neurons:
            raise ValueError(f"targets must be (B, {n_neurons}) responses of session {session!r}, got {tuple(targets.shape)}")
        self.model = model
        self.session = session
        self.targets = targets.detach().float()
        self.metric = metric

    def __len__(self) -> int:
        return self.targets.shape[0]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        _check_batch(images, len(self), "ResponseDistance")
        predicted = self.model(images, self.session)
        target = self.targets.to(predicted.device)
        if self.metric == "mse":
            return (predicted - target).pow(2).mean(1)
        return 1 - correlation(predicted, target, dim=1)
