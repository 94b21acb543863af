"""Train, validate, test and predict encoding models: `python train.py fit --config experiments/X.yaml`.

A LightningCLI over `EncodingModel` and `RecordedDataModule`; every experiment lives in a YAML file
in experiments/. After `fit`, the best checkpoint is tested, which writes the per-neuron metrics
table and runs the post-training callbacks configured in the YAML.

User errors (a bad data file, a misspelt model option, a broken checkpoint) print one line naming
what is wrong and where, and exit with status 2, without a traceback; jsonargparse does the same
for unknown or ill-typed keys.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

# Offline unless the user chose otherwise: with an API key and no mode, wandb may hang for minutes.
os.environ.setdefault("WANDB_MODE", "offline")

from pytorch_lightning.cli import LightningCLI  # noqa: E402

from encoders.datasets.datamodule import RecordedDataModule  # noqa: E402
from encoders.ensemble import read_checkpoint  # noqa: E402
from encoders.errors import EncodersError  # noqa: E402
from encoders.model import EncodingModel  # noqa: E402


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
        # Lightning's keywords name checkpoints it finds itself ("last" may not exist yet: it then starts fresh)
        if path is not None and str(path) not in ("last", "best", "hpc") and not str(path).startswith("registry"):
            read_checkpoint(path)

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


def main(args: list[str] | None = None) -> EncodersCLI:
    try:
        return EncodersCLI(
            EncodingModel,
            RecordedDataModule,
            save_config_kwargs={"overwrite": True},
            args=args,
        )
    except EncodersError as error:
        print(f"train.py: error: {error}", file=sys.stderr)
        raise SystemExit(2) from None


if __name__ == "__main__":
    main()
