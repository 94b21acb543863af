"""Invariance manifolds: per neuron, a closed loop (or torus) of images that all drive it near its MEI's rate.

DRAFT
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn

from encoders.contract import device_of
from encoders.errors import EncodersError
from encoders.synthesis.energies import NeuronActivation
from encoders.synthesis.targets import Target

DEFAULT_POINTS = 20
DEFAULT_STEPS = 500
DEFAULT_LR = 0.01
DEFAULT_WIDTH = 32
DEFAULT_DEPTH = 3
DEFAULT_LATENT_FREQUENCIES = 2
DEFAULT_FREQUENCY = 0.2
DEFAULT_TEMPERATURE = 0.3
DEFAULT_CONTRASTIVE = 1.0
DEFAULT_NEIGHBOURS = 0.1
DEFAULT_MARGIN = 0.02


def _coordinates(height: int, width: int) -> torch.Tensor:
    """(H * W, 2) pixel centres (x right, y down) on one scale: the longer side spans [-1, 1]."""
    half = (max(height, width) - 1) / 2 or 1.0
    rows = (torch.arange(height, dtype=torch.float32) - (height - 1) / 2) / half
    cols = (torch.arange(width, dtype=torch.float32) - (width - 1) / 2) / half
    y, x = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], 1)


def latent_grid(points_per_dim: int, latent_dim: int) -> torch.Tensor:
    """(points_per_dim ** latent_dim, latent_dim) evenly spaced latents in [0, 1), the last dimension fastest."""
    axis = torch.arange(points_per_dim, dtype=torch.float32) / points_per_dim
    axes = torch.meshgrid(*[axis] * latent_dim, indexing="ij")
    return torch.stack([a.flatten() for a in axes], 1)


class InvarianceGenerator(nn.Module):
    """n neurons' generators: per neuron, a coordinate network gives the Fourier coefficient images of its loop."""

    def __init__(
        self,
        n_neurons: int,
        shape: Sequence[int],
        norm: float,
        latent_dim: int = 1,
        harmonics: int = 4,
        width: int = DEFAULT_WIDTH,
        depth: int = DEFAULT_DEPTH,
        frequency: float = DEFAULT_FREQUENCY,
        seeds: int | Sequence[int] = 0,
        decay: float = 3.0,
    ):
        super().__init__()
        channels, height, width_px = (int(s) for s in shape)
        self.shape = (channels, height, width_px)
        self.norm = float(norm)
        self.latent_dim = int(latent_dim)
        self.harmonics = int(harmonics)
        n = int(n_neurons)
        terms = (2 * self.harmonics + 1) ** self.latent_dim
        coords = _coordinates(height, width_px)
        self.register_buffer("coords", coords, persistent=False)
        self.register_buffer("extent", coords.abs().amax(0), persistent=False)
        spacing = 2 / max(max(height, width_px) - 1, 1)
        omega = 2 * math.pi * float(frequency) / spacing  # radians per coordinate unit at `frequency` cycles/pixel
        seeds = [int(seeds)] * n if isinstance(seeds, numbers.Integral) else [int(s) for s in seeds]
        layers = max(int(depth) - 1, 0)
        order = self.basis(latent_grid(1, self.latent_dim)).new_tensor(self._orders())  # (terms,) harmonic order
        shapes = {
            "first_weight": ((2, width), omega / math.sqrt(2)),
            "first_bias": ((width,), math.pi),
            "hidden_weight": ((layers, width, width), math.sqrt(6 / width)),
            "hidden_bias": ((layers, width), 1.0 / math.sqrt(width)),
            "out_weight": ((width, terms * channels), math.sqrt(6 / width)),
        }
        values = {name: torch.empty(n, *s) for name, (s, _) in shapes.items()}
        for i, seed in enumerate(seeds):
            generator = torch.Generator().manual_seed(seed)
            for name, (s, scale) in shapes.items():
                values[name][i] = (torch.rand(s, generator=generator) * 2 - 1) * scale
        scale = (1 + order) ** -float(decay)
        values["out_weight"] = (values["out_weight"].view(n, width, terms, channels) * scale[:, None]).flatten(2)
        for name, value in values.items():
            setattr(self, name, nn.Parameter(value))

    def _orders(self) -> list[float]:
        one = [0] + [k for k in range(1, self.harmonics + 1) for _ in range(2)]
        if self.latent_dim == 1:
            return [float(k) for k in one]
        return [float(max(a, b)) for a in one for b in one]

    @property
    def n_neurons(self) -> int:
        return self.first_bias.shape[0]

    def basis(self, latents: torch.Tensor) -> torch.Tensor:
        """(..., terms): 1, cos 2 pi k z, sin 2 pi k z (k = 1..K) per latent dimension; on the torus their products."""
        k = torch.arange(1, self.harmonics + 1, device=latents.device, dtype=latents.dtype)
        angles = 2 * math.pi * latents[..., None] * k  # (..., d, K)
        one = torch.stack([angles.cos(), angles.sin()], -1).flatten(-2)  # (..., d, 2K)
        one = torch.cat([torch.ones_like(one[..., :1]), one], -1)  # (..., d, 2K + 1)
        if self.latent_dim == 1:
            return one[..., 0, :]
        return (one[..., 0, :, None] * one[..., 1, None, :]).flatten(-2)

    def coefficients(self, affine: torch.Tensor | None = None, neurons: torch.Tensor | None = None) -> torch.Tensor:
        device = self.first_bias.device
        rows = torch.arange(self.n_neurons, device=device) if neurons is None else neurons.to(device)
        coords = self.coords.expand(len(rows), *self.coords.shape)
        if affine is not None:
            affine = affine.to(device)
            coords = coords @ affine[:, :, :2].transpose(1, 2) + affine[:, None, :, 2]
            coords = torch.maximum(torch.minimum(coords, self.extent), -self.extent)
        hidden = torch.sin(torch.bmm(coords, self.first_weight[rows]) + self.first_bias[rows][:, None])
        for layer in range(self.hidden_weight.shape[1]):
            hidden = torch.sin(torch.bmm(hidden, self.hidden_weight[rows, layer]) + self.hidden_bias[rows, layer][:, None])
        out = torch.bmm(hidden, self.out_weight[rows])  # (m, HW, terms * C)
        channels = self.shape[0]
        return out.view(len(rows), out.shape[1], -1, channels)  # (m, HW, terms, C)

    def forward(self, latents: torch.Tensor, affine: torch.Tensor | None = None, neurons: torch.Tensor | None = None, centred=False) -> torch.Tensor:
        coefficients = self.coefficients(affine, neurons)
        basis = self.basis(latents.to(coefficients.device))
        if centred:
            basis = basis * (torch.arange(basis.shape[-1], device=basis.device) > 0)
        if basis.ndim == 2:
            images = torch.einsum("pt,mqtc->mpcq", basis, coefficients)
        else:
            images = torch.einsum("mpt,mqtc->mpcq", basis, coefficients)
        images = images.reshape(*images.shape[:3], *self.shape[1:])
        scale = self.norm / images.flatten(2).norm(dim=2).clamp_min(1e-12)
        return images * scale[..., None, None, None]


def _pairs(points_per_dim: int, latent_dim: int, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative masks (P, P) on the periodic grid: positives within `radius` grid steps (Chebyshev,
    wrapping round), negatives all other points, neither the point itself."""
    grid = (latent_grid(points_per_dim, latent_dim) * points_per_dim).round().long()
    difference = (grid[:, None] - grid[None]).abs()
    steps = torch.minimum(difference, points_per_dim - difference).amax(-1)
    positive = (steps <= radius) & (steps > 0)
    return positive, steps > radius


def contrastive_loss(images: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, temperature: float) -> torch.Tensor:
    """(m,) -tau * mean_i log(mean_{j pos} exp(s_ij / tau) / mean_{j neg} exp(s_ij / tau)), s cosine similarity."""
    flat = images.flatten(2)
    flat = flat - flat.mean(2, keepdim=True)
    flat = flat / flat.norm(dim=2, keepdim=True).clamp_min(1e-12)
    logits = flat @ flat.transpose(1, 2) / temperature  # (m, P, P)
    minus = torch.finfo(logits.dtype).min
    pos = torch.logsumexp(logits.masked_fill(~positive, minus), 2) - positive.sum(1).log()
    neg = torch.logsumexp(logits.masked_fill(~negative, minus), 2) - negative.sum(1).log()
    return -temperature * (pos - neg).mean(1)


def _rule(relative: torch.Tensor, mean_floor: float, point_floor: float) -> torch.Tensor:
    return (relative.mean(1) >= mean_floor) & (relative.amin(1) >= point_floor)


@dataclass
class ManifoldResult:
    images: torch.Tensor
    latents: torch.Tensor
    activations: torch.Tensor
    relative: torch.Tensor
    reached: torch.Tensor
    stopped_at: torch.Tensor
    trace: torch.Tensor
    generator: InvarianceGenerator
    mean_floor: float
    point_floor: float
    norm: float


def invariance_manifolds(
    model,
    targets: Sequence[Target],
    mei_activation,
    norm: float,
    latent_dim: int = 1,
    points: int = DEFAULT_POINTS,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    seed: int | Sequence[int] = 0,
    mean_floor: float = 0.9,
    point_floor: float = 0.85,
    contrastive: float = DEFAULT_CONTRASTIVE,
    temperature: float = DEFAULT_TEMPERATURE,
    neighbours: float = DEFAULT_NEIGHBOURS,
    margin: float = DEFAULT_MARGIN,
    width: int = DEFAULT_WIDTH,
    depth: int = DEFAULT_DEPTH,
    latent_frequencies: int = DEFAULT_LATENT_FREQUENCIES,
    frequency: float = DEFAULT_FREQUENCY,
    early_stopping: bool = True,
    half_life: float = 1e9,
    centred: int = 0,
) -> ManifoldResult:
    targets = [(str(s), str(n)) for s, n in targets]
    n = len(targets)
    reference = torch.as_tensor(mei_activation, dtype=torch.float32).detach().flatten()
    shape = tuple(int(s) for s in model.input_shape)
    device = device_of(model)
    per_dim = int(points)
    grid = latent_grid(per_dim, latent_dim).to(device)
    count = len(grid)
    radius = max(1, round(neighbours * per_dim))
    positive, negative = (mask.to(device) for mask in _pairs(per_dim, latent_dim, radius))
    seeds = [int(seed)] * n if isinstance(seed, numbers.Integral) else [int(s) for s in seed]
    jitter = torch.stack([torch.rand((steps, latent_dim), generator=torch.Generator().manual_seed(s)) for s in seeds], 1)
    jitter = (jitter / per_dim).to(device)  # (steps, n, d): a random shift of the whole grid, within one spacing

    with torch.inference_mode(False), torch.enable_grad():
        generator = InvarianceGenerator(n, shape, norm, latent_dim, latent_frequencies, width, depth, frequency, seeds).to(device)
        parameters = list(generator.parameters())
        first, second = [torch.zeros_like(p) for p in parameters], [torch.zeros_like(p) for p in parameters]
        reference = reference.to(device)
        stopped_at = torch.full((n,), steps, dtype=torch.long)
        trace = torch.empty(steps, n)
        active = torch.arange(n, device=device)
        activation = None
        for step in range(steps):
            if activation is None:
                activation = NeuronActivation(model, [targets[i] for i in active.tolist() for _ in range(count)])
            latents = (grid + jitter[step, active][:, None]) % 1.0
            images = generator(latents, neurons=active, centred=step < centred)
            relative = activation.activation(images.flatten(0, 1)).view(len(active), count) / reference[active][:, None]
            shortfall = (point_floor + margin - relative).clamp_min(0).mean(1)
            loss = -relative.mean(1) + shortfall + contrastive * 0.5 ** (step / half_life) * contrastive_loss(images, positive, negative, temperature)
            gradients = torch.autograd.grad(loss.sum(), parameters)
            trace[step:, active.cpu()] = relative.detach().mean(1).cpu()
            done = torch.zeros(len(active), dtype=torch.bool, device=device)
            if early_stopping:
                candidates = _rule(relative.detach(), mean_floor, point_floor)
                if candidates.any():
                    with torch.no_grad():
                        rows = active[candidates]
                        check = generator(grid, neurons=rows)
                        rates = NeuronActivation(model, [targets[i] for i in rows.tolist() for _ in range(count)]).activation(check.flatten(0, 1))
                        done[candidates] = _rule(rates.view(len(rows), count) / reference[rows][:, None], mean_floor, point_floor)
            if done.any():
                stopped_at[active[done].cpu()] = step
            moving = active[~done]
            with torch.no_grad():
                for p, g, m1, m2 in zip(parameters, gradients, first, second):
                    g = g[moving]
                    m1[moving] = 0.9 * m1[moving] + 0.1 * g
                    m2[moving] = 0.999 * m2[moving] + 0.001 * g * g
                    mhat = m1[moving] / (1 - 0.9 ** (step + 1))
                    vhat = m2[moving] / (1 - 0.999 ** (step + 1))
                    p[moving] -= lr * mhat / (vhat.sqrt() + 1e-8)
            if done.any():
                active = moving
                activation = None
                if len(active) == 0:
                    break

        with torch.no_grad():
            images = generator(grid)
            rates = NeuronActivation(model, [t for t in targets for _ in range(count)]).activation(images.flatten(0, 1)).view(n, count)
    relative = (rates / reference[:, None]).cpu()
    return ManifoldResult(images.cpu(), grid.cpu(), rates.cpu(), relative, _rule(relative, mean_floor, point_floor), stopped_at,
                          trace, generator.cpu(), mean_floor, point_floor, float(norm))
