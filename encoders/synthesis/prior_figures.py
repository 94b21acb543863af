"""Figures of a diffusion prior for people: a grid of unguided samples and the training loss curve."""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from encoders.synthesis.prior import DiffusionPrior


@torch.no_grad()
def unguided_samples(prior: DiffusionPrior, n: int, num_steps: int, seed: int) -> torch.Tensor:
    """n unguided samples in [-1, 1], (n, C, S, S), seeds seed..seed+n-1."""
    from encoders.synthesis.guided_diffusion import egg_sample

    result = egg_sample(prior, None, n_images=n, num_steps=num_steps, energy_scale=0.0, seeds=list(range(seed, seed + n)))
    return result.prior_images


def image_grid(images: np.ndarray, columns: int = 4, scale: int = 4) -> Image.Image:
    """uint8 (N, S, S) or (N, 3, S, S) images -> one PIL grid, enlarged `scale` times (nearest neighbour)."""
    images = images if images.ndim == 4 else images[:, None]
    images = np.moveaxis(images, 1, -1)
    n, side, channels = len(images), images.shape[1], images.shape[-1]
    rows = int(math.ceil(n / columns))
    grid = np.full((rows * (side + 2) + 2, columns * (side + 2) + 2, channels), 255, np.uint8)
    for i, image in enumerate(images):
        r, c = divmod(i, columns)
        grid[2 + r * (side + 2) : 2 + r * (side + 2) + side, 2 + c * (side + 2) : 2 + c * (side + 2) + side] = image
    grid = grid[..., 0] if channels == 1 else grid
    return Image.fromarray(grid).resize((grid.shape[1] * scale, grid.shape[0] * scale), Image.Resampling.NEAREST)


def sample_grid(prior: DiffusionPrior, path: str | Path, num_steps: int, seed: int, n: int = 16) -> None:
    """Save a 4-column PNG grid of n unguided samples."""
    samples = unguided_samples(prior, n, num_steps, seed)
    image_grid(((samples + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()).save(path)


def loss_figure(loss_curve: Sequence[tuple[int, float]], path: str | Path) -> None:
    """Save the training loss (mean over each logged window) against the optimiser step."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axis = plt.subplots(figsize=(5, 3.2), constrained_layout=True)
    if loss_curve:
        steps, losses = zip(*loss_curve)
        axis.plot(steps, losses, color="k", lw=1)
        axis.set_yscale("log")
    axis.set_xlabel("optimiser step")
    axis.set_ylabel("DDPM loss (MSE on the noise)")
    axis.set_title("prior training loss")
    axis.grid(alpha=0.3)
    figure.savefig(path, dpi=120)
    plt.close(figure)


def quality_figure(result: dict, path: str | Path) -> None:
    """Samples next to held-out images, and a table of Fréchet distance and image statistics (prior, data floor, noise)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from encoders.outputs import save_figure

    figure, axes = plt.subplots(1, 3, figsize=(12, 4.2), layout="constrained", gridspec_kw={"width_ratios": [1, 1, 1.2]})
    for ax, images, title in ((axes[0], result["samples"], "prior samples (unguided)"), (axes[1], result["held_out"], "held-out data crops")):
        grid = image_grid(((images[:16] + 1) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy(), scale=1)
        ax.imshow(np.asarray(grid), cmap="gray", vmin=0, vmax=255, interpolation="nearest")
        ax.set_title(title, fontsize=10)
        ax.axis("off")
    rows = ["prior", "data", "noise"]
    columns = ["frechet_distance", "rms_contrast", "mean_luminance", "spectrum_slope"]
    cells = [[f"{result[r][c]:.3g}" for c in columns] for r in rows]
    axes[2].axis("off")
    table = axes[2].table(cellText=cells, rowLabels=["prior samples", "other held-out data (floor)", "matched noise (ceiling)"],
                          colLabels=["Fréchet dist.", "RMS contrast", "mean lum.", "spectrum slope"], loc="center")
    table.auto_set_font_size(False)
    table.set_fontsize(8)
    table.scale(1, 1.6)
    settings = result["settings"]
    axes[2].set_title(f"{settings['prior']}\nvs {settings['n']} {'/'.join(settings['tiers'])} crops of {Path(settings['data']).name}; "
                      f"{settings['num_steps']} sampling steps", fontsize=9)
    save_figure(figure, path)
