"""After test: the per-neuron metrics table (NetCDF in the run folder, W&B table, console summary)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytorch_lightning as pl
import xarray as xr
from rich.console import Console
from rich.table import Table

from encoders.evaluation import test_table
from encoders.outputs import write_netcdf


class MetricsTable(pl.Callback):
    """Writes `<run_dir>/test_metrics.nc`: session, neuron id and every per-neuron test metric.

    On a synthetic twin it adds `ground_truth_correlation`, the correlation with noiseless rates.
    """

    def __init__(self, filename: str = "test_metrics.nc"):
        self.filename = filename

    def on_test_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or pl_module.test_results is None or not len(pl_module.test_results.data_vars):
            return
        recording = trainer.datamodule.recording if trainer.datamodule is not None else None
        twin = recording.twin if recording is not None else None
        encoder = pl_module.encoder
        was_training = encoder.training
        results = test_table(encoder.eval(), pl_module.test_results, recording, twin)
        encoder.train(was_training)
        if "ground_truth_correlation" in results:
            for logger in trainer.loggers:
                logger.log_metrics({"test/ground_truth_correlation": float(np.nanmean(results["ground_truth_correlation"].values))})
        results.attrs["checkpoint"] = str(getattr(trainer, "ckpt_path", "") or "")
        if recording is not None:
            results.attrs["test_images_used"] = self._coverage(results, recording)
        path = write_netcdf(results, Path(trainer.default_root_dir) / self.filename)
        self._print(results, path)
        self._log_wandb(trainer, results)

    @staticmethod
    def _coverage(results: xr.Dataset, recording) -> str:
        """'complete', or which sessions' test images were partly or not at all used (e.g. limit_test_batches)."""
        used = dict(item.split(":") for item in np.atleast_1d(results.attrs.get("images_per_session", [])))
        parts = []
        for session in recording.sessions:
            total = int((recording.tables[session].tiers == "test").sum())
            n = int(used.get(session, 0))
            if n != total:
                parts.append(f"{session} {n} of {total}")
        return "complete" if not parts else "PARTIAL: " + ", ".join(parts)

    @staticmethod
    def _print(results: xr.Dataset, path: Path) -> None:
        coverage = results.attrs.get("test_images_used", "complete")
        note = "" if coverage == "complete" else f"\n{coverage} test images (ground_truth_correlation uses all)"
        table = Table(title=f"test metrics per session (mean over neurons) → {path}{note}")
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
