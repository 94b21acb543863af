"""At the end of fit: a figure of where each session's readout looks (PNG in the run folder + W&B).

Gaussian readouts: every neuron's mean position on the core's feature grid.
Attention readouts: the attention maps of a few neurons, averaged over validation images.
On a synthetic twin the true receptive-field centres are marked too, and the median distance
between where the readout looks and the true centre is logged (`readout/true_rf_distance`).
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from pytorch_lightning.utilities import rank_zero_info  # noqa: E402

from encoders.datasets.twin import has_ground_truth, true_rf_centres  # noqa: E402
from encoders.outputs import save_figure  # noqa: E402
from encoders.readouts import AttentionReadout, GaussianReadout  # noqa: E402

if TYPE_CHECKING:
    from encoders.datasets.datamodule import RecordedDataModule
    from encoders.model import EncodingModel

MAP_IMAGES = 64  # validation images the attention maps are averaged over


def mean_attention(model: EncodingModel, datamodule: RecordedDataModule, session: str) -> torch.Tensor:
    """Each neuron's attention map averaged over the first validation images, (n_neurons, h, w)."""
    images = datamodule.tier_data(session, "validation")["images"][:MAP_IMAGES].to(model.device)
    if model.hparams.channels_last:
        images = images.contiguous(memory_format=torch.channels_last)
    return model.readouts[session].attention_maps(model.core(images)).mean(0).cpu()


def readout_locations(model: EncodingModel, session: str, maps: torch.Tensor | None) -> torch.Tensor:
    """Where each neuron reads out, as (x, y) feature-grid cell indices, (n_neurons, 2).

    Gaussian readout: its mean position. Attention readout: the centre of mass of `maps`.
    """
    readout = model.readouts[session]
    if isinstance(readout, GaussianReadout):
        _, h, w = readout.in_shape
        xy = readout.positions().cpu()  # align_corners=True: -1 and 1 are the border cells' centres
        return (xy + 1) / 2 * torch.tensor([w - 1, h - 1], dtype=xy.dtype)
    _, h, w = maps.shape
    x = (maps.sum(1) * torch.arange(w, dtype=maps.dtype)).sum(1)
    y = (maps.sum(2) * torch.arange(h, dtype=maps.dtype)).sum(1)
    return torch.stack([x, y], dim=1) / maps.sum((1, 2))[:, None]


class ReadoutFigures(pl.Callback):
    """Writes `<run_dir>/readouts.png`: one panel per session (Gaussian) or per neuron (attention)."""

    def __init__(self, neurons_per_session: int = 4, filename: str = "readouts.png"):
        if neurons_per_session < 1:
            raise ValueError(f"neurons_per_session must be positive, got {neurons_per_session}")
        self.neurons_per_session = neurons_per_session
        self.filename = filename

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        if not trainer.is_global_zero or datamodule is None:
            return
        sessions = pl_module.sessions
        first = pl_module.readouts[sessions[0]]
        if not isinstance(first, (GaussianReadout, AttentionReadout)):
            return
        was_training = pl_module.training
        pl_module.eval()
        with torch.no_grad():
            maps = {s: mean_attention(pl_module, datamodule, s) for s in sessions} if isinstance(first, AttentionReadout) else {}
            located = {s: readout_locations(pl_module, s, maps.get(s)) for s in sessions}
        pl_module.train(was_training)
        grid = tuple(first.in_shape[1:])
        truth = None
        if has_ground_truth(datamodule.path):
            truth = true_rf_centres(datamodule.path, sessions, pl_module.image_transform, tuple(pl_module.input_shape), grid)
            self._log_distances(trainer, located, truth, grid)
        figure = self._attention(pl_module, sessions, maps, truth) if maps else self._gaussian(sessions, located, truth, grid)
        path = save_figure(figure, Path(trainer.default_root_dir) / self.filename)
        for logger in trainer.loggers:
            if hasattr(logger, "log_image"):
                logger.log_image(key="readouts", images=[str(path)])

    @staticmethod
    def _log_distances(trainer: pl.Trainer, located: dict, truth: dict, grid: tuple[int, int]) -> None:
        distance = torch.cat([(located[s] - truth[s]).norm(dim=1) for s in located]).median().item()
        middle = torch.tensor([(grid[1] - 1) / 2, (grid[0] - 1) / 2])
        guess = torch.cat([(truth[s] - middle).norm(dim=1) for s in truth]).median().item()
        n = sum(len(t) for t in truth.values())
        rank_zero_info(f"readouts vs the twin's true receptive-field centres: median distance {distance:.2f} feature-grid "
                       f"cells over {n} neurons (the grid's middle as a guess: {guess:.2f})")
        for logger in trainer.loggers:
            logger.log_metrics({"readout/true_rf_distance": distance, "readout/true_rf_distance_of_middle": guess}, step=trainer.global_step)

    @staticmethod
    def _gaussian(sessions: list[str], located: dict, truth: dict | None, grid: tuple[int, int]) -> Figure:
        figure, axes = plt.subplots(1, len(sessions), figsize=(2.4 * len(sessions), 2.8), squeeze=False, layout="constrained")
        for ax, session in zip(axes[0], sessions):
            xy = located[session]
            ax.scatter(xy[:, 0], xy[:, 1], s=8, label="readout")
            if truth is not None:
                true = truth[session]
                ax.scatter(true[:, 0], true[:, 1], s=10, marker="x", color="tab:orange", label="true RF centre")
                for a, b in zip(xy, true):
                    ax.plot([a[0], b[0]], [a[1], b[1]], color="0.7", linewidth=0.5)
            ax.set(xlim=(-0.5, grid[1] - 0.5), ylim=(grid[0] - 0.5, -0.5), title=session, aspect="equal", xticks=[], yticks=[])
        if truth is not None:
            axes[0, 0].legend(fontsize=6, loc="lower left")
        figure.suptitle("Gaussian readout positions (feature grid)")
        return figure

    def _attention(self, model: EncodingModel, sessions: list[str], maps: dict, truth: dict | None) -> Figure:
        k = self.neurons_per_session
        figure, axes = plt.subplots(len(sessions), k, figsize=(1.6 * k, 1.6 * len(sessions) + 0.3), squeeze=False, layout="constrained")
        for row, session in zip(axes, sessions):
            for i, ax in enumerate(row):
                if i < maps[session].shape[0]:
                    ax.imshow(maps[session][i], cmap="magma")
                    if truth is not None:
                        x, y = truth[session][i].tolist()
                        ax.plot(x, y, marker="+", color="cyan", markersize=9, markeredgewidth=1.5)
                    ax.set_title(model.neuron_ids(session)[i], fontsize=6)
                ax.axis("off")
        marked = "; + = true RF centre" if truth is not None else ""
        figure.suptitle(f"attention maps (mean over validation images){marked}")
        return figure
