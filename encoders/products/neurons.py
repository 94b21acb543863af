"""Products made for chosen neurons (MEIs, VEIs, invariance manifolds): the choice, its checks, the twin's say.

Neurons are chosen by an explicit "SESSION/NEURON_ID" list or as the `top_k` best predicted on the validation
tier; either way every id is checked against the model before any work, and on a synthetic twin (when
`ground_truth`) the model must map onto the twin's true neurons.
"""

from __future__ import annotations

import numpy as np
import xarray as xr

from encoders.contract import ResponseModel
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
    results["validation_correlation"] = ("neuron", values)
    results["validation_correlation"].attrs.update({"long_name": "correlation of prediction and response, validation tier", "units": "1"})
