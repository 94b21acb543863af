"""Encoder: one shared core and one readout per session, as a plain `nn.Module` implementing the response-model contract.

Everything it needs to rebuild itself is in `spec()` (core and readout configs, the sessions'
neuron ids and mean responses, input shape, image transform), so a checkpoint alone restores it
(`encoders.checkpoints.load_encoder`) without Lightning or the data.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from encoders.cores import Core, StackedCore, TaskDrivenCore
from encoders.cores.output_shape import pixels_to_grid
from encoders.datasets.transforms import ImageTransform
from encoders.errors import EncodersError
from encoders.readouts import AttentionReadout, GaussianReadout, Readout

CORES: dict[str, type[Core]] = {"stacked": StackedCore, "task_driven": TaskDrivenCore}
READOUTS: dict[str, type[Readout]] = {"gaussian": GaussianReadout, "attention": AttentionReadout}

# arguments of readouts that come from the data (features of the core, neurons of the session, their
# receptive-field centres); `rf_centres` goes only to readouts whose constructor takes it
READOUT_FROM_DATA = frozenset({"in_shape", "n_neurons", "mean_activity", "rf_centres"})


class ConfigError(EncodersError, ValueError):
    """A model config names an unknown type or argument."""


def check_config(registry: dict[str, type[nn.Module]], config: dict, what: str, given: frozenset[str] = frozenset()) -> type[nn.Module]:
    """The class config["type"] names, after checking every other key is one of its arguments
    and none is one that `given` (the data) sets; ConfigError otherwise."""
    if not isinstance(config, dict):
        raise ConfigError(f"{what} must be a mapping with a 'type' key, got {config!r}")
    kind = config.get("type")
    if kind not in registry:
        raise ConfigError(f"{what}.type must be one of {sorted(registry)}, got {kind!r}")
    cls = registry[kind]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    keys = set(config) - {"type"}
    unknown = sorted(keys - set(allowed))
    if unknown:
        settable = sorted(set(allowed) - set(given))
        raise ConfigError(f"{what}: unknown argument(s) {unknown} for {what} type {kind!r}; allowed: {settable}")
    clash = sorted(keys & set(given))
    if clash:
        raise ConfigError(f"{what}: {clash} are set from the data, not the config")
    check = getattr(cls, "check_arguments", None)
    if check is not None:  # values out of range, before anything is built or written
        try:
            check(**{k: v for k, v in config.items() if k != "type"})
        except (TypeError, ValueError) as error:
            raise ConfigError(f"{what}: {error}") from None
    return cls


def build_from_config(registry: dict[str, type[nn.Module]], config: dict, what: str, **given: Any) -> nn.Module:
    """Instantiate registry[config["type"]] with the config's arguments plus `given` (data-derived)."""
    cls = check_config(registry, config, what, frozenset(given))
    arguments = {k: v for k, v in config.items() if k != "type"}
    try:
        return cls(**arguments, **given)
    except (TypeError, ValueError) as error:  # a value out of range: say which part of the model
        raise ConfigError(f"{what}: {error}") from None


class Encoder(nn.Module):
    """Core + per-session readouts predicting non-negative rates: ELU(readout(core(x)) + offset) + 1.

    Args:
        core: {"type": "stacked" | "task_driven", ...} constructor arguments of the core.
        readout: {"type": "gaussian" | "attention", ...} constructor arguments shared by all sessions.
        sessions: per session {"neuron_ids": [...], "mean_response": [...], "n_train": int} (from the data),
            and "rf_centre": [[x, y], ...] receptive-field centres in input pixels where the data gave them
            (older checkpoints have none).
        input_shape: (C, H, W) of model-space images.
        transform: the `ImageTransform.state()` that maps stored pixels to model space.
        elu_offset: output nonlinearity ELU(y + offset) + 1.
        channels_last: run convolutions in channels-last memory layout (faster on CPU for depthwise convolutions).
    """

    def __init__(
        self, core: dict, readout: dict, sessions: dict[str, dict], input_shape: tuple[int, int, int] | list[int],
        transform: dict, elu_offset: float = 0.0, channels_last: bool = True,
    ):
        super().__init__()
        self._spec = {
            "core": dict(core), "readout": dict(readout), "sessions": sessions, "input_shape": [int(s) for s in input_shape],
            "transform": transform, "elu_offset": float(elu_offset), "channels_last": bool(channels_last),
        }
        core_config = dict(core)
        core_config.setdefault("input_channels", int(input_shape[0]))
        self.core = build_from_config(CORES, core_config, "core")
        feature_shape = self.core.output_shape(tuple(int(s) for s in input_shape))
        readout_class = check_config(READOUTS, readout, "readout", READOUT_FROM_DATA)
        takes_centres = "rf_centres" in inspect.signature(readout_class.__init__).parameters
        self.readouts = nn.ModuleDict()
        for session, info in sessions.items():
            mean = torch.tensor(info["mean_response"], dtype=torch.float32)
            given: dict[str, Any] = {}
            if takes_centres:  # on the readout's grid; None where the data gave no centres
                centres = info.get("rf_centre")
                given["rf_centres"] = None if centres is None else pixels_to_grid(centres, input_shape[1:], feature_shape[1:])
            module = build_from_config(
                READOUTS, readout, "readout", in_shape=feature_shape, n_neurons=len(info["neuron_ids"]), mean_activity=mean,
                **given,
            )
            with torch.no_grad():
                module.bias -= elu_offset  # the readout's bias init assumes offset 0
            self.readouts[session] = module
        first = next(iter(self.readouts.values()), None)
        for module in list(self.readouts.values())[1:]:
            module.share_with(first)
        self.elu_offset = float(elu_offset)
        self.channels_last = bool(channels_last)
        self._transform = ImageTransform.from_state(transform)
        if self.channels_last:
            self.to(memory_format=torch.channels_last)

    def spec(self) -> dict:
        """The constructor arguments (plain JSON-able values): `Encoder(**spec)` rebuilds the architecture."""
        return dict(self._spec)

    # ---- the response-model contract ---------------------------------------------------------------
    @property
    def sessions(self) -> list[str]:
        return list(self.readouts.keys())

    def neuron_ids(self, session: str) -> list[str]:
        return list(self._spec["sessions"][session]["neuron_ids"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        return tuple(self._spec["input_shape"])

    @property
    def image_transform(self) -> ImageTransform:
        return self._transform

    def core_features(self, images: torch.Tensor) -> torch.Tensor:
        """The core's output (B, C, h, w) for model-space images (B, *input_shape)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.core(images)

    def layer_features(self, images: torch.Tensor) -> list[torch.Tensor]:
        """Every core layer's output for model-space images (for similarity diagnostics)."""
        if self.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        return self.core.layer_features(images)

    def forward(self, images: torch.Tensor, session: str, neurons: torch.Tensor | None = None) -> torch.Tensor:
        """Rates (B, neurons of `session`) for model-space images (B, C, H, W).

        With `neurons` (B,) column indices, only neuron `neurons[b]` is computed for image b and
        the result is (B,) — what batched MEIs need, at a fraction of the readout's cost.
        """
        if session not in self.readouts:
            raise KeyError(f"unknown session {session!r}; the model has {self.sessions}")
        y = self.readouts[session](self.core_features(images), neurons)
        return F.elu(y + self.elu_offset) + 1

    def regularizer(self, session: str) -> torch.Tensor:
        return self.core.regularizer() + self.readouts[session].regularizer()
