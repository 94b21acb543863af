"""Data-driven convolutional core (Stacked2dCore of neuralpredictors, as used by Pierzchlewicz et al. 2023)."""

from __future__ import annotations

import inspect

import torch
from torch import Tensor, nn

from encoders.cores.base import Core
from encoders.cores.regularizers import laplace_l2_normalised


class SqueezeExcitation(nn.Module):
    """Channel gating: global average pool -> bottleneck MLP -> sigmoid -> rescale channels."""

    def __init__(self, channels: int, reduction: int) -> None:
        super().__init__()
        self.fc1 = nn.Linear(channels, channels // reduction)
        self.fc2 = nn.Linear(channels // reduction, channels)

    def forward(self, x: Tensor) -> Tensor:
        gate = torch.sigmoid(self.fc2(torch.relu(self.fc1(x.mean(dim=(2, 3))))))
        return x * gate[:, :, None, None]


def _check_positive_int(name: str, value: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be a positive integer, got {value!r}")


class StackedCore(Core):
    """Stack of conv -> BatchNorm -> ELU layers.

    Layer 0 is a large-kernel convolution (unpadded by default, so the output shrinks by
    ``input_kernel - 1``). Layers 1..layers-1 are either depth-separable (1x1 conv,
    depthwise kxk conv, 1x1 conv) or plain kxk convolutions, optionally followed by a
    squeeze-excitation block. The output is the last layer's activation.

    Convolutions have no bias: every one is followed by BatchNorm, whose shift plays that role.
    """

    def __init__(
        self,
        input_channels: int = 1,
        hidden_channels: int = 64,
        layers: int = 4,
        input_kernel: int = 9,
        hidden_kernel: int = 7,
        hidden_padding: int | None = None,
        pad_input: bool = False,
        depth_separable: bool = True,
        batch_norm_momentum: float = 0.1,
        se_reduction: int | None = None,
        gamma_input: float = 6.3831,
        gamma_hidden: float = 0.0,
    ) -> None:
        """
        Args:
            input_channels: channels of the stimulus (1 for grayscale).
            hidden_channels: channels of every layer, and of the output.
            layers: total number of layers including the input layer.
            input_kernel: kernel size of the first convolution.
            hidden_kernel: spatial kernel size of the hidden convolutions.
            hidden_padding: padding of the hidden convolutions; None = hidden_kernel // 2
                (keeps the size for odd kernels).
            pad_input: pad the first convolution by input_kernel // 2 instead of not at all.
            depth_separable: use 1x1 / depthwise kxk / 1x1 hidden layers instead of plain kxk.
            batch_norm_momentum: BatchNorm2d momentum (PyTorch convention: weight of the new batch).
            se_reduction: if set, add a squeeze-excitation block with this channel reduction
                after every hidden layer.
            gamma_input: weight of the normalised Laplace smoothness penalty on the first filters
                (default from the Sensorium 2022 baseline).
            gamma_hidden: weight of the group-sparsity penalty on the hidden spatial kernels.
        """
        super().__init__()
        self.check_arguments(
            input_channels=input_channels, hidden_channels=hidden_channels, layers=layers, input_kernel=input_kernel,
            hidden_kernel=hidden_kernel, hidden_padding=hidden_padding, batch_norm_momentum=batch_norm_momentum,
            se_reduction=se_reduction, gamma_input=gamma_input, gamma_hidden=gamma_hidden,
        )

        self.out_channels: int = hidden_channels
        self.gamma_input = gamma_input
        self.gamma_hidden = gamma_hidden
        padding = hidden_kernel // 2 if hidden_padding is None else hidden_padding

        input_conv = nn.Conv2d(
            input_channels, hidden_channels, input_kernel, padding=input_kernel // 2 if pad_input else 0, bias=False
        )
        self.layers = nn.ModuleList(
            [nn.Sequential(input_conv, nn.BatchNorm2d(hidden_channels, momentum=batch_norm_momentum), nn.ELU())]
        )
        # Position of the kxk conv inside each hidden block, the target of the group-sparsity penalty.
        self._spatial_index = 1 if depth_separable else 0
        for _ in range(layers - 1):
            if depth_separable:
                convs: list[nn.Module] = [
                    nn.Conv2d(hidden_channels, hidden_channels, 1, bias=False),
                    nn.Conv2d(
                        hidden_channels, hidden_channels, hidden_kernel, padding=padding, groups=hidden_channels, bias=False
                    ),
                    nn.Conv2d(hidden_channels, hidden_channels, 1, bias=False),
                ]
            else:
                convs = [nn.Conv2d(hidden_channels, hidden_channels, hidden_kernel, padding=padding, bias=False)]
            block = [*convs, nn.BatchNorm2d(hidden_channels, momentum=batch_norm_momentum), nn.ELU()]
            if se_reduction is not None:
                block.append(SqueezeExcitation(hidden_channels, se_reduction))
            self.layers.append(nn.Sequential(*block))

        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.xavier_normal_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    @classmethod
    def check_arguments(cls, **arguments: object) -> None:
        """ValueError naming the first constructor argument out of range, without building anything
        (so a config is checked before a run starts; the constructor runs the same checks)."""
        bound = inspect.signature(cls.__init__).bind(None, **arguments)
        bound.apply_defaults()
        a = bound.arguments
        for name in ("input_channels", "hidden_channels", "layers", "input_kernel", "hidden_kernel"):
            _check_positive_int(name, a[name])
        padding = a["hidden_padding"]
        if padding is not None and (isinstance(padding, bool) or not isinstance(padding, int) or padding < 0):
            raise ValueError(f"hidden_padding must be None or a non-negative integer, got {padding!r}")
        if not 0.0 < a["batch_norm_momentum"] <= 1.0:
            raise ValueError(f"batch_norm_momentum must be in (0, 1], got {a['batch_norm_momentum']}")
        if a["se_reduction"] is not None:
            _check_positive_int("se_reduction", a["se_reduction"])
            if a["se_reduction"] > a["hidden_channels"]:
                raise ValueError(
                    f"se_reduction ({a['se_reduction']}) must not exceed hidden_channels ({a['hidden_channels']})"
                )
        if not (a["gamma_input"] >= 0 and a["gamma_hidden"] >= 0):
            raise ValueError(f"gamma_input and gamma_hidden must be >= 0, got {a['gamma_input']}, {a['gamma_hidden']}")

    @property
    def input_conv(self) -> nn.Conv2d:
        """The first (large-kernel) convolution."""
        return self.layers[0][0]

    @property
    def spatial_convs(self) -> list[nn.Conv2d]:
        """The kxk convolutions of the hidden layers (depthwise ones when depth-separable)."""
        return [layer[self._spatial_index] for layer in self.layers[1:]]

    def forward(self, x: Tensor) -> Tensor:
        """Map stimuli (B, C_in, H, W) to features (B, out_channels, h, w)."""
        for layer in self.layers:
            x = layer(x)
        return x

    def layer_features(self, x: Tensor) -> list[Tensor]:
        """Return every layer's output; the last entry equals ``forward(x)``."""
        features = []
        for layer in self.layers:
            x = layer(x)
            features.append(x)
        return features

    def laplace_penalty(self) -> Tensor:
        """Normalised Laplace smoothness of the first layer's filters."""
        return laplace_l2_normalised(self.input_conv.weight)

    def group_sparsity(self) -> Tensor:
        """Mean L2 norm of the hidden spatial kernels (one group per (out, in) kernel), averaged over layers.

        Encourages whole kernels to switch off. Zero when there are no hidden layers.
        """
        convs = self.spatial_convs
        if not convs:
            return self.input_conv.weight.new_zeros(())
        # The epsilon keeps the gradient finite for kernels driven exactly to zero.
        norms = [(conv.weight.pow(2).sum(dim=(2, 3)) + 1e-12).sqrt().mean() for conv in convs]
        return torch.stack(norms).mean()

    def regularizer(self) -> Tensor:
        """Differentiable penalty: gamma_input * Laplace smoothness + gamma_hidden * group sparsity."""
        # Switched-off terms are skipped, not multiplied by 0, so they cost nothing and add no graph.
        penalty = self.input_conv.weight.new_zeros(())
        if self.gamma_input > 0:
            penalty = penalty + self.gamma_input * self.laplace_penalty()
        if self.gamma_hidden > 0:
            penalty = penalty + self.gamma_hidden * self.group_sparsity()
        return penalty

