"""MEIs by gradient ascent for every kept checkpoint, after fit: `<run>/products/<checkpoint>/mei_ga.nc` + PNG.

The same functions serve the `encoders mei` command for checkpoints trained earlier. On a
synthetic twin (a data file with ground truth) every MEI is also scored on the true neuron.

Products are skipped when they exist for the same checkpoint bytes and the same request
(fingerprint in the file's attributes), so a re-run after a crash does only what is missing,
while a retrained `last.ckpt` or changed settings make them again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pytorch_lightning as pl
import torch
import xarray as xr
from matplotlib.figure import Figure
from pytorch_lightning.utilities import rank_zero_info, rank_zero_warn
from torch import nn

from encoders.callbacks.figures import mei_figure
from encoders.datasets.io import list_sessions, read_arrays
from encoders.datasets.twin import ground_truth_columns, has_ground_truth, load_ground_truth
from encoders.ensemble import Ensemble, load_checkpoint, read_checkpoint
from encoders.errors import EncodersError
from encoders.metrics import correlation
from encoders.outputs import save_figure, write_netcdf
from encoders.synthesis.energies import GroundTruthActivation, NeuronActivation
from encoders.synthesis.gradient_ascent import GASettings, optimize_in_batches
from encoders.synthesis.methods import Synthesis, as_synthesis
from encoders.synthesis.targets import Target, check_choice, resolve_targets, top_k_targets

if TYPE_CHECKING:
    from encoders.datasets.datamodule import RecordedDataModule

CHECKPOINT_CHOICES = ("best_and_last", "best", "last", "all")
METHOD = "ga"
PRODUCTS = {"mei": "most exciting images", "meni": "most exciting naturalistic images"}


# ---- shared by the product callbacks ------------------------------------------------------------
def kept_checkpoints(trainer: pl.Trainer, which: str) -> list[Path]:
    """Checkpoint files the trainer's ModelCheckpoint kept: best and/or last, or all (best first), existing ones only."""
    if which not in CHECKPOINT_CHOICES:
        raise EncodersError(f"checkpoints must be one of {list(CHECKPOINT_CHOICES)}, got {which!r}")
    callback = trainer.checkpoint_callback
    if callback is None:
        return []
    if which == "all":
        reverse = callback.mode == "max"
        paths = sorted(callback.best_k_models, key=lambda p: float(callback.best_k_models[p]), reverse=reverse)
    else:
        paths = [callback.best_model_path] if which != "last" else []
    if which != "best":
        paths.append(callback.last_model_path)
    unique: dict[Path, None] = {}
    for path in paths:
        if path and Path(path).is_file():
            unique.setdefault(Path(path), None)
    return list(unique)


def load_models(paths: Sequence[str | Path]) -> nn.Module:
    """One checkpoint -> its model; several -> their Ensemble. Eval mode, CPU."""
    if len(paths) == 1:
        return load_checkpoint(paths[0])
    return Ensemble.from_checkpoints(paths)


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
    """
    checkpoint = read_checkpoint(path)
    digest = hashlib.sha256(json.dumps(checkpoint.get("hyper_parameters", {}), sort_keys=True, default=str).encode())
    for name, tensor in sorted(checkpoint["state_dict"].items()):
        digest.update(f"{name}:{tensor.dtype}:{tuple(tensor.shape)}".encode())
        digest.update(tensor.detach().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def existing(path: Path, key: str) -> xr.Dataset | None:
    """The product at `path`, loaded, if it exists and was made from the same fingerprint."""
    if not path.is_file():
        return None
    try:
        with xr.open_dataset(path, engine="h5netcdf") as data:
            if data.attrs.get("fingerprint") != key:
                return None
            return data.load()
    except (OSError, ValueError):  # a foreign or damaged file: make it again
        return None


def same_product_nearby(nc: Path, key: str) -> tuple[Path, xr.Dataset] | None:
    """A product of the same name and fingerprint in a sibling folder (e.g. products/best-… for products/last), loaded."""
    for other in sorted(nc.parent.parent.glob(f"*/{nc.name}")):
        if other != nc and (data := existing(other, key)) is not None:
            return other, data
    return None


def write_product(
    paths: Sequence[Path], nc: Path, request: dict, compute: Callable[[], xr.Dataset],
    draw: Callable[[xr.Dataset], Figure], describe: Callable[[xr.Dataset], str],
) -> list[Path]:
    """`nc` and its PNG for a request on checkpoints `paths`, unless they exist for the same fingerprint.

    compute() makes the labelled results, draw(results) the figure, describe(results) the log line.
    A missing PNG is redrawn from the stored NetCDF. A sibling folder's product of the same
    fingerprint (same weights and request) is copied instead of computed. Returns the PNGs written (for W&B).
    """
    key = fingerprint(paths, request)
    png = nc.with_suffix(".png")
    results = existing(nc, key)
    made = results is None
    if made:
        nearby = same_product_nearby(nc, key)
        results = nearby[1] if nearby is not None else compute()
        results.attrs.update({"checkpoint": "; ".join(str(p) for p in paths), "fingerprint": key})
        write_netcdf(results, nc)
        copied = f" (copied from {nearby[0].parent.name}: the same model)" if nearby is not None else ""
        rank_zero_info(f"{describe(results)} -> {nc}{copied}")
    if made or not png.is_file():  # also redone when a run stopped between the two writes
        save_figure(draw(results), png)
        return [png]
    return []


def model_device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


def log_wandb_images(trainer: pl.Trainer, key: str, paths: Sequence[Path]) -> None:
    """Log PNG products to every attached WandbLogger."""
    from pytorch_lightning.loggers import WandbLogger

    for logger in trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.log_image(key=key, images=[str(p) for p in paths])


class CheckpointProducts(pl.Callback):
    """Base of the product callbacks: after fit (rank 0), make products for each kept checkpoint.

    Subclasses implement `check` (validate ids before training starts) and `produce` (write one
    checkpoint's products into a folder, usually with `write_product`; return the PNGs for W&B).
    """

    name = "product"

    def __init__(self, checkpoints: str):
        if checkpoints not in CHECKPOINT_CHOICES:
            raise EncodersError(f"checkpoints must be one of {list(CHECKPOINT_CHOICES)}, got {checkpoints!r}")
        self.checkpoints = checkpoints

    def check(self, model: nn.Module, datamodule: RecordedDataModule | None) -> None:
        raise NotImplementedError

    def produce(self, paths: list[Path], model: nn.Module, datamodule: RecordedDataModule | None, folder: Path) -> list[Path]:
        raise NotImplementedError

    def on_fit_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # the model is built by now: a typo in a neuron id fails before training, not after
        self.check(pl_module, trainer.datamodule)

    def on_fit_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        paths = kept_checkpoints(trainer, self.checkpoints)
        if not paths:
            rank_zero_warn(f"{type(self).__name__}: no saved checkpoint (add a ModelCheckpoint); no {self.name}s made")
            return
        for path in paths:
            folder = Path(trainer.default_root_dir) / "products" / path.stem
            model = load_checkpoint(path).to(pl_module.device)
            figures = self.produce([path], model, trainer.datamodule, folder)
            self.log_products(trainer, path.stem, folder, figures)

    def log_products(self, trainer: pl.Trainer, stem: str, folder: Path, figures: list[Path]) -> None:
        """Send one checkpoint's new figures to W&B; subclasses may log more (tables)."""
        if figures:
            log_wandb_images(trainer, f"products/{stem}/{self.name}", figures)


# ---- MEIs ------------------------------------------------------------------------------------------
def compute_meis(
    model: nn.Module, targets: Sequence[Target], method: GASettings | Synthesis, minimize: bool = False,
) -> xr.Dataset:
    """MEIs of `targets` (one per seed), batched over neurons and seeds, as a labelled Dataset.

    method: GA settings (gradient ascent) or a Synthesis (GASynthesis / EGGSynthesis).

    Dims: method, neuron (coords session, neuron_id), seed, channel, y, x, step. Variables: image
    (model space), image_pixels (pixel space), activation (final predicted rate), trace (rate at
    the start of each step).
    """
    resolve_targets(model, targets)  # every id checked before the first step
    model.eval()
    synthesis = as_synthesis(method)
    transform = model.image_transform
    seeds = list(synthesis.seeds)
    pairs = [(target, seed) for target in targets for seed in seeds]
    result = synthesis.run(
        lambda index: NeuronActivation(model, [pairs[i][0] for i in index], minimize=minimize),
        [seed for _, seed in pairs], model,
    )
    sign = 1.0 if minimize else -1.0  # energy = -rate, or +rate for inhibitory images
    data = mei_dataset(synthesis.method, targets, seeds, result.images, sign * result.energy, sign * result.trace, transform)
    data.attrs.update(synthesis.attrs(model.input_shape))
    data.attrs["product"] = "inhibitory images" if minimize else "most exciting images"
    data.attrs["minimize"] = int(minimize)
    return data


def mei_dataset(
    method: str, targets: Sequence[Target], seeds: Sequence[int], images: torch.Tensor, activation: torch.Tensor,
    trace: torch.Tensor, transform,
) -> xr.Dataset:
    """Labelled MEIs of any method: images (targets x seeds, C, H, W) in target-major order,
    activation (targets x seeds,), trace (steps, targets x seeds)."""
    n, s = len(targets), len(seeds)
    shape = tuple(images.shape[1:])
    images = images.reshape(n, s, *shape)
    image_dims = ("method", "neuron", "seed", "channel", "y", "x")
    data = xr.Dataset(
        {
            "image": (image_dims, images[None].numpy()),
            "image_pixels": (image_dims, transform.to_pixels(images)[None].numpy()),
            "activation": (("method", "neuron", "seed"), activation.reshape(1, n, s).numpy()),
            "trace": (("method", "step", "neuron", "seed"), trace.reshape(1, -1, n, s).numpy()),
        },
        coords={
            "method": [method],
            "session": ("neuron", [t[0] for t in targets]),
            "neuron_id": ("neuron", [t[1] for t in targets]),
            "seed": list(seeds),
            "step": np.arange(trace.shape[0]),
        },
    )
    data["image"].attrs["space"] = "model input (z-scored)"
    data["image_pixels"].attrs["space"] = "pixels after the data's grayscale/crop/resize, 0..255"
    data["activation"].attrs["units"] = "predicted rate (spikes per bin)"
    data.attrs["image_transform"] = json.dumps(transform.state())
    return data


def twin_columns(path: str | Path, model: nn.Module, targets: Sequence[Target]) -> torch.Tensor:
    """Ground-truth column of each target, checking the file's sessions and neuron ids match the model's."""
    available = list_sessions(path)
    for session in dict.fromkeys(t[0] for t in targets):
        if session not in available:
            raise EncodersError(f"{path}: session {session!r} of the model is not in the data file ({available})")
        ids = [str(x) for x in read_arrays(path, session, ["neuron_id"])["neuron_id"]]
        if ids != model.neuron_ids(session):
            raise EncodersError(f"{path}: session {session!r} has other neuron ids than the model")
    columns = {s: ground_truth_columns(path, s) for s in dict.fromkeys(t[0] for t in targets)}
    return torch.stack([columns[s][model.neuron_ids(s).index(n)] for s, n in targets])


def score_on_ground_truth(results: xr.Dataset, model: nn.Module, path: str | Path, settings: GASettings) -> xr.Dataset:
    """Add the twin's view of each MEI: true rate, rate relative to the true MEI, similarity to it.

    The true MEI is found the same way as the model's (same seeds, steps, optimiser, blur, norm and
    clamp in model space), by ascending the ground truth through `to_pixels` (and a resize to the
    stored size). Per neuron the seed with the strongest true drive (the rate's tie-breaker) is THE true MEI:
    ground_truth_relative_activation = true rate of the model's MEI / true rate of the true MEI;
    true_mei_correlation = pixel correlation of each model MEI with the true MEI;
    true_mei_feature_correlation = the same in the true neuron's own view (`neuron_maps`: its
    feature mixture at each position of its receptive field);
    ground_truth_relative_drive = the relative activation in the true neuron's drive before its
    saturating output (`GroundTruthV4.drive`, z-scored): rates near `rate_max` hide how far an
    image is from the true optimum.

    same_seed_true_mei_(feature_)correlation = the same against the true MEI grown from the same
    initial noise as that model MEI (equal to the above at the seed of THE true MEI; for EGG,
    which starts from diffusion noise, it is only another pairing of seeds).

    Pixels are a poor yardstick here: the twin's neurons pool phase-invariant energies over
    positions, so their MEIs are not unique — the true MEIs of different seeds correlate with each
    other about as little as with the model's (`true_mei_self_correlation`, the mean over seed
    pairs, is the ceiling for pixels; `true_mei_self_feature_correlation` the one for features).
    Which of the equivalent optima GA reaches depends on the start, hence the same-seed scores.
    """
    targets = list(zip(results.session.values.tolist(), results.neuron_id.values.tolist()))
    columns = twin_columns(path, model, targets)
    device = model_device(model)
    truth = load_ground_truth(path).to(device)
    size = (truth.image_size, truth.image_size)
    transform = model.image_transform
    minimize = bool(results.attrs["minimize"])
    seeds = results.seed.values.tolist()
    n, s = len(targets), len(seeds)
    shape = tuple(results.image.shape[-3:])

    pair_columns = columns.repeat_interleave(s)  # image i = neuron i // s, seed i % s
    pair_seeds = [seeds[i % s] for i in range(n * s)]
    ours = results.isel(method=0)  # one method per file: ga or egg
    images = torch.as_tensor(ours.image.values).reshape(n * s, *shape)
    with torch.no_grad():
        true_rate = torch.cat([
            GroundTruthActivation(truth, pair_columns[i : i + settings.batch_size], transform, size)
            .activation(images[i : i + settings.batch_size].to(device)).cpu()
            for i in range(0, n * s, settings.batch_size)
        ]).view(n, s)

    found = optimize_in_batches(
        lambda index: GroundTruthActivation(truth, pair_columns[index], transform, size, minimize=minimize),
        pair_seeds, shape, settings, settings.pixel_range(transform), device,
    )
    found_rate = (found.energy if minimize else -found.energy).view(n, s)
    view = GroundTruthActivation(truth, pair_columns, transform, size)  # view.pixels: model space -> the twin's input
    chunk = settings.batch_size
    with torch.no_grad():  # seeds ranked by drive, which breaks the ties of rates saturated at rate_max
        found_drive = torch.cat([
            truth.drive(view.pixels(found.images[i : i + chunk].to(device))).gather(1, pair_columns[i : i + chunk, None].to(device)).cpu()
            for i in range(0, n * s, chunk)
        ]).view(n, s)
    best = found_drive.argmin(1) if minimize else found_drive.argmax(1)
    true_mei = found.images.view(n, s, *shape)[torch.arange(n), best]
    reference = found_rate[torch.arange(n), best]
    true_drive = found_drive[torch.arange(n), best][:, None]
    model_pixels = torch.as_tensor(ours.image_pixels.values)
    true_pixels = transform.to_pixels(true_mei)
    similarity = correlation(model_pixels.flatten(2), true_pixels.flatten(1)[:, None].expand(-1, s, -1), dim=2)
    with torch.no_grad():
        model_maps = truth.neuron_maps(view.pixels(images.to(device)), pair_columns).cpu().view(n, s, -1)
        found_maps = truth.neuron_maps(view.pixels(found.images.to(device)), pair_columns).cpu().view(n, s, -1)
        model_drive = truth.drive(view.pixels(images.to(device))).gather(1, pair_columns.to(device)[:, None]).cpu().view(n, s)
    true_maps = found_maps[torch.arange(n), best]
    feature_similarity = correlation(model_maps, true_maps[:, None].expand(-1, s, -1), dim=2)
    found_pixels = transform.to_pixels(found.images).view(n, s, -1)
    paired = correlation(model_pixels.flatten(2), found_pixels, dim=2)
    paired_features = correlation(model_maps, found_maps, dim=2)

    out = results.copy()
    cells = ("method", "neuron", "seed")
    out["ground_truth_activation"] = (cells, true_rate[None].numpy())
    out["ground_truth_relative_activation"] = (cells, (true_rate / reference[:, None])[None].numpy())
    out["ground_truth_relative_drive"] = (cells, (model_drive / true_drive)[None].numpy())
    out["true_mei_correlation"] = (cells, similarity[None].numpy())
    out["true_mei_feature_correlation"] = (cells, feature_similarity[None].numpy())
    out["same_seed_true_mei_correlation"] = (cells, paired[None].numpy())
    out["same_seed_true_mei_feature_correlation"] = (cells, paired_features[None].numpy())
    out["true_mei_self_correlation"] = ("neuron", _mean_pair_correlation(found_pixels).numpy())
    out["true_mei_self_feature_correlation"] = ("neuron", _mean_pair_correlation(found_maps).numpy())
    out["true_mei"] = (("neuron", "channel", "y", "x"), true_mei.numpy())
    out["true_mei_pixels"] = (("neuron", "channel", "y", "x"), true_pixels.numpy())
    out["true_mei_activation"] = ("neuron", reference.numpy())
    out["true_mei_seed"] = ("neuron", np.asarray(seeds)[best.numpy()])
    out["ground_truth_activation"].attrs["units"] = "true rate (spikes per bin)"
    out.attrs["ground_truth"] = str(path)
    return out


def ground_truth_summary(results: xr.Dataset) -> str:
    """One line of means over neurons and seeds of the twin scores added by `score_on_ground_truth`."""
    def mean(name: str) -> float:
        return float(results[name].mean())

    return (
        f"{results.attrs.get('product', 'images')} ({results.method.values[0]}) on the twin's true neurons: rate {mean('ground_truth_relative_activation'):.2f} x the true MEI's "
        f"(drive before saturation {mean('ground_truth_relative_drive'):.2f} x); "
        f"correlation with the true MEI in pixels {mean('true_mei_correlation'):.2f} (same seed {mean('same_seed_true_mei_correlation'):.2f}, "
        f"true MEIs among themselves {mean('true_mei_self_correlation'):.2f}), in the true neuron's features "
        f"{mean('true_mei_feature_correlation'):.2f} (same seed {mean('same_seed_true_mei_feature_correlation'):.2f}, "
        f"among themselves {mean('true_mei_self_feature_correlation'):.2f})"
    )


def _mean_pair_correlation(x: torch.Tensor) -> torch.Tensor:
    """Mean correlation over the distinct pairs of x's seeds, (neurons, seeds, features) -> (neurons,); NaN for one seed."""
    n, s, _ = x.shape
    if s < 2:
        return torch.full((n,), float("nan"))
    z = (x - x.mean(-1, keepdim=True)) / x.std(-1, keepdim=True).clamp_min(1e-12)
    pairs = torch.einsum("nap,nbp->nab", z, z) / (x.shape[-1] - 1)
    return (pairs.sum((1, 2)) - pairs.diagonal(dim1=1, dim2=2).sum(1)) / (s * (s - 1))


def write_meis(
    paths: Sequence[Path], model: nn.Module, folder: Path, method: GASettings | Synthesis, neurons: Sequence[Target] | None,
    top_k: int | None, datamodule: RecordedDataModule | None = None, minimize: bool = False, ground_truth: bool = True, product: str = "mei",
) -> list[Path]:
    """Make `folder/<product>_<method>.nc` (e.g. mei_ga.nc, meni_egg.nc) and its PNG unless they exist; return new PNGs.

    method: GA settings or a Synthesis (GASynthesis / EGGSynthesis). Neurons: the explicit list, or
    the top_k best predicted on the datamodule's validation tier. Ground-truth scores are added
    when the datamodule's file is a twin and `ground_truth` is on.
    """
    synthesis = as_synthesis(method)
    if product not in PRODUCTS:
        raise EncodersError(f"product must be one of {list(PRODUCTS)}, got {product!r}")
    if neurons is not None:
        resolve_targets(model, neurons)
    elif datamodule is None:
        raise EncodersError("top_k needs data (a data module or --data) to rank neurons by validation correlation")
    scored = ground_truth and datamodule is not None and has_ground_truth(datamodule.path)
    request = {
        "settings": synthesis.attrs(model.input_shape), "neurons": neurons, "top_k": top_k, "minimize": minimize,
        "ground_truth": scored, "product": product,
    }

    def compute() -> xr.Dataset:
        model.eval()
        if neurons is None:
            targets, scores = top_k_targets(model, datamodule, top_k)
        else:
            targets, scores = list(neurons), None
        if scored:
            twin_columns(datamodule.path, model, targets)  # a mismatched twin fails before the work
        results = compute_meis(model, targets, synthesis, minimize)
        if product != "mei":
            results.attrs["product"] = PRODUCTS[product]
        if scores is not None:
            results["validation_correlation"] = ("neuron", np.asarray(scores))
        if scored:
            results = score_on_ground_truth(results, model, datamodule.path, synthesis.truth_settings)
            rank_zero_info(ground_truth_summary(results))
        return results

    return write_product(
        paths, folder / f"{product}_{synthesis.method}.nc", request, compute,
        lambda results: mei_figure(results, method=synthesis.method),
        lambda results: f"{product.upper()}s ({synthesis.method}) of {results.sizes['neuron']} neurons",
    )


class MEICallback(CheckpointProducts):
    """After fit, MEIs by gradient ascent for each kept checkpoint -> `<run>/products/<ckpt>/mei_ga.nc` + PNG.

    Args:
        neurons: explicit "SESSION/NEURON_ID" list; or
        top_k: the k neurons best predicted on the validation tier (by each checkpoint's model).
        seeds, steps, optimizer, lr, normalize_gradient, blur_sigma, contrast, norm, clamp, batch_size: see GASettings.
        minimize: make inhibitory images (lowest response) instead.
        checkpoints: "best_and_last" or "all" kept by the ModelCheckpoint callback.
        ground_truth: on a synthetic twin, score MEIs on the true neurons (and find their true MEIs).
    """

    name = "mei_ga"

    def __init__(
        self,
        neurons: list[str] | None = None,
        top_k: int | None = None,
        seeds: list[int] | None = None,
        steps: int = 100,
        optimizer: str = "sgd",
        lr: float = 0.05,
        normalize_gradient: bool = True,
        blur_sigma: float = 1.0,
        contrast: float = 0.25,
        norm: float | None = None,
        clamp: bool = True,
        batch_size: int = 128,
        minimize: bool = False,
        checkpoints: str = "best_and_last",
        ground_truth: bool = True,
    ):
        super().__init__(checkpoints)
        self.targets = check_choice(neurons, top_k)
        self.top_k = top_k
        self.settings = GASettings(
            seeds=tuple(seeds) if seeds is not None else (0,), steps=steps, optimizer=optimizer, lr=lr,
            normalize_gradient=normalize_gradient, blur_sigma=blur_sigma, contrast=contrast, norm=norm, clamp=clamp, batch_size=batch_size,
        )
        self.minimize = minimize
        self.ground_truth = ground_truth

    def check(self, model: nn.Module, datamodule: RecordedDataModule | None) -> None:
        if self.targets is not None:
            resolve_targets(model, self.targets)
        elif datamodule is None:
            raise EncodersError("MEICallback with top_k needs a data module to rank neurons")

    def produce(self, paths: list[Path], model: nn.Module, datamodule: RecordedDataModule | None, folder: Path) -> list[Path]:
        return write_meis(
            paths, model, folder, self.settings, self.targets, self.top_k, datamodule, self.minimize, self.ground_truth,
        )
