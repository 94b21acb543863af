"""After fit: run a list of products for each kept checkpoint (a thin adapter from Lightning to `encoders.products`).

    - class_path: encoders.callbacks.Products
      init_args:
        checkpoints: best_and_last
        products:
          - class_path: encoders.products.MEIs
            init_args: {top_k: 12, method: {seeds: [0, 1, 2, 3], steps: 100}}
          - class_path: encoders.products.Reconstructions
            init_args: {images: 4}

Products land in `<run>/products/<checkpoint stem>/`; a product that exists for the same model
and settings is kept, one of a checkpoint holding the same model as another is copied.
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

import pytorch_lightning as pl
import xarray as xr
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn

from encoders.checkpoints import load_encoder
from encoders.errors import EncodersError
from encoders.products import Product, ProductData, Progress, make_products

CHECKPOINT_CHOICES = ("best_and_last", "best", "last", "all")


def kept_checkpoints(trainer: pl.Trainer, which: str) -> list[Path]:
    """Checkpoint files the trainer's ModelCheckpoint kept: best and/or last, or all (best first), existing ones only."""
    if which not in CHECKPOINT_CHOICES:
        raise EncodersError(f"checkpoints must be one of {list(CHECKPOINT_CHOICES)}, got {which!r}")
    callback = trainer.checkpoint_callback
    if callback is None:
        return []
    if which == "all":
        reverse = callback.mode == "max"
        paths = sorted(callback.best_k_models, key=lambda p: float(callback.best_k_models[p]), reverse=reverse)
    else:
        paths = [callback.best_model_path] if which != "last" else []
    if which != "best":
        paths.append(callback.last_model_path)
    unique: dict[Path, None] = {}
    for path in paths:
        if path and Path(path).is_file():
            unique.setdefault(Path(path), None)
    return list(unique)


class Products(pl.Callback):
    """After fit (rank 0), make `products` for each kept checkpoint; check them against the model before training.

    Args:
        products: MEIs, Reconstructions, SimilarityDiagnostics, ... (see encoders.products).
        checkpoints: "best_and_last", "best", "last" or "all" kept by the trainer's ModelCheckpoint.
    """

    def __init__(self, products: list[Product], checkpoints: Literal["best_and_last", "best", "last", "all"] = "best_and_last"):
        if checkpoints not in CHECKPOINT_CHOICES:
            raise EncodersError(f"checkpoints must be one of {list(CHECKPOINT_CHOICES)}, got {checkpoints!r}")
        stems = [p.stem() for p in products]
        if len(set(stems)) != len(stems):
            raise EncodersError(f"products: two products would write the same file ({stems}); give one a different kind or method")
        self.products = list(products)
        self.checkpoints = checkpoints
        self._data: ProductData | None = None

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the model is built by now: a typo in a neuron id fails before training, not after
        self._data = ProductData.of(trainer.datamodule, self._truth_store(trainer))
        for product in self.products:
            product.check(pl_module.encoder, self._data)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        paths = kept_checkpoints(trainer, self.checkpoints)
        if not paths:
            rank_zero_warn("Products: no saved checkpoint (add a ModelCheckpoint); no products made")
            return
        data = self._data or ProductData.of(trainer.datamodule, self._truth_store(trainer))
        for path in paths:
            folder = Path(trainer.default_root_dir) / "products" / path.stem
            model = load_encoder(path).to(pl_module.device)
            for made in make_products(self.products, [path], model, data, folder, Progress()):
                rank_zero_info(made.line)
                self._log_wandb(trainer, path.stem, made.path, made.figures, made.results)

    @staticmethod
    def _truth_store(trainer: pl.Trainer) -> Path:
        """Where a twin's true MEIs are kept, shared by every checkpoint's products of the run."""
        return Path(trainer.default_root_dir) / "twin_truth"

    @staticmethod
    def _log_wandb(trainer: pl.Trainer, stem: str, nc: Path, figures: list[Path], results: xr.Dataset) -> None:
        from pytorch_lightning.loggers import WandbLogger

        for logger in trainer.loggers:
            if not isinstance(logger, WandbLogger):
                continue
            if figures:
                logger.log_image(key=f"products/{stem}/{nc.stem}", images=[str(p) for p in figures])
            if "score" in results and "measure" in results.dims:  # similarity: the scores as a table too
                logger.log_table(key=f"similarity/{stem}", dataframe=results["score"].to_dataframe().reset_index())
