"""MEIs: the images that drive each chosen neuron most (or least), by gradient ascent or energy-guided diffusion.

A MENI (most exciting naturalistic image) is an MEI with EGG settings that keep the prior's own
contrast (`EGGSettings(contrast=None, ...)`) under another name; inhibitory images are
`minimize=True`. On a synthetic twin every image is also scored on the true neuron.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import numpy as np
import torch
import xarray as xr
from matplotlib.figure import Figure

from encoders.contract import ResponseModel
from encoders.errors import EncodersError
from encoders.products.base import ProductData
from encoders.products.figures import mei_figure
from encoders.products.neurons import NeuronProduct, add_validation_correlation
from encoders.products.progress import Progress
from encoders.synthesis.energies import NeuronActivation
from encoders.synthesis.gradient_ascent import GASettings
from encoders.synthesis.method import Method
from encoders.synthesis.targets import Target, resolve_targets

KINDS = {"mei": "most exciting images", "meni": "most exciting naturalistic images", "mii": "most inhibitory images"}


def compute_meis(
    model: ResponseModel, targets: Sequence[Target], method: Method, minimize: bool = False, progress: Progress | None = None,
) -> xr.Dataset:
    """MEIs of `targets` (one per seed), batched over neurons and seeds, as a labelled Dataset.

    Dims: method, neuron (coords session, neuron_id), seed, channel, y, x, step. Variables: image
    (model space), image_pixels (pixel space), activation (final predicted rate), trace (rate at
    the start of each step), best_seed (per neuron, the seed of the highest activation; all seeds stay).
    """
    resolve_targets(model, targets)  # every id checked before the first step
    model.eval()
    seeds = list(method.seeds)
    pairs = [(target, seed) for target in targets for seed in seeds]
    name = method.name
    with (progress or Progress.quiet()).task(f"MEIs ({name}) of {len(targets)} neurons x {len(seeds)} seeds", len(pairs)) as advance:
        result = method.synthesize(
            lambda index: NeuronActivation(model, [pairs[i][0] for i in index], minimize=minimize),
            [seed for _, seed in pairs], model, advance,
        )
    sign = 1.0 if minimize else -1.0  # energy = -rate, or +rate for inhibitory images
    data = mei_dataset(name, targets, seeds, result.images, sign * result.energy, sign * result.trace, model.image_transform, minimize)
    data.attrs.update(method.attrs(model.input_shape))
    data.attrs["product"] = "inhibitory images" if minimize else "most exciting images"
    data.attrs["minimize"] = int(minimize)
    return data


def mei_dataset(
    method: str, targets: Sequence[Target], seeds: Sequence[int], images: torch.Tensor, activation: torch.Tensor,
    trace: torch.Tensor, transform, minimize: bool = False,
) -> xr.Dataset:
    """Labelled MEIs of any method: images (targets x seeds, C, H, W) in target-major order,
    activation (targets x seeds,), trace (steps, targets x seeds)."""
    n, s = len(targets), len(seeds)
    shape = tuple(images.shape[1:])
    images = images.reshape(n, s, *shape)
    activation = activation.reshape(1, n, s)
    # the seed of the best activation; a NaN one (a diverged optimisation) is never the best
    ranked = activation.masked_fill(activation.isnan(), float("inf") if minimize else float("-inf"))
    best = (ranked.argmin(2) if minimize else ranked.argmax(2))[0].numpy()
    image_dims = ("method", "neuron", "seed", "channel", "y", "x")
    data = xr.Dataset(
        {
            "image": (image_dims, images[None].numpy()),
            "image_pixels": (image_dims, transform.to_pixels(images)[None].numpy()),
            "activation": (("method", "neuron", "seed"), activation.numpy()),
            "trace": (("method", "step", "neuron", "seed"), trace.reshape(1, -1, n, s).numpy()),
            "best_seed": (("method", "neuron"), np.asarray(seeds)[best][None]),
        },
        coords={
            "method": [method],
            "session": ("neuron", [t[0] for t in targets]),
            "neuron_id": ("neuron", [t[1] for t in targets]),
            "seed": list(seeds),
            "step": np.arange(trace.shape[0]),
        },
    )
    data["image"].attrs.update({"long_name": "image in the model's input space", "units": "z-scored pixel"})
    data["image_pixels"].attrs.update({"long_name": "image in pixel space after the data's grayscale/crop/resize", "units": "pixel value (0..255)"})
    data["activation"].attrs.update({"long_name": "predicted rate of the final image", "units": "spikes per bin"})
    data["trace"].attrs.update({"long_name": "predicted rate at the start of each step", "units": "spikes per bin"})
    data["best_seed"].attrs.update({"long_name": "seed whose image drives the neuron most (least when minimising)", "units": "1"})
    data.attrs["image_transform"] = json.dumps(transform.state())
    return data


class MEIs(NeuronProduct):
    """Most exciting (or inhibitory) images of chosen neurons -> `<kind>_<method>.nc` + PNG.

    Args:
        neurons: explicit "SESSION/NEURON_ID" list; or
        top_k: the k neurons best predicted on the validation tier (by each checkpoint's model).
        method: a synthesis method: GASettings (gradient ascent), EGGSettings (energy-guided diffusion) or a preset.
        minimize: make inhibitory images (lowest response) instead: kind "mii".
        kind: "mei", "meni" (EGG with contrast None: the prior's own contrast) or "mii" (= minimize): the file name and title.
        ground_truth: on a synthetic twin, score the images on the true neurons (and find their true MEIs).
    """

    def __init__(
        self,
        neurons: list[str] | None = None,
        top_k: int | None = None,
        method: Method = GASettings(),
        minimize: bool = False,
        kind: str = "mei",
        ground_truth: bool = True,
    ):
        self.choose(neurons, top_k)
        if kind not in KINDS:
            raise EncodersError(f"kind: must be one of {list(KINDS)}, got {kind!r}")
        # the kind names the file and the title, so it must say what the images are: minimize makes
        # "mii" (and "mii" minimises); MENIs are EGG images at the prior's own contrast
        if (minimize and kind == "mei") or kind == "mii":
            kind, minimize = "mii", True
        if kind == "meni" and (minimize or not method.prior_contrast):
            raise EncodersError("kind: meni (most exciting naturalistic images) is EGG at the prior's own contrast: "
                                "give method EGGSettings with contrast: null, and no minimize")
        self.method = method
        self.minimize = minimize
        self.kind = kind
        self.ground_truth = ground_truth

    def stem(self) -> str:
        return f"{self.kind}_{self.method.name}"

    def compute(self, model: ResponseModel, data: ProductData, progress: Progress) -> xr.Dataset:
        from encoders.twin.scoring import ground_truth_summary, score_on_ground_truth

        model.eval()
        targets, scores = self.chosen(model, data)
        results = compute_meis(model, targets, self.method, self.minimize, progress)
        results.attrs["product"] = KINDS[self.kind]
        add_validation_correlation(results, scores)
        if self.scored(data):
            results = score_on_ground_truth(results, model, data.twin, self.method.truth(), data.truth_store)
            results.attrs["ground_truth_summary"] = ground_truth_summary(results)
        return results

    def figure(self, results: xr.Dataset) -> Figure:
        return mei_figure(results, method=self.method.name)

    def describe(self, results: xr.Dataset) -> str:
        line = f"{self.kind.upper()}s ({self.method.name}) of {results.sizes['neuron']} neurons"
        summary = results.attrs.get("ground_truth_summary")
        return f"{line}; {summary}" if summary else line
