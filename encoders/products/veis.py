"""VEIs: per neuron, K varied exciting images, each driving it to at least a floor of its MEI's rate, as unlike as possible.

The product beside MEIs, MENIs and inhibitory images (`encoders.synthesis.diverse` holds the energy and the
optimisation, Ding et al. 2026). For each chosen neuron it makes the MEIs (the floor's reference and the
mask the distances are measured in), then K images by the same method (gradient ascent, or EGG whose prior
keeps them natural), and reads their spread on the diversity index (0 = as a simulated simple cell's
VEIs, 1 = as a simulated complex cell's). It also gives the natural-image yardstick of Ding et al.: the
fraction of the session's recorded images above 50/75/85 % of the MEI's rate. On a synthetic twin every
VEI is also shown to the TRUE neuron: the share that keeps it at >= floor of its true MEI's rate is the
in-silico version of Ding et al.'s closed-loop check.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import torch
import xarray as xr
from matplotlib.figure import Figure

from encoders.contract import ResponseModel, device_of
from encoders.errors import EncodersError
from encoders.products.base import ProductData
from encoders.products.figures import METHOD_NAMES, _grid, show_image
from encoders.products.meis import compute_meis
from encoders.products.neurons import NeuronProduct, TwinView, add_validation_correlation, labelled
from encoders.products.progress import Progress
from encoders.synthesis.diverse import (
    DEFAULT_FLOOR,
    DEFAULT_K,
    check_settings,
    diversity_anchors,
    kept_norm,
    mei_mask,
    varied_exciting_images,
    vei_method,
)
from encoders.synthesis.gradient_ascent import GASettings
from encoders.synthesis.method import Method
from encoders.synthesis.targets import Target, model_space_images

LEVELS = (0.5, 0.75, 0.85)  # the natural-image yardstick: fractions of the MEI's rate (Ding et al.)
SHOWN = 8  # VEIs per neuron in the figure (the file has all K)
BATCH = 256


def reachable(own: torch.Tensor, reference: torch.Tensor, floor: float) -> torch.Tensor:
    """Which neurons a method can make VEIs for: its own best MEI reaches floor * the reference MEI's rate (> 0)."""
    return torch.isfinite(own) & torch.isfinite(reference) & (reference > 0) & (own >= floor * reference)


def best_seed(meis: xr.Dataset) -> tuple[torch.Tensor, torch.Tensor]:
    """Each neuron's best MEI (n, C, H, W) and its rate (n,), from a one-method MEI set."""
    data = meis.isel(method=0)
    activation = torch.as_tensor(data.activation.transpose("neuron", "seed").values)
    index = activation.nan_to_num(float("-inf")).argmax(1)
    images = torch.as_tensor(data.image.transpose("neuron", "seed", ...).values)
    rows = torch.arange(len(index))
    return images[rows, index], activation[rows, index]


@torch.no_grad()
def natural_fractions(model: ResponseModel, recording, targets: list[Target], mei_rate: torch.Tensor,
                      truth: TwinView | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Fraction of each target's session images (every tier, as recorded: their own contrast) whose predicted rate
    is >= each of LEVELS times the MEI's rate, (n, levels); with a twin's view, the same for the true rates against
    the true MEI (NaN without one)."""
    device = device_of(model)
    predicted = np.full((len(targets), len(LEVELS)), np.nan)
    true = np.full_like(predicted, np.nan)
    for session in sorted({s for s, _ in targets}):
        rows = [i for i, (s, _) in enumerate(targets) if s == session]
        if session not in recording.sessions:
            continue
        images = torch.cat([model_space_images(model, recording, session, tier)["images"]
                            for tier in ("train", "validation", "test")])
        columns = torch.tensor([model.neuron_ids(session).index(targets[i][1]) for i in rows])
        rates = torch.cat([model(x.to(device), session)[:, columns.to(device)].cpu() for x in images.split(BATCH)])
        for j, level in enumerate(LEVELS):
            predicted[rows, j] = (rates >= level * mei_rate[rows][None]).double().mean(0).numpy()
        if truth is not None:
            true_rates = truth.rates(images, rows)
            for j, level in enumerate(LEVELS):
                true[rows, j] = (true_rates >= level * truth.true_mei_rate[rows][None]).double().mean(0).numpy()
    return predicted, true


class VEIs(NeuronProduct):
    """Varied exciting images of chosen neurons -> `vei_<method>.nc` + PNG (Ding et al. 2026).

    Args:
        neurons: explicit "SESSION/NEURON_ID" list; or
        top_k: the k neurons best predicted on the validation tier.
        method: how the MEIs and the VEIs are made: gradient ascent (default: 200 steps, lr 0.05 cosine-annealed,
            so the images settle on the floor) or EGGSettings with a contrast (the prior keeps them natural).
            Its seeds make the MEIs; the VEIs start from the K seeds after the largest of them.
        k: VEIs per neuron (>= 2; Ding et al.: 20).
        floor: each VEI's rate >= floor x the reference MEI's, in (0, 1] (Ding et al.: 0.85).
        reference: the method whose best MEI sets the floor and the mask (null: `method` itself). Give gradient
            ascent here when `method` is EGG, so GA's and EGG's VEIs meet the same floor; a neuron whose MEI
            by `method` cannot reach floor x that rate gets no VEIs (named on stderr and in the file), the others do.
        ground_truth: on a synthetic twin, show every VEI and the natural images to the true neurons.
    """

    kind = "vei"

    def __init__(
        self,
        neurons: list[str] | None = None,
        top_k: int | None = None,
        method: Method = GASettings(steps=200, lr=0.05, schedule="cosine"),  # = vei_method(): written out for the CLI
        k: int = DEFAULT_K,
        floor: float = DEFAULT_FLOOR,
        reference: Method | None = None,
        ground_truth: bool = True,
    ):
        self.choose(neurons, top_k)
        check_settings(k, floor)
        self.method, self.k, self.floor, self.reference = method, int(k), float(floor), reference
        self.ground_truth = ground_truth

    def stem(self) -> str:
        return f"{self.kind}_{self.method.name}"

    def check(self, model: ResponseModel, data: ProductData) -> None:
        shape = tuple(model.input_shape)
        norm = kept_norm(self.method, shape)
        if self.reference is not None:
            other = kept_norm(self.reference, shape)
            if not np.isclose(other, norm, rtol=1e-6):
                raise EncodersError(f"reference: its MEIs are kept at L2 norm {other:.4g}, the VEIs' method at {norm:.4g}; "
                                    "VEIs are at their reference MEI's contrast: give both the same contrast")
            self.reference.check_available()
        super().check(model, data)

    def resolved(self, model: ResponseModel, data: ProductData) -> dict:
        return {**super().resolved(model, data), "with_natural_images": data.recording is not None}

    def compute(self, model: ResponseModel, data: ProductData, progress: Progress) -> xr.Dataset:
        model.eval()
        targets, scores = self.chosen(model, data)
        shape = tuple(model.input_shape)
        own = compute_meis(model, targets, self.method, progress=progress)
        reference = own if self.reference is None else compute_meis(model, targets, self.reference, progress=progress)
        mei, mei_rate = best_seed(reference)
        own_rate = best_seed(own)[1]
        keep = reachable(own_rate, mei_rate, self.floor)
        dropped = [f"{s}/{n}" for (s, n), ok in zip(targets, keep.tolist()) if not ok]
        if not keep.any():
            raise EncodersError(f"floor: no neuron's MEI by {type(self.method).__name__} reaches {self.floor} of its "
                                f"reference MEI's rate ({', '.join(dropped[:12])}); lower the floor")
        if dropped:
            print(f"floor {self.floor}: the MEIs by {type(self.method).__name__} of {len(dropped)} neuron(s) cannot reach it, "
                  f"no VEIs for them: {', '.join(dropped)}", file=sys.stderr)
        index = torch.nonzero(keep).flatten()
        targets = [targets[i] for i in index.tolist()]
        mei, mei_rate, own_rate = mei[index], mei_rate[index], own_rate[index]
        masks = mei_mask(mei)
        first = max(self.method.seeds) + 1
        with progress.task(f"VEIs ({self.method.name}) of {len(targets)} neurons x {self.k}", 1) as advance:
            result = varied_exciting_images(model, targets, mei_rate, self.method, self.k, self.floor, first, masks)
            advance(1)
        results = self._dataset(model, targets, mei, mei_rate, own_rate, masks, result)
        results.attrs["unreachable"] = json.dumps(dropped)
        add_validation_correlation(results, scores, index.numpy())
        if shape[0] == 1 and shape[1] == shape[2]:
            # one scale for every method: the anchors are the standard VEI gradient ascent's at these images' norm
            anchors = diversity_anchors(shape, vei_method(norm=result.norm), self.k, self.floor, first)
            results.attrs.update({"anchor_simple_distance": anchors.simple, "anchor_complex_distance": anchors.complex})
            if anchors.complex > anchors.simple:
                results["diversity_index"] = labelled("neuron", anchors.index(result.distance),
                                                      "mean pairwise VEI distance, 0 = simulated simple cell, 1 = complex cell", "1")
            else:  # the anchor cells' VEIs did not separate: no scale to read the distances on
                results.attrs["diversity_index"] = "not computed: the simulated complex cell's VEIs are no more diverse than the simple cell's"
        else:
            results.attrs["diversity_index"] = "not computed: the simulated anchor cells are grayscale and square"
        truth = None
        if self.scored(data):
            truth = TwinView(model, data, targets, reference.isel(neuron=index.numpy()),
                             self.method if self.reference is None else self.reference, result.images)
            truth.add_to(results, "vei", self.floor, "VEI")
        if data.recording is not None:
            predicted, true = natural_fractions(model, data.recording, targets, mei_rate, truth)
            results["natural_fraction"] = labelled(("neuron", "level"), predicted, "fraction of the session's recorded images with "
                                                   "predicted rate >= level x MEI rate", "1")
            if truth is not None:
                results["ground_truth_natural_fraction"] = labelled(("neuron", "level"), true,
                                                                    "the same on the true neuron, against the true MEI", "1")
        return results

    def _dataset(self, model, targets, mei, mei_rate, own_rate, masks, result) -> xr.Dataset:
        transform = model.image_transform
        n, k = result.images.shape[:2]
        image_dims = ("neuron", "vei", "channel", "y", "x")
        data = xr.Dataset(
            {
                "image": (image_dims, result.images.numpy()),
                "image_pixels": (image_dims, transform.to_pixels(result.images.flatten(0, 1)).view(result.images.shape).numpy()),
                "activation": (("neuron", "vei"), result.activations.numpy()),
                "relative_activation": (("neuron", "vei"), result.relative.numpy()),
                "above_floor": (("neuron", "vei"), result.above_floor.numpy()),
                "fraction_above": ("neuron", result.fraction_above.numpy()),
                "distance": ("neuron", result.distance.numpy()),
                "mei": (("neuron", "channel", "y", "x"), mei.numpy()),
                "mei_pixels": (("neuron", "channel", "y", "x"), transform.to_pixels(mei).numpy()),
                "mei_activation": ("neuron", mei_rate.numpy()),
                "method_mei_activation": ("neuron", own_rate.numpy()),
                "mask": (("neuron", "y", "x"), masks[:, 0].numpy()),
                "relative_trace": (("step", "neuron", "vei"), result.relative_trace.numpy()),
                "distance_trace": (("step", "neuron"), result.distance_trace.numpy()),
            },
            coords={"session": ("neuron", [t[0] for t in targets]), "neuron_id": ("neuron", [t[1] for t in targets]),
                    "vei": np.arange(k), "step": np.arange(result.distance_trace.shape[0]), "level": list(LEVELS)},
        )
        units = {
            "image": ("VEI in the model's input space", "z-scored pixel"),
            "image_pixels": ("VEI in pixel space after the data's grayscale/crop/resize", "pixel value (0..255)"),
            "activation": ("predicted rate of each VEI", "spikes per bin"),
            "relative_activation": ("predicted rate / the reference MEI's", "1"),
            "above_floor": ("relative_activation >= floor", "1"),
            "fraction_above": ("fraction of the neuron's VEIs above the floor", "1"),
            "distance": ("mean pairwise Euclidean distance of the VEIs inside the mask", "z-scored pixel"),
            "mei": ("the reference MEI (best seed)", "z-scored pixel"),
            "mei_pixels": ("the reference MEI in pixel space", "pixel value (0..255)"),
            "mei_activation": ("predicted rate of the reference MEI: the floor's 1", "spikes per bin"),
            "method_mei_activation": ("predicted rate of the best MEI by the VEIs' own method", "spikes per bin"),
            "mask": ("where distances are measured: the MEI's local contrast >= 20 % of its peak", "1"),
            "relative_trace": ("relative activation at each step (at the images the gradient is taken at)", "1"),
            "distance_trace": ("mean pairwise distance at each step", "z-scored pixel"),
        }
        for name, (long_name, unit) in units.items():
            data[name].attrs.update({"long_name": long_name, "units": unit})
        data.attrs.update(self.method.attrs(model.input_shape))
        if self.reference is not None:
            data.attrs.update({f"reference_{k}": v for k, v in self.reference.attrs(model.input_shape).items()})
        data.attrs.update({"product": "varied exciting images", "k": k, "floor": self.floor, "norm": result.norm,
                           "image_transform": json.dumps(transform.state())})
        return data

    def figure(self, results: xr.Dataset) -> Figure:
        return vei_figure(results, self.method.name)

    def describe(self, results: xr.Dataset) -> str:
        line = (f"VEIs ({self.method.name}) of {results.sizes['neuron']} neurons x {results.sizes['vei']}: "
                f"{float(results.fraction_above.mean()):.0%} above the floor {self.floor}")
        if "diversity_index" in results:
            line += f", diversity index median {float(results.diversity_index.median()):.2f}"
        if "ground_truth_fraction_above" in results:
            line += f"; on the true neurons {float(results.ground_truth_fraction_above.mean()):.0%} above it"
        dropped = json.loads(results.attrs.get("unreachable", "[]"))
        return line + (f"; {len(dropped)} neuron(s) could not reach the floor" if dropped else "")


def vei_figure(results: xr.Dataset, method: str = "ga", rows: int = 12) -> Figure:
    """Rows = neurons (first `rows`): the reference MEI, then the first SHOWN VEIs with their relative rates."""
    n_rows = min(results.sizes["neuron"], rows)
    shown = min(results.sizes["vei"], SHOWN)
    has_truth = "ground_truth_relative_activation" in results
    figure, axes = _grid(n_rows, 1 + shown)
    for row in range(n_rows):
        neuron = results.isel(neuron=row)
        show_image(axes[row, 0], neuron.mei_pixels.values)
        title = f"MEI r={float(neuron.mei_activation):.2f}"
        if "diversity_index" in neuron:
            title += f"\nDI={float(neuron.diversity_index):.2f}"
        axes[row, 0].set_title(title, fontsize=6)
        axes[row, 0].set_ylabel(f"{neuron.session.item()}\n{neuron.neuron_id.item()}", fontsize=6)
        for col in range(shown):
            cell = neuron.isel(vei=col)
            text = f"{float(cell.relative_activation):.2f}"
            if has_truth:
                text += f" / {float(cell.ground_truth_relative_activation):.2f}"
            show_image(axes[row, col + 1], cell.image_pixels.values)
            axes[row, col + 1].set_title(text, fontsize=6)
    legend = f"numbers: predicted rate / MEI's (floor {results.attrs['floor']})"
    if has_truth:
        legend += " / true rate / true MEI's"
    figure.suptitle(f"varied exciting images by {METHOD_NAMES.get(method, method)}; DI = diversity index\n{legend}", fontsize=8)
    return figure
