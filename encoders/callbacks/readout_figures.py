"""At the end of fit: a figure of where each session's readout looks (PNG in the run folder + W&B).

Gaussian readouts: every neuron's mean position on the core's feature grid.
Attention readouts: the attention maps of a few neurons, averaged over validation images.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402

from encoders.outputs import save_figure  # noqa: E402
from encoders.readouts import AttentionReadout, GaussianReadout  # noqa: E402

if TYPE_CHECKING:
    from encoders.datasets.datamodule import RecordedDataModule


class ReadoutFigures(pl.Callback):
    """Writes `<run_dir>/readouts.png`: one panel per session (Gaussian) or per neuron (attention)."""

    def __init__(self, neurons_per_session: int = 4, filename: str = "readouts.png"):
        if neurons_per_session < 1:
            raise ValueError(f"neurons_per_session must be positive, got {neurons_per_session}")
        self.neurons_per_session = neurons_per_session
        self.filename = filename

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero or trainer.datamodule is None:
            return
        sessions = pl_module.sessions
        first = pl_module.readouts[sessions[0]]
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            if isinstance(first, GaussianReadout):
                figure = self._gaussian(pl_module, sessions)
            elif isinstance(first, AttentionReadout):
                figure = self._attention(pl_module, trainer.datamodule, sessions)
            else:
                return
        pl_module.train(was_training)
        path = save_figure(figure, Path(trainer.default_root_dir) / self.filename)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="readouts", images=[str(path)])

    def _gaussian(self, model, sessions):
        figure, axes = plt.subplots(1, len(sessions), figsize=(2.4 * len(sessions), 2.6), squeeze=False)
        for ax, session in zip(axes[0], sessions):
            xy = model.readouts[session].positions().cpu()
            ax.scatter(xy[:, 0], xy[:, 1], s=8)
            ax.set(xlim=(-1, 1), ylim=(1, -1), title=session, aspect="equal", xticks=[], yticks=[])
        figure.suptitle("Gaussian readout positions (feature-grid coordinates)")
        return figure

    def _attention(self, model, datamodule: RecordedDataModule, sessions):
        k = self.neurons_per_session
        figure, axes = plt.subplots(len(sessions), k, figsize=(1.6 * k, 1.6 * len(sessions)), squeeze=False)
        for row, session in zip(axes, sessions):
            images = datamodule.tier_data(session, "validation")["images"][:64]
            if model.hparams.channels_last:
                images = images.contiguous(memory_format=torch.channels_last)
            maps = model.readouts[session].attention_maps(model.core(images)).mean(0)
            for i, ax in enumerate(row):
                if i < maps.shape[0]:
                    ax.imshow(maps[i].cpu(), cmap="magma")
                    ax.set_title(model.neuron_ids(session)[i], fontsize=6)
                ax.axis("off")
        figure.suptitle("attention maps (mean over validation images)")
        return figure
