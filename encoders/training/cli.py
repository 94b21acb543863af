"""The training command (`python train.py ...` = `encoders train ...`): a LightningCLI over EncodingModel and RecordedDataModule."""

from __future__ import annotations

import argparse
import logging
import os
import shlex
import sys
from pathlib import Path

from lightning_fabric.utilities.exceptions import MisconfigurationException
from pytorch_lightning.cli import LightningCLI, SaveConfigCallback

from encoders.checkpoints import read_checkpoint, upgrade_hparams
from encoders.datasets.datamodule import RecordedDataModule
from encoders.errors import EncodersError, cause_of, one_line
from encoders.interrupts import Interrupts
from encoders.yaml_files import load_yaml_file, strict_yaml
from encoders.training.checkpoint_io import use_atomic_checkpoints
from encoders.training.module import EncodingModel

KEYWORDS = ("last", "best", "hpc")  # checkpoints Lightning finds itself ("last" may not exist yet: it then starts fresh)


class EncodersCLI(LightningCLI):
    def add_arguments_to_parser(self, parser) -> None:
        parser.add_argument("--test_after_fit", type=bool, default=True, help="test the best checkpoint after fit")
        # a new session on a trained core sees its images z-scored as the core saw them in training
        parser.link_arguments("model.init_from", "data.transform_from")

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
        if path is None and subcommand in ("test", "validate", "predict"):
            self.config[subcommand]["ckpt_path"] = path = best_of_run(subcommand, self.config[subcommand])
        if path is not None and str(path) not in KEYWORDS and not str(path).startswith("registry"):
            read_checkpoint(path)
        check_devices(self.config[subcommand].get("trainer", {}))
        seed = self.config[subcommand].get("seed_everything")
        if isinstance(seed, int) and not isinstance(seed, bool) and not 0 <= seed < 2**32:
            raise EncodersError(f"seed_everything: {seed} is out of range; seeds are 0 to {2**32 - 1} (or true for a random one)")

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
        check_architecture(path, hparams, self.config[subcommand].get("model", {}))
        if hparams:
            self.config = self.parser.parse_object({subcommand: {"model": hparams}}, self.config)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:  # a constructor's one-line error, wrapped by jsonargparse (e.g. a callback's)
            raise cause_of(error) or error from None
        # the model is handed its data now, before the trainer: its Encoder is built for the recording (or, for a
        # restored model, the recording checked to be its data) and a bad data file fails before anything starts
        self.datamodule.setup(self.subcommand)
        self.model.attach(self.datamodule.recording)

    def instantiate_trainer(self, **kwargs):
        try:
            trainer = super().instantiate_trainer(**kwargs)
        except MisconfigurationException as error:  # Lightning's own checks of trainer values (max_epochs, max_time, ...)
            raise EncodersError(f"trainer: {one_line(error)}") from None
        use_atomic_checkpoints(trainer)  # a full disk leaves the previous checkpoint whole, never a truncated one
        return trainer

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


def _checkpoint_folders(config) -> list[Path]:
    """The dirpath of every ModelCheckpoint in a parsed trainer config."""
    folders = []
    for callback in config.get("trainer", {}).get("callbacks") or []:
        init = callback.get("init_args") if hasattr(callback, "get") else None
        if str(callback.get("class_path", "")).endswith("ModelCheckpoint") and init and init.get("dirpath"):
            folders.append(Path(init.get("dirpath")))
    return folders


def best_of_run(subcommand: str, config) -> str:
    """`test` (`validate`, `predict`) without --ckpt_path: the run's best checkpoint, said on stderr.

    Without a checkpoint Lightning would score the untrained weights and overwrite the run's
    `test_metrics.nc`; the best checkpoint is the one `fit` tests, recorded in the run's last.ckpt.
    """
    for folder in _checkpoint_folders(config):
        last = folder / "last.ckpt"
        if not last.is_file():
            continue
        states = read_checkpoint(last).get("callbacks", {})
        best = next((s.get("best_model_path") for k, s in states.items() if "ModelCheckpoint" in k and s.get("best_model_path")), None)
        chosen = best if best and Path(best).is_file() else str(last)
        print(f"train: {subcommand}: no --ckpt_path given; using the run's {'best' if chosen == best else 'last'} "
              f"checkpoint {chosen}", file=sys.stderr)
        return chosen
    folders = ", ".join(map(str, _checkpoint_folders(config))) or "none configured"
    raise EncodersError(f"{subcommand}: --ckpt_path is needed (without it the untrained model would be scored); no trained "
                        f"checkpoint found in the config's checkpoint folder ({folders})")


ARCHITECTURE = ("core", "readout")


def check_architecture(path: str, hparams: dict, model) -> None:
    """A checkpoint of another core or readout than the config asks for is refused, naming both.

    Lightning would take the checkpoint's hyperparameters over the config's without a word, so a
    run would test, resume or report under the config's name a model the config does not describe.
    """
    for key in ARCHITECTURE:
        ours, theirs = model.get(key) if hasattr(model, "get") else None, hparams.get(key)
        ours = ours.as_dict() if hasattr(ours, "as_dict") else ours
        if ours is None or theirs is None:
            continue
        if dict(ours) != dict(theirs):
            raise EncodersError(f"--ckpt_path {path}: its model.{key} is {dict(theirs)}, the config's is {dict(ours)}; "
                                "use the config the checkpoint was trained with")


def check_config_files(argv: list[str]) -> None:
    """Every `--config FILE` is readable YAML text without repeated keys; else one line naming the file, key and line."""
    for i, arg in enumerate(argv):
        flag, equals, value = arg.partition("=")
        if flag == "--config":
            path = Path(value if equals else (argv[i + 1] if i + 1 < len(argv) else ""))
            if path.is_file():
                load_yaml_file(path)


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
    """Run the CLI; user errors exit 2 with one line; Ctrl-C (130) and SIGTERM (143) print one line saying how to go on."""
    os.environ.setdefault("WANDB_MODE", "offline")
    argv = list(sys.argv[1:] if args is None else args)
    global _held
    _held = HeldLines().hold()
    with Interrupts() as interrupts:
        try:
            run(args)
        except (EncodersError, argparse.ArgumentError) as error:
            _held.pass_on(show=False)
            print(f"train: error: {one_line(error)}", file=sys.stderr)
            return 2
        except (KeyboardInterrupt, SystemExit) as stop:
            if not interrupts.stopped(stop):
                raise
            _held.pass_on(show=False)
            print(f"train: stopped by {interrupts.name}; files are written whole or not at all. {how_to_continue(argv)}",
                  file=sys.stderr)
            return interrupts.status
        finally:
            _held.pass_on()  # whatever else happened (--help, a bug): the lines as Lightning meant them
            _held = None
    return 0


def how_to_continue(argv: list[str]) -> str:
    """The exact command that continues an interrupted run."""
    if argv[:1] != ["fit"]:
        return "Run the same command again."
    rest = list(argv)
    if "--ckpt_path" in rest:  # a given checkpoint: continue from the run's own last state instead
        index = rest.index("--ckpt_path")
        del rest[index : index + 2]
    rest = [a for a in rest if not a.startswith("--ckpt_path=")]
    return "Continue with: python train.py " + " ".join(shlex.quote(a) for a in [*rest, "--ckpt_path", "last"])


# parse errors raise (one line in `main`) instead of printing the whole usage and exiting
PARSER_KWARGS = {"exit_on_error": False, **{name: {"exit_on_error": False} for name in ("fit", "validate", "test", "predict")}}


def run(args: list[str] | None = None) -> EncodersCLI:
    """The CLI run on `args`, with no error handling (tests call it to inspect the trainer afterwards)."""
    strict_yaml()
    check_config_files(sys.argv[1:] if args is None else args)
    return EncodersCLI(EncodingModel, RecordedDataModule, save_config_callback=SaveConfigWhenReady,
                       save_config_kwargs={"overwrite": True}, parser_kwargs=PARSER_KWARGS, args=args)


