"""Energy-guided diffusion as a synthesis method (`EGGSettings`): the sampler (`guided_diffusion.egg_sample`)
run on a local prior, with the settings a product records.

It has the interface of every method (`encoders.synthesis.method.Method`), as gradient ascent
(`GASettings`) has: products hold either and never ask which.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from typing import Literal

from encoders.contract import device_of
from encoders.errors import EncodersError
from encoders.synthesis.gradient_ascent import DEFAULT_CONTRAST, GASettings, default_norm
from encoders.synthesis.method import Energy, Method, SynthesisResult
from encoders.synthesis.guided_diffusion import KEEP, egg_sample
from encoders.synthesis.prior import DiffusionPrior, ModelSpace

KEPT = "kept"  # guide_contrast: guide at the contrast the images are kept at


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
        guide_contrast: the per-pixel RMS at which the guiding energy sees each x0 estimate: "kept" (the
            contrast the images are kept at: `contrast`, or the prior's own when that is None), a number
            (e.g. the paper's MENIs: norm 50 at 100x100 = 0.5), or None (the prior's own contrast: the
            x0 estimate unnormalised, as the paper's code at HEAD guides its MEIs).
        clip_denoised: clamp x0 estimates to the prior's range [-1, 1] everywhere in sampling (before the
            energy and in the DDPM step); False never clamps them (the paper's code).
        keep: "sample" (the last sample, clamped to [-1, 1]) or "x0" (the last step's x0 estimate, as the
            paper's MEI and reconstruction scripts keep it; unclamped unless clip_denoised).
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
        guide_contrast: float | Literal["kept"] | None = KEPT,
        clip_denoised: bool = True,
        keep: Literal["sample", "x0"] = "sample",
        batch_size: int = 128,
    ):
        self.prior, self.seeds = str(prior), tuple(int(s) for s in seeds)
        self.num_steps, self.energy_scale = int(num_steps), float(energy_scale)
        self.contrast = None if contrast is None else float(contrast)
        self.guide_contrast = guide_contrast if guide_contrast in (None, KEPT) else float(guide_contrast)
        self.clip_denoised, self.keep, self.batch_size = bool(clip_denoised), keep, int(batch_size)
        if keep not in KEEP:
            raise EncodersError(f"method.keep: one of {list(KEEP)}, got {keep!r}")
        if isinstance(self.guide_contrast, float) and not self.guide_contrast > 0:
            raise EncodersError(f"method.guide_contrast: must be positive, {KEPT!r} or null, got {guide_contrast}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise EncodersError(f"method.seeds: give distinct seeds, got {list(self.seeds)}")
        if self.num_steps < 1 or self.energy_scale < 0 or self.batch_size < 1:
            raise EncodersError("method: EGG needs num_steps >= 1, energy_scale >= 0 and batch_size >= 1")
        if self.contrast is not None and not self.contrast > 0:
            raise EncodersError(f"method.contrast: must be positive or null, got {contrast}")

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
        """L2 norm the images are kept at (None: the prior's own contrast)."""
        return default_norm(shape, self.contrast) if self.contrast is not None else None

    def guide_norm(self, shape: Sequence[int]) -> float | None:
        """L2 norm at which the guiding energy sees x0 estimates (None: the prior's own contrast)."""
        if self.guide_contrast == KEPT:
            return self.norm(shape)
        return default_norm(shape, self.guide_contrast) if self.guide_contrast is not None else None

    def truth(self) -> GASettings:
        # true MEIs by GA at the default contrast: the yardstick GA MEIs are scored against too
        return GASettings(seeds=self.seeds, batch_size=self.batch_size)

    def derived(self, shape: Sequence[int]) -> dict:
        return {"norm": self.norm(shape), "guide_norm": self.guide_norm(shape), "energy_scale_per_pixel": self.energy_scale}

    def run_chunk(self, energy: Energy, seeds: Sequence[int], model, stop_below=None) -> SynthesisResult:
        if stop_below is not None:
            raise EncodersError("method: EGG runs its whole diffusion schedule; it cannot stop at an energy (stop_below)")
        prior = load_prior(self.prior).to(device_of(model))
        shape = tuple(model.input_shape)
        result = egg_sample(prior, energy, len(seeds), num_steps=self.num_steps, energy_scale=self.step_length(prior.image_shape),
                            seeds=list(seeds), norm=self.norm(shape), adapter=ModelSpace.of(model),
                            clip_denoised=self.clip_denoised, guide_norm=self.guide_norm(shape), keep=self.keep)
        return SynthesisResult(result.images, result.energy, result.trace)


@functools.lru_cache(maxsize=4)
def load_prior(folder: str) -> DiffusionPrior:
    """A prior, loaded once per process (every product and checkpoint shares it)."""
    return DiffusionPrior.load(folder)
