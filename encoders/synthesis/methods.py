"""The two ways to make an image that lowers an energy, as typed settings: `GASettings` (gradient ascent on
pixels) or `EGGSettings` (energy-guided diffusion from a pretrained prior).

A product takes one of them as its `method`; `synthesize` runs either on the same per-image
energies (built for a chunk of images by `energy_for(indices)`) and returns the same result, so
MEIs, MENIs and reconstructions are made by either method with one code path, and their files
differ only in the `method` coordinate ("ga" or "egg") and the settings recorded in the attributes.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from encoders.contract import ResponseModel, device_of
from encoders.errors import EncodersError
from encoders.synthesis.gradient_ascent import DEFAULT_CONTRAST, Energy, GASettings, default_norm, optimize_in_batches
from encoders.synthesis.guided_diffusion import egg_sample
from encoders.synthesis.prior import DiffusionPrior, ModelSpace


@dataclass
class SynthesisResult:
    """images (B, C, H, W) in model space, energy (B,) of the final images, trace (steps, B)."""

    images: torch.Tensor
    energy: torch.Tensor
    trace: torch.Tensor


PAPER_EGG_ENERGY_SCALE = 10 / math.sqrt(3 * 256 * 256)  # per pixel: the paper's 10 over its 3x256x256 prior images


@dataclass(frozen=True)
class EGGSettings:
    """Energy-guided diffusion (Pierzchlewicz et al. 2023) from a local diffusers prior.

    Args:
        prior: local diffusers-format folder of the diffusion prior (nothing downloads).
        seeds: one sample per target and seed.
        num_steps: respaced diffusion steps.
        energy_scale: per-pixel RMS, in prior space ([-1, 1] pixels), of the guidance step taken at every
            diffusion step (the step's L2 length is energy_scale * sqrt(C * S * S) of the prior), so one
            value means the same guidance at any prior size.
        contrast: per-pixel RMS (model space) of the final images (the GA norm rule), so GA and EGG
            compare fairly; None keeps the prior's own contrast (MENIs, reconstructions).
        guide_at_norm: the energy sees each x0 estimate already at that contrast (the image finally
            kept); False guides at the prior's contrast and rescales only the end. Ignored when contrast is None.
        clip_denoised: clamp x0 estimates to the prior's range [-1, 1] before the energy.
        batch_size: samples drawn together (memory bound); results do not depend on it.
    """

    prior: str
    seeds: tuple[int, ...] = (0,)
    num_steps: int = 50
    energy_scale: float = 0.0625  # = an L2 step of 2 on the 32x32 natural32 prior
    contrast: float | None = DEFAULT_CONTRAST
    guide_at_norm: bool = True
    clip_denoised: bool = True
    batch_size: int = 128

    method = "egg"

    @classmethod
    def paper(cls, prior: str, seeds: tuple[int, ...] = (0,)) -> "EGGSettings":
        """Pierzchlewicz et al. 2023 (sinzlab/energy-guided-diffusion, scripts/meis_egg.py): 100 respaced steps,
        energy_scale 10 on a unit-norm gradient of 3x256x256 images (10 / sqrt(196608) per pixel), x0 not
        clipped, images at norm 25 for 100x100 (contrast 0.25), guided at that norm."""
        return cls(prior=prior, seeds=tuple(seeds), num_steps=100, energy_scale=PAPER_EGG_ENERGY_SCALE, contrast=0.25,
                   guide_at_norm=True, clip_denoised=False)

    def step_length(self, prior_shape: Sequence[int]) -> float:
        """The guidance step's L2 length for a prior of (C, S, S) images."""
        return self.energy_scale * math.sqrt(math.prod(int(s) for s in prior_shape))

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise EncodersError(f"method.seeds: give distinct seeds, got {list(self.seeds)}")
        if self.num_steps < 1 or self.energy_scale < 0 or self.batch_size < 1:
            raise EncodersError("method: EGG needs num_steps >= 1, energy_scale >= 0 and batch_size >= 1")
        if self.contrast is not None and not self.contrast > 0:
            raise EncodersError(f"method.contrast: must be positive or null, got {self.contrast}")

    # ---- what every method answers (GASettings has the same)
    @property
    def step_count(self) -> int:
        """Denoising steps of one image (its trace's length)."""
        return self.num_steps

    @property
    def prior_contrast(self) -> bool:
        """Whether the images keep the prior's own contrast (contrast None: MENIs, reconstructions)."""
        return self.contrast is None

    def check_available(self) -> None:
        """The prior loads (a missing folder or broken weights fail now, in one line); cached for the run."""
        load_prior(self.prior)

    def norm(self, shape: Sequence[int]) -> float | None:
        return default_norm(shape, self.contrast) if self.contrast is not None else None

    @property
    def truth_settings(self) -> GASettings:
        # true MEIs by GA at the default contrast: the yardstick GA MEIs are scored against too
        return GASettings(seeds=self.seeds, batch_size=self.batch_size)

    def attrs(self, shape: Sequence[int]) -> dict:
        norm = self.norm(shape)
        return {"egg_prior": self.prior, "egg_num_steps": self.num_steps, "egg_energy_scale_per_pixel": self.energy_scale,
                "egg_norm": norm if norm is not None else float("nan"), "egg_seeds": list(self.seeds),
                "egg_guide_at_norm": int(self.guide_at_norm and norm is not None), "egg_clip_denoised": int(self.clip_denoised)}


Method = GASettings | EGGSettings


@functools.lru_cache(maxsize=4)
def load_prior(folder: str) -> DiffusionPrior:
    """A prior, loaded once per process (every product and checkpoint shares it)."""
    return DiffusionPrior.load(folder)


def method_name(method: Method) -> str:
    return method.method


def method_attrs(method: Method, shape: Sequence[int]) -> dict:
    """NetCDF-storable settings, prefixed by the method."""
    if isinstance(method, EGGSettings):
        return method.attrs(shape)
    return {f"ga_{k}": v for k, v in method.attrs(shape).items()}


def truth_settings(method: Method) -> GASettings:
    """How a twin's true MEIs are found when scoring images of this method: GA, the same way for GA."""
    return method.truth_settings if isinstance(method, EGGSettings) else method


def synthesize(
    method: Method, energy_for: Callable[[list[int]], Energy], seeds: Sequence[int], model: ResponseModel,
    progress: Callable[[int], None] | None = None,
) -> SynthesisResult:
    """Minimise one energy per image (image i starts from seeds[i]) with `method`; batched by its batch_size.

    progress(n) is called after each chunk of n images.
    """
    device = device_of(model)
    shape = tuple(model.input_shape)
    parts = []
    for start in range(0, len(seeds), method.batch_size):
        index = list(range(start, min(start + method.batch_size, len(seeds))))
        chunk = [seeds[i] for i in index]
        if isinstance(method, EGGSettings):
            prior = load_prior(method.prior).to(device)
            norm = method.norm(shape)
            adapter = ModelSpace.of(model, norm if method.guide_at_norm else None)
            result = egg_sample(prior, energy_for(index), len(index), num_steps=method.num_steps,
                                energy_scale=method.step_length(prior.image_shape), seeds=chunk, norm=norm, adapter=adapter,
                                clip_denoised=method.clip_denoised)
        else:
            result = optimize_in_batches(lambda i: energy_for([index[j] for j in i]), chunk, shape, method,
                                         method.pixel_range(model.image_transform), device)
        parts.append(SynthesisResult(result.images, result.energy, result.trace))
        if progress is not None:
            progress(len(index))
    return SynthesisResult(
        torch.cat([p.images for p in parts]), torch.cat([p.energy for p in parts]), torch.cat([p.trace for p in parts], 1),
    )
