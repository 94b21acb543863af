"""MEIs by gradient ascent for every kept checkpoint, after fit: `<run>/products/<checkpoint>/mei_ga.nc` + PNG.

The same functions serve the `encoders mei` command for checkpoints trained earlier. On a
synthetic twin (a data file with ground truth) every MEI is also scored on the true neuron
(`encoders.callbacks.twin_scores`).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from pytorch_lightning.utilities import rank_zero_info
from torch import nn

from encoders.callbacks.figures import mei_figure
from encoders.callbacks.products import CheckpointProducts, write_product
from encoders.callbacks.twin_scores import ground_truth_summary, score_on_ground_truth, twin_columns
from encoders.datasets.twin import has_ground_truth
from encoders.errors import EncodersError
from encoders.synthesis.energies import NeuronActivation
from encoders.synthesis.gradient_ascent import GASettings
from encoders.synthesis.methods import Synthesis, as_synthesis
from encoders.synthesis.targets import Target, check_choice, resolve_targets, top_k_targets

if TYPE_CHECKING:
    from encoders.datasets.datamodule import RecordedDataModule

PRODUCTS = {"mei": "most exciting images", "meni": "most exciting naturalistic images"}


def compute_meis(
    model: nn.Module, targets: Sequence[Target], method: GASettings | Synthesis, minimize: bool = False,
) -> xr.Dataset:
    """MEIs of `targets` (one per seed), batched over neurons and seeds, as a labelled Dataset.

    method: GA settings (gradient ascent) or a Synthesis (GASynthesis / EGGSynthesis).

    Dims: method, neuron (coords session, neuron_id), seed, channel, y, x, step. Variables: image
    (model space), image_pixels (pixel space), activation (final predicted rate), trace (rate at
    the start of each step).
    """
    resolve_targets(model, targets)  # every id checked before the first step
    model.eval()
    synthesis = as_synthesis(method)
    transform = model.image_transform
    seeds = list(synthesis.seeds)
    pairs = [(target, seed) for target in targets for seed in seeds]
    result = synthesis.run(
        lambda index: NeuronActivation(model, [pairs[i][0] for i in index], minimize=minimize),
        [seed for _, seed in pairs], model,
    )
    sign = 1.0 if minimize else -1.0  # energy = -rate, or +rate for inhibitory images
    data = mei_dataset(synthesis.method, targets, seeds, result.images, sign * result.energy, sign * result.trace, transform)
    data.attrs.update(synthesis.attrs(model.input_shape))
    data.attrs["product"] = "inhibitory images" if minimize else "most exciting images"
    data.attrs["minimize"] = int(minimize)
    return data


def mei_dataset(
    method: str, targets: Sequence[Target], seeds: Sequence[int], images: torch.Tensor, activation: torch.Tensor,
    trace: torch.Tensor, transform,
) -> xr.Dataset:
    """Labelled MEIs of any method: images (targets x seeds, C, H, W) in target-major order,
    activation (targets x seeds,), trace (steps, targets x seeds)."""
    n, s = len(targets), len(seeds)
    shape = tuple(images.shape[1:])
    images = images.reshape(n, s, *shape)
    image_dims = ("method", "neuron", "seed", "channel", "y", "x")
    data = xr.Dataset(
        {
            "image": (image_dims, images[None].numpy()),
            "image_pixels": (image_dims, transform.to_pixels(images)[None].numpy()),
            "activation": (("method", "neuron", "seed"), activation.reshape(1, n, s).numpy()),
            "trace": (("method", "step", "neuron", "seed"), trace.reshape(1, -1, n, s).numpy()),
        },
        coords={
            "method": [method],
            "session": ("neuron", [t[0] for t in targets]),
            "neuron_id": ("neuron", [t[1] for t in targets]),
            "seed": list(seeds),
            "step": np.arange(trace.shape[0]),
        },
    )
    data["image"].attrs["space"] = "model input (z-scored)"
    data["image_pixels"].attrs["space"] = "pixels after the data's grayscale/crop/resize, 0..255"
    data["activation"].attrs["units"] = "predicted rate (spikes per bin)"
    data.attrs["image_transform"] = json.dumps(transform.state())
    return data


def write_meis(
    paths: Sequence[Path], model: nn.Module, folder: Path, method: GASettings | Synthesis, neurons: Sequence[Target] | None,
    top_k: int | None, datamodule: RecordedDataModule | None = None, minimize: bool = False, ground_truth: bool = True, product: str = "mei",
) -> list[Path]:
    """Make `folder/<product>_<method>.nc` (e.g. mei_ga.nc, meni_egg.nc) and its PNG unless they exist; return new PNGs.

    method: GA settings or a Synthesis (GASynthesis / EGGSynthesis). Neurons: the explicit list, or
    the top_k best predicted on the datamodule's validation tier. Ground-truth scores are added
    when the datamodule's file is a twin and `ground_truth` is on.
    """
    synthesis = as_synthesis(method)
    if product not in PRODUCTS:
        raise EncodersError(f"product must be one of {list(PRODUCTS)}, got {product!r}")
    if neurons is not None:
        resolve_targets(model, neurons)
    elif datamodule is None:
        raise EncodersError("top_k needs data (a data module or --data) to rank neurons by validation correlation")
    scored = ground_truth and datamodule is not None and has_ground_truth(datamodule.path)
    request = {
        "settings": synthesis.attrs(model.input_shape), "neurons": neurons, "top_k": top_k, "minimize": minimize,
        "ground_truth": scored, "product": product,
    }

    def compute() -> xr.Dataset:
        model.eval()
        if neurons is None:
            targets, scores = top_k_targets(model, datamodule, top_k)
        else:
            targets, scores = list(neurons), None
        if scored:
            twin_columns(datamodule.path, model, targets)  # a mismatched twin fails before the work
        results = compute_meis(model, targets, synthesis, minimize)
        if product != "mei":
            results.attrs["product"] = PRODUCTS[product]
        if scores is not None:
            results["validation_correlation"] = ("neuron", np.asarray(scores))
        if scored:
            results = score_on_ground_truth(results, model, datamodule.path, synthesis.truth_settings)
            rank_zero_info(ground_truth_summary(results))
        return results

    return write_product(
        paths, folder / f"{product}_{synthesis.method}.nc", request, compute,
        lambda results: mei_figure(results, method=synthesis.method),
        lambda results: f"{product.upper()}s ({synthesis.method}) of {results.sizes['neuron']} neurons",
    )


class MEICallback(CheckpointProducts):
    """After fit, MEIs by gradient ascent for each kept checkpoint -> `<run>/products/<ckpt>/mei_ga.nc` + PNG.

    Args:
        neurons: explicit "SESSION/NEURON_ID" list; or
        top_k: the k neurons best predicted on the validation tier (by each checkpoint's model).
        seeds, steps, optimizer, lr, normalize_gradient, blur_sigma, contrast, norm, clamp, batch_size: see GASettings.
        minimize: make inhibitory images (lowest response) instead.
        checkpoints: "best_and_last" or "all" kept by the ModelCheckpoint callback.
        ground_truth: on a synthetic twin, score MEIs on the true neurons (and find their true MEIs).
    """

    name = "mei_ga"

    def __init__(
        self,
        neurons: list[str] | None = None,
        top_k: int | None = None,
        seeds: list[int] | None = None,
        steps: int = 100,
        optimizer: str = "sgd",
        lr: float = 0.05,
        normalize_gradient: bool = True,
        blur_sigma: float = 1.0,
        contrast: float = 0.25,
        norm: float | None = None,
        clamp: bool = True,
        batch_size: int = 128,
        minimize: bool = False,
        checkpoints: str = "best_and_last",
        ground_truth: bool = True,
    ):
        super().__init__(checkpoints)
        self.targets = check_choice(neurons, top_k)
        self.top_k = top_k
        self.settings = GASettings(
            seeds=tuple(seeds) if seeds is not None else (0,), steps=steps, optimizer=optimizer, lr=lr,
            normalize_gradient=normalize_gradient, blur_sigma=blur_sigma, contrast=contrast, norm=norm, clamp=clamp, batch_size=batch_size,
        )
        self.minimize = minimize
        self.ground_truth = ground_truth

    def check(self, model: nn.Module, datamodule: RecordedDataModule | None) -> None:
        if self.targets is not None:
            resolve_targets(model, self.targets)
        elif datamodule is None:
            raise EncodersError("MEICallback with top_k needs a data module to rank neurons")

    def produce(self, paths: list[Path], model: nn.Module, datamodule: RecordedDataModule | None, folder: Path) -> list[Path]:
        return write_meis(
            paths, model, folder, self.settings, self.targets, self.top_k, datamodule, self.minimize, self.ground_truth,
        )
