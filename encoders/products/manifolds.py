"""Invariance manifolds as a product: per neuron, a closed loop of images that all drive it near its MEI's rate.

The generator and its training live in `encoders.synthesis.manifolds` (Baroni et al. 2022; Bashiri, Baroni et al.
2025: the method and where this differs are named there). This product makes each chosen neuron's MEI (the
stopping rule's reference and the images' contrast), trains every neuron's manifold in one batch, stores the
manifold as images along the loop with their rates, aligns every manifold that met the rule to every other
neuron (an affine transform of its image coordinates) and groups the neurons by shared invariance. On a
synthetic twin each point of the loop is also shown to the TRUE neuron, and the loop's reach along the true
invariances (phase, position: `encoders.twin.invariance`) is measured.
"""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import torch
import xarray as xr
from matplotlib.figure import Figure

from encoders.contract import ResponseModel
from encoders.errors import EncodersError
from encoders.products.base import ProductData
from encoders.products.figures import _grid, show_image
from encoders.products.meis import compute_meis
from encoders.products.neurons import NeuronProduct, TwinView, add_validation_correlation
from encoders.products.progress import Progress
from encoders.products.veis import best_seed
from encoders.synthesis.diverse import kept_norm
from encoders.synthesis.gradient_ascent import GASettings
from encoders.synthesis.manifolds import align_manifolds, group_neurons, invariance_manifolds
from encoders.synthesis.method import Method

SHOWN = 10  # points of each loop in the figure (the file has all)
ALIGN_IMAGES = 2048  # images per alignment step (templates are aligned in chunks): bounds memory


def check_floors(mean_floor: float, point_floor: float) -> None:
    for name, value in (("mean_floor", mean_floor), ("point_floor", point_floor)):
        if not 0 < value <= 1:
            raise EncodersError(f"{name} must be in (0, 1] (a fraction of the MEI's activation), got {value}")
    if point_floor > mean_floor:
        raise EncodersError(f"point_floor ({point_floor}) must not exceed mean_floor ({mean_floor}): every point above it "
                            "would already hold the mean above it")


class InvarianceManifolds(NeuronProduct):
    """Invariance manifolds of chosen neurons -> `manifold_<latent_dim>d.nc` + PNG.

    Args:
        neurons: explicit "SESSION/NEURON_ID" list; or
        top_k: the k neurons best predicted on the validation tier.
        method: how the MEIs are made (their best seed's rate is the rule's reference, their norm the images').
        latent_dim: 1 (a loop) or 2 (a torus).
        points: latent points per dimension at which the manifold is stored and the rule is checked.
        steps: most training steps (a neuron stops once its loop meets the rule).
        mean_floor, point_floor: the stopping rule: mean rate along the loop >= mean_floor and every point >=
            point_floor of the MEI's (Bashiri, Baroni et al. 2025: 0.9 and 0.85).
        align: align every manifold that met the rule to every chosen neuron, and group the neurons.
        align_rotations: starting rotations of each alignment (0, 180 / n, ... degrees; the best is kept): more find
            rotated invariances more surely, each costs one more pass per step.
        align_steps: Adam steps of each alignment (every pair, rotation and point is one image per step).
        group_threshold: a neuron joins a template's group when the aligned loop holds it at >= this fraction
            of its MEI's rate on average.
        ground_truth: on a synthetic twin, show every point of the loop to the true neuron.
    """

    kind = "manifold"

    def __init__(
        self,
        neurons: list[str] | None = None,
        top_k: int | None = None,
        method: Method = GASettings(seeds=(0, 1, 2, 3), steps=200, lr=0.05, schedule="cosine"),
        latent_dim: int = 1,
        points: int = 20,
        steps: int = 1000,
        mean_floor: float = 0.9,
        point_floor: float = 0.85,
        align: bool = True,
        align_rotations: int = 4,
        align_steps: int = 150,
        group_threshold: float = 0.85,
        ground_truth: bool = True,
    ):
        self.choose(neurons, top_k)
        if latent_dim not in (1, 2) or isinstance(latent_dim, bool):
            raise EncodersError(f"latent_dim must be 1 (a loop) or 2 (a torus), got {latent_dim!r}")
        if isinstance(points, bool) or int(points) != points or points < 3:
            raise EncodersError(f"points must be an integer >= 3 per latent dimension, got {points!r}")
        if isinstance(steps, bool) or int(steps) != steps or steps < 1:
            raise EncodersError(f"steps must be an integer >= 1, got {steps!r}")
        check_floors(mean_floor, point_floor)
        if not 0 < group_threshold <= 1:
            raise EncodersError(f"group_threshold must be in (0, 1], got {group_threshold}")
        self.method, self.latent_dim, self.points, self.steps = method, int(latent_dim), int(points), int(steps)
        self.mean_floor, self.point_floor = float(mean_floor), float(point_floor)
        if isinstance(align_rotations, bool) or int(align_rotations) != align_rotations or align_rotations < 1:
            raise EncodersError(f"align_rotations must be an integer >= 1, got {align_rotations!r}")
        if isinstance(align_steps, bool) or int(align_steps) != align_steps or align_steps < 1:
            raise EncodersError(f"align_steps must be an integer >= 1, got {align_steps!r}")
        self.align, self.align_rotations, self.group_threshold = bool(align), int(align_rotations), float(group_threshold)
        self.align_steps = int(align_steps)
        self.ground_truth = ground_truth

    def stem(self) -> str:
        return f"{self.kind}_{self.latent_dim}d"

    def check(self, model: ResponseModel, data: ProductData) -> None:
        kept_norm(self.method, tuple(model.input_shape))
        super().check(model, data)

    def compute(self, model: ResponseModel, data: ProductData, progress: Progress) -> xr.Dataset:
        model.eval()
        targets, scores = self.chosen(model, data)
        meis = compute_meis(model, targets, self.method, progress=progress)
        mei, mei_rate = best_seed(meis)
        if not (torch.isfinite(mei_rate) & (mei_rate > 0)).all():
            bad = [f"{s}/{n}" for (s, n), r in zip(targets, mei_rate.tolist()) if not r > 0]
            raise EncodersError(f"neurons: the MEIs of {bad} do not drive them (rate {mei_rate.min():.3g}): no floor to keep")
        norm = kept_norm(self.method, tuple(model.input_shape))
        with progress.task(f"invariance manifolds of {len(targets)} neurons", 1) as advance:
            result = invariance_manifolds(model, targets, mei_rate, norm, latent_dim=self.latent_dim, points=self.points,
                                          steps=self.steps, mean_floor=self.mean_floor, point_floor=self.point_floor)
            advance(1)
        results = self._dataset(model, targets, mei, mei_rate, result)
        add_validation_correlation(results, scores)
        if self.align:
            self._align(model, targets, mei_rate, result, results)
        if self.scored(data):
            TwinView(model, data, targets, meis, self.method, result.images).add_to(results, "point", self.point_floor, "point")
        return results

    def _align(self, model, targets, mei_rate, result, results: xr.Dataset) -> None:
        templates = torch.nonzero(result.reached).flatten().tolist()
        results.attrs["templates"] = json.dumps(templates)
        if not templates:
            results.attrs["groups"] = "none: no manifold met the stopping rule, so none can serve as a template"
            return
        # in chunks of templates: every pair, starting rotation and point is one image per step
        per_chunk = max(1, ALIGN_IMAGES // (len(targets) * self.align_rotations * result.images.shape[1]))
        parts = [align_manifolds(model, result, templates[i:i + per_chunk], targets, mei_rate, rotations=self.align_rotations,
                                 steps=self.align_steps, keep_images=False) for i in range(0, len(templates), per_chunk)]
        alignment = dataclasses.replace(
            parts[0], templates=torch.cat([p.templates for p in parts]), template_targets=sum((p.template_targets for p in parts), []),
            **{name: torch.cat([getattr(p, name) for p in parts]) for name in ("affine", "relative", "mean_relative", "min_relative", "reached")})
        results["aligned_affine"] = (("template", "neuron", "row", "column"), alignment.affine.numpy())
        results["aligned_affine"].attrs.update({"long_name": "x -> A x + b of the pixel coordinates (x, y in [-1, 1]) at which "
                                                "the neuron sees the template's loop: [A | b]", "units": "1"})
        results["aligned_mean"] = (("template", "neuron"), alignment.mean_relative.numpy())
        results["aligned_min"] = (("template", "neuron"), alignment.min_relative.numpy())
        results["aligned_mean"].attrs.update({"long_name": "mean rate along the template's loop after alignment / the neuron's MEI rate", "units": "1"})
        results["aligned_min"].attrs.update({"long_name": "lowest rate along the aligned loop / the neuron's MEI rate", "units": "1"})
        results.coords["template"] = [f"{targets[i][0]}/{targets[i][1]}" for i in templates]
        labels = group_neurons(alignment, self.group_threshold)
        results["group"] = ("neuron", np.asarray(labels))
        results["group"].attrs.update({"long_name": "group of neurons sharing an invariance (alignment of manifolds)", "units": "1"})

    def _dataset(self, model, targets, mei, mei_rate, result) -> xr.Dataset:
        transform = model.image_transform
        images = result.images
        dims = ("neuron", "point", "channel", "y", "x")
        data = xr.Dataset(
            {
                "image": (dims, images.numpy()),
                "image_pixels": (dims, transform.to_pixels(images.flatten(0, 1)).view(images.shape).numpy()),
                "latent": (("point", "latent_dim"), result.latents.numpy()),
                "activation": (("neuron", "point"), result.activations.numpy()),
                "relative_activation": (("neuron", "point"), result.relative.numpy()),
                "reached": ("neuron", result.reached.numpy()),
                "stopped_at": ("neuron", result.stopped_at.numpy()),
                "trace": (("step", "neuron"), result.trace.numpy()),
                "mei": (("neuron", "channel", "y", "x"), mei.numpy()),
                "mei_pixels": (("neuron", "channel", "y", "x"), transform.to_pixels(mei).numpy()),
                "mei_activation": ("neuron", mei_rate.numpy()),
            },
            coords={"session": ("neuron", [t[0] for t in targets]), "neuron_id": ("neuron", [t[1] for t in targets]),
                    "point": np.arange(images.shape[1]), "step": np.arange(result.trace.shape[0])},
        )
        units = {
            "image": ("the manifold at evenly spaced latents, model space", "z-scored pixel"),
            "image_pixels": ("the manifold in pixel space after the data's grayscale/crop/resize", "pixel value (0..255)"),
            "latent": ("periodic latent of each point (1 = one turn)", "turn"),
            "activation": ("predicted rate of each point", "spikes per bin"),
            "relative_activation": ("predicted rate / the MEI's", "1"),
            "reached": ("the stopping rule met: mean >= mean_floor and every point >= point_floor", "1"),
            "stopped_at": ("training step at which the neuron met the rule (steps if never)", "step"),
            "trace": ("mean relative activation along the loop at each step", "1"),
            "mei": ("the MEI (best seed): the rule's reference", "z-scored pixel"),
            "mei_pixels": ("the MEI in pixel space", "pixel value (0..255)"),
            "mei_activation": ("predicted rate of the MEI", "spikes per bin"),
        }
        for name, (long_name, unit) in units.items():
            data[name].attrs.update({"long_name": long_name, "units": unit})
        data.attrs.update(self.method.attrs(model.input_shape))
        data.attrs.update({"product": "invariance manifolds", "latent_dim": self.latent_dim, "mean_floor": self.mean_floor,
                           "point_floor": self.point_floor, "norm": result.norm, "image_transform": json.dumps(transform.state())})
        return data

    def figure(self, results: xr.Dataset) -> Figure:
        return manifold_figure(results)

    def describe(self, results: xr.Dataset) -> str:
        reached = int(results.reached.sum())
        line = (f"invariance manifolds ({self.latent_dim}-D) of {results.sizes['neuron']} neurons: {reached} met the rule "
                f"(mean >= {self.mean_floor}, every point >= {self.point_floor})")
        if "group" in results:
            line += f"; {len(set(results.group.values.tolist()))} group(s)"
        if "ground_truth_fraction_above" in results:
            line += f"; on the true neurons {float(results.ground_truth_fraction_above.mean()):.0%} of points above {self.point_floor}"
        return line


def manifold_figure(results: xr.Dataset, rows: int = 12) -> Figure:
    """Rows = neurons (first `rows`): the MEI, then SHOWN points evenly along the loop (the first latent dimension)."""
    n_rows = min(results.sizes["neuron"], rows)
    points = results.sizes["point"]
    shown = np.unique(np.linspace(0, points, SHOWN, endpoint=False).astype(int))
    has_truth = "ground_truth_relative_activation" in results
    figure, axes = _grid(n_rows, 1 + len(shown))
    for row in range(n_rows):
        neuron = results.isel(neuron=row)
        show_image(axes[row, 0], neuron.mei_pixels.values)
        title = f"MEI r={float(neuron.mei_activation):.2f}" + ("" if bool(neuron.reached) else "\nrule not met")
        if "group" in neuron:
            title += f"\ngroup {int(neuron.group)}"
        axes[row, 0].set_title(title, fontsize=6)
        axes[row, 0].set_ylabel(f"{neuron.session.item()}\n{neuron.neuron_id.item()}", fontsize=6)
        for col, point in enumerate(shown, start=1):
            cell = neuron.isel(point=int(point))
            text = f"{float(cell.relative_activation):.2f}"
            if has_truth:
                text += f" / {float(cell.ground_truth_relative_activation):.2f}"
            show_image(axes[row, col], cell.image_pixels.values)
            axes[row, col].set_title(f"z={float(cell.latent[0]):.2f}\n{text}" if row == 0 else text, fontsize=6)
    legend = "along the loop (z = latent); numbers: predicted rate / MEI's" + (" / true rate / true MEI's" if has_truth else "")
    figure.suptitle(f"invariance manifolds ({results.attrs['latent_dim']}-D)\n{legend}", fontsize=8)
    return figure
