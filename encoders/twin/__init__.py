"""The synthetic V4 digital twin: ground-truth neurons, the data they generate, and scoring models against them.

- `encoders.twin.neurons`: :class:`GroundTruthV4`, the true neurons.
- `encoders.twin.generation`: drawing and calibrating them, :func:`make_twin`, :func:`write_twin`.
- `encoders.twin.geometry`: :class:`TwinGeometry`, the one mapping between a model's input and the twin's pixels.
- `encoders.twin.scoring`: scores of a model's images and predictions on the true neurons.

General code never asks a data file whether it is a twin: whoever opens the file resolves
``Twin.from_file(path)`` once (None for real data) and hands the `Twin` on.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import h5py
import torch

from encoders.contract import ResponseModel
from encoders.datasets.io import list_sessions, read_arrays, read_ground_truth
from encoders.datasets.schema import GROUND_TRUTH_GROUP
from encoders.errors import EncodersError
from encoders.twin.generation import make_twin, write_twin
from encoders.twin.geometry import TwinGeometry
from encoders.twin.neurons import GroundTruthV4

__all__ = ["GroundTruthV4", "Twin", "TwinGeometry", "make_twin", "write_twin"]


class Twin:
    """A twin's data file, resolved once: its true neurons (loaded on first use) and which of them each session recorded."""

    def __init__(self, path: str | Path, sessions: Sequence[str]):
        self.path = Path(path)
        self.sessions = list(sessions)
        self._truth: GroundTruthV4 | None = None
        self._recorded: dict[str, tuple[list[str], torch.Tensor]] = {}

    @classmethod
    def from_file(cls, path: str | Path) -> Twin | None:
        """The twin stored in a data file, or None when the file has no ground truth (real data).

        The only place that asks a file whether it is a twin.
        """
        path = Path(path)
        sessions = list_sessions(path)  # validates the file: one clear error for a missing or broken one
        with h5py.File(path, "r") as f:
            if GROUND_TRUTH_GROUP not in f:
                return None
        return cls(path, sorted(sessions))

    def __repr__(self) -> str:
        return f"Twin({str(self.path)!r}, sessions={self.sessions})"

    @property
    def truth(self) -> GroundTruthV4:
        """The true neurons of every session (one module), rebuilt from the file on first use, in eval mode.

        Shared by everything holding this Twin: `.to(device)` moves it for all of them.
        """
        if self._truth is None:
            self._truth = GroundTruthV4.from_arrays(read_ground_truth(self.path)).eval()
        return self._truth

    @property
    def image_size(self) -> int:
        """Height and width of the stored images, the only size the true neurons take."""
        return self.truth.image_size

    def _session(self, session: str) -> tuple[list[str], torch.Tensor]:
        """(neuron ids, ground-truth columns) of a session of the file, read once."""
        if session not in self._recorded:
            if session not in self.sessions:
                raise EncodersError(f"{self.path}: session {session!r} of the model is not in the data file ({self.sessions})")
            arrays = read_arrays(self.path, session, ["neuron_id", "ground_truth_index"])
            ids = [str(x) for x in arrays["neuron_id"]]
            self._recorded[session] = ids, torch.as_tensor(arrays["ground_truth_index"], dtype=torch.long)
        return self._recorded[session]

    def session_columns(self, session: str) -> torch.Tensor:
        """Columns of the true neurons' output that are this session's neurons, in the file's order."""
        return self._session(session)[1]

    def rf_xy(self, session: str) -> torch.Tensor:
        """True receptive-field centres of a session's neurons, (n_neurons, 2) as (x, y) in stored pixels."""
        truth = self.truth
        every = torch.stack([truth.rf_x, truth.rf_y], dim=1).detach().cpu().float()
        return every[self.session_columns(session)]

    def check(self, model: ResponseModel, sessions: Sequence[str] | None = None) -> None:
        """The model's sessions (or `sessions` of them) are in the file, with the same neuron ids in the same order."""
        for session in dict.fromkeys(model.sessions if sessions is None else sessions):
            ids, _ = self._session(session)
            if ids != list(model.neuron_ids(session)):
                raise EncodersError(f"{self.path}: session {session!r} has other neuron ids than the model")

    def columns(self, model: ResponseModel, targets: Sequence[tuple[str, str]]) -> torch.Tensor:
        """The true neuron (column of `truth`'s output) of each (session, neuron id) target of `model`, (n_targets,)."""
        self.check(model, [session for session, _ in targets])
        index = {s: {n: i for i, n in enumerate(self._session(s)[0])} for s in dict.fromkeys(s for s, _ in targets)}
        unknown = [f"{s}/{n}" for s, n in targets if n not in index[s]]
        if unknown:
            raise EncodersError(f"{self.path}: unknown neuron id(s) {unknown}")
        columns = [self.session_columns(s)[index[s][n]] for s, n in targets]
        return torch.stack(columns) if columns else torch.zeros(0, dtype=torch.long)

    def geometry(self, model: ResponseModel) -> TwinGeometry:
        """Where the model's input lies in the twin's stored pixels."""
        return TwinGeometry(model.image_transform, tuple(model.input_shape), self.image_size)

    def rf_centres(self, model: ResponseModel, feature_shape: Sequence[int]) -> dict[str, torch.Tensor]:
        """Each session's true receptive-field centres on the model's feature grid of `feature_shape` (height,
        width), {session: (n_neurons, 2) as (x, y) in grid-cell indices}, in the model's neuron order."""
        self.check(model)
        geometry = self.geometry(model)
        return {s: geometry.rf_centres_on_grid(self.rf_xy(s), feature_shape) for s in model.sessions}
