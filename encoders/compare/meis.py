"""One MEI set: one named method's MEIs of chosen neurons on one generating ensemble, timed, kept in the product store.

`<out>/meis/<architecture>/mei_<name>.nc` has the shared MEI layout (`mei_dataset`: method,
neuron, seed, channel, y, x, step; the method coordinate is the spec's name) plus `wall_seconds`
(method): the wall time of making the whole set on this machine, and `steps`. The store's
fingerprint covers the generating checkpoints' models, the neurons and the method's settings, so a
re-run reuses the set and a retrained member or a changed setting remakes it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import xarray as xr
from torch import nn

from encoders.contract import device_of
from encoders.products import compute_meis
from encoders.products.store import get_or_compute
from encoders.synthesis.targets import Target


def mei_path(out: Path, architecture: str, name: str) -> Path:
    return out / "meis" / architecture / f"mei_{name}.nc"


def timed_set(name: str, method, checkpoints: Sequence[Path], request: dict, path: Path,
              make: Callable[[], xr.Dataset]) -> tuple[xr.Dataset, bool]:
    """The set at `path` if the store has it for these checkpoints and `request`, else `make()` it, timed and
    labelled with the method's spec name and wall time. Returns it and whether it was made."""

    def compute() -> xr.Dataset:
        method.check_available()  # loads an EGG prior: not timed
        start = time.perf_counter()
        data = make()
        seconds = time.perf_counter() - start
        data = data.assign_coords(method=[name])
        data["wall_seconds"] = ("method", [seconds])
        data["wall_seconds"].attrs["units"] = "s, the whole set on this machine"
        data.attrs.update({"method_type": method.name, "torch_threads": torch.get_num_threads()})
        return data

    data, how = get_or_compute(path, request, compute, paths=checkpoints)
    if how == "kept":
        print(f"compare: {path} exists for these checkpoints and settings: kept")
    return data, how == "made"


def make_mei_set(
    name: str, method, checkpoints: Sequence[Path], model: nn.Module, targets: Sequence[Target], path: Path,
) -> xr.Dataset:
    """The MEI set at `path` if it exists for these inputs, else make it (timed), write it, and return it.

    `name` is the method's name in the spec (the `method` coordinate of the file).
    """
    request = {"name": name, "targets": [list(t) for t in targets], "settings": method.key(model.input_shape)}
    steps = method.step_count

    def make() -> xr.Dataset:
        data = compute_meis(model, targets, method)
        data["steps"] = ("method", [steps])
        data["steps"].attrs["long_name"] = "optimisation (GA) or diffusion (EGG) steps; each step costs the same"
        data.attrs["device"] = str(device_of(model))
        return data

    data, made = timed_set(name, method, checkpoints, request, path, make)
    if made:
        n = data.sizes["neuron"] * data.sizes["seed"]
        print(f"compare: {name} MEIs, {n} images in {float(data.wall_seconds.values[0]):.1f} s -> {path}", flush=True)
    return data


ONE_AT_A_TIME = 2  # MEIs timed one at a time per set (the paper's metric: seconds per MEI at a fixed budget)


def seconds_one_at_a_time(name: str, method, checkpoints: Sequence[Path], model: nn.Module, targets: Sequence[Target],
                          path: Path) -> float:
    """Wall seconds per MEI made one at a time (batch 1, the method's full budget of steps), as the paper's
    notebook measures compute: the first ONE_AT_A_TIME neurons, the method's first seed; kept in the store."""
    single = method.replace(seeds=method.seeds[:1], batch_size=1)
    chosen = list(targets[:ONE_AT_A_TIME])
    data = make_mei_set(name, single, checkpoints, model, chosen, path)
    return float(data.wall_seconds.values[0]) / len(chosen)
