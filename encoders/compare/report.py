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
    accuracy_figure, compute_figure, generalisation_figure, mei_grid_figure, neuron_scatter_figure, similarity_figure,
    time_figure,
)
from encoders.compare.generalisation import (
    RELATIONS, mei_units, paired_comparison, per_unit, relation_summary, seed_rule_comparison, unit_values,
)
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


RELATION_TITLES = {"generating": "generating", "within": "within (held-out seed)", "cross": "cross (other architecture)",
                   "ground_truth": "TRUE neurons"}


def method_label(result: xr.Dataset, method: str) -> str:
    """A method's name with its kind, e.g. `ga_paper` (GA)."""
    if method == "top_natural":
        return "top natural image (the ensemble's pick)"
    if method == "top_natural_at_meni_contrast":
        return "the same natural image at the MENI's contrast"
    kind = str(result.method_type.sel({"method": method}).values)
    return f"`{method}` ({'EGG MENI, prior contrast' if kind == 'meni' else kind.upper()})"


def test_relation(result: xr.Dataset) -> str:
    """The relation that answers the transfer question: the truth on a twin, else the other architectures."""
    for name in ("ground_truth", "cross", "within"):
        if (result.relation == name).any():
            return name
    return "generating"


def _pooled(values: xr.DataArray, relations: xr.DataArray, relation_name: str, method: str) -> float:
    units = unit_values(values, relations, relation_name, method)
    return float(np.nanmean(units)) if len(units) and np.isfinite(units).any() else float("nan")


def pair_of(result: xr.Dataset, method: str) -> tuple[int, int, list[str]] | None:
    """(pair index, side, the pair's two method names) of the first pair `method` belongs to, or None."""
    if "pair_methods" not in result:
        return None
    for p in range(result.sizes["pair"]):
        names = result.pair_methods.isel(pair=p).values.tolist()
        if method in names:
            return p, names.index(method), names
    return None


def seconds_to_reference(result: xr.Dataset, method: str) -> tuple[float, str]:
    """Mean over architectures of the seconds `method` takes to reach 95% of its pair's GA, and that GA's name."""
    found = pair_of(result, method)
    if found is None:
        return float("nan"), ""
    p, side, names = found
    return float(result.seconds_to_reference.isel(pair=p, side=side).mean()), names[1]


def generalisation_lines(result: xr.Dataset) -> list[str]:
    """Every method (and the ensemble's top natural image) pooled over architectures, by relation."""
    values = mei_units(result)
    matched = mei_units(result, "matched_activation")
    present = [r for r in RELATIONS if (result.relation == r).any()]
    test = test_relation(result)
    n = result.sizes["neuron"] * result.sizes["seed"]
    header = ["images", *[RELATION_TITLES[r] for r in present], f"{RELATION_TITLES[test]}, vs natural images at the MEIs' contrast",
              "seconds per MEI, batched", "seconds per MEI, one at a time", "seconds to 95% of GA"]
    rows = []
    for method in values.method.values.tolist():
        row = [method_label(result, method)] + [_fmt(_pooled(values, result.relation, r, method)) for r in present]
        if method.startswith("top_natural"):
            rows.append(row + ["—", "—", "—", "—"])
            continue
        seconds, reference = seconds_to_reference(result, method)
        single = (float(result.seconds_per_mei_one_at_a_time.sel({"method": method}).mean())
                  if "seconds_per_mei_one_at_a_time" in result else float("nan"))
        row += [_fmt(_pooled(matched, result.relation, test, method)),
                _fmt(float(result.wall_seconds.sel({"method": method}).mean()) / n, 2), _fmt(single, 2),
                "not reached" if np.isinf(seconds) else (_fmt(seconds, 1) if reference else "—")]
        rows.append(row)
    return _table(header, rows)


def per_architecture_lines(result: xr.Dataset) -> list[str]:
    """Mean normalised activation by generating architecture, method and relation."""
    summary = relation_summary(mei_units(result), result.relation)
    header = ["MEIs of", "images"] + [str(r) for r in summary.relation.values]
    rows = [[a, method_label(result, m)] + [_fmt(float(summary.sel({"architecture": a, "method": m, "relation": r})))
                                            for r in summary.relation.values]
            for a in summary.architecture.values.tolist() for m in summary.method.values.tolist()]
    return _table(header, rows)


def paired_lines(values: xr.DataArray, relations: xr.DataArray, first: str, second: str,
                 extra: dict[str, xr.DataArray] | None = None) -> tuple[list[str], dict[str, dict]]:
    """`first` vs `second`, paired per (generating architecture, unit), for every relation present (and `extra`
    score variants, e.g. matched contrast, on the test relation)."""
    stats = {r: paired_comparison(values, relations, r, first, second) for r in RELATIONS if (relations == r).any()}
    for label, (variant, relation_name) in (extra or {}).items():
        stats[label] = paired_comparison(variant, relations, relation_name, first, second)
    header = ["scored on", f"`{second}`", f"`{first}`", "difference (± s.e.)", f"`{first}` better for", "Wilcoxon p",
              "units", f"`{second}` kept", f"`{first}` kept"]
    rows = [[r, _fmt(s["mean_second"]), _fmt(s["mean_first"]), f"{_fmt(s['difference'])} ± {_fmt(s['standard_error'])}",
             f"{100 * s['fraction_first_better']:.0f}%", _fmt(s["wilcoxon_p"], 4), str(s["units"]),
             _fmt(s["kept_second"], 2), _fmt(s["kept_first"], 2)]
            for r, s in stats.items() if s]
    return _table(header, rows), stats


def answer_lines(stats: dict[str, dict], relation_name: str, first: str, second: str, what: str = "MEIs") -> list[str]:
    """One paragraph: does `first` transfer better than `second` on the test relation?"""
    s = stats.get(relation_name)
    if not s:
        return ["No held-out scorer: the transfer question cannot be answered with this grid.", ""]
    where = {"ground_truth": "the true neurons", "cross": "the other architectures' models",
             "within": "held-out seeds of the same architecture", "generating": "the generating models"}[relation_name]
    significant = np.isfinite(s["wilcoxon_p"]) and s["wilcoxon_p"] < 0.05
    if s["difference"] > 0 and significant:
        verdict = "Yes"
    elif s["difference"] < 0 and significant:
        verdict = f"No, `{second}` transfers better"
    else:
        verdict = "Not clearly (no significant difference)"
    return [
        f"**Do `{first}` {what} transfer to {where} better than `{second}`? {verdict}.** `{first}` reaches "
        f"{_fmt(s['mean_first'])} and `{second}` {_fmt(s['mean_second'])} (mean over {s['units']} units); difference "
        f"{_fmt(s['difference'])} ± {_fmt(s['standard_error'])} (s.e.), `{first}` better for "
        f"{100 * s['fraction_first_better']:.0f}% of units, Wilcoxon p = {_fmt(s['wilcoxon_p'], 4)}. Relative to their "
        f"score on the models that made them, `{first}` keeps {_fmt(s['kept_first'], 2)} and `{second}` "
        f"{_fmt(s['kept_second'], 2)}.",
        "",
    ]


def time_lines(result: xr.Dataset) -> list[str]:
    n = result.sizes["neuron"] * result.sizes["seed"]
    rows = []
    for a in result.architecture.values.tolist():
        for m in result.method.values.tolist():
            seconds = float(result.wall_seconds.sel({"architecture": a, "method": m}))
            to_reference, reference = "—", "—"
            found = pair_of(result, m)
            if found is not None:
                p, side, names = found
                value = float(result.seconds_to_reference.isel(pair=p, side=side).sel(architecture=a))
                reached = float(result.reached_reference.isel(pair=p, side=side).sel(architecture=a))
                to_reference = ("not reached" if np.isinf(value) else _fmt(value, 1)) + f" ({100 * reached:.0f}% reach it)"
                reference = f"`{names[1]}`"
            single = (float(result.seconds_per_mei_one_at_a_time.sel({"architecture": a, "method": m}))
                      if "seconds_per_mei_one_at_a_time" in result else float("nan"))
            rows.append([a, method_label(result, m), str(int(result.steps.sel({"architecture": a, "method": m}))), _fmt(seconds, 1),
                         _fmt(seconds / n, 2), _fmt(single, 2), reference, to_reference])
    return _table(["ensemble", "method", "steps", f"seconds for {n} MEIs", "seconds per MEI, batched",
                   "seconds per MEI, one at a time", "reference GA", "seconds to 95% of the reference's activation"], rows)


def reconstruction_lines(recon: xr.Dataset, pairs: dict[str, tuple[str, str]]) -> tuple[list[str], dict[str, dict]]:
    """Reconstruction scores by method and relation, then each pair of methods paired per (architecture, image)."""
    values = per_unit(recon.reconstruction_score, recon.ensemble_correlation, recon.attrs.get("keep", "all"))
    pixel = per_unit(recon.image_correlation, recon.ensemble_correlation, recon.attrs.get("keep", "all"))
    present = [r for r in RELATIONS if (recon.relation == r).any()]
    header = ["method", *[RELATION_TITLES[r] for r in present], "pixel r with the seen image", "seconds per image"]
    n = recon.sizes["image"] * recon.sizes["seed"]
    rows = [[f"`{m}`"] + [_fmt(_pooled(values, recon.relation, r, m)) for r in present]
            + [_fmt(float(pixel.sel({"method": m}).mean())), _fmt(float(recon.wall_seconds.sel({"method": m}).mean()) / n, 2)]
            for m in recon.method.values.tolist()]
    lines = _table(header, rows)
    stats = {}
    names = recon.method.values.tolist()
    for label, (first, second) in pairs.items():
        if first in names and second in names:
            table, stats[label] = paired_lines(values, recon.relation, first, second)
            lines += [f"`{first}` vs `{second}` ({label}), paired per (generating architecture, test image):", ""] + table
    return lines, stats


def similarity_lines(scores: xr.Dataset) -> list[str]:
    summary = pair_summary(scores)
    header = ["measure", "representation"] + [str(p) for p in summary.pair.values]
    rows = [[str(m) + ("" if bool(scores.higher_is_better.sel(measure=m)) else " (lower = closer)"), str(r)]
            + [_fmt(float(summary.sel(measure=m, representation=r, pair=p))) for p in summary.pair.values]
            for m in summary.measure.values for r in summary.representation.values]
    return _table(header, rows)


def brain_similarity_lines(brain: xr.Dataset) -> list[str]:
    """Per architecture, each measure's model-brain score and the PCs captured (mean ± sd over seeds); then
    the measures' rank agreement over the models and Kendall's W."""
    def spread(values: np.ndarray) -> str:
        values = values[np.isfinite(values)]
        if not len(values):
            return "—"
        return _fmt(float(values.mean())) + (f" ± {values.std(ddof=1):.3f}" if len(values) > 1 else "")

    measures = [str(m) for m in brain.measure.values]
    header = ["architecture", *[m + ("" if bool(brain.higher_is_better.sel(measure=m)) else " (lower = closer)") for m in measures],
              f"PCs captured (of {brain.sizes['component']})"]
    rows = []
    for arch in dict.fromkeys(brain.architecture.values.tolist()):
        mine = brain.architecture.values == arch
        rows.append([arch, *[spread(brain.score.sel(measure=m).values[mine]) for m in measures],
                     spread(brain.pcs_captured.values[mine])])
    lines = _table(header, rows)
    if len(measures) > 1:
        agreement = brain.rank_agreement
        lines += [f"Do the measures agree on which model is more brain-like? Spearman correlation of two measures' "
                  f"scores over the {brain.attrs['models_ranked']} models (each oriented so that higher = more "
                  f"brain-like); Kendall's W over all {len(measures)} measures = {_fmt(float(brain.attrs['kendalls_w']))} "
                  "(1 = the same order by every measure, 0 = none):", ""]
        lines += _table(["", *measures], [[m, *[_fmt(float(agreement.sel(measure=m, other_measure=o)), 2) for o in measures]]
                                          for m in measures])
    return lines


def write_report(
    config: CompareConfig, accuracy: xr.Dataset, result: xr.Dataset, meis: dict, reconstructions: xr.Dataset | None,
    similarity: xr.Dataset | None, skipped: dict[str, str], targets_score: np.ndarray,
    brain: xr.Dataset | None = None,
) -> Path:
    """Draw the figures, write report.md, and log both to W&B when configured; returns the report path."""
    figures_dir = config.out / "figures"
    figures = {
        "accuracy": save_figure(accuracy_figure(accuracy), figures_dir / "accuracy.png"),
        "neuron_scatter": save_figure(neuron_scatter_figure(accuracy, list(zip(result.session.values.tolist(), result.neuron_id.values.tolist()))),
                                      figures_dir / "neuron_scatter.png"),
        "generalisation": save_figure(generalisation_figure(result), figures_dir / "generalisation.png"),
        "time": save_figure(time_figure(result), figures_dir / "time.png"),
        "compute": save_figure(compute_figure(meis, result), figures_dir / "compute.png"),
        "meis": save_figure(mei_grid_figure(meis, result), figures_dir / "meis.png"),
    }
    if similarity is not None:
        figures["similarity"] = save_figure(similarity_figure(similarity), figures_dir / "similarity.png")
    test = test_relation(result)
    values, matched = mei_units(result), mei_units(result, "matched_activation")

    def image(name: str) -> str:
        return f"![{name}](figures/{figures[name].name})"

    keep = {"best": "each neuron's best seed on the generating ensemble (the paper's protocol; every seed is in the files)",
            "all": "the mean over seeds"}[config.keep]
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
        f"{result.sizes['seed']} seed(s) each; every method's MEIs at per-pixel contrast {config.contrast:g} "
        f"(L2 norm {result.attrs['mei_norm']:.3g} in model space); per neuron: {keep}. Activation is normalised per scorer "
        f"and neuron by that scorer's best response to the natural {'+'.join(config.natural_tiers)} images (1 = the best "
        "natural image); the *matched* column instead by the best of the same images rescaled to the MEIs' norm. "
        "Relations: *generating* = members of the ensemble the MEI was optimised on (not a test), *within* = held-out "
        "seeds of the same architecture, *cross* = models of the other architectures"
        + (", *TRUE neurons* = the twin's ground truth" if test == "ground_truth" else "")
        + ". Mean over (generating architecture, neuron) units. Compute two ways: *seconds per MEI* at each method's "
        "fixed step budget, batched (the whole set together, divided by its size) and one at a time (batch 1: the paper's "
        "metric), and *seconds to 95% of GA* = wall time (batched) until the median MEI reaches 95% of its pair's GA "
        "method's converged activation on the generating ensemble.",
        "",
    ]
    lines += generalisation_lines(result)
    lines += ["Per generating architecture:", ""] + per_architecture_lines(result)
    stats: dict[str, dict] = {}
    for label, (first, second) in config.pairs.items():
        extra = {f"{test}, matched contrast": (matched, test)}
        table, stats[label] = paired_lines(values, result.relation, first, second, extra)
        lines += [f"### `{first}` vs `{second}` ({label})", "",
                  "Paired per (generating architecture, neuron); *kept* = score here / score on the generating models, "
                  "per unit (1 = the MEI loses nothing in transfer):", ""]
        lines += table + answer_lines(stats[label], test, first, second)
        rules = seed_rule_comparison(result, first, second, test)
        stats[f"{label}_seed_rules"] = rules
        lines += [f"How much the seed selection alone changes `{first}` − `{second}` on {RELATION_TITLES[test]} "
                  "(the same MEIs, seeds chosen by their score on the generating ensemble):", ""]
        lines += _table(["seeds kept", f"`{second}`", f"`{first}`", "difference (± s.e.)", f"`{first}` better for",
                         "Wilcoxon p"],
                        [[rule, _fmt(r["mean_second"]), _fmt(r["mean_first"]),
                          f"{_fmt(r['difference'])} ± {_fmt(r['standard_error'])}",
                          f"{100 * r['fraction_first_better']:.0f}%", _fmt(r["wilcoxon_p"], 4)]
                         for rule, r in rules.items() if r])
    if config.meni is not None:
        table, stats["meni_vs_top_natural"] = paired_lines(values, result.relation, "meni", "top_natural")
        meni_rms = float(np.sqrt((np.stack([meis[(a, "meni")].image.values for a in result.architecture.values.tolist()]) ** 2)
                                 .mean(axis=(-3, -2, -1))).mean())
        lines += ["### MENIs vs the top natural image", "",
                  "EGG at the prior's own contrast (`meni`) against the natural image the same ensemble rates highest, "
                  "both scored on every model (the paper: MENIs drive neurons on par with the top natural images). "
                  f"The MENIs' mean per-pixel RMS in model space is {meni_rms:.2f} (a z-scored natural image's is about 1), "
                  "so the same image rescaled to each MENI's norm is compared too:", ""]
        lines += table + answer_lines(stats["meni_vs_top_natural"], test, "meni", "top_natural", "MENIs")
        table, stats["meni_vs_top_natural_at_meni_contrast"] = paired_lines(values, result.relation, "meni",
                                                                           "top_natural_at_meni_contrast")
        lines += table + answer_lines(stats["meni_vs_top_natural_at_meni_contrast"], test, "meni",
                                      "top_natural_at_meni_contrast", "MENIs")
    lines += [image("generalisation"), "", image("meis"), ""]
    if reconstructions is not None:
        recon_lines, stats["reconstructions"] = reconstruction_lines(reconstructions, config.reconstruction_pairs)
        settings = config.reconstructions
        lines += ["## Do reconstructions generalise?", "",
                  f"Each generating ensemble reconstructs the first {settings.images} test image(s) of "
                  f"{'each session' if not settings.sessions else 'sessions ' + ', '.join(map(str, settings.sessions))} from its own "
                  f"predicted responses ({settings.metric} energy, contrast "
                  f"{'of each method' if settings.contrast is None else format(settings.contrast, 'g')}); every model then compares "
                  "its responses to the reconstruction with its responses to the seen image (Pearson r over the session's "
                  "neurons); per image: " + ("its best seed on the generating ensemble" if config.keep == "best" else
                                             "the mean over seeds") + ".", ""] + recon_lines
    lines += ["## Compute time", "", "Wall time of making each MEI set on the generating ensemble "
              f"(device {config.device}, {result.sizes['neuron'] * result.sizes['seed']} MEIs per set, made together):", ""]
    lines += time_lines(result) + [image("time"), "", image("compute"), ""]
    if similarity is not None:
        lines += ["## Similarity of representations", "",
                  f"Mean over ordered model pairs of each kind (`a~a`: different seeds of one architecture), on the "
                  f"{similarity.attrs['tier']} images; `responses` = predicted rates (mean over sessions), `core` = "
                  "pooled, projected core features.", ""]
        lines += similarity_lines(similarity) + [image("similarity"), ""]
    if brain is not None:
        lines += ["## How brain-like is each model, and do the measures agree?", "",
                  "Each model's predicted test responses against the recorded ones (`encoders.similarity.diagnostics`, "
                  "mean over sessions), and how many of the top principal components of the responses the predictions "
                  "explain out of sample (5-fold cross-validated R² >= 0.5): what a score means (Cloos et al. 2024).", ""]
        lines += brain_similarity_lines(brain)
    lines += ["## Files", "", "`accuracy.nc` (architecture, seed, neuron), `generalisation.nc` (architecture, method, "
              "scorer, neuron, seed; compute per pair), `reconstructions.nc` (architecture, method, scorer, image, seed), "
              "`similarity.nc` (measure, representation, model_a, model_b), `brain_similarity.nc` (measure, model; "
              "rank_agreement), `meis/<arch>/mei_<method>.nc`, "
              "`reconstructions/<arch>/`, `scores/`, `models/<arch>/seed<k>/` (config.yaml: `python train.py fit --config` it to train the model alone; checkpoints, test_metrics.nc, curves/metrics.csv).", ""]
    path = config.out / REPORT
    write_text("\n".join(lines), path)
    if config.wandb is not None:
        log_wandb(config, accuracy, result, similarity, figures, stats)
    return path


def log_wandb(config: CompareConfig, accuracy: xr.Dataset, result: xr.Dataset, similarity: xr.Dataset | None,
              figures: dict[str, Path], stats: dict[str, dict]) -> None:
    """One offline W&B run with the report's tables, figures and headline numbers."""
    import wandb

    name = config.wandb.name or config.name
    run = wandb.init(project=config.wandb.project, name=f"{name}/report", group=name,
                     dir=str(config.out), mode="offline", config={"config": str(config.source)})
    try:
        run.log({f"figures/{key}": wandb.Image(str(path)) for key, path in figures.items()})
        run.log({"tables/accuracy": wandb.Table(dataframe=accuracy.correlation.to_dataframe().reset_index()),
                 "tables/generalisation": wandb.Table(
                     dataframe=relation_summary(mei_units(result), result.relation).to_dataframe().reset_index()),
                 "tables/wall_seconds": wandb.Table(dataframe=result.wall_seconds.to_dataframe().reset_index())})
        if similarity is not None:
            run.log({"tables/similarity": wandb.Table(dataframe=pair_summary(similarity).to_dataframe().reset_index())})
        for comparison, by_relation in stats.items():
            for relation, values in by_relation.items():
                for key, value in values.items():
                    run.summary[f"{comparison}/{relation}/{key}"] = value
    finally:
        run.finish()
