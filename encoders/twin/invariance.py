"""How far a set of images (a neuron's VEIs, or its invariance manifold) reaches along the TRUE neuron's invariances.

The twin's neurons tolerate two transformations by construction (`encoders.twin.neurons`): the phase of their
inputs (V1 energies) and position (a soft maximum over their receptive field). Both are measured here as
transformations of the neuron's true MEI, in the model's input space:

- phase shift by phi: every Fourier component of the image moved by phi along the true MEI's dominant
  wavevector k0 (F(k) -> F(k) exp(i phi sign(k . k0))): a Gabor's carrier phase moves by phi at a fixed
  envelope, any image's "analytic" phase along k0 moves the same way.
- position shift by (dy, dx) pixels: the image translated (zero padded, the data's mean grey).

The TRUE invariance is the set of phases (12 steps round the circle) and shifts (a grid of +-`max_shift` px
every 2 px) that keep the true neuron at >= `floor` of its true MEI's rate: its tolerated phase arc (degrees)
and position extent (the largest distance between two tolerated shifts, px).

Where a set of images lies along them: each image's phase relative to the true MEI (the angle of their
complex inner product along k0 under a Gaussian window at the MEI's contrast centre) and its position (the
shift that best aligns its local contrast envelope with the MEI's, by cross-correlation). The reach is the
arc the images' phases cover and the extent of their positions, each over the true one (1 = the whole true
invariance; it can exceed 1 where the images move further than the tolerated set, typically while the true
neuron no longer responds, which the share above the floor reports).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from encoders.synthesis.blur import gaussian_blur

PHASES = 12  # phase steps round the circle for the true tolerance


def _dominant_wavevector(image: torch.Tensor) -> torch.Tensor:
    """(ky, kx) in cycles per pixel of the strongest non-DC Fourier component of a (C, H, W) image (channels summed)."""
    spectrum = torch.fft.fft2(image.double()).abs().pow(2).sum(0)
    spectrum[0, 0] = 0
    h, w = spectrum.shape
    index = int(spectrum.argmax())
    ky, kx = torch.fft.fftfreq(h, dtype=torch.float64)[index // w], torch.fft.fftfreq(w, dtype=torch.float64)[index % w]
    return torch.stack([ky, kx])


def phase_shifted(images: torch.Tensor, phases_deg: torch.Tensor, k0: torch.Tensor) -> torch.Tensor:
    """images (B, C, H, W) -> (B, P, C, H, W): every image's components moved by each phase along k0."""
    h, w = images.shape[-2:]
    ky = torch.fft.fftfreq(h, dtype=torch.float64)[:, None]
    kx = torch.fft.fftfreq(w, dtype=torch.float64)[None, :]
    side = torch.sign(ky * k0[0] + kx * k0[1])  # +1 / -1 half-planes, 0 on the line through DC
    phi = torch.deg2rad(phases_deg.double()).view(-1, 1, 1)
    factor = torch.exp(1j * phi * side)  # (P, H, W)
    spectrum = torch.fft.fft2(images.double())[:, None]  # (B, 1, C, H, W)
    return torch.fft.ifft2(spectrum * factor[None, :, None]).real.to(images.dtype)


def shifted(images: torch.Tensor, shifts: torch.Tensor) -> torch.Tensor:
    """images (B, C, H, W) translated by each integer (dy, dx) of shifts (S, 2), zero padded: (B, S, C, H, W)."""
    b, c, h, w = images.shape
    m = int(shifts.abs().max()) if len(shifts) else 0
    padded = F.pad(images, (m, m, m, m))
    out = [padded[..., m - int(dy):m - int(dy) + h, m - int(dx):m - int(dx) + w] for dy, dx in shifts.tolist()]
    return torch.stack(out, 1)


def _envelope(images: torch.Tensor) -> torch.Tensor:
    """Local contrast envelope (B, H, W): sqrt of the blurred squared image (channels summed)."""
    sigma = min(images.shape[-2:]) / 16
    return gaussian_blur(images.double().pow(2).sum(1, keepdim=True), sigma).clamp_min(0).sqrt()[:, 0]


def positions(images: torch.Tensor, reference: torch.Tensor, max_shift: int) -> torch.Tensor:
    """The (dy, dx) shift within +-max_shift that best aligns each image's envelope with the reference's, (B, 2)."""
    grid = torch.arange(-max_shift, max_shift + 1)
    shifts = torch.cartesian_prod(grid, grid)
    moved = shifted(_envelope(reference[None])[:, None], shifts)[0, :, 0]  # (S, H, W)
    score = torch.einsum("bhw,shw->bs", _envelope(images), moved)
    return shifts[score.argmax(1)].double()


def relative_phases(images: torch.Tensor, reference: torch.Tensor, k0: torch.Tensor) -> torch.Tensor:
    """Each image's phase (degrees, [0, 360)) along k0 relative to the reference's, under a window at its contrast centre."""
    h, w = images.shape[-2:]
    envelope = _envelope(reference[None])[0]
    weights = envelope / envelope.sum()
    rows, cols = torch.meshgrid(torch.arange(h, dtype=torch.float64), torch.arange(w, dtype=torch.float64), indexing="ij")
    cy, cx = float((weights * rows).sum()), float((weights * cols).sum())
    sigma = max(1.0, 1.0 / (2 * math.pi * float(k0.norm()))) * 1.5  # about 1.5 carrier wavelengths / 2 pi wide
    window = torch.exp(-((rows - cy) ** 2 + (cols - cx) ** 2) / (2 * (2 * sigma) ** 2))
    carrier = torch.exp(-2j * math.pi * (k0[0] * rows + k0[1] * cols))
    kernel = window * carrier  # (H, W)
    project = lambda x: (x.double().sum(-3) * kernel).sum((-2, -1))  # noqa: E731
    return torch.rad2deg(torch.angle(project(images) * project(reference).conj())) % 360.0


def covered_arc(phases_deg: np.ndarray) -> float:
    """The smallest arc (degrees) holding all the phases: 360 minus the widest empty gap (0 for one phase)."""
    if len(phases_deg) < 2:
        return 0.0
    ordered = np.sort(np.asarray(phases_deg) % 360.0)
    gaps = np.diff(np.concatenate([ordered, ordered[:1] + 360.0]))
    return float(360.0 - gaps.max())


def extent(points: np.ndarray) -> float:
    """The largest distance between two of the points (N, 2) (0 for one)."""
    points = np.asarray(points, dtype=float)
    if len(points) < 2:
        return 0.0
    return float(np.sqrt(((points[:, None] - points[None]) ** 2).sum(-1)).max())


@dataclass
class Reach:
    """Per neuron (arrays of shape (n,)): the true invariance and how far a set of images reaches along it.

    true_phase_arc: degrees of phase shift of the true MEI (of 360) that keep the true neuron >= floor.
    true_position_extent: px, the largest distance between two shifts of the true MEI that keep it >= floor.
    phase_arc, position_extent: the same spans covered by the images (relative phase, best-aligned shift).
    phase_reach, position_reach: the images' span over the true one (NaN where the true span is 0).
    """

    true_phase_arc: np.ndarray
    true_position_extent: np.ndarray
    phase_arc: np.ndarray
    position_extent: np.ndarray

    @property
    def phase_reach(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.true_phase_arc > 0, self.phase_arc / self.true_phase_arc, np.nan)

    @property
    def position_reach(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.where(self.true_position_extent > 0, self.position_extent / self.true_position_extent, np.nan)


@torch.no_grad()
def invariance_reach(
    true_rate, true_meis: torch.Tensor, true_mei_rate: torch.Tensor, images: torch.Tensor, floor: float = 0.85,
    max_shift: int = 8,
) -> Reach:
    """The true invariance of n neurons and the reach of their images along it.

    true_rate(images (B, C, H, W), neuron index j) -> (B,) true rates of neuron j; true_meis (n, C, H, W);
    true_mei_rate (n,); images (n, M, C, H, W): each neuron's VEIs or manifold points, model space.
    """
    n = len(true_meis)
    grid = torch.arange(-max_shift, max_shift + 1, 2)
    shifts = torch.cartesian_prod(grid, grid)
    phase_grid = torch.arange(PHASES) * (360.0 / PHASES)
    out = {name: np.zeros(n) for name in ("true_phase_arc", "true_position_extent", "phase_arc", "position_extent")}
    for j in range(n):
        mei = true_meis[j]
        k0 = _dominant_wavevector(mei)
        by_phase = phase_shifted(mei[None], phase_grid, k0)[0]
        kept = (true_rate(by_phase, j) >= floor * true_mei_rate[j]).numpy()
        out["true_phase_arc"][j] = 360.0 * kept.mean()
        by_shift = shifted(mei[None], shifts)[0]
        kept = (true_rate(by_shift, j) >= floor * true_mei_rate[j]).numpy()
        out["true_position_extent"][j] = extent(shifts[kept].numpy())
        out["phase_arc"][j] = covered_arc(relative_phases(images[j], mei, k0).numpy())
        out["position_extent"][j] = extent(positions(images[j], mei, max_shift).numpy())
    return Reach(**out)
