"""Energy-guided diffusion (EGG, Pierzchlewicz et al. 2023): DDPM sampling from a prior, nudged down an energy.

At every respaced step t:

    eps     = unet(x_t, t)
    x0_hat  = (x_t - sqrt(1 - abar_t) eps) / sqrt(abar_t)        the prior's guess of the clean image
    g       = d energy(adapter(x0_hat)) / d x_t                   through the UNet
    x_{t-1} = DDPM step(eps, t, x_t) - energy_scale * g / |g|

The gradient is normalised PER SAMPLE (the paper's code divides by the norm of the whole batch, which
makes every sample depend on the others), and sample b draws its initial and per-step noise from its
own generator seeded with seeds[b]; so sample b depends only on its seed and its own energy term.
MEIs use an activation energy, MENIs the same with a smaller energy_scale (closer to the prior),
reconstructions a response-distance energy.

Clipping and the result, as the paper's code does them or not:
- `clip_denoised` decides for the WHOLE sampler whether x0_hat is clamped to [-1, 1]: before the
  energy and inside the DDPM step (the scheduler's own `clip_sample`, which the shipped priors' configs
  set to true, is overridden by it). The paper's code (sinzlab/energy-guided-diffusion,
  `egg/diffusion.py`: `clip_denoised=False`) never clamps.
- `keep="sample"` returns the last sample clamped to [-1, 1] (what a diffusers pipeline returns and
  what the paper's MENI script saves); `keep="x0"` returns the last step's x0_hat, unclamped unless
  clip_denoised (what the paper's MEI and reconstruction scripts keep: the final `pred_xstart`).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch

from encoders.errors import EncodersError
from encoders.synthesis.method import Energy
from encoders.synthesis.method import generators as seeded
from encoders.synthesis.prior import DiffusionPrior

Adapter = Callable[[torch.Tensor], torch.Tensor]  # prior images -> the energy's input space


@dataclass
class EGGResult:
    """What `egg_sample` returns (CPU tensors).

    prior_images: (B, C_prior, S, S) final samples (in [-1, 1] unless kept unclamped: keep="x0" without clipping).
    images: (B, C, H, W) the same in the energy's input space, rescaled to `norm` when given.
    energy: (B,) energy of `images` (NaN without an energy).
    trace: (num_steps, B) energy of adapter(x0_hat) at each step (NaN without an energy).
    """

    prior_images: torch.Tensor
    images: torch.Tensor
    energy: torch.Tensor
    trace: torch.Tensor


KEEP = ("sample", "x0")  # what egg_sample returns: the last sample (clamped) or the last step's x0_hat


def rescaled(images: torch.Tensor, norm: float | None) -> torch.Tensor:
    """Each image rescaled to L2 `norm` (None: unchanged)."""
    if norm is None:
        return images
    return images * (norm / images.flatten(1).norm(dim=1).clamp_min(1e-12)).view(-1, *([1] * (images.ndim - 1)))


def guidance_gradient(
    prior: DiffusionPrior, energy: Energy, adapter: Adapter, x_t: torch.Tensor, t: int, clip_denoised: bool,
    guide_norm: float | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
    """(UNet output, x0_hat, energy of adapter(x0_hat) at `guide_norm` (B,), its gradient w.r.t. x_t) at one step."""
    x_t = x_t.detach().requires_grad_(True)
    with torch.enable_grad():
        output = prior(x_t, t)
        x0_hat = prior.predicted_clean(x_t, t, output)
        if clip_denoised:
            x0_hat = x0_hat.clamp(-1, 1)
        value = energy(rescaled(adapter(x0_hat), guide_norm))
        if value.shape != (x_t.shape[0],):
            raise ValueError(f"the energy must return ({x_t.shape[0]},) values, got {tuple(value.shape)}")
        # autograd.grad, not backward: no parameter of the prior or the model collects gradients
        (gradient,) = torch.autograd.grad(value.sum(), x_t)
    return output.detach(), x0_hat.detach(), value.detach(), gradient


def egg_sample(
    prior: DiffusionPrior,
    energy: Energy | None,
    n_images: int,
    num_steps: int = 50,
    energy_scale: float = 2.0,
    seeds: Sequence[int] | int = 0,
    norm: float | None = None,
    adapter: Adapter | None = None,
    clip_denoised: bool = True,
    guide_norm: float | None = None,
    keep: str = "sample",
) -> EGGResult:
    """Draw `n_images` samples from `prior`, guided to low `energy`.

    Args:
        energy: adapter(images) -> (n_images,), image b's own term (e.g. NeuronActivation with n_images
            targets); None samples the prior unguided (energy_scale must then be 0).
        num_steps: respaced DDPM steps (at most the prior's training timesteps).
        energy_scale: L2 length, in prior space, of the guidance step taken at every step. It is a
            length, not a per-pixel size: 2 suits the shipped 32x32 prior (1,024 pixels; 50 steps);
            a prior with k times the pixels needs about sqrt(k) times the scale for the same effect.
        seeds: one per image, or one int for all (identical samples up to their energies).
        norm: rescale each final adapter(image) to this L2 norm (e.g. `default_norm` for a fair
            comparison with norm-constrained gradient-ascent MEIs); None keeps the prior's contrast.
        adapter: prior images -> the energy's input space, e.g. `ModelSpace.of(model)`; None = identity.
        clip_denoised: clamp x0_hat to [-1, 1], before the energy and in the DDPM step (the range the
            prior was trained on); False never clamps x0_hat anywhere (the paper's code).
        guide_norm: the energy guiding each step sees adapter(x0_hat) rescaled to this L2 norm; None =
            at the prior's own contrast. The trace is always measured as the final image would be (at `norm`).
        keep: "sample" (the last sample, clamped to [-1, 1]) or "x0" (the last step's x0_hat, clamped only
            with clip_denoised; the paper's MEIs and reconstructions).
    """
    if energy is None and energy_scale != 0:
        raise EncodersError("energy_scale must be 0 when sampling without an energy")
    if energy_scale < 0:
        raise EncodersError(f"energy_scale must be >= 0, got {energy_scale}")
    if norm is not None and not norm > 0:
        raise EncodersError(f"norm must be positive (or None for no constraint), got {norm}")
    if guide_norm is not None and not guide_norm > 0:
        raise EncodersError(f"guide_norm must be positive (or None for the prior's contrast), got {guide_norm}")
    if keep not in KEEP:
        raise EncodersError(f"keep must be one of {list(KEEP)}, got {keep!r}")
    adapter = adapter if adapter is not None else (lambda x: x)
    device = next(prior.parameters()).device
    dtype = next(prior.parameters()).dtype
    scheduler = prior.respaced(num_steps, clip_sample=clip_denoised)
    generators = seeded(seeds, n_images, device)

    # callbacks may run inside Lightning's inference mode, where no gradient could be taken
    with torch.inference_mode(False):
        x = torch.stack([torch.randn(prior.image_shape, generator=g, device=device, dtype=dtype) for g in generators])
        trace = torch.full((num_steps, n_images), float("nan"))
        x0_hat = x
        for i, t in enumerate(scheduler.timesteps.tolist()):
            if energy is None:
                with torch.no_grad():
                    output = prior(x, t)
                    x0_hat = prior.predicted_clean(x, t, output)
                    x0_hat = x0_hat.clamp(-1, 1) if clip_denoised else x0_hat
            else:
                output, x0_hat, value, gradient = guidance_gradient(prior, energy, adapter, x, t, clip_denoised, guide_norm)
                if guide_norm == norm:
                    trace[i] = value.cpu()
                else:  # what the image kept at this step would score (one more pass of the energy's model, no UNet)
                    with torch.no_grad():
                        trace[i] = energy(rescaled(adapter(x0_hat), norm)).cpu()
            # a list of generators: the scheduler draws sample b's noise from generators[b] alone
            x = scheduler.step(output, t, x, generator=generators).prev_sample
            if energy_scale:
                length = gradient.flatten(1).norm(dim=1).clamp_min(1e-12).view(-1, 1, 1, 1)
                x = x - energy_scale * gradient / length
        prior_images = (x.clamp(-1, 1) if keep == "sample" else x0_hat).detach()

        with torch.no_grad():
            images = rescaled(adapter(prior_images), norm)
            final = energy(images).cpu() if energy is not None else torch.full((n_images,), float("nan"))
    return EGGResult(prior_images=prior_images.cpu(), images=images.cpu(), energy=final, trace=trace)
