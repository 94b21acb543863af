"""Scores against a synthetic twin's true neurons, every one through the model -> twin mapping of `TwinGeometry`.

- :class:`GroundTruthActivation`: the true rate of a neuron as an energy on model-space images
  (GA on it makes the twin's own MEIs under the model's norm, blur and clamp).
- :func:`true_meis`: the twin's own MEIs under a model's geometry, kept once in a store folder.
- :func:`score_on_ground_truth`: a model's MEIs on the true neurons, against the true MEIs.
- :func:`true_rates`: true rates of images in a model's input geometry (pixel units), as the
  compare scorer needs them.
- :func:`ground_truth_correlation`: a model's test predictions against the noiseless true rates.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from torch import nn

from encoders.contract import ResponseModel, device_of
from encoders.metrics import correlation
from encoders.synthesis.method import Method
from encoders.twin.geometry import TwinGeometry

if TYPE_CHECKING:
    from encoders.datasets.recording import Recording
    from encoders.twin import Twin

BATCH = 256  # images per forward pass of the true neurons: bounds memory only


class GroundTruthActivation:
    """A twin's true neuron `columns[b]` driven by model-space image b: energy = -true rate (+rate with minimize).

    The image reaches the twin through `geometry` (`TwinGeometry.to_twin`): where the model saw it,
    at the scale the model saw it. Optimising a model-space image through this energy makes the
    twin's own MEI under exactly the same norm, blur and clamp as the model's MEIs.
    """

    def __init__(self, truth: nn.Module, columns: torch.Tensor, geometry: TwinGeometry, minimize: bool = False):
        self.truth = truth
        self.columns = torch.as_tensor(columns, dtype=torch.long)
        self.geometry = geometry
        self.minimize = minimize

    def __len__(self) -> int:
        return len(self.columns)

    def pixels(self, images: torch.Tensor) -> torch.Tensor:
        """Model-space images -> the twin's input (pixel units, stored size)."""
        return self.geometry.to_twin(images)

    def activation(self, images: torch.Tensor) -> torch.Tensor:
        """True rate of each image's neuron, (B,)."""
        if images.ndim != 4 or images.shape[0] != len(self):
            raise ValueError(f"GroundTruthActivation has {len(self)} targets and needs images (B={len(self)}, C, H, W), "
                             f"got {tuple(images.shape)}")
        rates = self.truth(self.pixels(images))
        return rates.gather(1, self.columns.to(rates.device)[:, None])[:, 0]

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        activation = self.activation(images)
        return activation if self.minimize else -activation


@torch.no_grad()
def true_rates(truth: nn.Module, geometry: TwinGeometry, pixels: torch.Tensor) -> torch.Tensor:
    """True rates of every neuron, (B, n_true_neurons) on the CPU, for images (B, 1, H, W) in the
    model's input geometry and pixel units (e.g. `image_pixels` of an MEI set); batched."""
    device = truth.v1_kernels.device
    out = [truth(geometry.place(x.to(device))).cpu() for x in pixels.split(BATCH)]
    return torch.cat(out) if out else torch.zeros(0, truth.n_neurons)


def true_meis(
    model: ResponseModel, twin: Twin, targets: Sequence[tuple[str, str]], seeds: Sequence[int], settings: Method,
    minimize: bool = False, store: Path | None = None,
) -> torch.Tensor:
    """The twin's own MEIs of `targets` (one per seed: (targets x seeds, C, H, W), target-major) in the model's
    input space, found by `settings` on the true neurons through the model's `TwinGeometry`.

    With `store`, kept there once per (twin file, model geometry, targets, seeds, settings) and read back by
    every product and checkpoint asking for the same (`encoders.products.store.get_or_compute`): the
    products of a run's best and last checkpoints, GA and EGG alike, share one search.
    """
    shape = tuple(model.input_shape)
    device = device_of(model)
    n, s = len(targets), len(seeds)

    def compute() -> xr.Dataset:
        columns = twin.columns(model, list(targets)).repeat_interleave(s)  # image i = target i // s, seed i % s
        truth, geometry = twin.truth.to(device), twin.geometry(model)
        found = settings.synthesize(
            lambda index: GroundTruthActivation(truth, columns[index], geometry, minimize=minimize),
            [seeds[i % s] for i in range(n * s)], model,
        )
        data = xr.Dataset({"true_mei": (("neuron", "seed", "channel", "y", "x"), found.images.view(n, s, *shape).numpy())},
                          coords={"session": ("neuron", [t[0] for t in targets]), "neuron_id": ("neuron", [t[1] for t in targets]),
                                  "seed": list(seeds)})
        data["true_mei"].attrs.update({"long_name": "the twin's own MEI, in the model's input space", "units": "z-scored pixel"})
        data.attrs.update({"ground_truth": str(twin.path), "minimize": int(minimize), **settings.attrs(shape)})
        return data

    if store is None:
        found = compute()
    else:
        from encoders.products.store import get_or_compute

        stat = Path(twin.path).stat()
        request = {"twin": [str(Path(twin.path).resolve()), stat.st_size, stat.st_mtime_ns],
                   "transform": model.image_transform.state(), "input_shape": list(shape), "targets": [list(t) for t in targets],
                   "seeds": list(seeds), "settings": settings.key(shape), "minimize": bool(minimize)}
        key = hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()[:16]
        found, _ = get_or_compute(Path(store) / f"true_meis_{key}.nc", request, compute)
    return torch.as_tensor(found["true_mei"].values).reshape(n * s, *shape)


def score_on_ground_truth(
    results: xr.Dataset, model: nn.Module, twin: Twin, settings: Method, store: Path | None = None,
) -> xr.Dataset:
    """Add the twin's view of each MEI: true rate, rate relative to the true MEI, similarity to it.

    The true MEI is found the same way as the model's (same seeds, steps, optimiser, blur, norm and
    clamp in model space), by ascending the ground truth through `TwinGeometry.to_twin`. Per neuron
    the seed with the strongest true drive (the rate's tie-breaker) is THE true MEI:
    ground_truth_relative_activation = true rate of the model's MEI / true rate of the true MEI;
    true_mei_correlation = pixel correlation of each model MEI with the true MEI;
    true_mei_feature_correlation = the same in the true neuron's own view (`neuron_maps`: its
    feature mixture at each position of its receptive field);
    ground_truth_relative_drive = the relative activation in the true neuron's drive before its
    saturating output (`GroundTruthV4.drive`, z-scored): rates near `rate_max` hide how far an
    image is from the true optimum.

    same_seed_true_mei_(feature_)correlation = the same against the true MEI grown from the same
    initial noise as that model MEI (equal to the above at the seed of THE true MEI; for EGG,
    which starts from diffusion noise, it is only another pairing of seeds).

    Pixels are a poor yardstick here: the twin's neurons pool phase-invariant energies over
    positions, so their MEIs are not unique — the true MEIs of different seeds correlate with each
    other about as little as with the model's (`true_mei_self_correlation`, the mean over seed
    pairs, is the ceiling for pixels; `true_mei_self_feature_correlation` the one for features).
    Which of the equivalent optima GA reaches depends on the start, hence the same-seed scores.
    """
    targets = list(zip(results.session.values.tolist(), results.neuron_id.values.tolist()))
    columns = twin.columns(model, targets)
    geometry = twin.geometry(model)
    device = device_of(model)
    truth = twin.truth.to(device)
    transform = model.image_transform
    minimize = bool(results.attrs["minimize"])
    seeds = results.seed.values.tolist()
    n, s = len(targets), len(seeds)
    shape = tuple(results.image.shape[-3:])

    pair_columns = columns.repeat_interleave(s)  # image i = neuron i // s, seed i % s
    own = pair_columns.to(device)[:, None]

    def true_response(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each image's true neuron: rate (n, s), drive before saturation (n, s), its view (n, s, grid^2)."""
        with torch.no_grad():
            pixels = geometry.to_twin(images.to(device))
            drive = truth.drive(pixels)
            rate = truth.rates(drive * truth.drive_std + truth.drive_mean).gather(1, own)
            maps = truth.neuron_maps(pixels, pair_columns)
        return rate.cpu().view(n, s), drive.gather(1, own).cpu().view(n, s), maps.cpu().view(n, s, -1)

    ours = results.isel(method=0)  # one method per file: ga or egg
    images = torch.as_tensor(ours.image.values).reshape(n * s, *shape)
    true_rate, model_drive, model_maps = true_response(images)
    found_images = true_meis(model, twin, targets, seeds, settings, minimize, store)
    found_rate, found_drive, found_maps = true_response(found_images)
    # THE true MEI: the seed with the strongest drive, which breaks the ties of rates saturated at rate_max
    best = found_drive.argmin(1) if minimize else found_drive.argmax(1)
    pick = (torch.arange(n), best)
    true_mei = found_images.view(n, s, *shape)[pick]
    reference, true_drive, true_maps = found_rate[pick], found_drive[pick], found_maps[pick]

    model_pixels = torch.as_tensor(ours.image_pixels.values).flatten(2)
    true_pixels = transform.to_pixels(true_mei)
    found_pixels = transform.to_pixels(found_images).view(n, s, -1)
    similarity = correlation(model_pixels, true_pixels.flatten(1)[:, None].expand(-1, s, -1), dim=2)
    feature_similarity = correlation(model_maps, true_maps[:, None].expand(-1, s, -1), dim=2)
    paired = correlation(model_pixels, found_pixels, dim=2)
    paired_features = correlation(model_maps, found_maps, dim=2)

    out = results.copy()
    cells = ("method", "neuron", "seed")
    out["ground_truth_activation"] = (cells, true_rate[None].numpy())
    out["ground_truth_relative_activation"] = (cells, (true_rate / reference[:, None])[None].numpy())
    out["ground_truth_relative_drive"] = (cells, (model_drive / true_drive[:, None])[None].numpy())
    out["true_mei_correlation"] = (cells, similarity[None].numpy())
    out["true_mei_feature_correlation"] = (cells, feature_similarity[None].numpy())
    out["same_seed_true_mei_correlation"] = (cells, paired[None].numpy())
    out["same_seed_true_mei_feature_correlation"] = (cells, paired_features[None].numpy())
    out["true_mei_self_correlation"] = ("neuron", _mean_pair_correlation(found_pixels).numpy())
    out["true_mei_self_feature_correlation"] = ("neuron", _mean_pair_correlation(found_maps).numpy())
    out["true_mei"] = (("neuron", "channel", "y", "x"), true_mei.numpy())
    out["true_mei_pixels"] = (("neuron", "channel", "y", "x"), true_pixels.numpy())
    out["true_mei_activation"] = ("neuron", reference.numpy())
    out["true_mei_seed"] = ("neuron", np.asarray(seeds)[best.numpy()])
    out["true_mei_seen"] = (("neuron", "y", "x"), seen_pixels(truth, geometry, columns, shape, device).numpy())
    out["true_mei_seen"].attrs.update({
        "long_name": "pixels the true neuron responds to (mean |d drive / d pixel| over random images >= 2% of its maximum)",
        "units": "1"})
    out["ground_truth_activation"].attrs["units"] = "true rate (spikes per bin)"
    out.attrs["ground_truth"] = str(twin.path)
    return out


def seen_pixels(truth: nn.Module, geometry, columns: torch.Tensor, shape: tuple, device: torch.device,
                probes: int = 8, threshold: float = 0.02) -> torch.Tensor:
    """(n_neurons, H, W) bool: the model-space pixels each true neuron's drive depends on.

    Gradient ascent leaves the pixels a neuron does not see at their initial noise (they get no
    gradient), so figures grey them out instead of showing that noise as part of the MEI.
    """
    generator = torch.Generator().manual_seed(0)
    x = torch.randn((probes, *shape), generator=generator).to(device)
    n = len(columns)
    with torch.enable_grad(), torch.inference_mode(False):
        images = x.repeat(n, 1, 1, 1).requires_grad_(True)
        own = columns.to(device).repeat_interleave(probes)[:, None]
        drive = truth.drive(geometry.to_twin(images)).gather(1, own)
        (gradient,) = torch.autograd.grad(drive.sum(), images)
    sensitivity = gradient.abs().view(n, probes, *shape).mean((1, 2)).cpu()
    return sensitivity >= threshold * sensitivity.flatten(1).amax(1).clamp_min(1e-20)[:, None, None]


def ground_truth_summary(results: xr.Dataset) -> str:
    """One line of means over neurons and seeds of the twin scores added by `score_on_ground_truth`."""
    def mean(name: str) -> float:
        return float(results[name].mean())

    return (
        f"{results.attrs.get('product', 'images')} ({results.method.values[0]}) on the twin's true neurons: rate {mean('ground_truth_relative_activation'):.2f} x the true MEI's "
        f"(drive before saturation {mean('ground_truth_relative_drive'):.2f} x); "
        f"correlation with the true MEI in pixels {mean('true_mei_correlation'):.2f} (same seed {mean('same_seed_true_mei_correlation'):.2f}, "
        f"true MEIs among themselves {mean('true_mei_self_correlation'):.2f}), in the true neuron's features "
        f"{mean('true_mei_feature_correlation'):.2f} (same seed {mean('same_seed_true_mei_feature_correlation'):.2f}, "
        f"among themselves {mean('true_mei_self_feature_correlation'):.2f})"
    )


def _mean_pair_correlation(x: torch.Tensor) -> torch.Tensor:
    """Mean correlation over the distinct pairs of x's seeds, (neurons, seeds, features) -> (neurons,); NaN for one seed."""
    n, s, _ = x.shape
    if s < 2:
        return torch.full((n,), float("nan"))
    z = (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True).clamp_min(1e-12)
    pairs = torch.einsum("nap,nbp->nab", z, z) / (x.shape[-1] - 1)
    return (pairs.sum((1, 2)) - pairs.diagonal(dim1=1, dim2=2).sum(1)) / (s * (s - 1))


def ground_truth_correlation(
    model: nn.Module, recording: Recording, session: str, twin: Twin, tier: str = "test",
) -> torch.Tensor:
    """Per-neuron correlation of the model's predictions with the twin's noiseless true rates, (n_neurons,).

    The tier's images (model space, from the recording) reach the true neurons through the
    model's `TwinGeometry`: where and at the scale the model saw them.
    """
    columns = twin.columns(model, [(session, n) for n in model.neuron_ids(session)])
    geometry = twin.geometry(model)
    images = recording.tier_data(session, tier)["images"]
    truth = twin.truth
    with torch.no_grad():
        predicted = model(images, session)
        true = torch.cat([truth(geometry.to_twin(x.to(truth.v1_kernels.device))).cpu() for x in images.split(BATCH)])
    return correlation(predicted.cpu(), true[:, columns])

