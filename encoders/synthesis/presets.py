"""Named settings of the synthesis methods, one class each, usable wherever a method is
(`method: {class_path: encoders.synthesis.GAPaper}` in a product, a training YAML or a comparison).

A preset is a subclass that fixes the settings that define it and takes only the others (seeds,
contrast, batch size, the prior): `GAPaper(seeds=(0, 1))`. It cannot be half-changed by accident
(jsonargparse keeps the values of a previously chosen class for options of the same name, which
would silently replace a preset's defaults); to vary a fixed setting, use the method class with all
values written out. Files record every setting and the preset's class name.
"""

from __future__ import annotations

from encoders.synthesis.egg import PAPER_EGG_ENERGY_SCALE, EGGSettings
from encoders.synthesis.gradient_ascent import GASettings


class GAPaper(GASettings):
    """Pierzchlewicz et al. 2023 (sinzlab/energy-guided-diffusion, scripts/meis_ga.py at HEAD): 1,000 steps of
    AdamW at lr 10 on the raw gradient blurred with sigma 1, every image rescaled to norm 25 at 100x100
    (contrast 0.25), no clamp. (The paper's AdamW keeps torch's default weight decay 0.01; here decay is 0:
    the norm is fixed after every step anyway.)"""

    def __init__(self, seeds: tuple[int, ...] = (0,), contrast: float = 0.25, batch_size: int = 128):
        super().__init__(seeds=seeds, steps=1000, optimizer="adamw", lr=10.0, normalize_gradient=False, blur_sigma=1.0,
                         contrast=contrast, norm=None, clamp=False, batch_size=batch_size)


class EGGPaper(EGGSettings):
    """Pierzchlewicz et al. 2023 (sinzlab/energy-guided-diffusion, scripts/meis_egg.py): 100 respaced steps,
    energy_scale 10 on a unit-norm gradient of 3x256x256 images (10 / sqrt(196608) per pixel), x0 not
    clipped, images at norm 25 for 100x100 (contrast 0.25), guided at that norm."""

    def __init__(self, prior: str, seeds: tuple[int, ...] = (0,), contrast: float | None = 0.25, batch_size: int = 128):
        super().__init__(prior=prior, seeds=seeds, num_steps=100, energy_scale=PAPER_EGG_ENERGY_SCALE, contrast=contrast,
                         guide_at_norm=True, clip_denoised=False, batch_size=batch_size)
