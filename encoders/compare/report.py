"""The comparison report: `<out>/report.md` with PNG figures in `<out>/figures/`, and an offline W&B run.

Every number in it is read from the labelled NetCDF files next to it (accuracy.nc,
generalisation.nc, similarity.nc, meis/, scores/), so the report can be redrawn at any time.
"""

from __future__ import annotations

import datetime
from pathlib import Path

import numpy as np
import xarray as xr

from encoders.compare.config import CompareConfig
from encoders.compare.figures import (
    accuracy_figure, generalisation_figure, mei_grid_figure, neuron_scatter_figure, similarity_figure, time_figure,
)
from encoders.compare.generalisation import RELATIONS, paired_comparison, relation_summary
from encoders.compare.similarity import pair_summary
from encoders.outputs import save_figure, write_text

REPORT = "report.md"


def _fmt(value: float, digits: int = 3) -> str:
    return "—" if value is None or not np.isfinite(value) else f"{value:.{digits}f}"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return lines + [""]


def accuracy_lines(accuracy: xr.Dataset) -> list[str]:
    """Mean test correlation per architecture and session (mean ± sd over seeds)."""
    sessions = list(dict.fromkeys(accuracy.session.values.tolist()))
    twin = "ground_truth_correlation" in accuracy
    header = ["architecture", "epochs", "all sessions"] + (["vs noiseless truth"] if twin else []) + sessions
    rows = []
    for architecture in accuracy.architecture.values.tolist():
        data = accuracy.sel(architecture=architecture)

        def cell(values: np.ndarray) -> str:
            return f"{np.nanmean(values):.3f} ± {np.nanstd(values):.3f}" if np.isfinite(values).any() else "—"

        row = [architecture, " ".join(str(int(e)) for e in data.epochs.values), cell(data.correlation.mean("neuron").values)]
        if twin:
            row.append(cell(data.ground_truth_correlation.mean("neuron").values))
        row += [cell(data.correlation.where(data.session == s).mean("neuron").values) for s in sessions]
        rows.append(row)
    return _table(header, rows)


def generalisation_lines(result: xr.Dataset) -> list[str]:
    """Mean normalised activation by generating architecture, method and relation."""
    summary = relation_summary(result)
    header = ["MEIs of", "method"] + [str(r) for r in summary.relation.values]
    rows = [[a, m.upper()] + [_fmt(float(summary.sel({"architecture": a, "method": m, "relation": r}))) for r in summary.relation.values]
            for a in summary.architecture.values.tolist() for m in summary.method.values.tolist()]
    return _table(header, rows)


def comparison_lines(result: xr.Dataset) -> tuple[list[str], dict[str, dict]]:
    """EGG vs GA paired per (architecture, neuron), for every relation present."""
    stats = {r: paired_comparison(result, r) for r in RELATIONS if (result.relation == r).any()}
    header = ["scored on", "GA", "EGG", "EGG − GA (± s.e.)", "EGG better for", "Wilcoxon p", "units",
              "GA kept", "EGG kept"]
    rows = [[r, _fmt(s["mean_ga"]), _fmt(s["mean_egg"]), f"{_fmt(s['difference'])} ± {_fmt(s['standard_error'])}",
             f"{100 * s['fraction_first_better']:.0f}%", _fmt(s["wilcoxon_p"], 4), str(s["units"]),
             _fmt(s["kept_ga"], 2), _fmt(s["kept_egg"], 2)]
            for r, s in stats.items() if s]
    return _table(header, rows), stats


def answer_lines(stats: dict[str, dict], twin: bool) -> list[str]:
    """The one-paragraph answer: does EGG transfer better than GA (to the true neurons on a twin)?"""
    relation = "ground_truth" if twin and "ground_truth" in stats else ("cross" if "cross" in stats else "within")
    s = stats.get(relation)
    if not s:
        return ["No held-out scorer: the transfer question cannot be answered with this grid.", ""]
    where = {"ground_truth": "the true neurons", "cross": "the other architectures' models",
             "within": "held-out seeds of the same architecture"}[relation]
    significant = np.isfinite(s["wilcoxon_p"]) and s["wilcoxon_p"] < 0.05
    if s["difference"] > 0 and significant:
        verdict = "Yes"
    elif s["difference"] < 0 and significant:
        verdict = "No, GA transfers better"
    else:
        verdict = "Not clearly (no significant difference)"
    question = "Does EGG transfer to the true neurons better than GA?" if relation == "ground_truth" else \
        f"Does EGG transfer to {where} better than GA?"
    return [
        f"**{question} {verdict}.** On {where}, EGG MEIs reach {_fmt(s['mean_egg'])} and GA MEIs {_fmt(s['mean_ga'])} "
        f"of each neuron's best natural-image response (mean over {s['units']} architecture × neuron units); "
        f"EGG − GA = {_fmt(s['difference'])} ± {_fmt(s['standard_error'])} (s.e.), EGG better for "
        f"{100 * s['fraction_first_better']:.0f}% of units, Wilcoxon p = {_fmt(s['wilcoxon_p'], 4)}. Relative to their "
        f"score on the models that made them, EGG MEIs keep {_fmt(s['kept_egg'], 2)} and GA MEIs {_fmt(s['kept_ga'], 2)}.",
        "",
    ]


def time_lines(result: xr.Dataset) -> list[str]:
    n = result.sizes["neuron"] * result.sizes["seed"]
    seconds = result.wall_seconds.transpose("architecture", "method").values
    rows = [[a, m.upper(), f"{seconds[i, k]:.1f}", f"{seconds[i, k] / n:.2f}"]
            for i, a in enumerate(result.architecture.values.tolist()) for k, m in enumerate(result.method.values.tolist())]
    return _table(["ensemble", "method", f"seconds for {n} MEIs", "seconds per MEI"], rows)


def similarity_lines(scores: xr.Dataset) -> list[str]:
    summary = pair_summary(scores)
    header = ["measure", "representation"] + [str(p) for p in summary.pair.values]
    rows = [[str(m) + ("" if bool(scores.higher_is_better.sel(measure=m)) else " (lower = closer)"), str(r)]
            + [_fmt(float(summary.sel(measure=m, representation=r, pair=p))) for p in summary.pair.values]
            for m in summary.measure.values for r in summary.representation.values]
    return _table(header, rows)


def write_report(
    config: CompareConfig, accuracy: xr.Dataset, result: xr.Dataset, meis: dict, similarity: xr.Dataset | None,
    skipped: dict[str, str], targets_score: np.ndarray,
) -> Path:
    """Draw the figures, write report.md, and log both to W&B when configured; returns the report path."""
    figures_dir = config.out / "figures"
    figures = {
        "accuracy": save_figure(accuracy_figure(accuracy), figures_dir / "accuracy.png"),
        "neuron_scatter": save_figure(neuron_scatter_figure(accuracy, list(zip(result.session.values.tolist(), result.neuron_id.values.tolist()))),
                                      figures_dir / "neuron_scatter.png"),
        "generalisation": save_figure(generalisation_figure(result), figures_dir / "generalisation.png"),
        "time": save_figure(time_figure(result), figures_dir / "time.png"),
        "meis": save_figure(mei_grid_figure(meis, result), figures_dir / "meis.png"),
    }
    if similarity is not None:
        figures["similarity"] = save_figure(similarity_figure(similarity), figures_dir / "similarity.png")
    twin = bool((result.relation == "ground_truth").any())
    comparison, stats = comparison_lines(result)

    def image(name: str) -> str:
        return f"![{name}](figures/{figures[name].name})"

    lines = [
        f"# Architecture comparison: {config.name}",
        "",
        f"Config `{config.source}`, data `{config.data['path']}`, written {datetime.datetime.now():%Y-%m-%d %H:%M}. "
        f"Seeds {list(config.generating_seeds)} of each architecture form its generating ensemble; "
        f"seeds {list(config.held_out_seeds)} are held out.",
        "",
    ]
    for name, reason in skipped.items():
        lines += [f"- architecture `{name}` skipped: {reason}", ""]
    lines += ["## Accuracy", "", "Test correlation per neuron, mean over neurons, mean ± sd over seeds:", ""]
    lines += accuracy_lines(accuracy) + [image("accuracy"), "", image("neuron_scatter"), ""]
    lines += [
        "## Do MEIs generalise?", "",
        f"{result.sizes['neuron']} neurons (the best predicted by the worst architecture: agreed test correlation "
        f"{_fmt(float(np.nanmin(targets_score)))}–{_fmt(float(np.nanmax(targets_score)))}), "
        f"{result.sizes['seed']} seed(s) each, GA and EGG MEIs at the same image norm. Activation is normalised "
        "per scorer and neuron by that scorer's best response to the natural "
        f"{'+'.join(config.natural_tiers)} images (1 = the best natural image). Relations: *generating* = members of "
        "the ensemble the MEI was optimised on (not a test), *within* = held-out seeds of the same architecture, "
        "*cross* = models of the other architectures" + (", *ground_truth* = the twin's true neurons" if twin else "") + ".",
        "",
    ]
    lines += generalisation_lines(result) + [
        "EGG vs GA, paired per (generating architecture, neuron); *kept* = score here / score on the generating "
        "models, per unit (1 = the MEI loses nothing in transfer, whatever its strength):", ""]
    lines += comparison + answer_lines(stats, twin) + [image("generalisation"), "", image("meis"), ""]
    lines += ["## Compute time", "", "Wall time of making each MEI set on the generating ensemble "
              f"(device {config.device}):", ""] + time_lines(result) + [image("time"), ""]
    if similarity is not None:
        lines += ["## Similarity of representations", "",
                  f"Mean over ordered model pairs of each kind (`a~a`: different seeds of one architecture), on the "
                  f"{similarity.attrs['tier']} images; `responses` = predicted rates (mean over sessions), `core` = "
                  "pooled, projected core features.", ""]
        lines += similarity_lines(similarity) + [image("similarity"), ""]
    lines += ["## Files", "", "`accuracy.nc` (architecture, seed, neuron), `generalisation.nc` (architecture, method, "
              "scorer, neuron, seed), `similarity.nc` (measure, representation, model_a, model_b), `meis/<arch>/mei_<method>.nc`, "
              "`scores/`, `models/<arch>/seed<k>/` (checkpoints, test_metrics.nc, curves/metrics.csv).", ""]
    path = config.out / REPORT
    write_text("\n".join(lines), path)
    if config.wandb is not None:
        log_wandb(config, accuracy, result, similarity, figures, stats)
    return path


def log_wandb(config: CompareConfig, accuracy: xr.Dataset, result: xr.Dataset, similarity: xr.Dataset | None,
              figures: dict[str, Path], stats: dict[str, dict]) -> None:
    """One offline W&B run with the report's tables, figures and headline numbers."""
    import wandb

    name = config.wandb.get("name", config.name)
    run = wandb.init(project=config.wandb.get("project", "encoders"), name=f"{name}/report", group=name,
                     dir=str(config.out), mode="offline", config={"config": str(config.source)})
    try:
        run.log({f"figures/{key}": wandb.Image(str(path)) for key, path in figures.items()})
        run.log({"tables/accuracy": wandb.Table(dataframe=accuracy.correlation.to_dataframe().reset_index()),
                 "tables/generalisation": wandb.Table(dataframe=relation_summary(result).to_dataframe().reset_index()),
                 "tables/wall_seconds": wandb.Table(dataframe=result.wall_seconds.to_dataframe().reset_index())})
        if similarity is not None:
            run.log({"tables/similarity": wandb.Table(dataframe=pair_summary(similarity).to_dataframe().reset_index())})
        for relation, values in stats.items():
            for key, value in values.items():
                run.summary[f"egg_vs_ga/{relation}/{key}"] = value
    finally:
        run.finish()
