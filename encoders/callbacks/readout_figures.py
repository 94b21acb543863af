"""At the end of fit: a figure of where each session's readout looks (PNG in the run folder + W&B).

Every readout says where its neurons read (`Readout.locations`) and how they weight the feature
grid (`Readout.spatial_maps`), averaged over validation images, so one figure serves every
readout: per session, all neurons' read-out locations, then the maps of the first few neurons
with a colour bar. On a synthetic twin the true receptive-field centres are marked too, and the
median distance between where the readout looks and the true centre is logged (`readout/true_rf_distance`).
"""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import pytorch_lightning as pl  # noqa: E402
import torch  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402
from pytorch_lightning.utilities import rank_zero_info  # noqa: E402

from encoders.encoder import Encoder  # noqa: E402
from encoders.outputs import save_figure  # noqa: E402

MAP_IMAGES = 64  # validation images the maps are averaged over


@torch.no_grad()
def readout_views(encoder: Encoder, recording, session: str) -> tuple[torch.Tensor, torch.Tensor]:
    """Mean spatial maps (n_neurons, h, w) over the first validation images, and locations (n_neurons, 2) as grid cells."""
    device = next(encoder.parameters()).device
    images = recording.tier_data(session, "validation")["images"][:MAP_IMAGES].to(device)
    features = encoder.core_features(images)
    readout = encoder.readouts[session]
    return readout.spatial_maps(features).mean(0).cpu(), readout.locations(features).cpu()


class ReadoutFigures(pl.Callback):
    """Writes `<run_dir>/readouts.png`: per session, the neurons' read-out locations and a few neurons' spatial maps."""

    def __init__(self, neurons_per_session: int = 4, filename: str = "readouts.png"):
        if neurons_per_session < 1:
            raise ValueError(f"neurons_per_session must be positive, got {neurons_per_session}")
        self.neurons_per_session = neurons_per_session
        self.filename = filename

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        datamodule = trainer.datamodule
        if not trainer.is_global_zero or datamodule is None:
            return
        encoder = pl_module.encoder
        sessions = encoder.sessions
        was_training = encoder.training
        encoder.eval()
        views = {s: readout_views(encoder, datamodule.recording, s) for s in sessions}
        encoder.train(was_training)
        grid = tuple(encoder.readouts[sessions[0]].in_shape[1:])
        maps = {s: v[0] for s, v in views.items()}
        located = {s: v[1] for s, v in views.items()}
        truth = None
        twin = datamodule.twin
        if twin is not None:
            truth = twin.rf_centres(encoder, grid)
            self._log_distances(trainer, located, truth, grid)
        path = save_figure(self.figure(encoder, maps, located, truth, grid), Path(trainer.default_root_dir) / self.filename)
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

    def figure(self, encoder: Encoder, maps: dict, located: dict, truth: dict | None, grid: tuple[int, int]) -> Figure:
        sessions = list(maps)
        k = self.neurons_per_session
        figure, axes = plt.subplots(len(sessions), k + 1, figsize=(1.9 * (k + 1) + 0.8, 1.9 * len(sessions) + 0.5),
                                    squeeze=False, layout="constrained")
        vmax = max(float(maps[s][:k].max()) for s in sessions)
        image = None
        for row, session in zip(axes, sessions):
            ax = row[0]
            xy = located[session]
            ax.scatter(xy[:, 0], xy[:, 1], s=8, label="readout")
            if truth is not None:
                true = truth[session]
                ax.scatter(true[:, 0], true[:, 1], s=10, marker="x", color="tab:orange", label="true RF centre")
                for a, b in zip(xy, true):
                    ax.plot([a[0], b[0]], [a[1], b[1]], color="0.7", linewidth=0.5)
            ax.set(xlim=(-0.5, grid[1] - 0.5), ylim=(grid[0] - 0.5, -0.5), aspect="equal", xticks=[], yticks=[])
            ax.set_title(f"{session}: all {len(xy)} neurons", fontsize=7)
            for i, ax in enumerate(row[1:]):
                ax.axis("off")
                if i >= maps[session].shape[0]:
                    continue
                image = ax.imshow(maps[session][i], cmap="magma", vmin=0, vmax=vmax)
                ax.plot(*located[session][i].tolist(), marker="o", color="white", markersize=4, fillstyle="none")
                if truth is not None:
                    ax.plot(*truth[session][i].tolist(), marker="+", color="cyan", markersize=9, markeredgewidth=1.5)
                ax.set_title(encoder.neuron_ids(session)[i], fontsize=7)
        if truth is not None:
            axes[0, 0].legend(fontsize=6, loc="lower left")
        if image is not None:
            figure.colorbar(image, ax=axes[:, 1:], shrink=0.8, label="read-out weight per feature-grid cell")
        marked = "; + = true RF centre" if truth is not None else ""
        figure.suptitle(f"where each neuron reads on the core's feature grid (mean over {MAP_IMAGES} validation images); "
                        f"o = location{marked}", fontsize=8)
        return figure
