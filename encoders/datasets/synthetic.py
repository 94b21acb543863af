"""A synthetic V4 "digital twin": ground-truth model neurons and the dataset they generate.

The ground truth (:class:`GroundTruthV4`) is a fixed, differentiable, nonlinear model of a V4
population built from a seed:

1. V1 front end shared by all neurons: quadrature Gabor pairs at 8 orientations and two
   spatial frequencies (wavelength 4 px on the image, 8 px on a 2x downsampled copy) give
   complex-cell energies ``sqrt(even^2 + odd^2 + eps)``, divided by a local pool of all
   energies (divisive normalisation). A few phase-sensitive channels (rectified odd-phase
   edges of either contrast polarity, and rectified ON/OFF local luminance) make some neurons
   sensitive to contrast polarity, as many V4 cells are. All channels live on a grid of
   stride 4 px.
2. A shared bank of V4 conjunction features (12 by default): each a sparse weighted sum of
   a few V1 channels at a few spatial offsets (excitatory and inhibitory), thresholded by a
   softplus. Templates make corner / end-stopped, curvature, texture and polarity-edge
   features. The bank is shared, like the features of a real cortical area, which is also
   what lets a core + readout model learn the population from ~1000 images per session.
3. Per neuron: a sparse mixture of the shared feature maps (one main feature, maybe a weaker
   second and an inhibitory one), rectified, weighted by a Gaussian receptive field
   (per-neuron centre and size) and pooled with a soft maximum over positions
   (``tau * log mean exp(s / tau)``): position tolerance.
4. Output: ``rate_max * tanh(gain * softplus(slope * z + bias) / rate_max)`` of the
   standardised pooled drive z: expansive, then saturating at 5-8x the mean rate. The gain is
   calibrated so the mean rate over natural images equals a per-neuron target in [2, 8]
   spikes per bin (like V4 spike counts in 100 ms).

:func:`make_twin` draws natural-image crops for each session, splits them into tiers and
samples Poisson spike counts from the true rates.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from encoders.datasets.natural_images import natural_image_pool, source_image_names
from encoders.datasets.schema import SessionData

GROUND_TRUTH_FORMAT = "GroundTruthV4"
FORMAT_VERSION = 1

N_ORIENTATIONS = 8
FINE_WAVELENGTH = 4.0  # px; the coarse scale applies the same bank on a 2x downsampled image
GABOR_SIGMA_PER_WAVELENGTH = 0.45
KERNEL_SIZE = 11
GRID_STRIDE = 4  # px between positions of the second stage
MAX_OFFSET = 1  # grid units: conjunction components lie within +-4 px of the feature centre
N_COMPONENTS = 4
POLARITY_ORIENTATIONS = (0, 2, 4, 6)  # indices into the 8 orientations: 0, 45, 90, 135 deg
ENERGY_EPS = 1e-4
MAP_SHARPNESS = 4.0  # softplus beta rectifying each neuron's mixture of V4 feature maps
CHUNK = 256  # images per forward chunk: bounds the (neurons, grid^2, chunk) maps in memory

# Channel layout of the front-end feature map.
FINE0 = 0
COARSE0 = N_ORIENTATIONS
POLARITY0 = 2 * N_ORIENTATIONS
LUMINANCE0 = POLARITY0 + 2 * len(POLARITY_ORIENTATIONS)
N_CHANNELS = LUMINANCE0 + 2

SELECTIVITY_TYPES = ("corner", "curvature", "texture", "polarity_edge")

# Arrays of state_arrays() that enter the computation (float32 / int64 buffers).
_FLOAT_ARRAYS = (
    "v1_kernels", "norm_sigma", "channel_scale",
    "feat_weight", "feat_threshold", "feat_scale",
    "mix", "rf_x", "rf_y", "rf_sigma", "pool_tau", "drive_mean", "drive_std", "out_slope",
    "out_bias", "out_gain", "rate_max",
)
_INT_ARRAYS = ("feat_channel", "feat_dy", "feat_dx")
_PER_NEURON = ("rf_x", "rf_y", "rf_sigma", "pool_tau", "drive_mean", "drive_std", "out_slope",
               "out_bias", "out_gain", "rate_max")


def orientation_degrees() -> np.ndarray:
    """Stripe orientation of each front-end orientation index, degrees counter-clockwise
    from horizontal as seen on screen (0 = horizontal stripes, 90 = vertical stripes)."""
    return np.arange(N_ORIENTATIONS) * 180.0 / N_ORIENTATIONS


def _gabor_bank() -> np.ndarray:
    """Quadrature Gabor pairs (even, odd) per orientation, (2 * 8, 1, k, k), unit L2 norm."""
    half = KERNEL_SIZE // 2
    rows, cols = np.mgrid[-half:half + 1, -half:half + 1].astype(np.float64)
    up = -rows  # screen "up" so that orientations read counter-clockwise on screen
    sigma = GABOR_SIGMA_PER_WAVELENGTH * FINE_WAVELENGTH
    envelope = np.exp(-(cols ** 2 + up ** 2) / (2 * sigma ** 2))
    kernels = []
    for phi in np.deg2rad(orientation_degrees()):
        across = -math.sin(phi) * cols + math.cos(phi) * up  # carrier varies across stripes
        for carrier in (np.cos, np.sin):
            k = envelope * carrier(2 * math.pi * across / FINE_WAVELENGTH)
            k = k - envelope * (k.sum() / envelope.sum())  # zero DC: blind to mean luminance
            kernels.append(k / np.linalg.norm(k))
    return np.stack(kernels)[:, None].astype(np.float32)


class GroundTruthV4(nn.Module):
    """A fixed population of nonlinear, position-tolerant V4-like model neurons.

    Input: images ``(B, 1, H, W)`` float in pixel units 0..255, ``H == W == image_size``.
    Output: ``(B, n_neurons)`` non-negative firing rates in spikes per bin. Differentiable
    with respect to the images. Build one with :meth:`generate` (from a seed) or
    :meth:`from_arrays` (from :meth:`state_arrays`).
    """

    def __init__(self, arrays: dict[str, np.ndarray]) -> None:
        super().__init__()
        missing = [k for k in (*_FLOAT_ARRAYS, *_INT_ARRAYS, "image_size", "format_version")
                   if k not in arrays]
        if missing:
            raise ValueError(f"ground-truth arrays lack {missing}")
        version = int(np.asarray(arrays["format_version"]))
        if version != FORMAT_VERSION:
            raise ValueError(f"unsupported {GROUND_TRUTH_FORMAT} format_version {version}")
        self.image_size = int(np.asarray(arrays["image_size"]))
        if self.image_size < 16 or self.image_size % GRID_STRIDE:
            raise ValueError(f"image_size must be a multiple of {GRID_STRIDE} and >= 16, "
                             f"got {self.image_size}")
        self.grid = self.image_size // GRID_STRIDE
        for name in _FLOAT_ARRAYS:
            self.register_buffer(name, torch.as_tensor(np.array(arrays[name], np.float32)))
        for name in _INT_ARRAYS:
            self.register_buffer(name, torch.as_tensor(np.array(arrays[name], np.int64)))
        n, m = self.mix.shape
        if self.feat_weight.shape != (m, N_COMPONENTS) or self.feat_threshold.shape != (m,):
            raise ValueError("feature-bank arrays disagree with mix (neurons, features)")
        for name in _PER_NEURON:
            if getattr(self, name).shape != (n,):
                raise ValueError(f"{name} must have shape ({n},)")
        if int(self.feat_channel.min()) < 0 or int(self.feat_channel.max()) >= N_CHANNELS:
            raise ValueError("feat_channel out of range")
        if int(self.feat_dy.abs().max()) > MAX_OFFSET or int(self.feat_dx.abs().max()) > MAX_OFFSET:
            raise ValueError("feature offsets out of range")
        # Descriptions that do not enter the computation.
        self.seed = int(np.asarray(arrays.get("seed", -1)))
        self.feat_type = np.array(arrays.get("feat_type", np.full(m, -1)), np.int64)
        self.feat_orientation = np.array(arrays.get("feat_orientation", np.full(m, np.nan)),
                                         np.float64)
        self.feat_wavelength = np.array(arrays.get("feat_wavelength", np.full(m, np.nan)),
                                        np.float64)
        self.target_rate = np.array(arrays.get("target_rate", np.full(n, np.nan)), np.float64)
        index, weight = self._gather_table()
        self.register_buffer("gather_index", index, persistent=False)
        self.register_buffer("gather_weight", weight, persistent=False)
        centres = torch.arange(self.grid, dtype=torch.float32) * GRID_STRIDE + 1.5
        self.register_buffer("grid_centres", centres, persistent=False)

    @property
    def n_neurons(self) -> int:
        return int(self.mix.shape[0])

    @property
    def n_features(self) -> int:
        """Number of shared V4 conjunction features the neurons mix."""
        return int(self.mix.shape[1])

    @property
    def main_feature(self) -> np.ndarray:
        """Index of each neuron's strongest excitatory shared feature, (N,) int64."""
        return self.mix.argmax(dim=1).cpu().numpy().astype(np.int64)

    @property
    def selectivity(self) -> np.ndarray:
        """Selectivity type (one of SELECTIVITY_TYPES) of each neuron's main feature."""
        codes = self.feat_type[self.main_feature]
        return np.asarray([SELECTIVITY_TYPES[c] if 0 <= c < len(SELECTIVITY_TYPES)
                           else "unknown" for c in codes])

    @property
    def preferred_orientation(self) -> np.ndarray:
        """Orientation (deg) of each neuron's main feature's first component, (N,)."""
        return self.feat_orientation[self.main_feature]

    @property
    def preferred_wavelength(self) -> np.ndarray:
        """Wavelength (px) of each neuron's main feature's first component, (N,)."""
        return self.feat_wavelength[self.main_feature]

    def _gather_table(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(feature * grid^2, components) flat indices into the zero-padded channel map, and
        the matching weights, for embedding_bag."""
        g = self.grid
        padded = g + 2 * MAX_OFFSET
        rows = torch.arange(g).view(1, -1, 1, 1)
        cols = torch.arange(g).view(1, 1, -1, 1)
        r = rows + MAX_OFFSET + self.feat_dy[:, None, None, :]
        c = cols + MAX_OFFSET + self.feat_dx[:, None, None, :]
        index = self.feat_channel[:, None, None, :] * padded * padded + r * padded + c
        weight = self.feat_weight[:, None, None, :].expand(-1, g, g, -1)
        return index.reshape(-1, N_COMPONENTS), weight.reshape(-1, N_COMPONENTS).contiguous()

    def state_arrays(self) -> dict[str, np.ndarray]:
        """Every array (and 0-d scalar) needed to rebuild this model with :meth:`from_arrays`.

        All values are numeric (float32, float64 or int64), so any HDF5 writer can store them.
        """
        out: dict[str, np.ndarray] = {
            name: getattr(self, name).detach().cpu().numpy().copy()
            for name in (*_FLOAT_ARRAYS, *_INT_ARRAYS)
        }
        out["format_version"] = np.asarray(FORMAT_VERSION, np.int64)
        out["image_size"] = np.asarray(self.image_size, np.int64)
        out["seed"] = np.asarray(self.seed, np.int64)
        out["feat_type"] = self.feat_type.copy()
        out["feat_orientation"] = self.feat_orientation.copy()
        out["feat_wavelength"] = self.feat_wavelength.copy()
        out["target_rate"] = self.target_rate.copy()
        return out

    @classmethod
    def from_arrays(cls, arrays: dict[str, np.ndarray]) -> GroundTruthV4:
        """Rebuild a model saved with :meth:`state_arrays`; outputs are identical."""
        return cls(arrays)

    @classmethod
    def generate(cls, n_neurons: int, image_size: int, seed: int, n_features: int = 12,
                 n_calibration_images: int = 512) -> GroundTruthV4:
        """Draw a population from ``seed`` and calibrate it on natural images.

        ``n_features`` shared conjunction features (cycling through SELECTIVITY_TYPES) are
        mixed sparsely by the neurons. Calibration (normalisation constants, thresholds,
        standardisation and the gain that sets each neuron's mean rate) uses its own
        natural-image crops, drawn from ``seed``.
        """
        if n_neurons < 1:
            raise ValueError(f"n_neurons must be >= 1, got {n_neurons}")
        if seed < 0:
            raise ValueError(f"seed must be >= 0, got {seed}")
        if n_features < 2:
            raise ValueError(f"n_features must be >= 2, got {n_features}")
        if n_calibration_images < 16:
            raise ValueError("n_calibration_images must be >= 16")
        if image_size < 16 or image_size % GRID_STRIDE:
            raise ValueError(f"image_size must be a multiple of {GRID_STRIDE} and >= 16, "
                             f"got {image_size}")
        rng = np.random.default_rng(_subseed(seed, 0))
        arrays = _draw_population(rng, n_neurons, n_features, image_size)
        arrays["seed"] = np.asarray(seed, np.int64)
        calibration = natural_image_pool(n_calibration_images, image_size, _subseed(seed, 1))
        return _calibrate(cls, arrays, calibration, rng)

    # ------------------------------------------------------------------------------ stages
    def front_end(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor,
                                                       torch.Tensor]:
        """Unnormalised (energies, polarity edges, ON/OFF luminance) on the stride-4 grid."""
        x = (images - 128.0) / 64.0  # fixed grey level: luminance and polarity are kept
        kernels = self.v1_kernels
        pad = KERNEL_SIZE // 2
        fine = F.avg_pool2d(_energy(F.conv2d(x, kernels, stride=2, padding=pad)), 2)
        coarse_linear = F.conv2d(F.avg_pool2d(x, 2), kernels, stride=2, padding=pad)
        coarse = _energy(coarse_linear)
        odd = coarse_linear[:, 1::2][:, list(POLARITY_ORIENTATIONS)]
        polarity = torch.stack([F.relu(odd), F.relu(-odd)], dim=2).flatten(1, 2)
        luminance = F.avg_pool2d(x, GRID_STRIDE)
        luminance = torch.cat([F.relu(luminance), F.relu(-luminance)], dim=1)
        return torch.cat([fine, coarse], dim=1), polarity, luminance

    def channels(self, images: torch.Tensor) -> torch.Tensor:
        """Normalised V1 channels on the stride-4 grid, (B, channels, grid, grid)."""
        return self.normalise(*self.front_end(images))

    def normalise(self, energies: torch.Tensor, polarity: torch.Tensor,
                  luminance: torch.Tensor) -> torch.Tensor:
        """Divisive normalisation and per-channel scaling of :meth:`front_end` outputs."""
        pool = F.avg_pool2d(energies.mean(dim=1, keepdim=True), 3, stride=1, padding=1,
                            count_include_pad=False)
        denominator = self.norm_sigma + pool
        out = torch.cat([energies / denominator, polarity / denominator, luminance], dim=1)
        return out * self.channel_scale.view(1, -1, 1, 1)

    def feature_drive(self, channels: torch.Tensor) -> torch.Tensor:
        """Linear drive of every shared feature at every grid position, (M, grid^2, B)."""
        # Images last: each sparse conjunction is a weighted sum of K rows of the
        # (channel * position, image) table, which embedding_bag does in one fused,
        # differentiable pass (several times faster than gather + multiply).
        table = F.pad(channels, (MAX_OFFSET,) * 4).flatten(1).t().contiguous()
        out = F.embedding_bag(self.gather_index, table, per_sample_weights=self.gather_weight,
                              mode="sum")
        return out.view(self.n_features, self.grid * self.grid, channels.shape[0])

    def feature_maps(self, drive: torch.Tensor) -> torch.Tensor:
        """Thresholded, unit-scaled shared V4 feature maps, (M, grid^2, B)."""
        sub = F.softplus(drive - self.feat_threshold.view(-1, 1, 1))
        return sub * self.feat_scale.view(-1, 1, 1)

    def rf_envelope(self) -> torch.Tensor:
        """Gaussian receptive-field weight (peak 1) of each neuron on the grid, (N, grid^2)."""
        dy = self.grid_centres.view(1, -1, 1) - self.rf_y.view(-1, 1, 1)
        dx = self.grid_centres.view(1, 1, -1) - self.rf_x.view(-1, 1, 1)
        env = torch.exp(-(dx ** 2 + dy ** 2) / (2 * self.rf_sigma.view(-1, 1, 1) ** 2))
        return env.flatten(1)

    def pooled(self, maps: torch.Tensor) -> torch.Tensor:
        """Each neuron's rectified mixture of feature maps, weighted by its receptive field and
        pooled with a soft maximum over positions, (B, N)."""
        mixed = self.mixed_maps(maps, self.mix)
        g2 = mixed.shape[1]
        tau = self.pool_tau.view(-1, 1)
        factor = self.rf_envelope() / tau
        lse = torch.logsumexp(mixed * factor[..., None], dim=1) - math.log(g2)
        return (tau * lse).t()

    @staticmethod
    def mixed_maps(maps: torch.Tensor, mix: torch.Tensor) -> torch.Tensor:
        """Rectified mixtures `mix` (N, M) of feature maps (M, grid^2, B) -> (N, grid^2, B)."""
        m, g2, b = maps.shape
        mixed = (mix @ maps.reshape(m, g2 * b)).view(mix.shape[0], g2, b)
        return F.softplus(mixed, beta=MAP_SHARPNESS)

    def neuron_maps(self, images: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
        """Neuron `columns[b]`'s own view of image b: its feature mixture at every grid position,
        weighted by its receptive field, (B, grid^2), before the soft-max pooling.

        Invariant to what the neuron ignores (phase of its V1 energy inputs, pixels outside its
        features), so two images that drive it the same way have similar maps even when their
        pixels differ; used to compare MEIs whose pixels are not unique.
        """
        columns = torch.as_tensor(columns, dtype=torch.long, device=images.device)
        if images.ndim != 4 or len(columns) != len(images):
            raise ValueError(f"need one column per image, got {len(columns)} for {tuple(images.shape)}")
        out = []
        for chunk, cols in zip(images.to(self.v1_kernels.dtype).split(CHUNK), columns.split(CHUNK)):
            maps = self.feature_maps(self.feature_drive(self.channels(chunk)))  # (M, grid^2, b)
            mixed = F.softplus(torch.einsum("bm,mgb->bg", self.mix[cols], maps), beta=MAP_SHARPNESS)
            out.append(mixed * self.rf_envelope()[cols])
        return torch.cat(out) if out else images.new_zeros(0, self.grid * self.grid)

    def drive(self, images: torch.Tensor) -> torch.Tensor:
        """Each neuron's pooled drive before the saturating output, z-scored over natural images, (B, N).

        The rate is a monotonic function of it, but flattens near ``rate_max``: two images that
        both saturate a neuron have the same rate and can still differ here.
        """
        return (self._pooled_drive(images) - self.drive_mean) / self.drive_std

    def _pooled_drive(self, images: torch.Tensor) -> torch.Tensor:
        """`pooled` of every image, (B, N), in chunks of CHUNK images to bound memory."""
        images = images.to(self.v1_kernels.dtype)
        outs = [self.pooled(self.feature_maps(self.feature_drive(self.channels(c)))) for c in images.split(CHUNK)]
        return torch.cat(outs) if outs else images.new_zeros(0, self.n_neurons)

    def rates(self, pooled: torch.Tensor) -> torch.Tensor:
        """Output nonlinearity: pooled drive to spikes per bin, (B, N).

        Expansive near threshold (softplus), saturating at ``rate_max`` (tanh), so that no
        image, not even an optimised one, drives a neuron beyond a plausible peak rate.
        """
        z = (pooled - self.drive_mean) / self.drive_std
        drive = self.out_gain * F.softplus(self.out_slope * z + self.out_bias)
        return self.rate_max * torch.tanh(drive / self.rate_max)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Rates (B, N) for images (B, 1, image_size, image_size) in pixel units 0..255."""
        if images.ndim != 4 or images.shape[1] != 1:
            raise ValueError(f"images must be (B, 1, H, W), got {tuple(images.shape)}")
        if tuple(images.shape[-2:]) != (self.image_size, self.image_size):
            raise ValueError(f"images must be {self.image_size}x{self.image_size} "
                             f"(the size this twin was built for), got {tuple(images.shape)}")
        return self.rates(self._pooled_drive(images))


def _subseed(seed: int, stream: int) -> int:
    """An independent integer seed for one random stream of a twin."""
    return int(np.random.SeedSequence([seed, stream]).generate_state(1)[0])


def _energy(linear: torch.Tensor) -> torch.Tensor:
    """Complex-cell energy of interleaved (even, odd) channels."""
    return torch.sqrt(linear[:, 0::2] ** 2 + linear[:, 1::2] ** 2 + ENERGY_EPS)


# ------------------------------------------------------------------------ random population
def _direction(orientation_index: int) -> tuple[float, float]:
    """Unit vector along the stripes of an orientation, as (d_row, d_col) on the grid."""
    phi = math.radians(orientation_degrees()[orientation_index % N_ORIENTATIONS])
    return -math.sin(phi), math.cos(phi)


def _offset(d_row: float, d_col: float) -> tuple[int, int]:
    def clip(v: float) -> int:
        return int(np.clip(np.rint(v), -MAX_OFFSET, MAX_OFFSET))
    return clip(d_row), clip(d_col)


def _template(rng: np.random.Generator, kind: str
              ) -> tuple[list[tuple[int, int, int, float]], int, float]:
    """Components ``(channel, d_row, d_col, weight)`` of one conjunction feature, with its
    main orientation index and wavelength (px)."""
    ori = int(rng.integers(N_ORIENTATIONS))
    coarse = bool(rng.random() < 0.5)
    base = COARSE0 if coarse else FINE0
    wavelength = FINE_WAVELENGTH * (2 if coarse else 1)
    reach = 1
    comps: list[tuple[int, int, int, float]] = []
    if kind == "corner":
        # Two arms meeting at a vertex, end-stopped: energy beyond the vertex along arm 1
        # suppresses, so a straight line through the vertex drives it less than a corner.
        turn = int(rng.integers(2, 5)) * int(rng.choice([-1, 1]))
        ori2 = (ori + turn) % N_ORIENTATIONS
        d1, d2 = _direction(ori), _direction(ori2)
        comps.append((base + ori, *_offset(reach * d1[0], reach * d1[1]), 1.0))
        comps.append((base + ori2, *_offset(reach * d2[0], reach * d2[1]), 1.0))
        comps.append((base + ori, *_offset(-reach * d1[0], -reach * d1[1]), -0.6))
        comps.append((base + (ori + 4) % N_ORIENTATIONS, 0, 0, -0.3))
    elif kind == "curvature":
        # Three tangent segments of an arc, orientation turning by one or two steps.
        step = int(rng.integers(1, 3)) * int(rng.choice([-1, 1]))
        t = _direction(ori)
        normal = (-t[1], t[0])
        sag = 0.5 * reach * abs(step)
        sign = 1 if step > 0 else -1
        comps.append((base + ori, 0, 0, 1.0))
        comps.append((base + (ori + step) % N_ORIENTATIONS,
                      *_offset(reach * t[0] + sign * sag * normal[0],
                               reach * t[1] + sign * sag * normal[1]), 1.0))
        comps.append((base + (ori - step) % N_ORIENTATIONS,
                      *_offset(-reach * t[0] + sign * sag * normal[0],
                               -reach * t[1] + sign * sag * normal[1]), 1.0))
        comps.append((base + (ori + 4) % N_ORIENTATIONS, 0, 0, -0.5))
    elif kind == "texture":
        # Oriented texture at the fine scale spread over space, cross-orientation suppressed.
        base, wavelength = FINE0, FINE_WAVELENGTH
        for _ in range(3):
            comps.append((base + ori, int(rng.integers(-MAX_OFFSET, MAX_OFFSET + 1)),
                          int(rng.integers(-MAX_OFFSET, MAX_OFFSET + 1)), 1.0))
        comps.append((base + (ori + 4) % N_ORIENTATIONS, 0, 0, -0.6))
    elif kind == "polarity_edge":
        # A contrast-polarity edge with a bright or dark flank: sensitive to contrast sign.
        j = int(rng.integers(len(POLARITY_ORIENTATIONS)))
        ori = POLARITY_ORIENTATIONS[j]
        wavelength = 2 * FINE_WAVELENGTH
        sign = int(rng.integers(2))
        t = _direction(ori)
        normal = (-t[1], t[0])
        flank = 1 if sign == 0 else -1
        comps.append((POLARITY0 + 2 * j + sign, 0, 0, 1.0))
        comps.append((COARSE0 + ori, *_offset(reach * t[0], reach * t[1]), 0.7))
        comps.append((LUMINANCE0 + int(rng.integers(2)),
                      *_offset(flank * normal[0], flank * normal[1]), 0.6))
        comps.append((POLARITY0 + 2 * j + 1 - sign, 0, 0, -0.6))
    else:
        raise ValueError(f"unknown selectivity {kind!r}")
    return comps, ori, wavelength


def _draw_population(rng: np.random.Generator, n: int, m: int,
                     image_size: int) -> dict[str, np.ndarray]:
    """Random feature bank and neurons; data-dependent constants are left to calibration."""
    feat_type = np.arange(m) % len(SELECTIVITY_TYPES)
    channel = np.zeros((m, N_COMPONENTS), np.int64)
    dy = np.zeros((m, N_COMPONENTS), np.int64)
    dx = np.zeros((m, N_COMPONENTS), np.int64)
    weight = np.zeros((m, N_COMPONENTS), np.float32)
    orientation = np.zeros(m)
    wavelength = np.zeros(m)
    for j, kind in enumerate(feat_type):
        comps, ori, lam = _template(rng, SELECTIVITY_TYPES[kind])
        jitter = rng.uniform(0.8, 1.2, size=len(comps))
        for k, (c, r, col, w) in enumerate(comps):
            channel[j, k], dy[j, k], dx[j, k], weight[j, k] = c, r, col, w * jitter[k]
        orientation[j] = orientation_degrees()[ori]
        wavelength[j] = lam
    # Excitation sums to one so that feature thresholds are comparable.
    weight /= np.clip(weight, 0, None).sum(axis=1, keepdims=True)

    # Each neuron: one main feature, maybe a weaker second one and an inhibitory one. Sharing
    # a feature bank is what makes a core + readout model able to learn the population.
    mix = np.zeros((n, m))
    main = rng.permutation(np.arange(n) % m)  # every feature used before any repeats
    mix[np.arange(n), main] = 1.0
    for i in range(n):
        others = rng.permutation(np.delete(np.arange(m), main[i]))
        if rng.random() < 0.5:
            mix[i, others[0]] = rng.uniform(0.2, 0.6)
        if rng.random() < 0.5:
            mix[i, others[1]] = -rng.uniform(0.2, 0.5)
    size = float(image_size)
    target_rate = np.clip(np.exp(rng.normal(math.log(4.0), 0.35, n)), 2.0, 8.0)
    return {
        "format_version": np.asarray(FORMAT_VERSION, np.int64),
        "image_size": np.asarray(image_size, np.int64),
        "v1_kernels": _gabor_bank(),
        "feat_channel": channel, "feat_dy": dy, "feat_dx": dx, "feat_weight": weight,
        "feat_type": feat_type.astype(np.int64),
        "feat_orientation": orientation, "feat_wavelength": wavelength,
        "mix": mix,
        "rf_x": rng.uniform(0.35, 0.65, n) * size,
        "rf_y": rng.uniform(0.35, 0.65, n) * size,
        # At least one grid step: smaller RFs would alias on the stride-4 grid.
        "rf_sigma": np.maximum(rng.uniform(0.12, 0.2, n) * size, GRID_STRIDE),
        "pool_tau": rng.uniform(0.6, 1.5, n),
        "out_slope": rng.uniform(0.8, 1.5, n),
        "out_bias": rng.uniform(-0.5, 0.5, n),
        "target_rate": target_rate,
        # Peak rates 5-8x the mean (at most 40 spikes per bin): the best natural images come
        # close, optimised images can exceed them, nothing exceeds a plausible peak rate.
        "rate_max": np.minimum(target_rate * rng.uniform(5.0, 8.0, n), 40.0),
    }


def _calibrate(cls: type[GroundTruthV4], arrays: dict[str, np.ndarray], images: np.ndarray,
               rng: np.random.Generator) -> GroundTruthV4:
    """Fill in the data-dependent constants stage by stage on calibration images."""
    n, m = arrays["mix"].shape
    arrays.update({
        "norm_sigma": np.asarray(1.0), "channel_scale": np.ones(N_CHANNELS),
        "feat_threshold": np.zeros(m), "feat_scale": np.ones(m),
        "drive_mean": np.zeros(n), "drive_std": np.ones(n), "out_gain": np.ones(n),
    })
    x = torch.as_tensor(images, dtype=torch.float32)[:, None]
    chunks = x.split(CHUNK)
    with torch.no_grad():
        model = cls(arrays)
        # Normalisation constant: half the mean energy, so normalisation is strong for
        # high-contrast patches and weak for nearly blank ones.
        raw = [torch.cat(parts) for parts in zip(*(model.front_end(c) for c in chunks))]
        model.norm_sigma.fill_(0.5 * float(raw[0].mean()))
        channels = model.normalise(*raw)
        model.channel_scale.copy_(1.0 / channels.mean(dim=(0, 2, 3)).clamp_min(1e-6))
        channels = model.normalise(*raw)
        drive = torch.cat([model.feature_drive(c) for c in channels.split(CHUNK)], dim=2)
        # Threshold each feature at a random high quantile of its drive: sparse, AND-like.
        quantile = torch.as_tensor(rng.uniform(0.4, 0.7, m), dtype=torch.float32)
        ordered = drive.flatten(1).sort(dim=1).values
        rank = (quantile * (ordered.shape[1] - 1)).round().long()
        model.feat_threshold.copy_(ordered.gather(1, rank[:, None])[:, 0])
        maps = F.softplus(drive - model.feat_threshold.view(-1, 1, 1))
        model.feat_scale.copy_(1.0 / maps.std(dim=(1, 2)).clamp_min(1e-6))
        maps = model.feature_maps(drive)
        pooled = torch.cat([model.pooled(c) for c in maps.split(CHUNK, dim=2)])
        model.drive_mean.copy_(pooled.mean(0))
        model.drive_std.copy_(pooled.std(0).clamp_min(1e-6))
        target = torch.as_tensor(arrays["target_rate"], dtype=torch.float32)
        # The saturation makes the mean rate a monotone, concave function of the gain; these
        # multiplicative updates shrink the error ~5x each (1e-6 relative after 10).
        for _ in range(12):
            model.out_gain.mul_(target / model.rates(pooled).mean(0).clamp_min(1e-6))
    return cls.from_arrays(model.state_arrays())


# -------------------------------------------------------------------------------- datasets
def ground_truth_response(model: GroundTruthV4, images: torch.Tensor | np.ndarray,
                          session_neuron_index: torch.Tensor | np.ndarray | None = None
                          ) -> torch.Tensor:
    """Noiseless rates of ``model`` to ``images`` ((B, H, W) or (B, 1, H, W), pixel units),
    restricted to the columns ``session_neuron_index`` (e.g. a session's
    ``neuron_meta["ground_truth_index"]``) when given."""
    images = torch.as_tensor(images)
    if images.ndim == 3:
        images = images[:, None]
    device = model.v1_kernels.device
    rates = model(images.to(device=device, dtype=torch.float32))
    if session_neuron_index is None:
        return rates
    index = torch.as_tensor(session_neuron_index, dtype=torch.long, device=device)
    if index.ndim != 1 or (index.numel() and (index.min() < 0 or index.max() >= model.n_neurons)):
        raise ValueError("session_neuron_index must be 1-D with values in [0, n_neurons)")
    return rates[:, index]


def _tier_sizes(n: int, validation_fraction: float, test_fraction: float) -> tuple[int, int]:
    """(validation, test) image counts of a session of ``n`` images; no tier may be empty."""
    n_test = int(round(test_fraction * n))
    n_validation = int(round(validation_fraction * n))
    if n_test < 1 or n_validation < 1 or n - n_test - n_validation < 1:
        raise ValueError(f"{n} images per session leave an empty tier with validation_fraction="
                         f"{validation_fraction}, test_fraction={test_fraction}")
    return n_validation, n_test


def _split_tiers(n: int, validation_fraction: float, test_fraction: float,
                 rng: np.random.Generator) -> np.ndarray:
    n_validation, n_test = _tier_sizes(n, validation_fraction, test_fraction)
    tiers = np.full(n, "train", dtype="<U10")
    order = rng.permutation(n)
    tiers[order[:n_test]] = "test"
    tiers[order[n_test:n_test + n_validation]] = "validation"
    return tiers


def make_twin(n_sessions: int, neurons_per_session: int, images_per_session: int,
              image_size: int, seed: int, validation_fraction: float = 0.1,
              test_fraction: float = 0.1, test_repeats: int = 10
              ) -> tuple[list[SessionData], GroundTruthV4]:
    """Generate the synthetic V4 dataset and the ground truth that produced it.

    One :class:`GroundTruthV4` holds all ``n_sessions * neurons_per_session`` neurons (a
    shared V1 front end); session ``s`` records columns ``s * neurons_per_session ...``.
    Each session has its own natural-image crops and a random split into tiers. Train and
    validation images get one Poisson trial of the true rate; test images get
    ``test_repeats``. ``trials`` is ``(N, test_repeats, neurons)``: test images fill every
    repeat, other images hold their single trial in repeat 0 and NaN elsewhere, so
    ``responses == nanmean(trials, axis=1)`` for every image.
    """
    if n_sessions < 1 or neurons_per_session < 1:
        raise ValueError("n_sessions and neurons_per_session must be >= 1")
    if images_per_session < 3:
        raise ValueError("images_per_session must be >= 3 (one per tier)")
    if test_repeats < 1:
        raise ValueError(f"test_repeats must be >= 1, got {test_repeats}")
    if seed < 0:
        raise ValueError(f"seed must be >= 0, got {seed}")
    for name, value in (("validation_fraction", validation_fraction),
                        ("test_fraction", test_fraction)):
        if not 0.0 < value < 1.0:
            raise ValueError(f"{name} must be in (0, 1), got {value}")
    if validation_fraction + test_fraction >= 1.0:
        raise ValueError("validation_fraction + test_fraction must be < 1")
    _tier_sizes(images_per_session, validation_fraction, test_fraction)  # fail before work

    model = GroundTruthV4.generate(n_sessions * neurons_per_session, image_size, seed)
    # One pool split into sessions: every session sees different crops.
    pool = natural_image_pool(n_sessions * images_per_session, image_size, _subseed(seed, 2))
    sources = ", ".join(source_image_names())
    sessions = []
    for s in range(n_sessions):
        rng = np.random.default_rng(_subseed(seed, 100 + s))
        images = pool[s * images_per_session:(s + 1) * images_per_session]
        index = np.arange(s * neurons_per_session, (s + 1) * neurons_per_session)
        with torch.no_grad():
            rate = ground_truth_response(model, images, index).double().numpy()
        tiers = _split_tiers(images_per_session, validation_fraction, test_fraction, rng)
        trials = np.full((images_per_session, test_repeats, neurons_per_session), np.nan,
                         np.float32)
        trials[:, 0] = rng.poisson(rate)
        test = tiers == "test"
        trials[test, 1:] = rng.poisson(rate[test][:, None], size=(int(test.sum()),
                                       test_repeats - 1, neurons_per_session))
        responses = np.nanmean(trials, axis=1).astype(np.float32)
        sid = f"twin{s}"
        meta = {
            "ground_truth_index": index.astype(np.int64),
            "rf_x": model.rf_x[index].numpy().astype(np.float64),
            "rf_y": model.rf_y[index].numpy().astype(np.float64),
            "rf_size": model.rf_sigma[index].numpy().astype(np.float64),
            "preferred_orientation": model.preferred_orientation[index].copy(),
            "preferred_wavelength": model.preferred_wavelength[index].copy(),
            "selectivity": model.selectivity[index].copy(),
            "main_feature": model.main_feature[index].copy(),
            "target_rate": model.target_rate[index].copy(),
        }
        sessions.append(SessionData(
            session_id=sid,
            images=np.ascontiguousarray(images),
            image_ids=np.arange(images_per_session, dtype=np.int64),
            responses=responses,
            tiers=tiers,
            neuron_ids=np.asarray([f"{sid}-n{i:03d}" for i in range(neurons_per_session)]),
            trials=trials,
            neuron_meta=meta,
            attrs={
                "units": "spikes per bin (Poisson)",
                "spike_counts": 1,
                "animal": "synthetic",
                "provenance": (f"encoders.datasets.synthetic.make_twin(seed={seed}, "
                               f"n_sessions={n_sessions}, neurons_per_session="
                               f"{neurons_per_session}, images_per_session="
                               f"{images_per_session}, image_size={image_size}, "
                               f"validation_fraction={validation_fraction}, test_fraction="
                               f"{test_fraction}, test_repeats={test_repeats}); "
                               f"{GROUND_TRUTH_FORMAT} v{FORMAT_VERSION}; crops of: {sources}"),
                "rf_units": "pixels (x from left, y from top; rf_size = Gaussian sigma)",
                "orientation_units": "degrees counter-clockwise from horizontal stripes",
                "trials_layout": "test: all repeats; train/validation: repeat 0 only",
            },
        ))
    return sessions, model
