"""Reconstructions: the image whose predicted responses best match a test image's responses (GA or EGG)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import torch
import xarray as xr
from matplotlib.figure import Figure

from encoders.contract import ResponseModel, device_of
from encoders.errors import EncodersError
from encoders.metrics import correlation
from encoders.products.base import Product, ProductData
from encoders.products.figures import reconstruction_figure
from encoders.products.progress import Progress
from encoders.synthesis.energies import METRICS, ResponseDistance
from encoders.synthesis.gradient_ascent import GASettings
from encoders.synthesis.method import Method
from encoders.synthesis.targets import check_sessions, model_space_images

if TYPE_CHECKING:
    from encoders.datasets.recording import Recording

PREDICT_BATCH = 256  # images per forward pass when scoring reconstructions (memory bound only)
TARGETS = ("recorded", "predicted")


def choose_test_images(
    model: ResponseModel, recording: Recording, images: int | Mapping[str, Sequence[int]], sessions: Sequence[str] | None,
) -> dict[str, list[int]]:
    """Positions within each session's test tier: the first `images` of each session, or given lists.

    Every session and position is checked, with an EncodersError naming what is wrong.
    """
    if isinstance(images, Mapping):
        if sessions is not None:
            raise EncodersError("give sessions either as the keys of `images` or in `sessions`, not both")
        chosen = {str(s): [int(i) for i in index] for s, index in images.items()}
    else:
        if isinstance(images, bool) or int(images) != images or images < 1:
            raise EncodersError(f"images must be a positive count or a mapping session -> test-image positions, got {images!r}")
        chosen = {s: list(range(int(images))) for s in (sessions if sessions is not None else model.sessions)}
    if not chosen:
        raise EncodersError("no sessions chosen for reconstructions")
    check_sessions(model, list(chosen))
    for session, index in chosen.items():
        if session not in recording.sessions:
            raise EncodersError(f"session {session!r} is not in the data ({recording.sessions})")
        n_test = int((recording.tables[session].tiers == "test").sum())
        if not isinstance(images, Mapping):
            index = chosen[session] = index[:n_test]  # a count asks for at most what there is
        if not index or min(index) < 0 or max(index) >= n_test:
            raise EncodersError(f"session {session!r} has {n_test} test images; positions must lie in 0..{n_test - 1}, got {index}")
        if len(set(index)) != len(index):
            raise EncodersError(f"session {session!r}: a test image is chosen twice ({index})")
    return chosen


def compute_reconstructions(
    model: ResponseModel, recording: Recording, chosen: Mapping[str, Sequence[int]], method: Method,
    target: str = "recorded", metric: str = "mse", progress: Progress | None = None,
    stop_below: torch.Tensor | None = None,
) -> xr.Dataset:
    """Reconstruct the chosen test images of each session from their responses (one per seed).

    target: "recorded" (the data's repeat-averaged responses) or "predicted" (the model's own
    predictions for the image). Dims: method, image (coords session, image_id, test_index), seed,
    channel, y, x, neuron (coords neuron_session, neuron_id: all chosen sessions' neurons), step.
    Responses of neurons outside an image's session are NaN. stop_below (images, seeds), in the order of
    the result: each reconstruction stops once its energy is below that value (methods that can stop early;
    e.g. another method's `energy`, as the EGG paper's GD stops at EGG's loss).
    """
    if target not in TARGETS:
        raise EncodersError(f"target must be one of {list(TARGETS)}, got {target!r}")
    if metric not in METRICS:
        raise EncodersError(f"metric must be one of {list(METRICS)}, got {metric!r}")
    model.eval()
    device = device_of(model)
    shape = model.input_shape
    transform = model.image_transform
    seeds = list(method.seeds)
    s = len(seeds)
    neurons = [(session, n) for session in chosen for n in model.neuron_ids(session)]
    neuron_session = np.asarray([session for session, _ in neurons])
    rows: dict[str, list] = {k: [] for k in ("session", "image_id", "test_index", "image", "target", "recon",
                                              "predicted", "corr", "trace", "energy")}
    done = 0  # images reconstructed so far: where each session's rows of stop_below start
    total = sum(len(index) for index in chosen.values()) * s
    if stop_below is not None and tuple(stop_below.shape) != (total // s, s):
        raise EncodersError(f"stop_below must be (images, seeds) = {(total // s, s)}, got {tuple(stop_below.shape)}")
    name = method.name
    with (progress or Progress.quiet()).task(f"reconstructions ({name}) of {total // s} test images x {s} seeds", total) as advance:
        for session, index in chosen.items():
            data = model_space_images(model, recording, session, "test")
            position = torch.as_tensor(list(index))
            images = data["images"][position]
            with torch.no_grad():
                responses = model(images.to(device), session).cpu() if target == "predicted" else data["responses"][position]
            wanted = responses.repeat_interleave(s, dim=0)  # image i = test image i // s, seed i % s
            stop = None if stop_below is None else stop_below[done: done + len(index)].flatten()
            done += len(index)
            result = method.synthesize(
                lambda rows_: ResponseDistance(model, session, wanted[rows_], metric),
                [seeds[i % s] for i in range(len(wanted))], model, advance, stop,
            )
            with torch.no_grad():
                predicted = torch.cat([model(x.to(device), session).cpu() for x in result.images.split(PREDICT_BATCH)])
            k = len(index)
            columns = neuron_session == session
            rows["session"] += [session] * k
            rows["image_id"] += data["image_id"][position].tolist()
            rows["test_index"] += list(index)
            rows["image"].append(images)
            rows["target"].append(_spread(responses, columns))
            rows["recon"].append(result.images.view(k, s, *shape))
            rows["predicted"].append(_spread(predicted, columns).view(k, s, -1))
            rows["corr"].append(correlation(predicted, wanted, dim=1).view(k, s))
            rows["trace"].append(result.trace.view(-1, k, s))
            rows["energy"].append(result.energy.view(k, s))

    target_images = torch.cat(rows["image"])
    recon = torch.cat(rows["recon"])
    image_dims = ("channel", "y", "x")
    pixel_corr = correlation(transform.to_pixels(recon).flatten(2), transform.to_pixels(target_images).flatten(1)[:, None], dim=2)
    results = xr.Dataset(
        {
            "target_image": (("image", *image_dims), target_images.numpy()),
            "target_image_pixels": (("image", *image_dims), transform.to_pixels(target_images).numpy()),
            "reconstruction": (("method", "image", "seed", *image_dims), recon[None].numpy()),
            "reconstruction_pixels": (("method", "image", "seed", *image_dims), transform.to_pixels(recon)[None].numpy()),
            "target_responses": (("image", "neuron"), torch.cat(rows["target"]).numpy()),
            "predicted_responses": (("method", "image", "seed", "neuron"), torch.cat(rows["predicted"])[None].numpy()),
            "correlation": (("method", "image", "seed"), torch.cat(rows["corr"])[None].numpy()),
            "image_correlation": (("method", "image", "seed"), pixel_corr[None].numpy()),
            "trace": (("method", "step", "image", "seed"), torch.cat(rows["trace"], dim=1)[None].numpy()),
            "energy": (("method", "image", "seed"), torch.cat(rows["energy"])[None].numpy()),
        },
        coords={
            "method": [name],
            "session": ("image", rows["session"]),
            "image_id": ("image", np.asarray(rows["image_id"], dtype=np.int64)),
            "test_index": ("image", np.asarray(rows["test_index"], dtype=np.int64)),
            "seed": seeds,
            "neuron_session": ("neuron", neuron_session),
            "neuron_id": ("neuron", [n for _, n in neurons]),
            "step": np.arange(rows["trace"][0].shape[0]),
        },
    )
    for var, long_name, units in (
        ("target_image", "test image in the model's input space", "z-scored pixel"),
        ("target_image_pixels", "test image in pixel space", "pixel value (0..255)"),
        ("reconstruction", "reconstruction in the model's input space", "z-scored pixel"),
        ("reconstruction_pixels", "reconstruction in pixel space", "pixel value (0..255)"),
        ("target_responses", f"{target} responses to the test image", "spikes per bin"),
        ("predicted_responses", "predicted responses to the reconstruction", "spikes per bin"),
        ("correlation", "Pearson r over the session's neurons: predicted (reconstruction) vs target responses", "1"),
        ("image_correlation", "Pearson r over pixels: reconstruction vs target image", "1"),
        ("trace", f"energy ({metric} between predicted and target responses) at the start of each step", "1"),
        ("energy", f"energy ({metric} between predicted and target responses) of the reconstruction", "1"),
    ):
        results[var].attrs.update({"long_name": long_name, "units": units})
    results.attrs.update(method.attrs(shape))
    results.attrs.update({"product": "reconstructions", "target": target, "metric": metric})
    return results


def _spread(values: torch.Tensor, columns: np.ndarray) -> torch.Tensor:
    """(rows, session neurons) -> (rows, all neurons) with NaN outside the session's columns."""
    out = torch.full((values.shape[0], len(columns)), float("nan"))
    out[:, torch.from_numpy(columns)] = values.float()
    return out


class Reconstructions(Product):
    """Reconstructions of test images from their responses -> `reconstruction_<method>.nc` + PNG.

    Args:
        images: how many test images per session (the first ones of the test tier), or a mapping
            session -> positions within that session's test tier.
        sessions: sessions to use with a count (None = all); not with a mapping.
        target: "recorded" responses or the model's "predicted" responses to the image.
        metric: "mse" or "correlation" between predicted and target responses (see ResponseDistance).
        method: GASettings (default: 300 steps, blur 2, contrast 1 = natural images' RMS) or EGGSettings (any method).
    """

    kind = "reconstruction"

    def __init__(
        self,
        images: int | dict[str, list[int]] = 4,
        sessions: list[str] | None = None,
        target: str = "recorded",
        metric: str = "mse",
        # z-scored natural images have unit RMS on average: reconstructions match it. 300 steps with a blur
        # of 2 pixels: at 100 steps and blur 1 the images are still noise-like on the twin. (Written out here,
        # not a module constant: jsonargparse reads a call in the signature as the default class and values.)
        method: Method = GASettings(steps=300, blur_sigma=2.0, contrast=1.0),
    ):
        if target not in TARGETS:
            raise EncodersError(f"target must be one of {list(TARGETS)}, got {target!r}")
        if metric not in METRICS:
            raise EncodersError(f"metric must be one of {list(METRICS)}, got {metric!r}")
        self.images, self.sessions, self.target, self.metric, self.method = images, sessions, target, metric, method

    def stem(self) -> str:
        return f"reconstruction_{self.method.name}"

    def check(self, model: ResponseModel, data: ProductData) -> None:
        if data.recording is None:
            raise EncodersError("reconstructions need data: the test images and their responses")
        choose_test_images(model, data.recording, self.images, self.sessions)
        self.method.check_available()

    def resolved(self, model: ResponseModel, data: ProductData) -> dict:
        return {"chosen": choose_test_images(model, data.recording, self.images, self.sessions)}

    def compute(self, model: ResponseModel, data: ProductData, progress: Progress) -> xr.Dataset:
        chosen = choose_test_images(model, data.recording, self.images, self.sessions)
        return compute_reconstructions(model, data.recording, chosen, self.method, self.target, self.metric, progress)

    def figure(self, results: xr.Dataset) -> Figure:
        return reconstruction_figure(results, method=self.method.name)

    def describe(self, results: xr.Dataset) -> str:
        return (f"reconstructions ({self.method.name}) of {results.sizes['image']} test images: response r "
                f"{float(results.correlation.mean()):.2f}, pixel r {float(results.image_correlation.mean()):.2f}")
