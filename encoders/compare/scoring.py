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
from encoders.synthesis.targets import Target
from encoders.twin.scoring import true_rates

if TYPE_CHECKING:
    from encoders.datasets.recording import Recording
    from encoders.twin import Twin

BATCH = 256  # images per forward pass: bounds memory only


def natural_pixels(recording: Recording, session: str, tiers: Sequence[str], norm: float | None = None) -> torch.Tensor:
    """The session's images of `tiers`, in pixel space after the data's geometry.

    norm: first rescale each image, in the data's model space (where MEI norms are set), to this
    L2 norm: natural images at an MEI's contrast. None keeps their own contrast.
    """
    images = torch.cat([recording.tier_data(session, tier)["images"] for tier in tiers])
    if norm is not None:
        images = images * (norm / images.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, *([1] * (images.ndim - 1)))
    return recording.transform.to_pixels(images)


def _rows(targets: Sequence[Target], session: str) -> list[int]:
    return [i for i, (s, _) in enumerate(targets) if s == session]


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
    def responses(self, pixels: torch.Tensor, session: str) -> torch.Tensor:
        """(B, n_neurons) predicted rates of all the session's neurons for pixel-space images."""
        return torch.cat([self.model(self._model_space(x.to(self.device)), session).cpu() for x in pixels.split(BATCH)])

    @torch.no_grad()
    def natural_best(
        self, recording: Recording, targets: Sequence[Target], tiers: Sequence[str], norm: float | None = None,
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Each neuron's highest predicted rate over the natural images of `tiers` (n_targets,), and that
        image in pixel space (n_targets, C, H, W); `norm` rescales the images first (`natural_pixels`)."""
        best = torch.full((len(targets),), float("nan"))
        images = None
        for session in dict.fromkeys(s for s, _ in targets):
            pixels = natural_pixels(recording, session, tiers, norm)
            rates = self.responses(pixels, session)
            ids = self.model.neuron_ids(session)
            rows = _rows(targets, session)
            columns = torch.tensor([ids.index(targets[i][1]) for i in rows])
            values, where = rates[:, columns].max(0)
            best[rows] = values
            if images is None:
                images = torch.empty(len(targets), *pixels.shape[1:])
            images[rows] = pixels[where]
        return best, images

    def natural_max(self, recording: Recording, targets: Sequence[Target], tiers: Sequence[str],
                    norm: float | None = None) -> torch.Tensor:
        """(n_targets,) each neuron's highest predicted rate over the natural images of `tiers`."""
        return self.natural_best(recording, targets, tiers, norm)[0]


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
    def responses(self, pixels: torch.Tensor, session: str) -> torch.Tensor:
        """(B, n_neurons) true rates of all the session's neurons (in the reference model's order)."""
        columns = self.twin.columns(self.reference, [(session, n) for n in self.reference.neuron_ids(session)])
        return true_rates(self.truth, self.geometry, pixels)[:, columns]

    @torch.no_grad()
    def natural_max(self, recording: Recording, targets: Sequence[Target], tiers: Sequence[str],
                    norm: float | None = None) -> torch.Tensor:
        """(n_targets,) each neuron's highest true rate over the natural images of `tiers` (at `norm`, if given)."""
        best = torch.full((len(targets),), float("nan"))
        columns = self.twin.columns(self.reference, targets)
        for session in dict.fromkeys(s for s, _ in targets):
            rows = _rows(targets, session)
            rates = true_rates(self.truth, self.geometry, natural_pixels(recording, session, tiers, norm))
            best[rows] = rates[:, columns[rows]].amax(0)
        return best
