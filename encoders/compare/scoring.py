"""Scorers: something that rates images for neurons, a trained model or a twin's true neurons.

Images travel between architectures in PIXEL space (after the data's grayscale/crop/resize), so
an MEI made in one model's input space is scored by another model in that model's own space.
Every scorer also gives each neuron's best response to natural images (the data's validation and
test images), the per-neuron scale that makes activations comparable across scorers.
All work is batched over neurons: one forward pass per session and batch of images.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import torch
import torch.nn.functional as F
from torch import nn

from encoders.synthesis.energies import NeuronActivation
from encoders.synthesis.targets import Target, model_space_images
from encoders.twin.scoring import true_rates

if TYPE_CHECKING:
    from encoders.datasets.datamodule import RecordedDataModule
    from encoders.twin import Twin

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
    """A digital twin's true neurons as a scorer: pixel-space images reach them through the reference
    model's `TwinGeometry` (every model of a comparison shares the data's geometry)."""

    def __init__(self, twin: Twin, reference: nn.Module, device: str | torch.device = "cpu"):
        self.twin = twin
        self.reference = reference  # gives sessions and neuron ids, to find each neuron's true column
        self.device = torch.device(device)
        self.truth = twin.truth.to(self.device)
        self.geometry = twin.geometry(reference)

    @torch.no_grad()
    def rates(self, pixels: torch.Tensor, targets: Sequence[Target]) -> torch.Tensor:
        """(B,) true rate of neuron targets[b] for pixel-space image b."""
        columns = self.twin.columns(self.reference, targets)
        return true_rates(self.truth, self.geometry, pixels).gather(1, columns[:, None])[:, 0]

    @torch.no_grad()
    def natural_max(self, datamodule: RecordedDataModule, targets: Sequence[Target], tiers: Sequence[str]) -> torch.Tensor:
        """(n_targets,) each neuron's highest true rate over the natural images of `tiers`."""
        best = torch.full((len(targets),), float("nan"))
        columns = self.twin.columns(self.reference, targets)
        for session in dict.fromkeys(s for s, _ in targets):
            rows = [i for i, (s, _) in enumerate(targets) if s == session]
            rates = true_rates(self.truth, self.geometry, natural_pixels(datamodule, session, tiers))
            best[rows] = rates[:, columns[rows]].amax(0)
        return best
