"""Gradient descent on pixels of a batch of images, one energy value per image (MEIs, reconstructions).

Each step: energy -> gradient w.r.t. the images -> Gaussian blur of the GRADIENT (a preconditioner
that favours smooth, low-frequency changes without blurring the image itself) -> optimiser step ->
every image rescaled to a fixed L2 norm -> optional clamp to the range real pixels can take.

Images are independent: image b starts from standard-normal noise drawn from its own seed, its
gradient depends only on its own energy value (energies sum per-image terms; models in eval mode)
and SGD / Adam act elementwise. A batched run therefore gives the same image as a run of that
image alone, up to float rounding, which is what makes batching over neurons and seeds safe.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from encoders.contract import device_of
from encoders.errors import EncodersError
from encoders.synthesis.blur import gaussian_blur
from encoders.synthesis.method import Energy, Method, SynthesisResult, generators

OPTIMIZERS = ("sgd", "adamw")
SCHEDULES = ("constant", "cosine")  # the step size over the steps: fixed, or cosine-annealed from lr to 0
PARAMETRIZATIONS = ("pixels", "blurred")
DEFAULT_CONTRAST = 0.25  # per-pixel RMS in z-scored units: L2 norm 25 for 100x100 grey images, as in the paper

def default_norm(shape: Sequence[int], contrast: float = DEFAULT_CONTRAST) -> float:
    """L2 norm of a (C, H, W) model-space image whose per-pixel RMS is `contrast`.

    norm = contrast * sqrt(C * H * W): 25 for a 1x100x100 image at the default 0.25, and the same
    contrast (not the same total norm) at every size and channel count, so MEIs of models on
    differently sized inputs are comparable.
    """
    return float(contrast) * math.sqrt(math.prod(int(s) for s in shape))


def initial_images(n_images: int, shape: Sequence[int], seeds: Sequence[int] | int) -> torch.Tensor:
    """(n_images, *shape) standard-normal noise, image b drawn from a generator seeded with seeds[b]."""
    images = torch.empty((n_images, *shape))
    for b, generator in enumerate(generators(seeds, n_images)):
        images[b] = torch.randn(tuple(shape), generator=generator)
    return images


@dataclass
class GradientAscentResult:
    """What an optimisation returns (CPU tensors).

    images: (B, C, H, W) final model-space images.
    energy: (B,) energy of the final images.
    trace: (steps, B) energy at the start of each step (trace[0] = the initial noise).
    norm_trace: (steps, B) L2 norm of each image after each step's rescale and clamp.
    """

    images: torch.Tensor
    energy: torch.Tensor
    trace: torch.Tensor
    norm_trace: torch.Tensor


def _project(images: torch.Tensor, norm: float | None, pixel_range: tuple[float, float] | None) -> None:
    """In place: rescale each image to L2 `norm`, then clamp (after which the norm is an upper bound)."""
    if norm is not None:
        current = images.flatten(1).norm(dim=1).clamp_min(1e-12)
        images.mul_((norm / current).view(-1, *([1] * (images.ndim - 1))))
    if pixel_range is not None:
        images.clamp_(pixel_range[0], pixel_range[1])


def optimize_images(
    energy: Energy,
    n_images: int,
    shape: Sequence[int],
    seeds: Sequence[int] | int,
    steps: int,
    optimizer: str = "sgd",
    lr: float = 0.05,
    blur_sigma: float = 1.0,
    norm: float | None = None,
    pixel_range: tuple[float, float] | None = None,
    device: str | torch.device = "cpu",
    normalize_gradient: bool = True,
    parametrization: str = "pixels",
    stop_below: torch.Tensor | None = None,
    schedule: str = "constant",
) -> GradientAscentResult:
    """Minimise `energy` over a batch of images by preconditioned gradient descent on pixels.

    Args:
        energy: images (n_images, *shape) -> (n_images,), differentiable.
        shape: (C, H, W) of one image, in the energy's (model's) input space.
        seeds: one per image, or one int for every image (then all images start from the same noise).
        steps: fixed number of optimiser steps.
        optimizer: "sgd" or "adamw" (Adam without weight decay: the norm constraint already fixes
            the image scale).
        blur_sigma: std (pixels) of the Gaussian applied to the gradient before each step; 0 = none.
        norm: L2 norm every image is rescaled to after every step (and at the start); None = free.
            `default_norm(shape)` gives the paper's rule.
        pixel_range: (low, high) clamp after the rescale, e.g. what the data's pixels can represent.
        device: where the optimisation runs; the energy's model must be there.
        normalize_gradient: divide each image's blurred gradient by its per-pixel RMS, so that an
            SGD step moves pixels by `lr` (RMS, model units) whatever the energy's scale: one lr
            then serves a model's rates, a twin's true rates and response distances alike.
        parametrization: "pixels" (the above) or "blurred": the optimiser moves a free parameter p
            (the starting noise, not rescaled) and the image is blur(p) rescaled to `norm` (then clamped),
            computed in the forward pass so the energy's gradient flows through blur and norm (the EGG
            paper's reconstructions, `scripts/reconstruct_gd.py`); the gradient is not blurred again.
        stop_below: (n_images,) energies; image b stops changing at the first step that starts below
            stop_below[b] (its trace then stays flat): the paper's GD reconstructions stop once their
            loss is below EGG's. None: every image runs all steps.
        schedule: "constant" (every step at lr) or "cosine": step s at lr * (1 + cos(pi s / steps)) / 2, so the
            images settle at the end (needed where the optimum is a boundary the gradient never vanishes on,
            as varied exciting images sit on their activation floor while their diversity still pulls).
    """
    if schedule not in SCHEDULES:
        raise EncodersError(f"schedule must be one of {list(SCHEDULES)}, got {schedule!r}")
    if parametrization not in PARAMETRIZATIONS:
        raise EncodersError(f"parametrization must be one of {list(PARAMETRIZATIONS)}, got {parametrization!r}")
    if optimizer not in OPTIMIZERS:
        raise EncodersError(f"optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
    if steps < 0:
        raise EncodersError(f"steps must be >= 0, got {steps}")
    if not lr > 0:
        raise EncodersError(f"lr must be positive, got {lr}")
    if norm is not None and not norm > 0:
        raise EncodersError(f"norm must be positive (or None for no constraint), got {norm}")
    if pixel_range is not None and not pixel_range[0] < pixel_range[1]:
        raise EncodersError(f"pixel_range must be (low, high) with low < high, got {pixel_range}")

    # products run from callbacks that Lightning may call inside inference mode
    if stop_below is not None and tuple(stop_below.shape) != (n_images,):
        raise EncodersError(f"stop_below must be ({n_images},) energies, got shape {tuple(stop_below.shape)}")
    with torch.inference_mode(False), torch.enable_grad():
        images = initial_images(n_images, shape, seeds).to(device)
        stop = None if stop_below is None else stop_below.to(device=device, dtype=images.dtype)
        if parametrization == "blurred":
            return _descend_blurred(energy, images, steps, optimizer, lr, blur_sigma, norm, pixel_range, normalize_gradient, stop,
                                    schedule)
        with torch.no_grad():
            _project(images, norm, pixel_range)
        return _descend(energy, images, steps, optimizer, lr, blur_sigma, norm, pixel_range, normalize_gradient, stop, schedule)


def _optimizer(parameter: torch.Tensor, optimizer: str, lr: float) -> torch.optim.Optimizer:
    if optimizer == "sgd":
        return torch.optim.SGD([parameter], lr=lr)
    return torch.optim.AdamW([parameter], lr=lr, weight_decay=0.0)


def _schedule(opt: torch.optim.Optimizer, schedule: str, lr: float, step: int, steps: int) -> None:
    """Set the step size of step `step` of `steps` (see `optimize_images`)."""
    if schedule == "cosine":
        for group in opt.param_groups:
            group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))


def _normalised(gradient: torch.Tensor) -> torch.Tensor:
    rms = gradient.flatten(1).pow(2).mean(1).sqrt().clamp_min(1e-20)
    return gradient / rms.view(-1, *([1] * (gradient.ndim - 1)))


def _descend_blurred(
    energy: Energy, parameter: torch.Tensor, steps: int, optimizer: str, lr: float, blur_sigma: float,
    norm: float | None, pixel_range: tuple[float, float] | None, normalize_gradient: bool, stop: torch.Tensor | None,
    schedule: str = "constant",
) -> GradientAscentResult:
    """`optimize_images` with parametrization="blurred": image = clamp(rescale(blur(parameter)))."""
    n_images = parameter.shape[0]

    def image_of(p: torch.Tensor) -> torch.Tensor:
        image = gaussian_blur(p, blur_sigma)
        if norm is not None:
            image = image * (norm / image.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, *([1] * (image.ndim - 1)))
        return image.clamp(*pixel_range) if pixel_range is not None else image

    parameter.requires_grad_(True)
    opt = _optimizer(parameter, optimizer, lr)
    trace, norm_trace = torch.empty(steps, n_images), torch.empty(steps, n_images)
    for step in range(steps):
        image = image_of(parameter)
        value = energy(image)
        if value.shape != (n_images,):
            raise ValueError(f"the energy must return ({n_images},) values, got {tuple(value.shape)}")
        (gradient,) = torch.autograd.grad(value.sum(), parameter)
        trace[step] = value.detach().cpu()
        norm_trace[step] = image.detach().flatten(1).norm(dim=1).cpu()
        if _all_stopped(value, stop, trace, norm_trace, step):
            break
        parameter.grad = _normalised(gradient) if normalize_gradient else gradient
        restore = _freeze(parameter, value, stop)
        _schedule(opt, schedule, lr, step, steps)
        opt.step()
        restore()
    with torch.no_grad():
        images = image_of(parameter)
        final = energy(images).detach().cpu()
    return GradientAscentResult(images=images.detach().cpu(), energy=final, trace=trace, norm_trace=norm_trace)


def _all_stopped(value: torch.Tensor, stop: torch.Tensor | None, trace: torch.Tensor, norm_trace: torch.Tensor,
                 step: int, norms: torch.Tensor | None = None) -> bool:
    """Whether every image is below its `stop` at this step; then the traces keep these values to the end."""
    if stop is None or not bool((value.detach() < stop).all()):
        return False
    trace[step:] = value.detach().cpu()
    norm_trace[step:] = norm_trace[step] if norms is None else norms
    return True


def _freeze(tensor: torch.Tensor, value: torch.Tensor, stop: torch.Tensor | None) -> Callable[[], None]:
    """Before a step: what puts back the rows whose energy is already below `stop` (they have stopped for good;
    a frozen row's energy no longer changes, so it stays below). Call it after the step and any projection."""
    if stop is None:
        return lambda: None
    stopped = value.detach() < stop
    kept = tensor.detach()[stopped].clone()

    def restore() -> None:
        with torch.no_grad():
            tensor[stopped] = kept

    return restore


def _descend(
    energy: Energy, images: torch.Tensor, steps: int, optimizer: str, lr: float, blur_sigma: float,
    norm: float | None, pixel_range: tuple[float, float] | None, normalize_gradient: bool, stop: torch.Tensor | None = None,
    schedule: str = "constant",
) -> GradientAscentResult:
    n_images = images.shape[0]
    images.requires_grad_(True)
    opt = _optimizer(images, optimizer, lr)
    trace = torch.empty(steps, n_images)
    norm_trace = torch.empty(steps, n_images)
    for step in range(steps):
        value = energy(images)
        if value.shape != (n_images,):
            raise ValueError(f"the energy must return ({n_images},) values, got {tuple(value.shape)}")
        # autograd.grad, not backward: the model's parameters accumulate no gradients
        (gradient,) = torch.autograd.grad(value.sum(), images)
        trace[step] = value.detach().cpu()
        if _all_stopped(value, stop, trace, norm_trace, step, images.detach().flatten(1).norm(dim=1).cpu()):
            break
        gradient = gaussian_blur(gradient, blur_sigma)
        images.grad = _normalised(gradient) if normalize_gradient else gradient
        restore = _freeze(images, value, stop)
        _schedule(opt, schedule, lr, step, steps)
        opt.step()
        with torch.no_grad():
            _project(images, norm, pixel_range)
        restore()  # after the projection too: rescaling a clamped image again moves it
        norm_trace[step] = images.detach().flatten(1).norm(dim=1).cpu()
    images.requires_grad_(False)
    with torch.no_grad():
        final = energy(images).detach().cpu()
    return GradientAscentResult(images=images.detach().cpu(), energy=final, trace=trace, norm_trace=norm_trace)


class GASettings(Method):
    """Gradient ascent on pixels (a product's `method`), its settings stored with its results.

    Args:
        seeds: initial-noise seeds; every target is optimised once per seed.
        steps: optimiser steps.
        optimizer: "sgd" or "adamw" (Adam without weight decay: the norm constraint fixes the scale).
        lr, normalize_gradient: with the default normalised SGD, each step moves pixels by lr (RMS).
        lr_pixels: lr is given for images of this many values (C*H*W; the paper's 1x100x100 = 10000) and
            the step used is lr * C*H*W / lr_pixels (`step_size`). For SGD on the raw gradient only: the
            same image sampled at n times the pixels has a gradient sqrt(n) times shorter and a norm
            sqrt(n) times longer at the same contrast, so this keeps each step's displacement the same
            fraction of the image norm at any resolution. None: lr as given.
        blur_sigma: std (pixels) of the Gaussian applied to the gradient; 0 = none.
        contrast: per-pixel RMS the image norm is set to (`default_norm`); `norm` overrides it.
        norm: L2 norm of every image, or None for contrast * sqrt(C*H*W).
        clamp: clamp to the model-space range of pixel values 0..255 (see `pixel_range`).
        batch_size: images optimised together (memory bound); results do not depend on it.
        schedule: "constant" or "cosine" (the step size annealed from lr to 0 over the steps; varied exciting images).
    """

    name = "ga"
    # what the optimiser moves (`optimize_images`): the pixels, or a parameter blurred and rescaled in the forward
    # pass (a preset's class property, named by its class in every file: `presets.GDReconstructionPaper`)
    parametrization = "pixels"
    stops_early = True

    def __init__(
        self,
        seeds: tuple[int, ...] = (0,),
        steps: int = 100,
        optimizer: str = "sgd",
        lr: float = 0.05,
        normalize_gradient: bool = True,
        lr_pixels: int | None = None,
        blur_sigma: float = 1.0,
        contrast: float = DEFAULT_CONTRAST,
        norm: float | None = None,
        clamp: bool = True,
        batch_size: int = 128,
        schedule: Literal["constant", "cosine"] = "constant",
    ):
        self.seeds = tuple(int(s) for s in seeds)
        self.steps, self.optimizer, self.lr = int(steps), optimizer, float(lr)
        self.schedule = schedule
        if schedule not in SCHEDULES:
            raise EncodersError(f"method.schedule: one of {list(SCHEDULES)}, got {schedule!r}")
        self.lr_pixels = None if lr_pixels is None else int(lr_pixels)
        self.normalize_gradient, self.blur_sigma = bool(normalize_gradient), float(blur_sigma)
        self.contrast, self.norm = float(contrast), None if norm is None else float(norm)
        self.clamp, self.batch_size = bool(clamp), int(batch_size)
        if not self.seeds:
            raise EncodersError("method.seeds: give at least one seed")
        if len(set(self.seeds)) != len(self.seeds):
            raise EncodersError(f"method.seeds: must be distinct, got {list(self.seeds)}")
        if optimizer not in OPTIMIZERS:
            raise EncodersError(f"method: optimizer must be one of {list(OPTIMIZERS)}, got {optimizer!r}")
        if self.steps < 1 or self.batch_size < 1 or not self.lr > 0 or not self.contrast > 0 or self.blur_sigma < 0:
            raise EncodersError(  # steps 0 would hand back the starting noise as if it were an optimised image
                f"method: need steps >= 1, batch_size >= 1, lr > 0, contrast > 0, blur_sigma >= 0; got steps={steps}, "
                f"batch_size={batch_size}, lr={float(lr)}, contrast={contrast}, blur_sigma={blur_sigma}"
            )
        if self.norm is not None and not self.norm > 0:
            raise EncodersError(f"method.norm: must be positive, got {norm}")
        if self.lr_pixels is not None and (self.lr_pixels < 1 or optimizer != "sgd" or self.normalize_gradient):
            raise EncodersError(f"method.lr_pixels: a positive pixel count, and only for SGD on the raw gradient "
                                f"(optimizer sgd, normalize_gradient false); got lr_pixels={lr_pixels}, optimizer="
                                f"{optimizer}, normalize_gradient={self.normalize_gradient}")

    # ---- what every method answers
    @property
    def step_count(self) -> int:
        return self.steps

    def truth(self) -> "GASettings":
        return self  # a twin's true MEIs are found the same way as the model's

    def step_size(self, shape: Sequence[int]) -> float:
        """The optimiser's lr for images of `shape` (lr rescaled by the pixel count when lr_pixels is set)."""
        if self.lr_pixels is None:
            return self.lr
        return self.lr * math.prod(int(s) for s in shape) / self.lr_pixels

    def image_norm(self, shape: Sequence[int]) -> float:
        return float(self.norm) if self.norm is not None else default_norm(shape, self.contrast)

    def pixel_range(self, transform) -> tuple[float, float] | None:
        """Model-space values of pixels 0 and 255 under `transform` (an ImageTransform), if clamping."""
        if not self.clamp:
            return None
        low, high = transform.from_pixels(torch.tensor([0.0, 255.0])).tolist()
        return (low, high)

    def derived(self, shape: Sequence[int]) -> dict:
        return {"norm": self.image_norm(shape), "norm_rule": "given" if self.norm is not None else "contrast * sqrt(C*H*W)",
                "step_size": self.step_size(shape)}

    def run_chunk(self, energy: Energy, seeds: Sequence[int], model, stop_below: torch.Tensor | None = None) -> SynthesisResult:
        shape = tuple(model.input_shape)
        result = optimize_images(energy, len(seeds), shape, seeds, self.steps, self.optimizer, self.step_size(shape), self.blur_sigma,
                                 self.image_norm(shape), self.pixel_range(model.image_transform), device_of(model),
                                 self.normalize_gradient, self.parametrization, stop_below, self.schedule)
        return SynthesisResult(result.images, result.energy, result.trace)


def optimize_in_batches(
    energy_for: Callable[[list[int]], Energy], seeds: Sequence[int], shape: Sequence[int], settings: GASettings,
    pixel_range: tuple[float, float] | None, device: str | torch.device = "cpu",
) -> GradientAscentResult:
    """`optimize_images` over len(seeds) images, settings.batch_size at a time.

    energy_for(indices) builds the energy of those images (e.g. a NeuronActivation for their
    targets); seeds[i] seeds image i. Chunks only bound memory: each image's result is the same.
    """
    parts = []
    for start in range(0, len(seeds), settings.batch_size):
        index = list(range(start, min(start + settings.batch_size, len(seeds))))
        parts.append(optimize_images(
            energy_for(index), len(index), shape, [seeds[i] for i in index], settings.steps, settings.optimizer,
            settings.step_size(shape), settings.blur_sigma, settings.image_norm(shape), pixel_range, device, settings.normalize_gradient,
            settings.parametrization, schedule=settings.schedule,
        ))
    return GradientAscentResult(
        images=torch.cat([p.images for p in parts]),
        energy=torch.cat([p.energy for p in parts]),
        trace=torch.cat([p.trace for p in parts], dim=1),
        norm_trace=torch.cat([p.norm_trace for p in parts], dim=1),
    )
