"""The settings of Pierzchlewicz et al. 2023 (sinzlab/energy-guided-diffusion), one class per published version,
usable wherever a method is (`method: {class_path: encoders.synthesis.GASubmission}` in a product, a training YAML
or a comparison).

The paper's code changed between the NeurIPS submission and the rebuttal (commit bf32c1d "add(scripts):
rebuttal experiments", 2023-11-27, which is HEAD's MEI code), so there is no single "paper setting":

| preset | version | read from |
|---|---|---|
| `GASubmission` | submission | `scripts/run_meis_ga.py` at 0af79eb / 166e360: SGD lr 10 |
| `GARebuttal` | rebuttal = HEAD | `scripts/meis_ga.py` at bf32c1d..HEAD: AdamW lr 10 |
| `EGGSubmission` | submission | `scripts/run_meis_egg.py` at 166e360: energy scale 5, energy at norm 25 |
| `EGGRebuttal` | rebuttal = HEAD | `scripts/meis_egg.py` at bf32c1d..HEAD: energy scale 10, energy on the unnormalised x0 |
| `MENIPaper` | both (unchanged) | `scripts/menis.py`: 50 steps, energy scale 1, 5 or 10, energy at norm 50 |
| `GDReconstructionPaper` | both | `scripts/reconstruct_gd.py`: AdamW lr 0.05 on a parameter blurred and rescaled in the forward pass |
| `EGGReconstructionPaper` | both | `scripts/reconstruct_egg.py`: 1,000 steps, energy scale 2 |

Common to all: the unit's rate is maximised; images are 1x100x100 at L2 norm 25 (per-pixel RMS 0.25,
which is `contrast` here at any size); mei's `GaussianBlur(sigma=1)` blurs the gradient; `ChangeNorm(25)`
rescales the image after every optimiser step; 1,000 iterations (mei's stopper counts 1,001
evaluations); EGG runs 100 respaced steps of the 256x256 ImageNet DDPM with `clip_denoised=False`
(`egg/diffusion.py`: x0 is never clamped) and keeps the last step's `pred_xstart`. The energy scale
is an L2 step on a unit-norm gradient of 3x256x256 images; here it is given per prior pixel
(`paper_energy_scale`), so it means the same on the project's smaller priors.

What cannot be the paper's here, and why: the prior (a small CPU-trained one, not the 256-px ImageNet
model), the models (CPU-sized, other data) and hence the raw gradient's scale. SGD lr 10 was in the
paper models' units: `GASubmission` keeps the same step relative to the image norm for the same image
at another resolution (`GASettings.lr_pixels`), which is all that carries over; the README shows its
convergence on these models. mei's first step starts from unnormalised noise (norm 100), here from
noise already at the norm.

A preset fixes the settings that define it and takes only seeds, contrast, batch size and the prior. It
cannot be half-changed by accident (jsonargparse keeps the values of a previously chosen class for
options of the same name, which would silently replace a preset's defaults); to vary a fixed setting,
use the method class with all values written out. Files record every setting and the preset's class.
`GAPaper` and `EGGPaper`, the names before the versions were told apart, fail naming these.
"""

from __future__ import annotations

import math

from encoders.errors import EncodersError
from encoders.synthesis.egg import EGGSettings
from encoders.synthesis.gradient_ascent import GASettings
from encoders.synthesis.method import Method

PAPER_PRIOR_VALUES = 3 * 256 * 256  # the paper's prior images (3x256x256)
PAPER_MODEL_PIXELS = 100 * 100  # the paper's model input (1x100x100), at norm 25
PAPER_CONTRAST = 25 / math.sqrt(PAPER_MODEL_PIXELS)  # 0.25 per pixel


def paper_energy_scale(scale: float) -> float:
    """The paper's energy scale (an L2 step on 3x256x256 images) per prior pixel: 10 -> 0.02255."""
    return float(scale) / math.sqrt(PAPER_PRIOR_VALUES)


class GASubmission(GASettings):
    """The submission's GA (`scripts/run_meis_ga.py` at 0af79eb and 166e360): 1,000 steps of SGD at lr 10 (for
    1x100x100 images: `lr_pixels` 10000) on the raw gradient blurred with sigma 1, every image rescaled to
    norm 25 at 100x100 (contrast 0.25) after each step, no clamp."""

    def __init__(self, seeds: tuple[int, ...] = (0,), contrast: float = PAPER_CONTRAST, batch_size: int = 128):
        super().__init__(seeds=seeds, steps=1000, optimizer="sgd", lr=10.0, normalize_gradient=False,
                         lr_pixels=PAPER_MODEL_PIXELS, blur_sigma=1.0, contrast=contrast, norm=None, clamp=False,
                         batch_size=batch_size)


class GARebuttal(GASettings):
    """The rebuttal's GA, HEAD's `scripts/meis_ga.py`: 1,000 steps of AdamW at lr 10 on the raw gradient blurred
    with sigma 1, every image rescaled to norm 25 at 100x100 (contrast 0.25), no clamp. (AdamW's default weight
    decay 0.01 is 0 here: the norm is fixed after every step anyway. Adam's step does not depend on the
    gradient's scale, so lr 10 means the same at any resolution.)"""

    def __init__(self, seeds: tuple[int, ...] = (0,), contrast: float = PAPER_CONTRAST, batch_size: int = 128):
        super().__init__(seeds=seeds, steps=1000, optimizer="adamw", lr=10.0, normalize_gradient=False, blur_sigma=1.0,
                         contrast=contrast, norm=None, clamp=False, batch_size=batch_size)


class EGGSubmission(EGGSettings):
    """The submission's EGG (`scripts/run_meis_egg.py` at 166e360): 100 steps, energy scale 5 (0.01128 per pixel),
    the energy evaluated on each x0 estimate rescaled to norm 25 (the kept contrast), x0 never clamped, the
    result the last step's x0 estimate at that norm."""

    def __init__(self, prior: str, seeds: tuple[int, ...] = (0,), contrast: float = PAPER_CONTRAST, batch_size: int = 128):
        super().__init__(prior=prior, seeds=seeds, num_steps=100, energy_scale=paper_energy_scale(5), contrast=contrast,
                         guide_contrast="kept", clip_denoised=False, keep="x0", batch_size=batch_size)


class EGGRebuttal(EGGSettings):
    """The rebuttal's EGG, HEAD's `scripts/meis_egg.py`: 100 steps, energy scale 10 (0.02255 per pixel), the
    guiding energy evaluated on the UNNORMALISED x0 estimate (the prior's own contrast; HEAD normalises only
    for the validation scores), x0 never clamped, the result the last step's x0 estimate, scored (and kept
    here) at norm 25."""

    def __init__(self, prior: str, seeds: tuple[int, ...] = (0,), contrast: float = PAPER_CONTRAST, batch_size: int = 128):
        super().__init__(prior=prior, seeds=seeds, num_steps=100, energy_scale=paper_energy_scale(10), contrast=contrast,
                         guide_contrast=None, clip_denoised=False, keep="x0", batch_size=batch_size)


class MENIPaper(EGGSettings):
    """The paper's MENIs (`scripts/menis.py`, the same in every version): 50 steps, energy scale `scale` (the paper
    ran 1, 5 and 10), the energy evaluated on each x0 estimate rescaled to norm 50 at 100x100 (contrast 0.5),
    x0 never clamped, the result the last sample at the prior's own contrast (clamped to [-1, 1], as saved)."""

    def __init__(self, prior: str, seeds: tuple[int, ...] = (0,), scale: float = 5.0, batch_size: int = 128):
        if not float(scale) > 0:
            raise EncodersError(f"method.scale: the paper's energy scale must be positive (it used 1, 5, 10), got {scale}")
        self.scale = float(scale)
        super().__init__(prior=prior, seeds=seeds, num_steps=50, energy_scale=paper_energy_scale(scale), contrast=None,
                         guide_contrast=2 * PAPER_CONTRAST, clip_denoised=False, keep="sample", batch_size=batch_size)


class GDReconstructionPaper(GASettings):
    """The paper's GD reconstructions (`scripts/reconstruct_gd.py`): a free 1x100x100 parameter, blurred (sigma 1) and
    rescaled to norm 60 at 100x100 in the forward pass (contrast 0.6), AdamW lr 0.05, no clamp, up to 5,000 steps
    on the MSE to the target responses, each image stopping once its loss is below EGG's for that image
    (`stop_below`; a comparison's `reconstructions.stop_at: {gd: egg}`). Steps and contrast are fixed, not options:
    on the command line jsonargparse would fill them from the command's default method (300 steps, contrast 1)."""

    parametrization = "blurred"

    def __init__(self, seeds: tuple[int, ...] = (0,), batch_size: int = 128):
        super().__init__(seeds=seeds, steps=5000, optimizer="adamw", lr=0.05, normalize_gradient=False, blur_sigma=1.0,
                         contrast=0.6, norm=None, clamp=False, batch_size=batch_size)


class EGGReconstructionPaper(EGGSettings):
    """The paper's EGG reconstructions (`scripts/reconstruct_egg.py`): 1,000 steps, energy scale 2 (0.00451 per
    pixel), x0 never clamped, the last x0 estimate kept. The paper evaluates the energy at each target image's own
    norm; here at `contrast` (the comparison's reconstruction contrast, 1 = a z-scored image's typical RMS)."""

    def __init__(self, prior: str, seeds: tuple[int, ...] = (0,), contrast: float = 1.0, batch_size: int = 128):
        super().__init__(prior=prior, seeds=seeds, num_steps=1000, energy_scale=paper_energy_scale(2), contrast=contrast,
                         guide_contrast="kept", clip_denoised=False, keep="x0", batch_size=batch_size)


def _renamed(old: str, new: str):
    class Renamed(Method):
        def __init__(self, seeds: tuple[int, ...] = (0,)):
            raise EncodersError(f"method: {old} was the paper's settings before its versions were told apart; use {new} "
                                "(encoders.synthesis.presets)")

    Renamed.__name__ = Renamed.__qualname__ = old
    Renamed.__doc__ = f"Renamed: use {new}."
    return Renamed


GAPaper = _renamed("GAPaper", "GARebuttal (AdamW, HEAD: what GAPaper ran) or GASubmission (SGD, the NeurIPS submission)")
EGGPaper = _renamed("EGGPaper", "EGGSubmission (scale 5, energy at norm 25) or EGGRebuttal (scale 10, energy on the "
                    "unnormalised x0); EGGPaper mixed the two")
