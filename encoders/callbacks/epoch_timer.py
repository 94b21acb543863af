"""Wall-clock time per training epoch (training and its validation), logged as `time/epoch_seconds`."""

from __future__ import annotations

import time

import pytorch_lightning as pl


class EpochTimer(pl.Callback):
    """Logs each epoch's wall-clock seconds and the running total `time/elapsed_seconds`, so learning curves
    can be drawn against time. Lightning validates inside the training epoch, before `on_train_epoch_end`,
    so the validation pass is counted with its epoch."""

    def __init__(self) -> None:
        self._start: float | None = None
        self._elapsed = 0.0

    def on_train_epoch_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._start = time.perf_counter()

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._start is None:
            return
        seconds = time.perf_counter() - self._start
        self._elapsed += seconds
        self._start = None
        pl_module.log_dict({"time/epoch_seconds": seconds, "time/elapsed_seconds": self._elapsed})
