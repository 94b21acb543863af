"""Products made for chosen neurons (MEIs, VEIs, invariance manifolds): the choice, its checks, the twin's say.

`TwinView` is what a twin's true neurons make of a product's images, for every such product.

Neurons are chosen by an explicit "SESSION/NEURON_ID" list or as the `top_k` best predicted on the validation
tier; either way every id is checked against the model before any work, and on a synthetic twin (when
`ground_truth`) the model must map onto the twin's true neurons.
"""

from __future__ import annotations

import numpy as np
import torch
import xarray as xr

from encoders.contract import ResponseModel, device_of
from encoders.errors import EncodersError
from encoders.products.base import Product, ProductData
from encoders.synthesis.targets import Target, check_choice, resolve_targets, top_k_targets


class NeuronProduct(Product):
    """Base of products for chosen neurons; a subclass's constructor calls `choose(neurons, top_k)` and sets
    `method` and `ground_truth`."""

    targets: list[Target] | None
    top_k: int | None
    ground_truth: bool

    def choose(self, neurons: list[str] | None, top_k: int | None) -> None:
        self.targets = check_choice(neurons, top_k)
        self.top_k = top_k

    def check(self, model: ResponseModel, data: ProductData) -> None:
        if self.targets is not None:
            resolve_targets(model, self.targets)
        elif data.recording is None:
            raise EncodersError("top_k needs data (a data module or --data) to rank neurons by validation correlation")
        if self.scored(data):
            data.twin.check(model)
        self.method.check_available()

    def scored(self, data: ProductData) -> bool:
        """Whether the images are also shown to a twin's true neurons."""
        return self.ground_truth and data.twin is not None

    def resolved(self, model: ResponseModel, data: ProductData) -> dict:
        return {"scored_on_twin": self.scored(data)}

    def chosen(self, model: ResponseModel, data: ProductData) -> tuple[list[Target], list[float] | None]:
        """The neurons, and their validation correlations when chosen by top_k."""
        if self.targets is None:
            return top_k_targets(model, data.recording, self.top_k)
        return list(self.targets), None


def add_validation_correlation(results: xr.Dataset, scores: list[float] | None, index: np.ndarray | None = None) -> None:
    """The ranking's validation correlations (of the neurons kept: `index`), in place; nothing for an explicit list."""
    if scores is None:
        return
    values = np.asarray(scores) if index is None else np.asarray(scores)[index]
    results["validation_correlation"] = labelled("neuron", values, "correlation of prediction and response, validation tier", "1")


def labelled(dims, values, long_name: str, units: str) -> xr.Variable:
    """A variable with its long_name and units, as every product file labels them."""
    return xr.Variable(dims, np.asarray(values), {"long_name": long_name, "units": units})


class TwinView:
    """What a twin's true neurons make of a set of images per chosen neuron (VEIs, the points of a loop).

    `meis` are the model's MEIs of `targets` (a one-method MEI set) and `method` how they were made: the twin's
    own MEIs are found the same way (`score_on_ground_truth`, kept once in the store). images: (n, M, C, H, W).
    """

    def __init__(self, model: ResponseModel, data: ProductData, targets: list[Target], meis: xr.Dataset, method,
                 images: torch.Tensor):
        from encoders.twin.scoring import GroundTruthActivation, score_on_ground_truth

        scored = score_on_ground_truth(meis, model, data.twin, method.truth(), data.truth_store)
        self.true_mei_rate = torch.as_tensor(scored.true_mei_activation.values)
        self.true_mei = torch.as_tensor(scored.true_mei.values)
        self.columns = data.twin.columns(model, targets)
        self.device = device_of(model)
        self.truth, self.geometry = data.twin.truth.to(self.device), data.twin.geometry(model)
        self.images = images
        n, m = images.shape[:2]
        with torch.no_grad():
            energy = GroundTruthActivation(self.truth, self.columns.repeat_interleave(m), self.geometry)
            self.true_rate = energy.activation(images.flatten(0, 1).to(self.device)).cpu().view(n, m)

    @torch.no_grad()
    def rates(self, images: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """True rates (B, len(rows)) of model-space images for the targets `rows`."""
        chosen = self.columns[rows].to(self.device)
        return torch.cat([self.truth(self.geometry.to_twin(x.to(self.device)))[:, chosen].cpu() for x in images.split(256)])

    def add_to(self, results: xr.Dataset, along: str, floor: float, what: str) -> None:
        """In place: each image's true rate, relative to the true MEI's, the share at >= floor, and the images'
        reach along the true invariance (`encoders.twin.invariance`)."""
        from encoders.twin.invariance import invariance_reach

        relative = self.true_rate / self.true_mei_rate[:, None]
        results["ground_truth_activation"] = labelled(("neuron", along), self.true_rate, f"true rate of each {what}",
                                                      "true rate (spikes per bin)")
        results["ground_truth_relative_activation"] = labelled(("neuron", along), relative, "true rate / true rate of the true MEI", "1")
        results["ground_truth_fraction_above"] = labelled("neuron", (relative >= floor).double().mean(1),
                                                          f"fraction of {what}s keeping the true neuron >= {floor} of its true MEI", "1")
        results["true_mei_activation"] = labelled("neuron", self.true_mei_rate, "true rate of the true MEI", "true rate (spikes per bin)")
        reach = invariance_reach(lambda images, j: self.rates(images, [j])[:, 0], self.true_mei, self.true_mei_rate, self.images, floor)
        for name, long_name, unit in [
            ("true_phase_arc", "phase shifts of the true MEI keeping the true neuron >= floor", "degree"),
            ("true_position_extent", "largest distance between shifts of the true MEI keeping it >= floor", "pixel"),
            ("phase_arc", "arc of the images' phases relative to the true MEI", "degree"),
            ("position_extent", "largest distance between the images' best-aligned shifts", "pixel"),
            ("phase_reach", "phase_arc / true_phase_arc", "1"),
            ("position_reach", "position_extent / true_position_extent", "1"),
        ]:
            results[name] = labelled("neuron", np.asarray(getattr(reach, name), dtype=float), long_name, unit)
