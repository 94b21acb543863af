"""The product store: a fingerprint of model + settings, get-or-make, and a copy for a checkpoint of the same model.

Products are skipped when they exist for the same model (weights and hyperparameters, not file
bytes) and the same request (the fingerprint in the file's attributes): a re-run after a crash
does only what is missing, a retrained `last.ckpt` or changed settings make them again, and a
checkpoint that holds the same model as another (best = last) gets a copy. Every file goes
through the one atomic writer (`encoders.outputs`).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path

import numpy as np
import torch
import xarray as xr
from matplotlib.figure import Figure

from encoders.checkpoints import read_checkpoint, upgrade
from encoders.errors import EncodersError
from encoders.outputs import save_figure, write_netcdf


def fingerprint(paths: Sequence[str | Path], request: dict) -> str:
    """sha256 of the request (settings, neuron choice) and each checkpoint's model: what a product depends on."""
    digest = hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode())
    for path in paths:
        digest.update(model_digest(path).encode())
    return digest.hexdigest()


def model_digest(path: str | Path) -> str:
    """sha256 of a checkpoint's weights and hyperparameters, not of its file.

    The file also holds optimizer, loop and callback state: the best and the last checkpoint of a
    run that improved until its end hold the same model in different bytes, and must share products.
    Cached per file version (path, mtime, size): every product of a checkpoint asks for it.
    """
    try:
        stat = Path(path).stat()
    except FileNotFoundError:
        raise EncodersError(f"{path}: checkpoint not found") from None
    return _model_digest(str(Path(path).resolve()), stat.st_mtime_ns, stat.st_size)


@functools.lru_cache(maxsize=64)
def _model_digest(path: str, mtime_ns: int, size: int) -> str:  # mtime_ns and size only key the cache
    checkpoint = upgrade(read_checkpoint(path))  # an upgraded old checkpoint is the same model as its new copy
    hparams = {k: v for k, v in checkpoint.get("hyper_parameters", {}).items() if not k.startswith("_")}
    digest = hashlib.sha256(json.dumps(hparams, sort_keys=True, default=str).encode())
    for name, tensor in sorted(checkpoint["state_dict"].items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def recorded_checkpoints(data: xr.Dataset) -> list[str]:
    """The checkpoint paths a product file records (attribute "checkpoint"), as a list.

    NetCDF has no scalar attributes: a list of one path is stored as a one-element array and read
    back as a plain string, so readers must not take the attribute as it comes.
    """
    value = data.attrs.get("checkpoint")
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    return [str(v) for v in np.atleast_1d(value)]


def recorded_models(data: xr.Dataset) -> list[str] | None:
    """The model digests (`model_digest`) of the checkpoints a product was made with, in their order;
    None for files written before products recorded them (read them from the checkpoints then)."""
    value = data.attrs.get("models")
    if value is None:
        return None
    return [value] if isinstance(value, str) else [str(v) for v in np.atleast_1d(value)]


def existing(path: Path, key: str) -> xr.Dataset | None:
    """The product at `path`, loaded, if it exists and was made from the same fingerprint.

    Its "checkpoint" attribute is a list however many checkpoints it records (see `recorded_checkpoints`).
    """
    if not path.is_file():
        return None
    try:
        with xr.open_dataset(path, engine="h5netcdf") as data:
            if data.attrs.get("fingerprint") != key:
                return None
            data = data.load()
    except (OSError, ValueError):  # a foreign or damaged file: make it again
        return None
    if "checkpoint" in data.attrs:
        data.attrs["checkpoint"] = recorded_checkpoints(data)
    if "models" in data.attrs:
        data.attrs["models"] = recorded_models(data)
    return data


def same_product_nearby(nc: Path, key: str) -> tuple[Path, xr.Dataset] | None:
    """A product of the same name and fingerprint in a sibling folder (e.g. products/best-… for products/last), loaded."""
    for other in sorted(nc.parent.parent.glob(f"*/{nc.name}")):
        if other != nc and (data := existing(other, key)) is not None:
            return other, data
    return None


def get_or_make(
    paths: Sequence[Path], nc: Path, request: dict, compute: Callable[[], xr.Dataset],
    draw: Callable[[xr.Dataset], Figure],
) -> tuple[xr.Dataset, list[Path], str]:
    """`nc` and its PNG for a request on checkpoints `paths`, unless they exist for the same fingerprint.

    compute() makes the labelled results, draw(results) the figure. A missing PNG is redrawn from
    the stored NetCDF; a sibling folder's product of the same fingerprint is copied instead of
    computed. Every product file records its checkpoints and fingerprint the same way.
    Returns the results, the PNGs written, and how they were obtained ("made", "copied from X", "kept").
    """
    key = fingerprint(paths, request)
    png = nc.with_suffix(".png")
    results = existing(nc, key)
    how = "kept"
    if results is None:
        nearby = same_product_nearby(nc, key)
        results = nearby[1] if nearby is not None else compute()
        how = f"copied from {nearby[0].parent.name} (the same model)" if nearby is not None else "made"
        results.attrs.update({"checkpoint": [str(p) for p in paths], "fingerprint": key,
                              "models": [model_digest(p) for p in paths]})
        write_netcdf(results, nc)
    if how != "kept" or not png.is_file():  # also redone when a run stopped between the two writes
        save_figure(draw(results), png)
        return results, [png], how
    return results, [], how


def get_or_compute(
    nc: Path, request: dict, compute: Callable[[], xr.Dataset], paths: Sequence[Path] = (),
) -> tuple[xr.Dataset, str]:
    """A labelled result without a figure (a twin's true MEIs, a comparison's scores), kept in `nc`.

    `nc` is read back when it exists for the same fingerprint (the request plus the models of
    checkpoints `paths`, if any), else compute() is run and written atomically. Returns the results
    and "kept" or "made". The one cache of everything that is not a product (which adds a figure).
    """
    key = fingerprint(paths, request)
    results = existing(nc, key)
    if results is not None:
        return results, "kept"
    results = compute()
    results.attrs["fingerprint"] = key
    if paths:
        results.attrs.update({"checkpoint": [str(p) for p in paths], "models": [model_digest(p) for p in paths]})
    write_netcdf(results, nc)
    return results, "made"
