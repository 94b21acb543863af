"""Gaussian blur of image batches, used to precondition image gradients (smooth, low-frequency steps)."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def gaussian_kernel(sigma: float, radius: int | None = None) -> torch.Tensor:
    """1-D Gaussian of standard deviation `sigma` (pixels), summing to 1; radius 3 sigma by default."""
    if sigma <= 0:
        raise ValueError(f"sigma must be positive, got {sigma}")
    radius = max(1, math.ceil(3 * sigma)) if radius is None else radius
    x = torch.arange(-radius, radius + 1, dtype=torch.float64)
    kernel = torch.exp(-0.5 * (x / sigma) ** 2)
    return (kernel / kernel.sum()).to(torch.float32)


def gaussian_blur(images: torch.Tensor, sigma: float) -> torch.Tensor:
    """Blur (B, C, H, W) per channel with a separable Gaussian; sigma <= 0 returns the input.

    Edges are reflected so that a gradient near the border is not lost to zero padding; the
    radius is capped below the image size, which reflection requires.
    """
    if sigma <= 0:
        return images
    height, width = images.shape[-2:]
    radius = min(max(1, math.ceil(3 * sigma)), height - 1, width - 1)
    if radius < 1:
        return images
    kernel = gaussian_kernel(sigma, radius).to(device=images.device, dtype=images.dtype)
    channels = images.shape[1]
    x = F.pad(images, (radius, radius, radius, radius), mode="reflect")
    # depthwise: each channel is blurred on its own
    x = F.conv2d(x, kernel.view(1, 1, 1, -1).expand(channels, 1, 1, -1), groups=channels)
    return F.conv2d(x, kernel.view(1, 1, -1, 1).expand(channels, 1, -1, 1), groups=channels)
