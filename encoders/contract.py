"""The response-model contract: what energies, synthesis methods and products may assume of a model.

A trained `Encoder`, an `Ensemble` of them, or anything else with these members (a model of
another lab, a digital twin's ground truth wrapped to match) can be given to every product.
Nothing here knows about Lightning.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import torch

from encoders.datasets.transforms import ImageTransform


@runtime_checkable
class ResponseModel(Protocol):
    """Predicts non-negative rates of each session's neurons for images in the model's input space."""

    @property
    def sessions(self) -> list[str]:
        """Recording sessions, each with its own neurons."""

    def neuron_ids(self, session: str) -> list[str]:
        """The ids of a session's neurons, in output order."""

    @property
    def image_transform(self) -> ImageTransform:
        """Stored pixels <-> model input space (grayscale, crop, resize, z-score)."""

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of model-space images."""

    def __call__(self, images: torch.Tensor, session: str, neurons: torch.Tensor | None = None) -> torch.Tensor:
        """Rates (B, n_neurons) of `session`; with `neurons` (B,) column indices, (B,): neuron neurons[b] for image b."""


def device_of(model: ResponseModel) -> torch.device:
    """Where a model's parameters live (CPU for a model without parameters)."""
    parameters = getattr(model, "parameters", None)
    first = next(iter(parameters()), None) if parameters is not None else None
    return first.device if first is not None else torch.device("cpu")
