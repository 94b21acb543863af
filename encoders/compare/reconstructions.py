"""Do reconstructions generalise? Each generating ensemble reconstructs test images; every model scores them.

For every architecture, its generating ensemble reconstructs the first `images` test images of each
chosen session from its OWN predicted responses to them, once per named method (e.g. GA and EGG),
at one contrast. Every scorer (single models and, on a twin, the true neurons) then compares its
responses to the reconstruction with its responses to the seen image: Pearson r over the session's
neurons. A reconstruction that only exploits the generating models' quirks scores high on them
(`generating`) and low elsewhere (`within`, `cross`, `ground_truth`), exactly as for MEIs.

`<out>/reconstructions/<architecture>/reconstruction_<name>.nc` holds each set (the product layout of
`encoders.products.reconstructions` plus `wall_seconds`), `<out>/reconstructions.nc` the scores.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr

from encoders.compare.config import CompareConfig
from encoders.compare.generalisation import TRUTH, generating_members, relation, scorer_table
from encoders.compare.grid import TrainedModel
from encoders.compare.meis import timed_set
from encoders.metrics import correlation
from encoders.outputs import write_netcdf
from encoders.products.reconstructions import choose_test_images, compute_reconstructions

if TYPE_CHECKING:
    from encoders.datasets.recording import Recording

TARGET = "predicted"  # the generating ensemble's own responses: a model-side test, like MEIs


def reconstruction_set(name: str, method, paths: Sequence, ensemble, recording: Recording, chosen: dict,
                       metric: str, path, stop_below: xr.DataArray | None = None) -> xr.Dataset:
    """The reconstruction set at `path` if it exists for these inputs, else make it (timed) and write it;
    stop_below (image, seed): each image stops once its energy is below it (another method's `energy`)."""
    request = {"name": name, "images": chosen, "settings": method.key(ensemble.input_shape), "target": TARGET,
               "metric": metric}
    stop = None
    if stop_below is not None:
        request["stop_below"] = {"method": str(stop_below.method.values), "values": stop_below.values.tolist()}
        stop = torch.as_tensor(stop_below.values, dtype=torch.float32)
    data, made = timed_set(name, method, paths, request, path,
                           lambda: compute_reconstructions(ensemble, recording, chosen, method, TARGET, metric,
                                                           stop_below=stop))
    if made:
        print(f"compare: {name} reconstructions, {data.sizes['image'] * data.sizes['seed']} images in "
              f"{float(data.wall_seconds.values[0]):.1f} s -> {path}", flush=True)
    return data


def _score(data: xr.Dataset, scorers: dict) -> np.ndarray:
    """(scorer, image, seed): r over the session's neurons between the scorer's responses to the
    reconstruction and to the seen image."""
    recon = torch.as_tensor(data.reconstruction_pixels.isel(method=0).values)
    seen = torch.as_tensor(data.target_image_pixels.values)
    sessions = data.session.values
    out = np.full((len(scorers), data.sizes["image"], data.sizes["seed"]), np.nan)
    for session in dict.fromkeys(sessions.tolist()):
        rows = np.flatnonzero(sessions == session)
        for k, scorer in enumerate(scorers.values()):
            wanted = scorer.responses(seen[rows], session)
            got = scorer.responses(recon[rows].flatten(0, 1), session).view(len(rows), data.sizes["seed"], -1)
            out[k, rows] = correlation(got, wanted[:, None], dim=2).numpy()
    return out


def run_reconstructions(
    config: CompareConfig, architectures: Sequence[str], trained: Sequence[TrainedModel], models: dict, scorers: dict,
    recording: Recording,
) -> xr.Dataset:
    """Make (or reuse) every reconstruction set and score it on every scorer; writes `<out>/reconstructions.nc`.

    Dims: architecture (generating), method, scorer, image, seed. `models` and `scorers` are keyed by label.
    """
    from encoders.ensemble import Ensemble

    settings = config.reconstructions
    device = torch.device(config.device)
    labels, scorer_archs, scorer_seeds = scorer_table(trained, TRUTH in scorers)
    names = list(config.reconstruction_methods)
    stop_at = dict(settings.stop_at or {})
    order = [n for n in names if n not in stop_at] + [n for n in names if n in stop_at]  # references first
    score = own = pixel = seconds = None
    reference = None
    for a, architecture in enumerate(architectures):
        members = generating_members(trained, architecture, config.generating_seeds)
        ensemble = Ensemble([models[m.label] for m in members]).eval().to(device)
        paths = [m.checkpoint for m in members]
        sessions = [str(s) for s in settings.sessions] if settings.sessions else None
        chosen = choose_test_images(ensemble, recording, settings.images, sessions)
        made: dict[str, xr.Dataset] = {}
        for name in order:
            k = names.index(name)
            method = config.reconstruction_methods[name]
            threshold = made[stop_at[name]].energy.isel(method=0) if name in stop_at else None
            data = made[name] = reconstruction_set(
                name, method, paths, ensemble, recording, chosen, settings.metric,
                config.out / "reconstructions" / architecture / f"reconstruction_{name}.nc", threshold)
            values = _score(data, {label: scorers[label] for label in labels})
            if score is None:
                n_images, n_seeds = data.sizes["image"], data.sizes["seed"]
                score = np.full((len(architectures), len(names), len(labels), n_images, n_seeds), np.nan)
                own = np.full((len(architectures), len(names), n_images, n_seeds), np.nan)
                pixel, seconds = np.full_like(own, np.nan), np.full((len(architectures), len(names)), np.nan)
                reference = data
            score[a, k] = values
            own[a, k] = data.correlation.isel(method=0).values
            pixel[a, k] = data.image_correlation.isel(method=0).values
            seconds[a, k] = float(data.wall_seconds.values[0])
    relations = [[relation(g, sa, ss, config.generating_seeds) for sa, ss in zip(scorer_archs, scorer_seeds)]
                 for g in architectures]
    result = xr.Dataset(
        {
            "reconstruction_score": (("architecture", "method", "scorer", "image", "seed"), score),
            "ensemble_correlation": (("architecture", "method", "image", "seed"), own),
            "image_correlation": (("architecture", "method", "image", "seed"), pixel),
            "wall_seconds": (("architecture", "method"), seconds),
            "relation": (("architecture", "scorer"), np.array(relations, dtype=str)),
        },
        coords={"architecture": list(architectures), "method": names, "scorer": labels, "seed": reference.seed.values,
                "session": ("image", reference.session.values), "image_id": ("image", reference.image_id.values)},
    )
    result["reconstruction_score"].attrs["description"] = (
        "Pearson r over the session's neurons: the scorer's responses to the reconstruction vs to the seen image")
    result["ensemble_correlation"].attrs["description"] = "the same on the generating ensemble (what was optimised)"
    result["image_correlation"].attrs["description"] = "Pearson r over pixels: reconstruction vs seen image"
    result.attrs.update({"keep": config.keep, "contrast": "each method's own" if settings.contrast is None else settings.contrast,
                         "metric": settings.metric, "target": TARGET})
    write_netcdf(result, config.out / "reconstructions.nc")
    return result
