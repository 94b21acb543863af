"""Named settings of the synthesis methods, one class each, usable wherever a method is
(`method: {class_path: encoders.synthesis.GAPaper}` in a product, a training YAML or a comparison).

A preset is a subclass whose constructor has the same arguments with the preset's defaults, so
any of them can still be changed (`init_args`), and files record the preset's class name.
"""

from __future__ import annotations

from encoders.synthesis.egg import PAPER_EGG_ENERGY_SCALE, EGGSettings
from encoders.synthesis.gradient_ascent import GASettings


class GAPaper(GASettings):
    """Pierzchlewicz et al. 2023 (sinzlab/energy-guided-diffusion, scripts/meis_ga.py at HEAD): 1,000 steps of
    AdamW at lr 10 on the raw gradient blurred with sigma 1, every image rescaled to norm 25 at 100x100
    (contrast 0.25), no clamp. (The paper's AdamW keeps torch's default weight decay 0.01; here decay is 0:
    the norm is fixed after every step anyway.)"""

    def __init__(
        self, seeds: tuple[int, ...] = (0,), steps: int = 1000, optimizer: str = "adamw", lr: float = 10.0,
        normalize_gradient: bool = False, blur_sigma: float = 1.0, contrast: float = 0.25, norm: float | None = None,
        clamp: bool = False, batch_size: int = 128,
    ):
        super().__init__(seeds, steps, optimizer, lr, normalize_gradient, blur_sigma, contrast, norm, clamp, batch_size)


class EGGPaper(EGGSettings):
    """Pierzchlewicz et al. 2023 (sinzlab/energy-guided-diffusion, scripts/meis_egg.py): 100 respaced steps,
    energy_scale 10 on a unit-norm gradient of 3x256x256 images (10 / sqrt(196608) per pixel), x0 not
    clipped, images at norm 25 for 100x100 (contrast 0.25), guided at that norm."""

    def __init__(
        self, prior: str, seeds: tuple[int, ...] = (0,), num_steps: int = 100,
        energy_scale: float = PAPER_EGG_ENERGY_SCALE, contrast: float | None = 0.25, guide_at_norm: bool = True,
        clip_denoised: bool = False, batch_size: int = 128,
    ):
        super().__init__(prior, seeds, num_steps, energy_scale, contrast, guide_at_norm, clip_denoised, batch_size)
