"""Several trained models as one: the ensemble's rate is the mean of its members' rates.

Usable wherever a single `EncodingModel` is (metrics, energies, products): same forward signature,
sessions, neuron ids and image transform.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from encoders.datasets.transforms import ImageTransform
from encoders.errors import EncodersError
from encoders.model import EncodingModel


def load_checkpoint(path: str | Path) -> EncodingModel:
    """Load a trained model for inference (eval mode, on CPU), with a clear error for bad files."""
    path = Path(path)
    if not path.is_file():
        raise EncodersError(f"{path}: checkpoint not found")
    try:
        model = EncodingModel.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as error:  # torch raises many types for corrupt or foreign files
        raise EncodersError(f"{path}: not a readable encoders checkpoint ({type(error).__name__}: {error})") from None
    return model.eval()


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

    @classmethod
    def from_checkpoints(cls, paths: Sequence[str | Path]) -> "Ensemble":
        return cls([load_checkpoint(p) for p in paths]).eval()

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
        return tuple(self.members[0].hparams.input_shape)

    def forward(self, images: torch.Tensor, session: str, neurons: torch.Tensor | None = None) -> torch.Tensor:
        """Mean of the members' rates; `neurons` as in `EncodingModel.forward` (paired mode)."""
        return torch.stack([member(images, session, neurons) for member in self.members]).mean(0)
