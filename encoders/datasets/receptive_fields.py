"""Receptive-field centres estimated from training data, to start each neuron's readout where it looks.

Why local contrast: V4 neurons respond to shape and texture, i.e. to structure inside their receptive
field, and over natural images the strength of a neuron's response rises with the amount of contrast
that falls in its RF (whatever its feature preference, a blank RF drives it little). So, across the
training images, a neuron's response correlates with the local contrast energy at the pixels of its
RF and much less with the energy elsewhere; the peak of that correlation map is an estimate of the
RF centre that needs no model. It is cheap: one batched matrix product over all neurons of a
session, on images and responses already in memory.

Estimator (`rf_estimate`):

1. Energy maps: each image's local contrast energy, the local variance of its pixels in a Gaussian
   window of `blur_sigma` pixels (colour channels summed first). Local variance rather than the
   squared deviation from the image's mean: a uniform bright or dark patch is no stimulus for V4
   but deviates from the mean; texture and edges are what drive it (on the synthetic twin and in
   split halves of the Cowley data the local variance also gave the better estimates). The
   correlations use its logarithm (floored at 1e-3 of the median): contrast energy is heavy-tailed
   across natural images, so without the log a few high-contrast images decide every correlation
   (on generated data the log halved the errors; it also makes more Cowley neurons pass step 5).
2. Global contrast is partialled out: natural images differ a lot in overall contrast, which makes
   every pixel's energy correlate with every other and with any contrast-sensitive neuron; the
   image's mean (log) energy is regressed out of both the energy maps and the responses, across images.
3. Correlation maps: the Pearson correlation, across the training images, of each neuron's
   (residual) response with each pixel's (residual) energy, (n_neurons, H, W) in one matmul.
4. Centre: the centre of mass of the part of the map above half its peak (optionally only within
   `radius` pixels of the peak): sub-pixel, and far steadier than the argmax, since with ~1000
   images the maps are ragged blobs about as large as a V4 receptive field.
5. Reliability: the same peak is computed for `n_permutations` maps of responses shuffled across
   images (the same shuffles for all neurons); a neuron whose peak does not exceed every shuffled
   peak (a permutation test at p < 1 / (n_permutations + 1)) has no clear RF in the data and gets the
   image centre ((W - 1) / 2, (H - 1) / 2) instead. The shuffles come from a fixed seed, so the
   result is deterministic.

Coordinates: (x, y) in model-input pixels (after the data's crop and resize), x along the width,
pixel centres at integers 0 .. W-1 (the convention of `encoders.twin.geometry` and of the readouts'
`locations`). `encoders.cores.output_shape.pixels_to_grid` maps them onto a core's feature grid in
grid_sample's [-1, 1] coordinates (what the Gaussian readout's mu is).
"""

from __future__ import annotations

from typing import NamedTuple

import torch
from torch import Tensor


class RFEstimate(NamedTuple):
    """What `rf_estimate` found for each neuron of a session."""

    centres: Tensor  # (n_neurons, 2) (x, y) in input pixels; the image centre where not reliable
    reliable: Tensor  # (n_neurons,) bool: the correlation peak beat every shuffled peak
    peak: Tensor  # (n_neurons,) the correlation map's maximum
    maps: Tensor  # (n_neurons, H, W) correlation of response with local energy


def _blur_matrix(n: int, sigma: float, dtype: torch.dtype) -> Tensor:
    """(n, n) Gaussian blur along one axis, rows summing to 1: the border is renormalised rather than
    zero-padded, so it is not darker than the middle (which would pull peaks inwards)."""
    t = torch.arange(n, dtype=dtype)
    kernel = torch.exp(-0.5 * ((t[:, None] - t[None]) / sigma) ** 2)
    return kernel / kernel.sum(1, keepdim=True)


def _gaussian_blur(x: Tensor, sigma: float) -> Tensor:
    """Separable Gaussian blur of (..., H, W) with a renormalised border, as two matrix products, each
    one large GEMM over all images (much faster than a convolution for one-channel maps of this size)."""
    if sigma <= 0:
        return x
    rows, cols = _blur_matrix(x.shape[-2], sigma, x.dtype), _blur_matrix(x.shape[-1], sigma, x.dtype)
    return ((x @ cols.T).transpose(-1, -2) @ rows.T).transpose(-1, -2)


def energy_maps(images: Tensor, blur_sigma: float = 2.5) -> Tensor:
    """Local contrast energy (N, H, W) of images (N, C, H, W): the local variance of the pixel values
    (channels summed) in a Gaussian window of `blur_sigma` pixels, blur(x^2) - blur(x)^2."""
    x = images.detach().to(torch.float32).sum(1, keepdim=True)
    mean = _gaussian_blur(x, blur_sigma)
    return (_gaussian_blur(x * x, blur_sigma) - mean * mean).clamp_min(0)[:, 0]


def _residual(x: Tensor, g: Tensor | None) -> Tensor:
    """Columns of x (N, k), centred and with their regression on the centred g (N,) removed."""
    x = x - x.mean(0)
    if g is None:
        return x
    g = g - g.mean()
    return x - g[:, None] * (g @ x / (g @ g).clamp_min(1e-12))[None]


def _standardise(x: Tensor) -> Tensor:
    return x / x.norm(dim=0, keepdim=True).clamp_min(1e-12)


def rf_estimate(
    images: Tensor, responses: Tensor, blur_sigma: float = 2.5, radius: float | None = None, n_permutations: int = 19,
    remove_global: bool = True, seed: int = 0,
) -> RFEstimate:
    """Each neuron's receptive-field centre from its responses to images (see the module docstring).

    Args:
        images: (N, C, H, W) model-space images of the training tier.
        responses: (N, n_neurons) responses to them.
        blur_sigma: width of the local-variance window, pixels (also smooths the correlation maps).
        radius: take the centre of mass only within this many pixels of the peak; None: the whole map.
        n_permutations: shuffled maps for the reliability test; 0 takes every peak as reliable.
        remove_global: partial out each image's mean energy (overall contrast).
        seed: of the shuffles.
    """
    if images.ndim != 4:
        raise ValueError(f"images must be (N, C, H, W), got shape {tuple(images.shape)}")
    if responses.ndim != 2 or responses.shape[0] != images.shape[0]:
        raise ValueError(f"responses must be (N, n_neurons) with N = {images.shape[0]} images, got {tuple(responses.shape)}")
    n_images, _, height, width = images.shape
    n_neurons = responses.shape[1]
    if n_images < 3:  # no correlation to speak of: every neuron gets the fallback
        maps = images.new_zeros(n_neurons, height, width, dtype=torch.float32)
        centre = torch.tensor([(width - 1) / 2, (height - 1) / 2]).expand(n_neurons, 2).clone()
        return RFEstimate(centre, torch.zeros(n_neurons, dtype=torch.bool), maps.new_zeros(n_neurons), maps)
    energy = energy_maps(images, blur_sigma).reshape(n_images, height * width)
    energy = torch.log(energy + 1e-3 * energy.median().clamp_min(1e-12))
    overall = energy.mean(1) if remove_global else None
    e = _standardise(_residual(energy, overall))
    responses = responses.detach().to(torch.float32)
    spread = (responses - responses.mean(0)).norm(dim=0)
    flat = spread <= 1e-6 * responses.norm(dim=0)  # constant but for rounding: no map at all, so not reliable
    r = _standardise(_residual(responses, overall)) * ~flat
    maps = r.T @ e  # (n_neurons, H * W), Pearson correlations

    peak, where = maps.max(1)
    if n_permutations > 0:
        generator = torch.Generator().manual_seed(seed)
        order = torch.stack([torch.randperm(n_images, generator=generator) for _ in range(n_permutations)])
        shuffled = torch.einsum("pin,ik->pnk", r[order], e)  # (permutations, n_neurons, H * W)
        reliable = peak > shuffled.amax(2).amax(0)
    else:
        reliable = peak > 0

    ys = torch.arange(height, dtype=torch.float32).repeat_interleave(width)
    xs = torch.arange(width, dtype=torch.float32).repeat(height)
    weight = (maps - peak[:, None] / 2).clamp_min(0)  # > 0 at the peak itself whenever the peak is > 0
    if radius is not None:
        px, py = xs[where], ys[where]
        weight = weight * ((xs[None] - px[:, None]).pow(2) + (ys[None] - py[:, None]).pow(2) <= radius**2)
    total = weight.sum(1).clamp_min(1e-12)
    centres = torch.stack([(weight * xs).sum(1) / total, (weight * ys).sum(1) / total], dim=1)
    centre = torch.tensor([(width - 1) / 2, (height - 1) / 2])
    centres = torch.where(reliable[:, None], centres, centre)
    return RFEstimate(centres=centres, reliable=reliable, peak=peak, maps=maps.reshape(n_neurons, height, width))


def rf_centres(images: Tensor, responses: Tensor, **options) -> Tensor:
    """(n_neurons, 2) receptive-field centres as (x, y) in model-input pixels (pixel centres at 0, 1, ...);
    the image centre for neurons without a reliable peak. Options: those of `rf_estimate`."""
    return rf_estimate(images, responses, **options).centres
