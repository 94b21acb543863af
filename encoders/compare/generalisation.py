"""Do MEIs generalise beyond the models that made them? Every named method on each architecture's ensemble.

For every architecture, its GENERATING members (seeds.generating) form an ensemble that makes one
MEI set per named method (`methods`, e.g. GA and EGG at today's defaults and at the paper's
preset), MENIs (EGG at the prior's own contrast) when configured, and picks each neuron's top
natural image. Every image is then scored by every single trained model and, on a twin, by the
true neurons. Each (generating architecture, scorer) pair has a relation:

  generating    a member of the generating ensemble (the MEI was optimised on it: not a test)
  within        a held-out seed of the same architecture (never a generating member)
  cross         any member of another architecture
  ground_truth  the twin's true neurons

Activations are normalised per scorer and neuron twice: by that scorer's best response to the
natural images (validation and test tiers) at their own contrast (`normalised_activation`: 1 = as
strong as the best natural image), and at the MEIs' contrast (`matched_activation`: the natural
images rescaled to the MEIs' norm, so contrast alone cannot make an MEI win).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr

from encoders.checkpoints import load_encoder
from encoders.compare.config import CompareConfig
from encoders.compare.grid import TrainedModel
from encoders.compare.meis import make_mei_set, mei_path, seconds_one_at_a_time
from encoders.compare.scoring import GroundTruthScorer, ModelScorer
from encoders.ensemble import Ensemble
from encoders.outputs import write_netcdf
from encoders.products.store import get_or_compute
from encoders.synthesis.gradient_ascent import default_norm
from encoders.synthesis.targets import Target

if TYPE_CHECKING:
    from encoders.datasets.recording import Recording
    from encoders.synthesis import Method

RELATIONS = ("generating", "within", "cross", "ground_truth")
TRUTH = "ground_truth"
NO_SEED = -1  # scorer_seed of the ground truth
MENI = "meni"  # the method name of MENIs in the result
REFERENCE_FRACTION = 0.95  # compute is measured to this fraction of the reference (GA) method's converged activation


def relation(generator: str, scorer_architecture: str | None, scorer_seed: int | None,
             generating_seeds: Sequence[int]) -> str:
    """How a scorer relates to the ensemble that made an MEI (see the module docstring)."""
    if scorer_architecture is None:
        return "ground_truth"
    if scorer_architecture != generator:
        return "cross"
    return "generating" if scorer_seed in generating_seeds else "within"


def generating_members(trained: Sequence[TrainedModel], architecture: str, generating_seeds: Sequence[int]) -> list[TrainedModel]:
    """The members of `architecture` whose seeds generate MEIs, in seed order."""
    return sorted((m for m in trained if m.architecture == architecture and m.seed in generating_seeds),
                  key=lambda m: m.seed)


def image_methods(config: CompareConfig) -> dict[str, Method]:
    """Every set of images made per architecture: the named methods, then MENIs when configured."""
    return dict(config.methods) | ({MENI: config.meni} if config.meni is not None else {})


def scorer_table(trained: Sequence[TrainedModel], with_truth: bool) -> tuple[list[str], list[str | None], list[int]]:
    labels = [m.label for m in trained]
    architectures: list[str | None] = [m.architecture for m in trained]
    seeds = [m.seed for m in trained]
    if with_truth:
        labels.append(TRUTH)
        architectures.append(None)
        seeds.append(NO_SEED)
    return labels, architectures, seeds


def _scores(meis: xr.Dataset, scorers: dict, targets: Sequence[Target]) -> np.ndarray:
    """(scorer, neuron, seed) rate of each MEI's own neuron, for every scorer; batched over all MEIs."""
    n, s = meis.sizes["neuron"], meis.sizes["seed"]
    pixels = torch.as_tensor(meis.image_pixels.isel(method=0).values).flatten(0, 1)  # neuron-major: i = neuron*s + seed
    pair_targets = [targets[i // s] for i in range(n * s)]
    return np.stack([scorer.rates(pixels, pair_targets).view(n, s).numpy() for scorer in scorers.values()])


def _natural_tables(config: CompareConfig, scorers: dict, labels: list[str], targets: Sequence[Target],
                    recording: Recording, checkpoints: list, norm: float) -> xr.Dataset:
    """Each scorer's best natural response at the images' own contrast and at the MEIs' norm, once for all sets."""
    request = {"targets": [list(t) for t in targets], "tiers": list(config.natural_tiers), "scorers": labels,
               "data": config.data, "matched_norm": norm}

    def compute() -> xr.Dataset:
        own = np.stack([s.natural_max(recording, targets, config.natural_tiers).numpy() for s in scorers.values()])
        matched = np.stack([s.natural_max(recording, targets, config.natural_tiers, norm).numpy() for s in scorers.values()])
        natural = xr.Dataset({"natural_max": (("scorer", "neuron"), own), "natural_max_matched": (("scorer", "neuron"), matched)},
                             coords={"scorer": labels})
        tiers = "+".join(config.natural_tiers)
        natural["natural_max"].attrs["description"] = f"highest rate over the {tiers} images at their own contrast"
        natural["natural_max_matched"].attrs["description"] = f"highest rate over the {tiers} images rescaled to L2 norm {norm:.4g} (the MEIs')"
        return natural

    return get_or_compute(config.out / "scores" / "natural_max.nc", request, compute, paths=checkpoints)[0]


def _scored(config: CompareConfig, path, images: xr.Dataset, scorers: dict, labels: list[str], targets: Sequence[Target],
            seeds: Sequence[int], checkpoints: list) -> xr.Dataset:
    """The score table of one image set, made unless the store has it for these images (by their digest), their
    neurons and the scorers (the checkpoints' models and, for the truth, the data)."""
    digest = hashlib.sha256(np.ascontiguousarray(images.image_pixels.values).tobytes()).hexdigest()

    def compute() -> xr.Dataset:
        return xr.Dataset({"activation": (("scorer", "neuron", "seed"), _scores(images, scorers, targets))},
                          coords={"scorer": labels, "seed": list(seeds)})

    request = {"images": digest, "targets": [list(t) for t in targets], "scorers": labels, "data": config.data}
    return get_or_compute(path, request, compute, paths=checkpoints)[0]


def load_scorers(config: CompareConfig, trained: Sequence[TrainedModel], recording: Recording
                 ) -> tuple[dict[str, torch.nn.Module], dict]:
    """Every trained model by label, and the scorers: each model, then (on a twin, if asked) the true neurons."""
    device = torch.device(config.device)
    models = {m.label: load_encoder(m.checkpoint) for m in trained}
    scorers: dict = {label: ModelScorer(model, device) for label, model in models.items()}
    twin = recording.twin if config.ground_truth else None  # the recording resolves it once
    if twin is not None:
        scorers[TRUTH] = GroundTruthScorer(twin, next(iter(models.values())), device)
    return models, scorers


def _score_images(config: CompareConfig, name: str, architecture: str, pixels: torch.Tensor, scorers: dict,
                  labels: list[str], targets: Sequence[Target], checkpoints: list) -> np.ndarray:
    """(scorer, neuron, seed) scores of pixel images (neuron, seed, C, H, W) of each target, kept under scores/."""
    images = xr.Dataset({"image_pixels": (("method", "neuron", "seed", "channel", "y", "x"), pixels[None].numpy())})
    return _scored(config, config.out / "scores" / f"{architecture}_{name}.nc", images, scorers, labels, targets,
                   list(range(pixels.shape[1])), checkpoints).activation.values


def run_generalisation(
    config: CompareConfig, architectures: Sequence[str], trained: Sequence[TrainedModel], targets: Sequence[Target],
    recording: Recording, models: dict, scorers: dict,
) -> tuple[xr.Dataset, dict[tuple[str, str], xr.Dataset]]:
    """Make (or reuse) every MEI set and score table; returns the combined table and the MEI sets.

    Combined dims: architecture (the generating one), method (the config's names, then "meni"),
    scorer, neuron, seed; `top_natural_*` has no method or seed. `models`, `scorers`: `load_scorers`.
    """
    device = torch.device(config.device)
    labels, scorer_archs, scorer_seeds = scorer_table(trained, TRUTH in scorers)
    checkpoints = [m.checkpoint for m in trained]
    shape = tuple(next(iter(models.values())).input_shape)
    norm = default_norm(shape, config.contrast)
    natural = _natural_tables(config, scorers, labels, targets, recording, checkpoints, norm)

    methods = image_methods(config)
    names = list(methods)
    size = (len(architectures), len(names))
    activation = np.full((*size, len(labels), len(targets), len(config.mei_seeds)), np.nan)
    own = np.full((*size, len(targets), len(config.mei_seeds)), np.nan)
    seconds, steps, single = np.full(size, np.nan), np.zeros(size, dtype=int), np.full(size, np.nan)
    top_natural = np.full((len(architectures), len(labels), len(targets)), np.nan)
    top_natural_meni = np.full((len(architectures), len(labels), len(targets), len(config.mei_seeds)), np.nan)
    meis: dict[tuple[str, str], xr.Dataset] = {}
    for a, architecture in enumerate(architectures):
        members = generating_members(trained, architecture, config.generating_seeds)
        ensemble = Ensemble([models[m.label] for m in members]).eval().to(device)
        paths = [m.checkpoint for m in members]
        for k, (name, method) in enumerate(methods.items()):
            data = make_mei_set(name, method, paths, ensemble, targets, mei_path(config.out, architecture, name))
            meis[(architecture, name)] = data
            # keyed by the images' own digest: a remade set is rescored unless its images came out identical
            scored = _scored(config, config.out / "scores" / f"{architecture}_{name}.nc", data, scorers, labels, targets,
                             config.mei_seeds, checkpoints)
            activation[a, k] = scored.activation.values
            own[a, k] = data.activation.isel(method=0).values
            seconds[a, k] = float(data.wall_seconds.values[0])
            steps[a, k] = int(data.steps.values[0])
            single[a, k] = seconds_one_at_a_time(name, method, paths, ensemble, targets,
                                                 mei_path(config.out, architecture, f"{name}_one_at_a_time"))
        # the ensemble's own pick among the natural images, scored like an MEI (a MENI's yardstick)
        _, pixels = ModelScorer(ensemble, device).natural_best(recording, targets, config.natural_tiers)
        top_natural[a] = _score_images(config, "top_natural", architecture, pixels[:, None], scorers, labels, targets,
                                       checkpoints)[..., 0]
        if MENI in methods:
            # ... and the same image at each MENI's own norm: MENIs keep the prior's contrast, often not the data's
            norms = np.sqrt((meis[(architecture, MENI)].image.isel(method=0).values ** 2).sum(axis=(-3, -2, -1)))
            unit = ensemble.image_transform.from_pixels(pixels)
            unit = unit / unit.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
            rescaled = unit[:, None] * torch.as_tensor(norms, dtype=unit.dtype)[:, :, None, None, None]
            top_natural_meni[a] = _score_images(config, "top_natural_at_meni_contrast", architecture,
                                                ensemble.image_transform.to_pixels(rescaled), scorers, labels, targets,
                                                checkpoints)

    relations = [[relation(g, sa, ss, config.generating_seeds) for sa, ss in zip(scorer_archs, scorer_seeds)]
                 for g in architectures]
    fixed_contrast = np.array([not m.prior_contrast for m in methods.values()])
    result = xr.Dataset(
        {
            "activation": (("architecture", "method", "scorer", "neuron", "seed"), activation),
            "natural_max": (("scorer", "neuron"), natural.natural_max.values),
            "natural_max_matched": (("scorer", "neuron"), natural.natural_max_matched.values),
            "ensemble_activation": (("architecture", "method", "neuron", "seed"), own),
            "top_natural_activation": (("architecture", "scorer", "neuron"), top_natural),
            "top_natural_at_meni_contrast": (("architecture", "scorer", "neuron", "seed"), top_natural_meni),
            "wall_seconds": (("architecture", "method"), seconds),
            "seconds_per_mei_one_at_a_time": (("architecture", "method"), single),
            "steps": (("architecture", "method"), steps),
            "relation": (("architecture", "scorer"), np.array(relations, dtype=str)),
        },
        coords={
            "architecture": list(architectures), "method": names,
            "method_type": ("method", [MENI if n == MENI else m.name for n, m in methods.items()]),
            "scorer": labels, "scorer_architecture": ("scorer", [a or TRUTH for a in scorer_archs]),
            "scorer_seed": ("scorer", scorer_seeds), "seed": list(config.mei_seeds),
            "session": ("neuron", [t[0] for t in targets]), "neuron_id": ("neuron", [t[1] for t in targets]),
        },
    )
    result["normalised_activation"] = result.activation / result.natural_max
    # MENIs keep the prior's contrast: a matched-contrast yardstick does not apply to them
    result["matched_activation"] = (result.activation / result.natural_max_matched).where(
        xr.DataArray(fixed_contrast, dims="method"))
    result["top_natural_normalised"] = result.top_natural_activation / result.natural_max
    result["top_natural_at_meni_contrast_normalised"] = result.top_natural_at_meni_contrast / result.natural_max
    result["activation"].attrs["units"] = "rate (spikes per bin) of the MEI's own neuron, as the scorer predicts (or, ground_truth, its true rate)"
    result["normalised_activation"].attrs["description"] = "activation / the scorer's natural_max for that neuron"
    result["matched_activation"].attrs["description"] = "activation / natural_max_matched: natural images at the MEIs' norm"
    result["ensemble_activation"].attrs["description"] = "rate predicted by the generating ensemble the MEI was optimised on"
    result["top_natural_activation"].attrs["description"] = "rate of the natural image the generating ensemble rates highest"
    result["top_natural_at_meni_contrast"].attrs["description"] = "rate of that image rescaled to the norm of each seed's MENI"
    result["wall_seconds"].attrs["description"] = "wall time to make the whole MEI set (neurons x seeds) on this machine"
    result["seconds_per_mei_one_at_a_time"].attrs["description"] = (
        "wall seconds per MEI made alone (batch 1, the full step budget; the paper's compute metric), mean of the first 2 neurons")
    result.attrs.update({"generating_seeds": list(config.generating_seeds), "held_out_seeds": list(config.held_out_seeds),
                         "relations": ", ".join(RELATIONS), "config": str(config.source), "keep": config.keep,
                         "contrast": config.contrast, "mei_norm": norm})
    compute = compute_to_reference(meis, config.pairs, list(architectures))
    if compute is not None:
        result = result.merge(compute)
    write_netcdf(result, config.out / "generalisation.nc")
    return result, meis


# ---- compute: how fast does each method get there? ----------------------------------------------------------

def activation_by_step(data: xr.Dataset) -> np.ndarray:
    """(steps + 1, neuron, seed) ensemble activation after j steps (j = 0..steps); NaN where not measured.

    GA's trace holds the image's rate at the start of each step, i.e. after j steps; EGG's holds the
    rate of the x0 estimate seen at step j+1. The final image's rate counts at the last step for both.
    """
    trace = data.trace.isel(method=0).transpose("step", "neuron", "seed").values
    final = data.activation.isel(method=0).values
    steps = trace.shape[0]
    out = np.full((steps + 1, *final.shape), np.nan)
    if data.attrs.get("method_type") == "egg":
        out[1:steps] = trace[: steps - 1]
    else:
        out[:steps] = trace
    out[steps] = final
    return out


def compute_to_reference(meis: dict[tuple[str, str], xr.Dataset], pairs: dict[str, tuple[str, str]],
                         architectures: Sequence[str]) -> xr.Dataset | None:
    """Per pair (a, b) and architecture: seconds each method takes to reach REFERENCE_FRACTION of b's converged
    activation (b's final rate on the generating ensemble, mean over seeds, per neuron).

    seconds_to_reference: median over MEIs of (steps to get there) x (the set's seconds per step); inf when
    fewer than half get there. reached_reference: the fraction of MEIs that get there.
    """
    if not pairs:
        return None
    seconds = np.full((len(pairs), 2, len(architectures)), np.nan)
    reached = np.full_like(seconds, np.nan)
    for p, (first, second) in enumerate(pairs.values()):
        for a, architecture in enumerate(architectures):
            reference = REFERENCE_FRACTION * meis[(architecture, second)].activation.isel(method=0).mean("seed").values
            for side, name in enumerate((first, second)):
                data = meis[(architecture, name)]
                if data.attrs.get("method_type") == "egg" and not np.isfinite(data.attrs.get("egg_norm", np.nan)):
                    continue  # kept at the prior's contrast (MENIs): not comparable step by step
                values = activation_by_step(data)
                hit = values >= reference[None, :, None]
                step = np.where(hit.any(0), hit.argmax(0), np.inf)
                per_step = float(data.wall_seconds.values[0]) / int(data.steps.values[0])
                seconds[p, side, a] = float(np.median(step)) * per_step
                reached[p, side, a] = float(hit.any(0).mean())
    coords = {"pair": list(pairs), "side": ["first", "second"], "architecture": list(architectures)}
    out = xr.Dataset({"seconds_to_reference": (("pair", "side", "architecture"), seconds),
                      "reached_reference": (("pair", "side", "architecture"), reached)}, coords=coords)
    out["pair_methods"] = (("pair", "side"), np.array([list(v) for v in pairs.values()], dtype=str))
    out["seconds_to_reference"].attrs["description"] = (
        f"wall seconds (whole set's batch) until the median MEI reaches {REFERENCE_FRACTION} of the pair's second method's "
        "converged ensemble activation; inf = fewer than half get there")
    out["reached_reference"].attrs["description"] = f"fraction of MEIs that reach {REFERENCE_FRACTION} of that activation"
    return out


# ---- summaries --------------------------------------------------------------------------------------------

def per_unit(values: xr.DataArray, own: xr.DataArray, keep: str) -> xr.DataArray:
    """Drop the seed dim: the mean over seeds (keep="all"), or each unit's value at its best seed on the
    generating ensemble (keep="best", the paper's protocol; `own` = the ensemble's score, same dims less
    scorer), or at its worst (keep="worst": what the paper's notebook kept for GA, see `seed_rule_comparison`)."""
    if "seed" not in values.dims:
        return values
    if keep == "all":
        return values.mean("seed")
    chosen = own.fillna(-np.inf).argmax("seed") if keep == "best" else own.fillna(np.inf).argmin("seed")
    return values.isel(seed=chosen).drop_vars("seed").transpose(*[d for d in values.dims if d != "seed"])


SEED_RULES = {
    "best seed of each (this report's rule)": ("best", "best"),
    "the paper's notebook: EGG's best seed, GA's worst": ("notebook", "notebook"),
    "mean over seeds": ("all", "all"),
}


def seed_rule_comparison(result: xr.Dataset, first: str, second: str, relation_name: str) -> dict[str, dict]:
    """`first` vs `second` on one relation under each seed-selection rule in SEED_RULES.

    The paper's `notebooks/meis.ipynb` keeps per unit `groupby('unit_idx')['train'].idxmin()` for both
    methods, but its GA runs log the rate (higher = better) and its EGG runs the energy (= -rate): it kept
    GA's WORST seed and EGG's best. "notebook" applies that: best for an EGG method, worst for a GA one.
    """
    stats = {}
    for label, rules in SEED_RULES.items():
        parts = []
        for method, rule in zip((first, second), rules):
            if rule == "notebook":
                rule = "best" if str(result.method_type.sel({"method": method}).values) == "egg" else "worst"
            parts.append(per_unit(result.normalised_activation.sel({"method": [method]}),
                                  result.ensemble_activation.sel({"method": [method]}), rule))
        values = xr.concat([p.drop_vars("method_type", errors="ignore") for p in parts], dim="method")
        stats[label] = paired_comparison(values, result.relation, relation_name, first, second)
    return stats


def relation_values(values: xr.DataArray, relations: xr.DataArray, relation_name: str) -> xr.DataArray:
    """(architecture, ..., unit) mean over the scorers of one relation, per generating architecture; NaN where absent."""
    mask = xr.DataArray(relations.values == relation_name, dims=("architecture", "scorer"))
    return values.where(mask).mean("scorer", skipna=True)


def unit_values(values: xr.DataArray, relations: xr.DataArray, relation_name: str, method: str) -> np.ndarray:
    """One value per (generating architecture, unit) for `method`, averaged over that relation's scorers."""
    if not (relations == relation_name).any():
        return np.array([])
    chosen = relation_values(values.sel({"method": method}), relations, relation_name)
    present = (relations == relation_name).any("scorer").values
    return chosen.isel(architecture=np.flatnonzero(present)).values.ravel()


def paired_comparison(values: xr.DataArray, relations: xr.DataArray, relation_name: str, first: str,
                      second: str) -> dict[str, float]:
    """`first` vs `second` method on the scorers of one relation, paired per (generating architecture, unit).

    values: (architecture, method, scorer, unit) scores, seeds already reduced (`per_unit`). Returns both
    means, the mean difference, its standard error, the fraction of units where `first` wins, a two-sided
    Wilcoxon signed-rank p-value, the number of units, and per method the fraction of its generating score
    it keeps here (`kept_first`, `kept_second`: mean over units of this score / the generating score).
    """
    from scipy.stats import wilcoxon

    x, y = (unit_values(values, relations, relation_name, m) for m in (first, second))
    if not len(x):
        return {}
    own = {m: unit_values(values, relations, "generating", m) for m in (first, second)}
    keep = np.isfinite(x) & np.isfinite(y)
    difference = x[keep] - y[keep]
    n = len(difference)
    p = float(wilcoxon(x[keep], y[keep]).pvalue) if n >= 5 and np.any(difference != 0) else np.nan
    with np.errstate(divide="ignore", invalid="ignore"):
        kept = {m: float(np.nanmean(v / own[m])) if len(own[m]) == len(v) else np.nan for m, v in ((first, x), (second, y))}
    return {
        "mean_first": float(x[keep].mean()) if n else np.nan, "mean_second": float(y[keep].mean()) if n else np.nan,
        "difference": float(difference.mean()) if n else np.nan,
        "standard_error": float(difference.std(ddof=1) / np.sqrt(n)) if n > 1 else np.nan,
        "fraction_first_better": float((difference > 0).mean()) if n else np.nan, "wilcoxon_p": p, "units": n,
        "kept_first": kept[first], "kept_second": kept[second],
    }


def mei_units(result: xr.Dataset, variable: str = "normalised_activation") -> xr.DataArray:
    """(architecture, method, scorer, neuron) MEI scores with seeds reduced by the result's `keep` rule; the
    generating ensemble's top natural image joins as method "top_natural" (and, with MENIs, the same image
    at each MENI's norm as "top_natural_at_meni_contrast")."""
    keep = result.attrs.get("keep", "all")
    values = per_unit(result[variable], result.ensemble_activation, keep)
    if variable == "normalised_activation":
        parts = [values, result.top_natural_normalised.expand_dims(method=["top_natural"])]
        if MENI in result.method.values:
            # the top natural image at each MENI's norm, reduced over seeds as the MENIs are
            matched = per_unit(result.top_natural_at_meni_contrast_normalised,
                               result.ensemble_activation.sel({"method": MENI}), keep)
            parts.append(matched.expand_dims(method=["top_natural_at_meni_contrast"]))
        values = xr.concat([p.transpose(*values.dims).drop_vars("method_type", errors="ignore") for p in parts],
                           dim="method", coords="minimal", compat="override")
    return values


def relation_summary(values: xr.DataArray, relations: xr.DataArray) -> xr.DataArray:
    """Mean per (architecture, method, relation), over that relation's scorers and the units."""
    present = [r for r in RELATIONS if (relations == r).any()]
    parts = [relation_values(values, relations, r).mean(values.dims[-1]) for r in present]
    return xr.concat(parts, dim=xr.DataArray(present, dims="relation", name="relation")).transpose(
        "architecture", "method", "relation")
