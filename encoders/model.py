"""EncodingModel: one shared core, one readout per session, Poisson loss, correlation metrics.

The core and readout are given as small config dicts ({"type": name, ...constructor args}), so a
checkpoint rebuilds itself with `EncodingModel.load_from_checkpoint(path)` alone: what depends on
the data (sessions, neuron ids, input shape, image transform) is taken from the DataModule at the
first `setup` and stored in the hyperparameters.
"""

from __future__ import annotations

import inspect
import math
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import torch.nn.functional as F
import xarray as xr
from torch import nn

from encoders.cores import StackedCore, TaskDrivenCore
from encoders.datasets.transforms import ImageTransform
from encoders.errors import EncodersError
from encoders.metrics import correlation, correlation_to_average, feve, oracle_correlation, poisson_loss, single_trial_correlation
from encoders.readouts import AttentionReadout, GaussianReadout

CORES: dict[str, type[nn.Module]] = {"stacked": StackedCore, "task_driven": TaskDrivenCore}
READOUTS: dict[str, type[nn.Module]] = {"gaussian": GaussianReadout, "attention": AttentionReadout}


class ConfigError(EncodersError, ValueError):
    """A model config names an unknown type or argument."""


def build_from_config(registry: dict[str, type[nn.Module]], config: dict, what: str, **given: Any) -> nn.Module:
    """Instantiate registry[config["type"]] with the config's arguments plus `given` (data-derived)."""
    config = dict(config)
    kind = config.pop("type", None)
    if kind not in registry:
        raise ConfigError(f"{what}.type must be one of {sorted(registry)}, got {kind!r}")
    cls = registry[kind]
    allowed = [p for p in inspect.signature(cls.__init__).parameters if p != "self"]
    unknown = sorted(set(config) - set(allowed))
    if unknown:
        settable = sorted(set(allowed) - set(given))
        raise ConfigError(f"{what}: unknown argument(s) {unknown} for {what} type {kind!r}; allowed: {settable}")
    clash = sorted(set(config) & set(given))
    if clash:
        raise ConfigError(f"{what}: {clash} are set from the data, not the config")
    return cls(**config, **given)


class EncodingModel(pl.LightningModule):
    """Core + per-session readouts predicting non-negative firing rates.

    Args:
        core: {"type": "stacked" | "task_driven", ...} constructor arguments of the core.
        readout: {"type": "gaussian" | "attention", ...} constructor arguments shared by all sessions.
        lr, weight_decay: AdamW.
        lr_factor, lr_patience, min_lr: ReduceLROnPlateau on the mean validation correlation.
        elu_offset: output nonlinearity ELU(y + offset) + 1.
        channels_last: run convolutions in channels-last memory layout (much faster on CPU for
            depthwise convolutions: measured 5.5x on 2 cores).
        sessions, input_shape, transform: filled from the DataModule on first setup; given on reload.
    """

    def __init__(
        self,
        core: dict,
        readout: dict,
        lr: float = 5e-3,
        weight_decay: float = 0.0,
        lr_factor: float = 0.3,
        lr_patience: int = 3,
        min_lr: float = 1e-5,
        elu_offset: float = 0.0,
        channels_last: bool = True,
        sessions: dict[str, dict] | None = None,
        input_shape: list[int] | None = None,
        transform: dict | None = None,
    ):
        super().__init__()
        self.save_hyperparameters()
        self.core: nn.Module | None = None
        self.readouts = nn.ModuleDict()
        self._outputs: dict[str, dict[str, list[torch.Tensor]]] = {}
        self.test_results: xr.Dataset | None = None
        if sessions is not None and input_shape is not None:
            self._build(sessions, tuple(input_shape))

    # ---- construction --------------------------------------------------------------------------
    def _build(self, sessions: dict[str, dict], input_shape: tuple[int, int, int]) -> None:
        core_config = dict(self.hparams.core)
        core_config.setdefault("input_channels", input_shape[0])
        self.core = build_from_config(CORES, core_config, "core")
        features = self.core.output_shape(input_shape)
        for session, info in sessions.items():
            mean = torch.tensor(info["mean_response"], dtype=torch.float32)
            readout = build_from_config(
                READOUTS, self.hparams.readout, "readout", in_shape=features, n_neurons=len(info["neuron_ids"]),
                mean_activity=mean,
            )
            with torch.no_grad():
                readout.bias -= self.hparams.elu_offset  # the readout's bias init assumes offset 0
            self.readouts[session] = readout
        if self.hparams.channels_last:
            self.to(memory_format=torch.channels_last)

    def setup(self, stage: str) -> None:
        if self.core is not None:
            return
        datamodule = self.trainer.datamodule if self.trainer is not None else None
        if datamodule is None:
            raise EncodersError("EncodingModel needs a DataModule on first setup (or sessions and input_shape)")
        datamodule.setup(stage)
        self.hparams.sessions = datamodule.session_info()
        self.hparams.input_shape = list(datamodule.input_shape())
        self.hparams.transform = datamodule.transform.state()
        self._build(self.hparams.sessions, tuple(self.hparams.input_shape))

    # ---- what other parts use --------------------------------------------------------------------
    @property
    def sessions(self) -> list[str]:
        return list(self.readouts.keys())

    def neuron_ids(self, session: str) -> list[str]:
        return list(self.hparams.sessions[session]["neuron_ids"])

    @property
    def input_shape(self) -> tuple[int, int, int]:
        """(C, H, W) of model-space images."""
        return tuple(self.hparams.input_shape)

    @property
    def image_transform(self) -> ImageTransform:
        return ImageTransform.from_state(self.hparams.transform)

    def forward(self, images: torch.Tensor, session: str, neurons: torch.Tensor | None = None) -> torch.Tensor:
        """Rates (B, neurons of `session`) for model-space images (B, C, H, W).

        With `neurons` (B,) column indices, only neuron `neurons[b]` is computed for image b and
        the result is (B,) — what batched MEIs need, at a fraction of the readout's cost.
        """
        if session not in self.readouts:
            raise KeyError(f"unknown session {session!r}; the model has {self.sessions}")
        if self.hparams.channels_last:
            images = images.contiguous(memory_format=torch.channels_last)
        y = self.readouts[session](self.core(images), neurons)
        return F.elu(y + self.hparams.elu_offset) + 1

    def regularizer(self, session: str) -> torch.Tensor:
        return self.core.regularizer() + self.readouts[session].regularizer()

    # ---- training --------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        session = batch["session"]
        rates = self(batch["images"], session)
        n_train = self.hparams.sessions[session]["n_train"]
        # scale so that a batch's loss estimates the loss of the whole session (neuralpredictors)
        scale = math.sqrt(n_train / rates.shape[0])
        poisson = poisson_loss(rates, batch["responses"])
        loss = scale * poisson + self.regularizer(session)
        self.log("train/poisson_loss", poisson / rates.numel(), batch_size=rates.shape[0])
        self.log("train/loss", loss, batch_size=rates.shape[0], prog_bar=False)
        return loss

    def configure_optimizers(self) -> dict:
        optimizer = torch.optim.AdamW(
            [p for p in self.parameters() if p.requires_grad], lr=self.hparams.lr, weight_decay=self.hparams.weight_decay
        )
        scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(
            optimizer, mode="max", factor=self.hparams.lr_factor, patience=self.hparams.lr_patience,
            min_lr=self.hparams.min_lr,
        )
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "monitor": "val/correlation"}}

    # ---- evaluation --------------------------------------------------------------------------------
    def _collect(self, batch: dict) -> None:
        session = batch["session"]
        rates = self(batch["images"], session)
        store = self._outputs.setdefault(session, {"rates": [], "responses": [], "trials": [], "index": []})
        store["rates"].append(rates.detach().float().cpu())
        store["responses"].append(batch["responses"].cpu())
        store["index"].append(batch["image_index"].cpu())
        if "trials" in batch:
            store["trials"].append(batch["trials"].cpu())
        self.log(f"{self._stage()}/poisson_loss", poisson_loss(rates, batch["responses"]) / rates.numel(),
                 batch_size=rates.shape[0], sync_dist=True)

    def _stage(self) -> str:
        return "test" if self.trainer is not None and self.trainer.testing else "val"

    def validation_step(self, batch: dict, batch_idx: int) -> None:
        self._collect(batch)

    def test_step(self, batch: dict, batch_idx: int) -> None:
        self._collect(batch)

    def predict_step(self, batch: dict, batch_idx: int) -> dict:
        return {"session": batch["session"], "image_index": batch["image_index"], "rates": self(batch["images"], batch["session"])}

    def on_validation_epoch_start(self) -> None:
        self._outputs = {}

    def on_test_epoch_start(self) -> None:
        self._outputs = {}

    def on_validation_epoch_end(self) -> None:
        self._log_epoch("val")

    def on_test_epoch_end(self) -> None:
        self.test_results = self._log_epoch("test")

    def _log_epoch(self, stage: str) -> xr.Dataset:
        """Per-neuron metrics for every session; logs per-session and mean values."""
        tables = []
        for session, store in self._outputs.items():
            rates = torch.cat(store["rates"])
            responses = torch.cat(store["responses"])
            table = {"correlation": correlation(rates, responses)}
            if store["trials"]:
                trials = torch.cat(store["trials"])
                has_repeats = (~torch.isnan(trials)).sum(1).amax(1) > 1  # images with >1 repeat
                if has_repeats.sum() > 2:
                    r, t = rates[has_repeats], trials[has_repeats]
                    table["single_trial_correlation"] = single_trial_correlation(r, t)
                    table["correlation_to_average"] = correlation_to_average(r, t)
                    table["feve"] = feve(r, t)
                    table["oracle_correlation"] = oracle_correlation(t)
            neurons = self.neuron_ids(session)
            data = {k: ("neuron", v.numpy().astype(np.float64)) for k, v in table.items()}
            tables.append(xr.Dataset(data, coords={"neuron_id": ("neuron", neurons), "session": ("neuron", [session] * len(neurons))}))
            for name, values in table.items():
                self.log(f"{stage}/{name}/{session}", float(np.nanmean(values.numpy())), sync_dist=True)
        if not tables:
            return xr.Dataset()
        results = xr.concat(tables, dim="neuron", join="outer", data_vars="all", coords="different", compat="equals")
        for name in results.data_vars:
            self.log(f"{stage}/{name}", float(np.nanmean(results[name].values)), sync_dist=True, prog_bar=name == "correlation")
        self._outputs = {}
        return results

    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # hyperparameters filled in setup must reach the checkpoint, whatever saved it
        checkpoint["hyper_parameters"] = dict(self.hparams)
