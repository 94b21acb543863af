"""Simulated cells whose invariances are known by construction: a weight-free `ResponseModel`.

Each neuron of :class:`SimulatedCells` is a classic V1-style model built on Gabor filters centred
in the image with a Gaussian envelope. What it is invariant to is a fact of its definition, so
tools that look for invariances (varied exciting images, invariance manifolds) can be checked
against the truth, and every product (MEIs, ...) runs on it unchanged: it has the members of
`encoders.contract.ResponseModel`.

Conventions, shared with `encoders.twin.neurons`:

- orientation: of the stripes, degrees counter-clockwise from horizontal as seen on screen
  (0 = horizontal stripes, 90 = vertical stripes); stripes of orientation o and o + 180 are the same.
- phase: degrees of the carrier ``cos(2 pi f u + phase)`` where u (pixels) runs across the stripes,
  towards screen up at orientation 0. Phase 0 has a bright stripe through the centre, 180 a dark
  one (the contrast-reversed image); 90 and 270 are the odd (edge-like) Gabors.
- frequency in cycles per pixel, envelope sigma in pixels, centre at ((size - 1) / 2, (size - 1) / 2):
  the pixel grid is point-symmetric about it, so an even (phase 0) and an odd (phase 90) Gabor
  are exactly orthogonal.

Model space is z-scored pixels: ``(pixels - 128) / 64``, as the twin's front end sees its images.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encoders.datasets.transforms import ImageTransform
from encoders.errors import EncodersError

SESSION = "simulated"
KINDS = ("simple", "complex", "orientation_invariant", "polarity_invariant", "orientation_only")
# What each kind's response does not change with (for a centred Gabor of its preferred frequency).
INVARIANT_TO = {
    "simple": (),
    "complex": ("phase",),
    "orientation_invariant": ("phase", "orientation"),
    "polarity_invariant": ("polarity",),
    "orientation_only": ("orientation",),
}
PIXEL_MEAN, PIXEL_STD = 128.0, 64.0  # pixels 0..255 -> model space about -2..2
DEFAULT_SIZE = 32
DEFAULT_FREQUENCY = 0.125  # cycles per pixel: wavelength 8 px
DEFAULT_SIGMA = 4.0  # px: half a wavelength, about one and a half visible cycles
DEFAULT_ORIENTATIONS = 16  # quadrature pairs of an orientation-invariant cell, 11.25 degrees apart
DEFAULT_POOLING_EXPONENT = 4.0  # on energies: an L8 norm of the amplitudes over orientation, a soft maximum
ENERGY_EPS = 1e-6  # keeps square roots differentiable at zero drive


def _grid(size: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(x, up) float64 pixel coordinates (size, size) about the image centre; up points to screen up."""
    centre = (size - 1) / 2
    rows, cols = torch.meshgrid(torch.arange(size, dtype=torch.float64), torch.arange(size, dtype=torch.float64),
                                indexing="ij")
    return cols - centre, centre - rows


def gabor(
    size: int, orientation: float | torch.Tensor, frequency: float | torch.Tensor, phase: float | torch.Tensor,
    sigma: float | torch.Tensor, dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Centred Gabor images ``exp(-r^2 / (2 sigma^2)) * cos(2 pi frequency u + phase)``, peak value 1.

    orientation and phase in degrees (see the module's conventions), frequency in cycles per pixel,
    sigma in pixels. The parameters broadcast: tensors of shape S give images (*S, size, size); all
    floats give one (size, size) image. The mean is not removed (the cells' own filters have it removed).
    """
    params = [torch.as_tensor(p, dtype=torch.float64) for p in (orientation, frequency, phase, sigma)]
    theta, freq, phi, sig = (p[..., None, None] for p in torch.broadcast_tensors(*params))
    theta, phi = torch.deg2rad(theta), torch.deg2rad(phi)
    x, up = _grid(int(size))
    across = -torch.sin(theta) * x + torch.cos(theta) * up  # the carrier varies across the stripes
    envelope = torch.exp(-(x**2 + up**2) / (2 * sig**2))
    return (envelope * torch.cos(2 * math.pi * freq * across + phi)).to(dtype)


def _filters(size: int, orientation, frequency, phase, sigma) -> torch.Tensor:
    """Gabor filters (*S, size, size) float64 with no mean (blind to luminance) and unit L2 norm."""
    kernel = gabor(size, orientation, frequency, phase, sigma, torch.float64)
    envelope = gabor(size, 0.0, 0.0, 0.0, torch.as_tensor(sigma, dtype=torch.float64), torch.float64)
    envelope = envelope.expand_as(kernel)
    kernel = kernel - envelope * (kernel.sum((-2, -1), keepdim=True) / envelope.sum((-2, -1), keepdim=True))
    return kernel / kernel.flatten(-2).norm(dim=-1)[..., None, None]


class GaborFit(NamedTuple):
    """The centred Gabor of a given frequency and envelope that best fits each image (least squares).

    orientation: degrees in [0, 180) (or +-90 of the fit's `around`); phase: degrees in [0, 360)
    relative to that orientation; amplitude: peak value of the fitted
    Gabor (model units); explained: fraction of the image's squared norm that the fit explains.
    All of shape (N,), float64.
    """

    orientation: torch.Tensor
    phase: torch.Tensor
    amplitude: torch.Tensor
    explained: torch.Tensor


def fit_phase_orientation(
    images: torch.Tensor, frequency: float, sigma: float, step: float = 1.0, around: float | None = None,
) -> GaborFit:
    """Best-fitting orientation and phase of a centred Gabor of `frequency` and `sigma`, per image.

    images: (N, H, W) or (N, 1, H, W) with H == W. Every image is projected on quadrature pairs (the
    mean-free phase 0 and phase 90 filters) at orientations 0, step, ..., < 180 degrees; the
    orientation is the grid maximum of the pair's energy (the variance a Gabor of that orientation
    and any phase explains), refined by a parabola through it and its neighbours; the phase is the
    angle atan2(b, a) of the projections (a, b) on the pair at the refined orientation, each over
    the projection of that filter's own Gabor (the two filters are exactly orthogonal). An exact
    Gabor of any orientation and phase is recovered to a small fraction of a degree; other images
    get the Gabor nearest to them (see `explained`).

    Orientations are given in [0, 180), or within +-90 degrees of `around` when it is given.
    Orientation o with phase p and o + 180 with phase -p are the same image, so where a fit crosses
    the end of that range its phase flips sign: give `around` (e.g. a cell's preferred orientation)
    to keep the end away from the orientations being compared.
    """
    x = torch.as_tensor(images).detach().to("cpu", torch.float64)
    if x.ndim == 4:
        if x.shape[1] != 1:
            raise EncodersError(f"images must have one channel, got {tuple(x.shape)}")
        x = x[:, 0]
    if x.ndim != 3 or x.shape[-1] != x.shape[-2]:
        raise EncodersError(f"images must be (N, H, W) or (N, 1, H, W) with H == W, got {tuple(x.shape)}")
    if not 0 < step <= 45 or not frequency > 0 or not sigma > 0:
        raise EncodersError(f"need 0 < step <= 45 degrees, frequency > 0 and sigma > 0; got {step}, {frequency}, {sigma}")
    size = x.shape[-1]
    flat = x.flatten(1)
    quadrature = torch.tensor([0.0, 90.0], dtype=torch.float64)
    n = max(4, round(180.0 / step))
    step = 180.0 / n  # the grid closes on itself: the last orientation's neighbour is the first
    grid = torch.arange(n, dtype=torch.float64) * step
    pairs = _filters(size, grid[:, None], frequency, quadrature, sigma)  # (G, 2, H, W)
    energy = (flat @ pairs.reshape(-1, size * size).T).view(len(flat), len(grid), 2).pow(2).sum(-1)  # (N, G)
    best = energy.argmax(1)
    left = energy.gather(1, ((best - 1) % n)[:, None])[:, 0]
    mid = energy.gather(1, best[:, None])[:, 0]
    right = energy.gather(1, ((best + 1) % n)[:, None])[:, 0]
    curvature = left - 2 * mid + right
    shift = torch.where(curvature < 0, 0.5 * (left - right) / curvature.clamp(max=-1e-300), torch.zeros_like(mid))
    low = 0.0 if around is None else float(around) - 90.0
    orientation = low + (grid[best] + step * shift.clamp(-0.5, 0.5) - low) % 180.0
    # the pair at each image's own orientation; a Gabor (peak 1) of phase 0 projects on the phase 90
    # filter as 0 and on the phase 0 filter as `scale[:, 0]`, and vice versa: coefficients are ratios
    raw = gabor(size, orientation[:, None], frequency, quadrature, sigma, torch.float64)
    unit = _filters(size, orientation[:, None], frequency, quadrature, sigma)
    projection = torch.einsum("nk,njk->nj", flat, unit.flatten(2))  # (N, 2)
    scale = (raw * unit).flatten(2).sum(-1)
    coefficients = projection / scale
    phase = torch.rad2deg(torch.atan2(coefficients[:, 1], coefficients[:, 0])) % 360.0
    amplitude = coefficients.norm(dim=1)
    explained = projection.pow(2).sum(1) / flat.pow(2).sum(1).clamp_min(1e-300)
    return GaborFit(orientation, phase, amplitude, explained)


def _per_neuron(value, n: int, name: str) -> np.ndarray:
    array = np.asarray(value, dtype=np.float64)
    if array.ndim == 0:
        return np.full(n, float(array))
    if array.shape != (n,):
        raise EncodersError(f"{name} must be one number or one per neuron ({n}), got shape {array.shape}")
    return array.copy()


class SimulatedCells(nn.Module):
    """Model cells with known invariances, as a `ResponseModel` of one session ("simulated").

    Every cell is centred, with a Gaussian envelope of `sigma` px, and is built on mean-free,
    unit-norm Gabor filters of its `orientation`, `frequency` and (where it has one) `phase`; its
    drive d = <filter, image> is in model units (z-scored pixels). Rates are non-negative and, at
    large contrast, grow about linearly with it, so the kinds are comparable at one image norm:

    - "simple": ``softplus(d)`` of one Gabor of fixed phase. Invariant to nothing: under a norm
      constraint its single best image is its filter (one image, up to contrast). Changes strongly
      with phase (its filter's negative drives it to about 0).
    - "complex": the phase-invariant energy model ``sqrt(d_0^2 + d_90^2)`` of a quadrature pair.
      Invariant to the phase of a Gabor of its orientation (exactly, for a centred Gabor of its
      frequency and sigma: its best images are a circle of phases); selective for orientation,
      spatial frequency and position.
    - "orientation_invariant": ``(sum_k E_k^p)^(1/(2p))`` of the quadrature energies E_k of
      `n_orientations` pairs at evenly spaced orientations, p = `pooling_exponent`: an L^2p norm of
      the pairs' amplitudes, a soft maximum over orientation. Invariant to phase and to orientation
      (with the defaults, 16 pairs and p = 4, its rate varies by about 0.01 % over the orientation
      and phase of a Gabor); selective for spatial frequency and position. p = 1 would be the plain
      sum of energies: as invariant in its response to Gabors, but its best image is then one
      rotationally symmetric "bullseye" that drives all pairs at once. With p > 1 one orientation at
      a time wins, so the best images are Gabor-like at any orientation and phase (the invariance
      manifold; with the defaults a single Gabor of the cell's frequency and sigma explains about
      99 % of a best image's variance, the rest widening it in orientation).
    - "orientation_only": the orientation-invariant cell's soft maximum over orientation, pooled over
      rectified drives ``softplus(d_k)`` of Gabors of ONE phase (`phase`) at 2 * `n_orientations`
      orientations round the full circle (an odd Gabor at o + 180 is the negative of the one at o):
      ``(sum_k softplus(d_k)^(2p))^(1/(2p))``. Invariant to orientation alone: its best images are the
      Gabors of its phase at every orientation (one loop through orientation), and a Gabor of
      opposite phase drives it about as little as it drives a simple cell.
    - "polarity_invariant": ``log(exp(d) + exp(-d))`` of one Gabor, a smooth full-wave rectification
      (the rectified responses to the Gabor and to its negative, pooled): about |d|, ln 2 at d = 0.
      Invariant to contrast polarity (phase p and p + 180 give the same rate: its best images are
      its filter and the filter's negative) but NOT to phase: at p +- 90 the drive is 0 and the rate
      is the baseline ln 2, as the simple cell's.

    Args:
        kinds: the kind of each neuron, in output order (kinds may repeat).
        size: images are (1, size, size).
        orientation, frequency, sigma, phase: one value for all neurons or one per neuron (degrees,
            cycles per pixel, pixels, degrees). An orientation-invariant cell's `orientation` only
            places its grid of orientations; complex and orientation-invariant cells ignore `phase`.
        n_orientations, pooling_exponent: of the orientation-invariant cells.
        session: the one session's name.

    Neuron ids are the kind names, with "-0", "-1", ... appended to kinds that occur more than once.
    The model holds no weights (its filters are buffers); an empty parameter only tells
    `encoders.contract.device_of` where the module lives.
    """

    def __init__(
        self,
        kinds: Sequence[str] = KINDS,
        size: int = DEFAULT_SIZE,
        orientation: float | Sequence[float] = 0.0,
        frequency: float | Sequence[float] = DEFAULT_FREQUENCY,
        sigma: float | Sequence[float] = DEFAULT_SIGMA,
        phase: float | Sequence[float] = 0.0,
        n_orientations: int = DEFAULT_ORIENTATIONS,
        pooling_exponent: float = DEFAULT_POOLING_EXPONENT,
        session: str = SESSION,
    ):
        super().__init__()
        kinds = [str(k) for k in ([kinds] if isinstance(kinds, str) else kinds)]
        if not kinds:
            raise EncodersError("give at least one neuron kind")
        unknown = sorted(set(kinds) - set(KINDS))
        if unknown:
            raise EncodersError(f"unknown neuron kinds {unknown}; the kinds are {list(KINDS)}")
        if int(size) < 4:
            raise EncodersError(f"size must be at least 4 pixels, got {size}")
        if int(n_orientations) < 1 or not float(pooling_exponent) >= 1:
            raise EncodersError(
                f"need n_orientations >= 1 and pooling_exponent >= 1, got {n_orientations}, {pooling_exponent}")
        n = len(kinds)
        self.kinds = kinds
        self.size = int(size)
        self.session = str(session)
        self.orientations = _per_neuron(orientation, n, "orientation") % 180.0
        self.frequencies = _per_neuron(frequency, n, "frequency")
        self.sigmas = _per_neuron(sigma, n, "sigma")
        self.phases = _per_neuron(phase, n, "phase") % 360.0
        if not (self.frequencies > 0).all() or not (self.sigmas > 0).all():
            raise EncodersError(f"frequencies and sigmas must be positive, got {self.frequencies}, {self.sigmas}")
        self.n_orientations = int(n_orientations)
        self.pooling_exponent = float(pooling_exponent)
        counts = {k: kinds.count(k) for k in set(kinds)}
        seen = dict.fromkeys(counts, 0)
        self._ids = []
        for kind in kinds:
            self._ids.append(kind if counts[kind] == 1 else f"{kind}-{seen[kind]}")
            seen[kind] += 1

        # one filter bank for all cells: rows are filters, each kind gathers its own rows
        filters, index, columns = [], {k: [] for k in KINDS}, {k: [] for k in KINDS}
        quadrature = torch.tensor([0.0, 90.0], dtype=torch.float64)
        for i, kind in enumerate(kinds):
            o, f, s, p = self.orientations[i], self.frequencies[i], self.sigmas[i], self.phases[i]
            if kind in ("simple", "polarity_invariant"):
                bank = _filters(self.size, o, f, p, s)[None]
            elif kind == "complex":
                bank = _filters(self.size, o, f, quadrature, s)
            elif kind == "orientation_only":
                grid = o + 360.0 * torch.arange(2 * self.n_orientations, dtype=torch.float64) / (2 * self.n_orientations)
                bank = _filters(self.size, grid, f, p, s)  # (2K, H, W)
            else:
                grid = o + 180.0 * torch.arange(self.n_orientations, dtype=torch.float64) / self.n_orientations
                bank = _filters(self.size, grid[:, None], f, quadrature, s).flatten(0, 1)  # (K * 2, H, W)
            rows = list(range(sum(len(b) for b in filters), sum(len(b) for b in filters) + len(bank)))
            filters.append(bank)
            index[kind].append(rows)
            columns[kind].append(i)
        self.register_buffer("bank", torch.cat(filters).flatten(1).to(torch.float32))  # (filters, H * W)
        shapes = {"simple": (-1,), "polarity_invariant": (-1,), "complex": (-1, 2),
                  "orientation_invariant": (-1, self.n_orientations, 2), "orientation_only": (-1, 2 * self.n_orientations, 1)}
        self._present = [k for k in KINDS if columns[k]]
        for kind in self._present:
            self.register_buffer(f"_{kind}_rows", torch.tensor(index[kind]).view(*shapes[kind]), persistent=False)
        order = torch.tensor([i for k in self._present for i in columns[k]])
        self.register_buffer("_order", torch.argsort(order), persistent=False)  # kind-grouped -> neuron order
        self._device_anchor = nn.Parameter(torch.empty(0), requires_grad=False)
        self._transform = ImageTransform(grayscale=True, mean=PIXEL_MEAN, std=PIXEL_STD)

    # ---- the response-model contract ---------------------------------------------------------------
    @property
    def sessions(self) -> list[str]:
        return [self.session]

    def neuron_ids(self, session: str) -> list[str]:
        self._check_session(session)
        return list(self._ids)

    @property
    def image_transform(self) -> ImageTransform:
        return self._transform

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return (1, self.size, self.size)

    def forward(self, images: torch.Tensor, session: str, neurons: torch.Tensor | None = None) -> torch.Tensor:
        """Rates (B, n_neurons) for model-space images (B, 1, size, size); with `neurons` (B,) column
        indices, (B,): neuron neurons[b]'s rate for image b. Differentiable in the images."""
        self._check_session(session)
        if images.ndim != 4 or tuple(images.shape[1:]) != self.input_shape:
            raise ValueError(f"images must be (B, {', '.join(map(str, self.input_shape))}), got {tuple(images.shape)}")
        drive = images.flatten(1) @ self.bank.to(images.dtype).T  # (B, filters)
        parts = []
        for kind in self._present:
            d = drive[:, getattr(self, f"_{kind}_rows")]
            if kind == "simple":
                parts.append(F.softplus(d))
            elif kind == "polarity_invariant":
                parts.append(torch.logaddexp(d, -d))  # log(e^d + e^-d): the softer of softplus(d), softplus(-d) summed
            elif kind == "complex":
                parts.append(torch.sqrt(d.pow(2).sum(-1) + ENERGY_EPS))
            else:  # (sum_k E_k^p + eps^p)^(1/2p), with the energies over a scale s that cancels (no overflow)
                # E_k: a quadrature pair's energy, or (orientation_only) a squared rectified drive
                energy = d.pow(2).sum(-1) if kind == "orientation_invariant" else F.softplus(d[..., 0]).pow(2)
                power = self.pooling_exponent  # energy: (B, n, K)
                scale = energy.detach().amax(-1).clamp_min(ENERGY_EPS)
                pooled = (energy / scale[..., None]).pow(power).sum(-1) + (ENERGY_EPS / scale) ** power
                parts.append(scale.sqrt() * pooled.pow(0.5 / power))
        rates = torch.cat(parts, 1)[:, self._order]
        if neurons is None:
            return rates
        neurons = torch.as_tensor(neurons, device=rates.device)
        if neurons.shape != (len(images),):
            raise ValueError(f"neurons must be ({len(images)},) column indices, got {tuple(neurons.shape)}")
        if len(neurons) and (int(neurons.min()) < 0 or int(neurons.max()) >= len(self._ids)):
            raise IndexError(f"neuron columns must be in 0..{len(self._ids) - 1}")
        return rates.gather(1, neurons.long()[:, None])[:, 0]

    # ---- ground truth -------------------------------------------------------------------------------
    def column(self, neuron_id: str) -> int:
        if neuron_id not in self._ids:
            raise KeyError(f"unknown neuron id {neuron_id!r}; the cells are {self._ids}")
        return self._ids.index(neuron_id)

    def invariant_to(self, neuron_id: str) -> tuple[str, ...]:
        """What the neuron's response to a centred Gabor of its frequency does not change with."""
        return INVARIANT_TO[self.kinds[self.column(neuron_id)]]

    def preferred_gabor(
        self, neuron_id: str, orientation: float | torch.Tensor | None = None,
        phase: float | torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The neuron's Gabor (its frequency and sigma; its orientation and phase unless given) as
        model-space images (*S, 1, size, size) of unit L2 norm, mean not removed: scale to any norm."""
        i = self.column(neuron_id)
        o = self.orientations[i] if orientation is None else orientation
        p = self.phases[i] if phase is None else phase
        image = gabor(self.size, o, self.frequencies[i], p, self.sigmas[i], torch.float64)
        image = image / image.flatten(-2).norm(dim=-1)[..., None, None]
        return image.unsqueeze(-3).to(torch.float32)

    def _check_session(self, session: str) -> None:
        if session != self.session:
            raise KeyError(f"unknown session {session!r}; the model has {self.sessions}")

    def extra_repr(self) -> str:
        return f"session={self.session!r}, neurons={self._ids}, size={self.size}"
