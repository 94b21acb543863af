"""After fit: similarity-score diagnostics of each kept checkpoint (NetCDF, PNG, W&B table).

For the best and/or last checkpoint of the trainer's ModelCheckpoint, writes
`<run_dir>/products/<checkpoint stem>/similarity.nc` (see
:func:`encoders.similarity.diagnostics.similarity_diagnostics`) and `similarity.png` next to it.
"""

from __future__ import annotations

import hashlib
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Literal

import numpy as np
import pytorch_lightning as pl
import torch
import xarray as xr
from pytorch_lightning.utilities import rank_zero_warn
from rich.console import Console
from rich.table import Table

from encoders.ensemble import load_checkpoint
from encoders.errors import EncodersError
from encoders.outputs import save_figure, write_netcdf
from encoders.similarity import MEASURES
from encoders.similarity.diagnostics import DEFAULT_MEASURES, similarity_diagnostics

CHECKPOINT_CHOICES = ("best_and_last", "best", "last")


def file_digest(path: str | Path) -> str:
    """SHA-256 of a file, read in 1 MiB blocks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


class SimilarityCallback(pl.Callback):
    """Scores each kept checkpoint with similarity measures against the recorded test responses.

    Runs once in `on_fit_end`, on rank 0. A product whose NetCDF already exists for the same
    checkpoint file (same SHA-256) is not recomputed, so a rerun after an interruption only does
    what is missing; one made from another file of the same name (a later run in the same folder)
    is replaced.

    Args:
        measures: names in :data:`encoders.similarity.MEASURES`.
        layers: also score each core layer's features, not only the predicted rates.
        seed: seeds random_init, the shuffle, the split-half ceiling and the feature projection.
        max_features: core-layer features are pooled, then randomly projected to at most this many.
        checkpoints: "best_and_last", "best" or "last" of the trainer's checkpoint callback.
    """

    def __init__(
        self,
        measures: Sequence[str] = DEFAULT_MEASURES,
        layers: bool = True,
        seed: int = 0,
        max_features: int = 256,
        checkpoints: Literal["best_and_last", "best", "last"] = "best_and_last",
    ):
        unknown = [m for m in measures if m not in MEASURES]
        if unknown or not measures:
            raise ValueError(f"measures must be a non-empty list of {sorted(MEASURES)}, got unknown {unknown}")
        if checkpoints not in CHECKPOINT_CHOICES:
            raise ValueError(f"checkpoints must be one of {CHECKPOINT_CHOICES}, got {checkpoints!r}")
        if max_features < 1:
            raise ValueError(f"max_features must be >= 1, got {max_features}")
        self.measures = list(measures)
        self.layers = layers
        self.seed = seed
        self.max_features = max_features
        self.checkpoints = checkpoints

    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        # fail before training, not after it, when the scores could not be made
        if stage == "fit" and not hasattr(trainer.datamodule, "tier_data"):
            raise EncodersError("SimilarityCallback needs a RecordedDataModule (trainer.fit(model, datamodule=...))")

    def checkpoint_paths(self, trainer: pl.Trainer) -> list[Path]:
        """The kept checkpoints chosen by `checkpoints`, existing files only, without duplicates."""
        callback = trainer.checkpoint_callback
        if callback is None:
            return []
        wanted = {"best_and_last": ["best_model_path", "last_model_path"], "best": ["best_model_path"],
                  "last": ["last_model_path"]}[self.checkpoints]
        paths = [Path(getattr(callback, name, "") or "") for name in wanted]
        unique = {p.resolve(): p for p in paths if str(p) not in ("", ".") and p.is_file()}
        return list(unique.values())

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        paths = self.checkpoint_paths(trainer)
        if not paths:
            rank_zero_warn(f"SimilarityCallback: no {self.checkpoints} checkpoint to score (is a ModelCheckpoint attached?)")
            return
        for path in paths:
            self.run(path, trainer.datamodule, Path(trainer.default_root_dir), trainer, pl_module.device)

    def run(self, checkpoint: Path, datamodule, root: Path, trainer: pl.Trainer | None = None,
            device: torch.device | None = None) -> Path:
        """Make (or reuse) the products of one checkpoint; returns the NetCDF path."""
        out_dir = root / "products" / checkpoint.stem
        nc_path = out_dir / "similarity.nc"
        digest = file_digest(checkpoint)
        scores = self._existing(nc_path, digest)
        if scores is None:
            model = load_checkpoint(checkpoint)
            if device is not None:
                model = model.to(device)
            scores = similarity_diagnostics(model, datamodule, self.measures, self.layers, self.seed, self.max_features)
            scores.attrs["checkpoint"] = str(checkpoint)
            scores.attrs["checkpoint_sha256"] = digest
            write_netcdf(scores, nc_path)
            self._print(scores, nc_path)
        png_path = out_dir / "similarity.png"
        if not png_path.exists():  # also redone when a run stopped between the two writes
            save_figure(plot_similarity(scores, f"{checkpoint.name}: similarity with test responses"), png_path)
        if trainer is not None:
            self._log_wandb(trainer, scores, checkpoint.stem)
        return nc_path

    @staticmethod
    def _existing(path: Path, digest: str) -> xr.Dataset | None:
        if not path.exists():
            return None
        with xr.open_dataset(path, engine="h5netcdf") as stored:
            if stored.attrs.get("checkpoint_sha256") == digest:
                return stored.load()
        return None

    @staticmethod
    def _print(scores: xr.Dataset, path: Path) -> None:
        output = scores["score"].sel(layer="output")
        table = Table(title=f"similarity of predictions with test responses (mean over sessions) → {path}")
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
