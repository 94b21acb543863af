"""Scorers: something that rates images for neurons, a trained model or a twin's true neurons.

Images travel between architectures in PIXEL space (after the data's grayscale/crop/resize), so
an MEI made in one model's input space is scored by another model in that model's own space.
Every scorer also gives each neuron's best response to natural images (the data's validation and
test images), the per-neuron scale that makes activations comparable across scorers.
All work is batched over neurons: one forward pass per session and batch of images.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from encoders.callbacks.twin_scores import twin_columns
from encoders.datasets.transforms import ImageTransform
from encoders.datasets.twin import load_ground_truth
from encoders.synthesis.energies import GroundTruthActivation, NeuronActivation
from encoders.synthesis.targets import Target, model_space_images

if TYPE_CHECKING:
    from encoders.datasets.datamodule import RecordedDataModule

BATCH = 256  # images per forward pass: bounds memory only


def natural_pixels(datamodule: RecordedDataModule, session: str, tiers: Sequence[str]) -> torch.Tensor:
    """The session's images of `tiers`, in pixel space after the data's geometry."""
    images = torch.cat([datamodule.tier_data(session, tier)["images"] for tier in tiers])
    return datamodule.transform.to_pixels(images)


class ModelScorer:
    """A trained model (or ensemble) as a scorer."""

    def __init__(self, model: nn.Module, device: str | torch.device = "cpu"):
        self.model = model.eval().to(device)
        self.device = torch.device(device)

    def _model_space(self, pixels: torch.Tensor) -> torch.Tensor:
        size = tuple(self.model.input_shape[-2:])
        if tuple(pixels.shape[-2:]) != size:
            pixels = F.interpolate(pixels, size=size, mode="bilinear", align_corners=False, antialias=True)
        return self.model.image_transform.from_pixels(pixels)

    @torch.no_grad()
    def rates(self, pixels: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
        """(B,) rate of neuron targets[b] for pixel-space image b."""
        out = []
        for start in range(0, len(targets), BATCH):
            chunk = pixels[start : start + BATCH].to(self.device)
            out.append(NeuronActivation(self.model, targets[start : start + BATCH]).activation(self._model_space(chunk)).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def natural_max(self, datamodule: RecordedDataModule, targets: Sequence[Target], tiers: Sequence[str]) -> torch.Tensor:
        """(n_targets,) each neuron's highest predicted rate over the natural images of `tiers`."""
        best = torch.full((len(targets),), float("nan"))
        for session in dict.fromkeys(s for s, _ in targets):
            images = torch.cat([model_space_images(self.model, datamodule, session, t)["images"] for t in tiers])
            rates = torch.cat([self.model(x.to(self.device), session).cpu() for x in images.split(BATCH)])
            ids = self.model.neuron_ids(session)
            rows = [i for i, (s, _) in enumerate(targets) if s == session]
            columns = torch.tensor([ids.index(targets[i][1]) for i in rows])
            best[rows] = rates[:, columns].amax(0)
        return best


class GroundTruthScorer:
    """A digital twin's true neurons as a scorer; images are resized to the twin's stored size."""

    def __init__(self, path: str | Path, reference: nn.Module, device: str | torch.device = "cpu"):
        self.path = Path(path)
        self.reference = reference  # gives sessions and neuron ids, to find each neuron's true column
        self.device = torch.device(device)
        self.truth = load_ground_truth(path).to(self.device)
        self.size = (self.truth.image_size, self.truth.image_size)
        self.identity = ImageTransform()  # images arrive in pixels already

    @torch.no_grad()
    def rates(self, pixels: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
        """(B,) true rate of neuron targets[b] for pixel-space image b."""
        columns = twin_columns(self.path, self.reference, targets)
        out = []
        for start in range(0, len(targets), BATCH):
            energy = GroundTruthActivation(self.truth, columns[start : start + BATCH], self.identity, self.size)
            out.append(energy.activation(pixels[start : start + BATCH].to(self.device)).cpu())
        return torch.cat(out)

    @torch.no_grad()
    def natural_max(self, datamodule: RecordedDataModule, targets: Sequence[Target], tiers: Sequence[str]) -> torch.Tensor:
        """(n_targets,) each neuron's highest true rate over the natural images of `tiers`."""
        best = torch.full((len(targets),), float("nan"))
        columns = twin_columns(self.path, self.reference, targets)
        for session in dict.fromkeys(s for s, _ in targets):
            pixels = natural_pixels(datamodule, session, tiers)
            rows = [i for i, (s, _) in enumerate(targets) if s == session]
            rates = []
            for x in pixels.split(BATCH):
                x = x.to(self.device)
                if tuple(x.shape[-2:]) != self.size:
                    x = F.interpolate(x, size=self.size, mode="bilinear", align_corners=False)
                rates.append(self.truth(x)[:, columns[rows].to(self.device)].cpu())
            best[rows] = torch.cat(rates).amax(0)
        return best
