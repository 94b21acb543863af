"""Varied exciting images (VEIs): per neuron, K images that all drive it strongly yet differ as much as possible.

Follows the varied exciting inputs of Ding et al. (Nat Neurosci 2026, "Functional bipartite invariance in
mouse primary visual cortex receptive fields"; the "diverse exciting inputs" of its 2023 preprint): per
neuron, K (20) images, each at the contrast (L2 norm) of the neuron's MEI and each driving the neuron to at
least a floor (85 %) of its MEI's activation, chosen to maximise their mean pairwise Euclidean distance in
pixel space inside the MEI's mask; a diversity index that reads that distance on a scale where noiseless
simulated simple cells score 0 and simulated (phase-invariant) complex cells 1.

What this module adds or does its own way (the published definitions above are kept):

- The constrained problem is an energy (`VariedExcitation`: an augmented Lagrangian with one multiplier
  per image) that any synthesis method minimises, as MEIs are made: gradient ascent on the pixels (the
  gradient blurred, normalised per image, every image rescaled to the norm after every step, here with a
  cosine-decaying step size) or energy-guided diffusion, whose prior keeps the images natural.
- Images start from seeded standard-normal noise, not from the MEI (see `varied_exciting_images`).
- The mask rule (`mei_mask`) is this module's: a thresholded local RMS contrast of the MEI.
- "pixels" means the model's input space (z-scored pixels). It is an affine map of screen pixels with one
  scale for a grayscale model, so distances are screen-pixel distances over that scale; the diversity
  index is a ratio of distances and does not depend on the unit.
- The anchors of the index (`diversity_anchors`) are computed on `encoders.simulated.SimulatedCells` at the
  model's input size and norm, with the same K, floor, gradient-ascent settings and seeds, each cell's MEI
  made by gradient ascent and masked by the same rule as the model's.

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
from encoders.synthesis.gradient_ascent import GASettings
from encoders.synthesis.method import Method
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


# ---- the energy and the optimisation ------------------------------------------------------------------------
@dataclass
class VEIResult:
    """Varied exciting images of n neurons, K each (CPU tensors).

    images: (n, K, C, H, W) model space, each at L2 `norm` (an upper bound where clamped).
    activations: (n, K) each image's rate of its neuron.
    relative: (n, K) activations / the neuron's MEI activation.
    above_floor: (n, K) whether relative >= floor; images below are kept and reported, never dropped.
    fraction_above: (n,) fraction of each neuron's K images above the floor.
    distance: (n,) mean pairwise distance of each neuron's images inside its mask (`mean_pairwise_distance`).
    distance_trace: (steps, n) the energy's mean pairwise distance at each step (the images the method's
        gradient is taken at: the pixels for GA, each step's x0 estimate for EGG).
    relative_trace: (steps, n, K) relative activations at each step.
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


def check_settings(k: int, floor: float, distance: str = "pixels", rho: float = DEFAULT_RHO, margin: float = DEFAULT_MARGIN) -> None:
    """EncodersError naming the first bad VEI setting."""
    if isinstance(k, bool) or int(k) != k or k < 2:
        raise EncodersError(f"k must be an integer >= 2 (images per neuron; distances need pairs), got {k!r}")
    if not 0 < floor <= 1:
        raise EncodersError(f"floor must be in (0, 1] (a fraction of the MEI's activation), got {floor}")
    if distance not in DISTANCES:
        raise EncodersError(f"distance must be one of {list(DISTANCES)}, got {distance!r}")
    if not rho > 0:
        raise EncodersError(f"rho must be positive, got {rho}")
    if not margin >= 0:
        raise EncodersError(f"margin must be >= 0 (a fraction of the MEI's activation), got {margin}")


def kept_norm(method: Method, shape: Sequence[int]) -> float:
    """The L2 norm a method keeps its images at; VEIs and manifolds need one (they are all at the MEI's contrast)."""
    norm = method.derived(tuple(shape)).get("norm")
    if norm is None:
        raise EncodersError(f"method must keep one contrast (these images are all at the MEI's); {type(method).__name__} "
                            "keeps the prior's own (contrast: null): give it a contrast")
    return float(norm)


class VariedExcitation:
    """The VEIs' energy: n neurons' K images each (neuron-major), one augmented-Lagrangian term per image.

    Per neuron n with MEI activation a_n and images x_1..x_K:

        maximise D_n = mean over pairs i < j of ||mask_n * (x_i - x_j)||
        subject to  g_k = floor + margin - r_n(x_k) / a_n <= 0  for every k,

    as the energy of image k of neuron n (summing to the Lagrangian L of every neuron's problem)

        E_k = -D_n / norm + [max(0, lambda_k + rho g_k)^2 - lambda_k^2] / (2 rho)

    (a hinge on the normalised activation shortfall, quadratic near the boundary), after which each
    multiplier moves to lambda_k <- max(0, lambda_k + rho g_k). An image's weight grows for as long as it
    is below the floor and decays once it is above, so images settle ON the floor (where diversity is
    largest) without a hand-tuned fixed weight; g is relative to a_n and D to the norm, so one rho suits any
    model's rate scale and any image size. A fixed-weight penalty either leaves images below the floor
    (too small) or holds them above it, giving up diversity (too large). The images approach the boundary
    from both sides while the multipliers settle, so the constraint is tightened by `margin` (1 % of the
    MEI's activation); results are reported against `floor` itself.

    Any method minimises it (`Method.run_chunk`): gradient ascent on the pixels (with a cosine schedule,
    so the images settle on the floor) or EGG, whose every diffusion step is guided by its gradient at
    the x0 estimate. The multipliers are the energy's state: they move once per step, on every call that
    builds a graph (the gradient step's call); calls without one (EGG's trace at another contrast, the
    final score) leave them and the traces alone. A chunk must hold whole neurons (K consecutive images).
    """

    def __init__(
        self, model, targets: Sequence[Target], mei_activation: torch.Tensor, k: int, floor: float, norm: float,
        mask: torch.Tensor | None = None, rho: float = DEFAULT_RHO, margin: float = DEFAULT_MARGIN,
    ):
        self.n, self.k, self.norm = len(targets), int(k), float(norm)
        self.floor, self.rho, self.margin = float(floor), float(rho), float(margin)
        self.activation = NeuronActivation(model, [t for t in targets for _ in range(self.k)])  # validates the ids
        device = device_of(model)
        self.reference = torch.as_tensor(mei_activation, dtype=torch.float32).to(device).repeat_interleave(self.k)
        self.mask = None if mask is None else mask.to(device)
        self.multipliers = torch.zeros(self.n * self.k, device=device)
        self.distance_trace: list[torch.Tensor] = []
        self.relative_trace: list[torch.Tensor] = []

    def __len__(self) -> int:
        return self.n * self.k

    def relative(self, images: torch.Tensor) -> torch.Tensor:
        """Each image's rate over its neuron's MEI activation, (n * K,)."""
        return self.activation.activation(images) / self.reference

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        relative = self.relative(images)
        shortfall = self.floor + self.margin - relative  # > 0: below the (tightened) floor
        diversity = _masked_distances(images, self.mask, self.n, self.k).mean(1)  # (n,)
        shifted = (self.multipliers + self.rho * shortfall).clamp_min(0)
        penalty = (shifted.pow(2) - self.multipliers.pow(2)) / (2 * self.rho)
        if torch.is_grad_enabled() and images.requires_grad:  # the gradient step's call: one update per step
            with torch.no_grad():
                self.multipliers = (self.multipliers + self.rho * shortfall).clamp_min(0)
            self.distance_trace.append(diversity.detach().cpu())
            self.relative_trace.append(relative.detach().view(self.n, self.k).cpu())
        return -(diversity / self.norm).repeat_interleave(self.k) + penalty


def vei_method(**changes) -> GASettings:
    """Gradient ascent as VEIs need it by default: 200 steps, lr 0.05 cosine-annealed to 0 (images settle on the floor)."""
    return GASettings(**{"steps": DEFAULT_STEPS, "lr": DEFAULT_LR, "schedule": "cosine", **changes})


def varied_exciting_images(
    model,
    targets: Sequence[Target],
    mei_activation: torch.Tensor | Sequence[float],
    method: Method | None = None,
    k: int = DEFAULT_K,
    floor: float = DEFAULT_FLOOR,
    seeds: int | Sequence[int] | Sequence[Sequence[int]] = 0,
    mask: torch.Tensor | None = None,
    distance: str = "pixels",
    rho: float = DEFAULT_RHO,
    margin: float = DEFAULT_MARGIN,
) -> VEIResult:
    """K varied exciting images per target neuron, made by `method` minimising `VariedExcitation`.

    Gradient ascent (the default, `vei_method()`): each step the energy's gradient is blurred, normalised
    per image and taken with a cosine-annealed step, then every image is rescaled to the method's norm
    (clamped to the pixel range), as MEIs are. The images start from seeded standard-normal noise, not
    from the MEI: from noise they climb to the floor from different directions and land on different
    parts of the neuron's invariance set (as MEIs from different seeds do: a complex cell's at different
    phases), so diversity does not have to be pushed out of one point; started at the MEI, all K images
    would sit where the diversity gradient is only that of the added noise.

    EGG (`EGGSettings` with a contrast): K samples per neuron from different diffusion seeds, every step
    guided by the energy's gradient at the x0 estimate (at the contrast the images are kept at); the prior
    keeps them natural. EGG runs its whole schedule: its last step's multipliers have had num_steps
    updates, so fewer samples settle exactly on the floor than with GA's 200 steps.

    Neurons never interact: a neuron's images, multipliers and gradient depend only on its own K images
    (per-image blur, normalisation and rescale; models in eval mode), so a batch of neurons gives each
    neuron the images it gets alone, up to float rounding. Chunks of the method's `batch_size` images are
    rounded down to whole neurons (at least one).

    Args:
        model: a `ResponseModel` (eval mode), on the device the optimisation runs on.
        targets: (session, neuron_id) per neuron.
        mei_activation: (n,) each neuron's MEI activation (> 0), the floor's reference.
        method: GA or EGG settings keeping a fixed contrast (the MEI's); their own seeds are not used.
        k: images per neuron, >= 2.
        floor: each image's activation must be >= floor * mei_activation, in (0, 1].
        seeds: one int s (neuron images start from seeds s .. s + K - 1, the same for every neuron), K ints
            (the same for every neuron), or n rows of K ints.
        mask: spatial weights inside which distances are measured, e.g. `mei_mask(meis)`: (H, W) or
            (1 or C, H, W) for every neuron, or (n, 1 or C, H, W); None: the whole image.
        distance: "pixels" (Euclidean in model-space pixels inside the mask).
        rho: the augmented-Lagrangian penalty weight.
        margin: the optimiser's target is floor + margin (fraction of the MEI activation), >= 0; with
            floor 1 (K copies of the MEI, if it is unique) give margin 0.
    """
    method = vei_method() if method is None else method
    check_settings(k, floor, distance, rho, margin)
    k, floor = int(k), float(floor)
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
    shape = tuple(int(s) for s in model.input_shape)
    norm = kept_norm(method, shape)
    masks = _broadcast_mask(mask, n, shape)
    grid = _seed_grid(seeds, n, k)
    NeuronActivation(model, targets)  # every id checked before the first step

    per_chunk = max(1, method.batch_size // k)
    parts, energies = [], []
    for start in range(0, n, per_chunk):
        rows = list(range(start, min(start + per_chunk, n)))
        energy = VariedExcitation(model, [targets[i] for i in rows], reference[rows], k, floor, norm,
                                  None if masks is None else masks[rows], rho, margin)
        parts.append(method.run_chunk(energy, grid[start * k:(rows[-1] + 1) * k], model))
        energies.append(energy)
    images = torch.cat([p.images for p in parts])
    with torch.no_grad():
        rates = torch.cat([e.activation.activation(p.images.to(device_of(model))).cpu() for e, p in zip(energies, parts)])
    rates = rates.view(n, k)
    relative = rates / reference[:, None]
    images = images.view(n, k, *shape)
    above = relative >= floor
    return VEIResult(
        images=images, activations=rates, relative=relative, above_floor=above,
        fraction_above=above.float().mean(1), distance=mean_pairwise_distance(images, masks),
        distance_trace=torch.cat([torch.stack(e.distance_trace) for e in energies], 1),
        relative_trace=torch.cat([torch.stack(e.relative_trace) for e in energies], 1), floor=floor, norm=norm,
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
    method: GASettings | None = None,
    k: int = DEFAULT_K,
    floor: float = DEFAULT_FLOOR,
    seeds: int | Sequence[int] = 0,
    rho: float = DEFAULT_RHO,
    margin: float = DEFAULT_MARGIN,
    mask_sigma: float | None = None,
    mask_threshold: float = MASK_THRESHOLD,
    soft_mask: bool = False,
    orientation: float = 0.0,
    frequency: float | None = None,
    sigma: float | None = None,
) -> DiversityAnchors:
    """The index's anchors for a model whose images are `shape` (its `input_shape`), made by gradient ascent `method`.

    How they are matched to a model: a simulated simple and complex cell (`SimulatedCells`, noiseless) are
    built at the model's image size, and every step the model's neurons go through is repeated for them
    with the same gradient-ascent settings (norm, steps, lr, schedule, blur; default `vei_method()`): an MEI
    from seed 0 whose rate is the floor's reference, its mask by `mei_mask` with the same rule, then VEIs
    with the same K, floor, seeds, rho and margin. Distances grow in proportion to the norm and with the
    number of pixels, so the anchors are only valid for that size and norm, the model's distances in the
    same (model-space) units. EGG's VEIs are read on the same (gradient-ascent) anchors at the same norm:
    the index then says how diverse they are on the scale of what optimisation finds for the two cells.

    The simulated cells are grayscale and square: shape must be (1, S, S). frequency and sigma default to
    the cells' (8 px wavelength, 4 px envelope); a simple cell's distance is not 0 (each VEI may give up
    1 - floor of its activation for components the cell ignores), which is why the index subtracts it.
    """
    from encoders.simulated import SimulatedCells
    from encoders.simulated.cells import DEFAULT_FREQUENCY, DEFAULT_SIGMA

    method = vei_method() if method is None else method
    if not isinstance(method, GASettings):
        raise EncodersError(f"method must be gradient ascent (GASettings) for the anchors, got {type(method).__name__}")
    shape = tuple(int(s) for s in shape)
    if len(shape) != 3 or shape[0] != 1 or shape[1] != shape[2]:
        raise EncodersError(f"shape must be (1, S, S): the simulated anchor cells are grayscale and square; got {shape}")
    check_settings(k, floor, "pixels", rho, margin)
    cells = SimulatedCells(["simple", "complex"], size=shape[1], orientation=orientation,
                           frequency=DEFAULT_FREQUENCY if frequency is None else frequency,
                           sigma=DEFAULT_SIGMA if sigma is None else sigma).eval()
    targets = [(cells.session, "simple"), (cells.session, "complex")]
    mei = method.run_chunk(NeuronActivation(cells, targets), [0, 0], cells)
    mei_activation = -mei.energy
    masks = mei_mask(mei.images, mask_sigma, mask_threshold, soft_mask)
    result = varied_exciting_images(cells, targets, mei_activation, method, k, floor, seeds, masks, rho=rho, margin=margin)
    simple, complex_ = (float(d) for d in result.distance)
    return DiversityAnchors(simple, complex_, result, mei.images, masks, mei_activation)
