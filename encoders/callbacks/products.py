"""What every product callback shares: the checkpoints to use, a fingerprint, atomic writing, the base callback.

Products are skipped when they exist for the same model (weights and hyperparameters, not file
bytes) and the same request (the fingerprint in the file's attributes): a re-run after a crash
does only what is missing, a retrained `last.ckpt` or changed settings make them again, and a
checkpoint that holds the same model as another (best = last) gets a copy.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pytorch_lightning as pl
import torch
import xarray as xr
from matplotlib.figure import Figure
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from encoders.ensemble import Ensemble, load_checkpoint, read_checkpoint
from encoders.errors import EncodersError
from encoders.outputs import save_figure, write_netcdf

if TYPE_CHECKING:
    from encoders.datasets.datamodule import RecordedDataModule

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


def load_models(paths: Sequence[str | Path]) -> nn.Module:
    """One checkpoint -> its model; several -> their Ensemble. Eval mode, CPU."""
    if len(paths) == 1:
        return load_checkpoint(paths[0])
    return Ensemble.from_checkpoints(paths)


def fingerprint(paths: Sequence[str | Path], request: dict) -> str:
    """sha256 of the request (settings, neuron choice) and each checkpoint's model: what a product depends on."""
    digest = hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode())
    for path in paths:
        digest.update(model_digest(path).encode())
    return digest.hexdigest()


def model_digest(path: str | Path) -> str:
    """sha256 of a checkpoint's weights and hyperparameters, not of its file.

    The file also holds optimizer, loop and callback state: the best and the last checkpoint of a
    run that improved until its end hold the same model in different bytes, and must share products.
    Cached per file version (path, mtime, size): every product of a checkpoint asks for it.
    """
    try:
        stat = Path(path).stat()
    except FileNotFoundError:
        raise EncodersError(f"{path}: checkpoint not found") from None
    return _model_digest(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _model_digest(path: str, mtime_ns: int, size: int) -> str:  # mtime_ns and size only key the cache
    checkpoint = read_checkpoint(path)
    digest = hashlib.sha256(json.dumps(checkpoint.get("hyper_parameters", {}), sort_keys=True, default=str).encode())
    for name, tensor in sorted(checkpoint["state_dict"].items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def existing(path: Path, key: str) -> xr.Dataset | None:
    """The product at `path`, loaded, if it exists and was made from the same fingerprint."""
    if not path.is_file():
        return None
    try:
        with xr.open_dataset(path, engine="h5netcdf") as data:
            if data.attrs.get("fingerprint") != key:
                return None
            return data.load()
    except (OSError, ValueError):  # a foreign or damaged file: make it again
        return None


def same_product_nearby(nc: Path, key: str) -> tuple[Path, xr.Dataset] | None:
    """A product of the same name and fingerprint in a sibling folder (e.g. products/best-… for products/last), loaded."""
    for other in sorted(nc.parent.parent.glob(f"*/{nc.name}")):
        if other != nc and (data := existing(other, key)) is not None:
            return other, data
    return None


def write_product(
    paths: Sequence[Path], nc: Path, request: dict, compute: Callable[[], xr.Dataset],
    draw: Callable[[xr.Dataset], Figure], describe: Callable[[xr.Dataset], str],
) -> list[Path]:
    """`nc` and its PNG for a request on checkpoints `paths`, unless they exist for the same fingerprint.

    compute() makes the labelled results, draw(results) the figure, describe(results) the log line.
    A missing PNG is redrawn from the stored NetCDF. A sibling folder's product of the same
    fingerprint (same weights and request) is copied instead of computed. Returns the PNGs written (for W&B).
    """
    key = fingerprint(paths, request)
    png = nc.with_suffix(".png")
    results = existing(nc, key)
    made = results is None
    if made:
        nearby = same_product_nearby(nc, key)
        results = nearby[1] if nearby is not None else compute()
        results.attrs.update({"checkpoint": "; ".join(str(p) for p in paths), "fingerprint": key})
        write_netcdf(results, nc)
        copied = f" (copied from {nearby[0].parent.name}: the same model)" if nearby is not None else ""
        rank_zero_info(f"{describe(results)} -> {nc}{copied}")
    if made or not png.is_file():  # also redone when a run stopped between the two writes
        save_figure(draw(results), png)
        return [png]
    return []


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def log_wandb_images(trainer: pl.Trainer, key: str, paths: Sequence[Path]) -> None:
    """Log PNG products to every attached WandbLogger."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(p) for p in paths])


class CheckpointProducts(pl.Callback):
    """Base of the product callbacks: after fit (rank 0), make products for each kept checkpoint.

    Subclasses implement `check` (validate ids before training starts) and `produce` (write one
    checkpoint's products into a folder, usually with `write_product`; return the PNGs for W&B).
    """

    name = "product"

    def __init__(self, checkpoints: str):
        if checkpoints not in CHECKPOINT_CHOICES:
            raise EncodersError(f"checkpoints must be one of {list(CHECKPOINT_CHOICES)}, got {checkpoints!r}")
        self.checkpoints = checkpoints

    def check(self, model: nn.Module, datamodule: RecordedDataModule | None) -> None:
        raise NotImplementedError

    def produce(self, paths: list[Path], model: nn.Module, datamodule: RecordedDataModule | None, folder: Path) -> list[Path]:
        raise NotImplementedError

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the model is built by now: a typo in a neuron id fails before training, not after
        self.check(pl_module, trainer.datamodule)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        paths = kept_checkpoints(trainer, self.checkpoints)
        if not paths:
            rank_zero_warn(f"{type(self).__name__}: no saved checkpoint (add a ModelCheckpoint); no {self.name}s made")
            return
        for path in paths:
            folder = Path(trainer.default_root_dir) / "products" / path.stem
            model = load_checkpoint(path).to(pl_module.device)
            figures = self.produce([path], model, trainer.datamodule, folder)
            self.log_products(trainer, path.stem, folder, figures)

    def log_products(self, trainer: pl.Trainer, stem: str, folder: Path, figures: list[Path]) -> None:
        """Send one checkpoint's new figures to W&B; subclasses may log more (tables)."""
        if figures:
            log_wandb_images(trainer, f"products/{stem}/{self.name}", figures)
