"""After test: the per-neuron metrics table (NetCDF in the run folder, W&B table, console summary)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import xarray as xr
from rich.console import Console
from rich.table import Table

from encoders.datasets.twin import ground_truth_columns, has_ground_truth, load_ground_truth
from encoders.metrics import correlation
from encoders.outputs import write_netcdf

if TYPE_CHECKING:
    from encoders.datasets.datamodule import RecordedDataModule


def ground_truth_correlation(model: torch.nn.Module, datamodule: RecordedDataModule, session: str, truth, tier: str = "test") -> torch.Tensor:
    """Per-neuron correlation of the model's predictions with the twin's noiseless true rates."""
    data = datamodule.tier_data(session, tier)
    images = data["images"]
    with torch.no_grad():
        predicted = model(images, session)
        pixels = datamodule.transform.to_pixels(images)
        stored = tuple(datamodule.raw_image_shape(session)[-2:])
        if tuple(pixels.shape[-2:]) != stored:  # the twin sees images at their stored size
            pixels = F.interpolate(pixels, size=stored, mode="bilinear", align_corners=False)
        true = truth(pixels)[:, ground_truth_columns(datamodule.path, session)]
    return correlation(predicted, true)


class MetricsTable(pl.Callback):
    """Writes `<run_dir>/test_metrics.nc`: session, neuron id and every per-neuron test metric.

    On a synthetic twin it adds `ground_truth_correlation`, the correlation with noiseless rates.
    """

    def __init__(self, filename: str = "test_metrics.nc"):
        self.filename = filename

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or pl_module.test_results is None or not len(pl_module.test_results.data_vars):
            return
        results = pl_module.test_results.copy()
        datamodule = trainer.datamodule
        if datamodule is not None and has_ground_truth(datamodule.path):
            truth = load_ground_truth(datamodule.path)
            was_training = pl_module.training
            pl_module.eval()
            values = np.full(results.sizes["neuron"], np.nan)
            for session in pl_module.sessions:
                r = ground_truth_correlation(pl_module, datamodule, session, truth)
                values[(results.session == session).values] = r.numpy()
            pl_module.train(was_training)
            results["ground_truth_correlation"] = ("neuron", values)
            for logger in trainer.loggers:
                logger.log_metrics({"test/ground_truth_correlation": float(np.nanmean(values))})
        results.attrs["checkpoint"] = str(getattr(trainer, "ckpt_path", "") or "")
        path = write_netcdf(results, Path(trainer.default_root_dir) / self.filename)
        self._print(results, path)
        self._log_wandb(trainer, results)

    @staticmethod
    def _print(results: xr.Dataset, path: Path) -> None:
        table = Table(title=f"test metrics per session (mean over neurons) → {path}")
        names = list(results.data_vars)
        table.add_column("session")
        for name in names:
            table.add_column(name, justify="right")
        for session in [*dict.fromkeys(results.session.values.tolist()), "all"]:
            subset = results if session == "all" else results.where(results.session == session, drop=True)
            table.add_row(str(session), *(f"{np.nanmean(subset[n].values):.3f}" if np.isfinite(subset[n].values).any() else "—" for n in names))
        Console(width=160).print(table)

    @staticmethod
    def _log_wandb(trainer: pl.Trainer, results: xr.Dataset) -> None:
        from pytorch_lightning.loggers import WandbLogger

        for logger in trainer.loggers:
            if isinstance(logger, WandbLogger):
                frame = results.to_dataframe().reset_index()
                logger.log_table("test/per_neuron", dataframe=frame)
