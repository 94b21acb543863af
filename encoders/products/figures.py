"""PNG grids of MEIs and reconstructions for people, drawn in the data's pixel space (0..255)."""

from __future__ import annotations

import warnings

import matplotlib

matplotlib.use("Agg")  # products are drawn on servers without a display

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

MAX_ROWS = 48  # a grid of every neuron of a large model would be unreadable; the NetCDF has them all
CELL_INCHES = 1.3


METHOD_NAMES = {"ga": "gradient ascent", "egg": "energy-guided diffusion"}
FAILED_FRACTION = 0.5  # a sample below this fraction of its neuron's best sample's activation is marked failed


def failed_samples(activation: np.ndarray, minimize: bool = False) -> np.ndarray:
    """(neuron, seed) activations -> bool mask of samples that did not work: below FAILED_FRACTION of the
    neuron's best, or NaN (a diverged optimisation)."""
    activation = np.asarray(activation, dtype=float)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # a neuron whose samples are all NaN: all failed
        if minimize:  # inhibitory images: lower is better; a failed one stays well above the best
            best = np.nanmin(activation, axis=1, keepdims=True)
            return ~(activation <= best / FAILED_FRACTION)
        best = np.nanmax(activation, axis=1, keepdims=True)
        return ~(activation >= FAILED_FRACTION * best)


def _mark_failed(ax) -> None:
    for spine in ax.spines.values():
        spine.set_edgecolor("red")
        spine.set_linewidth(2)


def show_image(ax, pixels: np.ndarray) -> None:
    """One (C, H, W) pixel-space image: grey for one channel, RGB for three."""
    pixels = np.clip(np.nan_to_num(pixels), 0, 255)
    if pixels.shape[0] == 1:
        ax.imshow(pixels[0], cmap="gray", vmin=0, vmax=255, interpolation="nearest")
    else:
        ax.imshow(np.moveaxis(pixels, 0, -1) / 255.0, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])


def _grid(rows: int, columns: int) -> tuple[Figure, np.ndarray]:
    # constrained layout keeps each cell's title clear of the image above it and of the suptitle
    figure, axes = plt.subplots(
        rows, columns, figsize=(CELL_INCHES * columns, CELL_INCHES * rows + 0.4), squeeze=False, layout="constrained"
    )
    return figure, axes


def _mean_pixel(results: xr.Dataset) -> float:
    """The pixel value that 0 in model space stands for (the data's mean), from the stored transform."""
    import json

    import torch

    from encoders.datasets.transforms import ImageTransform

    transform = ImageTransform.from_state(json.loads(results.attrs["image_transform"]))
    return float(transform.to_pixels(torch.zeros(1, 1, 1, 1)).mean())


def mei_figure(results: xr.Dataset, method: str = "ga") -> Figure:
    """Rows = neurons (first MAX_ROWS), columns = seeds, then the twin's true MEI when scored."""
    data = results.isel(method=results.method.values.tolist().index(method))
    n_rows = min(results.sizes["neuron"], MAX_ROWS)
    has_truth = "true_mei_pixels" in results
    seeds = results.seed.values.tolist()
    figure, axes = _grid(n_rows, len(seeds) + int(has_truth))
    failed = failed_samples(data.activation.transpose("neuron", "seed").values, bool(results.attrs.get("minimize", 0)))
    for row in range(n_rows):
        neuron = data.isel(neuron=row)
        for col, seed in enumerate(seeds):
            cell = neuron.sel(seed=seed)
            ax = axes[row, col]
            show_image(ax, cell.image_pixels.values)
            title = f"r={float(cell.activation):.2f}"
            if "ground_truth_relative_activation" in cell:
                title += f" rel={float(cell.ground_truth_relative_activation):.2f}"
            if failed[row, col]:
                title += " FAILED"
                _mark_failed(ax)
            ax.set_title(title, fontsize=6)
            if row == 0:
                ax.set_title(f"seed {seed}\n{title}", fontsize=6)
        axes[row, 0].set_ylabel(f"{neuron.session.item()}\n{neuron.neuron_id.item()}", fontsize=6)
        if has_truth:
            true_pixels = neuron.true_mei_pixels.values
            if "true_mei_seen" in neuron:  # pixels the true neuron cannot see hold leftover noise: grey them out
                grey = _mean_pixel(results)
                true_pixels = np.where(neuron.true_mei_seen.values[None].astype(bool), true_pixels, grey)
            show_image(axes[row, -1], true_pixels)
            title = f"true r={float(neuron.true_mei_activation):.1f}"
            axes[row, -1].set_title(f"true MEI\n{title}" if row == 0 else title, fontsize=6)
    shown = "" if n_rows == results.sizes["neuron"] else f" (first {n_rows} of {results.sizes['neuron']})"
    kind = "inhibitory images" if results.attrs.get("minimize", 0) else "MEIs"
    legend = f"r = predicted rate; red frame = failed (below {FAILED_FRACTION:.0%} of the neuron's best seed)"
    if has_truth:
        legend += "; rel = true rate / true rate of the true MEI (true r); true MEI shown where the true neuron sees"
    figure.suptitle(f"{kind} by {METHOD_NAMES.get(method, method)}{shown}\n{legend}", fontsize=8)
    return figure


def reconstruction_figure(results: xr.Dataset, method: str = "ga") -> Figure:
    """Rows = test images (first MAX_ROWS): the target image, then its reconstruction for each seed."""
    data = results.isel(method=results.method.values.tolist().index(method))
    n_rows = min(results.sizes["image"], MAX_ROWS)
    seeds = results.seed.values.tolist()
    figure, axes = _grid(n_rows, 1 + len(seeds))
    for row in range(n_rows):
        image = data.isel(image=row)
        show_image(axes[row, 0], image.target_image_pixels.values)
        axes[row, 0].set_ylabel(f"{image.session.item()}\nimage {image.image_id.item()}", fontsize=6)
        if row == 0:
            axes[row, 0].set_title("target", fontsize=6)
        for col, seed in enumerate(seeds, start=1):
            cell = image.sel(seed=seed)
            show_image(axes[row, col], cell.reconstruction_pixels.values)
            title = f"resp. r={float(cell.correlation):.2f}\npixel r={float(cell.image_correlation):.2f}"
            axes[row, col].set_title(f"seed {seed}\n{title}" if row == 0 else title, fontsize=6)
    shown = "" if n_rows == results.sizes["image"] else f" (first {n_rows} of {results.sizes['image']})"
    figure.suptitle(
        f"reconstructions by {METHOD_NAMES.get(method, method)}{shown}\nresp. r = correlation of predicted with target "
        "responses; pixel r = correlation of the images", fontsize=8)
    return figure
