"""ModelCheckpoint whose `last.ckpt` is the state after every epoch.

Lightning 2.6 refreshes `last.ckpt` only when a top-k checkpoint was saved in the same step, so
after an epoch without improvement "last" silently stays at an older epoch. Products are made for
best and last, and resuming after a crash needs the true last state, so this restores the old rule.
"""

from __future__ import annotations

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint as LightningModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ModelCheckpoint, with `last.ckpt` refreshed every time it would save top-k."""

    def on_train_epoch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_epoch_end(trainer, pl_module)
        if self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_validation_end(trainer, pl_module)
        if not self._should_save_on_train_epoch_end(trainer):
            self._refresh_last(trainer)

    def _refresh_last(self, trainer: pl.Trainer) -> None:
        # runs after the parent's own save in the same hook, so top-k is never pre-empted
        fitting = trainer.state.fn == TrainerFn.FITTING and not trainer.sanity_checking and not trainer.fast_dev_run
        if self.save_last and fitting and self._last_global_step_saved != trainer.global_step:
            self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))
