"""EncodingModel: the LightningModule that trains an `Encoder` (Poisson loss, AdamW, plateau schedule, metrics).

It holds the encoder and owns only training: loss, optimisation, evaluation and logging. It is
handed its data (`attach(recording)`: the train CLI does so when it builds the model; with a plain
Trainer, `setup` does it with the DataModule's recording); what depends on the data (sessions,
neuron ids, input shape, image transform) is stored in the hyperparameters (`data_info`), so a
checkpoint rebuilds its encoder alone (`encoders.checkpoints.load_encoder`). Products never see this class.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytorch_lightning as pl
import torch
import xarray as xr
from pytorch_lightning.trainer.states import TrainerFn

from encoders import rng
from encoders.checkpoints import FORMAT, read_checkpoint, upgrade
from encoders.encoder import CORES, READOUT_FROM_DATA, READOUTS, Encoder, check_config
from encoders.errors import EncodersError
from encoders.evaluation import metrics_table, session_metrics
from encoders.metrics import poisson_loss


class EncodingModel(pl.LightningModule):
    """Trains an Encoder (core + per-session readouts) to predict firing rates.

    Args:
        core: {"type": "stacked" | "task_driven", ...} constructor arguments of the core.
        readout: {"type": "gaussian" | "attention", ...} constructor arguments shared by all sessions.
        lr, weight_decay: AdamW.
        lr_factor, lr_patience, min_lr: ReduceLROnPlateau on the mean validation correlation.
        elu_offset: output nonlinearity ELU(y + offset) + 1.
        channels_last: run convolutions in channels-last memory layout (faster on CPU).
        data_info: sessions, input_shape and transform, filled from the DataModule on first setup; given on reload.
        init_from: a trained checkpoint to start from: its core, its readouts (kept for its own sessions)
            and its image transform (the data are z-scored with its statistics: `data.transform_from`
            is linked to this). The data's sessions the checkpoint lacks get new readouts. `core` and
            `readout` may be left out (taken from it); given, they must be its own.
        freeze_core: with `init_from`, train only the new sessions' readouts: the core (BatchNorm
            statistics included), the checkpoint's readouts and what readouts share across sessions
            stay as they are. False trains everything (e.g. a second fit at a lower `lr`).
    """

    def __init__(
        self,
        core: dict | None = None,
        readout: dict | None = None,
        lr: float = 5e-3,
        weight_decay: float = 0.0,
        lr_factor: float = 0.3,
        lr_patience: int = 3,
        min_lr: float = 1e-5,
        elu_offset: float = 0.0,
        channels_last: bool = True,
        data_info: dict | None = None,
        init_from: str | None = None,
        freeze_core: bool = True,
    ):
        super().__init__()
        if init_from is not None and data_info is None:  # a fresh start from a trained model (resumes have data_info)
            core, readout = start_from(init_from, core, readout)
        if core is None or readout is None:
            raise EncodersError("model.core and model.readout are required (or model.init_from, a checkpoint to take them from)")
        # a misspelt or out-of-range option fails here, before a trainer starts or writes anything
        check_config(CORES, core, "core")
        check_config(READOUTS, readout, "readout", READOUT_FROM_DATA)
        if not (isinstance(lr, (int, float)) and math.isfinite(lr) and lr > 0):
            raise EncodersError(f"model.lr: must be a positive finite number, got {lr!r}")
        if not 0 < lr_factor < 1:
            raise EncodersError(f"model.lr_factor: must be in (0, 1), got {lr_factor!r}")
        if min_lr < 0 or weight_decay < 0 or lr_patience < 0:
            raise EncodersError(f"model.min_lr, weight_decay, lr_patience: must be >= 0, got {min_lr}, {weight_decay}, {lr_patience}")
        self.save_hyperparameters()
        self.hparams.core, self.hparams.readout = core, readout  # taken from init_from when not given
        self._rng_to_restore: dict | None = None
        self.encoder: Encoder | None = None
        self._outputs: dict[str, dict[str, list[torch.Tensor]]] = {}
        self.test_results: xr.Dataset | None = None
        if data_info is not None:
            self._build(data_info)

    def _build(self, data_info: dict) -> None:
        hp = self.hparams
        self.encoder = Encoder(
            hp.core, hp.readout, data_info["sessions"], data_info["input_shape"], data_info["transform"],
            elu_offset=hp.elu_offset, channels_last=hp.channels_last,
        )
        if self.frozen_core:
            self.encoder.core.requires_grad_(False)
            for session, info in data_info["sessions"].items():
                if info.get("from_checkpoint"):  # parameters shared with new readouts stay frozen with these
                    self.encoder.readouts[session].requires_grad_(False)

    @property
    def frozen_core(self) -> bool:
        return self.hparams.get("init_from") is not None and bool(self.hparams.get("freeze_core", True))

    def train(self, mode: bool = True) -> "EncodingModel":
        super().train(mode)
        if self.frozen_core and self.encoder is not None:
            self.encoder.core.eval()  # a frozen core keeps its BatchNorm statistics too
        return self

    def attach(self, recording) -> None:
        """Hand the model its data (a `Recording`): build the Encoder for it (its sessions, neuron ids, input shape
        and transform; with `init_from`, the checkpoint's core and readouts plus new readouts for the data's other
        sessions); a model that already has one (restored with its data_info) is checked to meet these data.

        The train CLI calls this when it instantiates the model, before the trainer exists; used with a plain
        Lightning Trainer, `setup` calls it with the trainer's DataModule's recording.
        """
        if self.encoder is not None:
            recording.check_model(self.hparams.data_info, sessions=recording.sessions)
            return
        self.hparams.data_info = recording.model_info()
        if self.hparams.get("init_from") is not None:
            self._build_from_checkpoint(recording)
        else:
            self._build(self.hparams.data_info)

    def setup(self, stage: str) -> None:
        datamodule = self.trainer.datamodule if self._trainer is not None else None
        if datamodule is not None:
            datamodule.setup(stage)
            self.attach(datamodule.recording)
        elif self.encoder is None:
            raise EncodersError("EncodingModel needs its data: attach(recording), a DataModule, or data_info")
        self._allow_unused_readouts()

    def _build_from_checkpoint(self, recording) -> None:
        """The checkpoint's sessions (readouts and all) plus new readouts for the data's other sessions."""
        path = self.hparams.init_from
        base = upgrade(read_checkpoint(path))
        info, new = base["hyper_parameters"]["data_info"], self.hparams.data_info
        if list(new["input_shape"]) != list(info["input_shape"]):
            raise EncodersError(f"{recording.path}: images map to {tuple(new['input_shape'])} in model space, the checkpoint "
                                f"{path} takes {tuple(info['input_shape'])}; set data.grayscale/crop/resize as in its training")
        if new["transform"] != info["transform"]:
            raise EncodersError(f"{recording.path}: image transform {new['transform']} differs from the checkpoint {path}'s "
                                f"{info['transform']}; give the data module transform_from: {path}")
        known = [s for s in new["sessions"] if s in info["sessions"]]
        if known and self.hparams.freeze_core:
            raise EncodersError(f"{recording.path}: session(s) {known} are already in the checkpoint {path}; readout-only "
                                "training adds new sessions (choose data.sessions, or set model.freeze_core: false to fine-tune)")
        for session in known:
            if list(new["sessions"][session]["neuron_ids"]) != list(info["sessions"][session]["neuron_ids"]):
                raise EncodersError(f"{recording.path}: session {session!r} has other neurons than in the checkpoint {path}")
        sessions = {s: {**v, "from_checkpoint": True} for s, v in info["sessions"].items()}
        sessions.update({s: v for s, v in new["sessions"].items() if s not in info["sessions"]})
        self.hparams.data_info = {**new, "sessions": sessions}
        self._build(self.hparams.data_info)
        state = {k[len("encoder."):]: v for k, v in base["state_dict"].items() if k.startswith("encoder.")}
        missing, unexpected = self.encoder.load_state_dict(state, strict=False)
        fresh = tuple(f"readouts.{s}." for s in sessions if s not in info["sessions"])
        if unexpected or any(not key.startswith(fresh) for key in missing):
            raise EncodersError(f"{path}: its weights do not fit the model it describes "
                                f"(unexpected {unexpected[:3]}, missing {[k for k in missing if not k.startswith(fresh)][:3]})")
        if self.frozen_core:
            self.encoder.core.eval()

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
        if options.get("find_unused_parameters") is False and len(self.encoder.readouts) > 1:
            raise EncodersError(
                "trainer.strategy: DDP needs find_unused_parameters=True here (each step trains one session's "
                "readout); use strategy 'ddp' or 'ddp_find_unused_parameters_true'"
            )
        options.setdefault("find_unused_parameters", True)

    def forward(self, images: torch.Tensor, session: str, neurons: torch.Tensor | None = None) -> torch.Tensor:
        return self.encoder(images, session, neurons)

    # ---- training --------------------------------------------------------------------------------
    def training_step(self, batch: dict, batch_idx: int) -> torch.Tensor:
        session = batch["session"]
        rates = self(batch["images"], session)
        n_train = self.hparams.data_info["sessions"][session]["n_train"]
        # scale so that a batch's loss estimates the loss of the whole session (neuralpredictors)
        scale = math.sqrt(n_train / rates.shape[0])
        poisson = poisson_loss(rates, batch["responses"])
        loss = scale * poisson + self.encoder.regularizer(session)
        if not torch.isfinite(loss):
            raise EncodersError(
                f"training: the loss is {loss.item()} at step {self.global_step} (session {session!r}, batch {batch_idx}); "
                "lower model.lr or check that session's data"
            )
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
            rows = self._all_gather_rows(rows, len(self.encoder.neuron_ids(session)))
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
        per_session: dict[str, dict[str, torch.Tensor]] = {}
        images_seen: dict[str, np.ndarray] = {}
        loss, images = 0.0, 0
        for session in self.encoder.sessions:  # the same order on every rank: gathering is collective
            data = self._gathered(session)
            if data is None:
                continue
            rates, responses = data["rates"], data["responses"]
            # mean over neurons per image, averaged over images: what batch-wise logging averaged to
            loss += float(poisson_loss(rates, responses)) / rates.shape[1]
            images += rates.shape[0]
            per_session[session] = session_metrics(data)
            images_seen[session] = data["index"].numpy()
            # every rank holds the same gathered numbers: sync_dist only keeps Lightning's reduction consistent
            for name, value in per_session[session].items():
                self.log(f"{stage}/{name}/{session}", float(np.nanmean(value.numpy())), sync_dist=True)
        self._outputs = {}
        if not per_session:
            return xr.Dataset()
        self.log(f"{stage}/poisson_loss", loss / images, sync_dist=True)
        results = metrics_table(per_session, {s: self.encoder.neuron_ids(s) for s in per_session})
        results.attrs["images_per_session"] = [f"{s}:{len(v)}" for s, v in images_seen.items()]
        for name in results.data_vars:
            self.log(f"{stage}/{name}", float(np.nanmean(results[name].values)), sync_dist=True, prog_bar=name == "correlation")
        return results

    # ---- checkpoints -------------------------------------------------------------------------------
    def on_save_checkpoint(self, checkpoint: dict) -> None:
        # hyperparameters filled in setup must reach the checkpoint, whatever saved it
        checkpoint["hyper_parameters"] = dict(self.hparams)
        checkpoint["encoders_format"] = FORMAT
        # where the random stream (dropout, sampled positions) stands, so a resumed fit continues it
        checkpoint["rng_states"] = rng.capture()

    def on_load_checkpoint(self, checkpoint: dict) -> None:
        # checkpoints of earlier versions: state-dict keys, hyperparameters, and the optimizer's parameter order
        upgrade(checkpoint, [name for name, p in self.named_parameters() if p.requires_grad])
        if self._trainer is not None and self.trainer.state.fn == TrainerFn.FITTING:
            self._rng_to_restore = checkpoint.get("rng_states")

    def on_train_start(self) -> None:
        # After the checkpoint is restored and the sanity check ran, just before the first
        # training step: nothing between here and that step draws random numbers (the data
        # loaders have their own generators). Under DDP every rank restores rank 0's state.
        if self._rng_to_restore is not None:
            rng.restore(self._rng_to_restore)
            self._rng_to_restore = None


def start_from(path: str, core: dict | None, readout: dict | None) -> tuple[dict, dict]:
    """The core and readout configs of checkpoint `path` (checked to be a trained model's); configs given
    as well must be the same, else EncodersError naming both."""
    hparams = upgrade(read_checkpoint(path)).get("hyper_parameters", {})
    if not hparams.get("data_info") or "core" not in hparams or "readout" not in hparams:
        raise EncodersError(f"model.init_from: {path} is not a checkpoint of a trained encoding model")
    for name, given in (("core", core), ("readout", readout)):
        if given is not None and dict(given) != dict(hparams[name]):
            raise EncodersError(f"model.{name}: {dict(given)} differs from the {name} of model.init_from {path} "
                                f"({dict(hparams[name])}); leave it out to take the checkpoint's")
    return dict(hparams["core"]), dict(hparams["readout"])
