"""The synthetic V4 twin's ground-truth neurons: :class:`GroundTruthV4` and its building blocks.

The ground truth is a fixed, differentiable, nonlinear model of a V4 population built from a
seed (drawing and calibration live in :mod:`encoders.twin.generation`):

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
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

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
        from encoders.twin.generation import generate_ground_truth  # generation builds on this module

        return generate_ground_truth(cls, n_neurons, image_size, seed, n_features, n_calibration_images)

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


def _energy(linear: torch.Tensor) -> torch.Tensor:
    """Complex-cell energy of interleaved (even, odd) channels."""
    return torch.sqrt(linear[:, 0::2] ** 2 + linear[:, 1::2] ** 2 + ENERGY_EPS)


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
