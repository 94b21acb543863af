"""The training command (`python train.py ...` = `encoders train ...`): a LightningCLI over EncodingModel and RecordedDataModule."""

from __future__ import annotations

import os
import signal
import sys
from pathlib import Path

from pytorch_lightning.cli import LightningCLI

from encoders.checkpoints import read_checkpoint, upgrade_hparams
from encoders.datasets.datamodule import RecordedDataModule
from encoders.errors import EncodersError
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
    try:
        EncodersCLI(EncodingModel, RecordedDataModule, save_config_kwargs={"overwrite": True}, args=args)
    except EncodersError as error:
        print(f"train: error: {error}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, SystemExit) as stop:
        if not interrupted and isinstance(stop, SystemExit):
            raise
        print("train: interrupted; files are written whole or not at all. Continue with the same command plus "
              "--ckpt_path last", file=sys.stderr)
        return 130
    finally:
        signal.signal(signal.SIGINT, previous)
    return 0
