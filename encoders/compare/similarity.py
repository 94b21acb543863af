"""How alike are the trained models' representations? Similarity measures between every pair of models.

Two representations of the held-out (test) images per model:
  responses   the predicted rates, per session (stimuli x that session's neurons); a pair's score
              is the mean over sessions
  core        the core's output features for all sessions' test images at once, average-pooled
              and randomly projected as in encoders.similarity.diagnostics.reduce_features

Pairs of seeds of one architecture tell how much training noise alone changes a representation;
pairs across architectures are the comparison.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from torch import nn

from encoders.compare.config import SimilarityConfig
from encoders.compare.grid import TrainedModel
from encoders.checkpoints import load_encoder
from encoders.products.store import get_or_compute
from encoders.similarity import HIGHER_IS_BETTER, get_measure
from encoders.similarity.diagnostics import random_projection, reduce_features
from encoders.synthesis.targets import model_space_images

if TYPE_CHECKING:
    from encoders.datasets.recording import Recording

REPRESENTATIONS = ("responses", "core")
BATCH = 256


@torch.no_grad()
def representations(model: nn.Module, recording: Recording, settings: SimilarityConfig, device: torch.device) -> dict[str, list[torch.Tensor]]:
    """{"responses": [per session (N_s, neurons_s)], "core": [(sum N_s, d)]}, float64 on CPU."""
    model = model.eval().to(device)
    responses, features = [], []
    projection: torch.Tensor | None = None
    for session in model.sessions:
        images = model_space_images(model, recording, session, settings.tier)["images"]
        rates, reduced = [], []
        for x in images.split(BATCH):
            x = x.to(device)
            rates.append(model(x, session).double().cpu())
            maps = model.core_features(x)
            if projection is None:
                n_in = maps.shape[1] * min(settings.pool_size, maps.shape[2]) * min(settings.pool_size, maps.shape[3])
                projection = random_projection(n_in, settings.max_features, settings.seed, 0, device)
            reduced.append(reduce_features(maps, settings.pool_size, projection).double().cpu())
        responses.append(torch.cat(rates))
        features.append(torch.cat(reduced))
    return {"responses": responses, "core": [torch.cat(features)]}


def _pair_score(measure: str, x: list[torch.Tensor], y: list[torch.Tensor]) -> float:
    function = get_measure(measure)
    values = []
    for a, b in zip(x, y):
        try:
            values.append(float(function(a, b)))
        except (ValueError, torch.linalg.LinAlgError):  # e.g. too few stimuli in a session: NaN, not a failed run
            values.append(np.nan)
    return float(np.nanmean(values)) if np.isfinite(values).any() else np.nan


def model_similarity(
    trained: Sequence[TrainedModel], recording: Recording, settings: SimilarityConfig, device: torch.device, path,
) -> xr.Dataset:
    """score (measure, representation, model_a, model_b) for every ordered pair of distinct models; kept at `path`."""
    labels = [m.label for m in trained]

    def compute() -> xr.Dataset:
        reps = [representations(load_encoder(m.checkpoint), recording, settings, device) for m in trained]
        score = np.full((len(settings.measures), len(REPRESENTATIONS), len(trained), len(trained)), np.nan)
        for m, measure in enumerate(settings.measures):
            for r, name in enumerate(REPRESENTATIONS):
                for i in range(len(trained)):
                    for j in range(len(trained)):
                        if i != j:
                            score[m, r, i, j] = _pair_score(measure, reps[i][name], reps[j][name])
        data = xr.Dataset(
            {"score": (("measure", "representation", "model_a", "model_b"), score),
             "higher_is_better": ("measure", [HIGHER_IS_BETTER[m] for m in settings.measures])},
            coords={
                "measure": list(settings.measures), "representation": list(REPRESENTATIONS),
                "model_a": labels, "model_b": labels,
                "architecture_a": ("model_a", [m.architecture for m in trained]),
                "architecture_b": ("model_b", [m.architecture for m in trained]),
            },
        )
        data.attrs.update({"tier": settings.tier, "pool_size": settings.pool_size, "max_features": settings.max_features,
                           "projection_seed": settings.seed})
        return data

    request = {"settings": asdict(settings), "models": labels}
    return get_or_compute(path, request, compute, paths=[m.checkpoint for m in trained])[0]


def pair_summary(scores: xr.Dataset) -> xr.DataArray:
    """Mean score per (measure, representation, pair kind, architecture pair), e.g. 'attention~gaussian'."""
    archs_a, archs_b = scores.architecture_a.values, scores.architecture_b.values
    names = list(dict.fromkeys(archs_a.tolist()))
    pairs = [(a, b) for i, a in enumerate(names) for b in names[i:]]
    values = np.full((scores.sizes["measure"], scores.sizes["representation"], len(pairs)), np.nan)
    for p, (a, b) in enumerate(pairs):
        mask = ((archs_a[:, None] == a) & (archs_b[None, :] == b)) | ((archs_a[:, None] == b) & (archs_b[None, :] == a))
        block = scores.score.values[..., mask]
        if np.isfinite(block).any():
            values[:, :, p] = np.nanmean(block, axis=-1)
    return xr.DataArray(values, dims=("measure", "representation", "pair"),
                        coords={"measure": scores.measure.values, "representation": scores.representation.values,
                                "pair": [f"{a}~{b}" for a, b in pairs]}, name="score")
