"""Energy-guided diffusion as a synthesis method (`EGGSettings`): the sampler (`guided_diffusion.egg_sample`)
run on a local prior, with the settings a product records.

It has the interface of every method (`encoders.synthesis.method.Method`), as gradient ascent
(`GASettings`) has: products hold either and never ask which.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence

from encoders.contract import device_of
from encoders.errors import EncodersError
from encoders.synthesis.gradient_ascent import DEFAULT_CONTRAST, GASettings, default_norm
from encoders.synthesis.method import Energy, Method, SynthesisResult
from encoders.synthesis.guided_diffusion import egg_sample
from encoders.synthesis.prior import DiffusionPrior, ModelSpace


PAPER_EGG_ENERGY_SCALE = 10 / math.sqrt(3 * 256 * 256)  # per pixel: the paper's 10 over its 3x256x256 prior images


class EGGSettings(Method):
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

    name = "egg"

    def __init__(
        self,
        prior: str,
        seeds: tuple[int, ...] = (0,),
        num_steps: int = 50,
        energy_scale: float = 0.0625,  # = an L2 step of 2 on the 32x32 natural32 prior
        contrast: float | None = DEFAULT_CONTRAST,
        guide_at_norm: bool = True,
        clip_denoised: bool = True,
        batch_size: int = 128,
    ):
        self.prior, self.seeds = str(prior), tuple(int(s) for s in seeds)
        self.num_steps, self.energy_scale = int(num_steps), float(energy_scale)
        self.contrast = None if contrast is None else float(contrast)
        self.guide_at_norm, self.clip_denoised, self.batch_size = bool(guide_at_norm), bool(clip_denoised), int(batch_size)
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise EncodersError(f"method.seeds: give distinct seeds, got {list(self.seeds)}")
        if self.num_steps < 1 or self.energy_scale < 0 or self.batch_size < 1:
            raise EncodersError("method: EGG needs num_steps >= 1, energy_scale >= 0 and batch_size >= 1")
        if self.contrast is not None and not self.contrast > 0:
            raise EncodersError(f"method.contrast: must be positive or null, got {contrast}")

    @classmethod
    def paper(cls, prior: str, seeds: tuple[int, ...] = (0,)) -> "EGGSettings":
        """The paper's preset (`encoders.synthesis.presets.EGGPaper`)."""
        from encoders.synthesis.presets import EGGPaper

        return EGGPaper(prior=prior, seeds=seeds)

    def step_length(self, prior_shape: Sequence[int]) -> float:
        """The guidance step's L2 length for a prior of (C, S, S) images."""
        return self.energy_scale * math.sqrt(math.prod(int(s) for s in prior_shape))

    # ---- what every method answers
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

    def truth(self) -> GASettings:
        # true MEIs by GA at the default contrast: the yardstick GA MEIs are scored against too
        return GASettings(seeds=self.seeds, batch_size=self.batch_size)

    def derived(self, shape: Sequence[int]) -> dict:
        norm = self.norm(shape)
        return {"norm": norm, "energy_scale_per_pixel": self.energy_scale,
                "guide_at_norm": self.guide_at_norm and norm is not None}

    def run_chunk(self, energy: Energy, seeds: Sequence[int], model) -> SynthesisResult:
        prior = load_prior(self.prior).to(device_of(model))
        norm = self.norm(tuple(model.input_shape))
        adapter = ModelSpace.of(model, norm if self.guide_at_norm else None)
        result = egg_sample(prior, energy, len(seeds), num_steps=self.num_steps, energy_scale=self.step_length(prior.image_shape),
                            seeds=list(seeds), norm=norm, adapter=adapter, clip_denoised=self.clip_denoised)
        return SynthesisResult(result.images, result.energy, result.trace)


@functools.lru_cache(maxsize=4)
def load_prior(folder: str) -> DiffusionPrior:
    """A prior, loaded once per process (every product and checkpoint shares it)."""
    return DiffusionPrior.load(folder)
