"""Scores of MEIs on a synthetic twin's true neurons: true rate and drive, and similarity to the true MEIs."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from torch import nn

from encoders.callbacks.products import model_device
from encoders.datasets.io import list_sessions, read_arrays
from encoders.datasets.twin import ground_truth_columns, load_ground_truth
from encoders.errors import EncodersError
from encoders.metrics import correlation
from encoders.synthesis.energies import GroundTruthActivation
from encoders.synthesis.gradient_ascent import GASettings, optimize_in_batches
from encoders.synthesis.targets import Target

if TYPE_CHECKING:
    pass


def twin_columns(path: str | Path, model: nn.Module, targets: Sequence[Target]) -> torch.Tensor:
    """Ground-truth column of each target, checking the file's sessions and neuron ids match the model's."""
    available = list_sessions(path)
    for session in dict.fromkeys(t[0] for t in targets):
        if session not in available:
            raise EncodersError(f"{path}: session {session!r} of the model is not in the data file ({available})")
        ids = [str(x) for x in read_arrays(path, session, ["neuron_id"])["neuron_id"]]
        if ids != model.neuron_ids(session):
            raise EncodersError(f"{path}: session {session!r} has other neuron ids than the model")
    columns = {s: ground_truth_columns(path, s) for s in dict.fromkeys(t[0] for t in targets)}
    return torch.stack([columns[s][model.neuron_ids(s).index(n)] for s, n in targets])


def score_on_ground_truth(results: xr.Dataset, model: nn.Module, path: str | Path, settings: GASettings) -> xr.Dataset:
    """Add the twin's view of each MEI: true rate, rate relative to the true MEI, similarity to it.

    The true MEI is found the same way as the model's (same seeds, steps, optimiser, blur, norm and
    clamp in model space), by ascending the ground truth through `to_pixels` (and a resize to the
    stored size). Per neuron the seed with the strongest true drive (the rate's tie-breaker) is THE true MEI:
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
    columns = twin_columns(path, model, targets)
    device = model_device(model)
    truth = load_ground_truth(path).to(device)
    size = (truth.image_size, truth.image_size)
    transform = model.image_transform
    minimize = bool(results.attrs["minimize"])
    seeds = results.seed.values.tolist()
    n, s = len(targets), len(seeds)
    shape = tuple(results.image.shape[-3:])

    pair_columns = columns.repeat_interleave(s)  # image i = neuron i // s, seed i % s
    pair_seeds = [seeds[i % s] for i in range(n * s)]
    view = GroundTruthActivation(truth, pair_columns, transform, size)  # view.pixels: model space -> the twin's input
    own = pair_columns.to(device)[:, None]

    def true_response(images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each image's true neuron: rate (n, s), drive before saturation (n, s), its view (n, s, grid^2)."""
        with torch.no_grad():
            pixels = view.pixels(images.to(device))
            drive = truth.drive(pixels)
            rate = truth.rates(drive * truth.drive_std + truth.drive_mean).gather(1, own)
            maps = truth.neuron_maps(pixels, pair_columns)
        return rate.cpu().view(n, s), drive.gather(1, own).cpu().view(n, s), maps.cpu().view(n, s, -1)

    ours = results.isel(method=0)  # one method per file: ga or egg
    images = torch.as_tensor(ours.image.values).reshape(n * s, *shape)
    true_rate, model_drive, model_maps = true_response(images)
    found = optimize_in_batches(
        lambda index: GroundTruthActivation(truth, pair_columns[index], transform, size, minimize=minimize),
        pair_seeds, shape, settings, settings.pixel_range(transform), device,
    )
    found_rate, found_drive, found_maps = true_response(found.images)
    # THE true MEI: the seed with the strongest drive, which breaks the ties of rates saturated at rate_max
    best = found_drive.argmin(1) if minimize else found_drive.argmax(1)
    pick = (torch.arange(n), best)
    true_mei = found.images.view(n, s, *shape)[pick]
    reference, true_drive, true_maps = found_rate[pick], found_drive[pick], found_maps[pick]

    model_pixels = torch.as_tensor(ours.image_pixels.values).flatten(2)
    true_pixels = transform.to_pixels(true_mei)
    found_pixels = transform.to_pixels(found.images).view(n, s, -1)
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
    out["ground_truth_activation"].attrs["units"] = "true rate (spikes per bin)"
    out.attrs["ground_truth"] = str(path)
    return out


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
