"""Several trained models as one: the ensemble's rate is the mean of its members' rates.

Usable wherever a single `EncodingModel` is (metrics, energies, products): same forward signature,
sessions, neuron ids and image transform.
"""

from __future__ import annotations

import pickle
import re
import zipfile
from collections.abc import Sequence
from pathlib import Path

import torch
from torch import nn

from encoders.datasets.transforms import ImageTransform
from encoders.errors import EncodersError
from encoders.model import EncodingModel


def read_checkpoint(path: str | Path) -> dict:
    """A checkpoint's contents, read without ever unpickling code; EncodersError naming the file otherwise.

    `torch.load(weights_only=True)` accepts only tensors and plain containers, so a checkpoint
    that carries pickled objects (which could run code) is refused, not executed. Memory-mapped,
    so checking a large checkpoint before a fit resumes from it costs little.
    """
    path = Path(path)
    if not path.is_file():
        raise EncodersError(f"{path}: checkpoint not found")
    if not zipfile.is_zipfile(path):  # torch.save writes zip archives; a cut-off one has no central directory
        raise EncodersError(f"{path}: not a readable encoders checkpoint (truncated, corrupt, or not a torch checkpoint at all)")
    try:
        checkpoint = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except pickle.UnpicklingError as error:
        found = re.search(r"unsupported (?:global: )?GLOBAL (\S+)", str(error), re.IGNORECASE)
        what = f" ({found.group(1)})" if found else ""
        raise EncodersError(
            f"{path}: refused: the checkpoint holds a pickled Python object{what}; checkpoints are loaded with "
            "weights_only=True, which allows only tensors and plain containers"
        ) from None
    except Exception as error:  # torch raises many types for truncated, corrupt or foreign files
        raise EncodersError(f"{path}: not a readable encoders checkpoint (corrupt or truncated?): {_first_line(error)}") from None
    if not isinstance(checkpoint, dict) or "state_dict" not in checkpoint:
        raise EncodersError(f"{path}: not a model checkpoint (no state_dict inside)")
    return checkpoint


def load_checkpoint(path: str | Path) -> EncodingModel:
    """Load a trained model for inference (eval mode, on CPU), with a clear error for bad files."""
    path = Path(path)
    read_checkpoint(path)
    try:
        model = EncodingModel.load_from_checkpoint(path, map_location="cpu", weights_only=True)
    except Exception as error:  # e.g. a Lightning checkpoint of another model
        raise EncodersError(f"{path}: not a readable encoders checkpoint ({type(error).__name__}: {_first_line(error)})") from None
    return model.eval()


def _first_line(error: BaseException) -> str:
    """`Type: first sentence` of an exception: torch's messages run to several lines of advice."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else ""
    return f"{type(error).__name__}: {text.split('. ')[0]}"


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
