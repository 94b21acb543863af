"""Gaussian readout: each neuron reads the core features at one learned position (FullGaussian2d)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from encoders.readouts.base import Readout
from encoders.readouts.common import check_readout_args, initial_bias

GAUSS_TYPES = ("isotropic", "uncorrelated", "full")
INIT_MU = ("random", "data")


class GaussianReadout(Readout):
    """Per-neuron Gaussian read-out position, feature weights and bias.

    Positions live in grid_sample coordinates [-1, 1]^2 (x = width, y = height; with
    ``align_corners=True`` -1 and 1 are the centres of the border pixels). In training, a
    position is sampled per image and neuron from N(mu, Sigma) and clamped to [-1, 1]; in
    eval mode mu is used. Features are interpolated bilinearly at that position.
    """

    def __init__(
        self,
        in_shape: tuple[int, int, int],
        n_neurons: int,
        mean_activity: Tensor | None = None,
        gauss_type: str = "full",
        init_mu_range: float = 0.3,
        init_sigma: float = 0.1,
        gamma_features: float = 0.0076,
        init_mu: str = "random",
        rf_centres: Tensor | Sequence | None = None,
    ) -> None:
        """
        Args:
            in_shape: (C, h, w) of the core output.
            n_neurons: neurons of this recording session.
            mean_activity: (n_neurons,) mean training response, used to initialise the bias
                (see ``initial_bias``).
            gauss_type: "isotropic" (one sigma), "uncorrelated" (sigma_x, sigma_y) or "full"
                (2x2 matrix L with position = mu + L @ noise).
            init_mu_range: mu is initialised uniformly in [-init_mu_range, init_mu_range]^2
                (with init_mu "random").
            init_sigma: sigma initial value (for "full", entries uniform in ±init_sigma,
                as in neuralpredictors).
            gamma_features: weight of the L1 penalty, summed over all feature weights
                (the Sensorium 2022 baseline value).
            init_mu: "random" (uniform in ±init_mu_range) or "data": each neuron's mu starts at its
                receptive-field centre estimated from the training data (`rf_centres`), clipped
                into [-1, 1]. The uniform draw is made either way, so the random stream (and every
                later initialisation) is the same for both.
            rf_centres: (n_neurons, 2) receptive-field centres as (x, y) in this readout's grid
                coordinates [-1, 1] (set from the data: the Encoder maps the session's centres
                from input pixels onto the core's feature grid); needed by init_mu "data" only.
        """
        super().__init__()
        check_readout_args(in_shape, n_neurons)
        if gauss_type not in GAUSS_TYPES:
            raise ValueError(f"gauss_type must be one of {GAUSS_TYPES}, got {gauss_type!r}")
        if not 0.0 < init_mu_range <= 1.0:
            raise ValueError(f"init_mu_range must be in (0, 1], got {init_mu_range}")
        if init_sigma <= 0:
            raise ValueError(f"init_sigma must be > 0, got {init_sigma}")
        if gamma_features < 0:
            raise ValueError(f"gamma_features must be >= 0, got {gamma_features}")
        if init_mu not in INIT_MU:
            raise ValueError(f"init_mu must be one of {INIT_MU}, got {init_mu!r}")
        if init_mu == "data" and rf_centres is None:
            raise ValueError(
                "init_mu 'data' needs receptive-field centres from the data (the sessions' 'rf_centre', which the "
                "data module computes when it holds the images in memory); use init_mu 'random' or data.in_memory: true"
            )
        channels = in_shape[0]
        self.in_shape = tuple(in_shape)
        self.n_neurons = n_neurons
        self.gauss_type = gauss_type
        self.gamma_features = gamma_features

        self.mu = nn.Parameter(torch.empty(n_neurons, 2).uniform_(-init_mu_range, init_mu_range))
        if init_mu == "data":
            centres = torch.as_tensor(rf_centres, dtype=torch.float32)
            if centres.shape != (n_neurons, 2) or not torch.isfinite(centres).all():
                raise ValueError(f"rf_centres must be {n_neurons} finite (x, y) pairs, got shape {tuple(centres.shape)}")
            with torch.no_grad():
                self.mu.copy_(centres.clamp(-1.0, 1.0))
        if gauss_type == "full":
            self.sigma = nn.Parameter(torch.empty(n_neurons, 2, 2).uniform_(-init_sigma, init_sigma))
        else:
            self.sigma = nn.Parameter(torch.full((n_neurons, 1 if gauss_type == "isotropic" else 2), init_sigma))
        # Equal weights whose sum is 1, as in neuralpredictors.
        self.features = nn.Parameter(torch.full((n_neurons, channels), 1.0 / channels))
        self.bias = nn.Parameter(initial_bias(mean_activity, n_neurons))

    def positions(self) -> Tensor:
        """Mean read-out positions (n_neurons, 2) as (x, y) in [-1, 1], detached, for plotting."""
        return self.mu.detach().clamp(-1.0, 1.0)

    def sample_grid(self, batch_size: int, sample: bool) -> Tensor:
        """Read-out positions of shape (batch_size, n_neurons, 1, 2): sampled if ``sample`` else mu."""
        # Keep mu in the valid range in place (as neuralpredictors does); clamping only the
        # output would zero its gradient and strand neurons outside the image.
        with torch.no_grad():
            self.mu.clamp_(-1.0, 1.0)
        mu = self.mu[None, :, None, :]
        if not sample:
            return mu.expand(batch_size, -1, -1, -1)
        noise = torch.randn(batch_size, self.n_neurons, 1, 2, dtype=self.mu.dtype, device=self.mu.device)
        if self.gauss_type == "full":
            offset = torch.einsum("ncd,bnid->bnic", self.sigma, noise)
        else:
            offset = noise * self.sigma[None, :, None, :]
        return (mu + offset).clamp(-1.0, 1.0)

    def forward(self, features: Tensor, neurons: Tensor | None = None) -> Tensor:
        """Map core features (B, C, h, w) to pre-nonlinearity responses (B, n_neurons).

        With `neurons` (B,) long, image b is read out for neuron `neurons[b]` only and the result
        is (B,): the paired mode that lets one batch optimise a different neuron per image.
        """
        # Positions are in normalised coordinates, so only the channel count must match.
        if features.dim() != 4 or features.shape[1] != self.in_shape[0]:
            raise ValueError(f"expected features (B, {self.in_shape[0]}, h, w), got shape {tuple(features.shape)}")
        grid = self.sample_grid(features.shape[0], sample=self.training)
        if neurons is None:
            sampled = F.grid_sample(features, grid, mode="bilinear", align_corners=True)  # (B, C, n, 1)
            return torch.einsum("bcn,nc->bn", sampled[..., 0], self.features) + self.bias
        rows = torch.arange(features.shape[0], device=features.device)
        grid = grid[rows, neurons][:, None]  # (B, 1, 1, 2)
        sampled = F.grid_sample(features, grid, mode="bilinear", align_corners=True)[:, :, 0, 0]  # (B, C)
        return (sampled * self.features[neurons]).sum(1) + self.bias[neurons]

    def locations(self, core_features: Tensor | None = None) -> Tensor:
        """Mean read-out positions as (x, y) feature-grid cell indices, (n_neurons, 2); needs no images."""
        _, h, w = self.in_shape
        xy = self.positions()  # align_corners=True: -1 and 1 are the border cells' centres
        return (xy + 1) / 2 * torch.tensor([w - 1, h - 1], dtype=xy.dtype, device=xy.device)

    def spatial_maps(self, core_features: Tensor) -> Tensor:
        """The bilinear weights of each neuron's mean position, (B, n_neurons, h, w) (the same for every image)."""
        _, h, w = self.in_shape
        xy = self.locations()
        maps = torch.zeros(self.n_neurons, h, w, dtype=xy.dtype, device=xy.device)
        low = xy.floor().long()
        frac = xy - low
        rows = torch.arange(self.n_neurons, device=xy.device)
        for dx in (0, 1):
            for dy in (0, 1):
                weight = (frac[:, 0] if dx else 1 - frac[:, 0]) * (frac[:, 1] if dy else 1 - frac[:, 1])
                x, y = (low[:, 0] + dx).clamp(0, w - 1), (low[:, 1] + dy).clamp(0, h - 1)
                maps.index_put_((rows, y, x), weight, accumulate=True)
        return maps[None].expand(core_features.shape[0], -1, -1, -1)

    def regularizer(self) -> Tensor:
        """gamma_features times the L1 norm (sum of absolute values) of the feature weights."""
        return self.gamma_features * self.features.abs().sum()
