"""How brain-like is each trained model, by every measure, and do the measures agree on which model is more so?

For every model of the grid (architectures x seeds): the similarity diagnostics of its predicted test
responses with the recorded ones (`encoders.similarity.diagnostics`: the score of each measure, and
what it means per principal component: the top PCs of the responses the predictions explain out of
sample, `pcs_captured`), mean over sessions. Then, as Cloos et al. 2024 ask, whether the measures
rank the models alike: the Spearman correlation between every two measures' scores over the models
(each oriented so that higher = more brain-like) and Kendall's W over all of them (1 = every
measure orders the models the same way; 0 = no agreement).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from scipy.stats import rankdata

from encoders.checkpoints import load_encoder
from encoders.compare.config import SimilarityConfig
from encoders.compare.grid import TrainedModel
from encoders.products.store import get_or_compute
from encoders.similarity import HIGHER_IS_BETTER
from encoders.similarity.diagnostics import similarity_diagnostics

if TYPE_CHECKING:
    from encoders.datasets.recording import Recording

COMPONENTS = 10  # top PCs of the responses followed per model
CAPTURE_THRESHOLD = 0.5  # cross-validated explained variance at which a PC counts as captured


def rank_agreement(scores: np.ndarray) -> tuple[np.ndarray, float]:
    """(Spearman correlation of every two rows over the columns, Kendall's W of all rows) for scores
    (measures, models) oriented so that higher = more brain-like; models with a NaN in any row are left out.
    W = 12 S / (m^2 (n^3 - n)), S = sum over models of (rank sum - mean rank sum)^2 (no tie correction)."""
    keep = np.isfinite(scores).all(0)
    m, n = scores.shape[0], int(keep.sum())
    spearman = np.full((m, m), np.nan)
    if n < 3:
        return spearman, float("nan")
    ranks = rankdata(scores[:, keep], axis=1)  # average ranks for ties
    centred = ranks - ranks.mean(1, keepdims=True)
    norms = np.sqrt((centred ** 2).sum(1))
    with np.errstate(invalid="ignore", divide="ignore"):
        spearman = centred @ centred.T / np.outer(norms, norms)
    totals = ranks.sum(0)
    w = 12 * ((totals - totals.mean()) ** 2).sum() / (m ** 2 * (n ** 3 - n))
    return spearman, float(w)


def brain_similarity(
    trained: Sequence[TrainedModel], recording: Recording, settings: SimilarityConfig, device: torch.device, path,
) -> xr.Dataset:
    """score (measure, model), pcs_captured and pc_explained per model, and the measures' rank agreement; kept at `path`."""
    labels = [m.label for m in trained]
    measures = list(settings.measures)

    def compute() -> xr.Dataset:
        score = np.full((len(measures), len(trained)), np.nan)
        captured = np.full(len(trained), np.nan)
        explained = np.full((len(trained), COMPONENTS), np.nan)
        for i, member in enumerate(trained):
            model = load_encoder(member.checkpoint).eval().to(device)
            diagnostics = similarity_diagnostics(model, recording, measures, layers=False, seed=settings.seed,
                                                 max_features=settings.max_features, pool_size=settings.pool_size,
                                                 components=COMPONENTS, capture_threshold=CAPTURE_THRESHOLD)
            own = dict(layer="output", baseline="model")
            score[:, i] = diagnostics.score.sel(**own).mean("session").values
            captured[i] = float(diagnostics.pcs_captured.sel(**own).mean("session"))
            explained[i] = diagnostics.pc_explained.sel(**own).mean("session").values
        oriented = np.stack([score[k] if HIGHER_IS_BETTER[name] else -score[k] for k, name in enumerate(measures)])
        spearman, w = rank_agreement(oriented)
        data = xr.Dataset(
            {
                "score": (("measure", "model"), score, {
                    "long_name": "similarity of the model's predicted test responses with the recorded ones (mean over sessions)",
                    "units": "1"}),
                "pcs_captured": ("model", captured, {
                    "long_name": f"top-{COMPONENTS} principal components of the responses whose variance the predictions "
                                 f"explain out of sample at >= {CAPTURE_THRESHOLD} (mean over sessions)", "units": "1"}),
                "pc_explained": (("model", "component"), explained, {
                    "long_name": "cross-validated fraction of each principal component's variance explained (mean over sessions)",
                    "units": "1"}),
                "rank_agreement": (("measure", "other_measure"), spearman, {
                    "long_name": "Spearman correlation of two measures' scores over the models (higher = more brain-like)",
                    "units": "1"}),
                "higher_is_better": ("measure", [HIGHER_IS_BETTER[m] for m in measures]),
            },
            coords={"measure": measures, "other_measure": measures, "model": labels, "component": np.arange(1, COMPONENTS + 1),
                    "architecture": ("model", [m.architecture for m in trained]),
                    "seed": ("model", [m.seed for m in trained])},
        )
        data.attrs.update({"kendalls_w": w, "tier": "test", "models_ranked": int(np.isfinite(oriented).all(0).sum())})
        return data

    request = {"settings": asdict(settings), "models": labels, "components": COMPONENTS, "threshold": CAPTURE_THRESHOLD}
    return get_or_compute(path, request, compute, paths=[m.checkpoint for m in trained])[0]
