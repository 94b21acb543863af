"""Varied exciting images (VEIs): per neuron, K images that all drive it strongly yet differ as much as possible.

Follows the varied exciting inputs of Ding et al. (Nat Neurosci 2026, "Functional bipartite invariance in
mouse primary visual cortex receptive fields"; the "diverse exciting inputs" of its 2023 preprint): per
neuron, K (20) images, each at the contrast (L2 norm) of the neuron's MEI and each driving the neuron to at
least a floor (85 %) of its MEI's activation, chosen to maximise their mean pairwise Euclidean distance in
pixel space inside the MEI's mask; a diversity index that reads that distance on a scale where noiseless
simulated simple cells score 0 and simulated (phase-invariant) complex cells 1.

What this module adds or does its own way (the published definitions above are kept):

- The constrained problem is solved by an augmented Lagrangian with one multiplier per image (below), on
  the same preconditioned gradient steps as the MEIs of `gradient_ascent` (the gradient blurred, normalised
  per image, every image rescaled to the norm after every step), with a cosine-decaying step size.
- Images start from seeded standard-normal noise, not from the MEI (see `varied_exciting_images`).
- The mask rule (`mei_mask`) is this module's: a thresholded local RMS contrast of the MEI.
- "pixels" means the model's input space (z-scored pixels). It is an affine map of screen pixels with one
  scale for a grayscale model, so distances are screen-pixel distances over that scale; the diversity
  index is a ratio of distances and does not depend on the unit.
- The anchors of the index (`diversity_anchors`) are computed on `encoders.simulated.SimulatedCells` at the
  model's input size and norm, with the same K, floor, steps and seeds, each cell's MEI made by gradient
  ascent and masked by the same rule as the model's.

The functions are pure (a response model and tensors in, tensors out) and batched over neurons: one
optimisation moves all n_neurons * K images, (n_neurons * K, C, H, W), with no Python loop over neurons.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Sequence
from dataclasses import dataclass

import torch

from encoders.contract import device_of
from encoders.errors import EncodersError
from encoders.synthesis.blur import gaussian_blur
from encoders.synthesis.energies import NeuronActivation
from encoders.synthesis.gradient_ascent import _normalised, _project, initial_images, optimize_images
from encoders.synthesis.targets import Target

DISTANCES = ("pixels",)  # Euclidean distance of model-space pixels inside the mask (the paper's "pixel space")
DEFAULT_K = 20
DEFAULT_FLOOR = 0.85
DEFAULT_STEPS = 200
DEFAULT_LR = 0.05  # as gradient ascent's MEIs: each (normalised) step moves pixels by lr RMS at its start
DEFAULT_RHO = 3.0  # augmented-Lagrangian penalty weight on the normalised activation shortfall
DEFAULT_MARGIN = 0.01  # the optimiser aims 1 % of the MEI's activation above the floor: images settle within it
MASK_THRESHOLD = 0.2  # a pixel is in the mask where the MEI's local RMS contrast is >= 20 % of its peak


# ---- the mask ------------------------------------------------------------------------------------------
def mei_mask(mei: torch.Tensor, sigma: float | None = None, threshold: float = MASK_THRESHOLD, soft: bool = False) -> torch.Tensor:
    """Where each MEI has its contrast: a spatial mask (N, 1, H, W) with values in [0, 1].

    The rule: local RMS contrast c = sqrt(blur(sum over channels of MEI^2, sigma)), contrast measured from
    model-space 0 (the data's mean grey, the same origin as the image norm); r = c / max(c) per MEI. Binary
    (default): 1 where r >= threshold, else 0. soft=True: r itself where r >= threshold (a weight that
    falls with the MEI's contrast), else 0. The blur averages the carrier's stripes away, so the mask is the
    MEI's envelope, not its zero crossings: for a Gabor MEI of envelope sigma s and the default blur, the
    binary mask is a disc holding about 98 % of the MEI's squared norm (sigma 4 px at 24 x 24).

    Args:
        mei: (N, C, H, W) or one (C, H, W) MEI, model space.
        sigma: of the Gaussian (pixels); None: min(H, W) / 16 (2 px at 32 x 32, 6.25 px at 100 x 100).
        threshold: fraction of the peak local contrast, in (0, 1).
    """
    mei = torch.as_tensor(mei).detach()
    if mei.ndim == 3:
        mei = mei[None]
    if mei.ndim != 4:
        raise EncodersError(f"mei must be (N, C, H, W) or (C, H, W) images, got shape {tuple(mei.shape)}")
    if not 0 < threshold < 1:
        raise EncodersError(f"threshold must be in (0, 1), got {threshold}")
    height, width = mei.shape[-2:]
    sigma = min(height, width) / 16 if sigma is None else float(sigma)
    if sigma < 0:
        raise EncodersError(f"sigma must be >= 0 pixels, got {sigma}")
    energy = mei.double().pow(2).sum(1, keepdim=True)
    local = gaussian_blur(energy, sigma).clamp_min(0).sqrt()
    peak = local.amax((-2, -1), keepdim=True)
    if not (peak > 0).all():
        raise EncodersError("mei: an MEI is all zeros, it has no contrast to mask")
    relative = local / peak
    inside = relative >= threshold
    mask = torch.where(inside, relative, torch.zeros_like(relative)) if soft else inside.double()
    return mask.to(mei.dtype if mei.is_floating_point() else torch.float32)


def _broadcast_mask(mask: torch.Tensor | None, n: int, shape: Sequence[int]) -> torch.Tensor | None:
    """A mask as (n, 1 or C, H, W): accepts (H, W), (1 or C, H, W) shared by all neurons, or one per neuron."""
    if mask is None:
        return None
    channels, height, width = (int(s) for s in shape)
    m = torch.as_tensor(mask).detach().float()
    if m.ndim == 2:
        m = m[None]
    if m.ndim == 3:
        m = m[None].expand(n, *m.shape)
    if m.ndim != 4 or m.shape[0] != n or m.shape[1] not in (1, channels) or tuple(m.shape[2:]) != (height, width):
        raise EncodersError(f"mask must be (H, W), (1 or C, H, W) or ({n}, 1 or C, H, W) with (C, H, W) = "
                            f"{tuple(shape)}, got shape {tuple(torch.as_tensor(mask).shape)}")
    if not torch.isfinite(m).all() or (m < 0).any():
        raise EncodersError("mask must hold finite weights >= 0")
    return m


# ---- distances ---------------------------------------------------------------------------------------------
def pairwise_distances(images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Euclidean distances ||mask * (x_i - x_j)|| between each neuron's images: (N, K, K), float64.

    images: (N, K, C, H, W); mask: as `varied_exciting_images` takes it, or None (whole image).
    Exact differences (not the Gram-matrix form the optimiser uses), for reporting.
    """
    if images.ndim != 5:
        raise EncodersError(f"images must be (n_neurons, K, C, H, W), got shape {tuple(images.shape)}")
    x = images.detach().double()
    m = _broadcast_mask(mask, x.shape[0], x.shape[2:])
    if m is not None:
        x = x * m.to(x.device, torch.float64)[:, None]
    return torch.cdist(x.flatten(2), x.flatten(2))


def mean_pairwise_distance(images: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Each neuron's mean distance over its K (K - 1) / 2 pairs of images, (N,) float64."""
    distances = pairwise_distances(images, mask)
    k = distances.shape[1]
    if k < 2:
        raise EncodersError(f"images: need at least 2 images per neuron for a distance, got {k}")
    upper = torch.triu_indices(k, k, 1)
    return distances[:, upper[0], upper[1]].mean(1)


def _masked_distances(x: torch.Tensor, mask: torch.Tensor | None, n: int, k: int) -> torch.Tensor:
    """Differentiable pairwise distances (n, K (K - 1) / 2) of images x (n * K, C, H, W), via each neuron's Gram matrix.

    ||a - b||^2 = |a|^2 + |b|^2 - 2 a.b: memory n K^2, not n K^2 C H W as explicit differences would take."""
    flat = x.view(n, k, *x.shape[1:])
    if mask is not None:
        flat = flat * mask[:, None]
    flat = flat.flatten(2)
    gram = flat @ flat.transpose(1, 2)  # (n, K, K)
    squares = gram.diagonal(dim1=1, dim2=2)
    upper = torch.triu_indices(k, k, 1, device=x.device)
    squared = squares[:, upper[0]] + squares[:, upper[1]] - 2 * gram[:, upper[0], upper[1]]
    return squared.clamp_min(1e-12).sqrt()


# ---- the optimiser -----------------------------------------------------------------------------------------
@dataclass
class VEIResult:
    """Varied exciting images of n neurons, K each (CPU tensors).

    images: (n, K, C, H, W) model space, each at L2 `norm` (an upper bound where clamped).
    activations: (n, K) each image's rate of its neuron.
    relative: (n, K) activations / the neuron's MEI activation.
    above_floor: (n, K) whether relative >= floor; images below are kept and reported, never dropped.
    fraction_above: (n,) fraction of each neuron's K images above the floor.
    distance: (n,) mean pairwise distance of each neuron's images inside its mask (`mean_pairwise_distance`).
    distance_trace: (steps, n) the optimiser's mean pairwise distance at the start of each step.
    relative_trace: (steps, n, K) relative activations at the start of each step.
    floor, norm: as given.
    """

    images: torch.Tensor
    activations: torch.Tensor
    relative: torch.Tensor
    above_floor: torch.Tensor
    fraction_above: torch.Tensor
    distance: torch.Tensor
    distance_trace: torch.Tensor
    relative_trace: torch.Tensor
    floor: float
    norm: float


def _seed_grid(seeds: int | Sequence[int] | Sequence[Sequence[int]], n: int, k: int) -> list[int]:
    """n * K seeds, neuron-major: an int s gives every neuron seeds s .. s + K - 1; K ints, those for every
    neuron; n rows of K ints, one row per neuron. A neuron's images depend only on its own row."""
    if isinstance(seeds, numbers.Integral):
        rows = [[int(seeds) + j for j in range(k)]] * n
    else:
        values = list(seeds)
        flat = all(isinstance(v, numbers.Integral) for v in values)
        rows = [[int(v) for v in values]] * n if flat else [[int(v) for v in row] for row in values]
        if len(rows) != n or any(len(row) != k for row in rows):
            raise EncodersError(f"seeds must be one int, {k} ints (K) or {n} rows of {k} ints (n_neurons x K)")
    for row in rows:
        if len(set(row)) != len(row):
            raise EncodersError(f"seeds must be distinct within a neuron's K images (equal seeds give equal starts), got {row}")
    return [s for row in rows for s in row]


def _check(k: int, floor: float, distance: str, steps: int, lr: float, norm: float, rho: float, margin: float) -> None:
    if isinstance(k, bool) or int(k) != k or k < 2:
        raise EncodersError(f"k must be an integer >= 2 (images per neuron; distances need pairs), got {k!r}")
    if not 0 < floor <= 1:
        raise EncodersError(f"floor must be in (0, 1] (a fraction of the MEI's activation), got {floor}")
    if distance not in DISTANCES:
        raise EncodersError(f"distance must be one of {list(DISTANCES)}, got {distance!r}")
    if isinstance(steps, bool) or int(steps) != steps or steps < 1:
        raise EncodersError(f"steps must be an integer >= 1, got {steps!r}")
    if not lr > 0:
        raise EncodersError(f"lr must be positive, got {lr}")
    if not norm > 0:
        raise EncodersError(f"norm must be positive (the MEI's L2 norm), got {norm}")
    if not rho > 0:
        raise EncodersError(f"rho must be positive, got {rho}")
    if not margin >= 0:
        raise EncodersError(f"margin must be >= 0 (a fraction of the MEI's activation), got {margin}")


def varied_exciting_images(
    model,
    targets: Sequence[Target],
    mei_activation: torch.Tensor | Sequence[float],
    norm: float,
    k: int = DEFAULT_K,
    floor: float = DEFAULT_FLOOR,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    seeds: int | Sequence[int] | Sequence[Sequence[int]] = 0,
    mask: torch.Tensor | None = None,
    distance: str = "pixels",
    blur_sigma: float = 1.0,
    rho: float = DEFAULT_RHO,
    margin: float = DEFAULT_MARGIN,
    pixel_range: tuple[float, float] | None = None,
) -> VEIResult:
    """K varied exciting images per target neuron, all neurons' images optimised in one batch.

    Per neuron n with MEI activation a_n and images x_1..x_K (each kept at L2 `norm`):

        maximise D_n = mean over pairs i < j of ||mask_n * (x_i - x_j)||
        subject to  g_k = floor + margin - r_n(x_k) / a_n <= 0  for every k.

    Augmented Lagrangian, one multiplier lambda_k >= 0 per image: each step descends

        L = -K D_n / norm + sum_k [max(0, lambda_k + rho g_k)^2 - lambda_k^2] / (2 rho)

    (a hinge on the normalised activation shortfall, quadratic near the boundary), then sets
    lambda_k <- max(0, lambda_k + rho g_k): an image's weight grows for as long as it is below the floor
    and decays once it is above, so images settle ON the floor (where diversity is largest) without a
    hand-tuned fixed weight; g is relative to a_n and D to the norm, so one rho suits any model's rate
    scale and any image size. A fixed-weight penalty either leaves images below the floor (weight too
    small) or holds them above it, giving up diversity (too large). The images approach the boundary
    from both sides while the multipliers settle, so the constraint is tightened by `margin` (1 % of the
    MEI's activation): on simulated cells with the defaults every image ends within [floor, floor + 2 %]
    after 150 steps. The result reports each image against `floor` itself.

    Each step, as gradient ascent's MEIs: gradient of L w.r.t. the images -> Gaussian blur (`blur_sigma`)
    -> divided by its per-pixel RMS per image -> SGD step (lr cosine-annealed from `lr` to 0, so the
    images settle at the end) -> every image rescaled to `norm` (then clamped to `pixel_range`).

    Start: seeded standard-normal noise at `norm`, not the MEI plus noise. From noise, images climb to
    the floor from different directions and land on different parts of the neuron's invariance set (as
    MEIs from different seeds do: a complex cell's at different phases), so diversity does not have to
    be pushed out of one point; starting at the MEI, all K images sit at one point where the diversity
    gradient is that of the added noise, and the MEI's images would be needed as an input.

    Neurons never interact: a neuron's images, their multipliers and their gradient depend only on its
    own K images (per-image blur, normalisation and rescale; models in eval mode), so a batch of neurons
    gives each neuron the images it gets alone, up to float rounding.

    Args:
        model: a `ResponseModel` (eval mode), on the device the optimisation runs on.
        targets: (session, neuron_id) per neuron.
        mei_activation: (n,) each neuron's MEI activation (> 0), the floor's reference.
        norm: L2 norm of every image: the MEI's (e.g. `default_norm(model.input_shape)`).
        k: images per neuron, >= 2.
        floor: each image's activation must be >= floor * mei_activation, in (0, 1].
        steps, lr: SGD steps and the starting step (pixel RMS per step, model units).
        seeds: one int s (neuron images start from seeds s .. s + K - 1, the same for every neuron), K ints
            (the same for every neuron), or n rows of K ints.
        mask: spatial weights inside which distances are measured, e.g. `mei_mask(meis)`: (H, W) or
            (1 or C, H, W) for every neuron, or (n, 1 or C, H, W); None: the whole image.
        distance: "pixels" (Euclidean in model-space pixels inside the mask).
        blur_sigma: std (pixels) of the gradient's blur; 0 = none.
        rho: the augmented-Lagrangian penalty weight.
        margin: the optimiser's target is floor + margin (fraction of the MEI activation), >= 0; with
            floor 1 (K copies of the MEI, if it is unique) give margin 0.
        pixel_range: (low, high) clamp after each rescale, as gradient ascent's.
    """
    _check(k, floor, distance, steps, lr, norm, rho, margin)
    k, steps, norm, floor = int(k), int(steps), float(norm), float(floor)
    targets = [(str(s), str(n)) for s, n in targets]
    n = len(targets)
    if n == 0:
        raise EncodersError("targets must name at least one (session, neuron_id)")
    reference = torch.as_tensor(mei_activation, dtype=torch.float32).detach().flatten()
    if reference.shape != (n,):
        raise EncodersError(f"mei_activation must be one rate per target ({n}), got {reference.numel()} values")
    if not torch.isfinite(reference).all() or not (reference > 0).all():
        bad = [targets[i][1] for i in torch.nonzero(~(torch.isfinite(reference) & (reference > 0))).flatten().tolist()[:5]]
        raise EncodersError(f"mei_activation must be positive and finite (the floor's reference), not for neurons {bad}")
    if pixel_range is not None and not pixel_range[0] < pixel_range[1]:
        raise EncodersError(f"pixel_range must be (low, high) with low < high, got {pixel_range}")
    shape = tuple(int(s) for s in model.input_shape)
    masks = _broadcast_mask(mask, n, shape)
    grid = _seed_grid(seeds, n, k)
    activation = NeuronActivation(model, [t for t in targets for _ in range(k)])  # validates the ids
    device = device_of(model)

    # products run from callbacks that Lightning may call inside inference mode
    with torch.inference_mode(False), torch.enable_grad():
        images = initial_images(n * k, shape, grid).to(device)
        reference = reference.to(device).repeat_interleave(k)  # (n * K,)
        masks = None if masks is None else masks.to(device)
        multipliers = torch.zeros(n * k, device=device)
        with torch.no_grad():
            _project(images, norm, pixel_range)
        images.requires_grad_(True)
        optimizer = torch.optim.SGD([images], lr=lr)
        distance_trace, relative_trace = torch.empty(steps, n), torch.empty(steps, n, k)
        for step in range(steps):
            for group in optimizer.param_groups:
                group["lr"] = lr * 0.5 * (1 + math.cos(math.pi * step / steps))
            relative = activation.activation(images) / reference
            shortfall = floor + margin - relative  # > 0: below the (tightened) floor
            diversity = _masked_distances(images, masks, n, k).mean(1)  # (n,)
            shifted = (multipliers + rho * shortfall).clamp_min(0)
            penalty = (shifted.pow(2) - multipliers.pow(2)) / (2 * rho)
            loss = -(k / norm) * diversity.sum() + penalty.sum()
            (gradient,) = torch.autograd.grad(loss, images)
            images.grad = _normalised(gaussian_blur(gradient, blur_sigma))
            optimizer.step()
            with torch.no_grad():
                _project(images, norm, pixel_range)
                multipliers = (multipliers + rho * shortfall.detach()).clamp_min(0)
            distance_trace[step] = diversity.detach().cpu()
            relative_trace[step] = relative.detach().view(n, k).cpu()
        images.requires_grad_(False)
        with torch.no_grad():
            rates = activation.activation(images)
            relative = (rates / reference).view(n, k).cpu()

    images = images.detach().cpu().view(n, k, *shape)
    above = relative >= floor
    return VEIResult(
        images=images, activations=rates.detach().view(n, k).cpu(), relative=relative, above_floor=above,
        fraction_above=above.float().mean(1), distance=mean_pairwise_distance(images, None if masks is None else masks.cpu()),
        distance_trace=distance_trace, relative_trace=relative_trace, floor=floor, norm=norm,
    )


# ---- the diversity index -----------------------------------------------------------------------------------
def diversity_index(distance, simple_distance: float, complex_distance: float):
    """(distance - simple) / (complex - simple): 0 as diverse as a simple cell's VEIs, 1 as a complex cell's.

    distance: a float or a tensor (e.g. `VEIResult.distance`); the anchors from `diversity_anchors` at the
    same image size, norm, K, floor, steps and mask rule. Values below 0 or above 1 are kept (the paper
    clips only for display).
    """
    simple, complex_ = float(simple_distance), float(complex_distance)
    if not (math.isfinite(simple) and math.isfinite(complex_)) or simple < 0:
        raise EncodersError(f"simple_distance and complex_distance must be finite distances >= 0, got {simple}, {complex_}")
    if not complex_ > simple:
        raise EncodersError(f"complex_distance must exceed simple_distance (the index's 1 and 0), got {complex_} <= {simple}")
    if torch.is_tensor(distance):
        return (distance.double() - simple) / (complex_ - simple)
    return (float(distance) - simple) / (complex_ - simple)


@dataclass
class DiversityAnchors:
    """The diversity index's 0 and 1: the mean pairwise VEI distance of a simulated simple and complex cell.

    simple, complex: the two distances; result: both cells' VEIs (neurons "simple", "complex"); meis (2, 1, H, W)
    and masks (2, 1, H, W) they were made with; mei_activation (2,).
    """

    simple: float
    complex: float
    result: VEIResult
    meis: torch.Tensor
    masks: torch.Tensor
    mei_activation: torch.Tensor

    def index(self, distance):
        """`diversity_index` on these anchors."""
        return diversity_index(distance, self.simple, self.complex)


def diversity_anchors(
    shape: Sequence[int],
    norm: float,
    k: int = DEFAULT_K,
    floor: float = DEFAULT_FLOOR,
    steps: int = DEFAULT_STEPS,
    lr: float = DEFAULT_LR,
    seeds: int | Sequence[int] = 0,
    mei_steps: int = 100,
    blur_sigma: float = 1.0,
    rho: float = DEFAULT_RHO,
    margin: float = DEFAULT_MARGIN,
    mask_sigma: float | None = None,
    mask_threshold: float = MASK_THRESHOLD,
    soft_mask: bool = False,
    orientation: float = 0.0,
    frequency: float | None = None,
    sigma: float | None = None,
) -> DiversityAnchors:
    """The index's anchors for a model whose images are `shape` (its `input_shape`) at L2 `norm`.

    How they are matched to a model: a simulated simple and complex cell (`SimulatedCells`, noiseless) are
    built at the model's image size, and every step the model's neurons go through is repeated for them at
    the model's norm: an MEI by gradient ascent (`mei_steps`, lr, blur_sigma, seed 0) whose rate is the
    floor's reference, its mask by `mei_mask` with the same rule, then VEIs with the same K, floor, steps,
    lr, seeds, blur, rho and margin. Distances grow in proportion to the norm and with the number of pixels, so
    the anchors are only valid for that size and norm, the model's distances in the same (model-space)
    units; give the same settings here as to `varied_exciting_images`.

    The simulated cells are grayscale and square: shape must be (1, S, S). frequency and sigma default to
    the cells' (8 px wavelength, 4 px envelope); a simple cell's distance is not 0 (each VEI may give up
    1 - floor of its activation for components the cell ignores), which is why the index subtracts it.
    """
    from encoders.simulated import SimulatedCells
    from encoders.simulated.cells import DEFAULT_FREQUENCY, DEFAULT_SIGMA

    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape[0] != 1 or shape[1] != shape[2]:
        raise EncodersError(f"shape must be (1, S, S): the simulated anchor cells are grayscale and square; got {shape}")
    _check(k, floor, "pixels", steps, lr, norm, rho, margin)
    if isinstance(mei_steps, bool) or int(mei_steps) != mei_steps or mei_steps < 1:
        raise EncodersError(f"mei_steps must be an integer >= 1, got {mei_steps!r}")
    cells = SimulatedCells(["simple", "complex"], size=shape[1], orientation=orientation,
                           frequency=DEFAULT_FREQUENCY if frequency is None else frequency,
                           sigma=DEFAULT_SIGMA if sigma is None else sigma).eval()
    targets = [(cells.session, "simple"), (cells.session, "complex")]
    mei = optimize_images(NeuronActivation(cells, targets), 2, shape, 0, int(mei_steps), lr=lr, blur_sigma=blur_sigma, norm=norm)
    mei_activation = -mei.energy
    masks = mei_mask(mei.images, mask_sigma, mask_threshold, soft_mask)
    result = varied_exciting_images(cells, targets, mei_activation, norm, k, floor, steps, lr, seeds, masks,
                                    blur_sigma=blur_sigma, rho=rho, margin=margin)
    simple, complex_ = (float(d) for d in result.distance)
    return DiversityAnchors(simple, complex_, result, mei.images, masks, mei_activation)
