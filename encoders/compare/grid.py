"""Train every architecture x seed with a plain Lightning Trainer: `<models>/<arch>/seed<k>/` (default `<out>/models`).

Each folder holds `checkpoints/best.ckpt` (and `last.ckpt`), `test_metrics.nc` (per-neuron test
metrics of the best checkpoint, `encoders.evaluation.test_table`) and `curves/metrics.csv` (training curves).
A model is finished when `test_metrics.nc` carries the fingerprint of its request (architecture,
data, trainer settings, seed) and its checkpoint exists: finished models are skipped, a model
killed during training resumes from its `last.ckpt`, and a changed request trains from scratch.
"""

from __future__ import annotations

import hashlib
import json
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import xarray as xr
from pytorch_lightning.callbacks import EarlyStopping
from pytorch_lightning.loggers import CSVLogger, WandbLogger

from encoders.compare.config import Architecture, CompareConfig
from encoders.datasets.datamodule import RecordedDataModule
from encoders.errors import EncodersError
from encoders.evaluation import test_table
from encoders.outputs import write_json, write_netcdf
from encoders.training import EncodingModel, ModelCheckpoint
from encoders.training.checkpoint_io import use_atomic_checkpoints

METRICS_FILE = "test_metrics.nc"
MONITOR = "val/correlation"


@dataclass(frozen=True)
class TrainedModel:
    """One finished member of the grid."""

    architecture: str
    seed: int
    checkpoint: Path
    metrics: Path

    @property
    def label(self) -> str:
        return f"{self.architecture}/seed{self.seed}"


def model_folder(models: Path, architecture: str, seed: int) -> Path:
    return models / architecture / f"seed{seed}"


def unavailable(architecture: Architecture) -> str | None:
    """Why this architecture cannot be built here (missing optional dependency or weights), or None."""
    if architecture.core.get("type") != "task_driven":
        return None
    try:
        import torchvision.models  # noqa: F401
    except (ImportError, RuntimeError) as error:  # a torchvision built for another torch fails with RuntimeError
        return f"torchvision is not usable ({type(error).__name__}: {error}); pip install 'encoders[torchvision]'"
    weights = architecture.core.get("weights_path")
    if weights is None:
        return "no core.weights_path: a task-driven core without pretrained weights is meaningless"
    if not Path(weights).is_file():
        return f"pretrained weights {weights} not found (nothing is downloaded)"
    return None


def available_architectures(config: CompareConfig) -> dict[str, Architecture]:
    """The architectures that can be trained here; optional ones that cannot are skipped with a printed reason."""
    kept = {}
    for name, architecture in config.architectures.items():
        reason = unavailable(architecture)
        if reason is None:
            kept[name] = architecture
        elif architecture.optional:
            print(f"compare: skipping architecture {name!r}: {reason}")
        else:
            raise EncodersError(f"{config.source}: architectures.{name}: {reason} (set `optional: true` to skip it)")
    if not kept:
        raise EncodersError(f"{config.source}: no architecture can be trained here")
    return kept


def _data_identity(path: str) -> dict:
    # size and mtime, not a hash: hashing a 350 MB file on every re-run costs more than it protects
    stat = Path(path).stat()
    return {"path": str(path), "size": stat.st_size, "mtime_ns": stat.st_mtime_ns}


def request_key(request: dict) -> str:
    """sha256 of a training request: a model is reused only for the same request."""
    return hashlib.sha256(json.dumps(request, sort_keys=True, default=str).encode()).hexdigest()


def finished(metrics: Path, key: str) -> bool:
    """Whether `metrics` is the test table of a model trained for this request."""
    try:
        with xr.open_dataset(metrics, engine="h5netcdf") as table:
            return table.attrs.get("fingerprint") == key
    except (OSError, ValueError):  # missing or damaged: train again
        return False


def model_request(config: CompareConfig, architecture: Architecture, seed: int) -> dict:
    """Everything a trained model depends on."""
    return {
        "architecture": architecture.model_arguments(), "data": config.data, "data_file": _data_identity(config.data["path"]),
        "trainer": config.trainer, "early_stopping": config.early_stopping, "seed": seed,
    }


class EpochLine(pl.Callback):
    """One printed line per validation epoch: a long grid run shows progress without a progress bar."""

    def __init__(self, label: str):
        self.label = label
        self.start = time.perf_counter()

    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        # on_validation_end, not ..._epoch_end: the model logs its epoch metrics after the callbacks' epoch hooks
        if trainer.sanity_checking:
            return
        value = trainer.callback_metrics.get(MONITOR)
        shown = f"{float(value):.3f}" if value is not None else "n/a"
        print(f"compare: {self.label} epoch {trainer.current_epoch}: {MONITOR} {shown} "
              f"({time.perf_counter() - self.start:.0f} s)", flush=True)


def train_model(config: CompareConfig, architecture: Architecture, seed: int) -> TrainedModel:
    """Train and test one (architecture, seed), or return it as it is when already finished."""
    folder = model_folder(config.models, architecture.name, seed)
    checkpoints = folder / "checkpoints"
    best, last = checkpoints / "best.ckpt", checkpoints / "last.ckpt"
    metrics = folder / METRICS_FILE
    label = f"{architecture.name}/seed{seed}"
    request = model_request(config, architecture, seed)
    key = request_key(request)
    if best.is_file() and finished(metrics, key):
        print(f"compare: {label} trained already ({folder}): kept")
        return TrainedModel(architecture.name, seed, best, metrics)

    request_file = folder / "request.json"
    same_request = request_file.is_file() and json.loads(request_file.read_text()).get("fingerprint") == key
    resume = last if same_request and last.is_file() else None
    if resume is None and checkpoints.exists():
        shutil.rmtree(checkpoints)  # made for another request: never resume from it
    folder.mkdir(parents=True, exist_ok=True)
    write_json({"fingerprint": key, "request": request}, request_file)
    print(f"compare: training {label}" + (f" (resuming from {resume})" if resume else ""), flush=True)

    pl.seed_everything(seed, verbose=False)
    datamodule = RecordedDataModule(**config.data, seed=seed)
    model = EncodingModel(**architecture.model_arguments())
    callbacks: list[pl.Callback] = [
        ModelCheckpoint(dirpath=checkpoints, filename="best", monitor=MONITOR, mode="max", save_last=True,
                        enable_version_counter=False),
        EpochLine(label),
    ]
    if config.early_stopping is not None:
        callbacks.append(EarlyStopping(monitor=MONITOR, mode="max", **config.early_stopping))
    loggers = [CSVLogger(folder, name="", version="curves")]
    if config.wandb is not None:
        project = config.wandb.get("project", "encoders")
        name = f"{config.wandb.get('name', config.name)}/{label}"
        loggers.append(WandbLogger(project=project, name=name, group=config.wandb.get("name", config.name),
                                   save_dir=str(folder), offline=True))
    trainer = pl.Trainer(**config.trainer, default_root_dir=folder, callbacks=callbacks, logger=loggers)
    use_atomic_checkpoints(trainer)
    trainer.fit(model, datamodule=datamodule, ckpt_path=resume)
    trainer.test(model, datamodule=datamodule, ckpt_path=str(best))
    for logger in loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()

    # the test table of the best checkpoint; the fingerprint marks the model finished
    table = test_table(model.encoder.eval(), model.test_results, datamodule, datamodule.twin)
    table.attrs.update({"fingerprint": key, "architecture": architecture.name, "seed": seed, "checkpoint": str(best),
                        "epochs": int(trainer.current_epoch)})
    write_netcdf(table, metrics)
    return TrainedModel(architecture.name, seed, best, metrics)


def train_grid(config: CompareConfig, architectures: dict[str, Architecture]) -> list[TrainedModel]:
    """Every architecture x seed (generating seeds first), trained or reused."""
    return [train_model(config, architecture, seed) for architecture in architectures.values() for seed in config.seeds]
