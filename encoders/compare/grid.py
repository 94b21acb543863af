"""Train every architecture x seed through train.py: `<models>/<arch>/seed<k>/` (default `<out>/models`).

Each member's folder gets a complete train.py config, `config.yaml` (the spec's data and trainer
blocks, the architecture's model block, `seed_everything: k`, a ModelCheckpoint keeping `best` and
`last`, EarlyStopping, the test-metrics table, a CSV logger and, with `wandb:`, an offline W&B
logger), and the member is trained by running `fit` on it in the train CLI
(`encoders.training.cli.run`): `python train.py fit --config <that file>` trains the same model.

The folder then holds `checkpoints/best.ckpt` (and `last.ckpt`), `test_metrics.nc` (per-neuron test
metrics of the best checkpoint) and `curves/metrics.csv`. `test_metrics.nc` is kept in the product
store under the fingerprint of the member's request (architecture, data, trainer settings, seed):
a finished member is skipped, one killed during training resumes from its `last.ckpt`
(`--ckpt_path last`), and a changed request trains from scratch.
"""

from __future__ import annotations

import json
import shutil
import time
import warnings
from dataclasses import dataclass
from pathlib import Path

import pytorch_lightning as pl
import xarray as xr
import yaml

from encoders.compare.config import Architecture, CompareConfig
from encoders.errors import EncodersError
from encoders.outputs import write_json, write_text
from encoders.products.store import get_or_compute

METRICS_FILE = "test_metrics.nc"
CONFIG_FILE = "config.yaml"
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
    core = architecture.model.get("core") or {}
    if core.get("type") != "task_driven":
        return None
    try:
        import torchvision.models  # noqa: F401
    except (ImportError, RuntimeError) as error:  # a torchvision built for another torch fails with RuntimeError
        return f"torchvision is not usable ({type(error).__name__}: {error}); pip install 'encoders[torchvision]'"
    weights = core.get("weights_path")
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


def model_request(config: CompareConfig, architecture: Architecture, seed: int) -> dict:
    """Everything a trained model depends on (not where it is written or logged)."""
    return {
        "architecture": dict(architecture.model), "data": config.data, "data_file": _data_identity(config.data["path"]),
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


def train_config(config: CompareConfig, architecture: Architecture, seed: int) -> dict:
    """The member's complete train.py config: `python train.py fit --config <folder>/config.yaml` trains it."""
    folder = model_folder(config.models, architecture.name, seed)
    label = f"{architecture.name}/seed{seed}"
    callbacks = [{"class_path": "encoders.training.ModelCheckpoint",
                  "init_args": {"dirpath": str(folder / "checkpoints"), "filename": "best", "monitor": MONITOR, "mode": "max",
                                "save_last": True, "enable_version_counter": False}}]
    if config.early_stopping is not None:
        callbacks.append({"class_path": "pytorch_lightning.callbacks.EarlyStopping",
                          "init_args": {"monitor": MONITOR, "mode": "max", **config.early_stopping}})
    callbacks += [{"class_path": "encoders.callbacks.MetricsTable", "init_args": {"filename": METRICS_FILE}},
                  {"class_path": "encoders.compare.grid.EpochLine", "init_args": {"label": label}}]
    loggers = [{"class_path": "pytorch_lightning.loggers.CSVLogger",
                "init_args": {"save_dir": str(folder), "name": "", "version": "curves"}}]
    if config.wandb is not None:
        group = config.wandb.name or config.name
        loggers.append({"class_path": "pytorch_lightning.loggers.WandbLogger",
                        "init_args": {"project": config.wandb.project, "name": f"{group}/{label}", "group": group,
                                      "save_dir": str(folder), "offline": True}})
    return {
        "seed_everything": seed,
        "trainer": {**config.trainer, "default_root_dir": str(folder), "logger": loggers, "callbacks": callbacks},
        "model": dict(architecture.model),
        "data": {**config.data, "seed": seed},
    }


def write_train_config(config: CompareConfig, architecture: Architecture, seed: int) -> Path:
    path = model_folder(config.models, architecture.name, seed) / CONFIG_FILE
    header = (f"# {architecture.name}/seed{seed} of `encoders compare {config.source}`; trains alone with\n"
              f"#   python train.py fit --config {path}\n")
    write_text(header + yaml.safe_dump(train_config(config, architecture, seed), sort_keys=False), path)
    return path


def _fit(config_file: Path, resume: bool) -> int:
    """`python train.py fit --config config_file [--ckpt_path last]`, in this process; returns the last epoch."""
    from pytorch_lightning.loggers import WandbLogger

    from encoders.training.cli import run

    with warnings.catch_warnings():  # `args` is how train.py is run from Python; the command's own argv is not its
        warnings.filterwarnings("ignore", message="LightningCLI's args parameter")
        cli = run(["fit", "--config", str(config_file), *(["--ckpt_path", "last"] if resume else [])])
    for logger in cli.trainer.loggers:
        if isinstance(logger, WandbLogger):
            logger.experiment.finish()
    return int(cli.trainer.current_epoch)


def train_model(config: CompareConfig, architecture: Architecture, seed: int) -> TrainedModel:
    """Train and test one (architecture, seed), or return it as it is when already finished."""
    folder = model_folder(config.models, architecture.name, seed)
    checkpoints = folder / "checkpoints"
    best, last = checkpoints / "best.ckpt", checkpoints / "last.ckpt"
    metrics = folder / METRICS_FILE
    label = f"{architecture.name}/seed{seed}"
    request = model_request(config, architecture, seed)
    if not best.is_file():
        metrics.unlink(missing_ok=True)  # a table without its checkpoint is not a finished model

    def train() -> xr.Dataset:
        request_file = folder / "request.json"
        same = request_file.is_file() and json.loads(request_file.read_text()) == {"request": _plain(request)}
        resume = same and last.is_file()
        if not resume and checkpoints.exists():
            shutil.rmtree(checkpoints)  # made for another request: never resume from it
        folder.mkdir(parents=True, exist_ok=True)
        write_json({"request": request}, request_file)
        config_file = write_train_config(config, architecture, seed)
        print(f"compare: training {label}" + (f" (resuming from {last})" if resume else ""), flush=True)
        epochs = _fit(config_file, resume)
        table = xr.load_dataset(metrics, engine="h5netcdf")  # written by the MetricsTable callback after the test
        table.attrs.update({"architecture": architecture.name, "seed": seed, "checkpoint": str(best), "epochs": epochs})
        return table

    _, how = get_or_compute(metrics, request, train)
    if how == "kept":
        print(f"compare: {label} trained already ({folder}): kept")
    return TrainedModel(architecture.name, seed, best, metrics)


def _plain(value: object) -> object:
    """`value` as JSON reads it back (tuples as lists), to compare a request with the one on disk."""
    return json.loads(json.dumps(value, default=str))


def train_grid(config: CompareConfig, architectures: dict[str, Architecture]) -> list[TrainedModel]:
    """Every architecture x seed (generating seeds first), trained or reused."""
    return [train_model(config, architecture, seed) for architecture in architectures.values() for seed in config.seeds]
