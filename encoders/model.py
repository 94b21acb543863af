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
from pytorch_lightning.trainer.states import TrainerFn
from torch import nn

from encoders import rng
from encoders.cores import StackedCore, TaskDrivenCore
from encoders.datasets.transforms import ImageTransform
from encoders.errors import EncodersError
from encoders.metrics import correlation, correlation_to_average, feve, oracle_correlation, poisson_loss, single_trial_correlation
from encoders.readouts import AttentionReadout, GaussianReadout

CORES: dict[str, type[nn.Module]] = {"stacked": StackedCore, "task_driven": TaskDrivenCore}
READOUTS: dict[str, type[nn.Module]] = {"gaussian": GaussianReadout, "attention": AttentionReadout}


class ConfigError(EncodersError, ValueError):
    """A model config names an unknown type or argument."""


# arguments of readouts that come from the data (features of the core, neurons of the session)
READOUT_FROM_DATA = frozenset({"in_shape", "n_neurons", "mean_activity"})


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
    return cls


def build_from_config(registry: dict[str, type[nn.Module]], config: dict, what: str, **given: Any) -> nn.Module:
    """Instantiate registry[config["type"]] with the config's arguments plus `given` (data-derived)."""
    cls = check_config(registry, config, what, frozenset(given))
    arguments = {k: v for k, v in config.items() if k != "type"}
    return cls(**arguments, **given)


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
        # a misspelt option fails here, before a trainer starts or writes anything
        check_config(CORES, core, "core")
        check_config(READOUTS, readout, "readout", READOUT_FROM_DATA)
        self.save_hyperparameters()
        self._rng_to_restore: dict | None = None
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
        if self.core is None:
            datamodule = self.trainer.datamodule if self._trainer is not None else None
            if datamodule is None:
                raise EncodersError("EncodingModel needs a DataModule on first setup (or sessions and input_shape)")
            datamodule.setup(stage)
            self.hparams.sessions = datamodule.session_info()
            self.hparams.input_shape = list(datamodule.input_shape())
            self.hparams.transform = datamodule.transform.state()
            self._build(self.hparams.sessions, tuple(self.hparams.input_shape))
        self._allow_unused_readouts()

    def _allow_unused_readouts(self) -> None:
        """Under DDP, let a step leave other sessions' readouts without gradients.

        Each batch holds one session, so each step uses one readout and DDP, which by default
        expects every parameter to receive a gradient, would fail on the second step. Called
        from `setup`, which Lightning runs before it wraps the model in DistributedDataParallel.
        """
        from pytorch_lightning.strategies import DDPStrategy

        strategy = self.trainer.strategy if self._trainer is not None else None
        if not isinstance(strategy, DDPStrategy):
            return
        options = strategy._ddp_kwargs  # no public setter; these go to DistributedDataParallel(...)
        if options.get("find_unused_parameters") is False and len(self.readouts) > 1:
            raise ConfigError(
                "trainer.strategy: DDP needs find_unused_parameters=True here (each step trains one session's "
                "readout); use strategy 'ddp' or 'ddp_find_unused_parameters_true'"
            )
        options.setdefault("find_unused_parameters", True)

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

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        """Lightning's epoch-end step is replaced by `_step_plateau` right after each validation.

        Lightning steps the scheduler after the checkpoint of that epoch was written and skips the
        step of the epoch a fit resumes in, so a resumed run's plateau counter would lag one epoch
        behind an uninterrupted run's. Stepping during validation puts the step inside the checkpoint.
        """

    def _step_plateau(self, value: float) -> None:
        trainer = self.trainer
        if trainer.sanity_checking or trainer.state.fn != TrainerFn.FITTING:
            return
        scheduler = self.lr_schedulers()
        if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
            scheduler.step(value)

    # ---- evaluation --------------------------------------------------------------------------------
    def _collect(self, batch: dict) -> None:
        session = batch["session"]
        rates = self(batch["images"], session)
        store = self._outputs.setdefault(session, {"rates": [], "responses": [], "trials": [], "index": []})
        store["rates"].append(rates.detach().float().cpu())
        store["responses"].append(batch["responses"].float().cpu())
        store["index"].append(batch["image_index"].long().cpu())
        if "trials" in batch:
            store["trials"].append(batch["trials"].float().cpu())

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
        results = self._log_epoch("val")
        if "correlation" in results:
            self._step_plateau(float(np.nanmean(results["correlation"].values)))

    def on_test_epoch_end(self) -> None:
        self.test_results = self._log_epoch("test")

    def _gathered(self, session: str) -> dict[str, torch.Tensor] | None:
        """One session's evaluation rows from every process, one per image, in image order.

        Under DDP each rank saw a shard of the batches (padded with repeats so that every rank ran
        as many steps), so per-neuron correlations must be computed over all ranks' rows, not
        averaged over ranks. Collective under DDP: every rank calls it for every session in order.
        """
        store = self._outputs.get(session, {})
        rows = {key: torch.cat(store[key]) if store.get(key) else None for key in ("rates", "responses", "index", "trials")}
        if self.trainer.world_size > 1:
            rows = self._all_gather_rows(rows, len(self.neuron_ids(session)))
        if rows["index"] is None or not len(rows["index"]):
            return None
        _, first = np.unique(rows["index"].numpy(), return_index=True)  # sorted by image, repeats dropped
        keep = torch.from_numpy(first)
        return {key: value[keep] for key, value in rows.items() if value is not None}

    def _all_gather_rows(self, rows: dict[str, torch.Tensor | None], neurons: int) -> dict[str, torch.Tensor | None]:
        """Concatenate every rank's rows; ranks hold different numbers, so pad, gather, then trim."""
        count = 0 if rows["index"] is None else len(rows["index"])
        repeats = -1 if rows["trials"] is None else rows["trials"].shape[1]
        sizes = self.all_gather(torch.tensor([count, repeats], device=self.device)).cpu()  # (world, 2)
        counts = sizes[:, 0].tolist()
        longest, repeats = max(counts), int(sizes[:, 1].max())
        if longest == 0:
            return dict.fromkeys(rows)
        trailing = {"rates": (neurons,), "responses": (neurons,), "index": (), "trials": (repeats, neurons)}
        out: dict[str, torch.Tensor | None] = {}
        for key, shape in trailing.items():
            if key == "trials" and repeats < 0:
                out[key] = None
                continue
            dtype = torch.long if key == "index" else torch.float32
            padded = torch.zeros((longest, *shape), dtype=dtype, device=self.device)
            if rows[key] is not None:
                padded[:count] = rows[key].to(self.device)
            gathered = self.all_gather(padded).cpu()  # (world, longest, ...)
            out[key] = torch.cat([gathered[rank, :n] for rank, n in enumerate(counts)])
        return out

    def _log_epoch(self, stage: str) -> xr.Dataset:
        """Per-neuron metrics for every session over all processes' data; logs per-session and mean values."""
        tables = []
        loss, images = 0.0, 0
        for session in self.sessions:  # the same order on every rank: gathering is collective
            data = self._gathered(session)
            if data is None:
                continue
            rates, responses = data["rates"], data["responses"]
            # mean over neurons per image, averaged over images: what batch-wise logging averaged to
            loss += float(poisson_loss(rates, responses)) / rates.shape[1]
            images += rates.shape[0]
            table = {"correlation": correlation(rates, responses)}
            if "trials" in data:
                trials = data["trials"]
                has_repeats = (~torch.isnan(trials)).sum(1).amax(1) > 1  # images with >1 repeat
                if has_repeats.sum() > 2:
                    r, t = rates[has_repeats], trials[has_repeats]
                    table["single_trial_correlation"] = single_trial_correlation(r, t)
                    table["correlation_to_average"] = correlation_to_average(r, t)
                    table["feve"] = feve(r, t)
                    table["oracle_correlation"] = oracle_correlation(t)
            neurons = self.neuron_ids(session)
            values = {k: ("neuron", v.numpy().astype(np.float64)) for k, v in table.items()}
            tables.append(xr.Dataset(values, coords={"neuron_id": ("neuron", neurons), "session": ("neuron", [session] * len(neurons))}))
            # every rank holds the same gathered numbers: sync_dist only keeps Lightning's reduction consistent
            for name, value in table.items():
                self.log(f"{stage}/{name}/{session}", float(np.nanmean(value.numpy())), sync_dist=True)
        self._outputs = {}
        if not tables:
            return xr.Dataset()
        self.log(f"{stage}/poisson_loss", loss / images, sync_dist=True)
        results = xr.concat(tables, dim="neuron", join="outer", data_vars="all", coords="different", compat="equals")
        for name in results.data_vars:
            self.log(f"{stage}/{name}", float(np.nanmean(results[name].values)), sync_dist=True, prog_bar=name == "correlation")
        return results

    # ---- checkpoints -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # hyperparameters filled in setup must reach the checkpoint, whatever saved it
        checkpoint["hyper_parameters"] = dict(self.hparams)
        # where the random stream (dropout, sampled positions) stands, so a resumed fit continues it
        checkpoint["rng_states"] = rng.capture()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            self._rng_to_restore = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        # After the checkpoint is restored and the sanity check ran, just before the first
        # training step: nothing between here and that step draws random numbers (the data
        # loaders have their own generators). Under DDP every rank restores rank 0's state.
        if self._rng_to_restore is not None:
            rng.restore(self._rng_to_restore)
            self._rng_to_restore = None
