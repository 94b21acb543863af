"""One MEI set: GA or EGG MEIs of chosen neurons on one generating ensemble, timed, written once.

`<out>/meis/<architecture>/mei_<method>.nc` has the shared MEI layout (`mei_dataset`: method,
neuron, seed, channel, y, x) plus `wall_seconds` (method): the wall time of making the whole set
on this machine. The file's fingerprint covers the generating checkpoints' bytes, the neurons and
the settings, so a re-run reuses it and a retrained member or a changed setting remakes it.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Sequence
from pathlib import Path

import torch
import xarray as xr
from torch import nn

from encoders.contract import device_of
from encoders.errors import EncodersError
from encoders.outputs import write_netcdf
from encoders.products import compute_meis
from encoders.products.store import existing, fingerprint
from encoders.synthesis.gradient_ascent import GASettings
from encoders.synthesis.methods import EGGSettings, load_prior
from encoders.synthesis.targets import Target

METHODS = ("ga", "egg")


def mei_path(out: Path, architecture: str, method: str) -> Path:
    return out / "meis" / architecture / f"mei_{method}.nc"


def egg_synthesis(egg: EGGSettings, ga: GASettings, shape: Sequence[int]) -> EGGSettings:
    """EGG with the same seeds as GA and final images rescaled to GA's image norm, so both compare fairly."""
    contrast = ga.image_norm(shape) / math.sqrt(math.prod(int(s) for s in shape))  # the norm as a per-pixel RMS
    return dataclasses.replace(egg, seeds=tuple(ga.seeds), contrast=contrast)


def make_mei_set(
    method: str, checkpoints: Sequence[Path], model: nn.Module, targets: Sequence[Target], ga: GASettings,
    egg: EGGSettings, path: Path,
) -> xr.Dataset:
    """The MEI set at `path` if it exists for these inputs, else make it (timed), write it, and return it."""
    if method not in METHODS:
        raise EncodersError(f"method must be one of {list(METHODS)}, got {method!r}")
    request = {"method": method, "targets": [list(t) for t in targets], "ga": ga.attrs(model.input_shape),
               "egg": egg.attrs(model.input_shape) if method == "egg" else None}
    key = fingerprint(checkpoints, request)
    found = existing(path, key)
    if found is not None:
        print(f"compare: {path} exists for these checkpoints and settings: kept")
        return found
    synthesis = ga if method == "ga" else egg_synthesis(egg, ga, model.input_shape)
    if method == "egg":
        load_prior(egg.prior)  # loading the prior is not timed
    start = time.perf_counter()
    data = compute_meis(model, targets, synthesis)
    seconds = time.perf_counter() - start
    if method == "egg":
        data.attrs["egg_batch_size"] = egg.batch_size
    data["wall_seconds"] = ("method", [seconds])
    data["wall_seconds"].attrs["units"] = "s, the whole set on this machine"
    data.attrs.update({"fingerprint": key, "checkpoint": [str(p) for p in checkpoints],
                       "torch_threads": torch.get_num_threads(), "device": str(device_of(model))})
    write_netcdf(data, path)
    n = data.sizes["neuron"] * data.sizes["seed"]
    print(f"compare: {method.upper()} MEIs, {n} images in {seconds:.1f} s -> {path}", flush=True)
    return data
