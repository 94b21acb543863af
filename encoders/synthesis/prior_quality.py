"""How natural a diffusion prior's samples are, measured against held-out data images.

- Fréchet distance (as FID, but in the features of a fixed network the project owns): the
  global-average-pooled features of a fixed, seeded random convolutional network (or of a trained
  encoding model's core, when given) for samples and for held-out images; the Fréchet distance
  between the two Gaussians fitted to them. Lower is better; 0 for identical distributions.
- Image statistics: RMS contrast (per-image pixel std, 0..255 units), mean luminance, and the
  slope of the radially averaged power spectrum in log-log (natural images: about -2).

A reference row (`data`: other held-out images) gives the floor of the distance at the same sample
size, and `noise` (Gaussian noise at the data's mean and contrast) a ceiling.
"""

from __future__ import annotations

import numpy as np
import scipy.linalg
import torch
from torch import nn


def random_features(channels: int = 1, width: int = 16, seed: int = 0) -> nn.Module:
    """A fixed random 4-layer ReLU conv net with global average pooling: (B, C, H, W) in [-1, 1] -> (B, 4 * width)."""
    generator = torch.Generator().manual_seed(seed)
    layers: list[nn.Module] = []
    in_channels = channels
    for i in range(4):
        conv = nn.Conv2d(in_channels, width * (i + 1), kernel_size=3, stride=2 if i else 1, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(conv.weight.shape, generator=generator) * (2 / (in_channels * 9)) ** 0.5)
            conv.bias.zero_()
        layers += [conv, nn.ReLU()]
        in_channels = width * (i + 1)

    class Pooled(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.body = nn.Sequential(*layers)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return self.body(x).mean((2, 3))

    return Pooled().eval().requires_grad_(False)


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance between Gaussians fitted to feature sets a (N, d) and b (M, d)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    root, _ = scipy.linalg.sqrtm(cov_a @ cov_b, disp=False)
    root = root.real
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a + cov_b - 2 * root))


def spectrum_slope(images: torch.Tensor) -> float:
    """Slope of log power vs log spatial frequency, radially averaged over (B, 1, S, S) images (mean removed)."""
    x = images[:, 0].double()
    x = x - x.mean((1, 2), keepdim=True)
    power = torch.fft.fftshift(torch.fft.fft2(x).abs() ** 2, dim=(-2, -1)).mean(0)
    size = power.shape[-1]
    y, xx = torch.meshgrid(torch.arange(size) - size // 2, torch.arange(size) - size // 2, indexing="ij")
    radius = (xx.double() ** 2 + y.double() ** 2).sqrt().round().long()
    keep = (radius >= 1) & (radius <= size // 2 - 1)  # no DC, no corners beyond Nyquist
    sums = torch.zeros(int(radius.max()) + 1, dtype=torch.float64).index_add_(0, radius[keep], power[keep])
    counts = torch.zeros_like(sums).index_add_(0, radius[keep], torch.ones_like(power[keep]))
    f = torch.nonzero(counts).flatten()
    slope = np.polyfit(np.log(f.numpy()), np.log((sums[f] / counts[f]).numpy()), 1)[0]
    return float(slope)


def image_statistics(images: torch.Tensor) -> dict[str, float]:
    """(B, 1, S, S) images in [-1, 1] -> mean luminance and RMS contrast (0..255 units), spectrum slope."""
    pixels = (images + 1) * 127.5
    return {"mean_luminance": float(pixels.mean()), "rms_contrast": float(pixels.flatten(1).std(1).mean()),
            "spectrum_slope": spectrum_slope(images)}


@torch.no_grad()
def quality(samples: torch.Tensor, held_out: torch.Tensor, features: nn.Module | None = None) -> dict[str, float]:
    """Fréchet distance of samples to held-out images (both (B, 1, S, S) in [-1, 1]) and the samples' statistics."""
    features = features or random_features(samples.shape[1])
    a = features(samples.float()).double().numpy()
    b = features(held_out.float()).double().numpy()
    return {"frechet_distance": frechet_distance(a, b), **image_statistics(samples)}


def noise_like(images: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Gaussian white noise with the images' mean and per-image contrast, clipped to [-1, 1]."""
    generator = torch.Generator().manual_seed(seed)
    noise = torch.randn(images.shape, generator=generator)
    return (images.mean() + noise * images.flatten(1).std(1).mean()).clamp(-1, 1)


def held_out_crops(path: str, size: int, n: int, tiers: list[str], scale: tuple[float, float], seed: int = 0) -> torch.Tensor:
    """n random crops (as in prior training) of a dataset's held-out tiers, (n, 1, size, size) in [-1, 1]."""
    from encoders.synthesis.prior_training import DatasetImages, dataset_images, random_crops

    images = dataset_images(DatasetImages(path=path, tiers=list(tiers)), 2 * size, grayscale=True)
    generator = torch.Generator().manual_seed(seed)
    index = torch.randint(len(images), (n,), generator=generator)
    return random_crops(images[index], size, scale, True, generator)


def evaluate_prior(prior_folder: str, data: str, n: int = 128, num_steps: int = 100, tiers: tuple[str, ...] = ("validation",),
                   scale: tuple[float, float] = (0.5, 1.0), seed: int = 0) -> dict:
    """The quality of a prior's unguided samples against held-out crops of a dataset, with the data floor and a noise ceiling.

    Returns {"prior": {...}, "data": {...}, "noise": {...}, "samples": tensor, "held_out": tensor, "settings": {...}}.
    """
    from encoders.synthesis.egg import load_prior
    from encoders.synthesis.prior_figures import unguided_samples

    prior = load_prior(str(prior_folder))
    size = prior.sample_size
    held_out = held_out_crops(data, size, 2 * n, list(tiers), scale, seed)
    reference, other = held_out[:n], held_out[n:]
    samples = unguided_samples(prior, n, num_steps, seed).float()
    if samples.shape[1] == 3:
        samples = (samples * torch.tensor([0.299, 0.587, 0.114]).view(1, 3, 1, 1)).sum(1, keepdim=True)
    features = random_features(1)
    return {
        "prior": quality(samples, reference, features), "data": quality(other, reference, features),
        "noise": quality(noise_like(other, seed), reference, features),
        "samples": samples, "held_out": other,
        "settings": {"prior": str(prior_folder), "data": str(data), "tiers": list(tiers), "n": n, "num_steps": num_steps,
                     "size": size, "crop_scale": list(scale), "seed": seed, "features": "fixed random 4-layer ReLU conv net (seed 0), pooled"},
    }


def report(prior: str, data: str, out: str | None = None, samples: int = 128, num_steps: int = 100,
           tiers: list[str] | None = None, seed: int = 0) -> dict:
    """Write `quality.json` and `quality.png` for a prior (into `out`, default the prior's folder); returns the numbers.

    Args:
        prior: the prior's diffusers folder.
        data: dataset file whose held-out images are the reference.
        out: output folder (default: the prior's folder).
        samples: unguided samples (and held-out crops) compared.
        num_steps: respaced sampling steps.
        tiers: tiers of held-out images (default: validation; never the prior's training tier).
        seed: seed of samples and crops.
    """
    from pathlib import Path

    from encoders.outputs import write_json
    from encoders.synthesis.prior_figures import quality_figure

    result = evaluate_prior(prior, data, samples, num_steps, tuple(tiers or ["validation"]), seed=seed)
    folder = Path(out or prior)
    numbers = {k: result[k] for k in ("prior", "data", "noise", "settings")}
    write_json(numbers, folder / "quality.json")
    quality_figure(result, folder / "quality.png")
    print(f"{prior}: Fréchet distance {numbers['prior']['frechet_distance']:.3g} (held-out data {numbers['data']['frechet_distance']:.3g}, "
          f"noise {numbers['noise']['frechet_distance']:.3g}); RMS contrast {numbers['prior']['rms_contrast']:.1f} "
          f"(data {numbers['data']['rms_contrast']:.1f}); spectrum slope {numbers['prior']['spectrum_slope']:.2f} "
          f"(data {numbers['data']['spectrum_slope']:.2f}) -> {folder / 'quality.json'}")
    return numbers
