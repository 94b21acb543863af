"""One MEI set: GA or EGG MEIs of chosen neurons on one generating ensemble, timed, written once.

`<out>/meis/<architecture>/mei_<method>.nc` has the shared MEI layout (`mei_dataset`: method,
neuron, seed, channel, y, x) plus `wall_seconds` (method): the wall time of making the whole set
on this machine. The file's fingerprint covers the generating checkpoints' bytes, the neurons and
the settings, so a re-run reuses it and a retrained member or a changed setting remakes it.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import asdict
from pathlib import Path

import torch
import xarray as xr
from torch import nn

from encoders.callbacks.mei import compute_meis, existing, fingerprint, mei_dataset, model_device
from encoders.compare.config import EGGConfig
from encoders.errors import EncodersError
from encoders.outputs import write_netcdf
from encoders.synthesis.energies import NeuronActivation
from encoders.synthesis.gradient_ascent import GASettings
from encoders.synthesis.guided_diffusion import egg_sample
from encoders.synthesis.prior import DiffusionPrior, ModelSpace
from encoders.synthesis.targets import Target

METHODS = ("ga", "egg")


def mei_path(out: Path, architecture: str, method: str) -> Path:
    return out / "meis" / architecture / f"mei_{method}.nc"


def egg_meis(model: nn.Module, targets: Sequence[Target], ga: GASettings, egg: EGGConfig, prior: DiffusionPrior) -> xr.Dataset:
    """EGG MEIs of `targets` (one per seed in ga.seeds), rescaled to the GA norm so both methods compare fairly.

    Pairs (neuron, seed) are sampled egg.batch_size at a time; sample b depends only on its own seed
    and energy term, so chunking does not change the result.
    """
    model.eval()
    seeds = list(ga.seeds)
    pairs = [(target, seed) for target in targets for seed in seeds]
    norm = ga.image_norm(model.input_shape)
    adapter = ModelSpace.of(model, norm if egg.guide_at_final_norm else None)
    images, energy, trace = [], [], []
    for start in range(0, len(pairs), egg.batch_size):
        chunk = pairs[start : start + egg.batch_size]
        result = egg_sample(
            prior, NeuronActivation(model, [t for t, _ in chunk]), len(chunk), num_steps=egg.num_steps,
            energy_scale=egg.energy_scale, seeds=[s for _, s in chunk], norm=norm, adapter=adapter,
        )
        images.append(result.images)
        energy.append(result.energy)
        trace.append(result.trace)
    data = mei_dataset("egg", targets, seeds, torch.cat(images), -torch.cat(energy), -torch.cat(trace, dim=1),
                       model.image_transform)
    data.attrs.update({f"egg_{k}": (int(v) if isinstance(v, bool) else v) for k, v in asdict(egg).items()})
    data.attrs.update({"egg_norm": norm, "product": "most exciting images", "minimize": 0})
    return data


def make_mei_set(
    method: str, checkpoints: Sequence[Path], model: nn.Module, targets: Sequence[Target], ga: GASettings,
    egg: EGGConfig, path: Path,
) -> xr.Dataset:
    """The MEI set at `path` if it exists for these inputs, else make it (timed), write it, and return it."""
    if method not in METHODS:
        raise EncodersError(f"method must be one of {list(METHODS)}, got {method!r}")
    request = {"method": method, "targets": [list(t) for t in targets], "ga": ga.attrs(model.input_shape),
               "egg": asdict(egg) if method == "egg" else None}
    key = fingerprint(checkpoints, request)
    found = existing(path, key)
    if found is not None:
        print(f"compare: {path} exists for these checkpoints and settings: kept")
        return found
    if method == "egg":
        prior = DiffusionPrior.load(egg.prior, device=model_device(model))  # loading is not part of the method's time
    start = time.perf_counter()
    data = compute_meis(model, targets, ga) if method == "ga" else egg_meis(model, targets, ga, egg, prior)
    seconds = time.perf_counter() - start
    data["wall_seconds"] = ("method", [seconds])
    data["wall_seconds"].attrs["units"] = "s, the whole set on this machine"
    data.attrs.update({"fingerprint": key, "checkpoint": "; ".join(str(p) for p in checkpoints),
                       "torch_threads": torch.get_num_threads(), "device": str(model_device(model))})
    write_netcdf(data, path)
    n = data.sizes["neuron"] * data.sizes["seed"]
    print(f"compare: {method.upper()} MEIs, {n} images in {seconds:.1f} s -> {path}", flush=True)
    return data
