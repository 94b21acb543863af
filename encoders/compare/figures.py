"""PNG figures of the comparison report (matplotlib, drawn without a display)."""

from __future__ import annotations

import itertools

import matplotlib

matplotlib.use("Agg")

import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402
import xarray as xr  # noqa: E402
from matplotlib.figure import Figure  # noqa: E402

from encoders.products.figures import show_image  # noqa: E402
from encoders.compare.generalisation import (  # noqa: E402
    REFERENCE_FRACTION, RELATIONS, activation_by_step, mei_units, relation_values,
)

MAX_MEI_ROWS = 12


def accuracy_figure(accuracy: xr.Dataset) -> Figure:
    """Mean test correlation per session and architecture: bars = mean over seeds, dots = single seeds."""
    sessions = list(dict.fromkeys(accuracy.session.values.tolist()))
    groups = sessions + ["all"]
    per_seed = np.stack([
        accuracy.correlation.where(accuracy.session == s).mean("neuron", skipna=True).values if s != "all"
        else accuracy.correlation.mean("neuron", skipna=True).values
        for s in groups
    ], axis=-1)  # (architecture, seed, group)
    architectures = accuracy.architecture.values.tolist()
    width = 0.8 / len(architectures)
    figure, ax = plt.subplots(figsize=(max(5.0, 0.9 * len(groups) * max(1, len(architectures) / 2)), 3.6), layout="constrained")
    x = np.arange(len(groups))
    for a, architecture in enumerate(architectures):
        offset = x + (a - (len(architectures) - 1) / 2) * width
        ax.bar(offset, np.nanmean(per_seed[a], axis=0), width, label=architecture)
        for s in range(per_seed.shape[1]):
            ax.plot(offset, per_seed[a, s], "k.", ms=3)
    ax.set_xticks(x, groups, rotation=45, ha="right", fontsize=8)
    ax.set_ylabel("test correlation (mean over neurons)")
    ax.set_title("accuracy per architecture and session (bars: mean over seeds; dots: seeds)", fontsize=9)
    ax.legend(fontsize=8)
    return figure


def neuron_scatter_figure(accuracy: xr.Dataset, chosen: list[tuple[str, str]]) -> Figure:
    """Per-neuron test correlation (mean over seeds), one panel per pair of architectures; MEI neurons in red."""
    architectures = accuracy.architecture.values.tolist()
    variables = ["correlation"] + (["ground_truth_correlation"] if "ground_truth_correlation" in accuracy else [])
    pairs = list(itertools.combinations(architectures, 2)) or [(architectures[0], architectures[0])]
    figure, axes = plt.subplots(len(variables), len(pairs), figsize=(3.4 * len(pairs), 3.3 * len(variables)),
                                squeeze=False, layout="constrained")
    keys = list(zip(accuracy.session.values.tolist(), accuracy.neuron_id.values.tolist()))
    picked = np.array([k in set(chosen) for k in keys])
    for row, variable in enumerate(variables):
        mean = accuracy[variable].mean("seed", skipna=True)
        for col, (a, b) in enumerate(pairs):
            ax = axes[row, col]
            x, y = mean.sel(architecture=a).values, mean.sel(architecture=b).values
            ax.scatter(x[~picked], y[~picked], s=6, alpha=0.6, color="grey", label="neurons")
            ax.scatter(x[picked], y[picked], s=12, color="tab:red", label="MEI neurons")
            finite = np.isfinite(x) & np.isfinite(y)
            low = float(min(np.nanmin(x), np.nanmin(y), 0)) if finite.any() else 0.0
            ax.plot([low, 1], [low, 1], "k-", lw=0.5)
            r = np.corrcoef(x[finite], y[finite])[0, 1] if finite.sum() > 2 else np.nan
            ax.set_title(f"{variable}: r = {r:.2f} across neurons", fontsize=8)
            ax.set_xlabel(a, fontsize=8)
            ax.set_ylabel(b, fontsize=8)
    axes[0, 0].legend(fontsize=7)
    return figure


def method_colour(result: xr.Dataset, method: str) -> tuple | str:
    """GA in blues, EGG in oranges (one shade per named method of that kind), MENIs green, natural images grey."""
    if method.startswith("top_natural"):
        return "tab:gray" if method == "top_natural" else "silver"
    kind = str(result.method_type.sel({"method": method}).values)
    if kind == "meni":
        return "tab:green"
    same = [str(m) for m, k in zip(result.method.values, result.method_type.values) if str(k) == kind]
    shade = 0.55 + 0.4 * same.index(method) / max(1, len(same) - 1)
    return plt.get_cmap({"ga": "Blues", "egg": "Oranges"}.get(kind, "Purples"))(shade)


def generalisation_figure(result: xr.Dataset) -> Figure:
    """Normalised activation of every method's images by relation of the scorer; one panel per generating architecture.

    Bars: mean over scorers and neurons (seeds reduced by the result's keep rule); dots: single neurons.
    """
    values = mei_units(result)
    architectures = result.architecture.values.tolist()
    methods = values.method.values.tolist()
    present = [r for r in RELATIONS if (result.relation == r).any()]
    figure, axes = plt.subplots(len(architectures), 1, figsize=(2.5 + 0.35 * len(methods) * len(present), 0.6 + 3.0 * len(architectures)),
                                squeeze=False, sharey=True, layout="constrained")
    width = 0.8 / len(methods)
    for a, architecture in enumerate(architectures):
        ax = axes[a, 0]
        for k, method in enumerate(methods):
            for r, name in enumerate(present):
                per_neuron = relation_values(values.sel({"method": method}), result.relation, name).sel(architecture=architecture).values
                if not np.isfinite(per_neuron).any():
                    continue
                x = r + (k - (len(methods) - 1) / 2) * width
                ax.bar(x, float(np.nanmean(per_neuron)), width, color=method_colour(result, method),
                       label=method if r == 0 else None)
                jitter = np.linspace(-width / 4, width / 4, len(per_neuron))
                ax.plot(x + jitter, per_neuron, "k.", ms=2, alpha=0.6)
        ax.axhline(1.0, color="k", lw=0.6, ls="--")
        ax.set_xticks(range(len(present)), present, fontsize=8)
        ax.set_title(f"images of the {architecture} ensemble", fontsize=9)
        ax.set_ylabel("activation / scorer's\nbest natural image", fontsize=8)
    axes[0, 0].legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.0, 1.0))
    figure.suptitle("generating = ensemble members (optimised on); within = held-out seeds; cross = other architectures",
                    fontsize=8)
    return figure


def time_figure(result: xr.Dataset) -> Figure:
    """Wall seconds per MEI image, per generating architecture and method."""
    per_image = result.wall_seconds / (result.sizes["neuron"] * result.sizes["seed"])
    architectures = result.architecture.values.tolist()
    methods = result.method.values.tolist()
    figure, ax = plt.subplots(figsize=(1.5 + 0.5 * len(methods) * len(architectures), 3.2), layout="constrained")
    width = 0.8 / len(methods)
    for k, method in enumerate(methods):
        x = np.arange(len(architectures)) + (k - (len(methods) - 1) / 2) * width
        ax.bar(x, per_image.sel({"method": method}).values, width, color=method_colour(result, method), label=method)
    ax.set_xticks(range(len(architectures)), architectures, fontsize=8)
    ax.set_ylabel("wall seconds per MEI")
    ax.set_title("compute time per method (generating ensemble, this machine)", fontsize=9)
    ax.legend(fontsize=7)
    return figure


def compute_figure(meis: dict[tuple[str, str], xr.Dataset], result: xr.Dataset) -> Figure:
    """Activation on the generating ensemble against wall seconds, per pair of methods and architecture.

    Curves: median over MEIs of (activation after each step) / (the pair's GA's converged activation for
    that neuron); dashed: 95%, the level the compute column of the report measures to.
    """
    pairs = result.pair.values.tolist() if "pair" in result.dims else []
    architectures = result.architecture.values.tolist()
    figure, axes = plt.subplots(max(1, len(pairs)), len(architectures), figsize=(3.4 * len(architectures), 2.8 * max(1, len(pairs))),
                                squeeze=False, layout="constrained")
    for p, pair in enumerate(pairs):
        names = result.pair_methods.sel(pair=pair).values.tolist()
        for a, architecture in enumerate(architectures):
            ax = axes[p, a]
            reference = meis[(architecture, names[1])].activation.isel(method=0).mean("seed").values
            top = 1.3
            for name in names:
                data = meis[(architecture, name)]
                values = activation_by_step(data) / reference[None, :, None]
                per_step = float(data.wall_seconds.values[0]) / int(data.steps.values[0])
                measured = np.isfinite(values).reshape(values.shape[0], -1).any(1)  # EGG has no image before its 1st step
                seconds = np.arange(values.shape[0])[measured] * per_step
                median = np.nanmedian(values[measured].reshape(measured.sum(), -1), axis=1)
                ax.plot(seconds, median, color=method_colour(result, name), label=name)
                top = max(top, 1.05 * float(np.nanmax(median)))
            ax.axhline(REFERENCE_FRACTION, color="k", lw=0.6, ls="--")
            ax.set_ylim(-0.2, top)
            ax.set_xlabel("wall seconds (whole set)", fontsize=8)
            ax.set_title(f"{architecture} ensemble: {pair}", fontsize=8)
            if a == 0:
                ax.set_ylabel("activation / GA's converged", fontsize=8)
            ax.legend(fontsize=7)
    if not pairs:
        axes[0, 0].set_axis_off()
    return figure


def mei_grid_figure(meis: dict[tuple[str, str], xr.Dataset], result: xr.Dataset) -> Figure:
    """Rows = MEI neurons (first seed), columns = architecture x method; titles give the transfer score.

    The score in each title is the normalised activation on the ground truth when there is one,
    else the mean over cross-architecture scorers.
    """
    columns = list(meis)
    n_rows = min(result.sizes["neuron"], MAX_MEI_ROWS)
    target = "ground_truth" if (result.relation == "ground_truth").any() else "cross"
    figure, axes = plt.subplots(n_rows, len(columns), figsize=(1.35 * len(columns), 1.35 * n_rows + 0.6), squeeze=False,
                                layout="constrained")
    for c, (architecture, method) in enumerate(columns):
        data = meis[(architecture, method)].isel(method=0, seed=0)
        relation = result.relation.sel(architecture=architecture).values
        chosen = np.flatnonzero(relation == target)
        transfer = result.normalised_activation.sel({"architecture": architecture, "method": method}).isel(scorer=chosen, seed=0)
        transfer = transfer.mean("scorer").values if len(chosen) else np.full(result.sizes["neuron"], np.nan)
        for row in range(n_rows):
            ax = axes[row, c]
            show_image(ax, data.image_pixels.isel(neuron=row).values)
            title = f"{transfer[row]:.2f}"
            ax.set_title(f"{architecture}\n{method}  {title}" if row == 0 else title, fontsize=6)
            if c == 0:
                ax.set_ylabel(f"{data.session.values[row]}\n{data.neuron_id.values[row]}", fontsize=6)
    figure.suptitle(f"MEIs (seed {int(result.seed.values[0])}); number = {target} activation / best natural image",
                    fontsize=8)
    return figure


def similarity_figure(scores: xr.Dataset) -> Figure:
    """Heat maps of every measure and representation over pairs of models."""
    measures, representations = scores.measure.values.tolist(), scores.representation.values.tolist()
    n = scores.sizes["model_a"]
    figure, axes = plt.subplots(len(measures), len(representations),
                                figsize=(2.2 + 0.45 * n * len(representations), 0.6 + 0.45 * n * len(measures)),
                                squeeze=False, layout="constrained")
    labels = scores.model_a.values.tolist()
    for m, measure in enumerate(measures):
        for r, representation in enumerate(representations):
            ax = axes[m, r]
            values = scores.score.sel(measure=measure, representation=representation).values
            image = ax.imshow(values, cmap="viridis", vmin=np.nanmin(values) if np.isfinite(values).any() else 0,
                              vmax=np.nanmax(values) if np.isfinite(values).any() else 1)
            ax.set_xticks(range(n), labels, rotation=90, fontsize=6)
            ax.set_yticks(range(n), labels, fontsize=6)
            ax.set_title(f"{measure}, {representation}", fontsize=8)
            figure.colorbar(image, ax=ax, shrink=0.8)
    return figure
