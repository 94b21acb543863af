"""The training command (`python train.py ...` = `encoders train ...`): a LightningCLI over EncodingModel and RecordedDataModule."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path

from pytorch_lightning.cli import LightningCLI, SaveConfigCallback

from encoders.checkpoints import read_checkpoint, upgrade_hparams
from encoders.datasets.datamodule import RecordedDataModule
from encoders.errors import EncodersError, one_line
from encoders.training.module import EncodingModel

KEYWORDS = ("last", "best", "hpc")  # checkpoints Lightning finds itself ("last" may not exist yet: it then starts fresh)


class EncodersCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=True, help="test the best checkpoint after fit")

    def parse_arguments(self, parser, args) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        if not subcommand:
            return
        # say it rather than rely on torch's default: checkpoints are never unpickled
        if self.config[subcommand].get("weights_only") is None:
            self.config[subcommand]["weights_only"] = True
        # Right after parsing, Lightning loads --ckpt_path to read its hyperparameters: a missing,
        # broken or unsafe file must fail here first, in one line, before anything is written.
        path = self.config[subcommand].get("ckpt_path")
        if path is not None and str(path) not in KEYWORDS and not str(path).startswith("registry"):
            read_checkpoint(path)
        check_devices(self.config[subcommand].get("trainer", {}))

    def _parse_ckpt_path(self) -> None:
        # Lightning merges the checkpoint's hyperparameters into the model's config: bring those of
        # earlier checkpoint formats to today's names first (encoders.checkpoints.upgrade_hparams).
        subcommand = self.config.get("subcommand")
        path = self.config[subcommand].get("ckpt_path") if subcommand else None
        if not path or not Path(path).is_file():
            return
        hparams = upgrade_hparams(dict(read_checkpoint(path).get("hyper_parameters", {})))
        hparams.pop("_instantiator", None)
        hparams.pop("_class_path", None)
        if hparams:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def before_fit(self) -> None:
        # `--ckpt_path last` resumes from the newest last*.ckpt of the checkpoint folders: check those too
        if self.config["fit"].get("ckpt_path") == "last":
            for callback in self.trainer.checkpoint_callbacks:
                folder = getattr(callback, "dirpath", None)
                for path in sorted(Path(folder).glob("last*.ckpt")) if folder else []:
                    read_checkpoint(path)

    def after_fit(self) -> None:
        if self.config[self.subcommand].get("test_after_fit", True):
            self.trainer.test(self.model, datamodule=self.datamodule, ckpt_path="best", weights_only=True)


class HeldLines(logging.Handler):
    """Holds Lightning's start-up lines (seed, accelerators, tips) until the run is set up.

    A user error found while parsing or setting up (a bad data file, model option or checkpoint)
    then prints as the only line on stderr; once the data and model are ready the held lines are
    passed on as they would have been, and so is everything after.
    """

    LOGGERS = ("pytorch_lightning", "lightning_fabric", "lightning.pytorch", "lightning.fabric")

    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []
        self.saved: dict[str, tuple[list[logging.Handler], bool]] | None = None

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def hold(self) -> "HeldLines":
        self.saved = {}
        for name in self.LOGGERS:
            logger = logging.getLogger(name)
            self.saved[name] = (list(logger.handlers), logger.propagate)
            logger.handlers, logger.propagate = [self], False
        return self

    def pass_on(self, show: bool = True) -> None:
        """Give the loggers back their handlers and, if `show`, pass the held lines on through them."""
        if self.saved is None:
            return
        for name, (handlers, propagate) in self.saved.items():
            logger = logging.getLogger(name)
            logger.handlers, logger.propagate = handlers, propagate
        self.saved = None
        records, self.records = self.records, []
        for record in records if show else []:
            logging.getLogger(record.name).handle(record)


_held: HeldLines | None = None


def _ready() -> None:
    """The data and model are set up: from here on Lightning's lines print as they come."""
    if _held is not None:
        _held.pass_on()


class SaveConfigWhenReady(SaveConfigCallback):
    """Lightning's config.yaml, written once the data and model are set up rather than before:
    a run that fails while setting up (a bad data file or model option) leaves nothing behind."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        pass

    def _save(self, trainer, pl_module, stage: str) -> None:
        _ready()
        super().setup(trainer, pl_module, stage)

    def on_fit_start(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module, "fit")

    def on_validation_start(self, trainer, pl_module) -> None:
        if not trainer.sanity_checking:
            self._save(trainer, pl_module, "validate")

    def on_test_start(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module, "test")

    def on_predict_start(self, trainer, pl_module) -> None:
        self._save(trainer, pl_module, "predict")


def check_devices(trainer: dict) -> None:
    """A device count or accelerator the machine lacks fails in one line, before anything is built."""
    import torch

    accelerator, devices = trainer.get("accelerator", "auto"), trainer.get("devices", "auto")
    if accelerator in ("gpu", "cuda") and not torch.cuda.is_available():
        raise EncodersError(f"trainer.accelerator: {accelerator!r} but this machine has no CUDA device; use cpu")
    if isinstance(devices, int) and devices < 1 and devices != -1:
        raise EncodersError(f"trainer.devices: must be a positive count, a list of ids, -1 or 'auto', got {devices}")
    if accelerator in ("gpu", "cuda") and isinstance(devices, int) and devices > torch.cuda.device_count():
        raise EncodersError(f"trainer.devices: {devices} GPUs asked for, this machine has {torch.cuda.device_count()}")


def main(args: list[str] | None = None) -> int:
    """Run the CLI; user errors exit 2 with one line, Ctrl-C exits 130 with one line."""
    os.environ.setdefault("WANDB_MODE", "offline")
    interrupted = []

    def on_interrupt(signum: int, frame: object) -> None:
        interrupted.append(signum)
        raise KeyboardInterrupt

    # Lightning turns Ctrl-C inside fit into exit status 1; remembering it lets us answer 130
    previous = signal.signal(signal.SIGINT, on_interrupt)
    global _held
    _held = HeldLines().hold()
    try:
        run(args)
    except (EncodersError, argparse.ArgumentError) as error:
        _held.pass_on(show=False)
        print(f"train: error: {one_line(error)}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, SystemExit) as stop:
        if not interrupted and isinstance(stop, SystemExit):
            raise
        _held.pass_on(show=False)
        print("train: interrupted; files are written whole or not at all. Continue with the same command plus "
              "--ckpt_path last", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
        _held.pass_on()  # whatever else happened (--help, a bug): the lines as Lightning meant them
        _held = None
    return 0


# parse errors raise (one line in `main`) instead of printing the whole usage and exiting
PARSER_KWARGS = {"exit_on_error": False, **{name: {"exit_on_error": False} for name in ("fit", "validate", "test", "predict")}}


def run(args: list[str] | None = None) -> EncodersCLI:
    """The CLI run on `args`, with no error handling (tests call it to inspect the trainer afterwards)."""
    return EncodersCLI(EncodingModel, RecordedDataModule, save_config_callback=SaveConfigWhenReady,
                       save_config_kwargs={"overwrite": True}, parser_kwargs=PARSER_KWARGS, args=args)


