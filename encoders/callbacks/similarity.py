"""After fit: similarity-score diagnostics of each kept checkpoint (NetCDF, PNG, W&B table).

For the best and/or last checkpoint of the trainer's ModelCheckpoint, writes
`<run_dir>/products/<checkpoint stem>/similarity.nc` (see
:func:`encoders.similarity.diagnostics.similarity_diagnostics`) and `similarity.png` next to it.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Literal

import numpy as np
import pytorch_lightning as pl
import xarray as xr
from rich.console import Console
from rich.table import Table
from torch import nn

from encoders.callbacks.products import CheckpointProducts, write_product
from encoders.errors import EncodersError
from encoders.similarity import MEASURES
from encoders.similarity.diagnostics import DEFAULT_MEASURES, similarity_diagnostics

if TYPE_CHECKING:
    from encoders.datasets.datamodule import RecordedDataModule


def plot_similarity(scores: xr.Dataset, title: str = ""):
    """Grouped bars: one panel per layer, measures on x, one bar per baseline (mean over sessions)."""
    import matplotlib.pyplot as plt

    score = scores["score"]
    n_layers, n_measures = score.sizes["layer"], score.sizes["measure"]
    cols = min(n_layers, 4)  # deep task-driven cores have many layers: wrap into rows
    rows = -(-n_layers // cols)
    figure, axes = plt.subplots(rows, cols, figsize=(1.0 + 0.9 * n_measures * cols, 4.2 * rows), sharey=True,
                                squeeze=False, layout="constrained")
    baselines = list(score.baseline.values)
    width = 0.8 / len(baselines)
    x = np.arange(n_measures)
    labels = [f"{m}{'' if hib else ' (↓)'}" for m, hib in zip(score.measure.values, scores.higher_is_better.values)]
    for ax in axes.flat[n_layers:]:
        ax.set_visible(False)
    for ax, layer in zip(axes.flat, score.layer.values):
        for b, baseline in enumerate(baselines):
            values = score.sel(layer=layer, baseline=baseline).values  # (measure, session)
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)  # an all-NaN row: no ceiling without trials
                mean = np.nanmean(values, axis=1)
            ax.bar(x + (b - (len(baselines) - 1) / 2) * width, np.nan_to_num(mean), width, label=baseline)
        ax.axhline(0, color="k", lw=0.5)
        ax.set_xticks(x, labels, rotation=60, ha="right", fontsize=8)
        ax.set_title(str(layer))
    for ax in axes[:, 0]:
        ax.set_ylabel("score (mean over sessions)")
    axes[0, -1].legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))  # outside: never hides a bar
    figure.suptitle(title, fontsize=9)
    return figure


class SimilarityCallback(CheckpointProducts):
    """Scores each kept checkpoint with similarity measures against the recorded test responses.

    Runs once after fit, on rank 0, like the other product callbacks: a product that exists for
    the same checkpoint bytes and settings is not recomputed, so a rerun after an interruption only
    does what is missing; one made from another file of the same name, or with other settings, is
    replaced.

    Args:
        measures: names in :data:`encoders.similarity.MEASURES`.
        layers: also score each core layer's features, not only the predicted rates.
        seed: seeds random_init, the shuffle, the split-half ceiling and the feature projection.
        max_features: core-layer features are pooled, then randomly projected to at most this many.
        checkpoints: "best_and_last", "best", "last" or "all" kept by the trainer's ModelCheckpoint.
    """

    name = "similarity"

    def __init__(
        self,
        measures: Sequence[str] = DEFAULT_MEASURES,
        layers: bool = True,
        seed: int = 0,
        max_features: int = 256,
        checkpoints: Literal["best_and_last", "best", "last", "all"] = "best_and_last",
    ):
        super().__init__(checkpoints)
        unknown = [m for m in measures if m not in MEASURES]
        if unknown or not measures:
            raise EncodersError(f"measures must be a non-empty list of {sorted(MEASURES)}, got unknown {unknown}")
        if max_features < 1:
            raise EncodersError(f"max_features must be >= 1, got {max_features}")
        self.measures = list(measures)
        self.layers = layers
        self.seed = seed
        self.max_features = max_features

    def check(self, model: nn.Module, datamodule: RecordedDataModule | None) -> None:
        # fail before training, not after it, when the scores could not be made
        if not hasattr(datamodule, "tier_data"):
            raise EncodersError("SimilarityCallback needs a RecordedDataModule (trainer.fit(model, datamodule=...))")

    def produce(self, paths: list[Path], model: nn.Module, datamodule: RecordedDataModule | None, folder: Path) -> list[Path]:
        request = {"measures": self.measures, "layers": self.layers, "seed": self.seed, "max_features": self.max_features}
        stem = paths[0].stem

        def compute() -> xr.Dataset:
            return similarity_diagnostics(model, datamodule, self.measures, self.layers, self.seed, self.max_features)

        def describe(scores: xr.Dataset) -> str:
            self._print(scores)
            return f"similarity of {stem}"

        return write_product(paths, folder / "similarity.nc", request, compute,
                             lambda scores: plot_similarity(scores, f"{stem}: similarity with test responses"), describe)

    def log_products(self, trainer: pl.Trainer, stem: str, folder: Path, figures: list[Path]) -> None:
        super().log_products(trainer, stem, folder, figures)
        with xr.open_dataset(folder / "similarity.nc", engine="h5netcdf") as scores:
            self._log_wandb(trainer, scores.load(), stem)

    @staticmethod
    def _print(scores: xr.Dataset) -> None:
        output = scores["score"].sel(layer="output")
        table = Table(title="similarity of predictions with test responses (mean over sessions)")
        table.add_column("measure")
        for baseline in output.baseline.values:
            table.add_column(str(baseline), justify="right")
        for measure in output.measure.values:
            row = output.sel(measure=measure).values  # (baseline, session)
            cells = [f"{np.nanmean(v):.3f}" if np.isfinite(v).any() else "—" for v in row]  # ceiling NaN without trials
            table.add_row(str(measure), *cells)
        Console(width=160).print(table)

    @staticmethod
    def _log_wandb(trainer: pl.Trainer, scores: xr.Dataset, stem: str) -> None:
        from pytorch_lightning.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                frame = scores["score"].to_dataframe().reset_index()
                logger.log_table(key=f"similarity/{stem}", dataframe=frame)
