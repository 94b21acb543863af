"""Checkpoint files written whole or not at all, also when the disk fills up.

Lightning's default writer (`TorchCheckpointIO`, through fsspec) writes a temporary file in the
system's temporary folder and then *copies* it over the target when that folder is on another
filesystem, so a disk that fills mid-copy leaves a truncated `last.ckpt` that blocks
`--ckpt_path last`. `AtomicCheckpointIO` writes beside the target and renames
(`encoders.outputs.atomic_write`): the previous checkpoint stays intact until the new one is
complete, and a failed write names the file in one line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch
from lightning_fabric.plugins.io.torch_io import TorchCheckpointIO

from encoders.errors import EncodersError
from encoders.outputs import atomic_write


class AtomicCheckpointIO(TorchCheckpointIO):
    """TorchCheckpointIO whose saves are atomic renames of a complete file beside the target."""

    def save_checkpoint(self, checkpoint: dict[str, Any], path: str | Path, storage_options: Any | None = None) -> None:
        if storage_options is not None:
            raise TypeError(f"{type(self).__name__} takes no storage_options, got {storage_options!r}")
        try:
            atomic_write(path, lambda tmp: torch.save(checkpoint, tmp))
        except (OSError, EncodersError) as error:  # atomic_write says "no space left" itself
            reason = error.strerror if isinstance(error, OSError) and error.strerror else str(error).split(": ", 1)[-1]
            raise EncodersError(f"{path}: checkpoint could not be written ({reason}); the previous one is kept whole, "
                                "so once the problem is solved the run continues with --ckpt_path last") from None


def use_atomic_checkpoints(trainer) -> None:
    """Give `trainer` the atomic writer, unless a plugin chose another one."""
    if type(trainer.strategy.checkpoint_io) is TorchCheckpointIO:
        trainer.strategy.checkpoint_io = AtomicCheckpointIO()
