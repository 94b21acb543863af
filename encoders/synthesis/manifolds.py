"""Invariance manifolds: per neuron, a closed loop (or torus) of images that all drive it nearly as well as its MEI.

Follows Baroni et al. 2022 ("Learning invariance manifolds of visual sensory neurons", NeurIPS 2022 workshop
NeurReps, openreview 2dQyENiU330; code sinzlab/cppn_for_invariances): a coordinate network (CPPN) generates
images from a periodic latent and is trained to maximise the neuron's activation together with a contrastive
(InfoNCE on a latent grid) term that keeps latent neighbours alike and distant latents apart. And Bashiri,
Baroni et al. 2025 (LAMINR, "Learning and aligning manifolds of single-neuron invariances using implicit
neural representations", ICLR 2025, openreview kbjJ9ZOakb): a template loop is accepted when its mean
activation is >= 90 % and every point >= 85 % of the MEI's, and is aligned to other neurons by an affine
transform of the coordinates its implicit neural representation (INR) reads. The code here is written from
the papers' descriptions; the settings taken from them are the floors, tau = 0.3 and the positives' reach
(10 % of the loop) of the contrastive term.

What this module does its own way:

- Generator. A neuron's loop is a trigonometric polynomial in the latent z in [0, 1):

      x(z)[pixel] = sum_t  s_t * phi_t(z) * g_t(pixel),   phi = 1, cos 2 pi k z, sin 2 pi k z (k = 1..K),

  whose coefficient images g_t come from one small sine network (SIREN-like) of the pixel coordinates per
  neuron; every image is then rescaled to L2 `norm` (the MEI's). The papers feed z into the network instead.
  Here the network runs once per pixel, not once per (latent, pixel), so the cost does not grow with the
  number of latents; loops are band-limited (K harmonics), so they cannot hop between distant images between
  grid points; and the fixed scale s_t = k^-decay of harmonic k is a preconditioner (Adam moves every weight
  by about lr, so the image moves by about s_t lr along harmonic k): loops start and stay smooth, ellipses
  first, finer structure later. On the torus (2-D latent) phi is the product of the two 1-D bases and k the
  larger of the two orders.
- Contrastive term. On the evenly spaced latent grid (shifted each step by a random offset within one
  spacing, per neuron), with cosine similarities s_ij of the mean-removed images (Pearson correlation, so
  the mean luminance, which most cells ignore, cannot buy contrast; the published code fixes the images' mean
  and std instead) and positives j within `neighbours` of the loop (Chebyshev on the torus, wrapping):

      C = -tau * mean_i log( mean_{j pos} exp(s_ij / tau) / mean_{j neg} exp(s_ij / tau) ).

- Weighting. Per neuron, loss = A + w(t) C with A = -mean_i r_i + mean_i max(0, point_floor + margin - r_i)
  (r = rate / MEI rate on the step's latents; the hinge lifts the loop's weakest points) and w(t) =
  contrastive * 2^(-t / half_life). The contrastive term first dominates (w = 10): the loop spreads out
  before it is pulled onto the neuron's high-activation set, so it lands there already spread (a complex
  cell's winds once round the phase circle); as w falls the activation takes over until the stopping rule
  is met. A weight that does not decay fails both ways: at a fixed w = 1, 10 of 16 complex cells (1x24x24,
  seeds 0-15) folded their loop back on itself (phase winding 0: it cannot unfold without passing through
  zero drive) and stayed below the floors for 600 steps, and so did a simple cell, whose best images are
  one point; with the decay all 16 wind once and all reach the rule, the simple cell by collapsing its loop.
- Stopping. A neuron stops at the first step whose training sample meets the rule and whose loop then also
  meets it on the evaluation grid; its weights are frozen from that step (`stopped_at`). The optimiser is
  Adam, written out here so that it can leave stopped neurons untouched.
- Alignment (`align_manifolds`): per (template, target) pair, a 2 x 2 matrix and a translation of the pixel
  coordinates, from several starting rotations, by Adam on the target's mean relative activation along the
  aligned loop. Transformed coordinates are clamped to the image's extent (the generator was never trained
  outside it). A shift of the latent is not learned: the loop is scored on an evenly spaced periodic grid,
  whose mean a shift does not change.
- Grouping (`group_neurons`): by mutual explanation (see there); a collapsed loop (a simple cell's) explains
  every neuron that responds to its one image, so a one-way rule would merge cells of different invariance.

Every function is batched over neurons: the generators' weights have a leading neuron dimension and one
optimisation trains all of them (torch.bmm / einsum, no Python loop over neurons). Neurons never interact:
a neuron's initial weights and latent offsets come from its own seed, its loss from its own images, and
Adam is elementwise, so a neuron gets the same loop in any batch, up to float rounding.
"""

from __future__ import annotations

import copy
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

DEFAULT_POINTS = 20  # latents per loop (per dimension on the torus): the evaluation grid of the stopping rule
DEFAULT_STEPS = 1000  # an upper bound: at 1x32x32 complex cells stop after 175-185 steps, simple ~200, others <= 410
DEFAULT_LR = 0.01  # Adam, on the generators' weights
DEFAULT_MEAN_FLOOR = 0.9  # LAMINR's acceptance rule: mean >= 90 % of the MEI's activation ...
DEFAULT_POINT_FLOOR = 0.85  # ... and every point >= 85 %
DEFAULT_CONTRASTIVE = 10.0  # the contrastive weight at step 0, relative to the activation term's 1
DEFAULT_HALF_LIFE = 50.0  # steps in which the contrastive weight halves
DEFAULT_TEMPERATURE = 0.3  # tau, as in Baroni et al.'s simulated-cell notebooks
DEFAULT_NEIGHBOURS = 0.1  # positives: latents within 10 % of the loop (2 grid steps either side at 20 points)
DEFAULT_MARGIN = 0.02  # the hinge lifts each point to point_floor + 2 % of the MEI's activation
DEFAULT_HARMONICS = 4  # K: the loop's highest harmonic of z
DEFAULT_DECAY = 3.0  # harmonic k is scaled by k^-3
DEFAULT_WIDTH = 32  # units per sine layer
DEFAULT_DEPTH = 3  # sine layers
DEFAULT_FREQUENCY = 0.2  # cycles per pixel: the first layer's initial frequencies are uniform up to this
DEFAULT_ALIGN_STEPS = 150
DEFAULT_ALIGN_LR = 0.03
DEFAULT_ROTATIONS = 4  # starting rotations of the alignment: 0, 45, 90, 135 degrees
DEFAULT_GROUP_THRESHOLD = 0.85


# ---- the generator ---------------------------------------------------------------------------------------
def pixel_coordinates(height: int, width: int) -> torch.Tensor:
    """(H * W, 2) pixel centres (x to the right, y down), row-major, on one scale: the longer side spans [-1, 1]."""
    half = max((max(height, width) - 1) / 2, 1.0)
    rows = (torch.arange(height, dtype=torch.float32) - (height - 1) / 2) / half
    cols = (torch.arange(width, dtype=torch.float32) - (width - 1) / 2) / half
    y, x = torch.meshgrid(rows, cols, indexing="ij")
    return torch.stack([x.flatten(), y.flatten()], 1)


def latent_grid(points: int, latent_dim: int) -> torch.Tensor:
    """(points ** latent_dim, latent_dim) evenly spaced latents in [0, 1): k / points; on the torus the last
    dimension varies fastest (row-major, so `.view(points, points)` lays a (P,) quantity out as the torus)."""
    axis = torch.arange(points, dtype=torch.float32) / points
    axes = torch.meshgrid(*[axis] * latent_dim, indexing="ij")
    return torch.stack([a.flatten() for a in axes], 1)


def _generator(seed: int, stream: int) -> torch.Generator:
    """Independent torch generators per (seed, stream): stream 0 for a neuron's weights, 1 for its latent offsets."""
    return torch.Generator().manual_seed(2 * int(seed) + stream)


class InvarianceGenerator(nn.Module):
    """The loops (or tori) of n neurons: per neuron, a sine network of the pixel coordinates gives the loop's
    Fourier coefficient images (see the module docstring); all weights have a leading neuron dimension.

    Args:
        n_neurons: generators held.
        shape: (C, H, W) of the images.
        norm: L2 norm of every image.
        latent_dim: 1 (a loop) or 2 (a torus).
        harmonics: K, the highest harmonic of each latent.
        width, depth: units per sine layer and number of sine layers.
        frequency: cycles per pixel: each of the first layer's two weights per unit starts uniform in
            +-2 pi frequency / sqrt(2) radians per pixel, so no unit starts above `frequency`.
        seeds: one int for every neuron, or one per neuron; neuron i's weights are drawn from its own seed.
        decay: harmonic k of the loop is scaled by k^-decay (the constant term as k = 1).
    """

    def __init__(
        self,
        n_neurons: int,
        shape: Sequence[int],
        norm: float,
        latent_dim: int = 1,
        harmonics: int = DEFAULT_HARMONICS,
        width: int = DEFAULT_WIDTH,
        depth: int = DEFAULT_DEPTH,
        frequency: float = DEFAULT_FREQUENCY,
        seeds: int | Sequence[int] = 0,
        decay: float = DEFAULT_DECAY,
    ):
        super().__init__()
        channels, height, width_px = (int(s) for s in shape)
        self.shape = (channels, height, width_px)
        self.norm = float(norm)
        self.latent_dim = int(latent_dim)
        self.harmonics = int(harmonics)
        n = int(n_neurons)
        seeds = [int(seeds)] * n if isinstance(seeds, numbers.Integral) else [int(s) for s in seeds]
        coords = pixel_coordinates(height, width_px)
        self.register_buffer("coords", coords, persistent=False)
        self.register_buffer("extent", coords.abs().amax(0), persistent=False)
        one = [1] + [k for k in range(1, self.harmonics + 1) for _ in range(2)]  # order of 1, cos, sin, cos, ...
        orders = torch.tensor(one if self.latent_dim == 1 else [max(a, b) for a in one for b in one], dtype=torch.float32)
        self.register_buffer("harmonic_scale", orders ** -float(decay), persistent=False)
        terms = len(orders)
        spacing = 2 / max(max(height, width_px) - 1, 1)  # coordinate units per pixel
        omega = 2 * math.pi * float(frequency) / spacing
        layers = int(depth) - 1
        bounds = {  # name: (shape per neuron, uniform bound)
            "first_weight": ((2, width), omega / math.sqrt(2)),
            "first_bias": ((width,), math.pi),
            "hidden_weight": ((layers, width, width), math.sqrt(6 / width)),
            "hidden_bias": ((layers, width), 1 / math.sqrt(width)),
            "out_weight": ((width, terms * channels), math.sqrt(6 / width)),
        }
        values = {name: torch.empty(n, *s) for name, (s, _) in bounds.items()}
        for i, seed in enumerate(seeds):
            generator = _generator(seed, 0)
            for name, (s, bound) in bounds.items():
                values[name][i] = (torch.rand(s, generator=generator) * 2 - 1) * bound
        for name, value in values.items():
            setattr(self, name, nn.Parameter(value))

    @property
    def n_neurons(self) -> int:
        return self.first_bias.shape[0]

    def basis(self, latents: torch.Tensor) -> torch.Tensor:
        """phi(z): (..., terms) for latents (..., latent_dim); 1, cos 2 pi k z, sin 2 pi k z, k = 1..K, per
        dimension, and on the torus the products of the two dimensions' bases."""
        k = torch.arange(1, self.harmonics + 1, device=latents.device, dtype=latents.dtype)
        angles = 2 * math.pi * latents[..., None] * k  # (..., d, K)
        one = torch.stack([angles.cos(), angles.sin()], -1).flatten(-2)  # (..., d, 2K)
        one = torch.cat([torch.ones_like(one[..., :1]), one], -1)  # (..., d, 2K + 1)
        if self.latent_dim == 1:
            return one[..., 0, :]
        return (one[..., 0, :, None] * one[..., 1, None, :]).flatten(-2)

    def coefficients(self, affine: torch.Tensor | None = None, neurons: torch.Tensor | None = None) -> torch.Tensor:
        """The loops' scaled coefficient images s_t g_t, (m, H * W, terms, C), for the rows `neurons` (m,)
        (indices into the generators, repeats allowed; None: all), each reading its coordinates through its
        own affine (m, 2, 3) (x' = A x + b, clamped to the image's extent) if given."""
        device = self.first_bias.device
        rows = torch.arange(self.n_neurons, device=device) if neurons is None else torch.as_tensor(neurons, device=device)
        coords = self.coords.expand(len(rows), *self.coords.shape)
        if affine is not None:
            affine = affine.to(device)
            coords = coords @ affine[:, :, :2].transpose(1, 2) + affine[:, None, :, 2]
            coords = torch.maximum(torch.minimum(coords, self.extent), -self.extent)
        hidden = torch.sin(torch.bmm(coords, self.first_weight[rows]) + self.first_bias[rows][:, None])
        for layer in range(self.hidden_weight.shape[1]):
            hidden = torch.sin(torch.bmm(hidden, self.hidden_weight[rows, layer]) + self.hidden_bias[rows, layer][:, None])
        out = torch.bmm(hidden, self.out_weight[rows])  # (m, H * W, terms * C)
        return out.view(len(rows), out.shape[1], -1, self.shape[0]) * self.harmonic_scale[:, None]

    def forward(self, latents: torch.Tensor, affine: torch.Tensor | None = None, neurons: torch.Tensor | None = None) -> torch.Tensor:
        """Images (m, P, C, H, W), each at L2 `norm`, at latents (P, latent_dim) shared by all rows or
        (m, P, latent_dim) per row; rows, affine as in `coefficients` (m = n_neurons when neurons is None)."""
        coefficients = self.coefficients(affine, neurons)
        basis = self.basis(latents.to(coefficients.device, coefficients.dtype))
        equation = "pt,mqtc->mpcq" if basis.ndim == 2 else "mpt,mqtc->mpcq"
        images = torch.einsum(equation, basis, coefficients)
        images = images.reshape(*images.shape[:3], *self.shape[1:])
        scale = self.norm / images.flatten(2).norm(dim=2).clamp_min(1e-12)
        return images * scale[..., None, None, None]


# ---- the contrastive term ------------------------------------------------------------------------------------
def neighbour_masks(points: int, latent_dim: int, radius: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Positive and negative pairs (P, P) of `latent_grid(points, latent_dim)`: positives within `radius` grid
    steps (the larger of the per-dimension steps, wrapping round), negatives all farther; never a point itself."""
    grid = (latent_grid(points, latent_dim) * points).round().long()
    difference = (grid[:, None] - grid[None]).abs()
    steps = torch.minimum(difference, points - difference).amax(-1)
    return (steps > 0) & (steps <= radius), steps > radius


def contrastive_loss(images: torch.Tensor, positive: torch.Tensor, negative: torch.Tensor, temperature: float) -> torch.Tensor:
    """C per loop, (m,), for images (m, P, C, H, W) at the latents the (P, P) masks refer to (module docstring).

    Lower is more spread: about -0.87 for a complex cell's phase circle and -0.18 for a simple cell's loop
    (its images differ only in what the cell ignores) at 1x24x24 with the defaults; 0 for P equal images."""
    flat = images.flatten(2)
    flat = flat - flat.mean(2, keepdim=True)
    flat = flat / flat.norm(dim=2, keepdim=True).clamp_min(1e-12)
    logits = flat @ flat.transpose(1, 2) / temperature  # (m, P, P)
    lowest = torch.finfo(logits.dtype).min
    pos = torch.logsumexp(logits.masked_fill(~positive, lowest), 2) - positive.sum(1).log()
    neg = torch.logsumexp(logits.masked_fill(~negative, lowest), 2) - negative.sum(1).log()
    return -temperature * (pos - neg).mean(1)


def _meets(relative: torch.Tensor, mean_floor: float, point_floor: float) -> torch.Tensor:
    """The stopping rule per loop: relative (m, P) -> (m,) mean >= mean_floor and every point >= point_floor."""
    return (relative.mean(1) >= mean_floor) & (relative.amin(1) >= point_floor)


# ---- training --------------------------------------------------------------------------------------------------
@dataclass
class ManifoldResult:
    """Invariance manifolds of n neurons (CPU tensors).

    images: (n, P, C, H, W) model space: each loop at the P latents of `latents`, each image at L2 `norm`.
    latents: (P, latent_dim) evenly spaced in [0, 1) (periodic); P = points, or points ** 2 on the torus.
    activations: (n, P) each image's rate of its neuron; relative: (n, P) activations / MEI activation.
    reached: (n,) the stopping rule on `relative` (mean >= mean_floor and min >= point_floor).
    stopped_at: (n,) the step at which the neuron stopped (steps if it never did, or early_stopping was off).
    trace: (steps, n) the mean relative activation of the step's training sample (the loop at the P grid
        latents shifted by that step's random offset), held at its last value after a neuron stopped.
    contrastive: (n,) the contrastive term C of the final loop on the grid (`contrastive_loss`): how spread
        the loop is; a loop collapsed onto one image in what the neuron sees scores near 0.
    generator: the trained `InvarianceGenerator` (CPU, frozen), to re-sample the loops or align them.
    targets: the n (session, neuron_id), in order.
    """

    images: torch.Tensor
    latents: torch.Tensor
    activations: torch.Tensor
    relative: torch.Tensor
    reached: torch.Tensor
    stopped_at: torch.Tensor
    trace: torch.Tensor
    contrastive: torch.Tensor
    generator: InvarianceGenerator
    targets: list[Target]
    mean_floor: float
    point_floor: float
    norm: float


def _integer(value, name: str, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < low:
        raise EncodersError(f"{name} must be an integer >= {low}, got {value!r}")
    return int(value)


def _floors(mean_floor: float, point_floor: float) -> tuple[float, float]:
    for name, value in (("mean_floor", mean_floor), ("point_floor", point_floor)):
        if not 0 < value <= 1:
            raise EncodersError(f"{name} must be in (0, 1] (a fraction of the MEI's activation), got {value}")
    return float(mean_floor), float(point_floor)


def _references(mei_activation, targets: list[Target], name: str = "mei_activation") -> torch.Tensor:
    reference = torch.as_tensor(mei_activation, dtype=torch.float32).detach().flatten().cpu()
    if reference.shape != (len(targets),):
        raise EncodersError(f"{name} must be one rate per target ({len(targets)}), got {reference.numel()} values")
    bad = ~(torch.isfinite(reference) & (reference > 0))
    if bad.any():
        ids = [targets[i][1] for i in torch.nonzero(bad).flatten().tolist()[:5]]
        raise EncodersError(f"{name} must be positive and finite (the floors' reference), not for neurons {ids}")
    return reference


def _seeds(seed, n: int) -> list[int]:
    if isinstance(seed, numbers.Integral) and not isinstance(seed, bool):
        return [int(seed)] * n
    seeds = seed.flatten().tolist() if torch.is_tensor(seed) else list(seed) if isinstance(seed, Sequence) else []
    if len(seeds) != n or not all(isinstance(s, numbers.Integral) and not isinstance(s, bool) for s in seeds):
        raise EncodersError(f"seed must be one int or one int per target ({n}), got {seed!r}")
    return [int(s) for s in seeds]


def invariance_manifolds(
    model,
    targets: Sequence[Target],
    mei_activation: torch.Tensor | Sequence[float],
    norm: float,
    latent_dim: int = 1,
    points: int = DEFAULT_POINTS,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    seed: int | Sequence[int] = 0,
    mean_floor: float = DEFAULT_MEAN_FLOOR,
    point_floor: float = DEFAULT_POINT_FLOOR,
    contrastive: float = DEFAULT_CONTRASTIVE,
    half_life: float = DEFAULT_HALF_LIFE,
    temperature: float = DEFAULT_TEMPERATURE,
    neighbours: float = DEFAULT_NEIGHBOURS,
    margin: float = DEFAULT_MARGIN,
    harmonics: int = DEFAULT_HARMONICS,
    decay: float = DEFAULT_DECAY,
    width: int = DEFAULT_WIDTH,
    depth: int = DEFAULT_DEPTH,
    frequency: float = DEFAULT_FREQUENCY,
    early_stopping: bool = True,
) -> ManifoldResult:
    """Train one invariance loop (latent_dim 1) or torus (2) per target neuron, all neurons in one batch.

    See the module docstring for the generator, the loss, its weighting and the stopping rule.

    Args:
        model: a `ResponseModel` (eval mode), on the device the optimisation runs on.
        targets: (session, neuron_id) per neuron; ids are checked before anything is trained.
        mei_activation: (n,) each neuron's MEI activation (> 0): the floors are fractions of it.
        norm: L2 norm of every image, the MEIs' (e.g. `default_norm(model.input_shape)`).
        latent_dim: 1 (a loop) or 2 (a torus).
        points: latents per dimension of the evaluation grid (the rule is checked there), >= 2 harmonics + 1.
        steps: the most Adam steps; lr: Adam's step size on the generators' weights.
        seed: one int for every neuron or one per neuron: a neuron's initial weights and latent offsets.
        mean_floor, point_floor: the stopping rule, fractions of the MEI activation in (0, 1]; a point floor
            above the mean floor is allowed (the mean floor is then implied).
        contrastive, half_life: the contrastive weight w(t) = contrastive * 2^(-t / half_life); 0 = none.
        temperature: tau of the contrastive term; neighbours: its positives' reach, a fraction of the loop.
        margin: the hinge lifts each point to point_floor + margin.
        harmonics, decay, width, depth, frequency: of the `InvarianceGenerator`.
        early_stopping: stop (and freeze) each neuron once it meets the rule; False: run all steps.
    """
    targets = [(str(s), str(i)) for s, i in targets]
    n = len(targets)
    if n == 0:
        raise EncodersError("targets must name at least one (session, neuron_id)")
    if latent_dim not in (1, 2) or isinstance(latent_dim, bool):
        raise EncodersError(f"latent_dim must be 1 or 2 (a loop or a torus), got {latent_dim!r}")
    latent_dim = int(latent_dim)
    mean_floor, point_floor = _floors(mean_floor, point_floor)
    harmonics = _integer(harmonics, "harmonics", 1)
    if isinstance(points, bool) or not isinstance(points, numbers.Integral) or points < 2 * harmonics + 1:
        raise EncodersError(f"points must be an integer >= 2 * harmonics + 1 = {2 * harmonics + 1} (the grid must "
                            f"resolve the loop's highest harmonic), got {points!r}")
    per_dim = int(points)
    steps = _integer(steps, "steps", 1)
    width, depth = _integer(width, "width", 1), _integer(depth, "depth", 1)
    for name, value, low in (("lr", lr, 0.0), ("norm", norm, 0.0), ("temperature", temperature, 0.0),
                             ("half_life", half_life, 0.0), ("frequency", frequency, 0.0)):
        if not value > low:
            raise EncodersError(f"{name} must be positive, got {value}")
    for name, value in (("contrastive", contrastive), ("margin", margin), ("decay", decay)):
        if not value >= 0:
            raise EncodersError(f"{name} must be >= 0, got {value}")
    radius = max(1, round(float(neighbours) * per_dim))
    if not 0 < neighbours < 0.5 or 2 * radius + 1 >= per_dim:
        raise EncodersError(f"neighbours must be in (0, 0.5) and leave negatives on the grid of {per_dim} points "
                            f"(positives reach {radius} points either side), got {neighbours}")
    reference = _references(mei_activation, targets)
    seeds = _seeds(seed, n)
    shape = tuple(int(s) for s in model.input_shape)
    device = device_of(model)
    count = per_dim**latent_dim

    raters = {}  # NeuronActivations by the neurons they rate: all, the shrinking active set, ...

    def rates(images: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        """Relative activations (m, P) of loops (m, P, C, H, W) of the neurons `rows`."""
        key = tuple(rows.tolist())
        if key not in raters:
            raters[key] = NeuronActivation(model, [targets[i] for i in key for _ in range(count)])
        rate = raters[key].activation(images.flatten(0, 1)).view(len(rows), count)
        return rate / scale[rows][:, None]

    # products run from callbacks that Lightning may call inside inference mode: every tensor is made inside
    with torch.inference_mode(False), torch.enable_grad():
        full = raters[tuple(range(n))] = NeuronActivation(model, [t for t in targets for _ in range(count)])  # checks the ids
        grid = latent_grid(per_dim, latent_dim).to(device)
        positive, negative = (mask.to(device) for mask in neighbour_masks(per_dim, latent_dim, radius))
        offsets = torch.stack([torch.rand((steps, latent_dim), generator=_generator(s, 1)) for s in seeds], 1)
        offsets = (offsets / per_dim).to(device)  # (steps, n, d): each step's shift of a neuron's grid, within one spacing
        scale = reference.clone().to(device)
        generator = InvarianceGenerator(n, shape, norm, latent_dim, harmonics, width, depth, frequency, seeds, decay).to(device)
        parameters = list(generator.parameters())
        first, second = [torch.zeros_like(p) for p in parameters], [torch.zeros_like(p) for p in parameters]
        stopped_at = torch.full((n,), steps, dtype=torch.long)
        trace = torch.full((steps, n), float("nan"))
        active = torch.arange(n, device=device)
        for step in range(steps):
            images = generator((grid + offsets[step, active][:, None]) % 1.0, neurons=active)
            relative = rates(images, active)
            hinge = (point_floor + margin - relative).clamp_min(0).mean(1)
            weight = contrastive * 2.0 ** (-step / half_life)
            loss = -relative.mean(1) + hinge
            if weight > 0:
                loss = loss + weight * contrastive_loss(images, positive, negative, temperature)
            gradients = torch.autograd.grad(loss.sum(), parameters)
            trace[step, active.cpu()] = relative.detach().mean(1).cpu()
            done = torch.zeros(len(active), dtype=torch.bool, device=device)
            candidates = _meets(relative.detach(), mean_floor, point_floor) if early_stopping else done
            if candidates.any():  # the training sample meets the rule: check the evaluation grid
                with torch.no_grad():
                    rows = active[candidates]
                    done[candidates] = _meets(rates(generator(grid, neurons=rows), rows), mean_floor, point_floor)
            stopped_at[active[done].cpu()] = step
            active = active[~done]
            if len(active) == 0:
                break
            with torch.no_grad():  # Adam on the neurons still moving
                correction1, correction2 = 1 - 0.9 ** (step + 1), 1 - 0.999 ** (step + 1)
                for p, g, m1, m2 in zip(parameters, gradients, first, second):
                    g = g[active]
                    m1[active] = 0.9 * m1[active] + 0.1 * g
                    m2[active] = 0.999 * m2[active] + 0.001 * g * g
                    p[active] -= lr * (m1[active] / correction1) / ((m2[active] / correction2).sqrt() + 1e-8)

        generator.requires_grad_(False)
        with torch.no_grad():
            images = generator(grid)
            activations = full.activation(images.flatten(0, 1)).view(n, count)
            spread = contrastive_loss(images, positive, negative, temperature)
    for i in range(n):  # hold each neuron's trace after it stopped
        last = min(int(stopped_at[i]), steps - 1)
        trace[last + 1:, i] = trace[last, i]
    relative = activations.cpu() / reference.clone()[:, None]
    return ManifoldResult(
        images=images.cpu(), latents=grid.cpu(), activations=activations.cpu(), relative=relative,
        reached=_meets(relative, mean_floor, point_floor), stopped_at=stopped_at, trace=trace,
        contrastive=spread.cpu(), generator=generator.cpu().eval(), targets=targets, mean_floor=mean_floor, point_floor=point_floor,
        norm=float(norm),
    )


# ---- alignment ---------------------------------------------------------------------------------------------
@dataclass
class AlignmentResult:
    """Templates' loops aligned to target neurons by an affine map of the pixel coordinates (CPU tensors).

    templates: (n_t,) indices into the `ManifoldResult`'s neurons; template_targets: their (session, id).
    targets: the n_targets (session, id) aligned to; latents: (P, latent_dim), the result's grid.
    affine: (n_t, n_targets, 2, 3): the target's image at pixel coordinates x shows the template's loop at
        A x + b (coordinates as `pixel_coordinates`; A = affine[..., :2], b = affine[..., 2]).
    relative: (n_t, n_targets, P) the target's rate of each aligned image / its MEI activation.
    mean_relative, min_relative: (n_t, n_targets) of relative along the loop; reached: both floors met.
    images: (n_t, n_targets, P, C, H, W) the aligned loops, or None (keep_images=False).
    """

    templates: torch.Tensor
    template_targets: list[Target]
    targets: list[Target]
    latents: torch.Tensor
    affine: torch.Tensor
    relative: torch.Tensor
    mean_relative: torch.Tensor
    min_relative: torch.Tensor
    reached: torch.Tensor
    images: torch.Tensor | None
    mean_floor: float
    point_floor: float


def _rotations(count: int) -> torch.Tensor:
    """(count, 2, 2) rotations by 0, 180 / count, ... degrees: half a turn, after which an oriented pattern such as
    a Gabor has its orientation again (its phase mirrored, which a loop through all phases contains)."""
    angles = torch.arange(count, dtype=torch.float32) * math.pi / count
    cos, sin = angles.cos(), angles.sin()
    return torch.stack([torch.stack([cos, -sin], -1), torch.stack([sin, cos], -1)], -2)


def align_manifolds(
    model,
    result: ManifoldResult,
    templates: Sequence[int] | torch.Tensor,
    targets: Sequence[Target],
    mei_activation: torch.Tensor | Sequence[float],
    steps: int = DEFAULT_ALIGN_STEPS,
    lr: float = DEFAULT_ALIGN_LR,
    rotations: int = DEFAULT_ROTATIONS,
    keep_images: bool = True,
) -> AlignmentResult:
    """Align each template's loop to each target neuron: per (template, target) pair, learn x -> A x + b.

    The pair's images are the template's generator read at A x + b (so a rotation of the coordinates
    rotates the loop's images), at the result's latent grid and norm; A (2 x 2) and b maximise the target's
    mean relative activation along the loop, by Adam (`steps`, `lr`) from `rotations` starting rotations
    (0, 180 / rotations, ... degrees, b = 0), the best start kept. All pairs and starts are one batch.

    Args:
        model: the `ResponseModel` the targets belong to (the templates' model, or another on the same images).
        result: the templates' `invariance_manifolds`.
        templates: indices into result's neurons.
        targets: (session, neuron_id) to align to; mei_activation: (n_targets,) their MEI activations (> 0).
        keep_images: return the aligned loops (n_t * n_targets * P images) for plotting.

    Memory grows with n_t * n_targets * rotations rows, each running the coordinate network on H * W pixels
    (width floats per pixel and layer, kept for the backward pass): align many neurons in chunks of templates.
    """
    n_neurons = result.generator.n_neurons
    templates = torch.as_tensor(list(templates) if not torch.is_tensor(templates) else templates, dtype=torch.long).flatten()
    if len(templates) == 0 or int(templates.min()) < 0 or int(templates.max()) >= n_neurons:
        raise EncodersError(f"templates must be indices into the result's {n_neurons} neurons, got {templates.tolist()}")
    targets = [(str(s), str(i)) for s, i in targets]
    if not targets:
        raise EncodersError("targets must name at least one (session, neuron_id)")
    if tuple(int(s) for s in model.input_shape) != result.generator.shape:
        raise EncodersError(f"model's input_shape {tuple(model.input_shape)} is not the manifolds' image shape {result.generator.shape}")
    steps, rotations = _integer(steps, "steps", 1), _integer(rotations, "rotations", 1)
    if not lr > 0:
        raise EncodersError(f"lr must be positive, got {lr}")
    reference = _references(mei_activation, targets)
    n_t, n_j, count = len(templates), len(targets), len(result.latents)
    rows = n_t * n_j * rotations  # template-major, then target, then starting rotation
    device = device_of(model)

    def relative(affine: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        images = generator(latents, affine, neurons)
        return activation.activation(images.flatten(0, 1)).view(rows, count) / scale, images

    # products run from callbacks that Lightning may call inside inference mode: every tensor is made inside
    with torch.inference_mode(False), torch.enable_grad():
        activation = NeuronActivation(model, [t for t in targets for _ in range(rotations * count)] * n_t)  # checks the ids
        generator = copy.deepcopy(result.generator).to(device).requires_grad_(False)
        neurons = templates.clone().repeat_interleave(n_j * rotations).to(device)
        latents = result.latents.clone().to(device)
        scale = reference.clone().repeat_interleave(rotations * count).repeat(n_t).view(rows, count).to(device)
        start = torch.cat([_rotations(rotations), torch.zeros(rotations, 2, 1)], 2)
        affine = start.repeat(n_t * n_j, 1, 1).to(device).requires_grad_(True)
        optimizer = torch.optim.Adam([affine], lr=lr)
        for _ in range(steps):
            optimizer.zero_grad()
            (-relative(affine)[0].mean(1).sum()).backward()
            optimizer.step()
        with torch.no_grad():
            final, images = relative(affine.detach())
    best = final.mean(1).view(n_t * n_j, rotations).argmax(1) + torch.arange(n_t * n_j, device=device) * rotations
    final = final[best].view(n_t, n_j, count).cpu()
    mean, low = final.mean(2), final.amin(2)
    return AlignmentResult(
        templates=templates.cpu(), template_targets=[result.targets[int(t)] for t in templates],
        targets=targets, latents=result.latents.clone(), affine=affine.detach()[best].view(n_t, n_j, 2, 3).cpu(),
        relative=final, mean_relative=mean, min_relative=low, reached=(mean >= result.mean_floor) & (low >= result.point_floor),
        images=images[best].view(n_t, n_j, count, *generator.shape).cpu() if keep_images else None,
        mean_floor=result.mean_floor, point_floor=result.point_floor,
    )


# ---- grouping ----------------------------------------------------------------------------------------------
def group_neurons(alignment: AlignmentResult, threshold: float = DEFAULT_GROUP_THRESHOLD, mutual: bool = True) -> torch.Tensor:
    """Group the alignment's targets by shared invariance: a group label per target, (n_targets,) int64.

    Template t explains target j when t's loop, aligned to j, drives j to a mean relative activation
    >= threshold. With mutual=True (default) t and j are linked only if, in addition, j's own loop aligned
    to t's neuron drives that neuron as well; where that was not measured (j is not among the templates,
    or t's neuron not among the targets) the link is one-way. The rule is greedy: the template (whose
    neuron, if a target, is not yet grouped) linked to the most ungrouped targets forms a group of them and
    of its own neuron (ties: the first template); repeat; targets linked to no remaining template get groups
    of their own. Labels are 0, 1, ... in the order the groups are found.

    Why mutual by default: a template whose loop has collapsed onto one image (a simple cell's: no
    invariance) explains every neuron that responds to that image, complex cells included, while their
    phase loops do not explain it; a one-way rule would merge it with them. Mutually, two cells are grouped
    when each one's invariance is (an affine copy of) the other's.
    """
    if not 0 < threshold < math.inf:
        raise EncodersError(f"threshold must be a positive mean relative activation, got {threshold}")
    explains = alignment.mean_relative >= threshold  # (n_t, n_targets)
    column = {target: j for j, target in enumerate(alignment.targets)}
    own = torch.tensor([column.get(target, -1) for target in alignment.template_targets])  # t's neuron as a target
    links = explains
    if mutual:
        template = {target: t for t, target in enumerate(alignment.template_targets)}
        mine = torch.tensor([template.get(target, -1) for target in alignment.targets])  # j's own template
        back = explains[mine.clamp_min(0)][:, own.clamp_min(0)].T  # (n_t, n_targets): j's loop explains t's neuron
        measured = (own[:, None] >= 0) & (mine[None, :] >= 0)
        links = explains & (back | ~measured)
    labels = torch.full((len(alignment.targets),), -1, dtype=torch.long)
    group = 0
    while True:
        ungrouped = labels < 0
        usable = torch.tensor([j < 0 or bool(ungrouped[j]) for j in own.tolist()])  # its own neuron is ungrouped
        counts = (links & ungrouped).sum(1) * usable
        if len(counts) == 0 or counts.max() == 0:
            break
        t = int(counts.argmax())
        members = links[t] & ungrouped
        if own[t] >= 0:
            members[own[t]] = True
        labels[members] = group
        group += 1
    rest = labels < 0
    labels[rest] = group + torch.arange(int(rest.sum()))
    return labels
