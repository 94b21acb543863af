"""Task-driven core: a torchvision ResNet truncated after an intermediate layer."""

from __future__ import annotations

from collections import OrderedDict
from pathlib import Path

import torch
from torch import Tensor, nn

from encoders.cores.base import Core

_INSTALL_HINT = (
    "TaskDrivenCore needs the optional torchvision dependency: pip install 'encoders[torchvision]' "
    "(use a torchvision build that matches the installed torch version and its CPU/CUDA variant)."
)
# Top-level ResNet children that keep a spatial map; avgpool and fc do not.
_SPATIAL_CHILDREN = ("conv1", "bn1", "relu", "maxpool", "layer1", "layer2", "layer3", "layer4")


def _import_torchvision_models():  # noqa: ANN202 - the module type is only known when torchvision exists
    # Imported lazily so the rest of the package works without the optional extra.
    try:
        import torchvision.models as models
    except ImportError as error:
        raise ImportError(_INSTALL_HINT) from error
    except RuntimeError as error:
        # A torchvision built for another torch fails while registering its C++ operators.
        raise ImportError(f"torchvision is installed but failed to import ({error}). {_INSTALL_HINT}") from error
    return models


def _valid_layer_names(resnet: nn.Module) -> list[str]:
    names = []
    for name in _SPATIAL_CHILDREN:
        names.append(name)
        child = getattr(resnet, name)
        if isinstance(child, nn.Sequential):
            names.extend(f"{name}.{i}" for i in range(len(child)))
    return names


def _truncate(resnet: nn.Module, layer: str) -> nn.Sequential:
    """Keep the ResNet's modules up to and including ``layer``; names stay those of the full model."""
    valid = _valid_layer_names(resnet)
    if layer not in valid:
        raise ValueError(f"unknown ResNet layer {layer!r}; choose one of {valid}")
    top, _, block = layer.partition(".")
    kept: OrderedDict[str, nn.Module] = OrderedDict()
    for name in _SPATIAL_CHILDREN:
        child = getattr(resnet, name)
        if name == top and block:
            kept[name] = child[: int(block) + 1]
        else:
            kept[name] = child
        if name == top:
            break
    return nn.Sequential(kept)


class TaskDrivenCore(Core):
    """ImageNet ResNet features up to ``layer``, followed by a trainable BatchNorm2d and ReLU.

    With ``fine_tune=False`` the ResNet is frozen: its parameters do not require grad and it
    stays in eval mode even when the core is put in train mode, so its BatchNorm running
    statistics are never updated by neural data. Stimuli are passed as they are (no ImageNet
    normalisation is applied here).
    """

    def __init__(
        self,
        model_name: str = "resnet50",
        layer: str = "layer3.0",
        input_channels: int = 1,
        fine_tune: bool = False,
        weights_path: str | None = None,
        batch_norm_momentum: float = 0.1,
    ) -> None:
        """
        Args:
            model_name: a ResNet constructor in ``torchvision.models`` (resnet18, resnet50, ...).
            layer: last kept module, a top-level name (``"layer2"``) or a block (``"layer3.0"``).
            input_channels: 1 (grayscale, repeated to RGB) or 3.
            fine_tune: train the ResNet too instead of keeping it frozen.
            weights_path: local file with the full ResNet's state_dict (saved with ``torch.save``).
                None gives random initialisation, which is only meant for tests.
            batch_norm_momentum: momentum of the trainable output BatchNorm2d.
        """
        super().__init__()
        self.check_arguments(model_name=model_name, layer=layer, input_channels=input_channels,
                             weights_path=weights_path, batch_norm_momentum=batch_norm_momentum)
        models = _import_torchvision_models()
        if not model_name.startswith("resnet") or not hasattr(models, model_name):
            raise ValueError(f"model_name must name a torchvision ResNet (e.g. 'resnet50'), got {model_name!r}")
        resnet = getattr(models, model_name)(weights=None)
        if weights_path is not None:
            state_dict = torch.load(weights_path, map_location="cpu", weights_only=True)
            resnet.load_state_dict(state_dict)

        self.input_channels = input_channels
        self.fine_tune = fine_tune
        self.resnet = _truncate(resnet, layer)
        for param in self.resnet.parameters():
            param.requires_grad_(fine_tune)

        was_training = self.resnet.training
        self.resnet.eval()
        with torch.no_grad():
            channels = self.resnet(torch.zeros(1, 3, 64, 64)).shape[1]
        self.resnet.train(was_training)
        self.out_channels: int = int(channels)
        self.head = nn.Sequential(nn.BatchNorm2d(self.out_channels, momentum=batch_norm_momentum), nn.ReLU())
        self.train(self.training)

    @staticmethod
    def check_arguments(
        model_name: str = "resnet50", layer: str = "layer3.0", input_channels: int = 1, fine_tune: bool = False,
        weights_path: str | None = None, batch_norm_momentum: float = 0.1,
    ) -> None:
        """ValueError naming the first constructor argument out of range, without importing torchvision
        or reading weights (so a config is checked before a run starts; the constructor runs it too)."""
        if input_channels not in (1, 3):
            raise ValueError(f"input_channels must be 1 (grayscale) or 3 (RGB), got {input_channels!r}")
        if not 0.0 < batch_norm_momentum <= 1.0:
            raise ValueError(f"batch_norm_momentum must be in (0, 1], got {batch_norm_momentum}")
        if not isinstance(model_name, str) or not model_name.startswith("resnet"):
            raise ValueError(f"model_name must name a torchvision ResNet (e.g. 'resnet50'), got {model_name!r}")
        if weights_path is not None and not Path(weights_path).is_file():
            raise ValueError(f"weights_path {weights_path}: file not found")

    def train(self, mode: bool = True) -> TaskDrivenCore:
        """Set train/eval mode; a frozen ResNet always stays in eval mode."""
        super().train(mode)
        if not self.fine_tune:
            self.resnet.eval()
        return self

    def _to_rgb(self, x: Tensor) -> Tensor:
        if x.shape[1] != self.input_channels:
            raise ValueError(f"expected {self.input_channels} input channels, got {x.shape[1]}")
        return x.expand(-1, 3, -1, -1) if self.input_channels == 1 else x

    def forward(self, x: Tensor) -> Tensor:
        """Map stimuli (B, input_channels, H, W) to features (B, out_channels, h, w)."""
        return self.head(self.resnet(self._to_rgb(x)))

    def layer_features(self, x: Tensor) -> list[Tensor]:
        """Outputs of the stem (after maxpool, if kept), of every kept residual block, and of the head.

        Stem modules before maxpool are not listed separately; if the ResNet is cut inside the
        stem, its last output is listed instead. The last entry equals ``forward(x)``.
        """
        x = self._to_rgb(x)
        features = []
        for name, module in self.resnet.named_children():
            if isinstance(module, nn.Sequential):
                for block in module:
                    x = block(x)
                    features.append(x)
            else:
                x = module(x)
                if name == "maxpool":
                    features.append(x)
        if not features:
            features.append(x)
        features.append(self.head(x))
        return features

    def regularizer(self) -> Tensor:
        """No penalty: returns a zero scalar on the core's device."""
        return self.head[0].weight.new_zeros(())

