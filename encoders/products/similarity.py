"""Similarity-score diagnostics (Cloos et al. 2024) of a model's predictions and core layers against recorded test responses."""

from __future__ import annotations

import io
import warnings
from collections.abc import Sequence

import numpy as np
import xarray as xr
from matplotlib.figure import Figure

from encoders.contract import ResponseModel
from encoders.errors import EncodersError
from encoders.products.base import Product, ProductData
from encoders.products.progress import Progress
from encoders.products.store import recorded_checkpoints
from encoders.similarity import MEASURES
from encoders.similarity.diagnostics import DEFAULT_MEASURES, similarity_diagnostics


def plot_similarity(scores: xr.Dataset, title: str = "") -> Figure:
    """One row per layer: horizontal bars per measure (readable labels), one bar per baseline (mean over sessions)."""
    import matplotlib.pyplot as plt

    score = scores["score"]
    layers, measures = list(score.layer.values), list(score.measure.values)
    baselines = list(score.baseline.values)
    cols = min(len(layers), 3)
    rows = -(-len(layers) // cols)
    height = 0.32 * len(measures) * len(baselines) / 2 + 1.2
    figure, axes = plt.subplots(rows, cols, figsize=(3.6 * cols + 1.6, height * rows), sharex=True, squeeze=False,
                                layout="constrained")
    labels = [f"{m}{'' if hib else ' (lower = better)'}" for m, hib in zip(measures, scores.higher_is_better.values)]
    y = np.arange(len(measures))
    width = 0.8 / len(baselines)
    for ax in axes.flat[len(layers):]:
        ax.set_visible(False)
    for i, (ax, layer) in enumerate(zip(axes.flat, layers)):
        for b, baseline in enumerate(baselines):
            values = score.sel(layer=layer, baseline=baseline).values  # (measure, session)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row: no ceiling without trials
                mean = np.nanmean(values, axis=1)
            ax.barh(y + (b - (len(baselines) - 1) / 2) * width, np.nan_to_num(mean), width, label=baseline)
        ax.axvline(0, color="k", lw=0.5)
        ax.set_yticks(y, labels if i % cols == 0 else [""] * len(y), fontsize=9)
        ax.invert_yaxis()
        ax.set_title(str(layer), fontsize=10)
        ax.grid(axis="x", alpha=0.3)
    for ax in axes[-1]:
        ax.set_xlabel("score (mean over sessions)", fontsize=9)
    axes[0, 0].legend(fontsize=8, loc="lower right")
    figure.suptitle(title, fontsize=10)
    return figure


def similarity_table(scores: xr.Dataset) -> str:
    """The output layer's scores (mean over sessions) as a text table for the log."""
    from rich.console import Console
    from rich.table import Table

    output = scores["score"].sel(layer="output")
    table = Table(title="similarity of predictions with test responses (mean over sessions)")
    table.add_column("measure")
    for baseline in output.baseline.values:
        table.add_column(str(baseline), justify="right")
    for measure in output.measure.values:
        row = output.sel(measure=measure).values  # (baseline, session)
        cells = [f"{np.nanmean(v):.3f}" if np.isfinite(v).any() else "—" for v in row]  # ceiling NaN without trials
        table.add_row(str(measure), *cells)
    console = Console(width=160, record=True, file=io.StringIO())  # rendered to text only
    console.print(table)
    return console.export_text()


class SimilarityDiagnostics(Product):
    """Similarity measures between the model and the recorded test responses -> `similarity.nc` + PNG.

    Args:
        measures: names in `encoders.similarity.MEASURES`.
        layers: also score each core layer's features, not only the predicted rates.
        seed: seeds random_init, the shuffle, the split-half ceiling and the feature projection.
        max_features: core-layer features are pooled, then randomly projected to at most this many.
        components: number of top principal components of the responses whose explained variance is stored.
        capture_threshold: explained variance in (0, 1] at which a component counts as captured.
    """

    kind = "similarity"

    def __init__(self, measures: Sequence[str] = DEFAULT_MEASURES, layers: bool = True, seed: int = 0, max_features: int = 256,
                 components: int = 10, capture_threshold: float = 0.5):
        unknown = [m for m in measures if m not in MEASURES]
        if unknown or not measures:
            raise EncodersError(f"measures must be a non-empty list of {sorted(MEASURES)}, got unknown {unknown}")
        if max_features < 1:
            raise EncodersError(f"max_features must be >= 1, got {max_features}")
        if components < 1:
            raise EncodersError(f"components must be >= 1, got {components}")
        if not 0.0 < capture_threshold <= 1.0:
            raise EncodersError(f"capture_threshold must be in (0, 1], got {capture_threshold}")
        self.measures, self.layers, self.seed, self.max_features = list(measures), layers, seed, max_features
        self.components, self.capture_threshold = components, capture_threshold

    def check(self, model: ResponseModel, data: ProductData) -> None:
        if data.recording is None:
            raise EncodersError("similarity diagnostics need data: the recorded test responses")
        if not hasattr(model, "layer_features") and self.layers:
            raise EncodersError("layers: true needs a single trained model (an ensemble has no core layers); use layers: false")

    def compute(self, model: ResponseModel, data: ProductData, progress: Progress) -> xr.Dataset:
        with progress.task(f"similarity: {len(self.measures)} measures", 1) as advance:
            scores = similarity_diagnostics(model, data.recording, self.measures, self.layers, self.seed, self.max_features,
                                            components=self.components, capture_threshold=self.capture_threshold)
            advance(1)
        return scores

    def figure(self, results: xr.Dataset) -> Figure:
        name = "; ".join(recorded_checkpoints(results))
        return plot_similarity(results, f"similarity with test responses: {name}")

    def describe(self, results: xr.Dataset) -> str:
        return "similarity diagnostics\n" + similarity_table(results)
