"""Several trained response models as one: the ensemble's rate is the mean of its members' rates.

It implements the response-model contract (`encoders.contract.ResponseModel`), so it is usable
wherever a single `Encoder` is (metrics, energies, products).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from encoders.checkpoints import load_encoder
from encoders.datasets.transforms import ImageTransform


class Ensemble(nn.Module):
    """Mean rate of several models that share sessions, neuron ids and input space."""

    def __init__(self, members: Sequence[nn.Module]):
        super().__init__()
        if not members:
            raise ValueError("an ensemble needs at least one member")
        self.members = nn.ModuleList(members)
        first = members[0]
        for i, member in enumerate(members[1:], start=1):
            if member.sessions != first.sessions:
                raise ValueError(f"member {i} has sessions {member.sessions}, member 0 has {first.sessions}")
            for session in first.sessions:
                if member.neuron_ids(session) != first.neuron_ids(session):
                    raise ValueError(f"member {i} has other neuron ids than member 0 in session {session!r}")
            if member.image_transform != first.image_transform:
                raise ValueError(f"member {i} was trained on another image transform than member 0")
            if tuple(member.input_shape) != tuple(first.input_shape):
                raise ValueError(f"member {i} takes {tuple(member.input_shape)} images, member 0 {tuple(first.input_shape)}")

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path]) -> "Ensemble":
        return cls([load_encoder(p) for p in paths]).eval()

    @property
    def sessions(self) -> list[str]:
        return self.members[0].sessions

    def neuron_ids(self, session: str) -> list[str]:
        return self.members[0].neuron_ids(session)

    @property
    def image_transform(self) -> ImageTransform:
        return self.members[0].image_transform

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self.members[0].input_shape)

    def forward(self, images: torch.Tensor, session: str, neurons: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of the members' rates; `neurons` as in `Encoder.forward` (paired mode)."""
        return torch.stack([member(images, session, neurons) for member in self.members]).mean(0)


def load_models(paths: Sequence[str | Path]) -> nn.Module:
    """One checkpoint -> its Encoder; several -> their Ensemble. Eval mode, CPU."""
    if len(paths) == 1:
        return load_encoder(paths[0])
    return Ensemble.from_checkpoints(paths)
