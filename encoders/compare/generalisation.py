"""Do MEIs generalise beyond the models that made them? GA and EGG on each architecture's ensemble.

For every architecture, its GENERATING members (seeds.generating) form an ensemble that makes GA
and EGG MEIs of the agreed top-k neurons. Every MEI is then scored by every single trained model
and, on a twin, by the true neurons. Each (generating architecture, scorer) pair has a relation:

  generating    a member of the generating ensemble (the MEI was optimised on it: not a test)
  within        a held-out seed of the same architecture (never a generating member)
  cross         any member of another architecture
  ground_truth  the twin's true neurons

Activations are normalised per scorer and neuron by that scorer's best response to natural
images (validation and test tiers): 1 = as strong as the best natural image.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr

from encoders.compare.config import CompareConfig
from encoders.compare.grid import TrainedModel
from encoders.compare.meis import METHODS, make_mei_set, mei_path
from encoders.compare.scoring import GroundTruthScorer, ModelScorer
from encoders.checkpoints import load_encoder
from encoders.ensemble import Ensemble
from encoders.outputs import write_netcdf
from encoders.products.store import existing, fingerprint
from encoders.synthesis.targets import Target

if TYPE_CHECKING:
    from encoders.datasets.datamodule import RecordedDataModule

RELATIONS = ("generating", "within", "cross", "ground_truth")
TRUTH = "ground_truth"
NO_SEED = -1  # scorer_seed of the ground truth


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


def _scorer_table(trained: Sequence[TrainedModel], with_truth: bool) -> tuple[list[str], list[str | None], list[int]]:
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


def run_generalisation(
    config: CompareConfig, architectures: Sequence[str], trained: Sequence[TrainedModel], targets: Sequence[Target],
    datamodule: RecordedDataModule,
) -> tuple[xr.Dataset, dict[tuple[str, str], xr.Dataset]]:
    """Make (or reuse) every MEI set and score table; returns the combined table and the MEI sets.

    Combined dims: architecture (the generating one), method, scorer, neuron, seed.
    """
    device = torch.device(config.device)
    twin = datamodule.twin if config.ground_truth else None  # the data module resolves it once
    with_truth = twin is not None
    labels, scorer_archs, scorer_seeds = _scorer_table(trained, with_truth)
    models = {m.label: load_encoder(m.checkpoint) for m in trained}
    scorers: dict = {label: ModelScorer(model, device) for label, model in models.items()}
    if with_truth:
        scorers[TRUTH] = GroundTruthScorer(twin, next(iter(models.values())), device)
    checkpoints = [m.checkpoint for m in trained]

    # each scorer's best natural response, once for all MEI sets
    natural_file = config.out / "scores" / "natural_max.nc"
    natural_request = {"targets": [list(t) for t in targets], "tiers": list(config.natural_tiers), "scorers": labels,
                       "data": config.data}
    key = fingerprint(checkpoints, natural_request)
    natural = existing(natural_file, key)
    if natural is None:
        values = np.stack([scorer.natural_max(datamodule, targets, config.natural_tiers).numpy() for scorer in scorers.values()])
        natural = xr.Dataset({"natural_max": (("scorer", "neuron"), values)}, coords={"scorer": labels})
        natural["natural_max"].attrs["description"] = f"highest rate over the {'+'.join(config.natural_tiers)} images"
        natural.attrs["fingerprint"] = key
        write_netcdf(natural, natural_file)

    meis: dict[tuple[str, str], xr.Dataset] = {}
    activation = np.full((len(architectures), len(METHODS), len(labels), len(targets), len(config.mei_seeds)), np.nan)
    own = np.full((len(architectures), len(METHODS), len(targets), len(config.mei_seeds)), np.nan)
    seconds = np.full((len(architectures), len(METHODS)), np.nan)
    for a, architecture in enumerate(architectures):
        members = generating_members(trained, architecture, config.generating_seeds)
        ensemble = Ensemble([models[m.label] for m in members]).eval().to(device)
        paths = [m.checkpoint for m in members]
        for k, method in enumerate(METHODS):
            data = make_mei_set(method, paths, ensemble, targets, config.ga, config.egg, mei_path(config.out, architecture, method))
            meis[(architecture, method)] = data
            score_file = config.out / "scores" / f"{architecture}_{method}.nc"
            # the images' own digest: a remade set is rescored unless its images came out identical
            digest = hashlib.sha256(np.ascontiguousarray(data.image_pixels.values).tobytes()).hexdigest()
            score_key = fingerprint(checkpoints, {"mei": digest, "scorers": labels, "natural": key})
            scored = existing(score_file, score_key)
            if scored is None:
                scored = xr.Dataset(
                    {"activation": (("scorer", "neuron", "seed"), _scores(data, scorers, targets))},
                    coords={"scorer": labels, "seed": list(config.mei_seeds)},
                )
                scored.attrs.update({"fingerprint": score_key, "mei": str(mei_path(config.out, architecture, method))})
                write_netcdf(scored, score_file)
            activation[a, k] = scored.activation.values
            own[a, k] = data.activation.isel(method=0).values
            seconds[a, k] = float(data.wall_seconds.values[0])

    relations = [[relation(g, sa, ss, config.generating_seeds) for sa, ss in zip(scorer_archs, scorer_seeds)]
                 for g in architectures]
    result = xr.Dataset(
        {
            "activation": (("architecture", "method", "scorer", "neuron", "seed"), activation),
            "natural_max": (("scorer", "neuron"), natural.natural_max.values),
            "ensemble_activation": (("architecture", "method", "neuron", "seed"), own),
            "wall_seconds": (("architecture", "method"), seconds),
            "relation": (("architecture", "scorer"), np.array(relations, dtype=str)),
        },
        coords={
            "architecture": list(architectures), "method": list(METHODS), "scorer": labels,
            "scorer_architecture": ("scorer", [a or TRUTH for a in scorer_archs]),
            "scorer_seed": ("scorer", scorer_seeds), "seed": list(config.mei_seeds),
            "session": ("neuron", [t[0] for t in targets]), "neuron_id": ("neuron", [t[1] for t in targets]),
        },
    )
    result["normalised_activation"] = result.activation / result.natural_max
    result["activation"].attrs["units"] = "rate (spikes per bin) of the MEI's own neuron, as the scorer predicts (or, ground_truth, its true rate)"
    result["normalised_activation"].attrs["description"] = "activation / the scorer's natural_max for that neuron"
    result["ensemble_activation"].attrs["description"] = "rate predicted by the generating ensemble the MEI was optimised on"
    result["wall_seconds"].attrs["description"] = "wall time to make the whole MEI set (neurons x seeds) on this machine"
    result.attrs.update({"generating_seeds": list(config.generating_seeds), "held_out_seeds": list(config.held_out_seeds),
                         "relations": ", ".join(RELATIONS), "config": str(config.source)})
    write_netcdf(result, config.out / "generalisation.nc")
    return result, meis


def relation_summary(result: xr.Dataset) -> xr.DataArray:
    """Mean normalised activation per (architecture, method, relation), over scorers, neurons and seeds."""
    present = [r for r in RELATIONS if (result.relation == r).any()]
    values = np.full((result.sizes["architecture"], result.sizes["method"], len(present)), np.nan)
    for a in range(result.sizes["architecture"]):
        for r, name in enumerate(present):
            chosen = (result.relation.isel(architecture=a) == name).values
            if chosen.any():
                block = result.normalised_activation.isel(architecture=a, scorer=np.flatnonzero(chosen))
                values[a, :, r] = block.mean(("scorer", "neuron", "seed")).values
    return xr.DataArray(values, dims=("architecture", "method", "relation"),
                        coords={"architecture": result.architecture.values, "method": result.method.values, "relation": present},
                        name="normalised_activation")



def unit_scores(result: xr.Dataset, relation_name: str, method: str) -> np.ndarray:
    """Normalised activation per (generating architecture, neuron), averaged over that relation's scorers and seeds."""
    units = []
    for a in range(result.sizes["architecture"]):
        chosen = np.flatnonzero((result.relation.isel(architecture=a) == relation_name).values)
        if len(chosen):
            block = result.normalised_activation.isel(architecture=a, scorer=chosen).sel({"method": method})
            units.append(block.mean(("scorer", "seed")).values)
    return np.concatenate(units) if units else np.array([])


def paired_comparison(result: xr.Dataset, relation_name: str, first: str = "egg", second: str = "ga") -> dict[str, float]:
    """`first` vs `second` method on the scorers of one relation, paired per (generating architecture, neuron).

    Each unit is one neuron's MEIs from one architecture, averaged over that relation's scorers and
    the seeds. Returns both means, the mean difference, its standard error, the fraction of units
    where `first` wins, a two-sided Wilcoxon signed-rank p-value, the number of units, and for each
    method the fraction of its score on the generating models it keeps here (`kept_<method>`, the
    mean over units of this relation's score / the generating score: 1 = no loss in transfer).
    """
    from scipy.stats import wilcoxon

    x, y = unit_scores(result, relation_name, first), unit_scores(result, relation_name, second)
    if not len(x):
        return {}
    own = {m: unit_scores(result, "generating", m) for m in (first, second)}
    keep = np.isfinite(x) & np.isfinite(y)
    difference = x[keep] - y[keep]
    n = len(difference)
    p = float(wilcoxon(x[keep], y[keep]).pvalue) if n >= 5 and np.any(difference != 0) else np.nan
    return {
        f"mean_{first}": float(x[keep].mean()) if n else np.nan, f"mean_{second}": float(y[keep].mean()) if n else np.nan,
        "difference": float(difference.mean()) if n else np.nan,
        "standard_error": float(difference.std(ddof=1) / np.sqrt(n)) if n > 1 else np.nan,
        "fraction_first_better": float((difference > 0).mean()) if n else np.nan, "wilcoxon_p": p, "units": n,
        f"kept_{first}": float(np.nanmean(x / own[first])) if len(own[first]) else np.nan,
        f"kept_{second}": float(np.nanmean(y / own[second])) if len(own[second]) else np.nan,
    }
