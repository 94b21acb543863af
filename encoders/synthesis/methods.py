"""The two ways to make an image that lowers an energy: gradient ascent on pixels, or energy-guided diffusion.

Both take the same per-image energies (built for a chunk of images by `energy_for(indices)`) and
return the same result, so MEIs, MENIs and reconstructions are made by either method with one code
path, and their files differ only in the `method` coordinate ("ga" or "egg") and the settings
recorded in the attributes.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from encoders.errors import EncodersError
from encoders.synthesis.gradient_ascent import Energy, GASettings, default_norm, optimize_in_batches
from encoders.synthesis.guided_diffusion import egg_sample
from encoders.synthesis.prior import DiffusionPrior, ModelSpace


@dataclass
class SynthesisResult:
    """images (B, C, H, W) in model space, energy (B,) of the final images, trace (steps, B)."""

    images: torch.Tensor
    energy: torch.Tensor
    trace: torch.Tensor


@dataclass(frozen=True)
class GASynthesis:
    """Gradient ascent with `settings` (blur-preconditioned, norm-constrained, see gradient_ascent.py)."""

    settings: GASettings
    method = "ga"

    @property
    def seeds(self) -> tuple[int, ...]:
        return tuple(self.settings.seeds)

    @property
    def truth_settings(self) -> GASettings:
        """How a twin's true MEIs are found when scoring these images: the same way."""
        return self.settings

    def attrs(self, shape: Sequence[int]) -> dict:
        return {f"ga_{k}": v for k, v in self.settings.attrs(shape).items()}

    def run(self, energy_for: Callable[[list[int]], Energy], seeds: Sequence[int], model: nn.Module) -> SynthesisResult:
        device = next(model.parameters()).device
        result = optimize_in_batches(
            energy_for, list(seeds), model.input_shape, self.settings, self.settings.pixel_range(model.image_transform), device,
        )
        return SynthesisResult(result.images, result.energy, result.trace)


@dataclass(frozen=True)
class EGGSynthesis:
    """Energy-guided diffusion from a local prior (see guided_diffusion.py).

    contrast: rescale final images to the GA norm rule (`default_norm`) for a fair comparison with
    GA MEIs; None keeps the prior's own contrast (MENIs, reconstructions).
    guide_at_norm: the guidance sees each x0 estimate already rescaled to that norm, so it optimises
        the image that is finally kept (on the twin, guidance at the prior's contrast followed by a
        rescale loses most of the activation: 0.31 vs 0.81 of the best natural image).
    """

    prior: DiffusionPrior
    prior_path: str
    seeds: tuple[int, ...] = (0,)
    num_steps: int = 50
    energy_scale: float = 2.0
    contrast: float | None = None
    batch_size: int = 128
    guide_at_norm: bool = False

    method = "egg"

    def __post_init__(self) -> None:
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise EncodersError(f"give distinct seeds, got {list(self.seeds)}")
        if self.num_steps < 1 or self.energy_scale < 0 or self.batch_size < 1:
            raise EncodersError("EGG needs num_steps >= 1, energy_scale >= 0 and batch_size >= 1")
        if self.contrast is not None and not self.contrast > 0:
            raise EncodersError(f"EGG contrast must be positive or None, got {self.contrast}")
        if self.guide_at_norm and self.contrast is None:
            raise EncodersError("EGG guide_at_norm needs a contrast (the norm to guide at)")

    @classmethod
    def load(cls, prior_path: str, **options) -> EGGSynthesis:
        """The prior read from its local diffusers folder (nothing downloads)."""
        return cls(prior=DiffusionPrior.load(prior_path), prior_path=str(prior_path), **options)

    @property
    def truth_settings(self) -> GASettings:
        # true MEIs by GA at the default contrast: the yardstick GA MEIs are scored against too
        return GASettings(seeds=self.seeds, batch_size=self.batch_size)

    def norm(self, shape: Sequence[int]) -> float | None:
        return default_norm(shape, self.contrast) if self.contrast is not None else None

    def attrs(self, shape: Sequence[int]) -> dict:
        norm = self.norm(shape)
        attrs = {"egg_prior": self.prior_path, "egg_num_steps": self.num_steps, "egg_energy_scale": self.energy_scale,
                 "egg_norm": norm if norm is not None else float("nan"), "egg_seeds": list(self.seeds)}
        if self.guide_at_norm:  # only when set: products made before the option keep their fingerprints
            attrs["egg_guide_at_norm"] = 1
        return attrs

    def run(self, energy_for: Callable[[list[int]], Energy], seeds: Sequence[int], model: nn.Module) -> SynthesisResult:
        self.prior.to(next(model.parameters()).device)
        adapter = ModelSpace.of(model, self.norm(model.input_shape) if self.guide_at_norm else None)
        parts = []
        # chunks only bound memory: each sample depends on its own seed and energy alone
        for start in range(0, len(seeds), self.batch_size):
            index = list(range(start, min(start + self.batch_size, len(seeds))))
            parts.append(egg_sample(
                self.prior, energy_for(index), len(index), num_steps=self.num_steps, energy_scale=self.energy_scale,
                seeds=[seeds[i] for i in index], norm=self.norm(model.input_shape), adapter=adapter,
            ))
        return SynthesisResult(
            torch.cat([p.images for p in parts]), torch.cat([p.energy for p in parts]), torch.cat([p.trace for p in parts], 1),
        )


Synthesis = GASynthesis | EGGSynthesis


def as_synthesis(method: GASettings | Synthesis) -> Synthesis:
    """GA settings alone mean gradient ascent."""
    return GASynthesis(method) if isinstance(method, GASettings) else method
