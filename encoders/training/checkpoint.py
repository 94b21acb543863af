"""ModelCheckpoint whose `last.ckpt` is the state after every epoch, and optionally every N steps.

Lightning 2.6 refreshes `last.ckpt` only when a top-k checkpoint was saved in the same step, so
after an epoch without improvement "last" silently stays at an older epoch. Products are made for
best and last, and resuming after a crash needs the true last state, so this restores the old rule.

`last_every_n_train_steps` also refreshes `last.ckpt` mid-epoch (without touching top-k), so a
long epoch killed halfway loses at most N steps: `python train.py fit ... --ckpt_path last`
continues from exactly that batch (the training loader saves its place in the epoch).
"""

from __future__ import annotations

from typing import Any

import pytorch_lightning as pl
from pytorch_lightning.callbacks import ModelCheckpoint as LightningModelCheckpoint
from pytorch_lightning.trainer.states import TrainerFn

from encoders.errors import EncodersError


class ModelCheckpoint(LightningModelCheckpoint):
    """Lightning's ModelCheckpoint, with `last.ckpt` refreshed every time it would save top-k.

    Args:
        last_every_n_train_steps: also refresh `last.ckpt` every this many optimizer steps
            (needs `save_last`); None = only at the end of epochs.
        **kwargs: Lightning's ModelCheckpoint arguments (dirpath, monitor, mode, save_last, ...).
    """

    def __init__(self, last_every_n_train_steps: int | None = None, **kwargs: Any):
        super().__init__(**kwargs)
        if last_every_n_train_steps is not None:
            if last_every_n_train_steps < 1:
                raise EncodersError(f"last_every_n_train_steps must be a positive integer, got {last_every_n_train_steps}")
            if not self.save_last:
                raise EncodersError("last_every_n_train_steps refreshes last.ckpt: it needs save_last: true")
        self.last_every_n_train_steps = last_every_n_train_steps

    def on_train_batch_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule, outputs: Any, batch: Any, batch_idx: int) -> None:
        super().on_train_batch_end(trainer, pl_module, outputs, batch, batch_idx)
        n = self.last_every_n_train_steps
        if not n or trainer.global_step % n or self._should_skip_saving_checkpoint(trainer):
            return
        # Not on an epoch's last batch: the end-of-epoch save follows after validation, and
        # Lightning 2.6 resumes a checkpoint taken there, before validation, into an empty epoch.
        if trainer.fit_loop.epoch_loop.batch_progress.is_last_batch:
            return
        self._save_last_checkpoint(trainer, self._monitor_candidates(trainer))

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
